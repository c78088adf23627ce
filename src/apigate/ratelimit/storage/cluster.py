"""Rate-limit storage on Redis Cluster (``redis+cluster://h1:7000,h2:7001``).

One coalescing RESP connection per master; the slot map comes from ``CLUSTER SLOTS``.
``MOVED`` updates the slot and retries, ``ASK`` retries once on the named node after
``ASKING``; a lost connection or ``CLUSTERDOWN`` refreshes the map (a replica may have been
promoted) and retries while the decision's time budget lasts.

A request's specs are grouped by slot (specs with one hash tag always share a slot); each group
is one atomic ``decide.lua`` call. With several groups they are decided one by one in slot
order and, if a later group denies, the groups already charged are refunded (mode 2): this is
the one place where "a rejected request charges nothing" holds by compensation, not by one
atomic step; between the charge and the refund another request may see the extra charge.
"""

from __future__ import annotations

import asyncio
import contextlib
from binascii import crc_hqx
from collections.abc import Sequence
from typing import Any

from apigate.config.model import StorageConfig
from apigate.ratelimit.storage.base import LimitSpec, LimitState, Outcome, Storage, StorageError
from apigate.ratelimit.storage.redis import (
    DECIDE,
    HEARTBEAT,
    MODE_DECIDE,
    MODE_PEEK,
    MODE_REFUND,
    MODE_RESET,
    MODE_STAMPED,
    SLOW_CALL_S,
    decide_command,
    parse_outcome,
    parse_stamp,
)
from apigate.ratelimit.storage.resp import Command, Endpoint, ReplyError, Script
from apigate.ratelimit.storage.slotmap import SLOTS, SlotMap, parse_cluster_url

MAX_REDIRECTS = 5


def key_slot(key: str) -> int:
    """Redis Cluster slot of ``key``: CRC16 (XMODEM) of its hash tag, or of the whole key.

    ``key_slot("apigate:{ip=1.2.3.4}:per-ip") == key_slot("{ip=1.2.3.4}")``.
    """
    raw = key.encode()
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return crc_hqx(raw, 0) & (SLOTS - 1)


class ClusterStorage(Storage):
    """Counters spread over a Redis Cluster; each decision group is one EVALSHA on its master."""

    bounds_own_calls = True  # every command carries its own deadline (resp.py)

    def __init__(self, slots: SlotMap, *, key_prefix: str, timeout_ms: int) -> None:
        self.slots = slots
        self._instances_key = f"{key_prefix}:instances"
        self._timeout_s = timeout_ms / 1000

    @classmethod
    def from_config(cls, config: StorageConfig) -> ClusterStorage:
        """Build from ``redis+cluster://[user:pass@]h1:7000,h2:7001``."""
        seeds, login = parse_cluster_url(config.url)
        slots = SlotMap(seeds, login, scripts=(DECIDE, HEARTBEAT))
        return cls(slots, key_prefix=config.key_prefix, timeout_ms=config.timeout_ms)

    async def decide(self, specs: Sequence[LimitSpec]) -> Outcome:
        """Check and charge ``specs``: atomic per slot, refunded across slots on a denial."""
        if not specs:
            return Outcome(True, ())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        first = key_slot(specs[0].key)
        if all(key_slot(s.key) == first for s in specs[1:]):
            return await self._group(first, specs, MODE_DECIDE, deadline)
        groups: dict[int, list[int]] = {}
        for i, spec in enumerate(specs):
            groups.setdefault(key_slot(spec.key), []).append(i)
        order = sorted(groups.items())
        states: list[LimitState | None] = [None] * len(specs)
        # Each charged group's Redis time: its refund undoes the charge in the window it was
        # made in, even if that window has ended since.
        stamps: list[int] = []
        for done, (slot, idx) in enumerate(order):
            group = [specs[i] for i in idx]
            try:
                reply = await self._run(
                    slot, DECIDE, decide_command(group, MODE_STAMPED), deadline
                )
                outcome = parse_outcome(reply, len(group), stamped=True)
                stamp = parse_stamp(reply)
            except StorageError:
                await self._settle(specs, order[:done], MODE_REFUND, states, deadline,
                                  stamps=stamps)
                raise
            stamps.append(stamp)
            _place(states, idx, outcome.states)
            if not outcome.allowed:
                await self._settle(specs, order[:done], MODE_REFUND, states, deadline,
                                  stamps=stamps)
                await self._settle(specs, order[done + 1 :], MODE_PEEK, states, deadline)
                return Outcome(False, tuple(s for s in states if s is not None))
        return Outcome(True, tuple(s for s in states if s is not None))

    async def _settle(
        self,
        specs: Sequence[LimitSpec],
        groups: Sequence[tuple[int, list[int]]],
        mode: int,
        states: list[LimitState | None],
        deadline: float,
        *,
        stamps: Sequence[int] = (),
    ) -> None:
        """Refund (each at its charge's ``stamps``) or peek ``groups`` concurrently and record
        their states."""
        results = await asyncio.gather(
            *(
                self._group(slot, [specs[i] for i in idx], mode, deadline,
                            stamps[n] if mode == MODE_REFUND else 0)
                for n, (slot, idx) in enumerate(groups)
            ),
            return_exceptions=True,
        )
        for (_, idx), result in zip(groups, results, strict=True):
            if isinstance(result, BaseException):
                raise StorageError(f"could not settle a cross-slot decision: {result}")
            _place(states, idx, result.states)

    async def _group(
        self, slot: int, specs: Sequence[LimitSpec], mode: int, deadline: float, at: int = 0
    ) -> Outcome:
        reply = await self._run(slot, DECIDE, decide_command(specs, mode, at), deadline)
        return parse_outcome(reply, len(specs))

    async def _run(self, slot: int, script: Script, command: Command, deadline: float) -> Any:
        """EVALSHA on the slot's master, following MOVED / ASK and failovers until ``deadline``."""
        loop = asyncio.get_running_loop()
        asking: Endpoint | None = None
        for _ in range(MAX_REDIRECTS):
            left = deadline - loop.time()
            if left <= 0:
                break
            node = asking or await self.slots.master(slot, deadline)
            client = self.slots.client(node)
            try:
                return await client.run_script(
                    script, command, timeout_s=left, asking=asking is not None
                )
            except ReplyError as exc:
                asking = await self._redirect(slot, str(exc), deadline)
            except StorageError:
                # Lost node: refresh the map; retry only if the slot has a new master.
                if not await self.slots.refresh_changed(slot, node, deadline):
                    raise
                asking = None
        raise StorageError(f"slot {slot}: no answer within the time budget")

    async def _redirect(self, slot: int, message: str, deadline: float) -> Endpoint | None:
        """The node to ASK, or None to retry on the (updated) map; raise for real errors."""
        kind, _, rest = message.partition(" ")
        if kind == "MOVED":
            self.slots.moved(slot, rest.split()[-1])
            return None
        if kind == "ASK":
            return self.slots.endpoint(rest.split()[-1])
        if kind in ("CLUSTERDOWN", "TRYAGAIN"):
            await self.slots.refresh_changed(slot, None, deadline)
            await asyncio.sleep(min(0.01, max(deadline - asyncio.get_running_loop().time(), 0)))
            return None
        raise StorageError(message)

    async def _one(self, spec: LimitSpec, mode: int, wait_s: float) -> Outcome:
        deadline = asyncio.get_running_loop().time() + wait_s
        return await self._group(key_slot(spec.key), (spec,), mode, deadline)

    async def peek(self, spec: LimitSpec) -> LimitState:
        """The state of ``spec`` for a request of ``spec.cost``; writes nothing (the admin
        API's usage: a background call, SLOW_CALL_S)."""
        return (await self._one(spec, MODE_PEEK, max(self._timeout_s, SLOW_CALL_S))).states[0]

    async def reset(self, spec: LimitSpec) -> None:
        """Delete every key ``decide.lua`` keeps for ``spec``."""
        await self._one(spec, MODE_RESET, max(self._timeout_s, SLOW_CALL_S))

    async def heartbeat(self, instance_id: str, ttl_ms: int) -> int:
        """Mark ``instance_id`` alive for ``ttl_ms``; the live instance count."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(self._timeout_s, SLOW_CALL_S)
        key = self._instances_key
        command = (b"EVALSHA", HEARTBEAT.sha, 1, key, instance_id, ttl_ms)
        reply = await self._run(key_slot(key), HEARTBEAT, command, deadline)
        if not isinstance(reply, int):
            raise StorageError(f"heartbeat.lua returned {reply!r}")
        return reply

    async def ping(self) -> None:
        """Raise StorageError unless every master answers PING."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(self._timeout_s, SLOW_CALL_S)
        masters = await self.slots.masters(deadline)
        left = max(deadline - loop.time(), 0.0)  # the PINGs share what is left of the deadline
        replies = await asyncio.gather(
            *(self.slots.client(m).execute((b"PING",), timeout_s=left) for m in masters),
            return_exceptions=True,
        )
        for master, reply in zip(masters, replies, strict=True):
            if reply != b"PONG":
                raise StorageError(f"{master.host}:{master.port} answered PING with {reply!r}")

    async def aclose(self) -> None:
        """Close every node connection; idempotent."""
        with contextlib.suppress(StorageError):
            await self.slots.aclose()


def _place(states: list[LimitState | None], idx: Sequence[int], got: Sequence[LimitState]) -> None:
    for i, state in zip(idx, got, strict=True):
        states[i] = state
