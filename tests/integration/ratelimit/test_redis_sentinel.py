"""SentinelStorage on a real master + replica + 3 sentinels: discovery and failover."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from tests.support.redis_servers import RedisSentinel

from apigate.config.model import StorageConfig
from apigate.ratelimit.storage.base import Algorithm, LimitSpec, StorageError
from apigate.ratelimit.storage.sentinel import SentinelStorage, parse_sentinel_url

pytestmark = pytest.mark.sentinel

LONG_MS = 10_000_000_000


def spec(algorithm: Algorithm, limit: int) -> LimitSpec:
    return LimitSpec(f"apigate:{{s={uuid.uuid4().hex[:8]}}}:p", algorithm, limit, LONG_MS)


@pytest.fixture
async def storage(redis_sentinel: RedisSentinel) -> AsyncIterator[SentinelStorage]:
    store = SentinelStorage.from_config(StorageConfig(url=redis_sentinel.url, timeout_ms=500))
    yield store
    await store.aclose()


def test_sentinel_url_parts() -> None:
    """Sentinel addresses, master name, db and the master's login come from the URL."""
    sentinels, name, master = parse_sentinel_url("redis+sentinel://u:pw@h1:26379,h2:26380/m/2")
    assert [(s.host, s.port) for s in sentinels] == [("h1", 26379), ("h2", 26380)]
    assert (name, master.db, master.username, master.password) == ("m", 2, "u", "pw")


async def test_decides_on_the_master_sentinel_names(
    storage: SentinelStorage, redis_sentinel: RedisSentinel
) -> None:
    """Decisions go to the master the sentinels report, and count exactly."""
    limited = spec(Algorithm.SLIDING_LOG, 5)
    outcomes = await asyncio.gather(*(storage.decide([limited]) for _ in range(20)))
    assert sum(o.allowed for o in outcomes) == 5
    assert storage.client.endpoint is not None
    assert storage.client.endpoint.port == redis_sentinel.master_port()


@pytest.mark.slow
async def test_decisions_continue_after_sentinel_failover(
    storage: SentinelStorage, redis_sentinel: RedisSentinel
) -> None:
    """After SENTINEL FAILOVER the same storage decides on the new master, counts intact."""
    limited = spec(Algorithm.FIXED_WINDOW, 50)
    for _ in range(10):
        assert (await storage.decide([limited])).allowed
    await asyncio.to_thread(
        redis_sentinel.node(redis_sentinel.master_port()).cmd, "WAIT", 1, 2000
    )  # the replica has the 10 charges
    new_master = await asyncio.to_thread(redis_sentinel.failover)
    deadline = time.monotonic() + 10
    while True:  # decisions may fail, or still land on the not yet demoted old master
        with contextlib.suppress(StorageError):
            outcome = await storage.decide([limited])
            endpoint = storage.client.endpoint
            if endpoint is not None and endpoint.port == new_master:
                break
        assert time.monotonic() < deadline, "no decision on the new master within 10 s"
        await asyncio.sleep(0.05)
    assert outcome.allowed
    assert outcome.states[0].remaining == 39  # the 10 replicated charges + this one
