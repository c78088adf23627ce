"""Exact limits across instances: three gateways (4 worker processes) racing on one storage.

400 requests over 40 simultaneous connections spread over the three instances must yield
exactly the limit of 200s and 429 for the rest, for every algorithm, on a single Redis, on a
6-node Redis Cluster and behind Sentinel. Windows are one day long, so nothing expires or
refills during a run (sliding_window is exact while its previous window is empty).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.integration.cluster.fleet import (
    assert_all_keys_expire,
    gateway_config,
    reset_key,
    running_fleet,
    stored_keys,
    targets,
    usage,
)
from tests.integration.cluster.traffic import blast, statuses
from tests.support.gateway import Gateway

pytestmark = pytest.mark.slow

TOTAL, CONNECTIONS = 400, 40
POLICIES = {
    "fixed": {"limit": 100, "window": "1d", "algorithm": "fixed_window"},
    "sliding": {"limit": 100, "window": "1d", "algorithm": "sliding_window"},
    "log": {"limit": 100, "window": "1d", "algorithm": "sliding_log"},
    "bucket": {"limit": 80, "burst": 20, "window": "1d", "algorithm": "token_bucket"},
}
ALLOWED = {"fixed": 100, "sliding": 100, "log": 100, "bucket": 100}
# Two limits on one route with different identities, so different hash tags (on a Cluster,
# different slots): the per-route one binds, and denied requests must charge the per-IP one
# nothing (on a Cluster by refunding the group already charged).
PAIR = {
    "pair-ip": {"limit": 100, "window": "1d", "algorithm": "fixed_window"},
    "pair-route": {"limit": 50, "window": "1d", "algorithm": "fixed_window", "key": "route"},
}
ADMIN = {"admin": {"limit": 10, "window": "1d", "algorithm": "sliding_log"}}

STORAGES = [
    pytest.param("redis_server", id="redis"),
    pytest.param("redis_cluster", id="cluster", marks=pytest.mark.redis_cluster),
    pytest.param("redis_sentinel", id="sentinel", marks=pytest.mark.sentinel),
]


@pytest.fixture(scope="module", params=STORAGES)
def storage(request: pytest.FixtureRequest) -> Any:
    """The shared storage of the session, one kind per module-scoped run."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def fleet(
    storage: Any, upstream_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Gateway]]:
    """Three instances on ``storage``: one worker, one worker, two workers."""
    # closed + a generous timeout: on a busy machine a slow answer must show up as a 503,
    # never as an extra "allowed" (open) that would blur what exactness measures.
    config = gateway_config(
        storage_url=storage.url, upstream_port=upstream_port,
        policies={**POLICIES, **PAIR, **ADMIN}, on_failure="closed", timeout_ms=2000,
        extra_routes={"pair": list(PAIR)},
    )
    with running_fleet(config, tmp_path_factory.mktemp("fleet"), workers=[1, 1, 2]) as gws:
        yield gws


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_exactly_the_limit_is_allowed_across_instances(
    fleet: list[Gateway], policy: str
) -> None:
    """Concurrent requests on three instances get exactly `limit (+ burst)` 200s, rest 429."""
    results = blast(targets(fleet), total=TOTAL, connections=CONNECTIONS, path=f"/{policy}")
    allowed = ALLOWED[policy]
    assert statuses(results) == {200: allowed, 429: TOTAL - allowed}
    assert all(r.retry_after is not None for r in results if r.status == 429)


def test_a_request_denied_by_one_limit_charges_the_other_nothing(fleet: list[Gateway]) -> None:
    """Two limits in two hash tags: exactly the tighter one's count passes, and only that
    many are charged to the looser one."""
    results = blast(targets(fleet), total=TOTAL, connections=CONNECTIONS, path="/pair")
    assert statuses(results) == {200: 50, 429: TOTAL - 50}
    assert usage(fleet[0], "pair-route", "route=pair")["remaining"] == 0
    assert usage(fleet[0], "pair-ip")["remaining"] == 100 - 50


def test_admin_usage_and_reset_on_this_storage(fleet: list[Gateway]) -> None:
    """The admin API reads and resets a limit kept on this kind of storage."""
    statuses_before = statuses(blast(targets(fleet), total=15, connections=3, path="/admin"))
    assert statuses_before == {200: 10, 429: 5}
    assert usage(fleet[1], "admin")["remaining"] == 0
    reset_key(fleet[2], "admin")
    assert usage(fleet[0], "admin")["remaining"] == 10


def test_every_key_has_a_ttl(fleet: list[Gateway], storage: Any) -> None:
    """After the load, no counter key on any node lives forever (consumer records excepted)."""
    for policy in POLICIES:
        blast(targets(fleet), total=20, connections=4, path=f"/{policy}")
    prefix = fleet[0].config["storage"]["key_prefix"]
    assert len(stored_keys(storage.nodes, prefix + ":")) >= len(POLICIES)
    assert_all_keys_expire(storage)
