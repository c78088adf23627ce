"""The admin HTTP/1.1 listener: health, readiness, metrics, dashboard and the admin API.

It runs in the supervisor. httptools (llhttp) parses; this module only bounds what it may
buffer (16 KiB of head -> 431, 64 KiB of body -> 413), answers requests of one connection in
order (pipelining allowed, keep-alive unless ``Connection: close`` or HTTP/1.0), and turns
every handler failure into a status code: a handler can never take the listener down.
Routes match ``(method, path)`` exactly, the path as sent (no percent-decoding); HEAD is
answered as GET without a body. There is no authentication: bind ``admin_listen`` to a
private address.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from importlib import resources
from typing import cast
from urllib.parse import parse_qsl

import httptools

from apigate.admin.types import AdminError, AdminRequest, AdminResponse, AdminRoute, Handler

log = logging.getLogger(__name__)
# Room over max_head_bytes for the request line and field separators of a split head.
_HEAD_SLACK = 1024

Headers = tuple[tuple[str, str], ...]
_MAX_PIPELINED = 16  # queued requests per connection before reading pauses
_Pending = tuple[AdminRequest, bool] | bytes  # (request, keep-alive) or a final error reply

# The dashboard is inline HTML/JS/CSS that talks only to this origin.
_DASHBOARD_CSP = (
    "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
)


def default_dashboard() -> bytes:
    """The dashboard page shipped as package data."""
    return resources.files("apigate.admin").joinpath("dashboard.html").read_bytes()


def _error(status: int, message: str) -> AdminResponse:
    return AdminResponse.of({"error": message}, status)


class AdminServer:
    """Serves the built-in endpoints and a replaceable table of ``(method, path)`` routes."""

    def __init__(
        self,
        routes: list[AdminRoute],
        *,
        health: Callable[[], bool],
        ready: Callable[[], Awaitable[tuple[bool, str]]],
        metrics: Callable[[], tuple[bytes, str]] | None,
        dashboard_html: bytes | None,
        ready_timeout_s: float = 2.0,
        idle_timeout_s: float = 30.0,
        max_head_bytes: int = 16 * 1024,
        max_body_bytes: int = 64 * 1024,
    ) -> None:
        self._health = health
        self._ready = ready
        self._metrics = metrics
        self._dashboard = dashboard_html
        self._ready_timeout = ready_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        self._builtin: dict[tuple[str, str], Handler] = {
            ("GET", "/healthz"): self._healthz,
            ("GET", "/readyz"): self._readyz,
        }
        # server.admin_token: when set, the admin API (every route but the built-in probes,
        # metrics and dashboard) wants "Authorization: Bearer <token>".
        self.token: str | None = None
        if metrics is not None:
            self._builtin["GET", "/metrics"] = self._render_metrics
        if dashboard_html is not None:
            self._builtin["GET", "/dashboard"] = self._render_dashboard
        self._table: dict[tuple[str, str], Handler] = {}
        self._methods: dict[str, list[str]] = {}
        self.add_routes(routes)
        self._server: asyncio.Server | None = None
        self.connections: set[AdminConnection] = set()

    def add_routes(self, routes: Iterable[AdminRoute]) -> None:
        """Replace the dynamic routes; a route that shadows a built-in raises ValueError."""
        table = dict(self._builtin)
        for method, path, handler in routes:
            if (method, path) in self._builtin:
                raise ValueError(f"admin route {method} {path} shadows a built-in endpoint")
            table[method, path] = handler
        methods: dict[str, list[str]] = {}
        for method, path in table:
            methods.setdefault(path, []).append(method)
        self._table, self._methods = table, methods

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0 picks a free one; see :attr:`port`)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: AdminConnection(self), host, port, reuse_address=True
        )

    @property
    def port(self) -> int:
        """The port actually bound."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the admin server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop listening, close every connection and wait for their handlers to end."""
        if self._server is not None:
            self._server.close()
        pending = [task for conn in list(self.connections) if (task := conn.abort()) is not None]
        await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def handle(self, request: AdminRequest) -> tuple[AdminResponse, Headers]:
        """Answer one request; never raises (except cancellation)."""
        method = "GET" if request.method == "HEAD" else request.method
        handler = self._table.get((method, request.path))
        if handler is None:
            allowed = self._methods.get(request.path)
            if allowed is None:
                return _error(404, "not found"), ()
            allow = ", ".join(sorted({*allowed, *(["HEAD"] if "GET" in allowed else [])}))
            return _error(405, "method not allowed"), (("Allow", allow),)
        token = self.token
        if token is not None and (method, request.path) not in self._builtin and not (
            _bearer_matches(request.authorization, token)
        ):
            return _error(401, "admin token required"), (("WWW-Authenticate", "Bearer"),)
        try:
            response = await handler(request)
        except AdminError as exc:
            return _error(exc.status, exc.message), ()
        except Exception:
            log.exception("admin handler failed", extra={"url.path": request.path})
            return _error(500, "internal error"), ()
        if handler == self._render_dashboard:
            return response, (("Content-Security-Policy", _DASHBOARD_CSP),)
        return response, ()

    async def _healthz(self, _: AdminRequest) -> AdminResponse:
        if self._health():
            return AdminResponse.of({"status": "ok"})
        return AdminResponse.of({"status": "unhealthy"}, 503)

    async def _readyz(self, _: AdminRequest) -> AdminResponse:
        try:
            async with asyncio.timeout(self._ready_timeout):
                ready, reason = await self._ready()
        except TimeoutError:
            ready, reason = False, "readiness check timed out"
        except Exception:
            log.exception("readiness check failed")
            ready, reason = False, "readiness check failed"
        if ready:
            return AdminResponse.of({"status": "ready"})
        return AdminResponse.of({"status": "not ready", "reason": reason}, 503)

    async def _render_metrics(self, _: AdminRequest) -> AdminResponse:
        if self._metrics is None:
            raise AdminError(404, "not found")
        # Rendering reads the workers' files: keep it off the event loop.
        body, content_type = await asyncio.to_thread(self._metrics)
        return AdminResponse(200, body, content_type)

    async def _render_dashboard(self, _: AdminRequest) -> AdminResponse:
        return AdminResponse(200, self._dashboard or b"", "text/html; charset=utf-8")


def render_response(response: AdminResponse, headers: Headers, *, keep_alive: bool,
                    head_only: bool = False) -> bytes:
    """The bytes of one HTTP/1.1 response."""
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Date: {formatdate(usegmt=True)}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        *(f"{name}: {value}" for name, value in headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


def error_bytes(status: int, message: str) -> bytes:
    """A complete response that closes the connection, for errors found while parsing."""
    body = json.dumps({"error": message}).encode()
    return render_response(AdminResponse(status, body), (), keep_alive=False)



class _Reject(Exception):
    """Raised from a parser callback to answer ``status`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdminConnection(asyncio.Protocol):
    """One client connection: llhttp parses, whole requests queue, answers go out in order."""

    def __init__(self, server: AdminServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._pending: deque[_Pending] = deque()
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._failed = False
        self._in_head = False
        self._head_bytes = 0
        self._head_raw = 0
        self._url = b""
        self._body = bytearray()
        self._expect_continue = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # create_server: a stream
        self._server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self._task is not None:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        self._arm_idle()
        was_in_head = self._in_head
        try:
            self._parser.feed_data(data)
            if was_in_head and self._in_head:  # a head spread over several reads
                # Counted apart from the parsed fields (those bytes are counted there too):
                # this bounds what the parser holds before a callback.
                self._head_raw += len(data)
                if self._head_raw > self._server.max_head_bytes + _HEAD_SLACK:
                    raise _Reject(431, "request header fields too large")
        except _Reject as exc:
            self._fail(exc.status, exc.message)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Reject):
                self._fail(exc.__context__.status, exc.__context__.message)
            else:
                log.exception("admin request parsing failed")
                self._fail(500, "internal error")
        except httptools.HttpParserError:
            self._fail(400, "bad request")

    # -- llhttp callbacks --

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes, self._head_raw, self._url = True, 0, 0, b""
        self._body = bytearray()
        self._expect_continue = False
        self._authorization: bytes | None = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        lower = name.lower()
        limit = self._server.max_body_bytes
        # llhttp has validated the digits; isdigit() only keeps int() from ever raising.
        if lower == b"content-length" and value.isdigit() and int(value) > limit:
            raise _Reject(413, "request body too large")
        if lower == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        if lower == b"authorization":
            self._authorization = value

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._expect_continue and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if len(self._body) + len(body) > self._server.max_body_bytes:
            raise _Reject(413, "request body too large")
        self._body += body

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self._url)
        pairs = parse_qsl((url.query or b"").decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs):  # ?name=a&name=b: neither is silently the one acted on
            raise _Reject(400, "a query parameter is given more than once")
        request = AdminRequest(
            method=self._parser.get_method().decode("ascii"),
            path=url.path.decode("latin-1"),
            query=query,
            body=bytes(self._body),
            authorization=self._authorization,
        )
        self._enqueue((request, self._parser.should_keep_alive()))

    # -- answering --

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._server.max_head_bytes:
            raise _Reject(431, "request header fields too large")

    def _fail(self, status: int, message: str) -> None:
        self._failed = True
        self._enqueue(error_bytes(status, message))

    def _enqueue(self, item: _Pending) -> None:
        self._pending.append(item)
        if len(self._pending) >= _MAX_PIPELINED and self._transport is not None:
            self._transport.pause_reading()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        transport = self._transport
        if transport is None:  # requests only arrive once connected
            return
        try:
            while self._pending and not transport.is_closing():
                item = self._pending.popleft()
                if isinstance(item, bytes):
                    transport.write(item)
                    transport.close()
                    return
                request, keep_alive = item
                response, headers = await self._server.handle(request)
                head_only = request.method == "HEAD"
                transport.write(render_response(response, headers, keep_alive=keep_alive,
                                                head_only=head_only))
                if not keep_alive:
                    transport.close()
                    return
                if len(self._pending) == _MAX_PIPELINED - 1:
                    transport.resume_reading()
        finally:
            self._task = None

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self._server.idle_timeout_s, self._on_idle)

    def _on_idle(self) -> None:
        if self._task is not None:
            self._arm_idle()  # a handler is still running: not idle
        elif self._transport is not None:
            self._transport.close()

    def abort(self) -> asyncio.Task[None] | None:
        """Close now (server shutdown); returns the handler task to wait for, if any."""
        task = self._task
        if task is not None:
            task.cancel()
        if self._transport is not None:
            self._transport.close()
        return task


def _bearer_matches(authorization: bytes | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    if authorization is None:
        return False
    scheme, _, given = authorization.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token.encode())
