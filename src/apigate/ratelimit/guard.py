"""Storage behind a timeout and a circuit breaker, plus the process-local fallback.

One :class:`StorageGuard` lives as long as the storage does: a config reload makes a new
limiter over the same guard, so the breaker, the over-limit cache and the live-instance count
survive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from apigate.ratelimit.breaker import CircuitBreaker
from apigate.ratelimit.overlimit import OverLimitCache
from apigate.ratelimit.storage.base import LimitSpec, Outcome, Storage, StorageError
from apigate.ratelimit.storage.memory import MemoryStorage

T = TypeVar("T")

HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TTL_MS = 3000


def local_share(spec: LimitSpec, instances: int) -> LimitSpec:
    """This instance's share of a limit while storage is down: ``limit // n``, at least 1."""
    n = max(1, instances)
    return replace(spec, limit=max(1, spec.limit // n), burst=spec.burst // n)


class StorageGuard:
    """Calls storage within ``timeout_s`` unless the breaker is open; knows the live count."""

    def __init__(
        self,
        storage: Storage,
        *,
        instance_id: str,
        clock: Callable[[], float],
        timeout_s: float,
    ) -> None:
        self.storage = storage
        self.instance_id = instance_id
        self.clock = clock
        self.timeout_s = timeout_s
        self.breaker = CircuitBreaker(clock=clock)
        self.cache = OverLimitCache()
        self.local = MemoryStorage(clock=lambda: int(clock() * 1000))
        self.live_instances = 1
        self.started = False
        self._observe: Callable[[float], None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    def observe_with(self, hook: Callable[[float], None] | None) -> None:
        """Report the seconds of each storage round trip to ``hook`` (metrics)."""
        if self.storage.times_own_calls:
            self.storage.observe_with(hook)
        else:
            self._observe = hook

    async def decide(self, specs: Sequence[LimitSpec]) -> Outcome | None:
        """Storage's outcome, or None when it failed, timed out or the circuit is open."""
        if not self.breaker.allow():
            return None
        started = time.perf_counter()
        try:
            if self.storage.bounds_own_calls:
                # Counted from the moment the command is written: a timer here would also
                # count this loop's own queueing and call a healthy Redis dead under load.
                outcome = await self.storage.decide(specs)
            else:
                async with asyncio.timeout(self.timeout_s):
                    outcome = await self.storage.decide(specs)
        except (StorageError, TimeoutError):
            self.breaker.failure()
            return None
        except BaseException:
            self.breaker.abandon()
            raise
        finally:
            if self._observe is not None:
                self._observe(time.perf_counter() - started)
        self.breaker.success()
        return outcome

    async def decide_locally(self, specs: Sequence[LimitSpec]) -> Outcome:
        """Decide in this process with each limit shared among the live instances."""
        n = self.live_instances
        return await self.local.decide([local_share(s, n) for s in specs])

    async def bounded(self, call: Awaitable[T]) -> T:
        """Await a storage call other than a decision (ping, heartbeat, admin usage and reset).

        A storage that bounds its own calls gives these the longer deadline it chose for them
        (a background call may wait longer than a decision); any other gets ``timeout_s``.
        Raises StorageError or TimeoutError.
        """
        if self.storage.bounds_own_calls:
            return await call
        async with asyncio.timeout(self.timeout_s):
            return await call

    async def ping(self) -> bool:
        try:
            await self.bounded(self.storage.ping())
        except (StorageError, TimeoutError):
            return False
        return True

    async def heartbeat_once(self) -> int:
        """Report this instance alive; returns the live count (the last known on failure)."""
        try:
            count = await self.bounded(
                self.storage.heartbeat(self.instance_id, HEARTBEAT_TTL_MS)
            )
        except (StorageError, TimeoutError):
            return self.live_instances
        self.breaker.storage_answered()
        self.live_instances = max(1, count)
        return self.live_instances

    def start_heartbeat(self) -> None:
        """Heartbeat every second from now on (idempotent; needs a running loop)."""
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def aclose(self) -> None:
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.storage.aclose()
        await self.local.aclose()

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.heartbeat_once()
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
