"""One keep-alive connection to an upstream target, parsed by llhttp's response parser.

An :class:`Exchange` is one request/response on it. The response head resolves a future; body
chunks go straight to a sink (the client's response writer) so no task wakes per chunk, and the
upstream socket is paused while the client's socket is full.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import httptools

from apigate.http.flush import TickBuffer


class UpstreamError(Exception):
    """The upstream failed; ``kind`` is ``connect``, ``reset``, ``timeout`` or ``protocol``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ResponseHead:
    __slots__ = ("content_length", "headers", "keep_alive", "status", "version")

    def __init__(
        self,
        status: int,
        version: str,
        headers: list[tuple[bytes, bytes]],
        content_length: int | None,
        keep_alive: bool,
    ) -> None:
        self.status = status
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.keep_alive = keep_alive


class Exchange:
    """The state of one request/response on an :class:`UpstreamConnection`."""

    __slots__ = ("body_until_eof", "buffered", "done", "head", "head_only", "sink")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, head_only: bool) -> None:
        self.head: asyncio.Future[ResponseHead] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.head_only = head_only
        self.sink: Callable[[bytes], None] | None = None
        self.buffered: list[bytes] = []
        self.body_until_eof = False

    def fail(self, error: UpstreamError) -> None:
        for future in (self.head, self.done):
            if not future.done():
                future.set_exception(error)
                future.exception()  # mark retrieved: the waiter may be the other future

    def set_sink(self, sink: Callable[[bytes], None]) -> None:
        for chunk in self.buffered:
            sink(chunk)
        self.buffered.clear()
        self.sink = sink


class UpstreamConnection(asyncio.Protocol):
    """A connection owned by a pool; ``exchange`` is set while a request is in flight."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._out = TickBuffer()
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.closed = False
        self.reusable = True
        self.tunnel: Callable[[bytes], None] | None = None
        self.upgraded = False
        self.on_lost: Callable[[], None] | None = None
        self.on_writable: Callable[[], None] | None = None  # after a write pause ends
        self._headers: list[tuple[bytes, bytes]] = []
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.last_data = 0.0
        self._read_timeout = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._out.attach(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        exchange = self.exchange
        if exchange is not None:
            if exchange.head.done() and exchange.body_until_eof and not exchange.done.done():
                exchange.done.set_result(None)  # a close-delimited body ends here
            else:
                exchange.fail(UpstreamError("reset", "upstream closed the connection"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.on_lost is not None:
            self.on_lost()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.on_writable is not None:
            self.on_writable()

    @property
    def writing_paused(self) -> bool:
        return self._writing_paused

    async def drain(self) -> None:
        if self._writing_paused and not self.closed:
            self._drain = self._loop.create_future()
            await self._drain
        if self.closed:
            raise UpstreamError("reset", "upstream closed the connection")

    def begin(self, *, head_only: bool, read_timeout_s: float) -> Exchange:
        """Start an exchange; it fails with a timeout after ``read_timeout_s`` of silence."""
        self.exchange = Exchange(self._loop, head_only=head_only)
        self._headers = []
        self._read_timeout = read_timeout_s
        self.last_data = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self.last_data + read_timeout_s, self._on_timer)
        return self.exchange

    def _on_timer(self) -> None:
        """Lazily re-armed: one timer handle per connection, not one per request or chunk."""
        self._timer = None
        exchange = self.exchange
        if exchange is None or exchange.done.done() or self.closed:
            return
        deadline = self.last_data + self._read_timeout
        now = self._loop.time()
        if now < deadline or self._reading_paused:
            self._timer = self._loop.call_at(max(deadline, now + 0.05), self._on_timer)
            return
        self.reusable = False
        exchange.fail(UpstreamError("timeout", "upstream read timed out"))
        self.close()

    def write(self, data: bytes) -> None:
        """Queue ``data``; everything written in this tick goes out in one write."""
        self.last_data = self._loop.time()  # sending a body is progress too
        self._out.write(data)

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        self.reusable = False
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_data = self._loop.time()
        if self.tunnel is not None:
            self.tunnel(data)
            return
        exchange = self.exchange
        if self.upgraded and exchange is not None:
            exchange.buffered.append(data)  # tunnel bytes that arrived before the splice
            return
        if exchange is None:
            self.close()  # bytes nobody asked for: the connection is not safe to reuse
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # 101 Switching Protocols: whatever follows the head belongs to the tunnel
            self.upgraded = True
            rest = data[exc.args[0] :]
            if rest:
                exchange.buffered.append(rest)
        except httptools.HttpParserError as exc:
            self.reusable = False
            exchange.fail(UpstreamError("protocol", f"bad response from upstream: {exc}"))
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        parser = self._parser
        status = parser.get_status_code()
        if exchange is None:
            return
        if 100 <= status < 200 and status != 101:
            self._headers = []  # 1xx interim responses are not forwarded
            return
        content_length = None
        codings: list[bytes] = []
        for name, value in self._headers:
            if name == b"content-length":
                content_length = int(value)
            elif name == b"transfer-encoding":
                codings += (c.strip().lower() for c in value.split(b","))
        chunked = bool(codings)
        no_body = exchange.head_only or status in (204, 304) or status == 101
        if chunked and codings != [b"chunked"] and not no_body:
            # Relayed without its coding (gzip, ...) the body would reach the client as
            # garbage; nginx answers 502 too. The rest of the connection is unreadable.
            self.reusable = False
            named = b", ".join(codings).decode("latin-1")
            exchange.fail(UpstreamError("protocol", f"unsupported Transfer-Encoding: {named}"))
            self.close()
            return
        keep_alive = parser.should_keep_alive()
        exchange.body_until_eof = not no_body and content_length is None and not chunked
        if exchange.body_until_eof or not keep_alive or status == 101:
            self.reusable = False  # after a 101 the connection speaks another protocol
        head = ResponseHead(
            status, parser.get_http_version(), self._headers, content_length, keep_alive
        )
        if not exchange.head.done():
            exchange.head.set_result(head)
        if exchange.head_only and status != 101:
            # llhttp cannot know a HEAD response has no body; start a fresh parser instead.
            self._parser = httptools.HttpResponseParser(self)
            self._complete(exchange)

    def on_body(self, chunk: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        if exchange.sink is not None:
            exchange.sink(chunk)
        else:
            exchange.buffered.append(chunk)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.head.done():
            self._complete(exchange)

    def _complete(self, exchange: Exchange) -> None:
        if not exchange.done.done():
            exchange.done.set_result(None)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self._reading_paused:
            self._reading_paused = False
            self.last_data = self._loop.time()
            self.transport.resume_reading()
