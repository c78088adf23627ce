"""Gateways behind a real HAProxy: exact limits through it, and a rolling restart that loses
no request.

HAProxy health-checks ``/readyz`` on each gateway's admin port every 200 ms and retries on
connection failures (see tests/support/haproxy.py). A gateway told to stop (SIGTERM) fails
readiness at once, keeps serving for ``drain_delay_s`` while HAProxy takes it out, then
drains and exits; its successor starts on the same ports.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.cluster.fleet import gateway_config, running_fleet
from tests.integration.cluster.traffic import (
    ClientLoop,
    Target,
    assert_storage_exact,
    blast,
    statuses,
)
from tests.support.gateway import Gateway
from tests.support.haproxy import Backend, HAProxy, haproxy_available, running_haproxy
from tests.support.redis_servers import RedisServer

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.slow,
    pytest.mark.skipif(not haproxy_available(), reason="haproxy not installed"),
]

LIMIT = 100
POLICIES = {
    "steady": {"limit": 1_000_000, "window": "1d", "algorithm": "fixed_window"},
    "exact": {"limit": LIMIT, "window": "1d", "algorithm": "fixed_window"},
}


def _backends(gateways: list[Gateway]) -> list[Backend]:
    return [Backend(f"g{i}", g.port, g.admin_port) for i, g in enumerate(gateways)]


@pytest.fixture
def fronted(
    redis_server: RedisServer, upstream_port: int, tmp_path: Path
) -> Iterator[tuple[HAProxy, list[Gateway]]]:
    """Three gateways (drain_delay_s 1) on one Redis, HAProxy in front, every server UP."""
    config = gateway_config(
        storage_url=redis_server.url, upstream_port=upstream_port, policies=POLICIES,
        on_failure="closed", timeout_ms=1000,
        server={"drain_delay_s": 1, "trusted_proxies": ["127.0.0.0/8"]},
    )
    with (
        running_fleet(config, tmp_path, workers=[1, 1, 1]) as gateways,
        running_haproxy(_backends(gateways), tmp_path) as proxy,
    ):
        yield proxy, gateways


def successor(old: Gateway, workdir: Path) -> Gateway:
    """A fresh gateway process for ``old``'s config, on ``old``'s data and admin ports."""
    new = Gateway(old.config, workdir)
    new.port, new.admin_port = old.port, old.admin_port
    return new


def test_limits_are_exact_through_haproxy(fronted: tuple[HAProxy, list[Gateway]]) -> None:
    """400 concurrent requests through HAProxy to three instances: exactly the limit pass."""
    proxy, _ = fronted
    results = blast([Target("127.0.0.1", proxy.port)], total=4 * LIMIT, connections=40,
                    path="/exact")
    assert statuses(results) == {200: LIMIT, 429: 3 * LIMIT}
    assert_storage_exact(results, LIMIT)


def test_rolling_restart_loses_no_request(
    fronted: tuple[HAProxy, list[Gateway]], tmp_path: Path
) -> None:
    """SIGTERM each instance in turn and start a fresh one: no 5xx, no connection error."""
    proxy, gateways = fronted
    front = [Target("127.0.0.1", proxy.port)]
    replaced: list[Gateway] = []
    try:
        with ClientLoop(front, path="/steady", clients=4) as loop:
            loop.wait_for(100)
            for index, old in enumerate(gateways):
                assert old.stop() == 0
                new = successor(old, tmp_path)
                replaced.append(new)
                new.start()
                proxy.wait_status(f"g{index}", "UP")
                loop.wait_for(100)
            results = loop.stop()
    finally:
        for gateway in replaced:
            gateway.stop()
    assert statuses(results) == {200: len(results)}, [r.error for r in results if r.error]
    assert len(results) >= 400
