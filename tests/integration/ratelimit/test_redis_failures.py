"""A frozen, killed or restarted redis-server: every call ends within its timeout."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
from tests.support.redis_servers import RedisServer, start_redis

from apigate.config.model import StorageConfig
from apigate.ratelimit.guard import StorageGuard
from apigate.ratelimit.storage.base import Algorithm, LimitSpec, Outcome, StorageError
from apigate.ratelimit.storage.redis import RedisStorage

TIMEOUT_MS = 100
SLACK_S = 0.15  # event-loop scheduling on a busy 2-core machine


def spec() -> LimitSpec:
    key = f"apigate:{{f={uuid.uuid4().hex[:8]}}}:p"
    return LimitSpec(key, Algorithm.FIXED_WINDOW, 1000, 60_000)


@pytest.fixture
async def storage(fresh_redis: RedisServer) -> AsyncIterator[RedisStorage]:
    store = RedisStorage.from_config(StorageConfig(url=fresh_redis.url, timeout_ms=TIMEOUT_MS))
    yield store
    await store.aclose()


async def timed_decide(storage: RedisStorage) -> tuple[float, Outcome | StorageError]:
    start = time.monotonic()
    try:
        result: Outcome | StorageError = await storage.decide([spec()])
    except StorageError as exc:
        result = exc
    return time.monotonic() - start, result


async def until_allowed(storage: RedisStorage, within_s: float) -> float:
    """Seconds until a decision succeeds again (fails the test after ``within_s``)."""
    start = time.monotonic()
    while time.monotonic() - start < within_s:
        _, result = await timed_decide(storage)
        if isinstance(result, Outcome):
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    pytest.fail(f"no decision succeeded within {within_s}s")


@pytest.mark.slow
async def test_frozen_redis_bounds_every_call(
    storage: RedisStorage, fresh_redis: RedisServer
) -> None:
    """SIGSTOPped Redis: calls (single and 50 at once) fail within the timeout, then recover."""
    assert isinstance((await timed_decide(storage))[1], Outcome)
    fresh_redis.node.pause()
    try:
        started = time.monotonic()
        while time.monotonic() - started < 2.5:  # past the dead-connection drop and reconnects
            results = await asyncio.gather(*(timed_decide(storage) for _ in range(50)))
            for took, result in results:
                assert isinstance(result, StorageError)
                assert took < TIMEOUT_MS / 1000 + SLACK_S
    finally:
        fresh_redis.node.resume()
    assert await until_allowed(storage, 5.0) < 5.0


@pytest.mark.slow
async def test_short_deadline_behind_a_long_one_still_bounds_the_call(
    storage: RedisStorage, fresh_redis: RedisServer
) -> None:
    """Frozen Redis: a decision sent after a heartbeat (1 s deadline) fails at its own 100 ms."""
    assert isinstance((await timed_decide(storage))[1], Outcome)
    fresh_redis.node.pause()
    try:
        heartbeat = asyncio.ensure_future(storage.heartbeat("i", 5000))
        await asyncio.sleep(0.01)  # the heartbeat is written first, with the longer deadline
        took, result = await timed_decide(storage)
        assert isinstance(result, StorageError)
        assert took < TIMEOUT_MS / 1000 + SLACK_S
        assert not heartbeat.done()
        with pytest.raises(StorageError):
            await heartbeat
    finally:
        fresh_redis.node.resume()
    assert await until_allowed(storage, 5.0) < 5.0


@pytest.mark.slow
async def test_background_calls_wait_longer_than_a_decision(
    storage: RedisStorage, fresh_redis: RedisServer
) -> None:
    """Redis frozen for 0.4 s: through the guard a decision fails at its 100 ms, while the
    heartbeat and ping (SLOW_CALL_S) wait and succeed once Redis answers again."""
    guard = StorageGuard(storage, instance_id="i1", clock=time.monotonic,
                         timeout_s=TIMEOUT_MS / 1000)
    assert await guard.ping()
    fresh_redis.node.pause()
    resumed = asyncio.get_running_loop().call_later(0.4, fresh_redis.node.resume)
    try:
        heartbeat = asyncio.ensure_future(guard.heartbeat_once())
        ping = asyncio.ensure_future(guard.ping())
        started = time.monotonic()
        assert await guard.decide([spec()]) is None  # on_failure applies
        assert time.monotonic() - started < TIMEOUT_MS / 1000 + SLACK_S
        assert await ping
        assert await heartbeat == 1
        assert time.monotonic() - started >= 0.3  # they waited for Redis to come back
        assert guard.live_instances == 1
    finally:
        resumed.cancel()
        fresh_redis.node.resume()


async def test_killed_redis_fails_fast_and_restart_recovers(
    storage: RedisStorage, fresh_redis: RedisServer
) -> None:
    """A killed Redis gives StorageError at once; after a restart decisions succeed again."""
    assert isinstance((await timed_decide(storage))[1], Outcome)
    fresh_redis.kill()
    for _ in range(5):
        took, result = await timed_decide(storage)
        assert isinstance(result, StorageError)
        assert took < TIMEOUT_MS / 1000
    fresh_redis.restart()
    assert await until_allowed(storage, 5.0) < 3.0


async def test_password_and_db_from_the_url() -> None:
    """``redis://:pw@host:port/3`` logs in with the password and writes into db 3."""
    with start_redis("--requirepass", "s3cret") as server:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        store = RedisStorage.from_config(StorageConfig(url=url, timeout_ms=2000))
        try:
            assert (await store.decide([spec()])).allowed
        finally:
            await store.aclose()
        client = redis.Redis(host="127.0.0.1", port=server.port, password="s3cret")
        try:
            keyspace = client.info("keyspace")
        finally:
            client.close()
        assert list(keyspace) == ["db3"]


async def test_wrong_password_is_a_storage_error() -> None:
    """A refused login is a StorageError, not a hang and not an allow."""
    with start_redis("--requirepass", "s3cret") as server:
        url = f"redis://:wrong@127.0.0.1:{server.port}/0"
        store = RedisStorage.from_config(StorageConfig(url=url, timeout_ms=500))
        try:
            with pytest.raises(StorageError):
                await store.decide([spec()])
        finally:
            await store.aclose()
