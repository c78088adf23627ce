"""Consumers kept in Redis, so every instance of a fleet sees the same ones without a redeploy.

Layout (all keys share the hash tag ``{<prefix>:consumers}``, so the multi-key scripts below
run on one Redis Cluster slot)::

    {apigate:consumers}:c:<name>   hash: api_keys (JSON list of sha256 hashes),
                                         rate_limits (JSON list of policy names),
                                         disabled ("0" | "1")
    {apigate:consumers}:names      set of consumer names
    {apigate:consumers}:version    counter, INCR'd by every change

Consumer records are *data*, not rate-limit counters: they carry no TTL and live until the
admin API deletes them. They are the one exception to "every key the gateway writes has a
TTL", which is why they live under their own ``:consumers}`` namespace. Records use the
``:c:`` infix so that no consumer name can collide with ``names`` or ``version``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

RedisClient = Redis | RedisCluster

# Off the request path: admin writes and the 1 s version poll may wait this long.
_TIMEOUT_S = 2.0

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'api_keys', ARGV[2], 'rate_limits', ARGV[3], 'disabled', '0')
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[3])
return 1
"""
_SET_DISABLED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'disabled', ARGV[1])
redis.call('INCR', KEYS[2])
return 1
"""
_DELETE = """
local n = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if n == 1 then redis.call('INCR', KEYS[3]) end
return n
"""


@dataclass(frozen=True, slots=True)
class Consumer:
    """One consumer: who it is, how it proves it, which limits it gets, and where it is kept."""

    name: str
    api_keys: tuple[str, ...] = ()
    rate_limits: tuple[str, ...] = ()
    disabled: bool = False
    source: Literal["config", "redis"] = "config"


class RedisConsumerStore:
    """Reads and writes consumer records; every write is one Lua script (atomic, one slot)."""

    def __init__(self, client: RedisClient, key_prefix: str,
                 *, also_close: Sequence[Redis] = ()) -> None:
        self._client = client
        self._also_close = tuple(also_close)  # e.g. the Sentinel's own connections
        tag = "{" + key_prefix + ":consumers}"
        self._names = f"{tag}:names"
        self._version = f"{tag}:version"
        self._record_prefix = f"{tag}:c:"

    def record_key(self, name: str) -> str:
        """``record_key("acme")`` -> ``"{apigate:consumers}:c:acme"``."""
        return self._record_prefix + name

    async def version(self) -> int:
        """The change counter; 0 before the first change."""
        return int(await self._client.get(self._version) or 0)

    async def load(self) -> tuple[int, dict[str, Consumer]]:
        """The version read *before* the records, and every well-formed record.

        Reading the version first means a change racing this load bumps the version past the
        one returned, so the next poll reloads.
        """
        pipe = self._client.pipeline(transaction=False)
        pipe.get(self._version)
        pipe.smembers(self._names)
        raw_version, names = await pipe.execute()
        ordered = sorted(names)
        pipe = self._client.pipeline(transaction=False)
        for name in ordered:
            pipe.hgetall(self.record_key(name))
        records = await pipe.execute() if ordered else []
        consumers = {}
        for name, fields in zip(ordered, records, strict=True):
            consumer = parse_record(name, fields)
            if consumer is not None:
                consumers[name] = consumer
        return int(raw_version or 0), consumers

    async def create(self, consumer: Consumer) -> bool:
        """Store a new record; False when a record of that name exists already."""
        created = await self._eval(
            _CREATE,
            [self.record_key(consumer.name), self._names, self._version],
            [consumer.name, json.dumps(list(consumer.api_keys)),
             json.dumps(list(consumer.rate_limits))],
        )
        return bool(created)

    async def set_disabled(self, name: str, disabled: bool) -> bool:
        """Flip the disabled flag; False when there is no such record."""
        changed = await self._eval(
            _SET_DISABLED, [self.record_key(name), self._version], ["1" if disabled else "0"]
        )
        return bool(changed)

    async def delete(self, name: str) -> bool:
        """Remove a record; False when there was none."""
        deleted = await self._eval(
            _DELETE, [self.record_key(name), self._names, self._version], [name]
        )
        return bool(deleted)

    async def aclose(self) -> None:
        await self._client.aclose()
        for client in self._also_close:
            await client.aclose()

    async def _eval(self, script: str, keys: list[str], args: list[str]) -> Any:
        # Admin writes are rare, so plain EVAL (no SHA cache to invalidate) keeps this simple.
        return await self._client.eval(script, len(keys), *keys, *args)


def parse_record(name: str, fields: dict[str, str]) -> Consumer | None:
    """A record's hash fields -> Consumer; None when the record is missing or malformed."""
    try:
        api_keys = json.loads(fields["api_keys"])
        rate_limits = json.loads(fields["rate_limits"])
        disabled = fields.get("disabled", "0") == "1"
    except (KeyError, ValueError):
        return None
    if not _strings(api_keys) or not _strings(rate_limits):
        return None
    return Consumer(name, tuple(api_keys), tuple(rate_limits), disabled, "redis")


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def connect(url: str) -> tuple[RedisClient, list[Redis]]:
    """A redis-py asyncio client for a storage URL, and the helper clients to close with it.

    Connections open lazily, on first use.

    ``redis://h:6379/0`` and ``rediss://`` -> Redis; ``redis+sentinel://h1:26379,h2:26379/
    mymaster[/db]`` -> the Sentinel master; ``redis+cluster://h1:7000,h2:7001`` -> RedisCluster.
    """
    scheme = url.partition("://")[0]
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": _TIMEOUT_S,
        "socket_connect_timeout": _TIMEOUT_S,
    }
    if scheme in ("redis", "rediss"):
        client: Redis = Redis.from_url(url, **common)
        return client, []
    parts = urlsplit(url)
    hosts = _hosts(parts.netloc.rpartition("@")[2])
    auth: dict[str, Any] = {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }
    if scheme == "redis+cluster":
        nodes = [ClusterNode(host, port) for host, port in hosts]
        return RedisCluster(startup_nodes=nodes, **auth, **common), []
    if scheme == "redis+sentinel":
        service, _, db = parts.path.strip("/").partition("/")
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S)
        master: Redis = sentinel.master_for(service, db=int(db or 0), **auth, **common)
        return master, list(sentinel.sentinels)
    raise ValueError(f"no Redis in storage URL {url!r}")


def _hosts(netloc: str) -> list[tuple[str, int]]:
    """``"h1:26379,[::1]:26380"`` -> ``[("h1", 26379), ("::1", 26380)]``."""
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host:
            host, port = item, "6379"
        hosts.append((host.strip("[]"), int(port)))
    return hosts
