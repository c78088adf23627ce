"""Decisions made in one event-loop tick, sent to one Redis node as one EVALSHA.

``decide.lua`` accepts several decision groups back to back and decides each as if it were a
call of its own, so a tick's decisions cost Redis one script call (one ``TIME``, one script
dispatch) instead of one per decision. A batch is sent early once it holds ``max_groups``
decisions, so Redis starts on it while the rest of the tick is still being encoded. Only for
a single node (Redis, Sentinel): on a Cluster the keys of one script must share a slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from apigate.ratelimit.storage.base import LimitSpec, Outcome, StorageError
from apigate.ratelimit.storage.client import RespClient
from apigate.ratelimit.storage.resp import Arg, Command, ReplyError, Script

_EVALSHA = b"EVALSHA"
Waiter = tuple["asyncio.Future[Outcome]", int]


class DecisionBatcher:
    """Collects ``decide`` calls of one tick into one ``decide.lua`` batch per connection."""

    def __init__(
        self,
        client: RespClient,
        script: Script,
        parse: Any,
        *,
        timeout_s: float,
        max_groups: int = 32,
    ) -> None:
        self._client = client
        self._script = script
        self._parse = parse  # (reply, position, spec count) -> Outcome, raising StorageError
        self._timeout_s = timeout_s
        self._max_groups = max_groups
        self._keys: list[Arg] = []
        self._args: list[Arg] = []
        self._waiters: list[Waiter] = []
        # The loop the end-of-tick flush is scheduled on (None: not scheduled). Keyed by loop,
        # so a loop that stopped before running the flush cannot leave the batcher stuck.
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0

    def submit(self, specs: Sequence[LimitSpec], codes: dict[Any, int]) -> asyncio.Future[Outcome]:
        """Queue one decision (mode 0) of ``specs``; its Outcome arrives on the future."""
        loop = self._loop
        if loop is None or loop.is_closed():
            # asyncio.get_running_loop() costs a getpid() syscall per call: look it up once.
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outcome] = loop.create_future()
        if self._scheduled_on is not loop:
            self._scheduled_on = loop
            loop.call_soon(self._end_of_tick)
        if len(specs) == 1:  # the common case, without a loop
            s = specs[0]
            self._keys.append(s.key)
            self._args += (1, codes[s.algorithm], s.limit, s.window_ms, s.burst, s.cost, 0)
        else:
            args = self._args
            args.append(len(specs))
            for s in specs:
                self._keys.append(s.key)
                args += (codes[s.algorithm], s.limit, s.window_ms, s.burst, s.cost)
            args.append(0)
        self._waiters.append((fut, len(specs)))
        if len(self._waiters) >= self._max_groups:
            self._send()
        return fut

    def _end_of_tick(self) -> None:
        self._scheduled_on = None
        self._send()

    def _send(self) -> None:
        waiters = self._waiters
        if not waiters:
            return
        specs = len(self._keys)
        command: Command = (_EVALSHA, self._script.sha, specs, *self._keys, *self._args)
        self._keys, self._args, self._waiters = [], [], []
        self.batches += 1
        # Already at the end of the tick (or a full batch): write now, not one tick later.
        sink = _BatchReply(self, command, waiters, len(waiters) + 3 * specs)
        if not self._client.try_send_now(command, sink, self._timeout_s):
            self._via_task(command, waiters)  # not connected: connect (within the timeout) first

    def _via_task(self, command: Command, waiters: list[Waiter]) -> None:
        task = asyncio.get_running_loop().create_task(
            self._client.run_script(self._script, command, timeout_s=self._timeout_s)
        )
        task.add_done_callback(lambda done: self._task_done(done, waiters))

    def _task_done(self, done: asyncio.Task[Any], waiters: list[Waiter]) -> None:
        if done.cancelled():
            _fail(waiters, StorageError("decision batch cancelled"))
        elif (exc := done.exception()) is not None:
            _fail(waiters, exc)
        else:
            self._deliver(done.result(), waiters, len(waiters) + 3 * sum(n for _, n in waiters))

    def _deliver(self, reply: Any, waiters: list[Waiter], expected: int) -> None:
        """Hand each decision of a batch its part of the script's reply (``expected`` long)."""
        if type(reply) is not list or len(reply) != expected:
            _fail(waiters, StorageError(f"decide.lua returned {reply!r}"))
            return
        parse = self._parse
        pos = 0
        for fut, count in waiters:
            if not fut.done():
                try:
                    fut.set_result(parse(reply, pos, count))
                except StorageError as error:
                    fut.set_exception(error)
            pos += 1 + 3 * count


class _BatchReply:
    """The reply sink of one batch (see ``resp.ReplySink``): acts in the tick Redis answers."""

    __slots__ = ("_batcher", "_command", "_done", "_expected", "_waiters")

    def __init__(
        self, batcher: DecisionBatcher, command: Command, waiters: list[Waiter], expected: int
    ) -> None:
        self._batcher = batcher
        self._command = command
        self._waiters = waiters
        self._expected = expected  # the reply's length: one allowed + 3 per spec, per group
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any, /) -> None:
        self._done = True
        self._batcher._deliver(result, self._waiters, self._expected)

    def set_exception(self, exception: BaseException, /) -> None:
        self._done = True
        if isinstance(exception, ReplyError) and str(exception).startswith("NOSCRIPT"):
            # The server lost its scripts (restart, SCRIPT FLUSH): run_script loads and retries.
            self._batcher._via_task(self._command, self._waiters)
        else:
            _fail(self._waiters, exception)


def _fail(waiters: list[Waiter], exc: BaseException) -> None:
    for fut, _ in waiters:
        if not fut.done():
            fut.set_exception(StorageError(str(exc) or type(exc).__name__))
