"""Rate limiting: policies -> keys -> one decision per request, on a pluggable storage.

Storage classes are chosen by the URL scheme through a table of ``"module:Class"`` names,
imported only when used (so ``memory://`` never imports redis-py).
"""

from __future__ import annotations

import importlib
from typing import Protocol, cast

from apigate.config.model import StorageConfig
from apigate.ratelimit.limiter import RateLimiter, Verdict
from apigate.ratelimit.storage.base import Storage

STORAGE_CLASSES: dict[str, str] = {
    "memory": "apigate.ratelimit.storage.memory:MemoryStorage",
    "redis": "apigate.ratelimit.storage.redis:RedisStorage",
    "rediss": "apigate.ratelimit.storage.redis:RedisStorage",
    "redis+sentinel": "apigate.ratelimit.storage.sentinel:SentinelStorage",
    "redis+cluster": "apigate.ratelimit.storage.cluster:ClusterStorage",
}


class _StorageClass(Protocol):
    def from_config(self, config: StorageConfig) -> Storage: ...


def storage_class(scheme: str) -> type[Storage]:
    """The class for a URL scheme: ``"memory"`` -> MemoryStorage (imported on first use)."""
    try:
        target = STORAGE_CLASSES[scheme]
    except KeyError:
        raise ValueError(f"no storage for scheme {scheme!r}") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Storage)):
        raise TypeError(f"{target} is not a Storage")
    return cls


def build_storage(config: StorageConfig) -> Storage:
    """The storage ``config.url`` names, built by its class's ``from_config``."""
    scheme = config.url.partition("://")[0]
    factory = cast(_StorageClass, storage_class(scheme))
    return factory.from_config(config)


__all__ = ["STORAGE_CLASSES", "RateLimiter", "Verdict", "build_storage", "storage_class"]
