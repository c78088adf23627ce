"""Storage failures: timeout, the open/closed/local modes, the circuit breaker, the heartbeat."""

from __future__ import annotations

import asyncio

import pytest

from apigate.identity import Caller
from apigate.ratelimit.breaker import BreakerState, CircuitBreaker
from apigate.ratelimit.guard import local_share
from apigate.ratelimit.limiter import RateLimiter, Verdict
from apigate.ratelimit.storage.base import Algorithm, LimitSpec

from .fakes import Clock, make_limiter

PER_IP = {"limit": 10, "window": "1s", "algorithm": "fixed_window"}


async def check(limiter: RateLimiter) -> Verdict:
    return await limiter.check(
        route="r", policy_names=("per-ip",), caller=Caller("203.0.113.7"), headers={}
    )


async def test_failure_open_allows_and_says_so() -> None:
    """on_failure open: a storage error allows the request, labelled failure_open."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP}, storage={"on_failure": "open"})
    storage.fail = True
    verdict = await check(limiter)
    assert (verdict.allowed, verdict.status, verdict.decision) == (True, 200, "failure_open")
    assert dict(verdict.headers)[b"RateLimit-Policy"] == b'"per-ip";q=10;w=1'


async def test_failure_closed_is_503_with_retry_after() -> None:
    """on_failure closed: a storage error is 503 with Retry-After: 1."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP}, storage={"on_failure": "closed"})
    storage.fail = True
    verdict = await check(limiter)
    assert (verdict.allowed, verdict.status, verdict.decision) == (False, 503, "failure_closed")
    assert verdict.retry_after_s == 1
    assert dict(verdict.headers)[b"Retry-After"] == b"1"


async def test_storage_timeout_applies_the_failure_mode() -> None:
    """A storage that does not answer within timeout_ms counts as failed."""
    limiter, storage, _ = make_limiter(
        {"per-ip": PER_IP}, storage={"on_failure": "closed", "timeout_ms": 1}
    )
    storage.hang = True
    assert (await check(limiter)).status == 503


async def test_failure_local_enforces_a_share_of_the_limit() -> None:
    """on_failure local: this process enforces limit // live instances on its own."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP}, storage={"on_failure": "local"})
    storage.instances = 3
    assert await limiter.guard.heartbeat_once() == 3
    storage.fail = True
    decisions = [(await check(limiter)).decision for _ in range(4)]
    assert decisions == ["local_allowed"] * 3 + ["local_limited"]


async def test_heartbeat_failure_keeps_the_last_known_count() -> None:
    """A failed heartbeat does not reset the live-instance count to 1."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP}, storage={"on_failure": "local"})
    storage.instances = 4
    await limiter.guard.heartbeat_once()
    storage.fail = True
    assert await limiter.guard.heartbeat_once() == 4
    storage.fail, storage.instances = False, 0
    assert await limiter.guard.heartbeat_once() == 1  # never below one


def test_local_share_rounds_down_but_never_below_one() -> None:
    """limit 10 over 3 instances -> 3; limit 2 over 5 -> 1; burst shares too."""
    spec = LimitSpec("k", Algorithm.TOKEN_BUCKET, 10, 1000, burst=6)
    assert (local_share(spec, 3).limit, local_share(spec, 3).burst) == (3, 2)
    assert local_share(LimitSpec("k", Algorithm.FIXED_WINDOW, 2, 1000), 5).limit == 1


async def test_start_runs_the_heartbeat_only_for_local_mode() -> None:
    """start() begins heartbeats when on_failure is local; aclose stops them and storage."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP}, storage={"on_failure": "local"})
    storage.instances = 2
    await limiter.start()
    for _ in range(3):
        await asyncio.sleep(0)  # let the task run its first beat
    assert limiter.guard.live_instances == 2
    await limiter.aclose()
    assert storage.closed
    open_limiter, open_storage, _ = make_limiter({"per-ip": PER_IP})
    open_storage.instances = 2
    await open_limiter.start()
    await asyncio.sleep(0)
    assert open_limiter.guard.live_instances == 1
    await open_limiter.aclose()


async def test_circuit_opens_after_three_failures_and_stops_calling_storage() -> None:
    """After 3 consecutive failures storage is not called during the cool-down."""
    limiter, storage, clock = make_limiter({"per-ip": PER_IP})
    storage.fail = True
    for _ in range(3):
        await check(limiter)
    assert len(storage.calls) == 3
    assert limiter.guard.breaker.state is BreakerState.OPEN
    verdict = await check(limiter)
    assert verdict.decision == "failure_open"
    assert len(storage.calls) == 3
    clock.now += 0.999
    await check(limiter)
    assert len(storage.calls) == 3


async def test_half_open_probe_success_closes_the_circuit() -> None:
    """After the cool-down one probe goes through; its success closes the circuit."""
    limiter, storage, clock = make_limiter({"per-ip": PER_IP})
    storage.fail = True
    for _ in range(3):
        await check(limiter)
    clock.now += 1.0
    storage.fail = False
    assert (await check(limiter)).decision == "allowed"
    assert limiter.guard.breaker.state is BreakerState.CLOSED
    assert len(storage.calls) == 4


async def test_half_open_probe_failure_reopens_with_longer_cooldown() -> None:
    """A failed probe opens the circuit again for twice as long."""
    limiter, storage, clock = make_limiter({"per-ip": PER_IP})
    storage.fail = True
    for _ in range(3):
        await check(limiter)
    clock.now += 1.0
    await check(limiter)  # the probe fails
    assert len(storage.calls) == 4
    clock.now += 1.5
    await check(limiter)
    assert len(storage.calls) == 4  # still open: cool-down is now 2 s
    clock.now += 0.5
    await check(limiter)
    assert len(storage.calls) == 5


def test_breaker_lets_only_one_probe_through() -> None:
    """In half-open, a second caller is refused while the probe is in flight."""
    clock = Clock(0.0)
    breaker = CircuitBreaker(threshold=1, cooldown_s=1.0, clock=clock)
    breaker.failure()
    clock.now = 1.0
    assert breaker.allow()
    assert not breaker.allow()
    breaker.abandon()  # the probe was cancelled: another caller may probe
    assert breaker.allow()
    breaker.success()
    assert breaker.allow()
    assert breaker.allow()


def test_breaker_cooldown_is_capped() -> None:
    """Repeated failed probes double the cool-down up to the cap."""
    clock = Clock(0.0)
    breaker = CircuitBreaker(threshold=1, cooldown_s=1.0, max_cooldown_s=3.0, clock=clock)
    breaker.failure()
    for expected in (2.0, 3.0, 3.0):
        clock.now += 10
        assert breaker.allow()
        breaker.failure()
        clock.now += expected - 0.001
        assert not breaker.allow()
        clock.now += 0.001
        assert breaker.state is BreakerState.OPEN
    assert breaker.allow()


async def test_heartbeat_success_ends_the_cooldown() -> None:
    """A heartbeat that reaches storage lets the next request probe before the cool-down ends."""
    limiter, storage, clock = make_limiter({"per-ip": PER_IP}, storage={"on_failure": "local"})
    storage.fail = True
    for _ in range(3):
        await check(limiter)
    assert limiter.guard.breaker.state is BreakerState.OPEN
    clock.now += 0.1
    assert (await check(limiter)).decision == "local_allowed"  # still cooling down
    storage.fail = False
    await limiter.guard.heartbeat_once()
    assert (await check(limiter)).decision == "allowed"
    assert limiter.guard.breaker.state is BreakerState.CLOSED


def test_success_resets_the_failure_count() -> None:
    """Failures must be consecutive to open the circuit."""
    breaker = CircuitBreaker(threshold=3, clock=Clock())
    for _ in range(5):
        breaker.failure()
        breaker.failure()
        breaker.success()
    assert breaker.state is BreakerState.CLOSED


def test_breaker_is_clean_only_when_closed_without_failures() -> None:
    """``clean`` (read per request instead of state and failures) follows every transition."""
    clock = Clock(0.0)
    breaker = CircuitBreaker(threshold=2, cooldown_s=1.0, clock=clock)
    assert breaker.clean
    breaker.failure()
    assert breaker.state is BreakerState.CLOSED
    assert not breaker.clean
    breaker.success()
    assert breaker.clean
    breaker.failure()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.clean
    clock.now = 1.0
    assert breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.clean
    breaker.abandon()
    assert not breaker.clean
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failures == 0
    assert breaker.clean


async def test_cancelled_probe_releases_the_half_open_slot() -> None:
    """A probe cancelled mid-call lets the next request probe instead of waiting forever."""
    limiter, storage, clock = make_limiter({"per-ip": PER_IP}, storage={"timeout_ms": 60_000})
    storage.fail = True
    for _ in range(3):
        await check(limiter)
    clock.now += 1.0
    storage.fail, storage.hang = False, True
    task = asyncio.ensure_future(check(limiter))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    storage.hang = False
    assert (await check(limiter)).decision == "allowed"


async def test_ping_reports_storage_health() -> None:
    """ping is True when storage answers and False when it fails."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP})
    assert await limiter.ping()
    storage.fail = True
    assert not await limiter.ping()
