"""Rate-limit storage on one Redis server (``redis://`` and ``rediss://``).

Every decision is one EVALSHA of ``lua/decide.lua`` with all the request's specs, sent on the
coalescing RESP client: decisions made in the same event-loop tick share one socket write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from apigate.config.model import StorageConfig
from apigate.ratelimit.storage.base import (
    LimitSpec,
    LimitState,
    Outcome,
    Reply,
    Storage,
    StorageError,
    Submitted,
    group_outcome,
    spec_args,
)
from apigate.ratelimit.storage.batch import DecisionBatcher
from apigate.ratelimit.storage.client import RespClient
from apigate.ratelimit.storage.resp import Arg, Command, Script, endpoint_from_url

DECIDE = Script.from_package("decide.lua")
HEARTBEAT = Script.from_package("heartbeat.lua")

MODE_DECIDE, MODE_PEEK, MODE_REFUND, MODE_RESET, MODE_STAMPED = 0, 1, 2, 3, 4

_EVALSHA = b"EVALSHA"

# Background calls (heartbeat, reset, ping) may wait longer than a decision.
SLOW_CALL_S = 1.0


def decide_command(specs: Sequence[LimitSpec], mode: int, at: int = 0) -> Command:
    """``EVALSHA <decide.lua> n k1..kn n alg limit window burst cost ... mode`` for ``specs``;
    a refund adds ``at``, the Redis time (ms) of the charge it undoes (0: now)."""
    extra: tuple[int, ...] = (mode, at) if mode == MODE_REFUND else (mode,)
    if len(specs) == 1:
        s = specs[0]
        return (_EVALSHA, DECIDE.sha, 1, s.key, 1, *spec_args(s), *extra)
    args: list[Arg] = [_EVALSHA, DECIDE.sha, len(specs)]
    args += [spec.key for spec in specs]
    args.append(len(specs))
    for s in specs:
        args += spec_args(s)
    args += extra
    return tuple(args)


def parse_outcome(reply: Any, count: int, *, stamped: bool = False) -> Outcome:
    """``[1, 4, 900, 0]`` -> Outcome(True, (LimitState(4, 900, 0),)); anything else -> error.

    A stamped reply (MODE_STAMPED) ends with the decision's Redis time: see parse_stamp."""
    if type(reply) is not list or len(reply) != 1 + 3 * count + stamped:
        raise StorageError(f"decide.lua returned {reply!r}")
    return group_outcome(reply, 0, count)


def parse_stamp(reply: list[Any]) -> int:
    """The Redis time (ms) a MODE_STAMPED decision was made at, for its refund."""
    stamp = reply[-1]
    if type(stamp) is not int:
        raise StorageError(f"decide.lua returned {reply!r}")
    return stamp


class RedisStorage(Storage):
    """Counters on a single Redis server, decided by ``decide.lua``."""

    bounds_own_calls = True  # every command carries its own deadline (resp.py)
    times_own_calls = True  # each batch's round trip (batch.py)

    def __init__(self, client: RespClient, *, key_prefix: str, timeout_ms: int) -> None:
        self.client = client
        self._instances_key = f"{key_prefix}:instances"
        self._timeout_s = timeout_ms / 1000
        self.batcher = DecisionBatcher(client, DECIDE, timeout_s=self._timeout_s)
        self.submit = self.batcher.submit  # type: ignore[method-assign]

    @classmethod
    def from_config(cls, config: StorageConfig) -> RedisStorage:
        """Build from ``storage.url`` (``redis://[user:pass@]host:port/db`` or ``rediss://``)."""
        endpoint = endpoint_from_url(config.url)
        client = RespClient.for_endpoint(endpoint, scripts=(DECIDE, HEARTBEAT))
        return cls(client, key_prefix=config.key_prefix, timeout_ms=config.timeout_ms)

    async def _decide(
        self, specs: Sequence[LimitSpec], mode: int, wait_s: float, at: int = 0
    ) -> Outcome:
        command = decide_command(specs, mode, at)
        reply = await self.client.run_script(DECIDE, command, timeout_s=wait_s)
        return parse_outcome(reply, len(specs))

    async def decide(self, specs: Sequence[LimitSpec]) -> Outcome:
        """Check all ``specs`` and charge them all iff all allow (one group of this tick's batch).

        Every decision of one event-loop tick shares one EVALSHA (see ``batch.py``).
        """
        if not specs:
            return Outcome(True, ())
        batch, pos = self.batcher.submit(specs)
        return group_outcome(await batch, pos, len(specs))

    def submit(
        self, specs: Sequence[LimitSpec], future: asyncio.Future[Reply] | None = None
    ) -> Submitted:
        """``decide`` as a bare future (see ``Storage.submit``); replaced in ``__init__`` by the
        batcher's own method, one call less on the request path."""
        return self.batcher.submit(specs, future)

    def observe_with(self, hook: Callable[[float], None] | None) -> None:
        """Report each batch's round trip (write to reply) to ``hook``."""
        self.batcher.observe = hook

    async def peek(self, spec: LimitSpec) -> LimitState:
        """The state of ``spec`` for a request of ``spec.cost``; writes nothing (the admin
        API's usage: a background call, SLOW_CALL_S)."""
        wait_s = max(self._timeout_s, SLOW_CALL_S)
        return (await self._decide((spec,), MODE_PEEK, wait_s)).states[0]

    async def refund(self, specs: Sequence[LimitSpec], at: int = 0) -> Outcome:
        """Undo a charge of each spec's ``cost`` made moments ago (at Redis time ``at``, ms;
        0: in the current window); the states after it."""
        return await self._decide(specs, MODE_REFUND, self._timeout_s, at)

    async def reset(self, spec: LimitSpec) -> None:
        """Delete every key ``decide.lua`` keeps for ``spec`` (named, never SCANned)."""
        await self._decide((spec,), MODE_RESET, max(self._timeout_s, SLOW_CALL_S))

    async def heartbeat(self, instance_id: str, ttl_ms: int) -> int:
        """Mark ``instance_id`` alive for ``ttl_ms`` (Redis time); the live instance count."""
        timeout_s = max(self._timeout_s, SLOW_CALL_S)
        reply = await self.client.evalsha(
            HEARTBEAT, [self._instances_key], [instance_id, ttl_ms], timeout_s=timeout_s
        )
        if not isinstance(reply, int):
            raise StorageError(f"heartbeat.lua returned {reply!r}")
        return reply

    async def ping(self) -> None:
        """Raise StorageError unless Redis answers PING."""
        reply = await self.client.execute((b"PING",), timeout_s=max(self._timeout_s, SLOW_CALL_S))
        if reply != b"PONG":
            raise StorageError(f"PING answered {reply!r}")

    async def aclose(self) -> None:
        """Close the connection; idempotent."""
        await self.client.aclose()
