"""A lean asyncio RESP2 client for the rate-limit hot path.

Every command issued during one event-loop tick is appended to one buffer and sent with one
``transport.write`` (the flush is scheduled with ``loop.call_soon``, or comes early once
``FLUSH_EVERY`` commands are waiting); replies are parsed by ``hiredis.Reader`` and matched
first-in first-out to futures (or reply sinks). Each command has a deadline: a command not
answered in time fails with :class:`StorageError`, and a connection that answers nothing for
``dead_after`` seconds is dropped. A lost connection fails everything pending on it
and is re-opened lazily, with exponential back-off between failed attempts.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from apigate.ratelimit.storage.base import StorageError

Arg = bytes | str | int | float
Command = tuple[Arg, ...]

# hiredis' stub types the argument as a 1-tuple; it takes any tuple of str/bytes/int/float.
_pack: Callable[[Command], bytes] = hiredis.pack_command  # type: ignore[assignment]


# A tick's buffer is written early once it holds this many commands, so Redis starts on the
# first ones while Python is still encoding the rest. Measured with one EVALSHA per decision
# (as on a Cluster) and 64 concurrent callers: ~1.7x the decisions per second of one write at
# the end of the tick, which keeps Python and Redis waiting on each other in lock step.
FLUSH_EVERY = 16


class ReplyError(StorageError):
    """Redis answered with an error reply: ``ERR ...``, ``NOSCRIPT ...``, ``MOVED ...``."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one Redis server listens and how to log in to it."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: ssl.SSLContext | None = None


def endpoint_from_url(url: str) -> Endpoint:
    """``rediss://u:p@h:6380/2`` -> Endpoint(h, 6380, "u", "p", 2, <verifying TLS context>).

    ``?ssl_cert_reqs=none`` turns certificate checks off, ``?ssl_ca_certs=FILE`` trusts FILE.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
    path = parts.path.strip("/")
    db = int(path) if path else 0
    tls = None
    if parts.scheme == "rediss":
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        tls = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
        if query.get("ssl_cert_reqs", "required").lower() == "none":
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
    return Endpoint(
        host=parts.hostname,
        port=parts.port or 6379,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        db=db,
        tls=tls,
    )


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script shipped as package data; its SHA1 is what EVALSHA names."""

    source: bytes
    sha: bytes

    @classmethod
    def from_package(cls, name: str) -> Script:
        """Load ``apigate/ratelimit/storage/lua/<name>``."""
        source = resources.files("apigate.ratelimit.storage").joinpath("lua", name).read_bytes()
        sha = hashlib.sha1(source, usedforsecurity=False).hexdigest()
        return cls(source=source, sha=sha.encode())


class _Counters:
    __slots__ = ("writes",)

    def __init__(self) -> None:
        self.writes = 0


class ReplySink(Protocol):
    """What a reply is handed to: an ``asyncio.Future``, or an object that acts at once.

    The decision batcher passes one of its own so a batch's reply reaches its decisions in the
    tick it is read, without a future's callback waiting for the next tick.
    """

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class _Connection(asyncio.Protocol):
    """One socket; commands of one tick share one write; replies resolve futures in order.

    Deadlines are kept per write and checked by one timer, re-armed lazily for the earliest
    deadline still open, so a write costs no timer of its own.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, counters: _Counters, dead_after: float):
        self._loop = loop
        self._counters = counters
        self._dead_after = dead_after
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[ReplySink | None] = deque()
        self._buf: list[bytes] = []
        self._batches: dict[float, list[ReplySink]] = {}
        self._deadlines: deque[tuple[float, list[ReplySink]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._progress_at = 0.0
        self.lost: asyncio.Future[None] = loop.create_future()

    @property
    def usable(self) -> bool:
        return self._transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def send(self, args: Command, timeout: float) -> asyncio.Future[Any]:
        """Queue one command for this tick's write; the future fails after ``timeout`` s."""
        fut = self._loop.create_future()
        self._queue(_pack(args), fut, timeout, schedule=True)
        return fut

    def send_packed_now(self, packed: bytes, sink: ReplySink, timeout: float) -> None:
        """Queue one command already in RESP for ``sink``; write the buffer now."""
        self._queue(packed, sink, timeout, schedule=False)
        self.flush()

    def _queue(self, packed: bytes, sink: ReplySink, timeout: float, *, schedule: bool) -> None:
        if self._transport is None:
            raise StorageError("redis connection is closed")
        if not self._pending:
            self._progress_at = self._loop.time()
        self._pending.append(sink)
        batch = self._batches.get(timeout)
        if batch is None:
            self._batches[timeout] = [sink]
        else:
            batch.append(sink)
        buf = self._buf
        if not buf and schedule:
            self._loop.call_soon(self.flush)
        buf.append(packed)
        if len(buf) >= FLUSH_EVERY:
            self.flush()

    def send_discard(self, args: Command) -> None:
        """Queue a command whose reply is dropped (ASKING before a redirected command)."""
        if self._transport is None:
            raise StorageError("redis connection is closed")
        if not self._buf:
            self._loop.call_soon(self.flush)
        self._buf.append(_pack(args))
        self._pending.append(None)

    def flush(self) -> None:
        """Write everything queued so far (normally called once at the end of the tick)."""
        if not self._buf:
            return
        data, self._buf = b"".join(self._buf), []
        batches, self._batches = self._batches, {}
        if self._transport is None:
            return
        self._transport.write(data)
        self._counters.writes += 1
        now = self._loop.time()
        deadlines = self._deadlines
        while deadlines and all(sink.done() for sink in deadlines[0][1]):
            deadlines.popleft()  # answered: forget its deadline before the timer looks
        for timeout, sinks in batches.items():
            deadline = now + timeout
            deadlines.append((deadline, sinks))
            if self._timer is None or deadline < self._timer_at:
                self._arm(deadline)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._check_deadlines)

    def _check_deadlines(self, rechecked: bool = False) -> None:
        now = self._loop.time()
        due = [
            sinks for deadline, sinks in self._deadlines
            if deadline <= now and any(not sink.done() for sink in sinks)
        ]
        if due and not rechecked:
            # libuv runs timers before it polls sockets: on a busy loop the reply may already
            # sit unread in the socket. Look again after one poll before calling Redis late.
            self._timer = self._loop.call_later(0, self._check_deadlines, True)
            return
        expired = False
        for sinks in due:
            for sink in sinks:
                if not sink.done():
                    sink.set_exception(StorageError("redis did not answer in time"))
                    expired = True
        left = deque(
            (deadline, sinks) for deadline, sinks in self._deadlines
            if deadline > now and any(not sink.done() for sink in sinks)
        )
        self._deadlines = left
        self._timer = None
        if left:
            self._arm(min(deadline for deadline, _ in left))
        stalled = now - self._progress_at
        if expired and self._pending and stalled > self._dead_after and self._transport:
            self._transport.abort()  # a hung server: fail everything, reconnect later

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self._pending
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError:
                if self._transport is not None:
                    self._transport.abort()
                return
            if reply is False:
                break
            fut = pending.popleft()
            if fut is None or fut.done():
                continue
            if isinstance(reply, ReplyError):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)
        self._progress_at = self._loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._buf = []
        self._batches = {}
        self._deadlines.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            fut = self._pending.popleft()
            if fut is not None and not fut.done():
                fut.set_exception(StorageError(f"redis connection lost: {exc or 'closed'}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self, *, abort: bool = False) -> None:
        if self._transport is not None:
            if abort:
                self._transport.abort()
            else:
                self._transport.close()
