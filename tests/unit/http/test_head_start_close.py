"""HttpConnection with a head start: a request whose decision was pending when the connection
closed still reaches its handler, which accounts for it.

The socket side is a recording transport: what is under test is the connection's task and
its idle future, in the order the event loop runs them (the wire is covered by
tests/integration/http/test_head_start.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from apigate.http.request import Request
from apigate.http.response import ResponseWriter
from apigate.http.server import ConnectionTracker, HttpConnection, Limits


class _Transport(asyncio.Transport):
    """Keeps what is written; close() reports the loss one tick later, as a socket does."""

    def __init__(self, protocol: HttpConnection) -> None:
        super().__init__()
        self._protocol = protocol
        self._closed = False
        self.written = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def writelines(self, chunks: Any) -> None:
        self.written += b"".join(chunks)

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class _Gateway:
    """Takes the head start of /pending (the decision stays out until the test answers it) and
    records what its handler saw."""

    def __init__(self) -> None:
        self.wake: asyncio.Future[Any] | None = None
        self.handled: list[tuple[str, bool]] = []  # path, connection closing

    def head_start(self, request: Request, conn: HttpConnection, wake: asyncio.Future[Any]) -> bool:
        if request.path != "/pending":
            return False
        self.wake = wake
        return True

    async def handle(self, request: Request, writer: ResponseWriter, conn: HttpConnection) -> None:
        self.handled.append((request.path, conn.closing))
        if not conn.closing:
            writer.send_error(200, "ok", "-")


async def _ticks(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _connection(gateway: _Gateway) -> HttpConnection:
    limits = Limits(max_header_bytes=8192, max_body_bytes=1 << 20, header_timeout_s=5,
                    keepalive_timeout_s=5, max_connections=10)
    conn = HttpConnection(ConnectionTracker(limits, gateway.handle, gateway.head_start))
    conn.connection_made(_Transport(conn))
    conn.data_received(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")  # starts the task
    await _ticks()
    return conn


async def test_a_close_in_the_tick_the_decision_came_still_hands_the_request_over() -> None:
    """Storage answers and the connection is closed (a worker's shutdown) in the same tick:
    the task wakes normally, finds the connection closing, and the handler is still called."""
    gateway = _Gateway()
    conn = await _connection(gateway)
    conn.data_received(b"GET /pending HTTP/1.1\r\nHost: t\r\n\r\n")
    assert gateway.wake is not None
    gateway.wake.set_result([1, 0, 0, 0])
    conn.close()
    await _ticks()
    assert gateway.handled == [("/first", False), ("/pending", True)]


async def test_a_connection_lost_during_the_decision_hands_the_request_over() -> None:
    """The client leaves while the decision is out: the task is cancelled, the handler is
    still called (it finds the connection closing) and the task ends."""
    gateway = _Gateway()
    conn = await _connection(gateway)
    conn.data_received(b"GET /pending HTTP/1.1\r\nHost: t\r\n\r\n")
    conn.connection_lost(None)
    await _ticks()
    assert gateway.handled == [("/first", False), ("/pending", True)]
    assert gateway.wake is not None
    assert gateway.wake.cancelled()
