"""JSON Web Key Sets: parse them into verification keys, fetch them without blocking the loop.

A key is only ever used with an algorithm from the configured allow-list *and* compatible
with its key type (RSA for RS*, EC P-256 for ES256, EC P-384 for ES384, OKP for EdDSA).
Symmetric ``oct`` keys in a JWKS are ignored: mixing them with public keys is how algorithm
confusion happens (RFC 8725 section 2.1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from jwt import PyJWK, PyJWTError

log = logging.getLogger("apigate.auth")

MAX_JWKS_BYTES = 1 << 20
FETCH_TIMEOUT_S = 5.0

Fetch = Callable[[str], Awaitable[bytes]]

_COMPATIBLE: dict[str, tuple[str, frozenset[str | None]]] = {
    "RS256": ("RSA", frozenset({None})),
    "RS384": ("RSA", frozenset({None})),
    "RS512": ("RSA", frozenset({None})),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


class KeySet:
    """Verification keys by ``kid`` then algorithm; a key without ``kid`` is under None."""

    def __init__(self, keys: Mapping[str | None, Mapping[str, PyJWK]]) -> None:
        self._keys = keys

    @classmethod
    def parse(cls, document: bytes | str, algorithms: Iterable[str]) -> KeySet:
        """``{"keys": [{"kty": "RSA", "kid": "k1", ...}]}`` -> KeySet; ValueError if unusable."""
        data = json.loads(document)
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError('a JWKS is a JSON object with a "keys" list')
        allowed = tuple(algorithms)
        keys: dict[str | None, dict[str, PyJWK]] = {}
        for jwk in data["keys"]:
            if isinstance(jwk, dict):
                for alg, key in _usable(jwk, allowed):
                    keys.setdefault(_kid(jwk), {})[alg] = key
        return cls(keys)

    def knows(self, kid: str | None) -> bool:
        return kid in self._keys

    def key_for(self, kid: str | None, alg: str) -> PyJWK | None:
        """The key for a token header; without ``kid`` only an unambiguous key is chosen."""
        if kid is not None:
            return self._keys.get(kid, {}).get(alg)
        candidates = [by_alg[alg] for by_alg in self._keys.values() if alg in by_alg]
        return candidates[0] if len(candidates) == 1 else None

    def __len__(self) -> int:
        return sum(len(by_alg) for by_alg in self._keys.values())


def _kid(jwk: dict[str, Any]) -> str | None:
    kid = jwk.get("kid")
    return kid if isinstance(kid, str) else None


def _usable(jwk: dict[str, Any], allowed: tuple[str, ...]) -> list[tuple[str, PyJWK]]:
    if jwk.get("use", "sig") != "sig":
        return []
    usable = []
    for alg in allowed:
        kty, curves = _COMPATIBLE.get(alg, ("", frozenset()))
        if jwk.get("kty") != kty or jwk.get("crv") not in curves:
            continue
        if jwk.get("alg") not in (None, alg):
            continue
        try:
            usable.append((alg, PyJWK(jwk, algorithm=alg)))
        except (PyJWTError, ValueError, TypeError) as exc:
            log.warning("skipping JWK %r for %s: %s", _kid(jwk), alg, exc)
    return usable


class JwksUrlSource:
    """Keys from ``jwks_url``: cached ``cache_s``; an unknown ``kid`` refetches at most every
    ``min_refresh_s``; a failed fetch keeps the old keys. Fetches are shared (single flight)."""

    def __init__(self, url: str, algorithms: Iterable[str], *, cache_s: float,
                 min_refresh_s: float, fetch: Fetch | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._url = url
        self._algorithms = tuple(algorithms)
        self._cache_s = cache_s
        self._min_refresh_s = min_refresh_s
        self._fetch = fetch or (lambda u: http_get(u, timeout_s=FETCH_TIMEOUT_S,
                                                   max_bytes=MAX_JWKS_BYTES))
        self._monotonic = monotonic
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None

    async def key_for(self, kid: str | None, alg: str) -> PyJWK | None:
        """The key for a token header, fetching or refreshing the set when that is due."""
        now = self._monotonic()
        if self._keys is None:
            if self._may_fetch(now):
                await self._refresh()
        elif now - self._fetched_at >= self._cache_s and self._may_fetch(now):
            self._start_refresh()  # serve the cached keys while the new ones arrive
        keys = self._keys
        if keys is None:
            return None
        key = keys.key_for(kid, alg)
        if key is None and not keys.knows(kid) and self._may_fetch(now):
            await self._refresh()
            key = self._keys.key_for(kid, alg) if self._keys is not None else None
        return key

    async def prime(self) -> None:
        """Fetch once up front (at start) so the first request does not wait for it."""
        await self._refresh()

    async def aclose(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
            await asyncio.gather(self._inflight, return_exceptions=True)

    def _may_fetch(self, now: float) -> bool:
        return self._last_attempt is None or now - self._last_attempt >= self._min_refresh_s

    def _start_refresh(self) -> asyncio.Task[None]:
        if self._inflight is None or self._inflight.done():
            self._last_attempt = self._monotonic()
            self._inflight = asyncio.create_task(self._fetch_once(), name="apigate-jwks-fetch")
        return self._inflight

    async def _refresh(self) -> None:
        # shield: a request that is cancelled must not cancel the fetch others wait on.
        await asyncio.shield(self._start_refresh())

    async def _fetch_once(self) -> None:
        try:
            keys = KeySet.parse(await self._fetch(self._url), self._algorithms)
        except Exception as exc:  # a JWKS outage (any failure) must never take auth down
            log.warning("cannot fetch JWKS from %s, keeping %d cached keys: %s",
                        self._url, len(self._keys or ()), exc)
            return
        self._keys = keys
        self._fetched_at = self._monotonic()


class HttpGetError(Exception):
    """The JWKS server answered something other than a bounded 200 response."""


async def http_get(url: str, *, timeout_s: float, max_bytes: int) -> bytes:
    """GET ``url`` (http or https, default TLS verification) over HTTP/1.1; return the body.

    Bounded: the whole exchange within ``timeout_s``, the body at most ``max_bytes``.
    DNS runs in the loop's resolver thread, so nothing here blocks the event loop.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpGetError(f"not an http(s) URL: {url!r}")
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    port = parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(
            parts.hostname, port, ssl=tls, limit=max_bytes + 65536)
        try:
            writer.write(
                f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n"
                "User-Agent: apigate\r\nConnection: close\r\n\r\n".encode("ascii"))
            await writer.drain()
            return await _read_response(reader, max_bytes)
        finally:
            writer.close()


async def _read_response(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.split("\r\n")
    if status_line.split(" ")[1:2] != ["200"]:
        raise HttpGetError(f"JWKS server answered {status_line[:100]!r}")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return await _read_chunked(reader, max_bytes)
    if "content-length" in headers:
        length = int(headers["content-length"])
        if not 0 <= length <= max_bytes:
            raise HttpGetError(f"JWKS body of {length} bytes exceeds {max_bytes}")
        return await reader.readexactly(length)
    body = bytearray()
    while chunk := await reader.read(65536):  # no length given: the body ends at EOF
        body += chunk
        if len(body) > max_bytes:
            raise HttpGetError(f"JWKS body exceeds {max_bytes} bytes")
    return bytes(body)


async def _read_chunked(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            return bytes(body)
        if len(body) + size > max_bytes:
            raise HttpGetError(f"JWKS body exceeds {max_bytes} bytes")
        body += await reader.readexactly(size)
        await reader.readexactly(2)
