"""decide.lua on a real redis-server through RedisStorage: exactness, atomicity, TTLs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from tests.support.redis_servers import RedisServer

from apigate.config.model import StorageConfig
from apigate.ratelimit.storage.base import Algorithm, LimitSpec, Outcome, StorageError
from apigate.ratelimit.storage.redis import (
    DECIDE,
    MODE_STAMPED,
    RedisStorage,
    decide_command,
    parse_outcome,
    parse_stamp,
)

LONG_MS = 10_000_000_000  # ~115 days: no window boundary falls inside a test


def tag() -> str:
    return f"apigate:{{t={uuid.uuid4().hex[:12]}}}"


@pytest.fixture
async def storage(redis_server: RedisServer) -> AsyncIterator[RedisStorage]:
    store = RedisStorage.from_config(StorageConfig(url=redis_server.url, timeout_ms=2000))
    yield store
    await store.aclose()


@pytest.mark.parametrize(
    ("algorithm", "limit", "burst", "allowed"),
    [
        (Algorithm.FIXED_WINDOW, 50, 0, 50),
        (Algorithm.SLIDING_WINDOW, 50, 0, 50),
        (Algorithm.SLIDING_LOG, 50, 0, 50),
        (Algorithm.TOKEN_BUCKET, 40, 10, 50),
    ],
)
async def test_concurrent_decisions_allow_exactly_the_limit(
    redis_server: RedisServer, algorithm: Algorithm, limit: int, burst: int, allowed: int
) -> None:
    """300 concurrent decisions from 3 storages (3 gateway instances) allow exactly the limit."""
    spec = LimitSpec(f"{tag()}:p", algorithm, limit, LONG_MS, burst=burst)
    config = StorageConfig(url=redis_server.url, timeout_ms=2000)
    stores = [RedisStorage.from_config(config) for _ in range(3)]
    try:
        outcomes = await asyncio.gather(*(stores[i % 3].decide([spec]) for i in range(300)))
    finally:
        for store in stores:
            await store.aclose()
    assert sum(o.allowed for o in outcomes) == allowed
    assert min(o.states[0].remaining for o in outcomes) == 0
    assert all(o.states[0].retry_after_ms > 0 for o in outcomes if not o.allowed)


async def test_rejected_request_charges_nothing(storage: RedisStorage) -> None:
    """With two limits on one request, a denial by one charges neither."""
    base = tag()
    wide = LimitSpec(f"{base}:wide", Algorithm.SLIDING_LOG, 10, LONG_MS)
    narrow = LimitSpec(f"{base}:narrow", Algorithm.FIXED_WINDOW, 3, LONG_MS)
    outcomes = [await storage.decide([wide, narrow]) for _ in range(8)]
    assert [o.allowed for o in outcomes] == [True] * 3 + [False] * 5
    assert (await storage.peek(wide)).remaining == 7
    assert outcomes[-1].states[0].retry_after_ms == 0  # the wide limit itself allowed
    assert outcomes[-1].states[1].retry_after_ms > 0


async def test_cost_and_token_bucket_states(storage: RedisStorage) -> None:
    """A token bucket of 10/s + burst 5 takes a cost of 15 once, then says when to retry."""
    spec = LimitSpec(f"{tag()}:tb", Algorithm.TOKEN_BUCKET, 10, 1000, burst=5, cost=15)
    first = await storage.decide([spec])
    second = await storage.decide([spec])
    assert first.allowed
    assert first.states[0].remaining == 0
    assert not second.allowed
    assert 1400 <= second.states[0].retry_after_ms <= 1500  # 15 tokens at 100 ms each


async def test_fixed_window_reports_the_window_end(storage: RedisStorage) -> None:
    """A denied fixed-window request is told to retry when the window resets."""
    spec = LimitSpec(f"{tag()}:fw", Algorithm.FIXED_WINDOW, 1, 60_000)
    await storage.decide([spec])
    denied = await storage.decide([spec])
    state = denied.states[0]
    assert 0 < state.retry_after_ms == state.reset_ms <= 60_000


async def test_refund_and_reset_undo_charges(storage: RedisStorage) -> None:
    """refund() gives back a charge of every algorithm; reset() forgets the spec entirely."""
    base = tag()
    specs = [LimitSpec(f"{base}:{a.name}", a, 5, LONG_MS) for a in Algorithm]
    await storage.decide(specs)
    await storage.decide(specs)
    refunded = await storage.refund(specs)
    assert [s.remaining for s in refunded.states] == [4, 4, 4, 4]
    for spec in specs:
        await storage.reset(spec)
    assert [(await storage.peek(s)).remaining for s in specs] == [5, 5, 5, 5]


@pytest.mark.parametrize("algorithm", [Algorithm.FIXED_WINDOW, Algorithm.SLIDING_WINDOW])
async def test_refund_after_the_window_rolled_over_undoes_the_old_window(
    storage: RedisStorage, redis_server: RedisServer, algorithm: Algorithm
) -> None:
    """A refund names the Redis time of its charge (MODE_STAMPED answers it): once the window
    has rolled over, the charge is taken back from the window it was made in, not from the
    new window's count (which would let one extra request through there)."""
    spec = LimitSpec(f"{tag()}:p", algorithm, 5, 400)
    reply = await storage.client.run_script(
        DECIDE, decide_command([spec], MODE_STAMPED), timeout_s=2
    )
    charged = parse_outcome(reply, 1, stamped=True)
    stamp = parse_stamp(reply)
    assert charged.allowed
    await asyncio.sleep((charged.states[0].reset_ms + 50) / 1000)  # a later window
    reply = await storage.client.run_script(
        DECIDE, decide_command([spec], MODE_STAMPED), timeout_s=2
    )
    assert parse_outcome(reply, 1, stamped=True).allowed  # one charge in the later window

    def count(window: int) -> int:
        return int(redis_server.node.cmd("GET", f"{spec.key}:{window}") or 0)

    old, new = stamp // 400, parse_stamp(reply) // 400
    assert new > old
    assert (count(old), count(new)) == (1, 1)
    await storage.refund([spec], at=stamp)
    assert (count(old), count(new)) == (0, 1)  # the old window gave it back, the new kept its


async def test_log_refund_removes_the_entries_of_its_own_charge(
    storage: RedisStorage, redis_server: RedisServer
) -> None:
    """A sliding_log refund with the charge's time removes that charge's entries, not the
    newest ones, which may be a later request's."""
    spec = LimitSpec(f"{tag()}:p", Algorithm.SLIDING_LOG, 5, 60_000)
    reply = await storage.client.run_script(
        DECIDE, decide_command([spec], MODE_STAMPED), timeout_s=2
    )
    stamp = parse_stamp(reply)
    await asyncio.sleep(0.01)  # a later millisecond
    assert (await storage.decide([spec])).allowed
    await storage.refund([spec], at=stamp)
    left = redis_server.node.cmd("ZRANGE", f"{spec.key}:log", 0, -1, "WITHSCORES")
    assert len(left) == 1  # one [member, score] is left: the later request's
    assert float(left[0][1]) > stamp


@pytest.mark.parametrize("algorithm", list(Algorithm))
async def test_one_spec_path_agrees_with_the_general_one(
    storage: RedisStorage, redis_server: RedisServer, algorithm: Algorithm
) -> None:
    """A lone spec (decide.lua's lean path) is decided as the same spec beside another.

    Both go in the same batch, so the script sees one ``now``; the sliding window starts with
    a previous window of 4 so its weighting is exercised.
    """
    base = tag()
    lone, paired = f"{base}:lone", f"{base}:paired"
    if algorithm is Algorithm.SLIDING_WINDOW:
        seconds, micros = redis_server.node.cmd("TIME")
        prev_idx = (int(seconds) * 1000 + int(micros) // 1000) // LONG_MS - 1
        for key in (lone, paired):
            redis_server.node.cmd("SET", f"{key}:{prev_idx}", 4, "PX", 60_000)
    companion = LimitSpec(f"{base}:companion", Algorithm.FIXED_WINDOW, 1_000_000, LONG_MS)
    for cost in (1, 3, 3, 2, 9, 1, 1, 1, 0):
        a = LimitSpec(lone, algorithm, 10, LONG_MS, burst=2, cost=cost)
        b = LimitSpec(paired, algorithm, 10, LONG_MS, burst=2, cost=cost)
        one, two = await asyncio.gather(storage.decide([a]), storage.decide([b, companion]))
        assert (one.allowed, one.states[0]) == (two.allowed, two.states[0]), cost


async def test_script_reloaded_after_script_flush(
    storage: RedisStorage, redis_server: RedisServer
) -> None:
    """After SCRIPT FLUSH the next decision reloads decide.lua (NOSCRIPT) and succeeds."""
    spec = LimitSpec(f"{tag()}:p", Algorithm.FIXED_WINDOW, 5, LONG_MS)
    await storage.decide([spec])
    redis_server.node.cmd("SCRIPT", "FLUSH")
    outcome = await storage.decide([spec])
    assert outcome.allowed
    assert outcome.states[0].remaining == 3


async def test_decisions_of_one_tick_share_one_write(
    storage: RedisStorage, redis_server: RedisServer
) -> None:
    """100 decisions made in one tick go out as 4 batched EVALSHAs (32 each) in 4 writes."""
    await storage.ping()
    specs = [LimitSpec(f"{tag()}:p", Algorithm.SLIDING_WINDOW, 10, 60_000) for _ in range(100)]
    before = storage.client.writes
    redis_server.node.cmd("CONFIG", "RESETSTAT")
    outcomes = await asyncio.gather(*(storage.decide([s]) for s in specs))
    stats = redis_server.node.cmd("INFO", "commandstats")
    assert all(o.allowed for o in outcomes)
    assert storage.client.writes - before <= 4
    assert stats["cmdstat_evalsha"]["calls"] == 4


async def test_script_and_argument_errors_are_storage_errors(storage: RedisStorage) -> None:
    """A spec the script rejects raises StorageError: an error is never an "allowed"."""
    bad = LimitSpec(f"{tag()}:p", Algorithm.FIXED_WINDOW, 0, 1000)
    with pytest.raises(StorageError, match="bad spec"):
        await storage.decide([bad])


async def test_bad_decision_fails_alone_in_its_batch(storage: RedisStorage) -> None:
    """In one batch, a decision with an invalid spec fails and its neighbours are decided."""
    good = LimitSpec(f"{tag()}:p", Algorithm.FIXED_WINDOW, 5, LONG_MS)
    bad = LimitSpec(f"{tag()}:p", Algorithm.FIXED_WINDOW, 5, 0)
    results = await asyncio.gather(
        storage.decide([good]), storage.decide([bad]), storage.decide([good]),
        return_exceptions=True,
    )
    assert isinstance(results[1], StorageError)
    assert [r.states[0].remaining for r in (results[0], results[2])] == [4, 3]  # type: ignore[union-attr]


async def test_groups_of_a_batch_read_their_own_part_and_survive_a_cancelled_one(
    storage: RedisStorage,
) -> None:
    """Groups of 1, 2 and 1 specs in one batch each read their own place in the reply, and a
    request cancelled while waiting (its client left) leaves the others' decisions alone."""
    await storage.ping()
    a, b, c = (LimitSpec(f"{tag()}:p", Algorithm.FIXED_WINDOW, n, LONG_MS) for n in (5, 7, 9))

    async def decide(specs: list[LimitSpec]) -> Outcome:
        return await storage.decide(specs)

    tasks = [asyncio.ensure_future(decide(g)) for g in ([a], [b, c], [a, c], [b])]
    await asyncio.sleep(0)  # every decision is in the batch
    tasks[2].cancel()
    first, pair, cancelled, last = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(cancelled, asyncio.CancelledError)
    assert [s.remaining for s in first.states] == [4]  # type: ignore[union-attr]
    assert [s.remaining for s in pair.states] == [6, 8]  # type: ignore[union-attr]
    # The cancelled request was charged (it reached Redis), and its neighbour after it too.
    assert [s.remaining for s in last.states] == [5]  # type: ignore[union-attr]
    assert (await storage.peek(a)).remaining == 3


async def test_a_group_submitted_again_is_decided_again(storage: RedisStorage) -> None:
    """The batcher encodes a group of several specs once per list: the same list submitted
    twice in one batch and again in the next is charged each time, and another list of other
    specs gets its own keys and limits."""
    await storage.ping()
    a, b, c = (LimitSpec(f"{tag()}:p", Algorithm.FIXED_WINDOW, n, LONG_MS) for n in (5, 7, 9))
    pair, other = [a, b], [c, a]
    first, second = await asyncio.gather(storage.decide(pair), storage.decide(pair))
    third = await storage.decide(pair)
    fourth = await storage.decide(other)
    assert [[s.remaining for s in o.states] for o in (first, second, third, fourth)] == [
        [4, 6], [3, 5], [2, 4], [8, 1]
    ]


async def test_heartbeat_counts_live_instances(storage: RedisStorage) -> None:
    """Instances that stop beating drop out of the count once their TTL has passed."""
    store = RedisStorage(storage.client, key_prefix=f"hb{uuid.uuid4().hex[:8]}", timeout_ms=2000)
    assert await store.heartbeat("a", 300) == 1
    assert await store.heartbeat("b", 60_000) == 2
    await asyncio.sleep(0.4)
    assert await store.heartbeat("b", 60_000) == 1


async def test_every_key_written_has_a_ttl(fresh_redis: RedisServer) -> None:
    """After decisions, peeks, refunds, resets and heartbeats of every kind no key lacks a TTL."""
    store = RedisStorage.from_config(StorageConfig(url=fresh_redis.url, timeout_ms=2000))
    try:
        base = tag()
        specs = [LimitSpec(f"{base}:{a.name}", a, 3, 5000, cost=2) for a in Algorithm]
        for _ in range(3):
            await store.decide(specs)
            await store.decide(specs[:2])
            await store.decide([specs[3]])
            for spec in specs:  # one spec per decision: decide.lua's lean path
                await store.decide([spec])
        # A first charge the limit refuses creates the window counter, then takes it back.
        await store.decide([LimitSpec(f"{base}:over", Algorithm.FIXED_WINDOW, 3, 5000, cost=9)])
        await store.decide([LimitSpec(f"{base}:over2", Algorithm.SLIDING_WINDOW, 3, 5000, cost=9)])
        await store.refund(specs)
        await store.decide(specs)
        await store.peek(specs[2])
        await store.reset(specs[0])
        await store.heartbeat("i", 1000)
        assert fresh_redis.node.cmd("DBSIZE") >= 4
        assert fresh_redis.keys_without_ttl() == []
    finally:
        await store.aclose()


async def test_each_batch_reports_its_round_trip(storage: RedisStorage) -> None:
    """The metrics hook hears once per batch (not per decision), with the seconds it took."""
    await storage.ping()  # connected: the batches take the direct path
    seen: list[float] = []
    storage.observe_with(seen.append)
    specs = [LimitSpec(f"{tag()}:p", Algorithm.FIXED_WINDOW, 10, LONG_MS) for _ in range(40)]
    await asyncio.gather(*(storage.decide([s]) for s in specs))  # 32 + 8: two batches
    assert len(seen) == 2
    assert all(0 < s < 2 for s in seen)


@pytest.mark.parametrize("algorithm", [Algorithm.FIXED_WINDOW, Algorithm.SLIDING_WINDOW])
async def test_decisions_of_one_spec_in_a_tick_are_charged_as_one_group(
    storage: RedisStorage, redis_server: RedisServer, algorithm: Algorithm
) -> None:
    """20 decisions of one window-counter spec in one tick: one group in Redis (one write of
    the counter), each with the remaining it would have had one after another, in order."""
    await storage.ping()
    spec = LimitSpec(f"{tag()}:p", algorithm, 100, LONG_MS, cost=2)
    redis_server.node.cmd("CONFIG", "RESETSTAT")
    outcomes = await asyncio.gather(*(storage.decide([spec]) for _ in range(20)))
    stats = redis_server.node.cmd("INFO", "commandstats")
    assert [o.states[0].remaining for o in outcomes] == list(range(98, 58, -2))
    assert all(o.allowed and o.states[0].retry_after_ms == 0 for o in outcomes)
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert stats["cmdstat_incrby"]["calls"] == 1
    assert (await storage.peek(spec)).remaining == 60


async def test_a_full_joined_group_is_followed_by_a_new_one_in_the_same_batch(
    storage: RedisStorage, redis_server: RedisServer
) -> None:
    """80 decisions of one spec in a tick: groups of 33 (a first and 32 joined), 33 and 14 in
    one EVALSHA; every decision is answered, in order."""
    await storage.ping()
    spec = LimitSpec(f"{tag()}:p", Algorithm.FIXED_WINDOW, 100, LONG_MS)
    redis_server.node.cmd("CONFIG", "RESETSTAT")
    outcomes = await asyncio.gather(*(storage.decide([spec]) for _ in range(80)))
    stats = redis_server.node.cmd("INFO", "commandstats")
    assert [o.states[0].remaining for o in outcomes] == list(range(99, 19, -1))
    assert all(o.allowed for o in outcomes)
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert stats["cmdstat_incrby"]["calls"] == 3


@pytest.mark.parametrize("algorithm", [Algorithm.FIXED_WINDOW, Algorithm.SLIDING_WINDOW])
async def test_joined_decisions_that_do_not_fit_pass_as_far_as_the_limit_lets(
    storage: RedisStorage, redis_server: RedisServer, algorithm: Algorithm
) -> None:
    """8 decisions of cost 2 with 11 left, in one tick and one round trip: the first 5 pass in
    order, the rest are refused with a retry time, and the limit keeps its last 1."""
    await storage.ping()
    spec = LimitSpec(f"{tag()}:p", algorithm, 11, LONG_MS, cost=2)
    redis_server.node.cmd("CONFIG", "RESETSTAT")
    outcomes = await asyncio.gather(*(storage.decide([spec]) for _ in range(8)))
    stats = redis_server.node.cmd("INFO", "commandstats")
    assert [o.allowed for o in outcomes] == [True] * 5 + [False] * 3
    assert [o.states[0].remaining for o in outcomes] == [9, 7, 5, 3, 1, 1, 1, 1]
    assert all(o.states[0].retry_after_ms > 0 for o in outcomes[5:])
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert (await storage.peek(LimitSpec(spec.key, algorithm, 11, LONG_MS))).remaining == 1


async def test_joined_groups_and_other_groups_of_a_batch_read_their_own_answers(
    storage: RedisStorage,
) -> None:
    """Lone decisions of a (2 left) joined around groups of other specs: each reads its own
    answer, the third of a is refused, and a cancelled one (its client left) was charged."""
    await storage.ping()
    a, b, c = (LimitSpec(f"{tag()}:p", Algorithm.FIXED_WINDOW, n, LONG_MS) for n in (2, 7, 9))
    groups = ([a], [b, c], [a], [c], [a], [b])
    tasks = [asyncio.ensure_future(storage.decide(g)) for g in groups]
    await asyncio.sleep(0)  # every decision is in the batch
    tasks[2].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    first, pair, _, alone, third, last = results
    assert (first.allowed, first.states[0].remaining) == (True, 1)  # type: ignore[union-attr]
    assert [s.remaining for s in pair.states] == [6, 8]  # type: ignore[union-attr]
    assert [s.remaining for s in alone.states] == [7]  # type: ignore[union-attr]
    assert (third.allowed, third.states[0].remaining) == (False, 0)  # type: ignore[union-attr]
    assert [s.remaining for s in last.states] == [5]  # type: ignore[union-attr]


async def test_token_bucket_decisions_are_not_joined(
    storage: RedisStorage, redis_server: RedisServer
) -> None:
    """A token bucket's decisions each keep a group of their own (its reset is per charge)."""
    await storage.ping()
    spec = LimitSpec(f"{tag()}:p", Algorithm.TOKEN_BUCKET, 100, LONG_MS)
    redis_server.node.cmd("CONFIG", "RESETSTAT")
    outcomes = await asyncio.gather(*(storage.decide([spec]) for _ in range(5)))
    stats = redis_server.node.cmd("INFO", "commandstats")
    assert all(o.allowed for o in outcomes)
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert stats["cmdstat_set"]["calls"] == 5


@pytest.mark.parametrize(
    ("algorithm", "k", "answer"),
    [
        (Algorithm.TOKEN_BUCKET, 2, [-1, 0, 0, 0]),  # not a window counter: refused
        (Algorithm.SLIDING_LOG, 2, [-1, 0, 0, 0]),
        (Algorithm.FIXED_WINDOW, 0, "bad arguments"),
        (Algorithm.FIXED_WINDOW, 1.5, "bad arguments"),
    ],
)
async def test_joined_mode_refuses_what_it_cannot_decide(
    redis_server: RedisServer, algorithm: Algorithm, k: float, answer: object
) -> None:
    """decide.lua's joined mode (5) takes a window counter and a whole k >= 1, nothing else."""
    args = [1, int(algorithm), 10, LONG_MS, 0, 1, 5, k]
    try:
        reply = redis_server.node.cmd("EVAL", DECIDE.source, 1, f"{tag()}:p", *args)
    except Exception as exc:  # redis-py's ResponseError
        reply = str(exc)
    assert reply == answer if isinstance(answer, list) else answer in str(reply)


@pytest.mark.parametrize("algorithm", [Algorithm.FIXED_WINDOW, Algorithm.SLIDING_WINDOW])
@pytest.mark.parametrize("case", [(10, 1, 3), (10, 3, 0), (17, 2, 6), (5, 0, 7)])
async def test_joined_decisions_agree_with_lone_ones(
    storage: RedisStorage, redis_server: RedisServer, algorithm: Algorithm,
    case: tuple[int, int, int],
) -> None:
    """k decisions of one spec object (joined) and of k equal but distinct objects (k lone
    groups), in one batch and so at one ``now``, from the same counts: the same answers.
    ``case``: the limit, the cost and what the current window has taken already."""
    limit, cost, taken = case
    base = tag()
    joined_key, lone_key = f"{base}:joined", f"{base}:lone"
    seconds, micros = redis_server.node.cmd("TIME")
    idx = (int(seconds) * 1000 + int(micros) // 1000) // LONG_MS
    for key in (joined_key, lone_key):
        redis_server.node.cmd("SET", f"{key}:{idx - 1}", 4, "PX", 60_000)  # a previous window
        redis_server.node.cmd("SET", f"{key}:{idx}", taken, "PX", 60_000)
    spec = LimitSpec(joined_key, algorithm, limit, LONG_MS, cost=cost)
    lone = [LimitSpec(lone_key, algorithm, limit, LONG_MS, cost=cost) for _ in range(9)]
    outcomes = await asyncio.gather(*(storage.decide([spec]) for _ in range(9)),
                                    *(storage.decide([s]) for s in lone))
    joined_answers = [(o.allowed, o.states[0]) for o in outcomes[:9]]
    assert joined_answers == [(o.allowed, o.states[0]) for o in outcomes[9:]]
    assert redis_server.node.cmd("GET", f"{joined_key}:{idx}") == redis_server.node.cmd(
        "GET", f"{lone_key}:{idx}")
