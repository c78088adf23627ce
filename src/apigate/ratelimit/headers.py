"""Rate-limit response headers: the IETF draft fields, the legacy X-RateLimit-* ones, or both.

IETF form (draft-ietf-httpapi-ratelimit-headers-09/10, Structured Field Lists of Strings)::

    RateLimit-Policy: "per-ip";q=100;w=1, "per-consumer";q=10000;w=3600
    RateLimit: "per-ip";r=42;t=1, "per-consumer";r=9876;t=2000

``q`` is the policy's limit, ``w`` its window and ``t`` the time to reset, in whole seconds
(rounded up, ``w`` at least 1); ``r`` is what remains. Legacy headers describe the single most
restrictive limit (lowest remaining, then the latest reset)::

    X-RateLimit-Limit: 100
    X-RateLimit-Remaining: 42
    X-RateLimit-Reset: 1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from apigate.ratelimit.storage.base import LimitState

HeaderMode = Literal["ietf", "legacy", "both", "none"]
Header = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Quota:
    """One policy as advertised: ``name`` with ``limit`` per ``window_ms``."""

    name: str
    limit: int
    window_ms: int


def seconds_up(ms: int) -> int:
    """Whole seconds, rounded up: 1 -> 1, 1000 -> 1, 1001 -> 2, 0 -> 0."""
    return -(-ms // 1000)


_SF_CACHE: dict[str, str] = {}


def sf_string(text: str) -> str:
    """A Structured Field String (RFC 8941 3.3.3): ``per"ip`` -> ``"per\\"ip"``.

    Characters outside printable ASCII are not allowed in an sf-string; they become ``_``.
    Policy names come from the config, so each is rendered once.
    """
    cached = _SF_CACHE.get(text)
    if cached is None:
        cached = _sf_string(text)
        if len(_SF_CACHE) < 4096:
            _SF_CACHE[text] = cached
    return cached


def _sf_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append("_")
    return '"' + "".join(out) + '"'


def policy_value(quotas: Sequence[Quota]) -> bytes:
    """The ``RateLimit-Policy`` value: static for a set of policies, so worth caching."""
    return ", ".join(
        f"{sf_string(q.name)};q={q.limit};w={max(1, seconds_up(q.window_ms))}" for q in quotas
    ).encode("ascii")


def ratelimit_value(quotas: Sequence[Quota], states: Sequence[LimitState]) -> bytes:
    """The ``RateLimit`` value: one item per policy with what remains and when it resets.

    (A lone policy with ``ietf`` headers is rendered by the limiter from pre-rendered parts.)
    """
    return ", ".join(
        f"{sf_string(q.name)};r={s.remaining};t={seconds_up(s.reset_ms)}"
        for q, s in zip(quotas, states, strict=True)
    ).encode("ascii")


def legacy(quotas: Sequence[Quota], states: Sequence[LimitState]) -> list[Header]:
    """X-RateLimit-* for the most restrictive policy (lowest remaining, then latest reset)."""
    quota, state = min(
        zip(quotas, states, strict=True), key=lambda qs: (qs[1].remaining, -qs[1].reset_ms)
    )
    return [
        (b"X-RateLimit-Limit", str(quota.limit).encode()),
        (b"X-RateLimit-Remaining", str(state.remaining).encode()),
        (b"X-RateLimit-Reset", str(seconds_up(state.reset_ms)).encode()),
    ]


def render(
    mode: HeaderMode,
    quotas: Sequence[Quota],
    states: Sequence[LimitState] | None,
    policy: bytes | None = None,
) -> list[Header]:
    """The headers for ``mode``; without ``states`` (storage not asked) only the policy.

    ``policy`` is a precomputed :func:`policy_value` for ``quotas``.
    """
    if mode == "none" or not quotas:
        return []
    out: list[Header] = []
    if mode in ("ietf", "both"):
        out.append((b"RateLimit-Policy", policy if policy is not None else policy_value(quotas)))
        if states is not None:
            out.append((b"RateLimit", ratelimit_value(quotas, states)))
    if mode in ("legacy", "both") and states is not None:
        out.extend(legacy(quotas, states))
    return out
