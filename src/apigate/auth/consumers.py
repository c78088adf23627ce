"""The consumer directory: consumers from the config file merged with consumers kept in Redis.

Name clash rule: **the config file wins.** A Redis consumer whose name is also in the config is
ignored (and the admin API refuses to create one, 409), and an API key hash already owned by
a config consumer is ignored on a Redis consumer. Config consumers cannot be changed through
the admin API; edit the file and reload.

Every instance polls the Redis version counter every ``poll_interval_s`` (default 1 s) and
reloads all Redis consumers when it moved, so an admin change on one instance is effective on
every instance within about a second. With ``memory://`` storage there is no Redis: only the
config consumers exist and writes raise ``ConsumerError(409)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Iterable
from typing import TypeVar

from redis.exceptions import RedisError

from apigate.auth.api_key import find_consumer
from apigate.auth.consumer_store import Consumer, RedisConsumerStore, connect
from apigate.config.model import Config

__all__ = ["Consumer", "ConsumerDirectory", "ConsumerError"]

log = logging.getLogger("apigate.auth")

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
KEY_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
_STORE_ERRORS = (RedisError, OSError, TimeoutError)
_T = TypeVar("_T")
# A poll (or the first load at start) gives up after this long; redis-py may retry inside it.
_REFRESH_TIMEOUT_S = 5.0


class ConsumerError(Exception):
    """A consumer change that cannot be made; ``status`` is the HTTP status the admin API uses.

    400 bad input, 404 no such consumer, 409 conflicts with config / existing data or no Redis,
    503 Redis unreachable.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _RedisSync:
    """The Redis consumers one process has seen, kept fresh by a polling task.

    Shared by every ConsumerDirectory built from the same storage across config reloads;
    ``acquire``/``release`` count the directories that started it.
    """

    def __init__(self, store: RedisConsumerStore, poll_interval_s: float) -> None:
        self.store = store
        self.poll_interval_s = poll_interval_s
        self.consumers: dict[str, Consumer] = {}
        self.version = -1
        self.generation = 0
        self._task: asyncio.Task[None] | None = None
        self._refs = 0
        self._lock = asyncio.Lock()
        self._failing = False

    async def refresh(self, *, force: bool = False) -> bool:
        """Reload when the version moved (or ``force``); True when the snapshot changed."""
        async with self._lock:
            if not force and await self.store.version() == self.version:
                return False
            self.version, self.consumers = await self.store.load()
            self.generation += 1
            return True

    async def acquire(self) -> None:
        self._refs += 1
        if self._task is None:
            await self._refresh_logged()
            self._task = asyncio.create_task(self._poll(), name="apigate-consumers-poll")

    async def release(self) -> None:
        self._refs -= 1
        if self._refs > 0:
            return
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.store.aclose()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            await self._refresh_logged()

    async def _refresh_logged(self) -> None:
        # Log transitions only: a dead Redis polled every second must not flood the log.
        try:
            async with asyncio.timeout(_REFRESH_TIMEOUT_S):
                await self.refresh()
        except _STORE_ERRORS as exc:
            if not self._failing:
                log.warning("consumer store unreachable, keeping %d Redis consumers: %s",
                            len(self.consumers), _brief(exc))
            self._failing = True
            return
        if self._failing:
            log.warning("consumer store reachable again")
        self._failing = False


class _Merged:
    """One immutable merged view: consumers by name and the API key index."""

    def __init__(self, config: dict[str, Consumer], redis: Iterable[Consumer],
                 policies: frozenset[str]) -> None:
        self.by_name = dict(config)
        self.key_index: dict[str, tuple[str, str]] = {}
        for consumer in config.values():
            self._index(consumer)
        for consumer in redis:
            if consumer.name in self.by_name:
                continue  # the config file wins
            known = tuple(p for p in consumer.rate_limits if p in policies)
            self.by_name[consumer.name] = Consumer(
                consumer.name, consumer.api_keys, known, consumer.disabled, "redis")
            self._index(consumer)

    def _index(self, consumer: Consumer) -> None:
        for key_hash in consumer.api_keys:
            self.key_index.setdefault(key_hash, (key_hash, consumer.name))


class ConsumerDirectory:
    """Who the consumers are, for one config snapshot; the Redis part is shared and live."""

    def __init__(self, config: Config, *, sync: _RedisSync | None = None) -> None:
        self._config = config
        self._from_config = {
            name: Consumer(name, c.api_keys, c.rate_limits, c.disabled, "config")
            for name, c in config.consumers.items()
        }
        self._policies = frozenset(config.rate_limits)
        self._sync = sync
        self._merged_generation = -1
        self._merged = _Merged(self._from_config, (), self._policies)

    @classmethod
    def from_config(cls, config: Config, *, poll_interval_s: float = 1.0) -> ConsumerDirectory:
        """A directory with Redis consumers when ``storage.url`` is a Redis URL."""
        if config.storage.url.startswith("memory://"):
            return cls(config)
        client, helpers = connect(config.storage.url)
        store = RedisConsumerStore(client, config.storage.key_prefix, also_close=helpers)
        return cls(config, sync=_RedisSync(store, poll_interval_s))

    def with_config(self, config: Config) -> ConsumerDirectory:
        """The directory for a reloaded config; shares the Redis sync if storage is unchanged."""
        old, new = self._config.storage, config.storage
        if self._sync is not None and (old.url, old.key_prefix) == (new.url, new.key_prefix):
            return ConsumerDirectory(config, sync=self._sync)
        return ConsumerDirectory.from_config(
            config, poll_interval_s=self._sync.poll_interval_s if self._sync else 1.0)

    @property
    def redis_available(self) -> bool:
        """False with ``memory://`` storage: Redis consumers cannot exist."""
        return self._sync is not None

    async def start(self) -> None:
        """Load the Redis consumers once and start polling (no-op without Redis)."""
        if self._sync is not None:
            await self._sync.acquire()

    async def aclose(self) -> None:
        """Stop polling and close Redis once the last directory sharing it is closed."""
        if self._sync is not None:
            await self._sync.release()

    async def refresh(self) -> bool:
        """Reload the Redis consumers now if their version moved; True when they changed."""
        return await self._sync.refresh() if self._sync is not None else False

    def get(self, name: str) -> Consumer | None:
        return self._view().by_name.get(name)

    def all(self) -> list[Consumer]:
        """Every consumer, sorted by name."""
        view = self._view()
        return [view.by_name[name] for name in sorted(view.by_name)]

    def consumer_for_key(self, presented: str) -> str | None:
        """The consumer whose API key is ``presented`` (raw), compared in constant time."""
        return find_consumer(presented, self._view().key_index)

    def policies(self, name: str) -> tuple[str, ...]:
        consumer = self.get(name)
        return consumer.rate_limits if consumer is not None else ()

    async def create(self, name: str, api_keys: Iterable[str],
                     rate_limits: Iterable[str]) -> Consumer:
        """Store a new Redis consumer, visible on every instance within a poll interval."""
        sync = self._writable()
        consumer = Consumer(name, tuple(api_keys), tuple(rate_limits), False, "redis")
        self._check_new(consumer)
        await _store_call(sync.refresh())  # the key check below needs fresh data
        self._check_keys_unused(consumer)
        await self._write(sync, sync.store.create(consumer), name, exists_is_conflict=True)
        return consumer

    async def set_disabled(self, name: str, disabled: bool) -> Consumer:
        """Disable or re-enable a Redis consumer."""
        sync = self._writable_redis_consumer(name)
        await self._write(sync, sync.store.set_disabled(name, disabled), name)
        consumer = self.get(name)
        return consumer if consumer is not None else Consumer(name, disabled=disabled)

    async def delete(self, name: str) -> None:
        """Delete a Redis consumer."""
        sync = self._writable_redis_consumer(name)
        await self._write(sync, sync.store.delete(name), name)

    def _view(self) -> _Merged:
        sync = self._sync
        if sync is not None and sync.generation != self._merged_generation:
            self._merged = _Merged(self._from_config, sync.consumers.values(), self._policies)
            self._merged_generation = sync.generation
        return self._merged

    def _writable(self) -> _RedisSync:
        if self._sync is None:
            raise ConsumerError(409, "storage.url is memory://: consumers can only be defined "
                                     "in the config file (Redis consumers need Redis storage)")
        return self._sync

    def _writable_redis_consumer(self, name: str) -> _RedisSync:
        sync = self._writable()
        if name in self._from_config:
            raise ConsumerError(409, f"consumer {name!r} is defined in the config file; "
                                     "change it there and reload")
        return sync

    def _check_new(self, consumer: Consumer) -> None:
        if not NAME.match(consumer.name):
            raise ConsumerError(400, "name must match ^[A-Za-z0-9_.-]{1,64}$")
        for key_hash in consumer.api_keys:
            if not KEY_HASH.match(key_hash):
                raise ConsumerError(400, f"api_keys: {key_hash[:80]!r} is not sha256:<64 hex "
                                         "digits> (use `apigate hash-key`)")
        for policy in consumer.rate_limits:
            if policy not in self._policies:
                raise ConsumerError(400, f"rate_limits: no rate limit named {policy!r} in config")
        if consumer.name in self._from_config:
            raise ConsumerError(409, f"consumer {consumer.name!r} is defined in the config file")

    def _check_keys_unused(self, consumer: Consumer) -> None:
        for key_hash in consumer.api_keys:
            owner = self._view().key_index.get(key_hash)
            if owner is not None:
                raise ConsumerError(409, f"an API key is already used by consumer {owner[1]!r}")

    @staticmethod
    async def _write(sync: _RedisSync, op: Awaitable[bool], name: str,
                     *, exists_is_conflict: bool = False) -> None:
        """Run one store write, then reload this process's copy at once.

        Other processes (this instance's workers included) see it on their next poll, within
        about a second.
        """
        done = await _store_call(op)
        await _store_call(sync.refresh(force=True))
        if not done:
            if exists_is_conflict:
                raise ConsumerError(409, f"consumer {name!r} exists already")
            raise ConsumerError(404, f"no Redis consumer named {name!r}")


async def _store_call(op: Awaitable[_T]) -> _T:
    try:
        return await op
    except _STORE_ERRORS as exc:
        raise ConsumerError(503, f"consumer store unavailable: {_brief(exc)}") from None


def _brief(exc: BaseException) -> str:
    """redis-py messages can embed a whole connection-pool repr; keep the useful head."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:120] + "..."
