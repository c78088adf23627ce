"""Decisions made in one event-loop tick, sent to one Redis node as one EVALSHA.

``decide.lua`` accepts several decision groups back to back and decides each as if it were a
call of its own, so a tick's decisions cost Redis one script call (one ``TIME``, one script
dispatch) instead of one per decision. A batch is sent early once it holds ``max_groups``
decisions, so Redis starts on it while the rest of the tick is still being encoded. Only for
a single node (Redis, Sentinel): on a Cluster the keys of one script must share a slot.

The command is written as RESP directly: each spec's key and arguments are encoded once and
kept (the limiter hands the same spec objects back for the same client), so a decision costs
a few list appends instead of packing eight arguments every time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from apigate.ratelimit.storage.base import LimitSpec, Outcome, StorageError
from apigate.ratelimit.storage.client import RespClient
from apigate.ratelimit.storage.resp import Arg, Command, ReplyError, Script

_EVALSHA = b"EVALSHA"
Waiter = tuple["asyncio.Future[Outcome]", Sequence[LimitSpec]]
# id(spec) -> (spec, the key as a RESP bulk string, its five arguments as RESP bulk strings).
# The spec itself is kept so its id cannot be reused by another object while cached.
_Encoded = tuple[LimitSpec, bytes, bytes]
_ENCODED_MAX = 10_000


def _bulk(value: str | int) -> bytes:
    data = value.encode() if isinstance(value, str) else b"%d" % value
    return b"$%d\r\n%s\r\n" % (len(data), data)


_ONE, _DECIDE_MODE = _bulk(1), _bulk(0)


class DecisionBatcher:
    """Collects ``decide`` calls of one tick into one ``decide.lua`` batch per connection."""

    def __init__(
        self,
        client: RespClient,
        script: Script,
        parse: Any,
        codes: dict[Any, int],
        *,
        timeout_s: float,
        max_groups: int = 32,
    ) -> None:
        self._client = client
        self._script = script
        self._parse = parse  # (reply, position, spec count) -> Outcome, raising StorageError
        self._codes = codes  # Algorithm -> decide.lua's code
        self._timeout_s = timeout_s
        self._max_groups = max_groups
        self._head = b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(_EVALSHA), _EVALSHA, len(script.sha),
                                                     script.sha)
        self._encoded: dict[int, _Encoded] = {}
        self._key_parts: list[bytes] = []
        self._arg_parts: list[bytes] = []
        self._arg_count = 0
        self._waiters: list[Waiter] = []
        # The loop the end-of-tick flush is scheduled on (None: not scheduled). Keyed by loop,
        # so a loop that stopped before running the flush cannot leave the batcher stuck.
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Called with the seconds each batch took from its write to its reply (metrics).
        self.observe: Callable[[float], None] | None = None

    def submit(self, specs: Sequence[LimitSpec]) -> asyncio.Future[Outcome]:
        """Queue one decision (mode 0) of ``specs``; its Outcome arrives on the future."""
        loop = self._loop
        if loop is None or loop.is_closed():
            # asyncio.get_running_loop() costs a getpid() syscall per call: look it up once.
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outcome] = loop.create_future()
        if self._scheduled_on is not loop:
            self._scheduled_on = loop
            loop.call_soon(self._end_of_tick)
        encoded = self._encoded
        if len(specs) == 1:  # the common case, without a loop
            spec = specs[0]
            enc = encoded.get(id(spec))
            if enc is None or enc[0] is not spec:
                enc = self._encode(spec)
            self._key_parts.append(enc[1])
            self._arg_parts += (_ONE, enc[2], _DECIDE_MODE)
            self._arg_count += 7
        else:
            self._arg_parts.append(_bulk(len(specs)))
            for spec in specs:
                enc = encoded.get(id(spec))
                if enc is None or enc[0] is not spec:
                    enc = self._encode(spec)
                self._key_parts.append(enc[1])
                self._arg_parts.append(enc[2])
            self._arg_parts.append(_DECIDE_MODE)
            self._arg_count += 2 + 5 * len(specs)
        self._waiters.append((fut, specs))
        if len(self._waiters) >= self._max_groups:
            self._send()
        return fut

    def _encode(self, spec: LimitSpec) -> _Encoded:
        if len(self._encoded) >= _ENCODED_MAX:
            self._encoded.clear()
        args = (self._codes[spec.algorithm], spec.limit, spec.window_ms, spec.burst, spec.cost)
        enc = (spec, _bulk(spec.key), b"".join(_bulk(a) for a in args))
        self._encoded[id(spec)] = enc
        return enc

    def _end_of_tick(self) -> None:
        self._scheduled_on = None
        self._send()

    def _send(self) -> None:
        waiters = self._waiters
        if not waiters:
            return
        keys = len(self._key_parts)
        data = b"".join((
            b"*%d\r\n" % (3 + keys + self._arg_count), self._head, _bulk(keys),
            *self._key_parts, *self._arg_parts,
        ))
        self._key_parts, self._arg_parts, self._arg_count, self._waiters = [], [], 0, []
        # Already at the end of the tick (or a full batch): write now, not one tick later.
        sink = _BatchReply(self, waiters, len(waiters) + 3 * keys)
        if not self._client.try_send_packed_now(data, sink, self._timeout_s):
            self._via_task(waiters, self._timeout_s)  # not connected: connect first

    def _command(self, waiters: list[Waiter]) -> Command:
        """The batch as an EVALSHA argument tuple (for the slow path through run_script)."""
        keys: list[Arg] = []
        args: list[Arg] = []
        for _, specs in waiters:
            args.append(len(specs))
            for s in specs:
                keys.append(s.key)
                args += (self._codes[s.algorithm], s.limit, s.window_ms, s.burst, s.cost)
            args.append(0)
        return (_EVALSHA, self._script.sha, len(keys), *keys, *args)

    def _via_task(self, waiters: list[Waiter], timeout_s: float) -> None:
        started = time.perf_counter()
        task = asyncio.get_running_loop().create_task(self._client.run_script(
            self._script, self._command(waiters), timeout_s=timeout_s
        ))
        task.add_done_callback(lambda done: self._task_done(done, waiters, started))

    def _task_done(self, done: asyncio.Task[Any], waiters: list[Waiter], started: float) -> None:
        if self.observe is not None:
            self.observe(time.perf_counter() - started)
        if done.cancelled():
            _fail(waiters, StorageError("decision batch cancelled"))
        elif (exc := done.exception()) is not None:
            _fail(waiters, exc)
        else:
            expected = len(waiters) + 3 * sum(len(specs) for _, specs in waiters)
            self._deliver(done.result(), waiters, expected)

    def _deliver(self, reply: Any, waiters: list[Waiter], expected: int) -> None:
        """Hand each decision of a batch its part of the script's reply (``expected`` long)."""
        if type(reply) is not list or len(reply) != expected:
            _fail(waiters, StorageError(f"decide.lua returned {reply!r}"))
            return
        parse = self._parse
        pos = 0
        for fut, specs in waiters:
            count = len(specs)
            if not fut.done():
                try:
                    fut.set_result(parse(reply, pos, count))
                except StorageError as error:
                    fut.set_exception(error)
            pos += 1 + 3 * count


class _BatchReply:
    """The reply sink of one batch (see ``resp.ReplySink``): acts in the tick Redis answers."""

    __slots__ = ("_batcher", "_done", "_expected", "_sent_at", "_waiters")

    def __init__(self, batcher: DecisionBatcher, waiters: list[Waiter], expected: int) -> None:
        self._batcher = batcher
        self._waiters = waiters
        self._expected = expected  # the reply's length: one allowed + 3 per spec, per group
        self._sent_at = time.perf_counter()
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any, /) -> None:
        self._done = True
        self._observe()
        self._batcher._deliver(result, self._waiters, self._expected)

    def set_exception(self, exception: BaseException, /) -> None:
        self._done = True
        self._observe()
        if isinstance(exception, ReplyError) and str(exception).startswith("NOSCRIPT"):
            # The server lost its scripts (restart, SCRIPT FLUSH): run_script loads and retries,
            # within what is left of the batch's deadline.
            left = self._batcher._timeout_s - (time.perf_counter() - self._sent_at)
            self._batcher._via_task(self._waiters, max(left, 0.0))
        else:
            _fail(self._waiters, exception)

    def _observe(self) -> None:
        observe = self._batcher.observe
        if observe is not None:
            observe(time.perf_counter() - self._sent_at)


def _fail(waiters: list[Waiter], exc: BaseException) -> None:
    for fut, _ in waiters:
        if not fut.done():
            fut.set_exception(StorageError(str(exc) or type(exc).__name__))
