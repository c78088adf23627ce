"""Real Redis servers for integration tests: one shared server, fresh ones, Cluster, Sentinel.

Shared servers are safe because every test writes under keys of its own; tests that kill,
freeze or restart a server take ``fresh_redis``. The Cluster is started once per session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.support.redis_servers import (
    RedisCluster,
    RedisSentinel,
    RedisServer,
    redis_available,
    start_cluster,
    start_redis,
    start_sentinel,
)


def _need_redis() -> None:
    if not redis_available():
        pytest.skip("redis-server / redis-cli not installed")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole session (tests use keys of their own)."""
    _need_redis()
    with start_redis() as server:
        yield server


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone: free to be frozen, killed and restarted."""
    _need_redis()
    with start_redis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 6-node Redis Cluster (3 masters, 3 replicas), started once per session."""
    _need_redis()
    with start_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinel]:
    """A master, a replica and three sentinels (``mymaster``), started once per session.

    The failover test swaps the roles; tests must ask ``master_port()`` rather than assume.
    """
    _need_redis()
    with start_sentinel() as setup:
        yield setup
