"""Writes coalesced per event-loop tick: one ``transport.write`` per connection per tick.

A proxied request writes a head and a body to each side; written at once they cost one
syscall each. Buffered and flushed together at the end of the tick they cost one, and the
responses of pipelined requests share it (DESIGN.md, decision 4: batch per tick).
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Buffered(Protocol):
    def flush(self) -> None: ...


class TickFlusher:
    """Flushes every connection that wrote during this tick, in one ``call_soon`` callback."""

    __slots__ = ("_loop", "_pending", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[Buffered] = []
        self._scheduled = False

    def add(self, conn: Buffered) -> None:
        self._pending.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_all)

    def _flush_all(self) -> None:
        pending, self._pending = self._pending, []
        self._scheduled = False
        for conn in pending:
            conn.flush()


class TickBuffer:
    """Bytes one connection wrote during this tick; ``flush`` sends them in one write."""

    __slots__ = ("_flusher", "_out", "_transport")

    def __init__(self, transport: asyncio.WriteTransport | None = None) -> None:
        self._flusher = flusher()
        self._out: list[bytes] = []
        self._transport = transport

    def attach(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        if not self._out:
            self._flusher.add(self)
        self._out.append(data)

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        self._out = []
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))


_FLUSHERS: dict[asyncio.AbstractEventLoop, TickFlusher] = {}


def flusher() -> TickFlusher:
    """The flusher of the running loop."""
    loop = asyncio.get_running_loop()
    found = _FLUSHERS.get(loop)
    if found is None:
        found = _FLUSHERS[loop] = TickFlusher(loop)
    return found
