"""JWKS from a URL: the non-blocking GET client, caching, and the unknown-kid refresh policy."""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt as pyjwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apigate.auth import Authenticator, AuthError, ConsumerDirectory
from apigate.auth.jwks import HttpGetError, http_get
from apigate.config.model import Config

NOW = 1_800_000_000


class JwksServer:
    """A tiny HTTP/1.1 server on 127.0.0.1 that serves ``body`` as ``mode`` says."""

    def __init__(self) -> None:
        self.body = b"{}"
        self.mode = "length"  # length | chunked | eof | error | silent
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    def serve_keys(self, *jwks: dict[str, Any]) -> None:
        self.body = json.dumps({"keys": list(jwks)}).encode()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        if self.mode == "silent":
            await reader.read()  # never answer; the client must time out
        else:
            writer.write(self._response())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    def _response(self) -> bytes:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        if self.mode == "error":
            return b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
        if self.mode == "chunked":
            half = len(self.body) // 2
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c)
                              for c in (self.body[:half], self.body[half:]) if c)
            return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        if self.mode == "eof":
            return head + b"Connection: close\r\n\r\n" + self.body
        return head + b"Content-Length: %d\r\n\r\n" % len(self.body) + self.body


@pytest.fixture
async def server() -> AsyncIterator[JwksServer]:
    jwks = JwksServer()
    await jwks.start()
    yield jwks
    await jwks.stop()


class Monotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def token_for(pair: Any, **extra: Any) -> str:
    payload = {"sub": "acme", "iss": "https://issuer.test", "aud": "apigate",
               "exp": NOW + 3600, **extra}
    return pyjwt.encode(payload, pair.private, algorithm="RS256",
                        headers={"kid": pair.jwk["kid"]})


def url_auth(make_config: Callable[..., Config], clock: Any, monotonic: Monotonic, url: str,
             **fetch: Any) -> tuple[Config, Authenticator]:
    config = make_config(jwt={"algorithms": ["RS256"], "jwks_url": url,
                              "jwks_min_refresh_s": 30, "jwks_cache_s": 300})
    auth = Authenticator(config, ConsumerDirectory.from_config(config), clock=clock,
                         monotonic=monotonic, **fetch)
    return config, auth


async def verify(auth: Authenticator, config: Config, token: str) -> str | None:
    headers = {"authorization": f"Bearer {token}"}
    return (await auth.authenticate(config.routes[2], headers, "", "192.0.2.1")).consumer


@pytest.mark.parametrize("mode", ["length", "chunked", "eof"])
async def test_http_get_reads_each_body_framing(mode: str, server: JwksServer) -> None:
    """The GET client reads Content-Length, chunked and read-to-EOF bodies."""
    server.mode = mode
    server.body = b'{"keys": []}' * 50
    assert await http_get(server.url, timeout_s=2, max_bytes=10_000) == server.body


@pytest.mark.parametrize("mode", ["length", "chunked", "eof"])
async def test_http_get_refuses_oversized_bodies(mode: str, server: JwksServer) -> None:
    """A body over max_bytes is an HttpGetError whatever its framing."""
    server.mode = mode
    server.body = b"x" * 5000
    with pytest.raises(HttpGetError, match="exceeds"):
        await http_get(server.url, timeout_s=2, max_bytes=1000)


async def test_http_get_refuses_non_200(server: JwksServer) -> None:
    """A 500 from the JWKS server is an HttpGetError naming the status line."""
    server.mode = "error"
    with pytest.raises(HttpGetError, match="500"):
        await http_get(server.url, timeout_s=2, max_bytes=1000)


async def test_http_get_times_out(server: JwksServer) -> None:
    """A server that never answers costs at most timeout_s."""
    server.mode = "silent"
    with pytest.raises(TimeoutError):
        await http_get(server.url, timeout_s=0.1, max_bytes=1000)


async def test_jwks_url_keys_verify_tokens_and_are_cached(
    server: JwksServer, make_config: Callable[..., Config], clock: Any, rsa_keys: Any,
) -> None:
    """start() fetches the JWKS once; tokens then verify without another fetch."""
    server.serve_keys(rsa_keys[0].jwk)
    config, auth = url_auth(make_config, clock, Monotonic(), server.url)
    await auth.start()
    assert await verify(auth, config, token_for(rsa_keys[0])) == "acme"
    assert await verify(auth, config, token_for(rsa_keys[0], jti="2")) == "acme"
    assert server.requests == 1
    await auth.aclose()


async def test_unknown_kid_refetches_at_most_every_min_refresh(
    server: JwksServer, make_config: Callable[..., Config], clock: Any, rsa_keys: Any,
) -> None:
    """An unknown kid refetches the JWKS only when jwks_min_refresh_s has passed, else 401."""
    monotonic = Monotonic()
    server.serve_keys(rsa_keys[0].jwk)
    config, auth = url_auth(make_config, clock, monotonic, server.url)
    await auth.start()
    server.serve_keys(rsa_keys[0].jwk, rsa_keys[1].jwk)  # the issuer rotates in a new key
    monotonic.now = 10
    with pytest.raises(AuthError, match="unknown signing key"):
        await verify(auth, config, token_for(rsa_keys[1]))
    assert server.requests == 1
    monotonic.now = 31
    assert await verify(auth, config, token_for(rsa_keys[1])) == "acme"
    assert server.requests == 2
    monotonic.now = 40
    forged = pyjwt.encode({"sub": "x", "exp": NOW + 60}, rsa_keys[1].private, algorithm="RS256",
                          headers={"kid": "never-seen"})
    for _ in range(5):  # a flood of unknown kids costs no fetches inside the interval
        with pytest.raises(AuthError):
            await verify(auth, config, forged)
    assert server.requests == 2
    await auth.aclose()


async def test_failed_first_fetch_is_401_and_not_retried_at_once(
    server: JwksServer, make_config: Callable[..., Config], clock: Any, rsa_keys: Any,
) -> None:
    """With the JWKS server down tokens are 401, and refetching waits for the min interval."""
    monotonic = Monotonic()
    server.mode = "error"
    config, auth = url_auth(make_config, clock, monotonic, server.url)
    await auth.start()
    with pytest.raises(AuthError, match="unknown signing key"):
        await verify(auth, config, token_for(rsa_keys[0]))
    assert server.requests == 1
    server.mode = "length"
    server.serve_keys(rsa_keys[0].jwk)
    monotonic.now = 30
    assert await verify(auth, config, token_for(rsa_keys[0])) == "acme"
    assert server.requests == 2
    await auth.aclose()


async def test_stale_keys_serve_while_refresh_fails(
    make_config: Callable[..., Config], clock: Any, rsa_keys: Any,
) -> None:
    """After jwks_cache_s a refresh starts in the background; if it fails, old keys still work."""
    calls: list[float] = []
    fetched = asyncio.Event()
    document = json.dumps({"keys": [rsa_keys[0].jwk]}).encode()

    async def fetch(url: str) -> bytes:
        calls.append(monotonic.now)
        fetched.set()
        if len(calls) > 1:
            raise OSError("connection refused")
        return document

    monotonic = Monotonic()
    config, auth = url_auth(make_config, clock, monotonic, "http://127.0.0.1:1/jwks", fetch=fetch)
    await auth.start()
    fetched.clear()
    monotonic.now = 301
    assert await verify(auth, config, token_for(rsa_keys[0], jti="a")) == "acme"
    async with asyncio.timeout(2):
        await fetched.wait()
    assert calls == [0.0, 301]
    assert await verify(auth, config, token_for(rsa_keys[0], jti="b")) == "acme"
    await auth.aclose()


def _self_signed(tmp_path: Any) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=36500))
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


async def test_https_verifies_the_server_certificate(tmp_path: Any) -> None:
    """https:// uses the default TLS context: an untrusted (self-signed) server is refused."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=_self_signed(tmp_path))
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await http_get(f"https://127.0.0.1:{port}/jwks", timeout_s=2, max_bytes=1000)
    finally:
        server.close()
        await server.wait_closed()
