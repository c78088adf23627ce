"""Redis consumers across two gateway instances sharing one Redis: a consumer created, disabled,
enabled and deleted through one instance's admin API takes effect on both within seconds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from tests.integration.auth_gateway.helpers import (
    admin,
    assert_refused,
    header_values,
    quiet_config,
    route,
    send,
    wait_for,
)
from tests.support.gateway import Gateway, running_gateway
from tests.support.redis_servers import RedisServer
from tests.support.upstreams import ScriptedUpstream, UpstreamLoop

from apigate.auth.api_key import hash_key

BETA_KEY = "beta-redis-key-c41d7e"
PROPAGATION_S = 10.0


@pytest.fixture(scope="module")
def upstream(auth_upstreams: UpstreamLoop) -> ScriptedUpstream:
    return auth_upstreams.serve("shared")


@pytest.fixture(scope="module")
def pair(upstream: ScriptedUpstream, redis_server: RedisServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Gateway]]:
    config = quiet_config(
        {"up": upstream.url},
        [route("svc", "/svc", "up", auth="api_key")],
        storage={"url": redis_server.url, "key_prefix": f"authgw-{uuid.uuid4().hex[:12]}",
                 "timeout_ms": 2000},
    )
    workdir = tmp_path_factory.mktemp("shared")
    with running_gateway(config, workdir) as a, running_gateway(config, workdir) as b:
        yield a, b


def _status(gateway: Gateway) -> int:
    return send(gateway.port, "/svc/x", [("X-API-Key", BETA_KEY)]).status


def _everywhere(pair: tuple[Gateway, Gateway], status: int) -> bool:
    return all(_status(gateway) == status for gateway in pair)


def test_consumer_lifecycle_propagates_between_instances(
    pair: tuple[Gateway, Gateway], upstream: ScriptedUpstream
) -> None:
    """Create on A -> 200 on B; disable on A -> 401 on both; enable -> 200; delete -> 401."""
    a, b = pair
    assert_refused(send(b.port, "/svc/x", [("X-API-Key", BETA_KEY)]))

    status, body = admin(a, "POST", "/admin/consumers",
                         {"name": "beta", "api_keys": [hash_key(BETA_KEY)]})
    assert status == 201, body
    # Workers (on A too: the admin API lives in the supervisor) poll Redis about every second.
    assert wait_for(lambda: _everywhere(pair, 200), PROPAGATION_S), b.output()
    assert header_values(upstream.requests[-1], "x-consumer") == ["beta"]
    _, listing = admin(b, "GET", "/admin/consumers")
    assert [(c["name"], c["source"]) for c in listing["consumers"]] == [("beta", "redis")]

    status, body = admin(a, "POST", "/admin/consumers/disable?name=beta")
    assert (status, body["disabled"]) == (200, True), body
    assert wait_for(lambda: _everywhere(pair, 401), PROPAGATION_S)
    assert_refused(send(b.port, "/svc/x", [("X-API-Key", BETA_KEY)]))

    status, body = admin(b, "POST", "/admin/consumers/enable?name=beta")
    assert (status, body["disabled"]) == (200, False), body
    assert wait_for(lambda: _everywhere(pair, 200), PROPAGATION_S)

    status, body = admin(a, "DELETE", "/admin/consumers?name=beta")
    assert status == 200, body
    assert wait_for(lambda: _everywhere(pair, 401), PROPAGATION_S)
    _, listing = admin(b, "GET", "/admin/consumers")
    assert listing["consumers"] == []


def test_duplicate_and_bad_consumers_are_refused(pair: tuple[Gateway, Gateway]) -> None:
    """Creating a consumer twice is 409; a raw key instead of a hash is 400."""
    a, b = pair
    body = {"name": "gamma", "api_keys": [hash_key("gamma-key")]}
    assert admin(a, "POST", "/admin/consumers", body)[0] == 201
    assert admin(b, "POST", "/admin/consumers", body)[0] == 409
    assert admin(b, "POST", "/admin/consumers", {"name": "delta", "api_keys": ["raw"]})[0] == 400
    assert admin(b, "DELETE", "/admin/consumers?name=gamma")[0] == 200
    assert admin(a, "DELETE", "/admin/consumers?name=gamma")[0] == 404
