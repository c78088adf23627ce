"""One lazily (re)connected RESP connection with deadlines, back-off and EVALSHA.

The hot paths (``try_send_packed_now`` for decision batches, ``run_script`` on an open
connection) take no lock and start no task. Connecting happens in a
shielded task that callers wait on for at most their own remaining time, so a slow or hung
server never holds a caller past its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from apigate.ratelimit.storage.base import StorageError
from apigate.ratelimit.storage.resp import (
    Arg,
    Command,
    Endpoint,
    ReplyError,
    ReplySink,
    Script,
    _Connection,
    _Counters,
)

Resolver = Callable[[], Awaitable[Endpoint]]
Watch = Callable[["RespClient"], Coroutine[Any, Any, None]]


class RespClient:
    """A RESP client for one server (found anew by ``resolve`` on every connect)."""

    def __init__(
        self,
        resolve: Resolver,
        *,
        scripts: Sequence[Script] = (),
        connect_timeout: float = 1.0,
        dead_after: float = 1.0,
        backoff_max: float = 1.0,
        require_master: bool = False,
        drop_on_readonly: bool = False,
        watch: Watch | None = None,
    ) -> None:
        self._resolve = resolve
        self._scripts = tuple(scripts)
        self._connect_timeout = connect_timeout
        self._dead_after = dead_after
        self._backoff_max = backoff_max
        self._require_master = require_master
        self._drop_on_readonly = drop_on_readonly
        self._watch = watch  # runs in the background from the first connection to aclose()
        self._watcher: asyncio.Task[None] | None = None
        self._counters = _Counters()
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._closed = False
        self.endpoint: Endpoint | None = None

    @classmethod
    def for_endpoint(cls, endpoint: Endpoint, **options: Any) -> RespClient:
        """A client that always connects to ``endpoint``."""

        async def resolve() -> Endpoint:
            return endpoint

        return cls(resolve, **options)

    @property
    def writes(self) -> int:
        """Socket writes made so far (one per event-loop tick with commands)."""
        return self._counters.writes

    def try_send_packed_now(self, packed: bytes, sink: ReplySink, timeout_s: float) -> bool:
        """Write a RESP command now on the open connection, its reply to ``sink``; False if
        not connected."""
        conn = self._conn
        if conn is None or not conn.usable:
            return False
        conn.send_packed_now(packed, sink, timeout_s)
        return True

    async def execute(self, args: Command, *, timeout_s: float) -> Any:
        """Send one command; its reply, or ReplyError / StorageError within ``timeout_s``."""
        conn, timeout_s = await self._usable(timeout_s)
        return await conn.send(args, timeout_s)

    async def execute_asking(self, args: Command, *, timeout_s: float) -> Any:
        """``ASKING`` then ``args`` in the same write (a Redis Cluster ASK redirection)."""
        conn, timeout_s = await self._usable(timeout_s)
        conn.send_discard((b"ASKING",))
        return await conn.send(args, timeout_s)

    async def _usable(self, timeout_s: float) -> tuple[_Connection, float]:
        """The open connection, or a new one; with the time left of ``timeout_s``."""
        conn = self._conn
        if conn is not None and conn.usable:
            return conn, timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conn = await self._connection(deadline)
        return conn, max(deadline - loop.time(), 0.0)

    async def evalsha(
        self, script: Script, keys: Sequence[str], args: Sequence[Arg], *, timeout_s: float,
        asking: bool = False,
    ) -> Any:
        """EVALSHA ``script``; on NOSCRIPT load it and retry once, inside the same deadline."""
        command = (b"EVALSHA", script.sha, len(keys), *keys, *args)
        return await self.run_script(script, command, timeout_s=timeout_s, asking=asking)

    async def run_script(
        self, script: Script, command: Command, *, timeout_s: float, asking: bool = False
    ) -> Any:
        """Send a ready ``EVALSHA <script.sha> ...`` command; reload the script on NOSCRIPT."""
        conn = self._conn
        if conn is not None and conn.usable and not asking:  # the hot path: no extra frames
            deadline = time.monotonic() + timeout_s
            try:
                return await conn.send(command, timeout_s)
            except ReplyError as exc:
                self._check_role(exc)
                if not str(exc).startswith("NOSCRIPT"):
                    raise
            left = deadline - time.monotonic()  # the reload shares the caller's deadline
            if left <= 0:
                raise StorageError("redis did not answer in time")
            return await self._reload_and_run(script, command, left, asking)
        deadline = asyncio.get_running_loop().time() + timeout_s
        send = self.execute_asking if asking else self.execute
        try:
            return await send(command, timeout_s=timeout_s)
        except ReplyError as exc:
            self._check_role(exc)
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self._reload_and_run(script, command, self._left(deadline), asking)

    def _check_role(self, exc: ReplyError) -> None:
        # A master demoted by a failover answers writes with READONLY: find the new one.
        if self._drop_on_readonly and str(exc).startswith("READONLY"):
            self.drop()

    async def _reload_and_run(
        self, script: Script, command: Command, timeout_s: float, asking: bool
    ) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout_s
        await self.execute((b"SCRIPT", b"LOAD", script.source), timeout_s=timeout_s)
        send = self.execute_asking if asking else self.execute
        return await send(command, timeout_s=self._left(deadline))

    @staticmethod
    def _left(deadline: float) -> float:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise StorageError("redis did not answer in time")
        return left

    def drop(self) -> None:
        """Abort the current connection (e.g. after READONLY); the next call reconnects."""
        if self._conn is not None:
            self._conn.close(abort=True)
            self._conn = None

    async def aclose(self) -> None:
        """Close the connection and stop connecting; idempotent."""
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(BaseException):
                await self._watcher
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.lost), 1.0)
            if not conn.lost.done():
                conn.close(abort=True)

    async def _connection(self, deadline: float) -> _Connection:
        if self._closed:
            raise StorageError("redis client is closed")
        loop = asyncio.get_running_loop()
        if self._connecting is None:
            if loop.time() < self._retry_at:
                wait = self._retry_at - loop.time()
                raise StorageError(f"redis unreachable; next connect attempt in {wait:.2f}s")
            self._connecting = loop.create_task(self._connect())
            self._connecting.add_done_callback(self._connected)
        try:
            return await asyncio.wait_for(
                asyncio.shield(self._connecting), max(deadline - loop.time(), 0.0)
            )
        except TimeoutError:
            raise StorageError("redis did not accept a connection in time") from None

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        self._connecting = None
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here so an unawaited failure is not logged
        loop = asyncio.get_running_loop()
        if exc is None:
            self._failures = 0
            self._conn = task.result()
            if self._closed:
                self._conn.close()
            elif self._watch is not None and self._watcher is None:
                self._watcher = loop.create_task(self._watch(self))
            return
        self._failures += 1
        self._retry_at = loop.time() + min(self._backoff_max, 0.05 * 2 ** (self._failures - 1))

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                endpoint = await self._resolve()
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self._counters, self._dead_after),
                    endpoint.host,
                    endpoint.port,
                    ssl=endpoint.tls,
                    server_hostname=endpoint.host if endpoint.tls else None,
                )
                await self._handshake(conn, endpoint)
        except (OSError, TimeoutError, StorageError) as exc:
            if conn is not None:
                conn.close(abort=True)
            raise StorageError(f"cannot connect to redis: {exc!r}") from exc
        self.endpoint = endpoint
        return conn

    async def _handshake(self, conn: _Connection, endpoint: Endpoint) -> None:
        commands: list[Command] = []
        if endpoint.password is not None:
            user = (endpoint.username,) if endpoint.username else ()
            commands.append((b"AUTH", *user, endpoint.password))
        if endpoint.db:
            commands.append((b"SELECT", endpoint.db))
        commands.extend((b"SCRIPT", b"LOAD", script.source) for script in self._scripts)
        if self._require_master:
            commands.append((b"ROLE",))
        futures = [conn.send(command, self._connect_timeout) for command in commands]
        replies = await asyncio.gather(*futures, return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise StorageError(f"redis refused the handshake: {reply}")
        role = replies[-1] if self._require_master else None
        if isinstance(role, list) and role[0] != b"master":
            raise StorageError(f"{endpoint.host}:{endpoint.port} is not a master")
