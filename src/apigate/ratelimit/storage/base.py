"""The storage seam: one atomic check-and-charge of several limits, and its failure type.

Algorithms are decided *inside* the storage (in Lua on Redis, by the pure functions of
``apigate.ratelimit.algorithms`` in memory) because the check and the charge must be one
atomic step. Every backend error is translated to :class:`StorageError` at this seam.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum


class Algorithm(IntEnum):
    """Wire codes shared with ``lua/decide.lua``."""

    FIXED_WINDOW = 1
    SLIDING_WINDOW = 2
    SLIDING_LOG = 3
    TOKEN_BUCKET = 4


class StorageError(Exception):
    """Storage could not decide in time (unreachable, timeout, script or cluster error)."""


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """One limit to check and charge: ``key`` is the full storage key, hash tag included."""

    key: str
    algorithm: Algorithm
    limit: int
    window_ms: int
    burst: int = 0
    cost: int = 1


@dataclass(slots=True)  # built per decision: a frozen dataclass pays object.__setattr__
class LimitState:
    """What one limit looks like after the decision (or a peek).

    ``remaining`` is what could still be spent now; ``reset_ms`` is how long until the limit
    is fully available again; ``retry_after_ms`` is 0 when the request was allowed by this
    limit, else how long until a request of the same cost would be.
    """

    remaining: int
    reset_ms: int
    retry_after_ms: int = 0


@dataclass(slots=True)
class Outcome:
    """The atomic result: allowed only if every limit allowed; then (and only then) charged."""

    allowed: bool
    states: tuple[LimitState, ...]


class Storage(ABC):
    """Where counters live. All keys of one ``decide`` call share one hash tag."""

    # True when ``decide`` raises StorageError by itself within storage.timeout_ms; otherwise
    # the limiter wraps each call in a timer of its own.
    bounds_own_calls = False
    # True when the storage reports its own round trips to the hook given to observe_with();
    # otherwise the limiter times each decide() call for it.
    times_own_calls = False

    def observe_with(self, hook: Callable[[float], None] | None) -> None:
        """Report the seconds of each round trip to ``hook`` (only if ``times_own_calls``)."""
        raise NotImplementedError(f"{type(self).__name__} does not time its own calls")

    @abstractmethod
    async def decide(self, specs: Sequence[LimitSpec]) -> Outcome:
        """Check every spec; charge all of them only if all allow.

        Raises StorageError; a storage with ``bounds_own_calls`` does so at the latest
        ``storage.timeout_ms`` after the command went out.
        """

    def submit(self, specs: Sequence[LimitSpec]) -> asyncio.Future[Outcome] | None:
        """``decide`` without a coroutine: a future of its Outcome, or None if unsupported.

        For the request path, which then awaits one bare future instead of a chain of
        coroutines. Only a storage with ``bounds_own_calls`` offers it (the future fails with
        StorageError within ``storage.timeout_ms``, or is done at once); ``specs`` must not be
        empty.
        """
        return None

    @abstractmethod
    async def peek(self, spec: LimitSpec) -> LimitState:
        """The state of one limit for a request of ``spec.cost``, charging nothing."""

    @abstractmethod
    async def reset(self, spec: LimitSpec) -> None:
        """Forget everything counted under ``spec.key`` (all windows)."""

    @abstractmethod
    async def heartbeat(self, instance_id: str, ttl_ms: int) -> int:
        """Record that ``instance_id`` is alive for ``ttl_ms``; return the live instance count."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StorageError unless storage answers."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close connections; idempotent."""
