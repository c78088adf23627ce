"""Unit tests of the four pure rate-limit algorithms, with time passed in as ms."""

from __future__ import annotations

from apigate.ratelimit import algorithms as alg
from apigate.ratelimit.storage.base import Algorithm, LimitSpec, LimitState


def spec(algorithm: Algorithm, limit: int, window_ms: int, *, cost: int = 1, burst: int = 0
         ) -> LimitSpec:
    return LimitSpec("k", algorithm, limit, window_ms, burst=burst, cost=cost)


FIXED = spec(Algorithm.FIXED_WINDOW, 3, 1000)


def test_fixed_window_allows_up_to_limit_then_denies_until_window_end() -> None:
    """The limit-th request passes, the next waits exactly for the window to end."""
    count = 0
    for expected_remaining in (2, 1, 0):
        decision, count = alg.fixed_window(FIXED, count, 1200)
        assert decision.allowed
        assert decision.state == LimitState(expected_remaining, 800, 0)
    decision, new_count = alg.fixed_window(FIXED, count, 1200)
    assert not decision.allowed
    assert new_count == count == 3
    assert decision.state == LimitState(0, 800, 800)


def test_fixed_window_ttl_is_time_to_window_end_plus_slack() -> None:
    """Keys live until the window ends plus one second."""
    decision, _ = alg.fixed_window(FIXED, 0, 1999)
    assert decision.ttl_ms == 1 + 1000


def test_fixed_window_cost_counts_units() -> None:
    """A cost-2 request passes only if two units remain."""
    two = spec(Algorithm.FIXED_WINDOW, 3, 1000, cost=2)
    decision, count = alg.fixed_window(two, 1, 0)
    assert decision.allowed
    assert count == 3
    decision, _ = alg.fixed_window(two, 2, 0)
    assert not decision.allowed
    assert decision.state.remaining == 1


def test_window_index_floors() -> None:
    """The window index is now // W."""
    assert alg.window_index(2500, 1000) == 2
    assert alg.window_index(999, 1000) == 0


SLIDING = spec(Algorithm.SLIDING_WINDOW, 10, 1000)


def test_sliding_window_weights_previous_window_by_overlap() -> None:
    """At 25% into a window, 75% of the previous window still counts."""
    # prev 8 * 0.75 = 6, curr 3: estimate 9, so one more passes and then none.
    decision, curr = alg.sliding_window(SLIDING, 8, 3, 1250)
    assert decision.allowed
    assert curr == 4
    assert decision.state.remaining == 0
    decision, _ = alg.sliding_window(SLIDING, 8, 4, 1250)
    assert not decision.allowed
    assert decision.state.reset_ms == 750


def test_sliding_window_retry_after_within_current_window() -> None:
    """The retry is when prev's weight has fallen enough: estimate 6 + 4 + 1 must drop by 1."""
    decision, _ = alg.sliding_window(SLIDING, 8, 4, 1250)
    # need 8 * (1000 - e) / 1000 <= 5 -> e >= 375: 125 ms after now.
    assert decision.state.retry_after_ms == 125
    later, _ = alg.sliding_window(SLIDING, 8, 4, 1250 + 125)
    assert later.allowed
    earlier, _ = alg.sliding_window(SLIDING, 8, 4, 1250 + 124)
    assert not earlier.allowed


def test_sliding_window_retry_after_in_next_window() -> None:
    """When the current window alone is full, the wait runs into the next window."""
    decision, _ = alg.sliding_window(SLIDING, 0, 10, 1500)
    # next window starts in 500 ms with prev = 10; need 10 * (1000 - e) / 1000 <= 9: e >= 100.
    assert decision.state.retry_after_ms == 600
    at, _ = alg.sliding_window(SLIDING, 10, 0, 2100)
    assert at.allowed
    before, _ = alg.sliding_window(SLIDING, 10, 0, 2099)
    assert not before.allowed


def test_sliding_window_retry_is_capped_when_cost_exceeds_limit() -> None:
    """A cost above the limit never passes; the retry is capped at reset + W."""
    huge = spec(Algorithm.SLIDING_WINDOW, 10, 1000, cost=11)
    decision, _ = alg.sliding_window(huge, 0, 0, 1200)
    assert not decision.allowed
    assert decision.state.retry_after_ms == 800 + 1000


def test_sliding_window_ttl_covers_two_windows() -> None:
    """Counters live 2W + 1s: the previous window is read during the whole next one."""
    decision, _ = alg.sliding_window(SLIDING, 0, 0, 0)
    assert decision.ttl_ms == 3000


LOG = spec(Algorithm.SLIDING_LOG, 3, 1000)


def test_sliding_log_counts_exactly_the_last_window() -> None:
    """Entries at or before now - W have expired; the others count one each."""
    log = [100, 500, 900]
    decision, expired = alg.sliding_log(LOG, log, 1100)
    assert decision.allowed  # 100 expired at 1100
    assert expired == 1
    assert decision.state.remaining == 0
    decision, expired = alg.sliding_log(LOG, log, 1099)
    assert not decision.allowed
    assert expired == 0
    assert decision.state.retry_after_ms == 1  # the entry at 100 expires at 1100


def test_sliding_log_retry_after_waits_for_enough_expiries() -> None:
    """A cost-2 request waits for the two oldest entries to expire."""
    two = spec(Algorithm.SLIDING_LOG, 3, 1000, cost=2)
    decision, _ = alg.sliding_log(two, [100, 500, 900], 950)
    assert not decision.allowed
    assert decision.state.retry_after_ms == 500 + 1000 - 950
    assert decision.state.reset_ms == 900 + 1000 - 950


def test_sliding_log_cost_above_limit_waits_a_window() -> None:
    """A cost above the limit never passes; retry is reported as one window."""
    huge = spec(Algorithm.SLIDING_LOG, 3, 1000, cost=4)
    decision, _ = alg.sliding_log(huge, [], 0)
    assert not decision.allowed
    assert decision.state.retry_after_ms == 1000


TOKEN = spec(Algorithm.TOKEN_BUCKET, 10, 1000)  # one token per 100 ms


def test_token_bucket_empty_bucket_allows_limit_then_refills_one_per_interval() -> None:
    """A fresh bucket holds `limit` tokens; then one token per W/limit ms."""
    tat: int | None = None
    for _ in range(10):
        decision, tat = alg.token_bucket(TOKEN, tat, 0)
        assert decision.allowed
    decision, _ = alg.token_bucket(TOKEN, tat, 0)
    assert not decision.allowed
    assert decision.state.retry_after_ms == 100
    decision, _ = alg.token_bucket(TOKEN, tat, 100)
    assert decision.allowed
    assert decision.state.remaining == 0


def test_token_bucket_burst_adds_capacity() -> None:
    """burst: the bucket holds limit + burst tokens."""
    bursty = spec(Algorithm.TOKEN_BUCKET, 10, 1000, burst=5)
    tat: int | None = None
    allowed = 0
    for _ in range(20):
        decision, new_tat = alg.token_bucket(bursty, tat, 0)
        if decision.allowed:
            allowed += 1
            tat = new_tat
    assert allowed == 15


def test_token_bucket_remaining_and_reset_fields() -> None:
    """remaining counts whole tokens left; reset is how far tat was ahead before the charge."""
    decision, tat = alg.token_bucket(TOKEN, None, 1000)
    assert decision.state == LimitState(9, 0, 0)
    decision, tat = alg.token_bucket(TOKEN, tat, 1000)
    assert decision.state == LimitState(8, 100, 0)
    assert decision.ttl_ms == 200 + 1000


def test_token_bucket_exact_when_interval_is_not_whole_ms() -> None:
    """3 per second (333.33 ms each) lets exactly 3 pass at once: no float rounding."""
    three = spec(Algorithm.TOKEN_BUCKET, 3, 1000)
    tat: int | None = None
    results = []
    for _ in range(4):
        decision, new_tat = alg.token_bucket(three, tat, 5)
        results.append(decision.allowed)
        if decision.allowed:
            tat = new_tat
    assert results == [True, True, True, False]
    decision, _ = alg.token_bucket(three, tat, 5)
    assert decision.state.retry_after_ms == 334  # ceil(333.33)


def test_refund_count_never_goes_negative() -> None:
    """A refund larger than the count leaves it alone."""
    assert alg.refund_count(5, 2) == 3
    assert alg.refund_count(1, 2) == 1


def test_refund_tat_undoes_a_charge_and_forgets_an_idle_bucket() -> None:
    """Refunding the only charge makes the bucket fresh again."""
    decision, tat = alg.token_bucket(TOKEN, None, 0)
    assert decision.allowed
    assert alg.refund_tat(TOKEN, tat, 0) is None
    _, tat2 = alg.token_bucket(TOKEN, tat, 0)
    assert alg.refund_tat(TOKEN, tat2, 0) == tat
