"""MemoryStorage: atomic multi-limit decisions, peek, refund, reset and bounded memory."""

from __future__ import annotations

from apigate.config.model import StorageConfig
from apigate.ratelimit.storage.base import Algorithm, LimitSpec
from apigate.ratelimit.storage.memory import MemoryStorage, wall_clock_ms


class Clock:
    def __init__(self, now: int = 0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def fixed(key: str, limit: int, window_ms: int = 1000, cost: int = 1) -> LimitSpec:
    return LimitSpec(key, Algorithm.FIXED_WINDOW, limit, window_ms, cost=cost)


async def test_rejected_request_charges_no_limit() -> None:
    """When one of two limits denies, the other is not charged either."""
    storage = MemoryStorage(clock=Clock(0))
    wide, narrow = fixed("a", 10), fixed("b", 1)
    assert (await storage.decide([wide, narrow])).allowed
    outcome = await storage.decide([wide, narrow])
    assert not outcome.allowed
    assert outcome.states[0].retry_after_ms == 0
    assert outcome.states[1].retry_after_ms == 1000
    assert (await storage.peek(wide)).remaining == 9  # only the first request counted


async def test_peek_reports_without_charging() -> None:
    """peek computes the state and writes nothing."""
    storage = MemoryStorage(clock=Clock(0))
    spec = fixed("a", 2)
    for _ in range(3):
        assert (await storage.peek(spec)).remaining == 2
    await storage.decide([spec])
    assert (await storage.peek(spec)).remaining == 1


async def test_reset_forgets_a_key() -> None:
    """After reset the key is fresh."""
    storage = MemoryStorage(clock=Clock(0))
    spec = fixed("a", 1)
    await storage.decide([spec])
    assert not (await storage.decide([spec])).allowed
    await storage.reset(spec)
    assert (await storage.decide([spec])).allowed


async def test_refund_undoes_a_charge_for_each_algorithm() -> None:
    """refund gives back what the last decision charged, whatever the algorithm."""
    clock = Clock(10_000)
    storage = MemoryStorage(clock=clock)
    for algorithm in Algorithm:
        spec = LimitSpec(f"k{algorithm}", algorithm, 2, 1000, cost=2)
        assert (await storage.decide([spec])).allowed
        assert not (await storage.decide([spec])).allowed
        await storage.refund([spec])
        assert (await storage.decide([spec])).allowed, algorithm


async def test_sliding_window_carries_the_previous_window() -> None:
    """A counter from the window before still weighs on the next one."""
    clock = Clock(0)
    storage = MemoryStorage(clock=clock)
    spec = LimitSpec("s", Algorithm.SLIDING_WINDOW, 4, 1000)
    for _ in range(4):
        assert (await storage.decide([spec])).allowed
    clock.now = 1500  # prev 4 * 0.5 = 2 -> two more pass
    assert (await storage.decide([spec])).allowed
    assert (await storage.decide([spec])).allowed
    assert not (await storage.decide([spec])).allowed


async def test_expired_entries_are_swept() -> None:
    """Keys disappear after their TTL, so memory is bounded by the live keys."""
    clock = Clock(0)
    storage = MemoryStorage(clock=clock)
    for i in range(100):
        await storage.decide([fixed(f"k{i}", 5)])
    assert len(storage) == 100
    clock.now = 1000 + 1000  # window end + TTL slack
    assert storage.sweep(clock.now) == 100
    assert len(storage) == 0


async def test_decide_sweeps_a_batch_of_expired_entries() -> None:
    """Each decision removes some expired entries, so no explicit sweep is needed."""
    clock = Clock(0)
    storage = MemoryStorage(clock=clock)
    for i in range(50):
        await storage.decide([fixed(f"k{i}", 5)])
    clock.now = 5000
    for _ in range(3):
        await storage.decide([fixed("live", 5)])
    assert len(storage) == 1


async def test_extended_entry_survives_its_first_deadline() -> None:
    """An entry written again later is kept until its new deadline."""
    clock = Clock(0)
    storage = MemoryStorage(clock=clock)
    spec = LimitSpec("tb", Algorithm.TOKEN_BUCKET, 1, 1000)
    await storage.decide([spec])
    clock.now = 1500
    await storage.decide([spec])  # new deadline: 1500 + 1000 + 1000
    storage.sweep(2600)
    assert len(storage) == 1
    assert storage.sweep(3500) == 1


async def test_reset_then_rewrite_keeps_one_heap_record() -> None:
    """A key reset and written again is still swept exactly once."""
    clock = Clock(0)
    storage = MemoryStorage(clock=clock)
    spec = fixed("a", 5)
    await storage.decide([spec])
    await storage.reset(spec)
    await storage.decide([spec])
    assert storage.sweep(10_000) == 1
    assert storage.sweep(10_000) == 0


async def test_algorithm_change_starts_fresh() -> None:
    """A key reused with another algorithm (after a reload) does not read the old state."""
    storage = MemoryStorage(clock=Clock(0))
    await storage.decide([fixed("a", 1)])
    tb = LimitSpec("a", Algorithm.TOKEN_BUCKET, 1, 1000)
    assert (await storage.decide([tb])).allowed


async def test_heartbeat_ping_and_close() -> None:
    """A memory storage is a cluster of one, always reachable; aclose drops everything."""
    storage = MemoryStorage.from_config(StorageConfig())
    assert await storage.heartbeat("i1", 3000) == 1
    await storage.ping()
    await storage.decide([fixed("a", 1)])
    await storage.aclose()
    assert len(storage) == 0


def test_default_clock_never_runs_backwards() -> None:
    """The default clock is wall time in ms, held still if the wall clock steps back."""
    clock = wall_clock_ms()
    readings = [clock() for _ in range(100)]
    assert readings == sorted(readings)
    assert readings[0] > 1_600_000_000_000
