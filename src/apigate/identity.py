"""Who is calling: the facts about a request that auth produces and rate limiting keys on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# Callers without JWT claims share one read-only empty mapping (no dict per request).
_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


@dataclass(slots=True, init=False)  # made per request: no frozen dataclass's __setattr__ calls
class Caller:
    """The caller of one request; treat it as read-only.

    ``client_ip`` is already trusted-proxy resolved (see ``apigate.proxy.client_ip``);
    ``consumer`` is set by auth (None on routes with ``auth: none``); ``claims`` holds the
    verified JWT claims (empty unless the route uses ``auth: jwt``).
    """

    client_ip: str
    consumer: str | None
    claims: Mapping[str, Any]

    def __init__(
        self, client_ip: str, consumer: str | None = None, claims: Mapping[str, Any] = _NO_CLAIMS
    ) -> None:
        self.client_ip = client_ip
        self.consumer = consumer
        self.claims = claims
