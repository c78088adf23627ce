"""RateLimiter: one decision per request, shadow limits, the over-limit cache and headers."""

from __future__ import annotations

from collections.abc import Sequence

from apigate.identity import Caller
from apigate.ratelimit.limiter import RateLimiter, Verdict

from .fakes import make_config, make_limiter

PER_IP = {"limit": 2, "window": "1s", "algorithm": "fixed_window"}
PER_CONSUMER = {"limit": 5, "window": "1m", "algorithm": "fixed_window", "key": "consumer"}


async def check(
    limiter: RateLimiter,
    names: Sequence[str] = ("per-ip",),
    ip: str = "203.0.113.7",
    headers: dict[str, str] | None = None,
) -> Verdict:
    return await limiter.check(
        route="users", policy_names=names, caller=Caller(ip, "acme"), headers=headers or {}
    )


def header(verdict: Verdict, name: bytes) -> bytes | None:
    values = [v for k, v in verdict.headers if k == name]
    assert len(values) <= 1
    return values[0] if values else None


async def test_no_policy_means_unlimited_without_storage() -> None:
    """A route without limits is allowed and storage is not asked."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP})
    verdict = await check(limiter, names=())
    assert verdict.allowed
    assert verdict.decision == "unlimited"
    assert storage.calls == []


async def test_all_limits_of_a_request_go_in_one_decide_call() -> None:
    """Two enforced policies are checked together, in order, in one storage call."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP, "per-consumer": PER_CONSUMER})
    verdict = await check(limiter, names=("per-ip", "per-consumer", "per-ip"))
    assert verdict.allowed
    assert [[s.key for s in call] for call in storage.calls] == [
        ["apigate:{ip=203.0.113.7}:per-ip", "apigate:{consumer=acme}:per-consumer"]
    ]


async def test_limited_request_gets_429_retry_after_and_the_policy() -> None:
    """Over the limit: 429, Retry-After in whole seconds rounded up, the limiting policy named."""
    limiter, _, clock = make_limiter({"per-ip": PER_IP})
    clock.now = 1000.2  # 800 ms left in the window
    await check(limiter)
    await check(limiter)
    verdict = await check(limiter)
    assert (verdict.allowed, verdict.status, verdict.decision) == (False, 429, "limited")
    assert verdict.retry_after_s == 1
    assert verdict.policy == "per-ip"
    assert header(verdict, b"Retry-After") == b"1"
    assert header(verdict, b"RateLimit") == b'"per-ip";r=0;t=1'


async def test_ietf_headers_on_allowed_request() -> None:
    """ietf: RateLimit-Policy (q, w) and RateLimit (r, t) for each enforced policy."""
    limiter, _, clock = make_limiter({"per-ip": PER_IP, "per-consumer": PER_CONSUMER})
    clock.now = 1020.0  # 40 s into the minute
    verdict = await check(limiter, names=("per-ip", "per-consumer"))
    assert header(verdict, b"RateLimit-Policy") == b'"per-ip";q=2;w=1, "per-consumer";q=5;w=60'
    assert header(verdict, b"RateLimit") == b'"per-ip";r=1;t=1, "per-consumer";r=4;t=60'
    assert header(verdict, b"X-RateLimit-Limit") is None


async def test_legacy_headers_report_the_most_restrictive_policy() -> None:
    """legacy: X-RateLimit-* of the policy with the lowest remaining."""
    limiter, _, _ = make_limiter(
        {"per-ip": PER_IP, "per-consumer": PER_CONSUMER}, rate_limit_headers="legacy"
    )
    verdict = await check(limiter, names=("per-consumer", "per-ip"))
    assert header(verdict, b"X-RateLimit-Limit") == b"2"
    assert header(verdict, b"X-RateLimit-Remaining") == b"1"
    assert header(verdict, b"X-RateLimit-Reset") == b"1"
    assert header(verdict, b"RateLimit") is None


async def test_both_and_none_header_modes() -> None:
    """both: IETF and legacy fields; none: no rate-limit fields at all."""
    both, _, _ = make_limiter({"per-ip": PER_IP}, rate_limit_headers="both")
    verdict = await check(both)
    assert header(verdict, b"RateLimit") is not None
    assert header(verdict, b"X-RateLimit-Remaining") == b"1"
    none, _, _ = make_limiter({"per-ip": PER_IP}, rate_limit_headers="none")
    assert (await check(none)).headers == ()


async def test_bad_cost_header_is_400_and_charges_nothing() -> None:
    """An invalid request-supplied cost is refused before storage is asked."""
    limiter, storage, _ = make_limiter(
        {"per-ip": {**PER_IP, "cost": "header:X-Cost"}}
    )
    verdict = await check(limiter, headers={"x-cost": "0"})
    assert (verdict.allowed, verdict.status, verdict.decision) == (False, 400, "bad_request")
    assert verdict.error is not None
    assert "X-Cost" in verdict.error
    assert storage.calls == []
    assert (await check(limiter, headers={"x-cost": "2"})).allowed
    assert storage.calls[0][0].cost == 2


async def test_shadow_policy_counts_but_never_rejects() -> None:
    """A shadow limit over its limit reports shadow_limited and still allows."""
    shadow = {**PER_IP, "limit": 1, "shadow": True}
    limiter, storage, _ = make_limiter({"per-ip": PER_IP, "shadow-ip": shadow})
    first = await check(limiter, names=("per-ip", "shadow-ip"))
    second = await check(limiter, names=("per-ip", "shadow-ip"))
    assert (first.decision, second.decision) == ("allowed", "shadow_limited")
    assert second.allowed
    assert second.shadow_limited == ("shadow-ip",)
    assert b"shadow-ip" not in (header(second, b"RateLimit-Policy") or b"")
    assert sorted(len(call) for call in storage.calls) == [1, 1, 1, 1]  # separate calls


async def test_shadow_does_not_block_enforced_limits() -> None:
    """An enforced denial is reported as limited, with the shadow verdict attached."""
    shadow = {**PER_IP, "limit": 1, "shadow": True}
    limiter, _, _ = make_limiter({"per-ip": {**PER_IP, "limit": 1}, "shadow-ip": shadow})
    await check(limiter, names=("per-ip", "shadow-ip"))
    verdict = await check(limiter, names=("per-ip", "shadow-ip"))
    assert (verdict.status, verdict.decision) == (429, "limited")
    assert verdict.shadow_limited == ("shadow-ip",)


async def test_over_limit_key_is_answered_locally_until_retry_time() -> None:
    """After a denial, the same key is refused without storage until its retry time."""
    limiter, storage, clock = make_limiter({"per-ip": PER_IP})
    for _ in range(3):
        await check(limiter)
    calls = len(storage.calls)
    verdict = await check(limiter)
    assert (verdict.status, verdict.decision) == (429, "limited_cached")
    assert header(verdict, b"Retry-After") == b"1"
    assert len(storage.calls) == calls
    assert (await check(limiter, ip="198.51.100.1")).allowed  # other keys still asked
    assert len(storage.calls) == calls + 1
    clock.now += 1.0
    assert (await check(limiter)).decision == "allowed"


async def test_over_limit_cache_only_covers_requests_that_include_the_denied_key() -> None:
    """A request whose limits do not include the denied key is decided by storage."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP, "per-consumer": PER_CONSUMER})
    for _ in range(3):
        await check(limiter, names=("per-ip",))
    calls = len(storage.calls)
    verdict = await check(limiter, names=("per-consumer",))
    assert verdict.allowed
    assert len(storage.calls) == calls + 1
    both = await check(limiter, names=("per-consumer", "per-ip"))
    assert both.decision == "limited_cached"


async def test_over_limit_cache_asks_storage_for_a_cheaper_request() -> None:
    """A denial of cost 2 does not cover a cost-1 request, which may still fit."""
    policy = {"limit": 3, "window": "1s", "algorithm": "fixed_window", "cost": "header:X-Cost"}
    limiter, _, _ = make_limiter({"per-ip": policy})
    assert (await check(limiter, headers={"x-cost": "2"})).allowed
    assert (await check(limiter, headers={"x-cost": "2"})).decision == "limited"
    assert (await check(limiter, headers={"x-cost": "3"})).decision == "limited_cached"
    assert (await check(limiter, headers={"x-cost": "1"})).decision == "allowed"


async def test_with_config_uses_new_policies_and_same_storage() -> None:
    """A reloaded limiter enforces the new limits on the same counters, cache cleared."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP})
    for _ in range(3):
        await check(limiter)
    reloaded = limiter.with_config(make_config({"per-ip": {**PER_IP, "limit": 4}}))
    assert reloaded.guard is limiter.guard
    assert (await check(reloaded)).allowed  # 3rd unit of 4: the old count is kept
    assert (await check(reloaded)).allowed
    assert not (await check(reloaded)).allowed
    assert storage.calls[-1][0].limit == 4


async def test_unknown_policy_names_are_skipped() -> None:
    """A name the config does not know (a reload race) adds no limit."""
    limiter, _, _ = make_limiter({"per-ip": PER_IP})
    assert (await check(limiter, names=("gone",))).decision == "unlimited"
