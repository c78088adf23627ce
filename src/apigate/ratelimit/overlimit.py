"""Keys known to be over their limit, answered locally until their retry time has passed.

A flood from one client then costs no storage round trip. An entry is trusted for at most
``RECHECK_S`` (then storage is asked again), so an admin reset on any instance, or a window
that another instance saw reset, is noticed everywhere within a second; a flood still costs at
most one storage call per key per second per worker. An entry remembers the cost that
was denied: a request of that cost or more on the same key is denied at least as long (every
algorithm is monotone in cost), a cheaper one is asked of storage as usual.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MAX_KEYS = 10_000
RECHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class Denial:
    until_s: float  # when the request would be allowed, on the limiter's clock
    cost: int
    recheck_s: float  # when to stop trusting this entry and ask storage


class OverLimitCache:
    """A bounded map of ``storage key -> Denial``; the least recently remembered goes first."""

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._max = max_keys
        # Read directly on the hot path: empty means no key is known to be over its limit.
        self.denials: OrderedDict[str, Denial] = OrderedDict()

    def remember(self, key: str, denial: Denial) -> None:
        self.denials[key] = denial
        self.denials.move_to_end(key)
        while len(self.denials) > self._max:
            self.denials.popitem(last=False)

    def lookup(self, key: str, cost: int, now_s: float) -> Denial | None:
        """The denial that still covers a request of ``cost`` on ``key`` at ``now_s``."""
        denial = self.denials.get(key)
        if denial is None:
            return None
        if min(denial.until_s, denial.recheck_s) <= now_s:
            del self.denials[key]
            return None
        return denial if cost >= denial.cost else None

    def forget(self, key: str) -> None:
        self.denials.pop(key, None)

    def clear(self) -> None:
        self.denials.clear()
