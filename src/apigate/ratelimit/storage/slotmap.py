"""Which Redis Cluster master serves which slot, and one RESP client per node.

The map is read with ``CLUSTER SLOTS`` from any reachable node (known masters first, then the
configured seeds). Refreshes are shared (one in flight at a time) and spaced by
``MIN_REFRESH_S``, so a dead node during a failover costs fast failures, not a storm of
``CLUSTER SLOTS`` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import unquote, urlsplit

from apigate.ratelimit.storage.base import StorageError
from apigate.ratelimit.storage.client import RespClient
from apigate.ratelimit.storage.resp import Endpoint, Script

SLOTS = 16384
MIN_REFRESH_S = 0.1
NODE_TIMEOUT_S = 0.5


def parse_cluster_url(url: str) -> tuple[list[Endpoint], Endpoint]:
    """``redis+cluster://u:p@h1:7000,h2:7001`` -> (seed endpoints, login template)."""
    parts = urlsplit(url)
    if parts.scheme != "redis+cluster":
        raise ValueError(f"not a redis+cluster:// URL: {url!r}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    login = Endpoint(
        host="",
        port=0,
        username=unquote(user) or None,
        password=unquote(password) if colon else None,
    )
    seeds = []
    for hostport in hosts.split(","):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad cluster node {hostport!r} in {url!r}")
        seeds.append(replace(login, host=host.strip("[]"), port=int(port)))
    return seeds, login


class SlotMap:
    """Slot -> master endpoint, refreshed on demand; owns the node clients."""

    def __init__(self, seeds: Sequence[Endpoint], login: Endpoint, *, scripts: Sequence[Script]):
        self._seeds = list(seeds)
        self._login = login
        self._scripts = tuple(scripts)
        self._owner: list[Endpoint | None] = [None] * SLOTS
        self._clients: dict[tuple[str, int], RespClient] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = float("-inf")

    def endpoint(self, address: str) -> Endpoint:
        """``"127.0.0.1:7001"`` -> that node's Endpoint with the cluster's login."""
        host, _, port = address.rpartition(":")
        return replace(self._login, host=host.strip("[]"), port=int(port))

    def client(self, node: Endpoint) -> RespClient:
        """The (lazily connecting) client of ``node``."""
        client = self._clients.get((node.host, node.port))
        if client is None:
            client = RespClient.for_endpoint(
                node, scripts=self._scripts, connect_timeout=NODE_TIMEOUT_S, backoff_max=0.5
            )
            self._clients[(node.host, node.port)] = client
        return client

    async def master(self, slot: int, deadline: float) -> Endpoint:
        """The master serving ``slot``; reads the map first if it has never been read."""
        node = self._owner[slot]
        if node is None:
            await self.refresh(deadline)
            node = self._owner[slot]
            if node is None:
                raise StorageError(f"no master serves slot {slot}")
        return node

    async def masters(self, deadline: float) -> list[Endpoint]:
        """Every master in the map (reading it first if needed)."""
        if self._owner[0] is None:
            await self.refresh(deadline)
        found = {(n.host, n.port): n for n in self._owner if n is not None}
        return list(found.values())

    def moved(self, slot: int, address: str) -> None:
        """A ``MOVED slot address`` answer: trust it now, re-read the whole map soon."""
        self._owner[slot] = self.endpoint(address)
        self._start_refresh()

    async def refresh_changed(self, slot: int, old: Endpoint | None, deadline: float) -> bool:
        """Re-read the map (at most every MIN_REFRESH_S); True if ``slot`` has a new master."""
        with contextlib.suppress(StorageError):
            await self.refresh(deadline)
        new = self._owner[slot]
        return new is not None and (old is None or (new.host, new.port) != (old.host, old.port))

    async def refresh(self, deadline: float) -> None:
        """Wait (until ``deadline``) for a shared refresh of the map."""
        task = self._start_refresh()
        if task is None:
            return
        left = deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(asyncio.shield(task), max(left, 0.0))
        except TimeoutError:
            raise StorageError("cluster slot map refresh did not finish in time") from None

    def _start_refresh(self) -> asyncio.Task[None] | None:
        if self._refreshing is not None:
            return self._refreshing
        loop = asyncio.get_running_loop()
        if loop.time() - self._refreshed_at < MIN_REFRESH_S:
            return None
        self._refreshing = loop.create_task(self._refresh())
        self._refreshing.add_done_callback(self._refreshed)
        return self._refreshing

    def _refreshed(self, task: asyncio.Task[None]) -> None:
        self._refreshing = None
        self._refreshed_at = asyncio.get_running_loop().time()
        if not task.cancelled():
            task.exception()  # retrieved: a failed background refresh is not an error by itself

    async def _refresh(self) -> None:
        candidates = {(n.host, n.port): n for n in self._owner if n is not None}
        for seed in self._seeds:
            candidates.setdefault((seed.host, seed.port), seed)
        errors = []
        for node in candidates.values():
            try:
                reply = await self.client(node).execute(
                    (b"CLUSTER", b"SLOTS"), timeout_s=NODE_TIMEOUT_S
                )
            except StorageError as exc:
                errors.append(f"{node.host}:{node.port}: {exc}")
                continue
            self._apply(reply, node)
            return
        raise StorageError(f"no cluster node answered CLUSTER SLOTS: {'; '.join(errors)}")

    def _apply(self, reply: Any, asked: Endpoint) -> None:
        """``[[0, 5460, [b"127.0.0.1", 7000, b"id"], <replicas>], ...]`` -> the slot owners."""
        owner: list[Endpoint | None] = [None] * SLOTS
        try:
            for entry in reply:
                start, end, master = int(entry[0]), int(entry[1]), entry[2]
                host = master[0].decode() or asked.host
                node = replace(self._login, host=host, port=int(master[1]))
                owner[start : end + 1] = [node] * (end - start + 1)
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            raise StorageError(f"unexpected CLUSTER SLOTS reply: {exc}") from exc
        self._owner = owner

    async def aclose(self) -> None:
        """Stop refreshing and close every node client."""
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(BaseException):
                await self._refreshing
        await asyncio.gather(*(c.aclose() for c in self._clients.values()))
        self._clients.clear()
