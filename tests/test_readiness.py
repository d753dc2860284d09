"""The first-poll estimate: learned from observed ready times, floored, and
able to follow tasks that get faster."""

from __future__ import annotations

import pytest

from batch_runner.engine.readiness import (
    FIRST_POLL_FLOOR,
    PROBE_EVERY,
    PROBE_FACTOR,
    ReadinessEstimate,
)

pytestmark = pytest.mark.pure


def test_nothing_known_polls_at_the_interval() -> None:
    """Before any task was seen ready, the first poll waits the poll interval."""
    assert ReadinessEstimate().first_poll(1.5) == 1.5


def test_slow_tasks_are_first_polled_at_their_generation_time() -> None:
    """Tasks ready after about 5 s are first polled at 5 s, not at the 0.5 s
    interval (nine wasted polls each); one in PROBE_EVERY a little before."""
    est = ReadinessEstimate()
    for i in range(100):
        est.observe(5.0 + (i % 10) * 0.01)
    firsts = [est.first_poll(0.5) for _ in range(10 * PROBE_EVERY)]
    assert firsts.count(5.0) == 10 * (PROBE_EVERY - 1)
    assert sorted(set(firsts)) == [pytest.approx(PROBE_FACTOR * 5.0), 5.0]


def test_instant_tasks_are_polled_almost_at_once_but_never_below_the_floor() -> None:
    """At zero generation time the first poll comes down to the floor, no lower."""
    est = ReadinessEstimate()
    for _ in range(200):
        est.observe(0.0)
    assert est.first_poll(0.01) == FIRST_POLL_FLOOR


def test_a_low_quantile_ignores_a_few_fast_outliers_but_follows_the_bulk() -> None:
    """A handful of quick tasks in a window of slow ones do not pull the first
    poll to them; the low tenth of the window does."""
    est = ReadinessEstimate(window=100, refresh=1)
    for i in range(100):
        est.observe(0.1 if i % 50 == 0 else 3.0)
    assert est.first_poll(1.0) == pytest.approx(3.0)


def test_the_estimate_follows_tasks_that_get_faster() -> None:
    """Ready times are only seen at a poll, never earlier; probing below the
    quantile still walks the estimate down when tasks speed up."""
    est = ReadinessEstimate(window=32, refresh=1)
    for _ in range(32):
        est.observe(5.0)
    for _ in range(400):
        # tasks now take 1 s: a first poll at or after 1 s finds them ready
        # and is itself the observation
        est.observe(max(1.0, est.first_poll(0.5)))
    # down from 5 s to the new 1 s: first polls at it, probes just below
    firsts = [est.first_poll(0.5) for _ in range(PROBE_EVERY)]
    assert max(firsts) == pytest.approx(1.0)
    assert min(firsts) == pytest.approx(PROBE_FACTOR * 1.0)
