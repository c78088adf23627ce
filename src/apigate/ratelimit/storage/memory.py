"""Per-process counters: the embedded default (``storage.url: memory://``).

Decisions use the pure functions of :mod:`apigate.ratelimit.algorithms`. A decision runs
without an ``await`` in the middle, so on one event loop it is atomic like the Redis script.
Every entry expires (the same TTLs the script sets); expired entries are dropped when read and
swept a few at a time on every call, so memory stays bounded by the live keys.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from apigate.config.model import StorageConfig
from apigate.ratelimit import algorithms as alg
from apigate.ratelimit.storage.base import (
    Algorithm,
    LimitSpec,
    LimitState,
    Outcome,
    Reply,
    Storage,
    Submitted,
    group_reply,
)

# Expired entries removed per call: enough to outpace the insert rate, small enough to
# keep every decision O(1) amortised.
SWEEP_BATCH = 32


def wall_clock_ms() -> Callable[[], int]:
    """A wall clock in ms that never runs backwards (a step back holds it still)."""
    last = 0

    def now() -> int:
        nonlocal last
        last = max(last, time.time_ns() // 1_000_000)
        return last

    return now


@dataclass(slots=True)
class _Entry:
    """One spec key's state. Windows: ``index``/``curr``/``prev``; log: ``log``; GCRA: ``tat``."""

    algorithm: Algorithm
    expires_at: int
    scheduled: int = 0  # deadline of this entry's one record in the expiry heap
    index: int = 0
    curr: int = 0
    prev: int = 0
    log: list[int] = field(default_factory=list)
    tat: int | None = None


@dataclass(slots=True)
class _Check:
    spec: LimitSpec
    entry: _Entry | None
    decision: alg.Decision
    result: int  # the algorithm's second return value (new count / expired / new tat)


class MemoryStorage(Storage):
    """Counters in a dict of this process; ``clock`` returns ms (injected in tests)."""

    bounds_own_calls = True  # decides without waiting on anything

    def __init__(self, *, clock: Callable[[], int] | None = None) -> None:
        self._clock = clock or wall_clock_ms()
        self._entries: dict[str, _Entry] = {}
        self._expiry: list[tuple[int, str]] = []  # one (deadline, key) per entry, lazy
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(cls, config: StorageConfig) -> MemoryStorage:
        """``memory://`` takes no options."""
        del config
        return cls()

    def __len__(self) -> int:
        return len(self._entries)

    async def decide(self, specs: Sequence[LimitSpec]) -> Outcome:
        """Check all specs; charge all iff all allow (no await inside: atomic)."""
        return self._decide(specs)

    def submit(
        self, specs: Sequence[LimitSpec], future: asyncio.Future[Reply] | None = None
    ) -> Submitted:
        """``decide`` with a future that is already done (see ``Storage.submit``)."""
        if future is None:
            loop = self._loop
            if loop is None or loop.is_closed():
                # asyncio.get_running_loop() costs a getpid() syscall per call: look it up once.
                loop = self._loop = asyncio.get_running_loop()
            future = loop.create_future()
        if len(specs) == 1:  # the common case: the reply without an Outcome in between
            decision = self._decide_one(specs[0])
            future.set_result(group_reply(decision.allowed, (decision.state,)))
        else:
            outcome = self._decide(specs)
            future.set_result(group_reply(outcome.allowed, outcome.states))
        return future, 0

    def _decide(self, specs: Sequence[LimitSpec]) -> Outcome:
        if len(specs) == 1:  # the common case, without the loops
            decision = self._decide_one(specs[0])
            return Outcome(decision.allowed, (decision.state,))
        now = self._now()
        checks = [self._check(spec, now) for spec in specs]
        allowed = all(c.decision.allowed for c in checks)
        for check in checks:
            self._settle(check, now, allowed)
        return Outcome(allowed, tuple(c.decision.state for c in checks))

    def _decide_one(self, spec: LimitSpec) -> alg.Decision:
        """Decide (and charge if allowed) one spec."""
        now = self._now()
        check = self._check(spec, now)
        self._settle(check, now, check.decision.allowed)
        return check.decision

    def _now(self) -> int:
        """The clock, after sweeping a few entries expired by then."""
        now = self._clock()
        expiry = self._expiry
        if expiry and expiry[0][0] <= now:
            self.sweep(now, SWEEP_BATCH)
        return now

    def _settle(self, check: _Check, now: int, allowed: bool) -> None:
        """Charge ``check`` if the decision allowed; a log drops its expired entries anyway."""
        if allowed:
            self._charge(check, now)
        elif check.entry is not None and check.spec.algorithm is _SLIDING_LOG:
            del check.entry.log[: check.result]

    async def peek(self, spec: LimitSpec) -> LimitState:
        """The state for a request of ``spec.cost``; nothing is written."""
        return self._check(spec, self._clock(), peek=True).decision.state

    async def refund(self, specs: Sequence[LimitSpec]) -> None:
        """Undo a charge of ``cost`` made moments ago (the contract's refund mode)."""
        now = self._clock()
        for spec in specs:
            entry = self._live(spec, now)
            if entry is None:
                continue
            if spec.algorithm is Algorithm.SLIDING_LOG:
                del entry.log[max(0, len(entry.log) - spec.cost) :]
            elif spec.algorithm is Algorithm.TOKEN_BUCKET:
                entry.tat = None if entry.tat is None else alg.refund_tat(spec, entry.tat, now)
            elif entry.index == alg.window_index(now, spec.window_ms):
                entry.curr = alg.refund_count(entry.curr, spec.cost)

    async def reset(self, spec: LimitSpec) -> None:
        self._entries.pop(spec.key, None)

    async def heartbeat(self, instance_id: str, ttl_ms: int) -> int:
        """One process is the whole cluster of a memory storage."""
        del instance_id, ttl_ms
        return 1

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self._entries.clear()
        self._expiry.clear()

    def sweep(self, now: int, limit: int | None = None) -> int:
        """Drop up to ``limit`` (None: all) entries expired at ``now``; returns how many."""
        dropped = 0
        while self._expiry and self._expiry[0][0] <= now and (limit is None or dropped < limit):
            deadline, key = heapq.heappop(self._expiry)
            entry = self._entries.get(key)
            if entry is None or entry.scheduled != deadline:
                continue  # reset or replaced since: a stale record
            if entry.expires_at <= now:
                del self._entries[key]
                dropped += 1
            else:  # extended since it was scheduled: look again at its new deadline
                entry.scheduled = entry.expires_at
                heapq.heappush(self._expiry, (entry.expires_at, key))
        return dropped

    def _live(self, spec: LimitSpec, now: int) -> _Entry | None:
        entry = self._entries.get(spec.key)
        if entry is None or entry.expires_at <= now or entry.algorithm is not spec.algorithm:
            return None
        return entry

    def _check(self, spec: LimitSpec, now: int, *, peek: bool = False) -> _Check:
        entry = self._live(spec, now)
        algorithm = spec.algorithm
        if algorithm is _TOKEN_BUCKET:
            decision, result = alg.token_bucket(spec, entry.tat if entry else None, now, peek=peek)
        elif algorithm is _SLIDING_LOG:
            decision, result = alg.sliding_log(spec, entry.log if entry else (), now, peek=peek)
        else:
            prev, curr = _window_counts(spec, entry, now)
            if algorithm is _FIXED_WINDOW:
                decision, result = alg.fixed_window(spec, curr, now, peek=peek)
            else:
                decision, result = alg.sliding_window(spec, prev, curr, now, peek=peek)
        return _Check(spec, entry, decision, result)

    def _charge(self, check: _Check, now: int) -> None:
        spec, entry = check.spec, check.entry
        fresh = entry is None
        if entry is None:
            entry = _Entry(spec.algorithm, expires_at=0)
            self._entries[spec.key] = entry
        algorithm = spec.algorithm
        if algorithm is _TOKEN_BUCKET:
            entry.tat = check.result
        elif algorithm is _SLIDING_LOG:
            del entry.log[: check.result]
            entry.log.extend([now] * spec.cost)
        else:
            entry.prev, _ = _window_counts(spec, entry, now)
            entry.index = alg.window_index(now, spec.window_ms)
            entry.curr = check.result
        entry.expires_at = now + check.decision.ttl_ms
        if fresh:
            entry.scheduled = entry.expires_at
            heapq.heappush(self._expiry, (entry.expires_at, spec.key))


# Module constants: an enum member read through its class costs a lookup on every decision.
_FIXED_WINDOW, _SLIDING_LOG, _TOKEN_BUCKET = (
    Algorithm.FIXED_WINDOW, Algorithm.SLIDING_LOG, Algorithm.TOKEN_BUCKET
)


def _window_counts(spec: LimitSpec, entry: _Entry | None, now: int) -> tuple[int, int]:
    """(count of window idx-1, count of window idx) from an entry that may be older."""
    if entry is None:
        return 0, 0
    idx = now // spec.window_ms  # alg.window_index, without the call
    if entry.index == idx:
        return entry.prev, entry.curr
    if entry.index == idx - 1:
        return entry.curr, 0
    return 0, 0
