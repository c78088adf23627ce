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
from typing import Any


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


# A decision's reply in decide.lua's format: per group of n specs, 1 (allowed), 0 (rejected) or
# -1 (a spec the script refused), then remaining, reset_ms and retry_after_ms for each spec.
# A batch's reply holds its groups back to back.
Reply = list[Any]
# What Storage.submit returns: the future of the reply, and where this decision's group starts.
Submitted = tuple["asyncio.Future[Reply]", int]


def group_outcome(reply: Reply, pos: int, count: int) -> Outcome:
    """The Outcome of the group of ``count`` specs at ``reply[pos]``; StorageError if refused.

    ``[1, 4, 900, 0]`` at 0 with one spec -> Outcome(True, (LimitState(4, 900, 0),)).
    """
    allowed = reply[pos]
    if allowed == -1:
        raise StorageError("decide.lua refused the request: bad spec (limit, window or cost)")
    if count == 1:
        return Outcome(allowed == 1, (LimitState(reply[pos + 1], reply[pos + 2], reply[pos + 3]),))
    states = tuple(
        LimitState(reply[i], reply[i + 1], reply[i + 2])
        for i in range(pos + 1, pos + 1 + 3 * count, 3)
    )
    return Outcome(allowed == 1, states)


def group_reply(allowed: bool, states: Sequence[LimitState]) -> Reply:
    """A decision as a one-group reply (what a storage deciding in Python hands to submit)."""
    reply: Reply = [1 if allowed else 0]
    for state in states:
        reply += (state.remaining, state.reset_ms, state.retry_after_ms)
    return reply


def spec_args(spec: LimitSpec) -> tuple[int, int, int, int, int]:
    """decide.lua's arguments for ``spec``: algorithm code (a plain int), limit, window_ms,
    burst, cost."""
    return (int(spec.algorithm), spec.limit, spec.window_ms, spec.burst, spec.cost)


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

    def submit(
        self, specs: Sequence[LimitSpec], future: asyncio.Future[Reply] | None = None
    ) -> Submitted | None:
        """``decide`` without a coroutine, or None if unsupported.

        For the request path, which then awaits one bare future instead of a chain of
        coroutines and reads its group of the reply with :func:`group_outcome` (or directly).
        The future (``future`` when given, else a new one) fails with StorageError within
        ``storage.timeout_ms`` or is done at once. Only a storage with ``bounds_own_calls``
        offers it; ``specs`` must not be empty.
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
