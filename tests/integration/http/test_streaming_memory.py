"""Bodies stream with back-pressure: the worker's memory stays bounded whatever the body size,
measured as the worker's VmRSS while the body is in flight."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from tests.integration.http.helpers import children, gateway_config, route, rss_kib, upstream
from tests.integration.http.rawclient import RawClient, get
from tests.support.gateway import Gateway, running_gateway
from tests.support.upstreams import Handler, ScriptedUpstream, UpstreamConn, UpstreamLoop

MIB = 1024 * 1024
BOUND_KIB = 48 * 1024  # worker RSS may grow this much at most while a body streams through


@pytest.fixture(scope="module")
def scripted(upstream_loop: UpstreamLoop) -> ScriptedUpstream:
    return upstream_loop.serve("stream")


@pytest.fixture(scope="module")
def gateway(
    scripted: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = gateway_config(
        {"up": upstream(scripted.url, read_timeout_s=60)},
        [route("all", "up", path_prefix="/")],
        max_body_bytes=4 * 1024 * MIB,
    )
    with running_gateway(config, tmp_path_factory.mktemp("stream")) as gw:
        yield gw


def worker_pid(gateway: Gateway) -> int:
    assert gateway.process is not None
    (pid,) = children(gateway.process.pid)
    return pid


class PeakRss:
    """Samples a process's VmRSS in a thread until stopped; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = rss_kib(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid))

    def stop(self) -> int:
        """Stop sampling; return the growth over the start in KiB."""
        self._stop.set()
        self._thread.join(2)
        self.peak = max(self.peak, rss_kib(self.pid))
        return self.peak - self.start


def discard_and_count(delay: float = 0.0) -> Handler:
    """A handler that waits ``delay`` seconds before reading, then discards the body."""

    async def handler(conn: UpstreamConn) -> None:
        while (request := await conn.read_head()) is not None:
            await asyncio.sleep(delay)
            total = await conn.read_body(request, keep=False)
            await conn.respond(200, str(total).encode())

    return handler


def upload(gateway: Gateway, head: bytes, pieces: Iterator[bytes], timeout: float = 60) -> bytes:
    """Send a head and then the pieces as they are generated; return the response body."""
    with RawClient(gateway.port, timeout=timeout) as client:
        client.send(head)
        for piece in pieces:
            client.send(piece)
        response = client.read_response()
    assert response.status == 200, response.body
    return response.body


def repeated(piece: bytes, count: int) -> Iterator[bytes]:
    for _ in range(count):
        yield piece


@pytest.mark.slow
def test_1_gib_upload_streams_with_bounded_worker_memory(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """A 1 GiB Content-Length upload reaches the upstream whole while worker RSS grows < 48 MiB."""
    scripted.reset(discard_and_count())
    rss = PeakRss(worker_pid(gateway))
    head = b"PUT /gib HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % (1024 * MIB)
    body = upload(gateway, head, repeated(b"g" * MIB, 1024), timeout=120)
    growth = rss.stop()
    assert body == str(1024 * MIB).encode()
    assert growth < BOUND_KIB, f"worker RSS grew {growth} KiB"


def test_chunked_upload_to_a_stalled_upstream_keeps_memory_bounded(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """While the upstream reads nothing for a second, a 96 MiB chunked upload is held back by
    back-pressure (not buffered in the worker), then completes."""
    scripted.reset(discard_and_count(delay=1.0))
    rss = PeakRss(worker_pid(gateway))
    piece = b"%x\r\n%s\r\n" % (MIB, b"s" * MIB)
    head = b"POST /stall HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"

    def pieces() -> Iterator[bytes]:
        yield from repeated(piece, 96)
        yield b"0\r\n\r\n"

    body = upload(gateway, head, pieces())
    growth = rss.stop()
    assert body == str(96 * MIB).encode()
    assert growth < BOUND_KIB, f"worker RSS grew {growth} KiB"


def test_large_response_to_a_slow_client_keeps_memory_bounded(
    gateway: Gateway, scripted: ScriptedUpstream
) -> None:
    """A 128 MiB response to a client that reads nothing for a second is paced by back-pressure
    (worker RSS grows < 48 MiB) and arrives whole."""
    size = 128 * MIB

    async def big(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"r" * MIB
        for _ in range(128):
            await conn.send(block)

    scripted.reset(big)
    rss = PeakRss(worker_pid(gateway))
    with RawClient(gateway.port, timeout=30) as client:
        client.send(get("/big"))
        time.sleep(1.0)
        head = client.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        received = len(client.leftover())
        while received < size:
            chunk = client.sock.recv(MIB)
            assert chunk, f"closed after {received} bytes"
            received += len(chunk)
    growth = rss.stop()
    assert received == size
    assert growth < BOUND_KIB, f"worker RSS grew {growth} KiB"
