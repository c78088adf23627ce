"""Per-consumer rate limits through a running gateway on Redis: the consumer's quota is exact,
a refused request charges the route's own limit nothing, and the admin API shows and resets the
quota in the supervisor."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from tests.integration.auth_gateway.helpers import admin, assert_refused, quiet_config, route, send
from tests.support.gateway import Gateway, running_gateway
from tests.support.redis_servers import RedisServer
from tests.support.upstreams import ScriptedUpstream, UpstreamLoop

from apigate.auth.api_key import hash_key

ACME_KEY = "acme-quota-key-93be"
QUOTA = 5
PER_IP = 100


@pytest.fixture(scope="module")
def upstream(auth_upstreams: UpstreamLoop) -> ScriptedUpstream:
    return auth_upstreams.serve("quota")


@pytest.fixture(scope="module")
def gateway(upstream: ScriptedUpstream, redis_server: RedisServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = quiet_config(
        {"up": upstream.url},
        [route("metered", "/metered", "up", auth="api_key", rate_limits=["per-ip"])],
        storage={"url": redis_server.url, "key_prefix": f"authgw-{uuid.uuid4().hex[:12]}",
                 "timeout_ms": 2000, "on_failure": "closed"},
        rate_limits={
            "per-ip": {"limit": PER_IP, "window": "1d", "algorithm": "fixed_window",
                       "key": "client_ip"},
            "acme-quota": {"limit": QUOTA, "window": "1d", "algorithm": "fixed_window",
                           "key": "consumer"},
        },
        consumers={"acme": {"api_keys": [hash_key(ACME_KEY)], "rate_limits": ["acme-quota"]}},
    )
    with running_gateway(config, tmp_path_factory.mktemp("quota"), workers=2) as gw:
        yield gw


def _call(gateway: Gateway) -> int:
    return send(gateway.port, "/metered/x", [("X-API-Key", ACME_KEY)]).status


def _per_ip_remaining(gateway: Gateway) -> int:
    status, body = admin(gateway, "GET", "/admin/ratelimit/usage?policy=per-ip&key=ip=127.0.0.1")
    assert status == 200, body
    remaining: int = body["remaining"]
    return remaining


def test_consumer_quota_is_exact_and_resettable(gateway: Gateway,
                                                upstream: ScriptedUpstream) -> None:
    """Exactly 5 pass; the 6th is 429 + Retry-After and charges per-ip nothing; reset re-opens."""
    assert_refused(send(gateway.port, "/metered/x"))  # a 401 is charged to no limit
    statuses = [_call(gateway) for _ in range(QUOTA)]
    assert statuses == [200] * QUOTA
    refused = send(gateway.port, "/metered/x", [("X-API-Key", ACME_KEY)])
    assert_refused(refused, 429)
    assert int(refused.header("retry-after") or "0") >= 1
    assert len(upstream.requests) == QUOTA
    assert _per_ip_remaining(gateway) == PER_IP - QUOTA

    status, usage = admin(gateway, "GET", "/admin/consumers/usage?name=acme")
    assert status == 200, usage
    quota = usage["policies"]["acme-quota"]
    assert (quota["limit"], quota["remaining"]) == (QUOTA, 0), quota

    status, body = admin(gateway, "POST", "/admin/consumers/reset?name=acme")
    assert (status, body["reset"]) == (200, ["acme-quota"]), body
    _, usage = admin(gateway, "GET", "/admin/consumers/usage?name=acme")
    assert usage["policies"]["acme-quota"]["remaining"] == QUOTA

    # A worker may trust its cached denial for about a second: poll, bounded, for 2 s.
    statuses = _poll_until_allowed(gateway, timeout=2.0)
    assert statuses[-1] == 200, statuses
    allowed = statuses.count(200)
    assert _per_ip_remaining(gateway) == PER_IP - QUOTA - allowed
    _, usage = admin(gateway, "GET", "/admin/consumers/usage?name=acme")
    assert usage["policies"]["acme-quota"]["remaining"] == QUOTA - allowed


def _poll_until_allowed(gateway: Gateway, timeout: float) -> list[int]:
    """Statuses of requests sent every 0.1 s until one is allowed or ``timeout`` passes."""
    statuses: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses.append(_call(gateway))
        if statuses[-1] != 429:
            break
        time.sleep(0.1)
    return statuses


def test_consumer_usage_of_unknown_consumer_is_404(gateway: Gateway) -> None:
    """The admin usage endpoint answers 404 for a consumer that does not exist."""
    status, body = admin(gateway, "GET", "/admin/consumers/usage?name=nobody")
    assert status == 404, body


def test_consumer_usage_with_redis_down_is_503(
    upstream: ScriptedUpstream, fresh_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The consumers admin API answers a dead Redis like the rate-limit one: 503, not 500."""
    config = quiet_config(
        {"up": upstream.url},
        [route("metered", "/metered", "up", auth="api_key")],
        storage={"url": fresh_redis.url, "timeout_ms": 200, "on_failure": "closed"},
        rate_limits={"acme-quota": {"limit": QUOTA, "window": "1d", "algorithm": "fixed_window",
                                    "key": "consumer"}},
        consumers={"acme": {"api_keys": [hash_key(ACME_KEY)], "rate_limits": ["acme-quota"]}},
    )
    with running_gateway(config, tmp_path_factory.mktemp("quota-down")) as gw:
        fresh_redis.kill()
        for path in ("/admin/consumers/usage?name=acme", "/admin/consumers/reset?name=acme"):
            status, body = admin(gw, "GET" if "usage" in path else "POST", path)
            assert (status, body) == (503, {"error": "rate-limit storage unavailable"}), path
