"""Header rendering, the storage factory table, and the rate-limit admin API."""

from __future__ import annotations

import pytest

from apigate.admin.ratelimit_api import admin_routes
from apigate.admin.types import AdminError, AdminRequest, Handler
from apigate.config.model import StorageConfig
from apigate.identity import Caller
from apigate.ratelimit import STORAGE_CLASSES, build_storage, storage_class
from apigate.ratelimit import headers as hdr
from apigate.ratelimit.limiter import RateLimiter
from apigate.ratelimit.storage.base import LimitState
from apigate.ratelimit.storage.memory import MemoryStorage

from .fakes import make_limiter


def test_sf_string_escapes_quotes_and_replaces_non_ascii() -> None:
    """Policy names become valid Structured Field Strings."""
    assert hdr.sf_string('a"b\\c') == '"a\\"b\\\\c"'
    assert hdr.sf_string("café") == '"caf_"'


def test_policy_window_is_whole_seconds_at_least_one() -> None:
    """w rounds up and is never 0 for sub-second windows."""
    quotas = [hdr.Quota("fast", 5, 250), hdr.Quota("slow", 7, 1500)]
    assert hdr.policy_value(quotas) == b'"fast";q=5;w=1, "slow";q=7;w=2'


def test_legacy_prefers_lowest_remaining_then_latest_reset() -> None:
    """Ties on remaining report the limit that resets last."""
    quotas = [hdr.Quota("a", 10, 1000), hdr.Quota("b", 20, 60_000)]
    states = [LimitState(0, 500), LimitState(0, 30_000)]
    assert hdr.legacy(quotas, states) == [
        (b"X-RateLimit-Limit", b"20"),
        (b"X-RateLimit-Remaining", b"0"),
        (b"X-RateLimit-Reset", b"30"),
    ]


def test_render_without_states_sends_only_the_policy() -> None:
    """When storage was not asked there is nothing to say about remaining quota."""
    out = hdr.render("both", [hdr.Quota("a", 1, 1000)], None)
    assert out == [(b"RateLimit-Policy", b'"a";q=1;w=1')]


def test_storage_table_maps_every_scheme_to_a_lazy_class() -> None:
    """Each URL scheme names a module:Class; memory builds a MemoryStorage."""
    assert set(STORAGE_CLASSES) == {"memory", "redis", "rediss", "redis+sentinel",
                                    "redis+cluster"}
    assert storage_class("memory") is MemoryStorage
    assert isinstance(build_storage(StorageConfig()), MemoryStorage)
    with pytest.raises(ValueError, match="no storage for scheme"):
        storage_class("memcached")


POLICIES = {"per-ip": {"limit": 2, "window": "1s", "algorithm": "fixed_window"}}


def routes(limiter: RateLimiter) -> dict[tuple[str, str], Handler]:
    return {(method, path): handler for method, path, handler in admin_routes(lambda: limiter)}


async def test_admin_lists_policies() -> None:
    """GET /admin/ratelimit/policies describes every configured policy."""
    limiter, _, _ = make_limiter(POLICIES)
    handler = routes(limiter)[("GET", "/admin/ratelimit/policies")]
    response = await handler(AdminRequest("GET", "/admin/ratelimit/policies"))
    assert response.status == 200
    assert b'"name": "per-ip"' in response.body
    assert b'"window_ms": 1000' in response.body


async def test_admin_usage_and_reset_by_rendered_identity() -> None:
    """usage shows what an identity has left; reset gives it back (and clears the cache)."""
    limiter, _, _ = make_limiter(POLICIES)
    for _ in range(3):
        await limiter.check(route="r", policy_names=("per-ip",), caller=Caller("203.0.113.7"),
                            headers={})
    table = routes(limiter)
    query = {"policy": "per-ip", "key": "ip=203.0.113.7"}
    usage = await table[("GET", "/admin/ratelimit/usage")](
        AdminRequest("GET", "/admin/ratelimit/usage", query)
    )
    assert usage.status == 200
    assert b'"remaining": 0' in usage.body
    assert b'"storage_key": "apigate:{ip=203.0.113.7}:per-ip"' in usage.body
    await table[("POST", "/admin/ratelimit/reset")](
        AdminRequest("POST", "/admin/ratelimit/reset", query)
    )
    verdict = await limiter.check(route="r", policy_names=("per-ip",),
                                  caller=Caller("203.0.113.7"), headers={})
    assert verdict.decision == "allowed"


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"policy": "per-ip"}, 400),
        ({"key": "ip=1.2.3.4"}, 400),
        ({"policy": "nope", "key": "ip=1.2.3.4"}, 404),
        ({"policy": "per-ip", "key": "ip={x}"}, 400),
    ],
)
@pytest.mark.parametrize("path", ["/admin/ratelimit/usage", "/admin/ratelimit/reset"])
async def test_admin_errors(query: dict[str, str], status: int, path: str) -> None:
    """Missing or bad parameters are 400, an unknown policy 404."""
    limiter, _, _ = make_limiter(POLICIES)
    method = "GET" if path.endswith("usage") else "POST"
    with pytest.raises(AdminError) as info:
        await routes(limiter)[(method, path)](AdminRequest(method, path, query))
    assert info.value.status == status


async def test_admin_storage_down_is_503() -> None:
    """A storage failure while peeking answers 503."""
    limiter, storage, _ = make_limiter(POLICIES)
    storage.fail = True
    handler = routes(limiter)[("GET", "/admin/ratelimit/usage")]
    with pytest.raises(AdminError) as info:
        await handler(AdminRequest("GET", "/", {"policy": "per-ip", "key": "ip=1.2.3.4"}))
    assert info.value.status == 503
