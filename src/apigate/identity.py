"""Who is calling: the facts about a request that auth produces and rate limiting keys on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# Callers without JWT claims share one read-only empty mapping (no dict per request).
_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


def _no_claims() -> Mapping[str, Any]:
    return _NO_CLAIMS


@dataclass(frozen=True, slots=True)
class Caller:
    """The caller of one request.

    ``client_ip`` is already trusted-proxy resolved (see ``apigate.proxy.client_ip``);
    ``consumer`` is set by auth (None on routes with ``auth: none``); ``claims`` holds the
    verified JWT claims (empty unless the route uses ``auth: jwt``).
    """

    client_ip: str
    consumer: str | None = None
    claims: Mapping[str, Any] = field(default_factory=_no_claims)
