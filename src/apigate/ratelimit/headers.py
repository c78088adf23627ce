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

from apigate.ratelimit.storage.base import LimitState, Reply

HeaderMode = Literal["ietf", "legacy", "both", "none"]
Header = tuple[bytes, bytes]
# The headers of a set of policies that all allowed, pre-rendered (see allowed_parts): the
# RateLimit-Policy and RateLimit lines as one %-template (ietf, both), and each policy's
# X-RateLimit-Limit value (legacy, both); None where the mode has no such header.
AllowedParts = tuple["bytes | None", "tuple[bytes, ...] | None"]


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


def allowed_parts(mode: HeaderMode, quotas: Sequence[Quota]) -> AllowedParts:
    """What :func:`allowed_lines` renders the headers of ``quotas`` all allowed from; worth
    keeping per set of policies. For ``"per-ip"`` with a limit of 100 per second, ietf::

        b'RateLimit-Policy: "per-ip";q=100;w=1\\r\\nRateLimit: "per-ip";r=%d;t=%d\\r\\n'
    """
    ietf = None
    if mode in ("ietf", "both"):  # a "%" of a policy name is escaped, for the % operator
        policy = policy_value(quotas).replace(b"%", b"%%")
        limits = b", ".join(
            sf_string(q.name).encode("ascii").replace(b"%", b"%%") + b";r=%d;t=%d"
            for q in quotas
        )
        ietf = b"RateLimit-Policy: %s\r\nRateLimit: %s\r\n" % (policy, limits)
    legacy = None
    if mode in ("legacy", "both"):
        legacy = tuple(b"%d" % q.limit for q in quotas)
    return ietf, legacy


def allowed_lines(parts: AllowedParts, reply: Reply, pos: int, count: int) -> tuple[bytes, int]:
    """The header lines of ``count`` policies that all allowed, from their
    :func:`allowed_parts` and their decision group at ``reply[pos]`` (``allowed``, then
    ``remaining, reset_ms, retry_ms`` per policy, see ``storage.base.group_outcome``), with
    the tightest policy's index: the first with the least remaining (the limiter's choice)."""
    ietf, limits = parts
    if count == 1:  # a lone policy with legacy, both or none headers (ietf: the limiter's)
        left, seconds = reply[pos + 1], (reply[pos + 2] + 999) // 1000  # whole seconds, up
        out = b""
        if ietf is not None:
            out = ietf % (left, seconds)
        if limits is not None:
            out += legacy_lines(limits[0], left, seconds)
        return out, 0
    end = pos + 1 + 3 * count
    lefts = reply[pos + 1:end:3]  # each one's remaining, then its reset in ms
    resets = reply[pos + 2:end:3]
    tightest = lefts.index(min(lefts))
    out = b""
    if ietf is not None:
        values = lefts + lefts  # remaining and reset in seconds, one policy after another
        values[::2] = lefts
        values[1::2] = [(ms + 999) // 1000 for ms in resets]
        out = ietf % tuple(values)
    if limits is not None:
        # The most restrictive: the least remaining, then the latest reset (as legacy()).
        least = lefts[tightest]
        index = max((i for i in range(count) if lefts[i] == least), key=resets.__getitem__)
        out += legacy_lines(limits[index], least, (resets[index] + 999) // 1000)
    return out, tightest


def legacy_lines(limit: bytes, left: int, seconds: int) -> bytes:
    """X-RateLimit-* as header lines, from the limit already rendered."""
    return b"X-RateLimit-Limit: %s\r\nX-RateLimit-Remaining: %d\r\nX-RateLimit-Reset: %d\r\n" % (
        limit, left, seconds
    )
