"""One ECS JSON line per request on stdout, written once per event-loop tick.

Lines are built by a template (about 3x faster than ``json.dumps`` of a dict; every string
goes through the C JSON string encoder, so the output is ASCII and always valid JSON),
buffered, and written by one ``os.write`` per tick (or sooner when the buffer is large).
Several workers share stdout, so writes are cut at line boundaries into chunks of at most
``PIPE_BUF`` bytes: POSIX makes pipe writes of that size atomic, so lines never interleave.
The write is a plain blocking write: when the reader of the pipe stalls, the worker waits
for it rather than dropping lines or growing memory without bound.
"""

from __future__ import annotations

import asyncio
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _q

PIPE_BUF = getattr(select, "PIPE_BUF", 512)
_MILLIS = [f".{ms:03d}Z" for ms in range(1000)]  # a lookup is 3x cheaper than formatting


@dataclass(slots=True)
class AccessEntry:
    """What one request did. Strings are already decoded; ``None`` fields are left out."""

    method: str
    path: str
    status: int
    duration_ns: int
    client_ip: str  # trusted-proxy resolved
    source_ip: str  # the socket peer
    request_id: str
    query: str = ""
    request_bytes: int = 0
    response_bytes: int = 0
    user_agent: str | None = None
    trace_id: str | None = None
    route: str | None = None
    upstream: str | None = None
    consumer: str | None = None
    ratelimit_decision: str | None = None
    ratelimit_policy: str | None = None


class IsoClock:
    """ISO 8601 UTC timestamps with milliseconds, the date part formatted once per second."""

    __slots__ = ("_clock", "_prefix", "_second")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        """E.g. ``"2026-11-28T15:21:12.345Z"``."""
        now = self._clock()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._prefix + _MILLIS[int((now - second) * 1000)]


def _optional(name: str, value: str | None) -> str:
    return "" if value is None else f',"{name}":{_q(value)}'


def format_entry(entry: AccessEntry, timestamp: str, pid: int) -> str:
    """The JSON line (with its newline) for one entry."""
    e = entry
    return (
        f'{{"@timestamp":"{timestamp}","log.level":"info",'
        f'"message":{_q(f"{e.method} {e.path} {e.status}")},'
        f'"http.request.method":{_q(e.method)},"url.path":{_q(e.path)}'
        f"{_optional('url.query', e.query or None)}"
        f',"http.response.status_code":{e.status}'
        f',"http.request.body.bytes":{e.request_bytes}'
        f',"http.response.body.bytes":{e.response_bytes}'
        f',"event.duration":{e.duration_ns}'
        f',"client.ip":{_q(e.client_ip)},"source.ip":{_q(e.source_ip)}'
        f"{_optional('user_agent.original', e.user_agent)}"
        f',"http.request.id":{_q(e.request_id)}'
        f"{_optional('trace.id', e.trace_id)}"
        f"{_optional('apigate.route', e.route)}"
        f"{_optional('apigate.upstream', e.upstream)}"
        f"{_optional('apigate.consumer', e.consumer)}"
        f"{_optional('apigate.ratelimit.decision', e.ratelimit_decision)}"
        f"{_optional('apigate.ratelimit.policy', e.ratelimit_policy)}"
        f',"service.name":"apigate","process.pid":{pid}}}\n'
    )


class NullAccessLog:
    """Used when ``observability.access_log`` is false."""

    def log(self, entry: AccessEntry) -> None: ...
    def flush(self) -> None: ...


class AccessLog:
    """Buffers lines and writes them once per event-loop tick.

    ``write`` defaults to ``os.write`` on fd 1; tests pass a list's appender. Call
    :meth:`flush` at shutdown. Write errors (a closed stdout) drop the lines and are counted
    in :attr:`dropped`, never raised into the request path.
    """

    def __init__(
        self,
        write: Callable[[bytes], int] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_buffer_bytes: int = 64 * 1024,
    ) -> None:
        self._write = write or (lambda data: os.write(1, data))
        self._clock = IsoClock(clock)
        self._pid = os.getpid()
        self._max = max_buffer_bytes
        self._lines: list[str] = []
        self._size = 0
        self._scheduled = False
        self.dropped = 0

    def log(self, entry: AccessEntry) -> None:
        """Queue the line for ``entry``; it is written at the end of this loop tick."""
        line = format_entry(entry, self._clock.now(), self._pid)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._max:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
                self._scheduled = True
            except RuntimeError:
                self.flush()  # no loop: write at once

    def flush(self) -> None:
        """Write every buffered line, in chunks of whole lines of at most PIPE_BUF bytes."""
        self._scheduled = False
        lines, self._lines, self._size = self._lines, [], 0
        chunk: list[str] = []
        size = 0
        for line in lines:
            if size and size + len(line) > PIPE_BUF:
                self._write_all("".join(chunk).encode("ascii"), len(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write_all("".join(chunk).encode("ascii"), len(chunk))

    def _write_all(self, data: bytes, line_count: int) -> None:
        try:
            while data:
                data = data[self._write(data) :]  # a copy only after a short write
        except OSError:
            self.dropped += line_count
