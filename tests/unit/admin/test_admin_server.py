"""The admin listener over a real loopback socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httptools
import pytest

from apigate.admin.server import AdminServer, default_dashboard
from apigate.admin.types import AdminError, AdminRequest, AdminResponse, AdminRoute


@dataclass
class Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    done: bool = False

    def json(self) -> object:
        return json.loads(self.body)


class _Collector:
    """httptools callbacks that collect whole responses."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.replies.append(Reply())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.replies[-1].headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.replies[-1].status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.replies[-1].body += body

    def on_message_complete(self) -> None:
        self.replies[-1].done = True


async def exchange(port: int, data: bytes, count: int = 1) -> list[Reply]:
    """Send raw bytes, read until ``count`` whole responses arrived (or the server closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    collector = _Collector()
    try:
        writer.write(data)
        while sum(r.done for r in collector.replies) < count:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            if not chunk:
                break
            collector.parser.feed_data(chunk)
    finally:
        writer.close()
        await writer.wait_closed()
    return collector.replies


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: admin\r\n{extra}\r\n".encode()


async def _echo(request: AdminRequest) -> AdminResponse:
    return AdminResponse.of({"query": dict(request.query), "body": request.body.decode()})


async def _refuse(request: AdminRequest) -> AdminResponse:
    raise AdminError(409, "policy exists")


async def _crash(request: AdminRequest) -> AdminResponse:
    raise RuntimeError("boom")


ROUTES: list[AdminRoute] = [
    ("POST", "/admin/echo", _echo),
    ("GET", "/admin/echo", _echo),
    ("POST", "/admin/refuse", _refuse),
    ("GET", "/admin/crash", _crash),
]


@dataclass
class State:
    ready: tuple[bool, str] = (True, "")


@pytest.fixture
async def server() -> AsyncIterator[tuple[AdminServer, State]]:
    state = State()

    async def ready() -> tuple[bool, str]:
        return state.ready

    admin = AdminServer(
        ROUTES,
        health=lambda: True,
        ready=ready,
        metrics=lambda: (b"apigate_info 1.0\n", "text/plain; version=0.0.4; charset=utf-8"),
        dashboard_html=default_dashboard(),
    )
    await admin.start("127.0.0.1", 0)
    yield admin, state
    await admin.close()


async def test_healthz(server: tuple[AdminServer, State]) -> None:
    """GET /healthz answers 200 {"status": "ok"} while the process is healthy."""
    [reply] = await exchange(server[0].port, get("/healthz"))
    assert (reply.status, reply.json()) == (200, {"status": "ok"})


async def test_readyz_ready_and_not_ready(server: tuple[AdminServer, State]) -> None:
    """GET /readyz is 200 when ready and 503 with the reason when not."""
    admin, state = server
    [ok] = await exchange(admin.port, get("/readyz"))
    state.ready = (False, "draining")
    [draining] = await exchange(admin.port, get("/readyz"))
    assert (ok.status, ok.json()) == (200, {"status": "ready"})
    assert draining.status == 503
    assert draining.json() == {"status": "not ready", "reason": "draining"}


async def test_readyz_timeout_is_not_ready() -> None:
    """A readiness check slower than the timeout answers 503 instead of hanging."""

    async def never_ready() -> tuple[bool, str]:
        await asyncio.Event().wait()
        return True, ""

    admin = AdminServer([], health=lambda: True, ready=never_ready, metrics=None,
                        dashboard_html=None, ready_timeout_s=0.01)
    await admin.start("127.0.0.1", 0)
    try:
        [reply] = await exchange(admin.port, get("/readyz"))
    finally:
        await admin.close()
    assert reply.status == 503
    assert reply.json() == {"status": "not ready", "reason": "readiness check timed out"}


async def test_metrics_text(server: tuple[AdminServer, State]) -> None:
    """GET /metrics returns the metrics callable's body and content type."""
    [reply] = await exchange(server[0].port, get("/metrics"))
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert reply.body == b"apigate_info 1.0\n"


async def test_metrics_disabled_is_404() -> None:
    """Without a metrics callable /metrics and, without HTML, /dashboard are 404."""

    async def ready() -> tuple[bool, str]:
        return True, ""

    admin = AdminServer([], health=lambda: True, ready=ready, metrics=None, dashboard_html=None)
    await admin.start("127.0.0.1", 0)
    try:
        replies = await exchange(admin.port, get("/metrics") + get("/dashboard"), count=2)
    finally:
        await admin.close()
    assert [r.status for r in replies] == [404, 404]


async def test_dashboard_html(server: tuple[AdminServer, State]) -> None:
    """GET /dashboard serves the packaged HTML with a same-origin-only CSP."""
    [reply] = await exchange(server[0].port, get("/dashboard"))
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert b"<html" in reply.body
    assert "connect-src 'self'" in reply.headers["content-security-policy"]


async def test_unknown_path_404_and_wrong_method_405(server: tuple[AdminServer, State]) -> None:
    """An unknown path is 404; a known path with another method is 405 with Allow."""
    data = get("/nope") + b"DELETE /admin/echo HTTP/1.1\r\nHost: a\r\n\r\n"
    missing, wrong = await exchange(server[0].port, data, count=2)
    assert (missing.status, missing.json()) == (404, {"error": "not found"})
    assert wrong.status == 405
    assert wrong.headers["allow"] == "GET, HEAD, POST"


async def test_admin_error_maps_to_status(server: tuple[AdminServer, State]) -> None:
    """AdminError(409, msg) from a handler answers 409 {"error": msg}."""
    data = b"POST /admin/refuse HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
    [reply] = await exchange(server[0].port, data)
    assert (reply.status, reply.json()) == (409, {"error": "policy exists"})


async def test_handler_crash_is_500_and_connection_survives(
    server: tuple[AdminServer, State], caplog: pytest.LogCaptureFixture
) -> None:
    """A handler exception answers 500, is logged, and the same connection serves on."""
    crash, health = await exchange(server[0].port, get("/admin/crash") + get("/healthz"), 2)
    assert (crash.status, crash.json()) == (500, {"error": "internal error"})
    assert health.status == 200
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)


async def test_body_and_query_reach_the_handler(server: tuple[AdminServer, State]) -> None:
    """The handler sees the decoded query and the whole (chunked) body."""
    data = (
        b"POST /admin/echo?x=1&y= HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    [reply] = await exchange(server[0].port, data)
    assert reply.json() == {"query": {"x": "1", "y": ""}, "body": "abcde"}


async def test_oversized_body_413(server: tuple[AdminServer, State]) -> None:
    """A Content-Length over 64 KiB is refused with 413 before the body is read, then closed."""
    data = b"POST /admin/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n"
    [reply] = await exchange(server[0].port, data)
    assert reply.status == 413
    assert reply.headers["connection"] == "close"


async def test_oversized_chunked_body_413(server: tuple[AdminServer, State]) -> None:
    """A chunked body that grows past 64 KiB is refused with 413."""
    chunk = b"8000\r\n" + b"a" * 0x8000 + b"\r\n"
    data = b"POST /admin/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    [reply] = await exchange(server[0].port, data + chunk * 3)
    assert reply.status == 413


async def test_oversized_head_431(server: tuple[AdminServer, State]) -> None:
    """A request head over 16 KiB is refused with 431."""
    [reply] = await exchange(server[0].port, get("/healthz", f"X-Big: {'a' * 17000}\r\n"))
    assert reply.status == 431


async def test_malformed_request_400(server: tuple[AdminServer, State]) -> None:
    """Bytes llhttp cannot parse answer 400 and close."""
    data = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n"
    [reply] = await exchange(server[0].port, data)
    assert (reply.status, reply.headers["connection"]) == (400, "close")


async def test_keep_alive_two_requests_one_connection(server: tuple[AdminServer, State]) -> None:
    """Two requests on one connection get two answers in order, both keep-alive."""
    first, second = await exchange(server[0].port, get("/healthz") + get("/readyz"), count=2)
    assert first.json() == {"status": "ok"}
    assert second.json() == {"status": "ready"}
    assert first.headers["connection"] == "keep-alive"


async def test_connection_close_is_honoured(server: tuple[AdminServer, State]) -> None:
    """A request with Connection: close is answered and the connection is closed."""
    data = get("/healthz", "Connection: close\r\n") + get("/healthz")
    replies = await exchange(server[0].port, data, 2)
    assert [r.status for r in replies] == [200]
    assert replies[0].headers["connection"] == "close"


async def test_head_has_no_body(server: tuple[AdminServer, State]) -> None:
    """HEAD /healthz answers like GET without a body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server[0].port)
    writer.write(b"HEAD /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert raw.endswith(b"\r\n\r\n")
    assert b"Content-Length: 16\r\n" in raw


async def test_add_routes_replaces_the_table(server: tuple[AdminServer, State]) -> None:
    """add_routes() swaps the dynamic routes: old paths become 404, built-ins stay."""
    admin = server[0]
    admin.add_routes([("GET", "/admin/new", _echo)])
    data = get("/admin/echo") + get("/admin/new") + get("/healthz")
    old, new, health = await exchange(admin.port, data, 3)
    assert [old.status, new.status, health.status] == [404, 200, 200]


def test_route_shadowing_a_builtin_is_refused() -> None:
    """A dynamic route on a built-in path is a programming error, raised at once."""

    async def ready() -> tuple[bool, str]:
        return True, ""

    with pytest.raises(ValueError, match="shadows"):
        AdminServer([("GET", "/healthz", _echo)], health=lambda: True, ready=ready,
                    metrics=None, dashboard_html=None)


class FakeTransport(asyncio.Transport):
    """Records writes and close(), so a connection can be fed byte by byte."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def test_head_growing_over_many_reads_is_431() -> None:
    """A header that never ends, fed in small reads, is cut off at 16 KiB with 431."""
    from apigate.admin.server import AdminConnection

    async def ready() -> tuple[bool, str]:
        return True, ""

    admin = AdminServer([], health=lambda: True, ready=ready, metrics=None, dashboard_html=None)
    connection = AdminConnection(admin)
    transport = FakeTransport()
    connection.connection_made(transport)
    connection.data_received(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
    for _ in range(40):
        connection.data_received(b"a" * 1000)
    for _ in range(3):  # let the answering task run
        await asyncio.sleep(0)
    connection.connection_lost(None)
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert transport.closed


async def _ready_now() -> tuple[bool, str]:
    return True, ""


async def test_idle_connection_is_closed() -> None:
    """A connection that sends nothing is closed once idle_timeout_s passes."""
    admin = AdminServer([], health=lambda: True, ready=_ready_now, metrics=None,
                        dashboard_html=None, idle_timeout_s=0)
    await admin.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
    finally:
        await admin.close()


async def test_close_cancels_a_running_handler() -> None:
    """close() returns while a handler is stuck: its connection is closed, its task cancelled."""
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck(request: AdminRequest) -> AdminResponse:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return AdminResponse.of({})

    admin = AdminServer([("GET", "/admin/stuck", stuck)], health=lambda: True, ready=_ready_now,
                        metrics=None, dashboard_html=None)
    await admin.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    writer.write(get("/admin/stuck"))
    await asyncio.wait_for(entered.wait(), 5)
    await asyncio.wait_for(admin.close(), 5)
    assert cancelled.is_set()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()


async def test_repeated_query_parameter_is_400(server: tuple[AdminServer, State]) -> None:
    """?name=a&name=b is refused: the API never picks one of two values silently."""
    [reply] = await exchange(server[0].port, get("/admin/echo?name=a&name=b"))
    assert reply.status == 400
    assert reply.json() == {"error": "a query parameter is given more than once"}


async def test_admin_token_guards_the_api_not_the_probes(
    server: tuple[AdminServer, State],
) -> None:
    """With a token set, the admin API answers 401 (WWW-Authenticate: Bearer) without the right
    bearer token and serves with it; probes, metrics and the dashboard stay open."""
    admin = server[0]
    admin.token = "s3cret-admin-token-0123"
    missing, wrong, basic, right = await exchange(admin.port, (
        get("/admin/echo")
        + get("/admin/echo", "Authorization: Bearer s3cret-admin-token-0124\r\n")
        + get("/admin/echo", "Authorization: Basic s3cret-admin-token-0123\r\n")
        + get("/admin/echo", "Authorization: bearer s3cret-admin-token-0123\r\n")
    ), count=4)
    assert [r.status for r in (missing, wrong, basic, right)] == [401, 401, 401, 200]
    assert missing.json() == {"error": "admin token required"}
    assert missing.headers["www-authenticate"] == "Bearer"
    open_paths = await exchange(
        admin.port, get("/healthz") + get("/readyz") + get("/metrics") + get("/dashboard"),
        count=4,
    )
    assert [r.status for r in open_paths] == [200, 200, 200, 200]
    admin.token = None  # a reload that removes it
    [reply] = await exchange(admin.port, get("/admin/echo"))
    assert reply.status == 200
