"""Backoff, poll pacing and the rate limiter are pure functions of their inputs."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch_runner.engine.limits import RateLimiter
from batch_runner.engine.retry import (
    Retrier,
    RetryDetails,
    RetryPolicy,
    next_poll_interval,
)
from batch_runner.engine.stop import PHASE_FOR, Phase, StopReason, stronger
from batch_runner.errors import PermanentApiError, TransientApiError


@given(st.integers(min_value=1, max_value=60), st.integers())
def test_backoff_full_jitter_is_bounded(attempt: int, seed: int) -> None:
    """Each wait lies in [0, min(cap, base * 2**(n-1))]."""
    policy = RetryPolicy(wait_initial=0.5, wait_max=30.0)
    delay = policy.backoff(attempt, random.Random(seed))
    assert 0.0 <= delay <= min(30.0, 0.5 * 2 ** (attempt - 1))


def test_retry_after_wins_but_is_capped() -> None:
    """A server's Retry-After replaces the computed delay, up to a ceiling."""
    policy = RetryPolicy(retry_after_max=60.0)
    rng = random.Random(0)
    assert policy.delay_for(TransientApiError("x", retry_after=7.0), 1, rng) == 7.0
    assert policy.delay_for(TransientApiError("x", retry_after=900.0), 1, rng) == 60.0


def test_should_retry_only_transient_within_attempts() -> None:
    """Permanent errors are never retried; transient ones until attempts run out."""
    policy = RetryPolicy(attempts=3)
    assert policy.should_retry(TransientApiError("x"), 2)
    assert not policy.should_retry(TransientApiError("x"), 3)
    assert not policy.should_retry(PermanentApiError("x"), 1)


def test_poll_interval_fast_then_backs_off_to_15s() -> None:
    """Base interval for 60 s, then x1.5 per poll capped at 15 s."""
    assert next_poll_interval(0, 1.0, 1.0) == 1.0
    assert next_poll_interval(59.9, 1.0, 1.0) == 1.0
    assert next_poll_interval(60, 1.0, 1.0) == 1.5
    assert next_poll_interval(61, 1.5, 1.0) == 2.25
    assert next_poll_interval(500, 12.0, 1.0) == 15.0
    assert next_poll_interval(500, 15.0, 0.01) == 15.0


def test_rate_limiter_has_no_startup_burst() -> None:
    """Starts are spaced one period apart from the very first one."""
    limiter = RateLimiter(rate=4.0)
    waits = [limiter.reserve(100.0) for _ in range(5)]
    assert waits == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_rate_limiter_idle_line_starts_at_once() -> None:
    """After an idle period the next start does not wait, nor bank credit."""
    limiter = RateLimiter(rate=2.0)
    assert limiter.reserve(0.0) == 0.0
    assert limiter.reserve(10.0) == 0.0
    assert limiter.reserve(10.0) == 0.5


@given(st.floats(min_value=0.1, max_value=1000), st.integers(2, 50))
def test_rate_limiter_never_exceeds_rate(rate: float, n: int) -> None:
    """n reservations made at once span (n-1) periods."""
    limiter = RateLimiter(rate=rate)
    waits = [limiter.reserve(0.0) for _ in range(n)]
    assert abs(waits[-1] - (n - 1) / rate) < 1e-6 * n


def test_aimd_slow_start_then_additive_increase() -> None:
    """+1 per success until back-pressure, then about +1 per round of successes."""
    from batch_runner.engine.limits import AimdConcurrency

    aimd = AimdConcurrency(maximum=100, start=4)
    for _ in range(10):
        aimd.on_success(0.0)
    assert aimd.limit == 14
    aimd.on_backpressure(1.0)
    assert aimd.limit == 10  # 14 * 0.75
    for _ in range(10):
        aimd.on_success(2.0)
    assert aimd.limit == 10 or aimd.limit == 11


def test_aimd_bounded_and_one_decrease_per_cooldown() -> None:
    """A burst of 429s counts once; the limit stays within [minimum, maximum]."""
    from batch_runner.engine.limits import AimdConcurrency

    aimd = AimdConcurrency(maximum=8, start=4, cooldown=1.0)
    for _ in range(100):
        aimd.on_success(0.0)
    assert aimd.limit == 8
    for _ in range(50):
        aimd.on_backpressure(5.0)
    assert aimd.limit == 6
    for t in range(50):
        aimd.on_backpressure(10.0 + t * 2)
    assert aimd.limit == 1


def test_aimd_backs_off_when_latency_rises() -> None:
    """Latency well above the best seen is treated as back-pressure."""
    from batch_runner.engine.limits import AimdConcurrency

    aimd = AimdConcurrency(maximum=64, start=20)
    aimd.on_success(0.0, latency=0.05)
    before = aimd.limit
    for i in range(20):
        aimd.on_success(1.0 + i, latency=1.0)
    assert aimd.limit < before


class _Sleeps:
    """Records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _failing(errors: list[Exception], result: str = "ok"):  # type: ignore[no-untyped-def]
    calls = 0

    async def op() -> str:
        nonlocal calls
        calls += 1
        if errors:
            raise errors.pop(0)
        return result

    return op, lambda: calls


async def test_retrier_tells_hooks_about_every_retry() -> None:
    """Each retry reaches every hook with the attempt, the wait and the error; the
    server's Retry-After is the wait; the result comes with the request count."""
    sleeps = _Sleeps()
    seen: list[RetryDetails] = []
    retrier = Retrier(
        policy=RetryPolicy(attempts=5, wait_initial=1.0, wait_max=1.0),
        on_retry=(seen.append,),
        rng=random.Random(0),
        sleep=sleeps,
    )
    op, calls = _failing(
        [
            TransientApiError("HTTP 500", http_status=500),
            TransientApiError("HTTP 500", http_status=500, retry_after=4.0),
        ]
    )
    assert await retrier.call(op, what="poll", job_id="j") == ("ok", 3)
    assert calls() == 3
    assert [(d.what, d.job_id, d.attempt, d.throttled) for d in seen] == [
        ("poll", "j", 1, False),
        ("poll", "j", 2, False),
    ]
    assert sleeps.waits == [seen[0].wait, 4.0] and 0 <= seen[0].wait <= 1.0


async def test_retrier_pacing_spends_no_attempt_up_to_the_limit() -> None:
    """429s wait without using attempts until max_throttled; then they count,
    and a permanent error is raised at once."""
    sleeps = _Sleeps()
    seen: list[RetryDetails] = []
    retrier = Retrier(
        policy=RetryPolicy(attempts=2, wait_initial=0.0, wait_max=0.0),
        max_throttled=3,
        on_retry=(seen.append,),
        sleep=sleeps,
    )
    throttle = TransientApiError("HTTP 429", http_status=429, retry_after=0.5)
    op, calls = _failing([throttle] * 10)
    with pytest.raises(TransientApiError):
        await retrier.call(op, what="submit", job_id="j")
    # 3 free 429s, then attempt 1 (429) is retried, attempt 2 (429) gives up
    assert calls() == 5
    assert all(d.throttled for d in seen) and len(seen) == 4
    op, calls = _failing([PermanentApiError("HTTP 400")])
    with pytest.raises(PermanentApiError):
        await retrier.call(op, what="submit", job_id="j")
    assert calls() == 1


def test_stop_reasons_rank_and_phases_only_move_forward() -> None:
    """The stronger reason wins (credits over an outage over the breaker), and
    each reason asks for the phase its exit behaviour needs."""
    assert stronger(StopReason.CREDITS, StopReason.UNREACHABLE)
    assert stronger(StopReason.UNREACHABLE, StopReason.FAILURES)
    assert not stronger(StopReason.BUDGET, StopReason.UNREACHABLE)
    assert stronger(StopReason.AUTH, StopReason.SIGNAL)
    assert PHASE_FOR[StopReason.UNREACHABLE] is Phase.DRAINING
    assert PHASE_FOR[StopReason.AUTH] is Phase.CANCELLING
    assert max(Phase.CANCELLING, Phase.DRAINING) is Phase.CANCELLING
