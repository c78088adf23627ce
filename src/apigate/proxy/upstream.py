"""Upstreams: targets with keep-alive pools, a balancing policy and passive health."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

from apigate.config.model import UpstreamConfig
from apigate.proxy.connection import UpstreamConnection, UpstreamError


def _active(target: Target) -> int:
    return target.active


class Target:
    """One ``http://host:port`` of an upstream, with its idle pool and health."""

    __slots__ = (
        "_clock", "_idle", "active", "ejected_until", "failures", "host", "host_header", "port",
        "url",
    )

    def __init__(self, url: str, *, clock: Callable[[], float]) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.host_header = parts.netloc.encode()
        self.active = 0
        self.failures = 0
        self.ejected_until = 0.0
        self._idle: deque[UpstreamConnection] = deque()
        self._clock = clock

    def available(self, now: float) -> bool:
        return self.ejected_until <= now

    def take_idle(self) -> UpstreamConnection | None:
        while self._idle:
            conn = self._idle.pop()  # most recently used: warmest, least likely to be stale
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def give_back(self, conn: UpstreamConnection, pool_size: int) -> None:
        if conn.closed or not conn.reusable or len(self._idle) >= pool_size:
            conn.close()
            return
        conn.exchange = None
        # Back-pressure may have paused it as the response ended: an idle connection reads,
        # so that it notices a close and its next response is read at all.
        conn.resume_reading()
        self._idle.append(conn)

    def close_idle(self) -> None:
        while self._idle:
            self._idle.pop().close()


class Upstream:
    """``Upstream("users", config)``: pick a target, lend connections, record health."""

    def __init__(
        self, name: str, config: UpstreamConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.config = config
        # What each request reads, as plain attributes: each read of an UpstreamConfig
        # (pydantic) attribute costs about ten times a plain object's.
        self.retries = config.retries
        self.read_timeout_s = config.read_timeout_s
        self._pool_size = config.pool_size
        self._balance = config.balance
        self.targets = tuple(Target(url, clock=clock) for url in config.targets)
        self._clock = clock
        self._next = 0
        self._retired = False
        self._healthy = len(self.targets)
        self._any_ejected = False
        self.on_health_change: Callable[[str, int], None] | None = None  # (name, ejected)

    def pick(self, exclude: tuple[Target, ...] = ()) -> Target | None:
        """A healthy target by the balancing policy, avoiding ``exclude`` when possible."""
        if self._any_ejected or exclude:
            candidates = self._candidates(exclude)
            if not candidates:
                return None
        else:
            candidates = self.targets  # the common case: nobody ejected, nothing to avoid
        if len(candidates) == 1:
            return candidates[0]
        balance = self._balance
        if balance == "least_conn":
            return min(candidates, key=_active)
        if balance == "random":
            return random.choice(candidates)
        self._next += 1
        return candidates[self._next % len(candidates)]

    def _candidates(self, exclude: tuple[Target, ...]) -> tuple[Target, ...]:
        now = self._clock()
        healthy = tuple(t for t in self.targets if t.available(now))
        if len(healthy) != self._healthy:
            self._health_changed(len(healthy))
        self._any_ejected = len(healthy) != len(self.targets)
        return tuple(t for t in healthy if t not in exclude) or healthy

    def ejected(self) -> int:
        now = self._clock()
        return sum(1 for t in self.targets if not t.available(now))

    def record_failure(self, target: Target) -> None:
        target.failures += 1
        if target.failures >= self.config.max_failures:
            target.ejected_until = self._clock() + self.config.eject_s
            target.failures = 0
            self._any_ejected = True
            self._health_changed(len(self.targets) - self.ejected())

    def _health_changed(self, healthy: int) -> None:
        self._healthy = healthy
        if self.on_health_change is not None:
            self.on_health_change(self.name, len(self.targets) - healthy)

    def record_success(self, target: Target) -> None:
        target.failures = 0

    async def connect(self, target: Target) -> tuple[UpstreamConnection, bool]:
        """An idle pooled connection (reused=True) or a new one within ``connect_timeout_s``."""
        conn = target.take_idle()
        if conn is not None:
            return conn, True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                _, conn = await loop.create_connection(
                    UpstreamConnection, target.host, target.port
                )
        except TimeoutError:
            raise UpstreamError("connect", f"connect to {target.url} timed out") from None
        except OSError as exc:
            raise UpstreamError("connect", f"connect to {target.url} failed: {exc}") from None
        return conn, False

    def release(self, target: Target, conn: UpstreamConnection) -> None:
        target.give_back(conn, 0 if self._retired else self._pool_size)

    def retire(self) -> None:
        """A reload dropped this upstream: in-flight requests finish, no connection is kept."""
        self._retired = True
        self.close()

    def close(self) -> None:
        for target in self.targets:
            target.close_idle()
