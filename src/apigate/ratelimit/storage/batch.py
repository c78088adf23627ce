"""Decisions made in one event-loop tick, sent to one Redis node as one EVALSHA.

``decide.lua`` accepts several decision groups back to back and decides each as if it were a
call of its own, so a tick's decisions cost Redis one script call (one ``TIME``, one script
dispatch) instead of one per decision. A batch is sent early once it holds ``max_groups``
decisions, so Redis starts on it while the rest of the tick is still being encoded. Only for
a single node (Redis, Sentinel): on a Cluster the keys of one script must share a slot.

A tick that brought several decisions means the loop is busy: the batch then waits one tick
more, and the decisions of that tick join it. Under load that halves the writes, the round
trips and the work per batch on both sides, and the worker answers the requests of two ticks
together when Redis replies: on a 2-core machine, a limited gateway's throughput went from
0.86-0.87 to 0.89-0.92 of an unlimited one's (``bench/limits_overhead.py --pin --together``). A lone
decision (a quiet loop) is written at the end of its own tick, as before: waiting would only
add a loop iteration to its latency. ``storage.timeout_ms`` counts from the write.

The command is written as RESP directly: each group's keys and arguments are encoded once and
kept, so a decision costs a few list appends instead of packing eight arguments every time.
Every decision's future gets the batch's whole reply and the decision reads its own group of
it: no Outcome or LimitState is built per decision on the way back.

Decisions of one spec (the same key, limit and cost: a busy client, a route-wide limit) in one
batch join the group of the first of them when the algorithm is a window counter. The group
goes in decide.lua's joined mode: the script decides its k decisions one after another, in
the order they came, as k lone groups would have been, and answers how many fit. Redis then
charges a hot key once per batch instead of once per request, in the same round trip.
Decisions of a tick are concurrent: the joined ones are decided at their first's place in the
batch, ahead of groups that came between them.
"""

from __future__ import annotations

import asyncio
import time
from asyncio import InvalidStateError
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

from apigate.ratelimit.storage.base import (
    Algorithm,
    LimitSpec,
    Reply,
    StorageError,
    Submitted,
    spec_args,
)
from apigate.ratelimit.storage.client import RespClient
from apigate.ratelimit.storage.resp import Arg, Command, ReplyError, Script

_EVALSHA = b"EVALSHA"
# id(spec) -> (spec, its key as a RESP bulk string, its five arguments as RESP bulk strings,
# the arguments of a group of this spec alone: size 1, the five, mode; whether such a group is
# open to joining). Keyed per spec, not per group: the limiter hands the same spec objects back
# for the same client, but a caller may build a new list or tuple around them every time. The
# spec itself is kept so its id cannot be reused by another object while cached.
_Encoded = tuple[LimitSpec, bytes, bytes, bytes, bool]
# id(specs) -> (specs, the keys of a group of several specs, its arguments): a memoized plan
# hands its specs in the same list every time (a list submitted is never changed after).
_EncodedGroup = tuple[Sequence[LimitSpec], bytes, bytes]
_ENCODED_MAX = 10_000


def _bulk(value: str | int) -> bytes:
    data = value.encode() if isinstance(value, str) else b"%d" % value
    return b"$%d\r\n%s\r\n" % (len(data), data)


_ONE, _DECIDE_MODE, _JOINED_MODE = _bulk(1), _bulk(0), _bulk(5)
# One future per decision of a batch, each handed the whole reply: a shared future would be
# cancelled for all of them when one request's task is cancelled (its client left).
_Futures = list["asyncio.Future[Reply]"]
# Algorithms whose lone-spec decisions are joined (codes up to this one: the window counters,
# which decide.lua's joined mode takes).
_JOINABLE_UP_TO = int(Algorithm.SLIDING_WINDOW)
# A batch's lone-spec group open to more decisions of its spec: the spec, the futures of the
# decisions that joined it (its own is not among them), the group's index, the index of its
# part in the arguments, and where its reply starts.
_Head = tuple[LimitSpec, _Futures, int, int, int]


class DecisionBatcher:
    """Collects ``decide`` calls of one tick into one ``decide.lua`` batch per connection."""

    def __init__(
        self,
        client: RespClient,
        script: Script,
        *,
        timeout_s: float,
        max_groups: int = 32,
    ) -> None:
        self._client = client
        self._script = script
        self._timeout_s = timeout_s
        self._max_groups = max_groups
        self._head = b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(_EVALSHA), _EVALSHA, len(script.sha),
                                                     script.sha)
        self._encoded: dict[int, _Encoded] = {}
        self._encoded_groups: dict[int, _EncodedGroup] = {}
        # The batch being filled: its decisions' futures and specs, RESP parts and key count.
        self._futures: list[asyncio.Future[Reply]] = []
        self._groups: list[Sequence[LimitSpec]] = []
        self._key_parts: list[bytes] = []
        self._arg_parts: list[bytes] = []
        self._keys = 0
        # Lone-spec groups open to joining, by id(spec) (see the module docstring), and joined
        # groups that filled up and were followed by a new group of their spec.
        self._heads: dict[int, _Head] = {}
        self._full: list[_Head] = []
        # The loop the end-of-tick write is scheduled on (None: not scheduled).
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        self._waited = False  # the scheduled write has already waited one tick more
        self._loop: asyncio.AbstractEventLoop | None = None
        # Called with the seconds each batch took from its write to its reply (metrics).
        self.observe: Callable[[float], None] | None = None

    def submit(
        self, specs: Sequence[LimitSpec], future: asyncio.Future[Reply] | None = None
    ) -> Submitted:
        """Queue one decision (mode 0) of ``specs``: a future of the batch's reply (``future``
        when given) and the decision's place in it."""
        loop = self._scheduled_on
        # The tick's first decision schedules the end-of-tick write. Checked per loop, so a
        # loop that stopped before running that write cannot leave the batcher stuck.
        if loop is None or loop.is_closed():
            loop = self._schedule()
        fut = loop.create_future() if future is None else future
        # Caches keyed by id() hold the object itself: while an entry exists, no other object
        # can have its id, so an entry found for a live spec is that spec's.
        if len(specs) == 1:  # the common case, without a loop
            spec = specs[0]
            head = self._heads.get(id(spec))
            if head is not None:
                joined = head[1]
                if len(joined) < self._max_groups:
                    joined.append(fut)
                    return fut, 0  # handed a reply of its own (see _answer_joined)
                self._full.append(head)  # this decision starts a new group of the spec
            futures = self._futures
            pos = len(futures) + 3 * self._keys  # one allowed flag per group, three ints per spec
            enc = self._encoded.get(id(spec)) or self._encode(spec)
            if enc[4]:
                self._heads[id(spec)] = (spec, [], len(futures), len(self._arg_parts), pos)
            futures.append(fut)
            self._groups.append(specs)
            self._key_parts.append(enc[1])
            self._arg_parts.append(enc[3])
            self._keys += 1
        else:
            futures = self._futures
            pos = len(futures) + 3 * self._keys
            group = self._encoded_groups.get(id(specs)) or self._encode_group(specs)
            futures.append(fut)
            self._groups.append(specs)
            self._key_parts.append(group[1])
            self._arg_parts.append(group[2])
            self._keys += len(specs)
        if len(futures) >= self._max_groups:
            self._send()
        return fut, pos

    def _schedule(self) -> asyncio.AbstractEventLoop:
        """The running loop, with the end-of-tick write scheduled on it."""
        loop = self._loop
        if loop is None or loop.is_closed():
            # asyncio.get_running_loop() costs a getpid() syscall: look it up once.
            loop = self._loop = asyncio.get_running_loop()
        self._scheduled_on = loop
        self._waited = False
        loop.call_soon(self._end_of_tick, loop)
        return loop

    def _encode(self, spec: LimitSpec) -> _Encoded:
        if len(self._encoded) >= _ENCODED_MAX:
            self._encoded.clear()
        five = b"".join(_bulk(a) for a in spec_args(spec))
        joinable = spec.algorithm <= _JOINABLE_UP_TO
        enc = (spec, _bulk(spec.key), five, _ONE + five + _DECIDE_MODE, joinable)
        self._encoded[id(spec)] = enc
        return enc

    def _encode_group(self, specs: Sequence[LimitSpec]) -> _EncodedGroup:
        if len(self._encoded_groups) >= _ENCODED_MAX:
            self._encoded_groups.clear()
        encoded = [self._encoded.get(id(spec)) or self._encode(spec) for spec in specs]
        group = (
            specs,
            b"".join(enc[1] for enc in encoded),
            b"".join((_bulk(len(specs)), *(enc[2] for enc in encoded), _DECIDE_MODE)),
        )
        self._encoded_groups[id(specs)] = group
        return group

    def _end_of_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._waited and self._several():  # a busy loop: the next tick's join this write
            self._waited = True
            loop.call_soon(self._end_of_tick, loop)
            return
        self._scheduled_on = None
        self._send()

    def _several(self) -> bool:
        """The batch holds more than one decision (groups, or decisions that joined one)."""
        return len(self._futures) > 1 or any(head[1] for head in self._heads.values())

    def _send(self) -> None:
        futures, groups = self._futures, self._groups
        if not groups:
            return
        joins = None
        if self._heads:
            joins = self._encode_joined()
            self._heads = {}
        keys = self._keys
        args = 2 * len(groups) + 5 * keys + (len(joins) if joins else 0)  # + k of a joined group
        data = b"".join((
            b"*%d\r\n" % (3 + keys + args), self._head, _bulk(keys),
            *self._key_parts, *self._arg_parts,
        ))
        self._futures, self._groups, self._key_parts, self._arg_parts, self._keys = (
            [], [], [], [], 0
        )
        # Already at the end of the tick (or a full batch): write now, not one tick later.
        sink = _BatchReply(self, futures, groups, len(groups) + 3 * keys, joins)
        if not self._client.try_send_packed_now(data, sink, self._timeout_s):
            self._via_task(futures, groups, self._timeout_s, joins)  # not connected: connect first

    def _encode_joined(self) -> list[_Head] | None:
        """Each group that others joined becomes decide.lua's joined mode: k decisions."""
        joins = [head for head in self._heads.values() if head[1]]
        if self._full:
            joins += self._full
            self._full = []
        for spec, joined, _, arg, _ in joins:
            enc = self._encoded.get(id(spec)) or self._encode(spec)  # cleared since?
            count = b"%d" % (1 + len(joined))
            self._arg_parts[arg] = b"%s%s%s$%d\r\n%s\r\n" % (
                _ONE, enc[2], _JOINED_MODE, len(count), count
            )
        return joins or None

    def _command(self, groups: list[Sequence[LimitSpec]],
                 joins: list[_Head] | None) -> Command:
        """The batch as an EVALSHA argument tuple (for the slow path through run_script)."""
        joined = {head[2]: 1 + len(head[1]) for head in joins or ()}
        keys: list[Arg] = []
        args: list[Arg] = []
        for index, specs in enumerate(groups):
            args.append(len(specs))
            for s in specs:
                keys.append(s.key)
                args += spec_args(s)
            args += (5, joined[index]) if index in joined else (0,)  # mode: joined k, decide
        return (_EVALSHA, self._script.sha, len(keys), *keys, *args)

    def _via_task(self, futures: _Futures, groups: list[Sequence[LimitSpec]],
                  timeout_s: float, joins: list[_Head] | None) -> None:
        started = time.perf_counter()
        task = asyncio.get_running_loop().create_task(self._client.run_script(
            self._script, self._command(groups, joins), timeout_s=timeout_s
        ))
        expected = len(groups) + 3 * sum(len(specs) for specs in groups)
        task.add_done_callback(
            lambda done: self._task_done(done, futures, expected, started, joins)
        )

    def _task_done(self, done: asyncio.Task[Any], futures: _Futures, expected: int,
                   started: float, joins: list[_Head] | None) -> None:
        if self.observe is not None:
            self.observe(time.perf_counter() - started)
        if done.cancelled():
            _fail(futures, StorageError("decision batch cancelled"), joins)
        elif (exc := done.exception()) is not None:
            _fail(futures, exc, joins)
        else:
            _deliver(done.result(), futures, expected, joins)


class _BatchReply:
    """The reply sink of one batch (see ``resp.ReplySink``): acts in the tick Redis answers."""

    __slots__ = ("_batcher", "_done", "_expected", "_futures", "_groups", "_joins", "_sent_at")

    def __init__(self, batcher: DecisionBatcher, futures: _Futures,
                 groups: list[Sequence[LimitSpec]], expected: int,
                 joins: list[_Head] | None) -> None:
        self._batcher = batcher
        self._futures = futures
        self._groups = groups
        self._joins = joins
        self._expected = expected  # the reply's length: one allowed + 3 per spec, per group
        self._sent_at = time.perf_counter()
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any, /) -> None:
        self._done = True
        self._observe()
        _deliver(result, self._futures, self._expected, self._joins)

    def set_exception(self, exception: BaseException, /) -> None:
        self._done = True
        self._observe()
        if isinstance(exception, ReplyError) and str(exception).startswith("NOSCRIPT"):
            # The server lost its scripts (restart, SCRIPT FLUSH): run_script loads and retries,
            # within what is left of the batch's deadline.
            left = self._batcher._timeout_s - (time.perf_counter() - self._sent_at)
            self._batcher._via_task(self._futures, self._groups, max(left, 0.0), self._joins)
        else:
            _fail(self._futures, exception, self._joins)

    def _observe(self) -> None:
        observe = self._batcher.observe
        if observe is not None:
            observe(time.perf_counter() - self._sent_at)


def _deliver(reply: Any, futures: _Futures, expected: int,
             joins: list[_Head] | None) -> None:
    """Hand the batch's decisions the script's reply, if it is ``expected`` long; a reply it
    cannot read fails the decisions not answered yet (none is left waiting)."""
    if type(reply) is not list or len(reply) != expected:
        _fail(futures, StorageError(f"decide.lua returned {reply!r}"), joins)
        return
    try:
        for joined in joins or ():
            _answer_joined(reply, joined)
        for fut in futures:
            # Not contextlib.suppress: a context manager per decision. Not fut.done() first:
            # a call per decision for what rarely is.
            try:  # noqa: SIM105
                fut.set_result(reply)
            except InvalidStateError:  # cancelled: its client left
                pass
    except Exception as exc:  # not numbers where numbers belong
        _fail(futures, StorageError(f"decide.lua returned {reply!r}: {exc}"), joins)


def _answer_joined(reply: Reply, head: _Head) -> None:
    """Give each decision of a joined group its own answer from the group's ``[n, left, reset,
    retry]``: n fitted, one after another.

    The i-th (from 1) passed if i <= n, with ``left + (n - i) * cost`` remaining; the others
    were refused with ``left`` and ``retry``. The group's own decision, the first, finds its
    answer written into the batch's reply at the group's place.
    """
    spec, joined, _, _, pos = head
    fitted, left, reset, retry = reply[pos:pos + 4]
    if fitted == -1:  # the script refused the spec, for every one of them
        reply[pos:pos + 4] = refusal = [-1, 0, 0, 0]
    else:
        refusal = [0, left, reset, retry]
    passed = max(fitted - 1, 0)  # the joined decisions that fitted: those after the first
    cost = spec.cost
    remaining = left + fitted * cost  # before the first: each that fitted takes cost from it
    if fitted > 0:  # the first passed (else the group's answer is already its own)
        remaining -= cost
        reply[pos], reply[pos + 1], reply[pos + 3] = 1, remaining, 0
    for fut in joined[:passed]:
        remaining -= cost
        try:  # noqa: SIM105 (see _deliver)
            fut.set_result([1, remaining, reset, 0])
        except InvalidStateError:  # cancelled: its client left
            pass
    for fut in joined[passed:]:
        try:  # noqa: SIM105 (see _deliver)
            fut.set_result(refusal.copy())
        except InvalidStateError:  # cancelled: its client left
            pass


def _fail(futures: _Futures, exc: BaseException, joins: list[_Head] | None = None) -> None:
    for fut in chain(futures, *(head[1] for head in joins or ())):
        if not fut.done():
            fut.set_exception(StorageError(str(exc) or type(exc).__name__))
