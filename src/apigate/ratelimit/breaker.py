"""A circuit breaker that stops calling a failing storage and probes it now and then.

closed --(``threshold`` failures in a row)--> open --(cool-down over)--> half-open: one
caller is let through as the probe; its success closes the circuit, its failure opens it again
with a doubled cool-down (capped). The clock is injected (seconds), so tests set the time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum

log = logging.getLogger("apigate.ratelimit")


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """``allow()`` before each call, then exactly one of success / failure / abandon."""

    def __init__(
        self,
        *,
        threshold: int = 3,
        cooldown_s: float = 1.0,
        max_cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._base = cooldown_s
        self._max = max_cooldown_s
        self._clock = clock
        # Plain attributes, read on every request: the state, the failures in a row counted
        # while closed (0 when open: the cool-down counts instead), and whether the breaker is
        # closed with no failure counted (a success has nothing to reset).
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.clean = True
        self._cooldown = cooldown_s
        self._open_until = 0.0
        self._probing = False

    def allow(self) -> bool:
        """True if storage may be called now (in half-open: only for the one probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() < self._open_until:
                return False
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        """The call answered: close the circuit and forget past failures."""
        if self.clean:
            return  # the common case: nothing to reset
        if self.state is not BreakerState.CLOSED:
            log.warning("rate-limit storage answers again: circuit closed")
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.clean = True
        self._cooldown = self._base
        self._probing = False

    def failure(self) -> None:
        """The call failed or timed out."""
        self.clean = False
        if self.state is BreakerState.HALF_OPEN:
            self._cooldown = min(self._cooldown * 2, self._max)
            self._open()
            return
        self.failures += 1
        if self.state is BreakerState.CLOSED and self.failures >= self._threshold:
            self._open()

    def storage_answered(self) -> None:
        """Another call (the heartbeat) reached storage: end the cool-down early.

        The next caller probes at once instead of deciding by ``on_failure`` for up to
        ``max_cooldown_s`` against a storage that is already back.
        """
        if self.state is BreakerState.OPEN:
            self._open_until = min(self._open_until, self._clock())

    def abandon(self) -> None:
        """The call was cancelled before it answered: let another caller probe."""
        self._probing = False

    def _open(self) -> None:
        if self.state is BreakerState.CLOSED:
            log.error(
                "rate-limit storage failing: circuit open, storage.on_failure applies",
                extra={"cooldown_s": self._cooldown},
            )
        self.state = BreakerState.OPEN
        self._open_until = self._clock() + self._cooldown
        self._probing = False
        self.failures = 0
