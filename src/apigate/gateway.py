"""The request path: route, authenticate, limit, forward, observe — on one config snapshot.

A request reads ``Gateway.runtime`` once at its start, so a reload swaps the snapshot for new
requests while in-flight ones finish on the old one.
"""

from __future__ import annotations

import time

from apigate.config.model import RouteConfig
from apigate.http.body import BodyAborted, BodyTooLarge
from apigate.http.errors import HttpError
from apigate.http.request import HeaderView, Request
from apigate.http.response import ResponseWriter
from apigate.http.server import HttpConnection
from apigate.identity import Caller
from apigate.observability.access_log import AccessEntry
from apigate.observability.request_id import new_request_id, trace_id, valid_request_id
from apigate.proxy.forward import ForwardFailed, Outbound
from apigate.routing.router import Match, MethodNotAllowed, host_without_port
from apigate.runtime import Runtime


class _Outcome:
    """What the access log and metrics need to know about one request."""

    __slots__ = ("consumer", "decision", "policy", "route", "upstream")

    def __init__(self) -> None:
        self.route: str | None = None
        self.upstream: str | None = None
        self.consumer: str | None = None
        self.decision: str | None = None
        self.policy: str | None = None


class Gateway:
    """The data plane's handler; ``runtime`` is replaced atomically on reload."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def handle(self, request: Request, writer: ResponseWriter, conn: HttpConnection) -> None:
        runtime = self.runtime
        started = time.perf_counter()
        given = request.header(b"x-request-id")
        request_id = given.decode() if given and valid_request_id(given) else new_request_id()
        client_ip = runtime.trusted.client_ip(conn.peer, request.header_values(b"x-forwarded-for"))
        outcome = _Outcome()
        runtime.metrics.inflight(1)
        try:
            await self._route(
                runtime=runtime, request=request, writer=writer, conn=conn,
                request_id=request_id, client_ip=client_ip, outcome=outcome,
            )
        except HttpError as exc:
            if writer.started:
                writer.close = True
            else:
                writer.send_error(
                    exc.status, exc.message, request_id, close=exc.close, headers=exc.headers
                )
        finally:
            runtime.metrics.inflight(-1)
            seconds = time.perf_counter() - started
            status = writer.status or 499
            runtime.metrics.request_done(outcome.route or "-", request.method, status, seconds)
            runtime.access_log.log(
                AccessEntry(
                    method=request.method,
                    path=request.path,
                    query=request.query.decode("latin-1"),
                    status=status,
                    duration_ns=int(seconds * 1e9),
                    client_ip=client_ip,
                    source_ip=conn.peer,
                    request_id=request_id,
                    request_bytes=request.body.received if request.body else 0,
                    response_bytes=writer.bytes_sent,
                    user_agent=_text(request.header(b"user-agent")),
                    trace_id=trace_id(request.header(b"traceparent")),
                    route=outcome.route,
                    upstream=outcome.upstream,
                    consumer=outcome.consumer,
                    ratelimit_decision=outcome.decision,
                    ratelimit_policy=outcome.policy,
                )
            )

    async def _route(
        self,
        *,
        runtime: Runtime,
        request: Request,
        writer: ResponseWriter,
        conn: HttpConnection,
        request_id: str,
        client_ip: str,
        outcome: _Outcome,
    ) -> None:
        try:
            host = host_without_port(request.host)
            match = runtime.router.match(host, request.path, request.method)
        except MethodNotAllowed as exc:
            allow = ", ".join(exc.allowed).encode()
            raise HttpError(405, "method not allowed", headers=((b"allow", allow),)) from None
        if match is None:
            raise HttpError(404, "no route")
        route = match.route
        outcome.route = route.name
        outcome.upstream = route.upstream
        caller = Caller(client_ip)
        headers = HeaderView(request.headers)
        if route.auth != "none":
            caller = await runtime.authenticate(route, headers, request.query, client_ip)
            outcome.consumer = caller.consumer
        response_headers = [(b"x-request-id", request_id.encode())]
        policies = runtime.policies_for(route, caller)
        if policies:
            started = time.perf_counter()
            verdict = await runtime.limiter.check(
                route=route.name, policy_names=policies, caller=caller, headers=headers
            )
            runtime.metrics.storage_seconds(time.perf_counter() - started)
            outcome.decision = verdict.decision
            outcome.policy = verdict.policy
            runtime.metrics.ratelimit_decision(
                verdict.policy or "-", _metric_decision(verdict.decision)  # type: ignore[arg-type]
            )
            if not verdict.allowed:
                raise HttpError(
                    verdict.status, verdict.error or "rate limited", headers=verdict.headers
                )
            response_headers.extend(verdict.headers)
        await self._forward(
            runtime=runtime, request=request, writer=writer, conn=conn, match=match,
            caller=caller, request_id=request_id, response_headers=response_headers,
        )

    async def _forward(
        self,
        *,
        runtime: Runtime,
        request: Request,
        writer: ResponseWriter,
        conn: HttpConnection,
        match: Match,
        caller: Caller,
        request_id: str,
        response_headers: list[tuple[bytes, bytes]],
    ) -> None:
        route = match.route
        outbound = Outbound(
            path=match.upstream_path,
            query=_upstream_query(runtime, route, request.query),
            headers=_forwarded_headers(runtime, request, conn.peer, request_id, caller),
            drop=runtime.request_drop_headers(route),
            response_headers=response_headers,
        )
        forwarder = runtime.forwarders[route.upstream]
        started = time.perf_counter()
        try:
            await forwarder.forward(request, writer, conn, outbound)
        except ForwardFailed as exc:
            runtime.metrics.upstream_error(route.upstream, exc.kind)  # type: ignore[arg-type]
            raise
        except BodyTooLarge:
            conn.pause_reading()
            raise HttpError(413, "request body too large", close=True) from None
        except BodyAborted:
            writer.close = True
            return
        runtime.metrics.upstream_done(route.upstream, time.perf_counter() - started)


def _upstream_query(runtime: Runtime, route: RouteConfig, query: bytes) -> bytes:
    """The query passed upstream: an API key given as a query parameter is removed."""
    if not query or route.auth != "api_key" or route.forward_credentials:
        return query
    if runtime.config.auth.api_key.query is None:
        return query
    return runtime.auth.strip_query_credential(query.decode("latin-1")).encode("latin-1")


def _forwarded_headers(
    runtime: Runtime, request: Request, peer: str, request_id: str, caller: Caller
) -> list[tuple[bytes, bytes]]:
    """X-Forwarded-* (extending a trusted proxy's values), X-Request-ID and X-Consumer."""
    trusted = runtime.trusted.trusts(peer)
    prior = request.header_values(b"x-forwarded-for") if trusted else []
    chain = b", ".join([*prior, peer.encode()])
    proto = (request.header(b"x-forwarded-proto") if trusted else None) or b"http"
    host = (request.header(b"x-forwarded-host") if trusted else None) or request.host
    headers = [
        (b"x-forwarded-for", chain),
        (b"x-forwarded-proto", proto),
        (b"x-request-id", request_id.encode()),
    ]
    if host:
        headers.append((b"x-forwarded-host", host))
    if caller.consumer is not None:
        headers.append((b"x-consumer", caller.consumer.encode()))
    return headers


_DECISION_LABELS = {
    "unlimited": "allowed", "allowed": "allowed", "local_allowed": "failure_local",
    "local_limited": "failure_local", "limited_cached": "cached_limited",
    "bad_request": "limited",
}


def _metric_decision(decision: str) -> str:
    return _DECISION_LABELS.get(decision, decision)


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None
