"""Rate-limit storage on a Redis master found through Sentinel (``redis+sentinel://``).

The hot path is the same coalescing RESP client as ``RedisStorage``; only how it connects
changes: every (re)connect asks the sentinels for the master's address and checks ``ROLE``.
A connection lost in a failover, a ``READONLY`` answer from a demoted master, or Sentinel
naming another master (checked every ``WATCH_S``) drops the connection, so the next decision
connects to the new master without a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import unquote, urlsplit

from apigate.config.model import StorageConfig
from apigate.ratelimit.storage.base import StorageError
from apigate.ratelimit.storage.client import RespClient
from apigate.ratelimit.storage.redis import DECIDE, HEARTBEAT, RedisStorage
from apigate.ratelimit.storage.resp import Endpoint

SENTINEL_TIMEOUT_S = 0.5
# A forced failover leaves the old master writable until Sentinel demotes it (~10 s later, at
# its next INFO poll); asking the sentinels this often moves us to the new master sooner.
WATCH_S = 1.0


def parse_sentinel_url(url: str) -> tuple[list[Endpoint], str, Endpoint]:
    """``redis+sentinel://:pw@h1:26379,h2:26379/mymaster/2`` -> sentinels, name, master login.

    The user and password are the master's (sentinels are asked without them); the master's
    host and port in the returned template are placeholders filled by discovery.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis+sentinel":
        raise ValueError(f"not a redis+sentinel:// URL: {url!r}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    sentinels = []
    for hostport in hosts.split(","):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad sentinel address {hostport!r} in {url!r}")
        sentinels.append(Endpoint(host=host.strip("[]"), port=int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"bad sentinel URL {url!r}: use .../<master name>[/<db>]")
    master = Endpoint(
        host="",
        port=0,
        username=unquote(user) or None,
        password=unquote(password) if userinfo and (password or ":" in userinfo) else None,
        db=int(path[1]) if len(path) == 2 else 0,
    )
    return sentinels, path[0], master


class SentinelResolver:
    """Asks each sentinel in turn for the master's address (``get-master-addr-by-name``).

    One lazily connected client per sentinel, kept open for the periodic checks.
    """

    def __init__(self, sentinels: Sequence[Endpoint], service: str, master: Endpoint) -> None:
        self._clients = [
            (s, RespClient.for_endpoint(s, connect_timeout=SENTINEL_TIMEOUT_S)) for s in sentinels
        ]
        self._service = service
        self._master = master

    async def __call__(self) -> Endpoint:
        errors = []
        for i, (sentinel, client) in enumerate(self._clients):
            try:
                reply = await client.execute(
                    (b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", self._service),
                    timeout_s=SENTINEL_TIMEOUT_S,
                )
            except StorageError as exc:
                errors.append(f"{sentinel.host}:{sentinel.port}: {exc}")
                continue
            if isinstance(reply, list) and len(reply) == 2:
                self._clients.insert(0, self._clients.pop(i))  # ask it first next time
                return replace(self._master, host=reply[0].decode(), port=int(reply[1]))
            errors.append(f"{sentinel.host}:{sentinel.port}: does not know {self._service!r}")
        raise StorageError(f"no sentinel named a master: {'; '.join(errors)}")

    async def aclose(self) -> None:
        """Close the sentinel connections."""
        await asyncio.gather(*(client.aclose() for _, client in self._clients))


def follow_master(resolve: SentinelResolver) -> Callable[[RespClient], Coroutine[Any, Any, None]]:
    """A watch that drops the client's connection when Sentinel names another master."""

    async def watch(client: RespClient) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                master = await resolve()
            except StorageError:
                continue
            current = client.endpoint
            if current is not None and (master.host, master.port) != (current.host, current.port):
                client.drop()

    return watch


class SentinelStorage(RedisStorage):
    """``RedisStorage`` whose connection follows the master Sentinel names."""

    def __init__(
        self, client: RespClient, resolver: SentinelResolver, *, key_prefix: str, timeout_ms: int
    ) -> None:
        super().__init__(client, key_prefix=key_prefix, timeout_ms=timeout_ms)
        self._resolver = resolver

    @classmethod
    def from_config(cls, config: StorageConfig) -> SentinelStorage:
        """Build from ``redis+sentinel://[user:pass@]h1:26379,h2:26379/mymaster[/db]``."""
        sentinels, service, master = parse_sentinel_url(config.url)
        resolve = SentinelResolver(sentinels, service, master)
        client = RespClient(
            resolve,
            scripts=(DECIDE, HEARTBEAT),
            connect_timeout=2.0,
            require_master=True,
            drop_on_readonly=True,
            watch=follow_master(resolve),
        )
        return cls(client, resolve, key_prefix=config.key_prefix, timeout_ms=config.timeout_ms)

    async def aclose(self) -> None:
        """Close the master connection and the sentinel connections; idempotent."""
        await super().aclose()
        await self._resolver.aclose()
