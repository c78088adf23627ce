"""decide.lua's token bucket passes exactly limit + burst on a full bucket, whatever rounding."""

from __future__ import annotations

import uuid

import pytest
from tests.support.redis_servers import RedisServer

from apigate.config.model import StorageConfig
from apigate.ratelimit.storage.base import Algorithm, LimitSpec
from apigate.ratelimit.storage.redis import RedisStorage


@pytest.mark.parametrize(
    ("limit", "window_ms", "burst"),
    [(199, 60_000, 0), (7, 60_000, 0), (97, 3_600_000, 3), (3, 60_000, 0), (151, 3_600_000, 0)],
)
async def test_full_bucket_passes_every_token(
    redis_server: RedisServer, limit: int, window_ms: int, burst: int
) -> None:
    """Sequential requests on a fresh bucket: exactly limit + burst are allowed (the float
    comparison once refused the last token for limits like 199 per minute)."""
    storage = RedisStorage.from_config(StorageConfig(url=redis_server.url, timeout_ms=2000))
    key = f"apigate:{{t={uuid.uuid4().hex[:12]}}}:tb"
    spec = LimitSpec(key, Algorithm.TOKEN_BUCKET, limit, window_ms, burst, 1)
    try:
        allowed = 0
        for _ in range(limit + burst + 5):
            outcome = await storage.decide([spec])
            allowed += outcome.allowed
    finally:
        await storage.aclose()
    # Windows of a minute or more: the loop's few milliseconds refill less than one token.
    assert allowed == limit + burst
