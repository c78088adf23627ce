"""Decisions sent as a request arrives on an idle keep-alive connection (the head start).

The first request of a connection and pipelined ones take the handler's own path; the others
have their rate-limit decision sent by the connection before its task wakes. Both must charge
once, answer alike and follow ``on_failure`` when Redis does not answer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.http.helpers import gateway_config, route, upstream
from tests.integration.http.rawclient import RawClient, get
from tests.support.gateway import http_get, running_gateway
from tests.support.redis_servers import RedisServer
from tests.support.upstreams import ScriptedUpstream, UpstreamLoop

from apigate.auth.api_key import hash_key


@pytest.fixture(scope="module")
def scripted(upstream_loop: UpstreamLoop) -> ScriptedUpstream:
    return upstream_loop.serve("head-start")


@pytest.fixture(autouse=True)
def _fresh(scripted: ScriptedUpstream) -> None:
    scripted.reset()


def _config(
    scripted: ScriptedUpstream, redis_url: str, server: dict[str, object] | None = None,
    **storage: object,
) -> dict[str, object]:
    config = gateway_config(
        {"up": upstream(scripted.url)},
        [
            route("limited", "up", path_prefix="/limited", rate_limits=["per-ip"]),
            route("open", "up", path_prefix="/"),
        ],
        **(server or {}),
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


def test_a_decision_longer_than_the_header_timeout_is_still_answered(
    scripted: ScriptedUpstream, fresh_redis: RedisServer, tmp_path: Path
) -> None:
    """The head has arrived: waiting for Redis (here 0.8 s, frozen) is not a slow head, even
    past ``header_timeout_s`` (0.3 s). The request is answered as ``on_failure`` says."""
    config = _config(scripted, fresh_redis.url, {"header_timeout_s": 0.3}, timeout_ms=800,
                     on_failure="closed")
    with running_gateway(config, tmp_path) as gw, RawClient(gw.port) as client:
        assert client.request(get("/limited/t")).status == 200
        fresh_redis.node.pause()
        try:
            response = client.request(get("/limited/t"))
        finally:
            fresh_redis.node.resume()
        assert response.status == 503
        assert client.request(get("/free")).status == 200


def _sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one series in a /metrics page (0 when absent)."""
    for line in metrics.splitlines():
        if line.split("{")[0].split(" ")[0] == name and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_client_that_leaves_during_the_decision_is_counted_and_logged(
    scripted: ScriptedUpstream, fresh_redis: RedisServer, tmp_path: Path
) -> None:
    """The client closes its connection while Redis (frozen) has not answered: the request
    was charged, so it is counted (status 499, nothing in flight) and logged, and it never
    reaches the upstream."""
    config = _config(scripted, fresh_redis.url, timeout_ms=1000, on_failure="open")
    config["observability"] = {"access_log": True, "log_level": "info"}
    with running_gateway(config, tmp_path) as gw:
        with RawClient(gw.port) as client:
            assert client.request(get("/limited/gone")).status == 200
            fresh_redis.node.pause()
            client.send(get("/limited/gone"))
            time.sleep(0.2)  # the head has arrived and its decision is waiting
        time.sleep(1.0)  # past timeout_ms: the open verdict finds the connection gone
        fresh_redis.node.resume()
        time.sleep(1.5)  # workers flush metrics once a second
        status, body = http_get(f"{gw.admin_url}/metrics")
        assert status == 200
        page = body.decode()
        assert _sample(page, "apigate_requests_total", route="limited",
                       status_class="4xx") == 1
        assert _sample(page, "apigate_inflight_requests") == 0
        log = gw.log_path.read_text()
        assert len(re.findall(r'"http.response.status_code":499', log)) == 1
    assert [r.target for r in scripted.requests] == ["/limited/gone"]


def test_each_decision_is_counted_once_by_outcome(
    scripted: ScriptedUpstream, fresh_redis: RedisServer, tmp_path: Path
) -> None:
    """Five requests on /limited (limit 3) and two on an unlimited route: /metrics counts five
    decisions, three allowed and two refused (by Redis, or by the local denial cache after it);
    the unlimited route's requests count none."""
    with running_gateway(_config(scripted, fresh_redis.url), tmp_path) as gw:
        with RawClient(gw.port) as client:
            statuses = [client.request(get(path)).status
                        for path in ["/limited/m"] * 5 + ["/free", "/free"]]
        assert statuses == [200, 200, 200, 429, 429, 200, 200]
        time.sleep(1.5)  # workers flush metrics once a second
        status, body = http_get(f"{gw.admin_url}/metrics")
    assert status == 200
    page = body.decode()
    name = "apigate_ratelimit_decisions_total"
    counted = {
        decision: _sample(page, name, policy="per-ip", decision=decision)
        for decision in ("allowed", "limited", "cached_limited")
    }
    assert counted["allowed"] == 3
    assert counted["limited"] + counted["cached_limited"] == 2
    total = sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
                if line.startswith(name + "{"))
    assert total == 5


ACME_KEY = "acme-key-5d1f0c8b2e"
OTHER_KEY = "other-key-9a7e3b6c4d"


def _keyed_config(scripted: ScriptedUpstream, redis_url: str) -> dict[str, object]:
    """API-key routes: consumers limited to 3 each, and a route only acme may use."""
    config = gateway_config(
        {"up": upstream(scripted.url)},
        [
            route("keyed", "up", path_prefix="/keyed", auth="api_key"),
            route("acme-only", "up", path_prefix="/acme-only", auth="api_key",
                  consumers=["acme"]),
        ],
    )
    config["storage"] = {"url": redis_url}
    config["rate_limits"] = {
        "per-consumer": {"limit": 3, "window": "1h", "algorithm": "fixed_window",
                         "key": "consumer"}
    }
    config["auth"] = {"api_key": {"header": "X-API-Key"}}
    config["consumers"] = {
        name: {"api_keys": [hash_key(key)], "rate_limits": ["per-consumer"]}
        for name, key in (("acme", ACME_KEY), ("other", OTHER_KEY))
    }
    return config


def test_api_key_requests_are_authenticated_and_charged_once_each(
    scripted: ScriptedUpstream, fresh_redis: RedisServer, tmp_path: Path
) -> None:
    """On one keep-alive connection (all but its first request authenticated and decided as
    they arrive): a consumer's five requests against its limit of 3 pass three times, with
    the key stripped and X-Consumer set; refused credentials and a route the consumer may not
    use are answered 401 and 403 and charge nothing; another consumer has its own bucket."""
    acme = f"X-API-Key: {ACME_KEY}\r\n"
    with running_gateway(_keyed_config(scripted, fresh_redis.url), tmp_path) as gw, RawClient(
        gw.port
    ) as client:
        first = client.request(get("/keyed/a", extra=acme))
        missing = client.request(get("/keyed/a"))
        wrong = client.request(get("/keyed/a", extra="X-API-Key: not-a-key\r\n"))
        refused = client.request(get("/acme-only/a", extra=f"X-API-Key: {OTHER_KEY}\r\n"))
        rest = [client.request(get("/keyed/a", extra=acme)) for _ in range(4)]
        other = client.request(get("/acme-only/b", extra=f"X-API-Key: {OTHER_KEY}\r\n"))
        allowed = client.request(get("/acme-only/c", extra=acme))
        theirs = client.request(get("/keyed/d", extra=f"X-API-Key: {OTHER_KEY}\r\n"))
    assert [r.status for r in [first, *rest]] == [200, 200, 200, 429, 429]
    remaining = [r.header("ratelimit") or "" for r in [first, *rest[:2]]]
    assert [value.split(";")[:2] for value in remaining] == [
        ['"per-consumer"', f"r={n}"] for n in (2, 1, 0)
    ]
    assert missing.status == wrong.status == 401
    assert missing.header("www-authenticate") == wrong.header("www-authenticate") == (
        'ApiKey realm="apigate"'
    )
    assert refused.status == other.status == 403
    assert refused.json()["error"]
    assert allowed.status == 429  # acme's three are spent, on every route
    assert theirs.status == 200
    assert (theirs.header("ratelimit") or "").split(";")[:2] == ['"per-consumer"', "r=2"]
    seen = scripted.requests
    assert [r.target for r in seen] == ["/keyed/a"] * 3 + ["/keyed/d"]
    assert [r.header("x-consumer") for r in seen] == ["acme"] * 3 + ["other"]
    assert all(r.header("x-api-key") is None for r in seen)
