"""``rediss://``: RedisStorage over TLS to a real redis-server, certificate checked."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.redis_servers import free_port, wait_until

from apigate.config.model import StorageConfig
from apigate.ratelimit.storage.base import Algorithm, LimitSpec, StorageError
from apigate.ratelimit.storage.redis import RedisStorage

SPEC = LimitSpec("apigate:{tls=1}:p", Algorithm.FIXED_WINDOW, 10, 60_000)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS-only redis-server with a self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None or shutil.which("redis-server") is None:
        pytest.skip("openssl or redis-server missing")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
         str(cert), "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    context = ssl.create_default_context(cafile=str(cert))

    def answers() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    try:
        wait_until(answers, 10, "TLS redis-server")
        yield port, cert
    finally:
        proc.terminate()
        proc.wait(10)


async def test_rediss_with_trusted_certificate(tls_redis: tuple[int, Path]) -> None:
    """rediss:// with ssl_ca_certs verifies the server and decides over TLS."""
    port, cert = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    store = RedisStorage.from_config(StorageConfig(url=url, timeout_ms=2000))
    try:
        assert (await store.decide([SPEC])).allowed
        await store.ping()
    finally:
        await store.aclose()


async def test_rediss_refuses_an_untrusted_certificate(tls_redis: tuple[int, Path]) -> None:
    """Without the CA the self-signed server is refused: StorageError, nothing decided."""
    port, _ = tls_redis
    store = RedisStorage.from_config(
        StorageConfig(url=f"rediss://127.0.0.1:{port}/0", timeout_ms=2000)
    )
    try:
        with pytest.raises(StorageError, match="CERTIFICATE_VERIFY_FAILED"):
            await store.decide([SPEC])
    finally:
        await store.aclose()
