"""Fixtures of the distributed rate-limiting tests: an upstream and storages to share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.support.gateway import demo_upstream
from tests.support.redis_servers import RedisServer, start_redis


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
