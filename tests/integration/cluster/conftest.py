"""Fixtures of the distributed rate-limiting tests: an upstream and storages to share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.support.gateway import demo_upstream
from tests.support.redis_servers import (
    RedisCluster,
    RedisSentinel,
    RedisServer,
    start_cluster,
    start_redis,
    start_sentinel,
)


@pytest.fixture(scope="session")
def upstream_port() -> Iterator[int]:
    """One demo JSON upstream for every gateway of the session."""
    with demo_upstream() as port:
        yield port


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone, free to be killed and restarted."""
    with start_redis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_storage() -> Iterator[RedisServer]:
    """One redis-server shared by the session's exactness tests."""
    with start_redis() as server:
        yield server


@pytest.fixture(scope="session")
def cluster_storage() -> Iterator[RedisCluster]:
    """One 6-node Redis Cluster shared by the session."""
    with start_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def sentinel_storage() -> Iterator[RedisSentinel]:
    """Master, replica and three sentinels shared by the session."""
    with start_sentinel() as setup:
        yield setup
