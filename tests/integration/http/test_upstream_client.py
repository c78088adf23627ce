"""The upstream side: keep-alive pools, balancing, retries, passive health, timeouts and the
JSON errors the gateway answers when an upstream fails."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import pytest
from tests.integration.http.helpers import children, gateway_config, route, upstream
from tests.integration.http.rawclient import RawClient, Response, get
from tests.support.gateway import Gateway, free_port, running_gateway
from tests.support.upstreams import ScriptedUpstream, UpstreamConn, UpstreamLoop, echo_json

NAMES = (
    "reuse", "rr_a", "rr_b", "lc_a", "lc_b", "rnd_a", "rnd_b", "retry", "post", "eject",
    "eject_live", "slow", "reset", "stale",
)


@pytest.fixture(scope="module")
def ups(upstream_loop: UpstreamLoop) -> dict[str, ScriptedUpstream]:
    return {name: upstream_loop.serve(name) for name in NAMES}


@pytest.fixture(scope="module")
def dead() -> list[str]:
    """URLs of loopback ports nobody listens on."""
    return [f"http://127.0.0.1:{free_port()}" for _ in range(3)]


@pytest.fixture(scope="module")
def gateway(
    ups: dict[str, ScriptedUpstream], dead: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    u = {name: up.url for name, up in ups.items()}
    upstreams = {
        "reuse": upstream(u["reuse"]),
        "rr": upstream(u["rr_a"], u["rr_b"]),
        "lc": upstream(u["lc_a"], u["lc_b"], balance="least_conn"),
        "rnd": upstream(u["rnd_a"], u["rnd_b"], balance="random"),
        "retry": upstream(dead[0], u["retry"], retries=1, max_failures=100),
        "post": upstream(u["post"], dead[1], retries=1, max_failures=100),
        "eject": upstream(u["eject_live"], dead[2], retries=0, max_failures=2, eject_s=60),
        "eject_retry": upstream(dead[2], u["eject"], retries=1, max_failures=2, eject_s=60),
        "alldead": upstream(dead[0], dead[1], retries=1, max_failures=1, eject_s=60),
        "slow": upstream(u["slow"], read_timeout_s=0.5),
        "reset": upstream(u["reset"]),
        "stale": upstream(u["stale"], read_timeout_s=3),
    }
    routes = [route(name, name, path_prefix=f"/{name}") for name in upstreams]
    with running_gateway(gateway_config(upstreams, routes), tmp_path_factory.mktemp("up")) as gw:
        yield gw


def fetch(gateway: Gateway, path: str, method: str = "GET") -> Response:
    """One request on a fresh client connection (so only the gateway's pool can reuse)."""
    with RawClient(gateway.port) as client:
        body = b"" if method == "GET" else b"Content-Length: 2\r\n\r\nhi"
        extra = b"\r\n" if method == "GET" else b""
        return client.request(
            f"{method} {path} HTTP/1.1\r\nHost: gw.test\r\n".encode() + body + extra
        )


def assert_json_error(response: Response, status: int) -> None:
    assert response.status == status, response.body
    payload = response.json()
    assert set(payload) == {"error", "request_id"}
    assert payload["error"]
    assert payload["request_id"] == response.header("x-request-id")


def test_upstream_connections_are_reused(
    gateway: Gateway, ups: dict[str, ScriptedUpstream]
) -> None:
    """Five sequential requests from five client connections share one upstream connection."""
    for i in range(5):
        assert fetch(gateway, f"/reuse/{i}").status == 200
    assert len(ups["reuse"].requests) == 5
    assert ups["reuse"].connections == 1


def test_round_robin_alternates_between_targets(
    gateway: Gateway, ups: dict[str, ScriptedUpstream]
) -> None:
    """round_robin sends ten requests five to each of two targets."""
    for _ in range(10):
        assert fetch(gateway, "/rr").status == 200
    assert (len(ups["rr_a"].requests), len(ups["rr_b"].requests)) == (5, 5)


def test_least_conn_spreads_concurrent_requests(
    gateway: Gateway, ups: dict[str, ScriptedUpstream]
) -> None:
    """least_conn sends four requests that arrive together two to each target: a target counts
    as busy from the moment it is picked, not only once its connection is open."""

    async def slow(conn: UpstreamConn) -> None:
        while (request := await conn.read_request()) is not None:
            await asyncio.sleep(0.4)
            await conn.respond(200, echo_json(request))

    ups["lc_a"].reset(slow)
    ups["lc_b"].reset(slow)
    assert gateway.process is not None
    (worker,) = children(gateway.process.pid)
    clients = [RawClient(gateway.port) for _ in range(4)]
    try:
        time.sleep(0.1)  # let the worker accept all four first
        os.kill(worker, signal.SIGSTOP)  # the four requests must arrive in one loop iteration
        try:
            for client in clients:
                client.send(get("/lc"))
            time.sleep(0.05)
        finally:
            os.kill(worker, signal.SIGCONT)
        statuses = [client.read_response().status for client in clients]
    finally:
        for client in clients:
            client.close()
    assert statuses == [200] * 4
    assert (len(ups["lc_a"].requests), len(ups["lc_b"].requests)) == (2, 2)


def test_random_balancing_uses_both_targets(
    gateway: Gateway, ups: dict[str, ScriptedUpstream]
) -> None:
    """random spreads 40 requests over both targets (all on one has probability 2**-39)."""
    for _ in range(40):
        assert fetch(gateway, "/rnd").status == 200
    assert ups["rnd_a"].requests
    assert ups["rnd_b"].requests


def test_get_is_retried_on_another_target_after_connect_failure(
    gateway: Gateway, ups: dict[str, ScriptedUpstream]
) -> None:
    """With one target a closed port, every GET still succeeds through the live target."""
    for _ in range(6):
        assert fetch(gateway, "/retry").status == 200
    assert len(ups["retry"].requests) == 6


def test_post_is_not_retried(gateway: Gateway, ups: dict[str, ScriptedUpstream]) -> None:
    """A POST whose target refuses the connection is answered 502, not retried elsewhere."""
    responses = [fetch(gateway, "/post", "POST") for _ in range(2)]
    assert sorted(r.status for r in responses) == [200, 502]
    assert_json_error(next(r for r in responses if r.status == 502), 502)
    assert len(ups["post"].requests) == 1


def test_dead_target_is_ejected_after_max_failures(
    gateway: Gateway, ups: dict[str, ScriptedUpstream]
) -> None:
    """Without retries exactly max_failures (2) requests fail; then only the live target serves."""
    statuses = [fetch(gateway, "/eject").status for _ in range(12)]
    assert statuses.count(502) == 2
    assert statuses[-6:] == [200] * 6
    assert len(ups["eject_live"].requests) == 10


def test_dead_target_with_retries_costs_no_errors(
    gateway: Gateway, ups: dict[str, ScriptedUpstream]
) -> None:
    """With retries, a dead target is ejected and every request succeeds on the live one."""
    statuses = [fetch(gateway, "/eject_retry").status for _ in range(10)]
    assert statuses == [200] * 10
    assert len(ups["eject"].requests) == 10


def test_all_targets_dead_is_502_then_503(gateway: Gateway) -> None:
    """When every target refuses connections the answer is 502, then 503 once all are ejected."""
    first = fetch(gateway, "/alldead")
    assert_json_error(first, 502)
    second = fetch(gateway, "/alldead")
    assert_json_error(second, 503)


def test_read_timeout_is_504(gateway: Gateway, ups: dict[str, ScriptedUpstream]) -> None:
    """An upstream that never answers within read_timeout_s gets the client a JSON 504."""

    async def silent(conn: UpstreamConn) -> None:
        await conn.read_request()
        await asyncio.sleep(5)

    ups["slow"].reset(silent)
    assert_json_error(fetch(gateway, "/slow"), 504)


def test_upstream_reset_mid_headers_is_502(
    gateway: Gateway, ups: dict[str, ScriptedUpstream]
) -> None:
    """An upstream that closes in the middle of its response head gets the client a JSON 502."""

    async def cut(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/pl")
        conn.close()

    ups["reset"].reset(cut)
    assert_json_error(fetch(gateway, "/reset"), 502)


def test_stale_pooled_connection_is_not_retried_without_its_body(
    gateway: Gateway, ups: dict[str, ScriptedUpstream]
) -> None:
    """When a reused upstream connection drops a PUT after reading its body, the gateway answers
    502 promptly or replays the whole body; it never resends the head without the body."""

    async def drop_second(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.respond(200, b"first")
        await conn.read_request()
        conn.close()

    async def answer(conn: UpstreamConn) -> None:
        while (request := await conn.read_request()) is not None:
            await conn.respond(200, request.body)

    stale = ups["stale"]
    stale.reset(drop_second)
    with RawClient(gateway.port) as client:
        put = b"PUT /stale HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n\r\n"
        assert client.request(put + b"hello").status == 200
        stale.handler = answer
        second = client.request(put + b"world")
    assert second.status in (200, 502), second.body
    if second.status == 200:
        assert second.body == b"world"
    for conn in stale.conns[1:]:
        assert not conn.raw or conn.raw.endswith(b"\r\n\r\nworld"), bytes(conn.raw)
