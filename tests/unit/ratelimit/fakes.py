"""Test doubles for the limiter tests: a settable clock and a storage that can be made to fail."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from apigate.config.model import Config
from apigate.ratelimit.limiter import RateLimiter
from apigate.ratelimit.storage.base import (
    LimitSpec,
    LimitState,
    Outcome,
    Reply,
    Storage,
    StorageError,
    Submitted,
    group_reply,
)
from apigate.ratelimit.storage.memory import MemoryStorage


class Clock:
    """Seconds, set by the test."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def ms(self) -> int:
        return int(self.now * 1000)


class FakeStorage(Storage):
    """A MemoryStorage on the test clock that records calls and fails or hangs on demand."""

    def __init__(self, clock: Clock) -> None:
        self.inner = MemoryStorage(clock=clock.ms)
        self.calls: list[list[LimitSpec]] = []
        self.fail = False
        self.hang = False
        self.instances = 1
        self.closed = False
        self.submits = False  # offer Storage.submit (the request path's bare future)

    async def _maybe_fail(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.fail:
            raise StorageError("storage down")

    async def decide(self, specs: Sequence[LimitSpec]) -> Outcome:
        self.calls.append(list(specs))
        await self._maybe_fail()
        return await self.inner.decide(specs)

    def submit(
        self, specs: Sequence[LimitSpec], future: asyncio.Future[Reply] | None = None
    ) -> Submitted | None:
        if not self.submits:
            return None
        task = asyncio.ensure_future(self._reply(specs))
        if future is None:
            return task, 0
        given = future
        task.add_done_callback(
            lambda done: given.set_exception(exc) if (exc := done.exception()) is not None
            else given.set_result(done.result())
        )
        return given, 0

    async def _reply(self, specs: Sequence[LimitSpec]) -> Reply:
        outcome = await self.decide(specs)
        return group_reply(outcome.allowed, outcome.states)

    async def peek(self, spec: LimitSpec) -> LimitState:
        await self._maybe_fail()
        return await self.inner.peek(spec)

    async def reset(self, spec: LimitSpec) -> None:
        await self._maybe_fail()
        await self.inner.reset(spec)

    async def heartbeat(self, instance_id: str, ttl_ms: int) -> int:
        await self._maybe_fail()
        return self.instances

    async def ping(self) -> None:
        await self._maybe_fail()

    async def aclose(self) -> None:
        self.closed = True


def make_config(
    rate_limits: dict[str, dict[str, Any]], **top: Any
) -> Config:
    return Config.model_validate({"rate_limits": rate_limits, **top})


def make_limiter(
    rate_limits: dict[str, dict[str, Any]], clock: Clock | None = None, **top: Any
) -> tuple[RateLimiter, FakeStorage, Clock]:
    clock = clock or Clock()
    storage = FakeStorage(clock)
    limiter = RateLimiter(
        make_config(rate_limits, **top), storage, instance_id="test-1", clock=clock
    )
    return limiter, storage, clock
