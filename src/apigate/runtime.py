"""The composition root: one immutable :class:`Runtime` snapshot built from one Config.

A reload builds a new snapshot from the new config, reusing what did not change (the storage
connection and breaker, upstream pools of identical upstreams), and swaps it in one assignment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from apigate.auth import Authenticator, AuthError
from apigate.auth.consumers import ConsumerDirectory
from apigate.config.model import Config, RouteConfig
from apigate.http.errors import HttpError
from apigate.identity import Caller
from apigate.observability.access_log import AccessLog, NullAccessLog
from apigate.observability.metrics import MetricsSink
from apigate.proxy.client_ip import TrustedProxies
from apigate.proxy.forward import GATEWAY_REQUEST_HEADERS, Forwarder
from apigate.proxy.upstream import Upstream
from apigate.ratelimit import RateLimiter, build_storage
from apigate.ratelimit.limiter import RouteLimits
from apigate.routing.router import Router


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything a request needs, from one config."""

    config: Config
    router: Router
    upstreams: Mapping[str, Upstream]
    forwarders: Mapping[str, Forwarder]
    trusted: TrustedProxies
    limiter: RateLimiter
    auth: Authenticator
    metrics: MetricsSink
    access_log: AccessLog | NullAccessLog
    access_log_enabled: bool
    consumer_limits: bool  # a consumer may have rate limits (configured, or kept in Redis)
    drop_headers: Mapping[str, frozenset[bytes]]  # per route: gateway-set + credential headers
    # Routes whose rate-limit decision goes out as the request arrives (Gateway.head_start):
    # limited, and without auth (the caller is known by address alone). By route name, their
    # rate limits with the plans made for their addresses (see RateLimiter.begin_by_address).
    decided_early: Mapping[str, RouteLimits]
    # Routes with API keys whose requests may be limited (by the route or by their consumer):
    # the head start authenticates them, which needs no waiting, then decides the same way.
    authenticated_early: frozenset[str]

    async def authenticate(
        self, route: RouteConfig, headers: Mapping[str, str], query: bytes, client_ip: str
    ) -> Caller:
        """Who calls ``route``; HttpError (401, 403) when the request may not."""
        try:
            return await self.auth.authenticate(
                route, headers, query.decode("latin-1"), client_ip
            )
        except AuthError as exc:
            raise _refusal(exc) from None

    def authenticate_now(
        self, route: RouteConfig, headers: Mapping[str, str], query: bytes, client_ip: str
    ) -> Caller | None:
        """:meth:`authenticate` without waiting, or None when the route's credentials may need
        it (see ``Authenticator.authenticate_now``)."""
        try:
            return self.auth.authenticate_now(route, headers, query.decode("latin-1"), client_ip)
        except AuthError as exc:
            raise _refusal(exc) from None

    def policies_for(self, route: RouteConfig, caller: Caller) -> tuple[str, ...]:
        """The route's limits, then the consumer's (each policy once)."""
        if caller.consumer is None or not self.consumer_limits:
            return route.rate_limits
        extra = tuple(
            p for p in self.auth.consumer_policies(caller.consumer) if p not in route.rate_limits
        )
        return route.rate_limits + extra if extra else route.rate_limits


def build_runtime(
    config: Config,
    *,
    metrics: MetricsSink,
    instance_id: str,
    previous: Runtime | None = None,
) -> Runtime:
    """Build a snapshot; with ``previous``, reuse its storage and unchanged upstream pools."""
    if previous is not None and previous.config.storage == config.storage:
        limiter = previous.limiter.with_config(config)
        auth = previous.auth.with_config(config)
    else:
        limiter = RateLimiter(config, build_storage(config.storage), instance_id=instance_id)
        auth = Authenticator(config, ConsumerDirectory.from_config(config))
    limiter.guard.observe_with(metrics.storage_seconds)
    upstreams: dict[str, Upstream] = {}
    for name, upstream_config in config.upstreams.items():
        old = previous.upstreams.get(name) if previous is not None else None
        if old is not None and old.config == upstream_config:
            upstreams[name] = old
        else:
            upstreams[name] = Upstream(name, upstream_config)
        upstreams[name].on_health_change = metrics.targets_ejected
    access_log: AccessLog | NullAccessLog = (
        AccessLog() if config.observability.access_log else NullAccessLog()
    )
    # Consumers may have limits: configured with some, or kept in Redis (any may).
    consumer_limits = auth.directory.redis_available or any(
        consumer.rate_limits for consumer in config.consumers.values()
    )
    drop_headers = {route.name: _drop_headers(route, auth) for route in config.routes}
    return Runtime(
        config=config,
        router=Router(config.routes),
        upstreams=upstreams,
        forwarders={name: Forwarder(u) for name, u in upstreams.items()},
        trusted=TrustedProxies(config.server.trusted_proxies),
        limiter=limiter,
        auth=auth,
        metrics=metrics,
        access_log=access_log,
        access_log_enabled=config.observability.access_log,
        consumer_limits=consumer_limits,
        drop_headers=drop_headers,
        decided_early={
            route.name: RouteLimits(route.name, route.rate_limits)
            for route in config.routes if route.rate_limits and route.auth == "none"
        },
        authenticated_early=frozenset(
            route.name for route in config.routes
            if route.auth == "api_key" and (route.rate_limits or consumer_limits)
        ),
    )


def _refusal(exc: AuthError) -> HttpError:
    challenge = exc.www_authenticate
    extra = ((b"www-authenticate", challenge.encode()),) if challenge else ()
    return HttpError(exc.status, exc.message, headers=extra)


def _drop_headers(route: RouteConfig, auth: Authenticator) -> frozenset[bytes]:
    if route.auth == "none" or route.forward_credentials:
        return GATEWAY_REQUEST_HEADERS
    credentials = frozenset(name.lower().encode() for name in auth.credential_headers(route))
    return GATEWAY_REQUEST_HEADERS | credentials


def retired_upstreams(old: Runtime, new: Runtime) -> list[Upstream]:
    """Upstreams of ``old`` that ``new`` no longer uses: close their pools after the drain."""
    kept = {id(u) for u in new.upstreams.values()}
    return [u for u in old.upstreams.values() if id(u) not in kept]
