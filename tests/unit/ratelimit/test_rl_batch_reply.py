"""How a batch's reply reaches its decisions (without Redis: the reply is handed in)."""

from __future__ import annotations

import asyncio

import pytest

from apigate.ratelimit.storage.base import Algorithm, LimitSpec, StorageError
from apigate.ratelimit.storage.batch import DecisionBatcher, _BatchReply
from apigate.ratelimit.storage.resp import Script

SPEC = LimitSpec("k", Algorithm.FIXED_WINDOW, 10, 60_000, 0, 1)


def batch_reply(futures: list[asyncio.Future[list[int]]], joined: list[asyncio.Future[list[int]]]
                ) -> _BatchReply:
    """The sink of a batch with one group of SPEC, which the ``joined`` decisions joined."""
    batcher = DecisionBatcher(None, Script.from_package("decide.lua"), timeout_s=1.0)  # type: ignore[arg-type]
    return _BatchReply(batcher, futures, [[SPEC]], 4, [(SPEC, joined, 0, 0, 0)])


async def test_joined_decisions_get_their_own_answers_and_a_cancelled_one_is_skipped() -> None:
    """Three of six fitted: the first and two joined pass, counting down; the rest are refused.
    Decisions whose client left (cancelled), one that passed and one refused, are passed over;
    the others are still answered."""
    loop = asyncio.get_running_loop()
    first = loop.create_future()
    joined = [loop.create_future() for _ in range(5)]
    joined[1].cancel()
    joined[3].cancel()
    batch_reply([first], joined).set_result([3, 7, 20_000, 5_000])
    assert first.result() == [1, 9, 20_000, 0]
    assert joined[0].result() == [1, 8, 20_000, 0]
    assert joined[1].cancelled()
    assert joined[2].result() == [0, 7, 20_000, 5_000]
    assert joined[3].cancelled()
    assert joined[4].result() == [0, 7, 20_000, 5_000]


async def test_a_reply_that_cannot_be_read_fails_every_decision() -> None:
    """A reply of the right length that breaks reading it (not numbers) fails the decisions
    with StorageError: none is left waiting for an answer that will not come."""
    loop = asyncio.get_running_loop()
    first = loop.create_future()
    joined = [loop.create_future() for _ in range(2)]
    batch_reply([first], joined).set_result([b"OK", b"x", 0, 0])
    for fut in (first, *joined):
        with pytest.raises(StorageError):
            fut.result()


class _NotConnected:
    """A client that is not connected yet: the batch goes through run_script (the slow path),
    which answers ``reply``."""

    def __init__(self, reply: object) -> None:
        self.reply = reply

    def try_send_packed_now(self, data: bytes, sink: object, timeout_s: float) -> bool:
        return False

    async def run_script(self, script: Script, command: object, *, timeout_s: float) -> object:
        return self.reply


async def test_an_unreadable_reply_on_the_slow_path_fails_every_decision() -> None:
    """The same on the path a batch takes before the connection is up: no decision waits."""
    batcher = DecisionBatcher(
        _NotConnected([b"OK", b"x", 0, 0]),  # type: ignore[arg-type]
        Script.from_package("decide.lua"), timeout_s=1.0,
    )
    submitted = [batcher.submit([SPEC]) for _ in range(3)]  # one group, two joined it
    for fut, _ in submitted:
        with pytest.raises(StorageError):
            await asyncio.wait_for(fut, 1.0)


async def test_the_slow_path_answers_joined_decisions() -> None:
    """A readable reply on the slow path: two of three fitted."""
    batcher = DecisionBatcher(
        _NotConnected([2, 3, 20_000, 5_000]),  # type: ignore[arg-type]
        Script.from_package("decide.lua"), timeout_s=1.0,
    )
    submitted = [batcher.submit([SPEC]) for _ in range(3)]
    answers = [(await asyncio.wait_for(fut, 1.0))[pos:pos + 4] for fut, pos in submitted]
    assert answers == [[1, 4, 20_000, 0], [1, 3, 20_000, 0], [0, 3, 20_000, 5_000]]
