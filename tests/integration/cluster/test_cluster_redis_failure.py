"""Redis dies under load: each failure mode, bounded latency, and recovery without restarts.

Two gateway processes (one worker each) share a redis-server of the test's own; a client
loop keeps sending requests while the server is killed (or frozen), then it is restarted on
the same port and the gateways must limit exactly again on their own.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from tests.integration.cluster.fleet import (
    assert_all_keys_expire,
    gateway_config,
    running_fleet,
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
from tests.support.redis_servers import RedisServer, wait_until

from apigate.ratelimit.guard import HEARTBEAT_INTERVAL_S

pytestmark = pytest.mark.slow

LIMIT = 100
POLICIES = {
    "steady": {"limit": 1_000_000, "window": "1d", "algorithm": "fixed_window"},
    "exact": {"limit": LIMIT, "window": "1d", "algorithm": "fixed_window"},
    "after": {"limit": LIMIT, "window": "1d", "algorithm": "fixed_window"},
}
LATENCY_BOUND_S = 1.0
RECOVERY_BOUND_S = 20.0


def _config(
    redis: RedisServer, upstream_port: int, on_failure: str, timeout_ms: int = 50
) -> dict[str, object]:
    return gateway_config(
        storage_url=redis.url, upstream_port=upstream_port, policies=POLICIES,
        on_failure=on_failure, timeout_ms=timeout_ms,
    )


def _load_through_outage(gateways: list[Gateway], redis: RedisServer) -> list[Result]:
    """Requests on /steady before, during (about 1.5 s) and right after the kill."""
    with ClientLoop(targets(gateways), path="/steady", clients=4) as loop:
        loop.wait_for(100)
        before = len(loop.snapshot())
        redis.kill()
        loop.wait_for(200)
        results = loop.stop()
    return results[before:]


def _assert_exact_again(gateways: list[Gateway], redis: RedisServer) -> None:
    """Restart Redis on its port: the gateways go back to exact limiting by themselves.

    Decisions must be seen counting on Redis: a /probe decided locally (on_failure local,
    while the breaker still cools down) can look like storage's answer once the restarted
    Redis holds one heartbeat and the local share is the whole limit.
    """
    redis.restart()
    wait_decisions_on(redis.node, gateways, RECOVERY_BOUND_S)
    results = blast(targets(gateways), total=3 * LIMIT, connections=20, path="/after")
    assert_storage_exact(results, LIMIT)
    assert_all_keys_expire(redis)


def test_open_mode_allows_with_bounded_latency_and_recovers(
    fresh_redis: RedisServer, upstream_port: int, tmp_path: Path
) -> None:
    """on_failure open: a dead Redis costs no 5xx and under a second per request."""
    config = _config(fresh_redis, upstream_port, "open")
    with running_fleet(config, tmp_path, workers=[1, 1]) as gateways:
        exact = blast(targets(gateways), total=3 * LIMIT, connections=20, path="/exact")
        assert_storage_exact(exact, LIMIT)
        during = _load_through_outage(gateways, fresh_redis)
        assert statuses(during) == {200: len(during)}, Counter(r.error for r in during)
        assert max(r.elapsed_s for r in during) < LATENCY_BOUND_S
        _assert_exact_again(gateways, fresh_redis)


def test_open_mode_bounds_latency_when_redis_hangs(
    fresh_redis: RedisServer, upstream_port: int, tmp_path: Path
) -> None:
    """A frozen Redis (SIGSTOP, sockets open) is cut off by storage.timeout_ms, not waited on."""
    config = _config(fresh_redis, upstream_port, "open")
    with running_fleet(config, tmp_path, workers=[1, 1]) as gateways:
        with ClientLoop(targets(gateways), path="/steady", clients=4) as loop:
            loop.wait_for(100)
            before = len(loop.snapshot())
            fresh_redis.node.pause()
            try:
                loop.wait_for(200)
                during = loop.stop()[before:]
            finally:
                fresh_redis.node.resume()
        assert statuses(during) == {200: len(during)}
        assert max(r.elapsed_s for r in during) < LATENCY_BOUND_S
        wait_storage_decides(gateways)


def test_closed_mode_answers_503_with_retry_after_and_recovers(
    fresh_redis: RedisServer, upstream_port: int, tmp_path: Path
) -> None:
    """on_failure closed: a dead Redis means 503 + Retry-After, never a hang or another 5xx."""
    config = _config(fresh_redis, upstream_port, "closed")
    with running_fleet(config, tmp_path, workers=[1, 1]) as gateways:
        during = _load_through_outage(gateways, fresh_redis)
        counts = statuses(during)
        assert set(counts) <= {200, 503}, counts
        assert counts[503] > 0
        assert all(r.retry_after is not None for r in during if r.status == 503)
        assert max(r.elapsed_s for r in during) < LATENCY_BOUND_S
        _assert_exact_again(gateways, fresh_redis)


def test_local_mode_each_instance_enforces_its_share(
    fresh_redis: RedisServer, upstream_port: int, tmp_path: Path
) -> None:
    """on_failure local: with 2 live instances, each allows limit // 2 while Redis is down."""
    # A dead Redis refuses connections at once, so the share does not depend on the timeout;
    # a long one keeps a CPU-starved run from deciding locally once Redis is back.
    config = _config(fresh_redis, upstream_port, "local", timeout_ms=1000)
    prefix = config["storage"]["key_prefix"]  # type: ignore[index]
    with running_fleet(config, tmp_path, workers=[1, 1]) as gateways:
        client = fresh_redis.node.client()
        try:
            wait_until(lambda: client.zcard(f"{prefix}:instances") == 2, 10, "2 heartbeats")
        finally:
            client.close()
        wait_storage_decides(gateways)
        time.sleep(HEARTBEAT_INTERVAL_S * 1.5)  # each instance has now read the count of 2
        fresh_redis.kill()
        results = blast(targets(gateways), total=4 * LIMIT, connections=20, path="/exact")
        per_instance = Counter(r.target.port for r in results if r.status == 200)
        assert statuses(results) == {200: LIMIT, 429: 3 * LIMIT}
        assert per_instance == {g.port: LIMIT // 2 for g in gateways}
        _assert_exact_again(gateways, fresh_redis)
