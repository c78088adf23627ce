"""Who is calling: the facts about a request that auth produces and rate limiting keys on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Caller:
    """The caller of one request.

    ``client_ip`` is already trusted-proxy resolved (see ``apigate.proxy.client_ip``);
    ``consumer`` is set by auth (None on routes with ``auth: none``); ``claims`` holds the
    verified JWT claims (empty unless the route uses ``auth: jwt``).
    """

    client_ip: str
    consumer: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
