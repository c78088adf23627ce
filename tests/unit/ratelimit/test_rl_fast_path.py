"""RateLimiter.begin/conclude/failed: the request path's decision without a chain of coroutines."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from apigate.identity import Caller
from apigate.ratelimit import limiter as limiter_module
from apigate.ratelimit.breaker import BreakerState
from apigate.ratelimit.limiter import RateLimiter, RouteLimits, Verdict
from apigate.ratelimit.storage.base import StorageError

from .fakes import make_limiter

PER_IP = {"limit": 3, "window": "1m", "algorithm": "fixed_window"}
SHADOW = {"limit": 1, "window": "1m", "algorithm": "fixed_window", "shadow": True}


def parsed(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Header lines as conclude() renders them, back as (name, value) pairs."""
    text = b"".join(lines)
    assert text == b"" or text.endswith(b"\r\n")
    return [tuple(line.split(b": ", 1)) for line in text.split(b"\r\n")[:-1]]  # type: ignore[misc]


async def decide(limiter: RateLimiter, names: tuple[str, ...] = ("per-ip",)) -> Verdict:
    """What the gateway does: begin; await a Pending's future, or fall back to check."""
    kwargs = {"route": "r", "policy_names": names, "caller": Caller("203.0.113.7"), "headers": {}}
    started = limiter.begin(**kwargs)  # type: ignore[arg-type]
    if isinstance(started, tuple):  # a Pending
        plan, (future, pos) = started
        try:
            out: list[bytes] = []
            verdict = limiter.conclude(plan, await future, pos, out)
            # What the response gets: headers written to ``out``, then the verdict's own.
            return replace(verdict, headers=(*parsed(out), *verdict.headers))
        except StorageError:
            return await limiter.failed(plan)
    if started is None:
        return await limiter.check(**kwargs)  # type: ignore[arg-type]
    return started


async def test_fast_path_decides_like_check_and_caches_the_denial() -> None:
    """Allowed up to the limit with RateLimit headers, then 429; the next denial is local.

    The clock reads 1000 s, so the aligned one-minute window ends in 20 s.
    """
    limiter, storage, _ = make_limiter({"per-ip": PER_IP})
    storage.submits = True
    verdicts = [await decide(limiter) for _ in range(5)]
    assert [v.decision for v in verdicts] == ["allowed"] * 3 + ["limited", "limited_cached"]
    assert len(storage.calls) == 4  # the cached denial never reached storage
    assert dict(verdicts[0].headers) == {
        b"RateLimit-Policy": b'"per-ip";q=3;w=60', b"RateLimit": b'"per-ip";r=2;t=20'
    }
    assert verdicts[3].status == 429
    assert dict(verdicts[3].headers)[b"Retry-After"] == b"20"  # the aligned window ends at 1020 s


async def test_storage_failure_applies_on_failure_and_opens_the_circuit() -> None:
    """A failed future is a storage failure: 503 (closed); after 3, begin stops sending."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP}, storage={"on_failure": "closed"})
    storage.submits, storage.fail = True, True
    verdicts = [await decide(limiter) for _ in range(4)]
    assert [v.status for v in verdicts] == [503] * 4
    assert limiter.guard.breaker.state is BreakerState.OPEN
    assert len(storage.calls) == 3


async def test_an_answer_resets_failures_counted_before_it() -> None:
    """Failures must be in a row: an allowed answer on the fast path forgets earlier ones, so
    two failures, an answer and two more failures leave the circuit closed."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP}, storage={"on_failure": "closed"})
    storage.submits = True
    for fail in (True, True, False, True, True):
        storage.fail = fail
        verdict = await decide(limiter)
        assert verdict.status == (503 if fail else 200)
    assert limiter.guard.breaker.state is BreakerState.CLOSED
    assert limiter.guard.breaker.failures == 2


async def test_shadow_policies_take_the_general_path() -> None:
    """begin declines a request with shadow limits; check counts them and never rejects."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP, "shadow": SHADOW})
    storage.submits = True
    kwargs = {"route": "r", "policy_names": ("per-ip", "shadow"), "caller": Caller("203.0.113.7"),
              "headers": {}}
    assert limiter.begin(**kwargs) is None  # type: ignore[arg-type]
    verdicts = [await decide(limiter, ("per-ip", "shadow")) for _ in range(2)]
    assert [v.decision for v in verdicts] == ["allowed", "shadow_limited"]


async def test_storage_without_submit_takes_the_general_path() -> None:
    """A storage that offers no bare future is asked through check()."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP})
    kwargs = {"route": "r", "policy_names": ("per-ip",), "caller": Caller("203.0.113.7"),
              "headers": {}}
    assert limiter.begin(**kwargs) is None  # type: ignore[arg-type]
    assert (await decide(limiter)).decision == "allowed"
    assert len(storage.calls) == 1


async def test_header_keyed_policies_are_planned_per_request() -> None:
    """A plan is reused per client only when its key and cost ignore the request's headers."""
    tenant = {"limit": 2, "window": "1m", "algorithm": "fixed_window", "key": "header:x-tenant",
              "cost": "header:x-cost"}
    limiter, storage, _ = make_limiter({"tenant": tenant})
    storage.submits = True

    async def call(name: str, cost: str = "1") -> str:
        started = limiter.begin(
            route="r", policy_names=("tenant",), caller=Caller("203.0.113.7"),
            headers={"x-tenant": name, "x-cost": cost},
        )
        assert isinstance(started, tuple)
        plan, (future, pos) = started
        return limiter.conclude(plan, await future, pos, []).decision

    assert [await call("a"), await call("a"), await call("a")] == ["allowed", "allowed", "limited"]
    assert await call("b", cost="2") == "allowed"  # b's own bucket, charged 2
    assert [s[0].cost for s in storage.calls] == [1, 1, 1, 2]


async def test_storage_round_trips_are_timed_for_the_metrics() -> None:
    """A storage that does not time itself is timed by the limiter, failed calls included."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP}, storage={"on_failure": "open"})
    seen: list[float] = []
    limiter.guard.observe_with(seen.append)
    await decide(limiter)
    storage.fail = True
    await decide(limiter)
    assert len(seen) == 2
    assert all(s >= 0 for s in seen)


TEN_S = {"limit": 3, "window": "10s", "algorithm": "fixed_window"}  # ends at 1010 s, in 10 s
BURST = {"limit": 2, "window": "1m", "algorithm": "fixed_window"}


@pytest.mark.parametrize("mode", ["ietf", "legacy", "both", "none"])
@pytest.mark.parametrize(
    "names",
    [
        ("per-ip",),
        ("per-ip", "burst"),  # burst has less left: the tightest, and the legacy headers' one
        # The same left: the tightest is the first; legacy headers take the latest reset.
        ("ten-s", "per-ip"),
    ],
)
async def test_allowed_plans_take_the_fast_path_in_every_header_mode(
    mode: str, names: tuple[str, ...]
) -> None:
    """Allowed requests' headers go straight to the response's list, with one of the plan's
    shared verdicts, in every ``rate_limit_headers`` mode and for several policies too; they
    are the headers, and the verdict's policy is the one, that the general path (check)
    gives for the same answers."""
    policies = {"per-ip": PER_IP, "burst": BURST, "ten-s": TEN_S}
    fast, fast_storage, _ = make_limiter(policies, rate_limit_headers=mode)
    general, _, _ = make_limiter(policies, rate_limit_headers=mode)
    fast_storage.submits = True
    kwargs = {"route": "r", "policy_names": names, "caller": Caller("203.0.113.7"),
              "headers": {}}
    for _ in range(2):
        started = fast.begin(**kwargs)  # type: ignore[arg-type]
        assert isinstance(started, tuple)
        plan, (future, pos) = started
        out: list[bytes] = []
        verdict = fast.conclude(plan, await future, pos, out)
        assert verdict in plan.allowed_by
        assert verdict.headers == ()
        expected = await general.check(**kwargs)  # type: ignore[arg-type]
        assert (verdict.allowed, verdict.decision) == (True, "allowed") == (
            expected.allowed, expected.decision
        )
        assert verdict.policy == expected.policy
        assert parsed(out) == list(expected.headers)
    # The second request, written out.
    ietf = {
        ("per-ip",): [(b"RateLimit-Policy", b'"per-ip";q=3;w=60'),
                      (b"RateLimit", b'"per-ip";r=1;t=20')],
        ("per-ip", "burst"): [(b"RateLimit-Policy", b'"per-ip";q=3;w=60, "burst";q=2;w=60'),
                              (b"RateLimit", b'"per-ip";r=1;t=20, "burst";r=0;t=20')],
        ("ten-s", "per-ip"): [(b"RateLimit-Policy", b'"ten-s";q=3;w=10, "per-ip";q=3;w=60'),
                              (b"RateLimit", b'"ten-s";r=1;t=10, "per-ip";r=1;t=20')],
    }[names]
    legacy = {
        ("per-ip",): [(b"X-RateLimit-Limit", b"3"), (b"X-RateLimit-Remaining", b"1"),
                      (b"X-RateLimit-Reset", b"20")],
        ("per-ip", "burst"): [(b"X-RateLimit-Limit", b"2"), (b"X-RateLimit-Remaining", b"0"),
                              (b"X-RateLimit-Reset", b"20")],
        ("ten-s", "per-ip"): [(b"X-RateLimit-Limit", b"3"), (b"X-RateLimit-Remaining", b"1"),
                              (b"X-RateLimit-Reset", b"20")],
    }[names]
    assert parsed(out) == {"ietf": ietf, "legacy": legacy, "both": ietf + legacy, "none": []}[mode]
    tightest = {("per-ip",): "per-ip", ("per-ip", "burst"): "burst", ("ten-s", "per-ip"): "ten-s"}
    assert verdict.policy == tightest[names]


async def test_a_percent_sign_in_a_policy_name_is_rendered_as_is() -> None:
    """The fast path renders the RateLimit value from a %-template: a policy named with a
    "%" appears in it literally, as the general path renders it."""
    policies = {"50%d": PER_IP, "burst": BURST}
    fast, fast_storage, _ = make_limiter(policies)
    fast_storage.submits = True
    general, _, _ = make_limiter(policies)
    kwargs = {"route": "r", "policy_names": ("50%d", "burst"), "caller": Caller("203.0.113.7"),
              "headers": {}}
    started = fast.begin(**kwargs)  # type: ignore[arg-type]
    assert isinstance(started, tuple)
    plan, (future, pos) = started
    out: list[bytes] = []
    fast.conclude(plan, await future, pos, out)
    assert parsed(out) == list((await general.check(**kwargs)).headers)  # type: ignore[arg-type]
    assert dict(parsed(out))[b"RateLimit"] == b'"50%d";r=2;t=20, "burst";r=1;t=20'


async def test_plans_planned_per_request_share_their_rendered_headers() -> None:
    """Header-keyed limits are planned for every request; the parts their allowed headers are
    rendered from are worked out once for the set of policies, and each request's headers
    carry its own bucket's remaining."""
    tenant = {"limit": 5, "window": "1m", "algorithm": "fixed_window", "key": "header:x-tenant"}
    limiter, storage, _ = make_limiter({"tenant": tenant, "per-ip": PER_IP},
                                       rate_limit_headers="legacy")
    storage.submits = True
    plans, remaining = [], []
    for name in ("a", "b", "a"):
        started = limiter.begin(route="r", policy_names=("tenant", "per-ip"),
                                caller=Caller("203.0.113.9"), headers={"x-tenant": name})
        assert isinstance(started, tuple)
        plan, (future, pos) = started
        out: list[bytes] = []
        limiter.conclude(plan, await future, pos, out)
        plans.append(plan)
        remaining.append(dict(parsed(out))[b"X-RateLimit-Remaining"])
    assert plans[0] is not plans[2]  # planned again, not memoized
    assert plans[0].rendered is plans[1].rendered is plans[2].rendered
    # per-ip (limit 3) is the tightest: 2, 1, 0 left whatever the tenant.
    assert remaining == [b"2", b"1", b"0"]


async def by_address(
    limiter: RateLimiter, limits: RouteLimits, address: str = "203.0.113.7",
    headers: dict[str, str] | None = None,
) -> Verdict | None:
    """What the head start does for a route without auth: begin_by_address, then conclude."""
    started = limiter.begin_by_address(limits, address, headers or {})
    if not isinstance(started, tuple):
        return started
    plan, (future, pos) = started
    out: list[bytes] = []
    try:
        verdict = limiter.conclude(plan, await future, pos, out)
    except StorageError:
        return await limiter.failed(plan)
    return replace(verdict, headers=(*parsed(out), *verdict.headers))


async def test_by_address_keeps_each_address_plan_and_decides_like_begin() -> None:
    """The route's plan for an address is made once and kept in its RouteLimits; each
    address has its own bucket, and the over-limit one is answered locally afterwards."""
    limiter, storage, _ = make_limiter({"per-ip": PER_IP})
    storage.submits = True
    limits = RouteLimits("r", ("per-ip",))
    verdicts = [await by_address(limiter, limits) for _ in range(5)]
    assert [v.decision if v else None for v in verdicts] == (
        ["allowed"] * 3 + ["limited", "limited_cached"]
    )
    third = verdicts[2]
    assert third is not None
    assert dict(third.headers)[b"RateLimit"] == b'"per-ip";r=0;t=20'
    assert list(limits.plans) == ["203.0.113.7"]
    other = await by_address(limiter, limits, "198.51.100.1")
    assert other is not None
    assert other.decision == "allowed"
    assert len(limits.plans) == 2
    assert len(storage.calls) == 5  # the cached denial never reached storage
    assert {s[0].key for s in storage.calls} == {
        p.specs[0].key for p in limits.plans.values()
    }


async def test_by_address_keeps_no_plan_it_cannot_reuse() -> None:
    """Plans with a shadow policy (the general path's) or keyed by a header (made per
    request) are not kept; with an open circuit the request goes the general way."""
    tenant = {"limit": 2, "window": "1m", "algorithm": "fixed_window", "key": "header:x-tenant"}
    limiter, storage, _ = make_limiter({"per-ip": PER_IP, "shadow": SHADOW, "tenant": tenant},
                                       storage={"on_failure": "closed"})
    storage.submits = True
    shadowed = RouteLimits("r", ("per-ip", "shadow"))
    assert limiter.begin_by_address(shadowed, "203.0.113.7", {}) is None
    assert shadowed.plans == {}
    by_header = RouteLimits("t", ("tenant",))
    tenants = [await by_address(limiter, by_header, headers={"x-tenant": "a"}) for _ in range(3)]
    assert [v.decision if v else None for v in tenants] == ["allowed", "allowed", "limited"]
    assert by_header.plans == {}
    kept = RouteLimits("k", ("per-ip",))
    await by_address(limiter, kept)
    assert list(kept.plans) == ["203.0.113.7"]
    storage.fail = True
    failed = [await by_address(limiter, kept) for _ in range(3)]
    assert [v.status for v in failed if v] == [503] * 3
    # Three failures opened the circuit: the kept plan is not sent while it is open.
    assert limiter.guard.breaker.state is BreakerState.OPEN
    assert limiter.begin_by_address(kept, "203.0.113.7", {}) is None


async def test_by_address_decides_as_check_for_many_addresses() -> None:
    """A fixed pseudo-random run over a few addresses and two routes: every verdict and
    header from begin_by_address is the one check() gives for the same request."""
    policies = {"per-ip": PER_IP, "burst": BURST, "ten-s": TEN_S}
    fast, fast_storage, _ = make_limiter(policies, rate_limit_headers="both")
    general, _, _ = make_limiter(policies, rate_limit_headers="both")
    fast_storage.submits = True
    routes = {"a": ("per-ip",), "b": ("burst", "ten-s")}
    limits = {name: RouteLimits(name, names) for name, names in routes.items()}
    rng = random.Random(7)
    for _ in range(60):
        route, address = rng.choice("ab"), f"198.51.100.{rng.randrange(4)}"
        got = await by_address(fast, limits[route], address)
        expected = await general.check(route=route, policy_names=routes[route],
                                       caller=address, headers={})
        assert got is not None
        assert (got.decision, got.status, got.policy, got.headers) == (
            expected.decision, expected.status, expected.policy, expected.headers
        )


async def test_route_limits_keep_no_more_plans_than_the_limiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the limiter forgets its memoized plans (at its bound), every RouteLimits forgets
    its own: however many routes, they hold no plan the limiter does not."""
    monkeypatch.setattr(limiter_module, "_PLANNED_MAX", 3)
    limiter, storage, _ = make_limiter({"per-ip": PER_IP})
    storage.submits = True
    routes = [RouteLimits(name, ("per-ip",)) for name in ("a", "b")]
    for n in range(5):
        for limits in routes:
            await by_address(limiter, limits, f"198.51.100.{n}")
            kept = [p for r in routes for p in r.plans.values()]
            assert len(kept) <= 3
            assert all(any(p is q for q in limiter._plans.values()) for p in kept)
    assert routes[1].plans  # the latest address's plan is kept
