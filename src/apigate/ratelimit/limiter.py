"""The rate limiter: one decision per request, the one entry point the data plane calls.

Enforced limits of a request go to storage in ONE ``decide`` call (checked together, charged
only if all allow). Shadow limits go in a second call made concurrently: they are counted on
every request that reaches the limiter (also ones an enforced limit rejects) and never
reject. Keys denied recently are answered from a local cache; storage is bounded by
``storage.timeout_ms`` and guarded by a circuit breaker, after which ``storage.on_failure``
applies (open: allow; closed: 503; local: this process enforces ``limit / live instances``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from apigate.config.model import Config, RateLimitPolicy
from apigate.identity import Caller
from apigate.ratelimit import headers as hdr
from apigate.ratelimit.breaker import BreakerState
from apigate.ratelimit.guard import StorageGuard
from apigate.ratelimit.keys import CostError, request_cost, request_key, storage_key
from apigate.ratelimit.overlimit import RECHECK_S, Denial
from apigate.ratelimit.storage.base import (
    Algorithm,
    LimitSpec,
    LimitState,
    Outcome,
    Reply,
    Storage,
    Submitted,
    group_outcome,
)

FAILURE_RETRY_AFTER_S = 1
_MAX_ADMIN_KEY = 512
ALGORITHMS = {a.name.lower(): a for a in Algorithm}


class UnknownPolicyError(LookupError):
    """The admin API named a policy the current config does not have."""


@dataclass(slots=True)  # per request: not frozen (object.__setattr__ per field)
class Verdict:
    """The limiter's answer for one request.

    ``headers`` is complete (it includes ``Retry-After`` on 429/503); ``decision`` is a
    bounded label for metrics: unlimited, allowed, shadow_limited, limited, limited_cached,
    failure_open, failure_closed, local_allowed, local_limited, bad_request.
    """

    allowed: bool
    status: int
    decision: str
    retry_after_s: int | None = None
    headers: tuple[hdr.Header, ...] = ()
    error: str | None = None
    policy: str | None = None  # the limit that rejected, or the most restrictive one
    shadow_limited: tuple[str, ...] = ()  # shadow policies that would have rejected
    # The metrics labels (policy, decision), worked out once per Verdict by the data plane: a
    # plan's shared "allowed" is counted without that work. Not an init field, so
    # dataclasses.replace() leaves it unset on the copy.
    labels: tuple[str, str] | None = field(default=None, init=False, repr=False, compare=False)


_UNLIMITED = Verdict(True, 200, "unlimited")


@dataclass(slots=True)
class _Planned:
    name: str
    policy: RateLimitPolicy
    spec: LimitSpec


class _Plan:
    """One request's policies and specs; memoized per client when its keys allow."""

    __slots__ = ("allowed", "allowed_by", "one", "planned", "rendered", "shadow", "specs")

    def __init__(self, planned: list[_Planned], rendered: hdr.AllowedParts) -> None:
        self.planned = planned
        self.specs = [p.spec for p in planned]
        self.shadow = any(p.policy.shadow for p in planned)
        self.rendered = rendered
        # The common case, a lone policy with ietf headers only (the default): its ietf
        # template, which conclude() renders inline, a call less than hdr.allowed_lines().
        ietf, legacy = rendered
        self.one = ietf if len(planned) == 1 and legacy is None else None
        # "allowed" verdicts shared by the plan's requests, one per policy as the tightest:
        # conclude() writes their headers. ``allowed``: the first's, a lone policy's.
        self.allowed_by = tuple(Verdict(True, 200, "allowed", policy=p.name) for p in planned)
        self.allowed = self.allowed_by[0]


# A decision sent to storage by RateLimiter.begin: the plan, and the future to await with where
# the decision's group starts in its reply, for RateLimiter.conclude (RateLimiter.failed on a
# StorageError). A tuple: no __init__ to run.
Pending = tuple[_Plan, Submitted]


class RouteLimits:
    """The rate limits of one route whose callers are known by address alone (no auth), with
    the plans already made for its addresses: what :meth:`RateLimiter.begin_by_address` looks
    a request's plan up in, by its address only (no key tuple built and hashed per request).
    One per route and config snapshot, made with the snapshot's limiter."""

    __slots__ = ("plans", "policy_names", "route")

    def __init__(self, route: str, policy_names: tuple[str, ...]) -> None:
        self.route = route
        self.policy_names = policy_names
        self.plans: dict[str, _Plan] = {}  # memoized plans without shadow policies


class RateLimiter:
    """Decides requests against the policies of one config snapshot."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        *,
        instance_id: str,
        clock: Callable[[], float] = time.monotonic,
        _guard: StorageGuard | None = None,
    ) -> None:
        self._config = config
        timeout_s = config.storage.timeout_ms / 1000
        self._rt = _guard or StorageGuard(
            storage, instance_id=instance_id, clock=clock, timeout_s=timeout_s
        )
        self._rt.timeout_s = timeout_s
        # What the request path reads per request, without going through the guard.
        self._denials = self._rt.cache.denials
        self._breaker = self._rt.breaker
        self._submit = self._rt.storage.submit
        self._policy_values: dict[tuple[str, ...], bytes] = {}
        self._quotas: dict[tuple[str, ...], list[hdr.Quota]] = {}
        self._rendered_by_names: dict[tuple[str, ...], hdr.AllowedParts] = {}
        self._one_policy_parts: dict[str, tuple[hdr.Header, bytes]] = {}
        # Planned specs of policies keyed only by client_ip/consumer/route with a fixed cost:
        # the same client on the same route plans the same spec every time.
        self._planned: dict[tuple[str, str, str | None, str], _Planned] = {}
        self._plans: dict[tuple[tuple[str, ...], str, str | None, str], _Plan] = {}
        self._route_limits: set[RouteLimits] = set()  # those begin_by_address kept plans in
        self._memoizable = {
            name: isinstance(p.cost, int)
            and all(part in ("client_ip", "consumer", "route") for part in p.key.split("+"))
            for name, p in config.rate_limits.items()
        }

    @property
    def guard(self) -> StorageGuard:
        """Breaker, caches and live-instance count (shared by every reload of this limiter)."""
        return self._rt

    def with_config(self, config: Config) -> RateLimiter:
        """A limiter for a reloaded config: same storage, breaker and instance count."""
        self._rt.cache.clear()  # denials were computed under the old limits
        limiter = RateLimiter(
            config, self._rt.storage, instance_id=self._rt.instance_id, _guard=self._rt
        )
        if self._rt.started:
            limiter._ensure_heartbeat()
        return limiter

    async def start(self) -> None:
        """Start the instance heartbeat when ``on_failure: local`` needs the live count."""
        self._rt.started = True
        self._ensure_heartbeat()

    async def ping(self) -> bool:
        return await self._rt.ping()

    async def aclose(self) -> None:
        await self._rt.aclose()

    async def check(
        self,
        *,
        route: str,
        policy_names: Sequence[str],
        caller: Caller | str,
        headers: Mapping[str, str],
    ) -> Verdict:
        """Decide one request; ``headers`` has lower-case names, ``caller`` may be a bare
        client address (see :meth:`begin`)."""
        plan = self._plan_for(route, tuple(policy_names), caller, headers)
        if isinstance(plan, Verdict):
            return plan
        real = [p for p in plan.planned if not p.policy.shadow]
        shadow = [p for p in plan.planned if p.policy.shadow]
        if not shadow:
            return await self._enforce(real)
        verdict, would_limit = await asyncio.gather(self._enforce(real), self._shadow(shadow))
        if not would_limit:
            return verdict
        decision = "shadow_limited" if verdict.decision == "allowed" else verdict.decision
        return replace(verdict, decision=decision, shadow_limited=would_limit)

    def begin(
        self,
        route: str,
        policy_names: tuple[str, ...],
        caller: Caller | str,
        headers: Mapping[str, str],
        future: asyncio.Future[Reply] | None = None,
    ) -> Verdict | Pending | None:
        """Begin deciding one request without a coroutine (the request path's fast path).

        ``caller`` may be the bare client address of a caller known only by it (a route
        without auth): no Caller is made unless the request's plan is not memoized yet.

        Returns the Verdict when it is known at once (unlimited, 400, a cached denial); a
        Pending (plan, (future, position)) when the decision went to storage as one bare future
        (see ``Storage.submit``; ``future`` when given, which storage then completes); or None
        when this request needs the general path, ``await check(...)`` (shadow policies, an
        open circuit, a storage without ``submit``).
        """
        plan = None
        if type(caller) is str:  # an address's memoized plan, the common case: without a call
            plan = self._plans.get((policy_names, caller, None, route))
        if plan is None:
            made = self._plan_for(route, policy_names, caller, headers)
            if isinstance(made, Verdict):
                return made
            plan = made
        if plan.shadow:
            return None
        if self._denials:
            cached = self._cached_denial(plan.planned)
            if cached is not None:
                return cached
        if self._breaker.state is not _CLOSED:
            return None
        submitted = self._submit(plan.specs, future)
        if submitted is None:
            return None
        return plan, submitted

    def begin_by_address(
        self,
        limits: RouteLimits,
        address: str,
        headers: Mapping[str, str],
        future: asyncio.Future[Reply] | None = None,
    ) -> Verdict | Pending | None:
        """:meth:`begin` for a request to the route of ``limits`` from the bare client address
        ``address`` (the head start's call, once per request)."""
        plan = limits.plans.get(address)
        if plan is None:
            return self._begin_first(limits, address, headers, future)
        # begin() from its memoized plan on, written out: a call less per request
        if self._denials:
            cached = self._cached_denial(plan.planned)
            if cached is not None:
                return cached
        if self._breaker.state is not _CLOSED:
            return None
        submitted = self._submit(plan.specs, future)
        if submitted is None:
            return None
        return plan, submitted

    def _begin_first(
        self,
        limits: RouteLimits,
        address: str,
        headers: Mapping[str, str],
        future: asyncio.Future[Reply] | None,
    ) -> Verdict | Pending | None:
        """begin() for an address whose plan ``limits`` does not hold: kept there once made,
        when it is memoized and has no shadow policy. Every plan kept in a RouteLimits is one
        of the memoized plans, which are forgotten together (see _plan_for): however many
        routes, they hold no more plans than the limiter's own bound."""
        route, names = limits.route, limits.policy_names
        begun = self.begin(route, names, address, headers, future)
        plan = self._plans.get((names, address, None, route))
        if plan is not None and not plan.shadow:
            self._route_limits.add(limits)
            limits.plans[address] = plan
        return begun

    def conclude(self, plan: _Plan, reply: Reply, pos: int, out: list[bytes]) -> Verdict:
        """The verdict once storage answered a decision :meth:`begin` sent.

        On the common answer, every policy allowed, the rate-limit headers (whichever
        ``rate_limit_headers`` asks for) are appended to ``out`` as rendered header lines (the
        response's, see ``ResponseWriter.start``) and one of the plan's shared verdicts,
        without headers of its own, is returned; any other verdict carries its headers.
        Raises StorageError when the storage refused the decision's specs.
        """
        one = plan.one
        if one is not None and reply[pos] == 1:
            if not self._breaker.clean:
                self._breaker.success()  # else it has nothing to reset: not even called
            # hdr.allowed_lines() for one policy, written out: a call less per request
            out.append(one % (reply[pos + 1], (reply[pos + 2] + 999) // 1000))  # seconds, up
            return plan.allowed
        if reply[pos] == 1:  # the same, for any other plan
            if not self._breaker.clean:
                self._breaker.success()
            lines, tightest = hdr.allowed_lines(plan.rendered, reply, pos, len(plan.specs))
            out.append(lines)
            return plan.allowed_by[tightest]
        outcome = group_outcome(reply, pos, len(plan.specs))
        self._breaker.success()
        return self._verdict(plan.planned, outcome, local=False)

    async def failed(self, plan: _Plan) -> Verdict:
        """The verdict when storage failed a decision :meth:`begin` sent (on_failure)."""
        self._breaker.failure()
        return await self._on_failure(plan.planned)

    def describe_policies(self) -> list[dict[str, object]]:
        return [
            {
                "name": name,
                "limit": p.limit,
                "window_ms": p.window,
                "algorithm": p.algorithm,
                "burst": p.burst,
                "key": p.key,
                "cost": p.cost,
                "shadow": p.shadow,
            }
            for name, p in sorted(self._config.rate_limits.items())
        ]

    async def usage(self, policy: str, key_value: str) -> dict[str, object]:
        """What ``key_value`` (a rendered identity, see keys.py) has left under ``policy``."""
        spec = self._admin_spec(policy, key_value)
        state = await self._rt.bounded(self._rt.storage.peek(spec))
        return {
            "policy": policy,
            "key": key_value,
            "storage_key": spec.key,
            "limit": spec.limit,
            "window_ms": spec.window_ms,
            "remaining": state.remaining,
            "reset_ms": state.reset_ms,
            "retry_after_ms": state.retry_after_ms,
        }

    async def reset(self, policy: str, key_value: str) -> None:
        """Forget what ``key_value`` has spent under ``policy`` (storage and local caches)."""
        spec = self._admin_spec(policy, key_value)
        await self._rt.bounded(self._rt.storage.reset(spec))
        self._rt.cache.forget(spec.key)
        await self._rt.local.reset(spec)

    # -- the request path -------------------------------------------------------------------

    def _plan_for(
        self, route: str, names: tuple[str, ...], caller: Caller | str,
        headers: Mapping[str, str],
    ) -> _Plan | Verdict:
        """The request's plan (memoized per client when its keys allow), or the verdict that
        needs none: 400 for a bad cost, unlimited. A str ``caller`` is a bare client address."""
        if isinstance(caller, str):
            caller = Caller(caller)
        memo = (names, caller.client_ip, caller.consumer, route)
        plan = self._plans.get(memo)
        if plan is not None:
            return plan
        try:
            planned = self._plan(route, names, caller, headers)
        except CostError as exc:
            return Verdict(False, 400, "bad_request", error=str(exc))
        if not planned:
            return _UNLIMITED
        plan = _Plan(planned, self._rendered(planned, self._config.rate_limit_headers))
        if all(self._memoizable.get(name, True) for name in names):
            if len(self._plans) >= _PLANNED_MAX:
                self._plans.clear()
                for limits in self._route_limits:  # they keep memoized plans only
                    limits.plans.clear()
            self._plans[memo] = plan
        return plan

    def _plan(
        self, route: str, names: Sequence[str], caller: Caller, headers: Mapping[str, str]
    ) -> list[_Planned]:
        """Specs of the known policies in order, each once (unknown names are skipped)."""
        config, out, seen = self._config, [], set()
        for name in names:
            policy = config.rate_limits.get(name)
            if policy is None or name in seen:
                continue
            seen.add(name)
            memo = (name, caller.client_ip, caller.consumer, route)
            if self._memoizable[name]:
                planned = self._planned.get(memo)
                if planned is not None:
                    out.append(planned)
                    continue
            key = request_key(
                key_prefix=config.storage.key_prefix, policy_name=name, policy=policy,
                route=route, caller=caller, headers=headers,
                ipv6_prefix=config.server.ipv6_prefix,
            )
            planned = _Planned(name, policy, _spec(key, policy, request_cost(policy, headers)))
            if self._memoizable[name]:
                if len(self._planned) >= _PLANNED_MAX:
                    self._planned.clear()
                self._planned[memo] = planned
            out.append(planned)
        return out

    async def _enforce(self, real: list[_Planned]) -> Verdict:
        if not real:
            return Verdict(True, 200, "allowed")
        cached = self._cached_denial(real)
        if cached is not None:
            return cached
        outcome = await self._rt.decide([p.spec for p in real])
        if outcome is None:
            return await self._on_failure(real)
        return self._verdict(real, outcome, local=False)

    async def _shadow(self, shadow: list[_Planned]) -> tuple[str, ...]:
        outcome = await self._rt.decide([p.spec for p in shadow])
        if outcome is None or outcome.allowed:
            return ()
        return tuple(p.name for p, s in zip(shadow, outcome.states, strict=True)
                     if s.retry_after_ms > 0)

    def _cached_denial(self, real: list[_Planned]) -> Verdict | None:
        now = self._rt.clock()
        for p in real:
            denial = self._rt.cache.lookup(p.spec.key, p.spec.cost, now)
            if denial is not None:
                retry_ms = max(1, int((denial.until_s - now) * 1000))
                state = LimitState(0, retry_ms, retry_ms)
                return self._rejected([p], [state], p.name, retry_ms, "limited_cached")
        return None

    async def _on_failure(self, real: list[_Planned]) -> Verdict:
        mode = self._config.storage.on_failure
        if mode == "open":
            return Verdict(True, 200, "failure_open", headers=self._headers(real, None))
        if mode == "closed":
            retry = FAILURE_RETRY_AFTER_S
            return Verdict(
                False, 503, "failure_closed", retry_after_s=retry,
                headers=(*self._headers(real, None), (b"Retry-After", str(retry).encode())),
                error="rate-limit storage unavailable",
            )
        outcome = await self._rt.decide_locally([p.spec for p in real])
        return self._verdict(real, outcome, local=True)

    def _verdict(self, real: list[_Planned], outcome: Outcome, *, local: bool) -> Verdict:
        states = outcome.states
        if outcome.allowed:
            if len(real) == 1:
                tightest_name = real[0].name
            else:
                tightest_name = min(zip(real, states, strict=True), key=_remaining)[0].name
            return Verdict(
                True, 200, "local_allowed" if local else "allowed",
                headers=self._headers(real, states), policy=tightest_name,
            )
        denied = [(p, s) for p, s in zip(real, states, strict=True) if s.retry_after_ms > 0]
        retry_ms = max((s.retry_after_ms for _, s in denied), default=1000)
        binding = max(denied, key=lambda ps: ps[1].retry_after_ms)[0] if denied else real[0]
        if not local:
            now = self._rt.clock()
            for p, s in denied:
                until = now + s.retry_after_ms / 1000
                denial = Denial(until, p.spec.cost, recheck_s=now + RECHECK_S)
                self._rt.cache.remember(p.spec.key, denial)
        decision = "local_limited" if local else "limited"
        return self._rejected(real, states, binding.name, retry_ms, decision)

    def _rejected(
        self, real: Sequence[_Planned], states: Sequence[LimitState], policy: str,
        retry_ms: int, decision: str,
    ) -> Verdict:
        retry_s = max(1, hdr.seconds_up(retry_ms))
        headers = (*self._headers(real, states), (b"Retry-After", str(retry_s).encode()))
        return Verdict(
            False, 429, decision, retry_after_s=retry_s, headers=headers,
            error="rate limit exceeded", policy=policy,
        )

    def _headers(
        self, real: Sequence[_Planned], states: Sequence[LimitState] | None
    ) -> tuple[hdr.Header, ...]:
        mode = self._config.rate_limit_headers
        if mode == "none":
            return ()
        if mode == "ietf" and len(real) == 1:  # the common case, from pre-rendered parts
            parts = self._one_policy(real[0])
            if states is None:
                return (parts[0],)
            limit_value = _one_policy_value(parts, states[0].remaining, states[0].reset_ms)
            return (parts[0], (b"RateLimit", limit_value))
        names = tuple(p.name for p in real)
        quotas = self._quotas_for(names, real)
        value = self._policy_values.get(names)
        if value is None:
            if len(self._policy_values) > 1024:  # bounded: policy sets come from config
                self._policy_values.clear()
            value = self._policy_values[names] = hdr.policy_value(quotas)
        return tuple(hdr.render(mode, quotas, states, value))

    def _quotas_for(
        self, names: tuple[str, ...], planned: Sequence[_Planned]
    ) -> list[hdr.Quota]:
        """The quotas of ``planned`` (named ``names``), made once per set of policies."""
        quotas = self._quotas.get(names)
        if quotas is None:
            quotas = [hdr.Quota(p.name, p.policy.limit, p.policy.window) for p in planned]
            if len(self._quotas) > 1024:  # bounded: policy sets come from config
                self._quotas.clear()
            self._quotas[names] = quotas
        return quotas

    def _one_policy(self, planned: _Planned) -> tuple[hdr.Header, bytes]:
        """``RateLimit-Policy`` and the start of the ``RateLimit`` value for one policy."""
        parts = self._one_policy_parts.get(planned.name)
        if parts is None:  # bounded: one entry per configured policy
            quota = hdr.Quota(planned.name, planned.policy.limit, planned.policy.window)
            parts = self._one_policy_parts[planned.name] = (
                (b"RateLimit-Policy", hdr.policy_value([quota])),
                hdr.sf_string(planned.name).encode("ascii") + b";r=",
            )
        return parts

    def _rendered(self, planned: list[_Planned], mode: hdr.HeaderMode) -> hdr.AllowedParts:
        """What conclude() needs to write the headers of ``planned`` all allowed (worked out
        once per set of policies: plans that are not memoized ask for it every time)."""
        names = tuple(p.name for p in planned)
        rendered = self._rendered_by_names.get(names)
        if rendered is None:
            if len(self._rendered_by_names) > 1024:  # bounded: policy sets come from config
                self._rendered_by_names.clear()
            quotas = self._quotas_for(names, planned)
            rendered = self._rendered_by_names[names] = hdr.allowed_parts(mode, quotas)
        return rendered

    # -- admin and lifecycle helpers ---------------------------------------------------------

    def _admin_spec(self, policy_name: str, key_value: str) -> LimitSpec:
        policy = self._config.rate_limits.get(policy_name)
        if policy is None:
            raise UnknownPolicyError(policy_name)
        if not key_value or len(key_value) > _MAX_ADMIN_KEY or any(
            c in "{}" or not c.isprintable() for c in key_value
        ):
            raise ValueError("key must be a rendered identity such as ip=203.0.113.7")
        key = storage_key(self._config.storage.key_prefix, key_value, policy_name)
        return _spec(key, policy, 1)

    def _ensure_heartbeat(self) -> None:
        if self._config.storage.on_failure == "local":
            self._rt.start_heartbeat()


_PLANNED_MAX = 10_000
_CLOSED = BreakerState.CLOSED  # read per request: an enum member through its class costs more


def _one_policy_value(parts: tuple[hdr.Header, bytes], remaining: int, reset_ms: int) -> bytes:
    """The ``RateLimit`` value of a lone policy from its pre-rendered parts."""
    return b"%s%d;t=%d" % (parts[1], remaining, (reset_ms + 999) // 1000)  # whole seconds, up


def _remaining(pair: tuple[_Planned, LimitState]) -> int:
    return pair[1].remaining


def _spec(key: str, policy: RateLimitPolicy, cost: int) -> LimitSpec:
    return LimitSpec(
        key, ALGORITHMS[policy.algorithm], policy.limit, policy.window, policy.burst, cost
    )
