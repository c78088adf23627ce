"""A request body as a stream of chunks fed by the parser, with back-pressure on the socket."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class BodyTooLarge(Exception):
    """The body grew past ``server.max_body_bytes`` (a chunked body, checked as it arrives)."""


class BodyAborted(Exception):
    """The client went away before the body was complete."""


class FlowControl(Protocol):
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def send_continue(self) -> None: ...


class RequestBody:
    """Chunks of one request body: ``feed`` from the parser, ``read`` from the handler."""

    __slots__ = (
        "_buffered", "_chunks", "_error", "_flow", "_limit", "_paused", "_waiter",
        "complete", "expect_continue", "received",
    )

    def __init__(self, flow: FlowControl, *, limit: int, expect_continue: bool) -> None:
        self._flow = flow
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.complete = False
        self.received = 0
        self.expect_continue = expect_continue

    def feed(self, chunk: bytes) -> None:
        if self._error is not None:
            return
        self.received += len(chunk)
        if self.received > self._limit:
            self.fail(BodyTooLarge())
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self._flow.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.complete = True
        if self._paused:
            # No more of this body will come: what follows is the next request, held back by
            # the pipeline's own limits. A handler that answers without reading the body must
            # not leave the connection paused for good.
            self._paused = False
            self._flow.resume_reading()
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes:
        """The next chunk, or ``b""`` once the body is complete."""
        if self.expect_continue:
            self.expect_continue = False
            self._flow.send_continue()
        while True:
            if self._error is not None:
                raise self._error
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < LOW_WATER:
                    self._paused = False
                    self._flow.resume_reading()
                return chunk
            if self.complete:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
