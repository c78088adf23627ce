"""Who a client is across instances: spoofed X-Forwarded-For, IPv6 prefixes, the admin API.

Gateways share one redis-server; each test uses a key prefix of its own.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from tests.integration.cluster.fleet import (
    admin,
    assert_all_keys_expire,
    gateway_config,
    reset_key,
    running_fleet,
    targets,
    usage,
)
from tests.integration.cluster.traffic import Target, blast, statuses
from tests.support.gateway import Gateway
from tests.support.redis_servers import RedisServer

from apigate.ratelimit.overlimit import RECHECK_S

LIMIT = 20
POLICIES = {"per-ip": {"limit": LIMIT, "window": "1d", "algorithm": "fixed_window"}}


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_spoofed_forwarded_for_from_untrusted_peer_shares_one_bucket(
    redis_server: RedisServer, upstream_port: int, tmp_path: Path
) -> None:
    """Two clients rotating X-Forwarded-For values are both keyed by their real peer address."""
    config = gateway_config(
        storage_url=redis_server.url, upstream_port=upstream_port, policies=POLICIES,
        on_failure="closed", timeout_ms=2000, server={"trusted_proxies": ["10.0.0.0/8"]},
    )

    def spoofed(n: int) -> dict[str, str]:
        return {"X-Forwarded-For": f"198.51.{n % 2}.{n % 250}"}

    with running_fleet(config, tmp_path, workers=[1, 1]) as gateways:
        results = blast(targets(gateways), total=3 * LIMIT, connections=2, path="/per-ip",
                        headers=spoofed)
        assert statuses(results) == {200: LIMIT, 429: 2 * LIMIT}
        assert usage(gateways[0], "per-ip")["remaining"] == 0
        assert usage(gateways[0], "per-ip", "ip=198.51.0.2")["remaining"] == LIMIT


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_clients_in_one_prefix_share_a_bucket(
    redis_server: RedisServer, upstream_port: int, tmp_path: Path
) -> None:
    """Behind a trusted proxy on [::1], 2001:db8::1 and ::2 share a /64 bucket; 0:1::1 does not."""
    config = gateway_config(
        storage_url=redis_server.url, upstream_port=upstream_port, policies=POLICIES,
        on_failure="closed", timeout_ms=2000,
        server={"trusted_proxies": ["127.0.0.0/8", "::1/128"]},
    )
    gateway = Gateway(config, tmp_path)
    gateway.config["server"]["listen"] = f"[::1]:{gateway.port}"
    gateway.write_config(gateway.config)
    gateway.start()
    try:
        target = [Target("::1", gateway.port)]
        same_prefix = blast(target, total=3 * LIMIT, connections=4, path="/per-ip",
                            headers=lambda n: {"X-Forwarded-For": f"2001:db8::{n % 2 + 1}"})
        assert statuses(same_prefix) == {200: LIMIT, 429: 2 * LIMIT}
        other = blast(target, total=LIMIT, connections=2, path="/per-ip",
                      headers=lambda n: {"X-Forwarded-For": "2001:db8:0:1::1"})
        assert statuses(other) == {200: LIMIT}
        assert usage(gateway, "per-ip", "ip=2001:db8::/64")["remaining"] == 0
    finally:
        gateway.stop()


def test_admin_api_lists_policies_shows_usage_and_resets_across_instances(
    redis_server: RedisServer, upstream_port: int, tmp_path: Path
) -> None:
    """Usage reflects requests on any instance; a reset lets the client through on every one
    within a second (the over-limit cache's recheck interval)."""
    config = gateway_config(
        storage_url=redis_server.url, upstream_port=upstream_port, policies=POLICIES,
        on_failure="closed", timeout_ms=2000,
    )
    with running_fleet(config, tmp_path, workers=[1, 1]) as gateways:
        status, body = admin(gateways[1], "GET", "/admin/ratelimit/policies")
        assert status == 200
        listed = {p["name"]: p for p in body["policies"]}
        assert listed["per-ip"]["limit"] == LIMIT
        assert listed["per-ip"]["algorithm"] == "fixed_window"

        blast(targets(gateways), total=5, connections=1, path="/per-ip")
        seen = usage(gateways[1], "per-ip")
        assert (seen["remaining"], seen["limit"]) == (LIMIT - 5, LIMIT)

        # Exhaust the limit through both instances, so each has denied the client.
        spent = blast(targets(gateways), total=2 * LIMIT, connections=2, path="/per-ip")
        assert statuses(spent) == {200: LIMIT - 5, 429: LIMIT + 5}

        reset_key(gateways[0], "per-ip")
        assert usage(gateways[1], "per-ip")["remaining"] == LIMIT
        # Workers trust a cached denial for at most RECHECK_S, then ask storage again.
        time.sleep(RECHECK_S + 0.2)
        after = blast(targets(gateways), total=2, connections=2, path="/per-ip")
        assert_all_keys_expire(redis_server)
        assert statuses(after) == {200: 2}, "a reset client must be allowed on every instance"
