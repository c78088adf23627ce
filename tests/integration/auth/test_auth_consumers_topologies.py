"""Redis consumers on Redis Cluster and Sentinel: the same sharing, through redis-py's clients."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from apigate.auth import Authenticator, AuthError, ConsumerDirectory, hash_key
from apigate.config.model import Config


def make_config(url: str) -> Config:
    return Config.model_validate({
        "storage": {"url": url, "key_prefix": f"t{uuid.uuid4().hex[:12]}"},
        "upstreams": {"up": {"targets": ["http://127.0.0.1:9"]}},
        "routes": [{"name": "keyed", "upstream": "up", "auth": "api_key"}],
        "rate_limits": {"per-consumer": {"limit": 5, "window": "1m", "key": "consumer"}},
    })


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s, "not seen within the deadline"
        await asyncio.sleep(0.01)


async def share_a_consumer(url: str) -> None:
    """Create, disable and delete on instance A; instance B follows each step."""
    config = make_config(url)
    a, b = (Authenticator(config, ConsumerDirectory.from_config(config, poll_interval_s=0.05))
            for _ in range(2))
    await a.start()
    await b.start()
    try:
        await a.directory.create("beta", [hash_key("beta-key")], ["per-consumer"])
        await eventually(lambda: b.directory.get("beta") is not None)
        caller = await b.authenticate(config.routes[0], {"x-api-key": "beta-key"}, "", "::1")
        assert caller.consumer == "beta"
        await a.directory.set_disabled("beta", True)
        await eventually(lambda: getattr(b.directory.get("beta"), "disabled", False))
        with pytest.raises(AuthError):
            await b.authenticate(config.routes[0], {"x-api-key": "beta-key"}, "", "::1")
        await a.directory.delete("beta")
        await eventually(lambda: b.directory.get("beta") is None)
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.redis_cluster
async def test_consumers_shared_on_redis_cluster(consumer_cluster: Any) -> None:
    """On a Redis Cluster the multi-key consumer scripts run (one hash tag) and B follows A."""
    await share_a_consumer(consumer_cluster.url)


@pytest.mark.sentinel
async def test_consumers_shared_through_sentinel(consumer_sentinel: Any) -> None:
    """Through Sentinel the master is discovered and B follows A."""
    await share_a_consumer(consumer_sentinel.url)
