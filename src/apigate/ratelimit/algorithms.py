"""The four rate-limit algorithms as pure functions: state and time in, decision and state out.

Time is an ``int`` of milliseconds. These functions are the reference semantics of the
rate-limit contract; ``storage/lua/decide.lua`` implements the same rules inside Redis and the
memory storage calls these directly. Each function returns a :class:`Decision` and the state
to store *if the caller charges*; on a denial (or a peek) the caller keeps the old state.

``remaining`` follows the Lua script: after the charge when the request is allowed, the
untouched state when it is denied or when ``peek`` is set (nothing will be charged).
Arithmetic is on integers (GCRA in "ms x limit" units), so a decision never flips on a
floating-point rounding; the script uses doubles and can differ only at the last bit of a
boundary.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from apigate.ratelimit.storage.base import LimitSpec, LimitState

# Every key written outlives its useful life by this much (clock skew, in-flight scripts).
TTL_SLACK_MS = 1000


@dataclass(slots=True)  # one per decision: not frozen (object.__setattr__ per field)
class Decision:
    """One limit's verdict: ``ttl_ms`` is how long the new state must be kept if charged."""

    allowed: bool
    state: LimitState
    ttl_ms: int


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def window_index(now: int, window_ms: int) -> int:
    """The fixed window that contains ``now``: ``window_index(2500, 1000)`` -> 2."""
    return now // window_ms


def fixed_window(
    spec: LimitSpec, count: int, now: int, *, peek: bool = False
) -> tuple[Decision, int]:
    """Fixed window: ``count`` is what window ``now // W`` holds; returns the new count.

    Allows iff ``count + cost <= limit``; a denial must wait for the window to end.
    """
    w, limit = spec.window_ms, spec.limit
    reset = (now // w + 1) * w - now
    allowed = count + spec.cost <= limit
    new_count = count + spec.cost if allowed else count
    used = count if peek else new_count
    state = LimitState(max(0, limit - used), reset, 0 if allowed else reset)
    return Decision(allowed, state, reset + TTL_SLACK_MS), new_count


def sliding_window(
    spec: LimitSpec, prev: int, curr: int, now: int, *, peek: bool = False
) -> tuple[Decision, int]:
    """Two-window weighted counter; ``prev``/``curr`` count windows ``idx-1``/``idx``.

    The estimate is ``prev * (W - elapsed) / W + curr`` where ``elapsed`` is the time spent in
    the current window; allows iff ``estimate + cost <= limit``. Returns the new ``curr``.

    Error bound: the estimate assumes the previous window's requests were spread evenly over
    it. It is exact when they were; otherwise it over- or under-counts by at most ``prev``
    (all of prev's requests at the start of that window are counted while already out of a
    true sliding window, or all at its end are discounted while still inside it).
    """
    w, limit = spec.window_ms, spec.limit
    elapsed = now % w
    reset = w - elapsed
    # Scaled by W so the comparison is exact: estimate * W = prev * (W - elapsed) + curr * W.
    est_w = prev * reset + curr * w
    allowed = est_w + spec.cost * w <= limit * w
    used_w = est_w + spec.cost * w if allowed and not peek else est_w
    retry = 0 if allowed else _sliding_retry(spec, prev, curr, reset)
    state = LimitState(max(0, (limit * w - used_w) // w), reset, retry)
    new_curr = curr + spec.cost if allowed else curr
    return Decision(allowed, state, 2 * w + TTL_SLACK_MS), new_curr


def _sliding_retry(spec: LimitSpec, prev: int, curr: int, reset: int) -> int:
    """Smallest ``t`` with ``estimate(now + t) + cost <= limit`` if nothing else is charged.

    Closed form: inside the current window only prev's weight falls; from the next window on
    ``curr`` becomes the previous window and decays. Capped at ``reset + W``.
    """
    w = spec.window_ms
    room = spec.limit - spec.cost
    cap = reset + w
    if room < 0:
        return cap
    if prev > 0 and curr <= room:
        return reset - (room - curr) * w // prev
    if curr == 0:
        return reset
    return min(cap, reset + max(0, w - room * w // curr))


def sliding_log(
    spec: LimitSpec, log: Sequence[int], now: int, *, peek: bool = False
) -> tuple[Decision, int]:
    """Exact sliding log; ``log`` holds one sorted timestamp per charged cost unit.

    Entries ``<= now - W`` have expired. Allows iff ``live + cost <= limit``. Returns how many
    of the oldest entries have expired (the caller drops them, charged or not); on a charge
    the caller appends ``cost`` copies of ``now``.
    """
    w, limit = spec.window_ms, spec.limit
    expired = bisect_right(log, now - w)
    live = len(log) - expired
    allowed = live + spec.cost <= limit
    retry = 0
    if not allowed:
        need = live + spec.cost - limit
        retry = w if need > live else max(0, log[expired + need - 1] + w - now)
    charged = allowed and not peek
    used = live + spec.cost if charged else live
    newest = now if charged else (log[-1] if live else None)
    reset = 0 if newest is None else max(0, newest + w - now)
    state = LimitState(max(0, limit - used), reset, retry)
    return Decision(allowed, state, w + TTL_SLACK_MS), expired


def token_bucket(
    spec: LimitSpec, tat: int | None, now: int, *, peek: bool = False
) -> tuple[Decision, int]:
    """GCRA with ``limit + burst`` tokens refilled at ``limit`` per window.

    ``tat`` (theoretical arrival time) is kept scaled by ``limit`` -- stored value = tat_ms *
    limit -- so one token's interval ``T = W / limit`` is the integer ``W`` and nothing is
    rounded. Allows iff ``max(tat, now) + cost*T - now <= (limit + burst) * T``. Returns the
    new scaled tat.
    """
    w, limit = spec.window_ms, spec.limit
    now_s = now * limit
    base = now_s if tat is None else max(tat, now_s)
    new_tat = base + spec.cost * w
    tolerance = (limit + spec.burst) * w
    allowed = new_tat - now_s <= tolerance
    after = new_tat if allowed and not peek else base
    remaining = max(0, (tolerance - (after - now_s)) // w)
    retry = 0 if allowed else _ceil_div(new_tat - now_s - tolerance, limit)
    # reset_ms per the contract: max(tat, now) - now, tat as it was before this decision.
    state = LimitState(remaining, _ceil_div(base - now_s, limit), retry)
    ttl = _ceil_div(new_tat - now_s, limit) + TTL_SLACK_MS
    return Decision(allowed, state, ttl), new_tat


def refund_count(count: int, cost: int) -> int:
    """Undo a window charge: the count drops by ``cost`` only if it holds that much."""
    return count - cost if count >= cost else count


def refund_tat(spec: LimitSpec, tat: int, now: int) -> int | None:
    """Undo a GCRA charge: ``tat - cost*T``, or None (forget the key) once it is not ahead."""
    new_tat = tat - spec.cost * spec.window_ms
    return None if new_tat <= now * spec.limit else new_tat
