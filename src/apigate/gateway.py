"""The request path: route, authenticate, limit, forward, observe — on one config snapshot.

A request reads ``Gateway.runtime`` once at its start, so a reload swaps the snapshot for new
requests while in-flight ones finish on the old one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from apigate.config.model import RouteConfig
from apigate.http.body import BodyAborted, BodyTooLarge
from apigate.http.errors import HttpError
from apigate.http.request import HeaderView, Request
from apigate.http.response import ResponseWriter, header_lines
from apigate.http.server import HeadStart, HttpConnection
from apigate.identity import Caller
from apigate.observability.access_log import AccessEntry
from apigate.observability.logging import bind_request, unbind, update_request
from apigate.observability.request_id import new_request_id, trace_id, valid_request_id
from apigate.proxy.forward import ForwardFailed, Outbound
from apigate.ratelimit.limiter import Pending, Verdict
from apigate.ratelimit.storage.base import StorageError
from apigate.routing.router import Match, MethodNotAllowed, host_without_port
from apigate.runtime import Runtime


class _Outcome:
    """What the access log and metrics need to know about one request."""

    __slots__ = ("client_ip", "consumer", "request_id", "route", "upstream", "verdict")

    def __init__(self, request_id: str, client_ip: str) -> None:
        self.request_id = request_id
        self.client_ip = client_ip
        self.route: str | None = None
        self.upstream: str | None = None
        self.consumer: str | None = None
        self.verdict: Verdict | None = None  # the rate limiter's, if it was asked


log = logging.getLogger("apigate.gateway")

# The caller of routes without auth (no consumer): the limiter keys it by address.
_ANONYMOUS = Caller("")
# What head_start() worked out for handle(): the snapshot, the route, the client address and
# its headers' view, the rate-limit decision sent (if one was), when the request came, and the
# caller with its rate limits when it authenticated one (an API key).
_Known = tuple[Caller, tuple[str, ...]]
_HeadStart = tuple[Runtime, Match, str, HeaderView, "Pending | None", float, "_Known | None"]


class Gateway:
    """The data plane's handler; ``runtime`` is replaced atomically on reload."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def head_start_hook(self) -> HeadStart | None:
        """:meth:`head_start` when the current config has a route it can decide early (rate
        limits without auth, or API keys), else None: with other configs no request makes the
        call."""
        runtime = self.runtime
        return self.head_start if runtime.decided_early or runtime.authenticated_early else None

    def head_start(
        self, request: Request, conn: HttpConnection, wake: asyncio.Future[Any]
    ) -> bool:
        """Match the route and send its rate-limit decision as the request arrives.

        Called by the connection (see ``server.HeadStart``) while its task waits for work, with
        the future that task awaits. For a route without auth, the caller is known by address
        alone: the decision goes to storage now with ``wake`` as its future, so the task wakes
        once, when storage has answered, instead of once for the request and again for the
        decision. A route with API keys is authenticated first, which needs no waiting either.
        Returns False (the connection wakes the task now) for every other request; what was
        worked out here is left in ``request.head_start`` for :meth:`handle`.
        """
        started = time.perf_counter()
        runtime = self.runtime
        known = None
        try:
            match = _match(runtime, request)
            client_ip = _client_ip(runtime, request, conn.peer)
            name = match.name
            headers = HeaderView(request.headers)
            begun = None
            limits = runtime.decided_early.get(name)
            if limits is not None:
                begun = runtime.limiter.begin_by_address(limits, client_ip, headers, wake)
            elif name in runtime.authenticated_early:
                route = match.route
                caller = runtime.authenticate_now(route, headers, request.query, client_ip)
                if caller is not None:
                    policies = runtime.policies_for(route, caller)
                    known = (caller, policies)
                    if policies:
                        begun = runtime.limiter.begin(name, policies, caller, headers, wake)
            # A Pending (a tuple): storage completes ``wake`` (last step). A verdict known at
            # once, or None, is left to handle(), which begins again.
            pending = begun if type(begun) is tuple else None
        except HttpError:
            return False  # handle() answers it (a refused credential: it authenticates again)
        except Exception:  # a bug here must not become the parser's "malformed request"
            log.exception("head start failed; the request takes the handler's path")
            return False
        request.head_start = (runtime, match, client_ip, headers, pending, started, known)
        if pending is None:
            return False
        runtime.metrics.inflight(1)  # from now: handle() counts it out
        return True

    async def handle(self, request: Request, writer: ResponseWriter, conn: HttpConnection) -> None:
        prepared: _HeadStart | None = request.head_start
        if prepared is not None:  # see head_start(): timed and counted in flight from there
            runtime, match, client_ip, headers, pending, started, known = prepared
            if pending is None:
                runtime.metrics.inflight(1)
        else:
            started = time.perf_counter()
            runtime, match, pending, known = self.runtime, None, None, None
            headers = HeaderView(request.headers)
            client_ip = _client_ip(runtime, request, conn.peer)
            runtime.metrics.inflight(1)
        given = request.header(b"x-request-id")
        request_id = given.decode() if given and valid_request_id(given) else new_request_id()
        outcome = _Outcome(request_id, client_ip)
        context = decision = None
        # One flat coroutine: every await level costs on each suspend and resume.
        try:
            if match is None:
                match = _match(runtime, request)
            route = match.route
            # Each read of a RouteConfig (pydantic) attribute costs about ten times a plain
            # object's: the ones used more than once are read once (the name, by the router).
            name = outcome.route = match.name
            upstream = outcome.upstream = route.upstream
            # Application log lines written while this request runs carry its context.
            context = bind_request(request_id, client_ip=client_ip, route=name)
            if route.auth != "none":
                if known is not None:  # by the head start
                    caller, policies = known
                else:
                    caller = await runtime.authenticate(route, headers, request.query, client_ip)
                    policies = runtime.policies_for(route, caller)
                outcome.consumer = caller.consumer
                update_request(consumer=caller.consumer)
                limited_as: Caller | str = caller
            else:  # no consumer: the limiter knows the caller by address only
                caller, policies, limited_as = _ANONYMOUS, route.rate_limits, client_ip
            # The response's own header lines, rendered here (see ResponseWriter.start).
            response_lines = [b"x-request-id: %s\r\n" % request_id.encode()]
            if pending is not None:  # decided while the task was idle: the future is done
                if conn.closing:  # the client left meanwhile (see HttpConnection._cut_short)
                    raise asyncio.CancelledError
                limiter = runtime.limiter
                plan, (decided, pos) = pending
                try:
                    verdict = limiter.conclude(plan, decided.result(), pos, response_lines)
                except StorageError:
                    verdict = await limiter.failed(plan)
            elif policies:
                limiter = runtime.limiter
                begun = limiter.begin(name, policies, limited_as, headers)
                if isinstance(begun, tuple):  # a Pending: (plan, (future, position))
                    plan, (decided, pos) = begun
                    try:
                        verdict = limiter.conclude(plan, await decided, pos, response_lines)
                    except StorageError:
                        verdict = await limiter.failed(plan)
                elif begun is None:
                    verdict = await limiter.check(
                        route=name, policy_names=policies, caller=limited_as,
                        headers=headers,
                    )
                else:
                    verdict = begun
            if policies:
                decision = verdict.labels  # counted with the request, in request_done()
                if decision is None:  # once per Verdict: a plan's shared one is counted as is
                    decision = verdict.labels = (
                        verdict.policy or "-",
                        _DECISION_LABELS.get(verdict.decision, verdict.decision),
                    )
                outcome.verdict = verdict
                if not verdict.allowed:
                    raise HttpError(
                        verdict.status, verdict.error or "rate limited", headers=verdict.headers
                    )
                if verdict.headers:
                    response_lines.append(header_lines(verdict.headers))
            outbound = Outbound(
                path=match.upstream_path,
                query=_upstream_query(runtime, route, request.query),
                headers=_forwarded_headers(runtime, request, conn.peer, request_id, caller),
                drop=runtime.drop_headers[name],
                response_lines=response_lines,
            )
            upstream_started = time.perf_counter()
            await runtime.forwarders[upstream].forward(request, writer, conn, outbound)
            runtime.metrics.upstream_done(upstream, time.perf_counter() - upstream_started)
        except ForwardFailed as exc:
            runtime.metrics.upstream_error(outcome.upstream or "-", exc.kind)  # type: ignore[arg-type]
            _answer_error(writer, exc, request_id)
        except BodyTooLarge:
            conn.pause_reading()
            _answer_error(writer, HttpError(413, "request body too large", close=True), request_id)
        except BodyAborted:
            writer.close = True
        except HttpError as exc:
            _answer_error(writer, exc, request_id)
        finally:
            if context is not None:
                unbind(context)
            runtime.metrics.inflight(-1)
            seconds = time.perf_counter() - started
            status = writer.status or 499
            runtime.metrics.request_done(
                outcome.route or "-", request.method, status, seconds, decision  # type: ignore[arg-type]
            )
            if runtime.access_log_enabled:
                _log_access(runtime, request, writer, conn, outcome, seconds=seconds)



def _client_ip(runtime: Runtime, request: Request, peer: str) -> str:
    """The peer, or behind a trusted proxy the right-most untrusted X-Forwarded-For address."""
    if not runtime.trusted.enabled:
        return peer
    return runtime.trusted.client_ip(peer, request.header_values(b"x-forwarded-for"))


def _match(runtime: Runtime, request: Request) -> Match:
    """The route for this request, or HttpError 404 / 405."""
    try:
        host = host_without_port(request.host)
        match = runtime.router.match(host, request.path, request.method)
    except MethodNotAllowed as exc:
        allow = ", ".join(exc.allowed).encode()
        raise HttpError(405, "method not allowed", headers=((b"allow", allow),)) from None
    if match is None:
        raise HttpError(404, "no route")
    return match


def _answer_error(writer: ResponseWriter, error: HttpError, request_id: str) -> None:
    """The JSON error, or, when the response has already begun, a cut connection."""
    if writer.started:
        writer.close = True
    else:
        writer.send_error(
            error.status, error.message, request_id, close=error.close, headers=error.headers
        )


def _log_access(
    runtime: Runtime,
    request: Request,
    writer: ResponseWriter,
    conn: HttpConnection,
    outcome: _Outcome,
    *,
    seconds: float,
) -> None:
    verdict = outcome.verdict
    runtime.access_log.log(
        AccessEntry(
            method=request.method,
            path=request.path,
            query=request.query.decode("latin-1"),
            status=writer.status or 499,
            duration_ns=int(seconds * 1e9),
            client_ip=outcome.client_ip,
            source_ip=conn.peer,
            request_id=outcome.request_id,
            request_bytes=request.body.received if request.body else 0,
            response_bytes=writer.bytes_sent,
            user_agent=_text(request.header(b"user-agent")),
            trace_id=trace_id(request.header(b"traceparent")),
            route=outcome.route,
            upstream=outcome.upstream,
            consumer=outcome.consumer,
            ratelimit_decision=verdict.decision if verdict is not None else None,
            ratelimit_policy=verdict.policy if verdict is not None else None,
        )
    )


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


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None
