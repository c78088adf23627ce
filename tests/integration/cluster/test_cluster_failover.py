"""Failover under load: a Redis Cluster master killed, a Sentinel failover; no gateway restart.

Two gateways (one worker each, ``on_failure: closed``) keep serving a client loop while the
storage fails over; during the switch only the failure mode's 503 may appear (never another
5xx or a dropped connection), and afterwards the same processes limit exactly again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.integration.cluster.fleet import (
    assert_all_keys_expire,
    gateway_config,
    running_fleet,
    stored_keys,
    targets,
    wait_decisions_on,
    wait_storage_decides,
)
from tests.integration.cluster.traffic import (
    ClientLoop,
    Result,
    assert_storage_exact,
    blast,
    statuses,
)
from tests.support.gateway import Gateway
from tests.support.redis_servers import RedisCluster, RedisNode, RedisSentinel, wait_until

pytestmark = pytest.mark.slow

LIMIT = 100
POLICIES = {
    "steady": {"limit": 1_000_000, "window": "1d", "algorithm": "fixed_window"},
    "after": {"limit": LIMIT, "window": "1d", "algorithm": "fixed_window"},
}
# How soon after Sentinel names a new master every gateway must decide there (it asks the
# sentinels every second: apigate.ratelimit.storage.sentinel.WATCH_S).
FOLLOW_BOUND_S = 5.0
# Every key of a request from 127.0.0.1 keyed by client IP carries this hash tag.
TAG = "{ip=127.0.0.1}"


@contextmanager
def _fleet(url: str, upstream_port: int, workdir: Path) -> Iterator[list[Gateway]]:
    config = gateway_config(storage_url=url, upstream_port=upstream_port, policies=POLICIES,
                            on_failure="closed", timeout_ms=200)
    with running_fleet(config, workdir, workers=[1, 1]) as gateways:
        yield gateways


def _assert_only_failure_mode(results: list[Result]) -> None:
    counts = statuses(results)
    assert set(counts) <= {200, 503}, counts
    assert all(r.retry_after is not None for r in results if r.status == 503)


@pytest.mark.redis_cluster
def test_cluster_master_killed_limiting_continues_after_promotion(
    redis_cluster: RedisCluster, upstream_port: int, tmp_path: Path
) -> None:
    """Killing the master of the key's slot: the replica takes over and limits stay exact."""
    with _fleet(redis_cluster.url, upstream_port, tmp_path) as gateways:
        wait_storage_decides(gateways)
        victim = redis_cluster.master_for(TAG)
        try:
            with ClientLoop(targets(gateways), path="/steady", clients=2) as loop:
                loop.wait_for(50)
                victim.kill()
                wait_until(lambda: redis_cluster.master_for(TAG).port != victim.port, 30,
                           "a replica promoted for the killed master's slots")
                wait_storage_decides(gateways)
                loop.wait_for(50)
                results = loop.stop()
            _assert_only_failure_mode(results)
            assert results[-1].status == 200
            exact = blast(targets(gateways), total=3 * LIMIT, connections=20, path="/after")
            assert_storage_exact(exact, LIMIT)
            new_master = redis_cluster.master_for(TAG)
            assert any("after" in k for k in _keys_on(new_master, gateways))
            assert_all_keys_expire(redis_cluster)
        finally:
            victim.start()  # it rejoins as a replica of the promoted node
            redis_cluster.wait_ok()


@pytest.mark.sentinel
def test_sentinel_failover_limiting_continues_on_the_new_master(
    redis_sentinel: RedisSentinel, upstream_port: int, tmp_path: Path
) -> None:
    """SENTINEL FAILOVER under load: decisions move to the new master without a restart."""
    with (
        _demoting_the_old_master(redis_sentinel),
        _fleet(redis_sentinel.url, upstream_port, tmp_path) as gateways,
    ):
        wait_storage_decides(gateways)
        with ClientLoop(targets(gateways), path="/steady", clients=2) as loop:
            loop.wait_for(50)
            new_port = redis_sentinel.failover()
            new_master = redis_sentinel.node(new_port)
            wait_decisions_on(new_master, gateways, FOLLOW_BOUND_S)
            loop.wait_for(50)
            results = loop.stop()
        _assert_only_failure_mode(results)
        assert results[-1].status == 200
        exact = blast(targets(gateways), total=3 * LIMIT, connections=20, path="/after")
        assert_storage_exact(exact, LIMIT)
        assert new_master.cmd("ROLE")[0] == b"master"
        assert any("after" in k for k in _keys_on(new_master, gateways))
        assert_all_keys_expire(redis_sentinel)


@contextmanager
def _demoting_the_old_master(setup: RedisSentinel) -> Iterator[None]:
    """On exit, make the old master a replica of the new one and wait until all is in sync.

    Sentinel would do it at its next INFO poll of the old master (~10 s); doing it at once
    leaves the session's setup whole for the next test.
    """
    old_port = setup.master_port()
    try:
        yield
    finally:
        new_port = setup.master_port()
        if new_port != old_port:
            setup.node(old_port).cmd("REPLICAOF", "127.0.0.1", str(new_port))
        setup.wait_ready()


def _keys_on(node: RedisNode, gateways: list[Gateway]) -> list[str]:
    """Keys of this fleet on one node."""
    return stored_keys([node], gateways[0].config["storage"]["key_prefix"] + ":")
