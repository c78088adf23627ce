"""ClusterStorage on a real 6-node Redis Cluster: spread, redirections, cross-slot, failover."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from tests.support.redis_servers import RedisCluster, wait_until

from apigate.config.model import StorageConfig
from apigate.ratelimit.storage.base import Algorithm, LimitSpec, Outcome, StorageError
from apigate.ratelimit.storage.cluster import ClusterStorage, key_slot
from apigate.ratelimit.storage.resp import ReplyError

pytestmark = pytest.mark.redis_cluster

LONG_MS = 10_000_000_000


def spec(identity: str, limit: int = 100, name: str = "p") -> LimitSpec:
    return LimitSpec(f"apigate:{{{identity}}}:{name}", Algorithm.FIXED_WINDOW, limit, LONG_MS)


def fresh_id() -> str:
    return f"c={uuid.uuid4().hex[:12]}"


@pytest.fixture
async def storage(redis_cluster: RedisCluster) -> AsyncIterator[ClusterStorage]:
    store = ClusterStorage.from_config(StorageConfig(url=redis_cluster.url, timeout_ms=2000))
    yield store
    await store.aclose()


def test_key_slot_matches_redis(redis_cluster: RedisCluster) -> None:
    """CRC16 with hash tags gives the slot Redis computes (CLUSTER KEYSLOT)."""
    node = redis_cluster.nodes[0]
    for key in ["apigate:{ip=1.2.3.4}:per-ip", "plain", "a{}b", "{x}{y}", "k{tag", "ü{é}"]:
        assert key_slot(key) == node.cmd("CLUSTER", "KEYSLOT", key)


async def test_keys_spread_over_every_master(
    storage: ClusterStorage, redis_cluster: RedisCluster
) -> None:
    """Decisions for 300 identities land on all three masters, and every key has a TTL."""
    run = uuid.uuid4().hex[:6]
    outcomes = await asyncio.gather(*(storage.decide([spec(f"s{run}={i}")]) for i in range(300)))
    assert all(o.allowed for o in outcomes)
    counts = [m.cmd("DBSIZE") for m in redis_cluster.masters()]
    assert len(counts) == 3
    assert all(c > 0 for c in counts)
    assert redis_cluster.keys_without_ttl() == []


async def test_concurrent_decisions_are_exact(storage: ClusterStorage) -> None:
    """200 concurrent decisions on one identity allow exactly the limit of 40."""
    limited = spec(fresh_id(), limit=40)
    outcomes = await asyncio.gather(*(storage.decide([limited]) for _ in range(200)))
    assert sum(o.allowed for o in outcomes) == 40


async def test_cross_slot_denial_is_refunded(storage: ClusterStorage) -> None:
    """Specs on two slots: when the later group denies, the earlier group's charge is undone."""
    wide, narrow = spec(fresh_id(), limit=10, name="wide"), spec(fresh_id(), limit=2, name="n")
    assert key_slot(wide.key) != key_slot(narrow.key)
    outcomes = [await storage.decide([wide, narrow]) for _ in range(5)]
    assert [o.allowed for o in outcomes] == [True, True, False, False, False]
    assert (await storage.peek(wide)).remaining == 8
    assert (await storage.peek(narrow)).remaining == 0
    assert [s.remaining for s in outcomes[-1].states] == [8, 0]


async def test_cross_slot_script_is_an_error(
    storage: ClusterStorage, redis_cluster: RedisCluster
) -> None:
    """Keys of two slots in one script get CROSSSLOT, surfaced as a StorageError."""
    a, b = spec(fresh_id()), spec(fresh_id())
    master = await storage.slots.master(key_slot(a.key), time.monotonic() + 5)
    client = storage.slots.client(master)
    with pytest.raises(ReplyError, match="CROSSSLOT"):
        await client.execute((b"EVAL", b"return 1", 2, a.key, b.key), timeout_s=2)
    assert issubclass(ReplyError, StorageError)


async def test_stale_slot_map_follows_moved(storage: ClusterStorage) -> None:
    """With a wrong owner in the map the node answers MOVED; the decision still succeeds."""
    limited = spec(fresh_id())
    slot = key_slot(limited.key)
    right = await storage.slots.master(slot, time.monotonic() + 5)
    masters = await storage.slots.masters(time.monotonic() + 5)
    wrong = next(m for m in masters if m.port != right.port)
    storage.slots.moved(slot, f"{wrong.host}:{wrong.port}")  # poison the map
    assert (await storage.decide([limited])).allowed
    assert (await storage.slots.master(slot, time.monotonic() + 5)).port == right.port


async def test_ask_during_slot_migration(
    storage: ClusterStorage, redis_cluster: RedisCluster
) -> None:
    """A slot being migrated answers ASK for new keys; ASKING on the target decides them."""
    # A slot no earlier test wrote to: the slot is handed over at the end, which its source
    # refuses while it still holds keys of the slot.
    for _ in range(100):
        identity = fresh_id()
        limited = spec(identity)
        slot = key_slot(limited.key)
        source = redis_cluster.master_for(limited.key)
        if source.cmd("CLUSTER", "COUNTKEYSINSLOT", slot) == 0:
            break
    target = next(m for m in redis_cluster.masters() if m.port != source.port)
    source_id, target_id = source.cmd("CLUSTER", "MYID"), target.cmd("CLUSTER", "MYID")
    await storage.ping()  # map read before the migration starts
    target.cmd("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.cmd("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    try:
        assert (await storage.decide([limited])).allowed
        assert target.cmd("KEYS", f"*{identity}*") != []  # KEYS names no key: no redirect
        assert source.cmd("KEYS", f"*{identity}*") == []
    finally:
        for master in redis_cluster.masters():
            master.cmd("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    assert (await storage.decide([limited])).states[0].remaining == 98  # MOVED to the target


@pytest.mark.slow
async def test_master_killed_under_load_recovers(
    storage: ClusterStorage, redis_cluster: RedisCluster
) -> None:
    """A master killed mid-load: after its replica is promoted the same storage decides again."""
    identity = fresh_id()
    victim = redis_cluster.master_for(spec(identity).key)
    ids = [identity] + [fresh_id() for _ in range(30)]
    stop = asyncio.Event()
    failures = 0

    async def load() -> None:
        nonlocal failures
        while not stop.is_set():
            results = await asyncio.gather(
                *(storage.decide([spec(i)]) for i in ids), return_exceptions=True
            )
            failures += sum(isinstance(r, StorageError) for r in results)
            await asyncio.sleep(0.01)

    loader = asyncio.create_task(load())
    try:
        await asyncio.sleep(0.3)
        victim.kill()
        deadline = time.monotonic() + 20
        recovered = None
        while time.monotonic() < deadline:
            try:
                recovered = await storage.decide([spec(identity)])
                break
            except StorageError:
                await asyncio.sleep(0.1)
        assert isinstance(recovered, Outcome)
        assert recovered.allowed
    finally:
        stop.set()
        await loader
        victim.start()  # rejoins as a replica of its promoted replica
        await asyncio.to_thread(redis_cluster.wait_ok, 30)
        await asyncio.to_thread(
            wait_until, lambda: victim.cmd("ROLE")[0] == b"slave", 20, "old master to rejoin"
        )
    assert failures > 0  # the kill was felt...
    assert (await storage.decide([spec(identity)])).allowed  # ...and is over
