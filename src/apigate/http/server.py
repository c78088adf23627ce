"""The client side of the data plane: an asyncio Protocol per connection, parsed by llhttp.

Requests are answered in order (pipelining), one handler task at a time per connection; the
body of the request being parsed streams into its :class:`RequestBody` while earlier ones are
answered. Limits (head size, body size, head time, idle time) answer 431/413/408 or close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import httptools

from apigate.http.body import BodyAborted, RequestBody
from apigate.http.errors import HttpError, error_body, status_line
from apigate.http.flush import TickBuffer
from apigate.http.framing import (
    check_host,
    check_transfer_encoding,
    split_target,
)
from apigate.http.request import Request
from apigate.http.response import ResponseWriter
from apigate.routing.canonical import BadPath, canonical_path

log = logging.getLogger("apigate.http")

MAX_PIPELINE = 16
_HEAD_SLACK = 1024
# Bytes a client may send after an Upgrade request's head before the upstream has answered;
# past this, reading pauses until the tunnel opens (or the refused upgrade closes).
_UPGRADE_BUFFER = 64 * 1024
# Why reading from a client is paused. Each reason is lifted on its own: a request body's
# back-pressure must hold while the pipeline drains, and the other way round.
_PAUSE_FLOW, _PAUSE_PIPELINE, _PAUSE_UPGRADE, _PAUSE_CLOSING = 1, 2, 4, 8


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int
    max_body_bytes: int
    header_timeout_s: float
    keepalive_timeout_s: float
    max_connections: int


Handler = Callable[[Request, ResponseWriter, "HttpConnection"], Awaitable[None]]
# Called as a request's head completes while its connection's task waits for work, with the
# future that task awaits: True when the callee took the future and will complete it (a result
# or an exception) once a first step of the request, begun now, is done; the task then wakes
# once for both. False: the connection wakes the task itself.
HeadStart = Callable[[Request, "HttpConnection", "asyncio.Future[Any]"], bool]


class ConnectionTracker:
    """The live connections of one listener, for ``max_connections`` and draining."""

    def __init__(
        self, limits: Limits, handler: Handler, head_start: HeadStart | None = None
    ) -> None:
        self.limits = limits
        self.handler = handler
        self.head_start = head_start
        self.connections: set[HttpConnection] = set()
        self.draining = False  # answer with Connection: close and close idle connections
        self.on_open: Callable[[], None] | None = None
        self.on_close: Callable[[], None] | None = None

    def idle_connections(self) -> list[HttpConnection]:
        return [c for c in self.connections if c.is_idle()]

    def busy(self) -> int:
        return sum(1 for c in self.connections if not c.is_idle())


class HttpConnection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, tracker: ConnectionTracker) -> None:
        self._tracker = tracker
        self._limits = tracker.limits
        self._loop = asyncio.get_running_loop()
        self._out = TickBuffer()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._queue: deque[tuple[Request, ResponseWriter]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.Future[Any] | None = None
        # The request whose head start took the idle future, until the task wakes for it.
        self._head_started: tuple[Request, ResponseWriter] | None = None
        self.closing = False  # closed or closing: nothing more is read or written
        self._pauses = 0  # why reading is paused: a set of _PAUSE_* bits, 0 when reading
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.on_writable: Callable[[], None] | None = None
        # parse state of the request whose head or body is arriving
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # the head's URL and fields as parsed (limit: max_header_bytes)
        # Bytes of the reads that continued an open head (limit: max_header_bytes + _HEAD_SLACK):
        # they bound what the parser holds before a callback, such as a long field name.
        self._head_raw = 0
        self._in_head = False
        self._parsing: Request | None = None
        self._upgrade_data: bytearray | None = None
        self.tunnel: Callable[[bytes], None] | None = None
        self._deadline = 0.0
        self._deadline_kind = ""
        self._timer: asyncio.TimerHandle | None = None

    # -- connection lifecycle -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._out.attach(self.transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        tracker = self._tracker
        if len(tracker.connections) >= self._limits.max_connections:
            body = error_body("too many connections", "-")
            self.transport.write(
                status_line("1.1", 503)
                + b"content-type: application/json\r\nconnection: close\r\n"
                + b"retry-after: 1\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
            transport.close()
            self.closing = True
            return
        tracker.connections.add(self)
        if tracker.on_open is not None:
            tracker.on_open()
        self._arm(self._limits.header_timeout_s, "header")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closing and self not in self._tracker.connections:
            return
        self.closing = True
        self._tracker.connections.discard(self)
        if self._tracker.on_close is not None:
            self._tracker.on_close()
        if self._timer is not None:
            self._timer.cancel()
        for request, _ in self._queue:
            if request.body is not None:
                request.body.fail(BodyAborted())
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._wake_drain()
        if self.tunnel_closed is not None:
            self.tunnel_closed()

    tunnel_closed: Callable[[], None] | None = None

    def is_idle(self) -> bool:
        return not self._queue and not self._in_head

    def close(self) -> None:
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closing = True

    # -- flow control ---------------------------------------------------------------------

    def pause_reading(self, reason: int = 0) -> None:
        """Stop reading for ``reason`` (default: flow control of a body or tunnel)."""
        reason = reason or _PAUSE_FLOW
        if not self._pauses and self.transport is not None:
            self.transport.pause_reading()
        self._pauses |= reason

    def resume_reading(self, reason: int = 0) -> None:
        """Lift the pause for ``reason``; reading resumes once no other reason holds it."""
        reason = reason or _PAUSE_FLOW
        if not self._pauses & reason:
            return
        self._pauses &= ~reason
        if not self._pauses and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drain()
        if self.on_writable is not None:
            self.on_writable()

    @property
    def writing_paused(self) -> bool:
        return self._writing_paused

    def _wake_drain(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        if self._writing_paused and not self.closing:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def write(self, data: bytes) -> None:
        """Queue ``data``; everything written in this tick goes out in one write."""
        if not self.closing:
            self._out.write(data)

    def flush(self) -> None:
        self._out.flush()

    def send_continue(self) -> None:
        """Answer ``Expect: 100-continue`` once the handler starts reading the body."""
        if self._queue:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # -- timers (one lazily re-armed handle per connection) ---------------------------------

    def _arm(self, seconds: float, kind: str) -> None:
        self._deadline = self._loop.time() + seconds
        self._deadline_kind = kind
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _disarm(self) -> None:
        self._deadline_kind = ""

    def _on_timer(self) -> None:
        self._timer = None
        if self.closing or not self._deadline_kind:
            return
        now = self._loop.time()
        if now < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        if self._deadline_kind == "header" and not self._queue and (
            self._head_bytes or self._head_raw
        ):
            self._reject(HttpError(408, "request head not received in time", close=True))
        else:
            self.close()

    # -- parsing --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel(data)
            return
        if self._upgrade_data is not None:
            self._upgrade_data += data
            if len(self._upgrade_data) > _UPGRADE_BUFFER:
                self.pause_reading(_PAUSE_UPGRADE)  # until the tunnel opens
            return
        if self.closing:
            return
        continues_head = self._in_head
        if not continues_head and not self._queue:
            self._arm(self._limits.header_timeout_s, "header")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_data = bytearray(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            # httptools wraps an exception raised in a callback; ours carry the real status.
            cause = exc.__context__
            if isinstance(cause, HttpError):
                self._reject(cause)
            else:
                self._reject(HttpError(400, f"malformed request: {exc}", close=True))
        else:
            if continues_head and self._in_head:
                self._head_raw += len(data)
                if self._head_raw > self._limits.max_header_bytes + _HEAD_SLACK:
                    self._reject(HttpError(431, "request head too large", close=True))

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._headers = []
        self._head_bytes = self._head_raw = 0
        if not self._queue:
            self._arm(self._limits.header_timeout_s, "header")

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer field: dropped (RFC 9110 6.5.1 lets a proxy discard them)
        self._headers.append((name.lower(), value))
        self._count_head(len(name) + len(value) + 4)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._limits.max_header_bytes:
            raise HttpError(431, "request head too large", close=True)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = self._head_raw = 0
        request = self._build_request()
        self._parsing = request
        writer = ResponseWriter(self, request)
        self._queue.append((request, writer))
        if len(self._queue) >= MAX_PIPELINE:
            self.pause_reading(_PAUSE_PIPELINE)
        if len(self._queue) == 1:
            self._start_next()

    def _build_request(self) -> Request:
        parser = self._parser
        method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise HttpError(505, "HTTP version not supported", close=True)
        headers = self._headers
        # CR, LF and NUL in a value never get here: llhttp refuses them (DESIGN.md, decision 5).
        hosts: list[bytes] = []
        codings: list[bytes] = []
        content_length = None
        expect = None
        for name, value in headers:  # one pass for every header the framing rules look at
            if name == b"host":
                hosts.append(value)
            elif name == b"content-length":
                content_length = int(value)  # llhttp has refused a bad or duplicate one
            elif name == b"transfer-encoding":
                codings.append(value)
            elif name == b"expect":
                expect = value
        host = check_host(hosts, version)
        chunked = check_transfer_encoding(codings, version)
        if chunked:
            content_length = None
        if method == "CONNECT":
            raise HttpError(405, "CONNECT is not supported", close=True)
        raw_path, query = split_target(method, self._url)
        try:
            path = raw_path.decode("ascii") if raw_path == b"*" else canonical_path(raw_path)
        except BadPath as exc:
            raise HttpError(400, f"bad path: {exc}", close=True) from None
        if content_length is not None and content_length > self._limits.max_body_bytes:
            raise HttpError(413, "request body too large", close=True)
        has_body = chunked or bool(content_length)
        if expect is not None and expect.lower() != b"100-continue":
            raise HttpError(417, "unsupported Expect", close=True)
        body = None
        if has_body:
            body = RequestBody(
                self,
                limit=self._limits.max_body_bytes,
                expect_continue=expect is not None and version == "1.1",
            )
        return Request(
            method=method,
            raw_path=raw_path,
            path=path,
            query=query,
            version=version,
            headers=headers,
            host=host,
            keep_alive=parser.should_keep_alive(),
            content_length=content_length,
            chunked=chunked,
            upgrade=parser.should_upgrade(),
            body=body,
        )

    def on_body(self, chunk: bytes) -> None:
        if self._parsing is not None and self._parsing.body is not None:
            self._parsing.body.feed(chunk)

    def on_message_complete(self) -> None:
        if self._parsing is not None and self._parsing.body is not None:
            self._parsing.body.finish()
        self._parsing = None

    # -- serving --------------------------------------------------------------------------

    def _start_next(self) -> None:
        """Wake this connection's serving task (one task per connection, not per request)."""
        if self._task is None:
            self._task = self._loop.create_task(self._serve())
        elif (idle := self._idle) is not None and not idle.done():
            head_start = self._tracker.head_start
            if head_start is not None:
                queued = self._queue[0]
                if head_start(queued[0], self, idle):
                    # The request is being answered, as when the task takes it: _disarm(),
                    # written out (a call less per request).
                    self._deadline_kind = ""
                    self._head_started = queued
                    return
            idle.set_result(None)

    async def _serve(self) -> None:
        """Answer queued requests in order until the connection closes."""
        queue = self._queue
        while not self.closing:
            if not queue:
                self._idle = self._loop.create_future()
                try:
                    await self._idle
                except asyncio.CancelledError:
                    await self._cut_short()
                    raise
                except Exception:  # noqa: S110 - a head start's failure: the handler reads it
                    pass
                self._idle = None
                if self.closing:  # closed, not cancelled, while the head start was pending
                    await self._cut_short()
                    return
                self._head_started = None
                continue
            request, writer = queue[0]
            self._disarm()
            if self._tracker.draining:
                writer.close = True
            try:
                await self._tracker.handler(request, writer, self)
            except asyncio.CancelledError:
                self.close()
                return
            except Exception:
                log.exception("request handling failed")
                if not writer.started:
                    writer.send_error(500, "internal error", "-", close=True)
                else:
                    self.close()
            self._finish(writer)

    async def _cut_short(self) -> None:
        """The connection ended while a head start was pending (if one was): the request's
        handler still runs, finds the connection closing and accounts for the request (it was
        charged)."""
        started, self._head_started = self._head_started, None
        if started is not None:
            request, writer = started
            with contextlib.suppress(asyncio.CancelledError):
                await self._tracker.handler(request, writer, self)

    def _finish(self, writer: ResponseWriter) -> None:
        self._queue.popleft()
        if writer.close or self.closing or not writer.started:
            self.close()
            return
        if self._pauses & _PAUSE_PIPELINE and len(self._queue) < MAX_PIPELINE:
            self.resume_reading(_PAUSE_PIPELINE)
        if self._queue:
            return
        if self._in_head:
            self._arm(self._limits.header_timeout_s, "header")
        else:
            self._arm(self._limits.keepalive_timeout_s, "idle")

    def _reject(self, error: HttpError) -> None:
        """Answer a framing or limit error for the request being parsed, then close."""
        self._in_head = False
        parsing = self._parsing
        if parsing is not None and parsing.body is not None:
            parsing.body.fail(error)
        if self._queue and self._queue[0][0] is parsing and not self._queue[0][1].started:
            # The broken request is the one being answered: stop its handler (closing any
            # upstream connection it opened) and answer for it.
            if self._task is not None and not self._task.done():
                self._task.cancel()
            self._queue.clear()
        if self._queue:
            self._closing_after_queue(error)
            return
        body = error_body(error.message, "-")
        self.write(
            status_line("1.1", error.status)
            + b"content-type: application/json\r\nconnection: close\r\n"
            + b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.close()

    def _closing_after_queue(self, error: HttpError) -> None:
        """Earlier requests are still being answered: stop reading, let them finish, close."""
        self.pause_reading(_PAUSE_CLOSING)
        for _, writer in self._queue:
            writer.close = True

    def take_upgrade_data(self) -> bytes:
        """Bytes the client sent after an Upgrade request's head; tunnel mode starts now."""
        data = bytes(self._upgrade_data or b"")
        self._upgrade_data = None
        self.resume_reading(_PAUSE_UPGRADE)
        return data
