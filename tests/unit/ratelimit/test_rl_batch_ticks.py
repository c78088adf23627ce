"""When a batch is written: at the end of its tick, or one tick later when the loop is busy."""

from __future__ import annotations

import asyncio

from apigate.ratelimit.storage.base import Algorithm, LimitSpec
from apigate.ratelimit.storage.batch import DecisionBatcher
from apigate.ratelimit.storage.resp import Script


def spec(key: str) -> LimitSpec:
    return LimitSpec(key, Algorithm.FIXED_WINDOW, 10, 60_000, 0, 1)


class _Writes:
    """A connected client that keeps what the batcher writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def try_send_packed_now(self, data: bytes, sink: object, timeout_s: float) -> bool:
        self.writes.append(data)
        return True


def batcher() -> tuple[DecisionBatcher, _Writes]:
    client = _Writes()
    script = Script.from_package("decide.lua")
    return DecisionBatcher(client, script, timeout_s=1.0), client  # type: ignore[arg-type]


async def test_a_lone_decision_is_written_at_the_end_of_its_tick() -> None:
    decisions, client = batcher()
    decisions.submit([spec("alone")])
    await asyncio.sleep(0)  # the tick ends
    assert len(client.writes) == 1
    assert b"alone" in client.writes[0]


async def test_a_busy_tick_waits_one_tick_for_the_next_decisions() -> None:
    """Two decisions in a tick: nothing is written when the tick ends; a decision of the next
    tick goes in the same write, at the end of that tick, and the one after that starts a new
    batch."""
    decisions, client = batcher()
    decisions.submit([spec("key-one")])
    decisions.submit([spec("key-two")])
    await asyncio.sleep(0)  # the first tick ends
    assert client.writes == []
    decisions.submit([spec("key-three")])
    await asyncio.sleep(0)  # the second tick ends
    assert len(client.writes) == 1
    assert all(key in client.writes[0] for key in (b"key-one", b"key-two", b"key-three"))
    decisions.submit([spec("key-four")])
    await asyncio.sleep(0)
    assert len(client.writes) == 2
    assert b"key-four" in client.writes[1]
    assert b"key-three" not in client.writes[1]


async def test_decisions_that_joined_one_group_count_as_several() -> None:
    """Two decisions of one spec are one group of the batch, but two decisions: the tick was
    busy, so the write waits a tick."""
    decisions, client = batcher()
    hot = spec("hot")
    decisions.submit([hot])
    decisions.submit([hot])
    await asyncio.sleep(0)
    assert client.writes == []
    await asyncio.sleep(0)
    assert len(client.writes) == 1
