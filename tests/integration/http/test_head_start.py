"""Decisions sent as a request arrives on an idle keep-alive connection (the head start).

The first request of a connection and pipelined ones take the handler's own path; the others
have their rate-limit decision sent by the connection before its task wakes. Both must charge
once, answer alike and follow ``on_failure`` when Redis does not answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.http.helpers import gateway_config, route, upstream
from tests.integration.http.rawclient import RawClient, get
from tests.support.gateway import running_gateway
from tests.support.redis_servers import RedisServer
from tests.support.upstreams import ScriptedUpstream, UpstreamLoop


@pytest.fixture(scope="module")
def scripted(upstream_loop: UpstreamLoop) -> ScriptedUpstream:
    return upstream_loop.serve("head-start")


@pytest.fixture(autouse=True)
def _fresh(scripted: ScriptedUpstream) -> None:
    scripted.reset()


def _config(scripted: ScriptedUpstream, redis_url: str, **storage: object) -> dict[str, object]:
    config = gateway_config(
        {"up": upstream(scripted.url)},
        [
            route("limited", "up", path_prefix="/limited", rate_limits=["per-ip"]),
            route("open", "up", path_prefix="/"),
        ],
    )
    config["storage"] = {"url": redis_url, **storage}
    config["rate_limits"] = {
        "per-ip": {"limit": 3, "window": "1h", "algorithm": "fixed_window", "key": "client_ip"}
    }
    return config


@pytest.fixture
def gateway_on(
    scripted: ScriptedUpstream, fresh_redis: RedisServer, tmp_path: Path
) -> Iterator[tuple[int, RedisServer]]:
    with running_gateway(_config(scripted, fresh_redis.url), tmp_path) as gw:
        yield gw.port, fresh_redis


def test_keep_alive_requests_are_charged_once_each(
    gateway_on: tuple[int, RedisServer], scripted: ScriptedUpstream
) -> None:
    """Five requests one after another on one connection against a limit of 3: three pass with
    2, 1, 0 remaining, two are refused; pipelined ones on a second connection are refused too;
    an unlimited route on the same connection is not charged."""
    port, _ = gateway_on
    with RawClient(port) as client:
        responses = [client.request(get("/limited/a")) for _ in range(5)]
        other = client.request(get("/free"))
    assert [r.status for r in responses] == [200, 200, 200, 429, 429]
    remaining = [r.header("ratelimit") for r in responses[:3]]
    assert [value.split(";")[1] for value in remaining if value] == ["r=2", "r=1", "r=0"]
    assert all(r.header("retry-after") for r in responses[3:])
    assert len({r.header("x-request-id") for r in responses}) == 5
    assert other.status == 200
    assert other.header("ratelimit") is None
    with RawClient(port) as client:
        client.send(get("/limited/b") * 3)
        statuses = [client.read_response().status for _ in range(3)]
    assert statuses == [429, 429, 429]
    assert [r.target for r in scripted.requests] == ["/limited/a"] * 3 + ["/free"]


@pytest.mark.parametrize(("on_failure", "status"), [("closed", 503), ("open", 200)])
def test_frozen_redis_answers_a_keep_alive_request_as_on_failure_says(
    scripted: ScriptedUpstream, fresh_redis: RedisServer, tmp_path: Path,
    on_failure: str, status: int,
) -> None:
    """Redis stops answering between two requests of one connection: the second is answered
    as ``on_failure`` says within about ``timeout_ms``, and the connection stays usable."""
    config = _config(scripted, fresh_redis.url, timeout_ms=100, on_failure=on_failure)
    with running_gateway(config, tmp_path) as gw, RawClient(gw.port) as client:
        assert client.request(get("/limited/x")).status == 200
        fresh_redis.node.pause()
        try:
            started = time.monotonic()
            response = client.request(get("/limited/x"))
            took = time.monotonic() - started
        finally:
            fresh_redis.node.resume()
        assert response.status == status
        assert took < 1.0
        if status == 503:
            assert response.header("retry-after") == "1"
            assert response.json()["error"]
        assert client.request(get("/free")).status == 200
