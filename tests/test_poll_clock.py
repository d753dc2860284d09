"""When one task is polled: the first poll at the run's estimate, scouts and
waiters before anything is known, and the timeline after an early poll."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch_runner.engine.poll_clock import Aim, PollClock
from batch_runner.engine.readiness import (
    SCOUTS,
    WAITING_FIRST_INTERVALS,
    WAITING_MAX_INTERVALS,
    ReadinessEstimate,
    waiting_poll,
)

pytestmark = pytest.mark.pure


def test_a_resumed_task_is_polled_at_once_and_teaches_nothing() -> None:
    est = ReadinessEstimate()
    clock = PollClock.start(10.0, 0.5, est, poll_first=True)
    assert (clock.aim, clock.next_at) == (Aim.TIMELINE, 10.0)
    clock.settled(10.0)
    assert not est.known


def test_before_anything_is_known_a_few_scouts_poll_out_of_step() -> None:
    """The first SCOUTS tasks poll at the interval, each a fraction of it later
    than the last, so together they see the first ready task within
    interval / SCOUTS of it; every other task waits."""
    est = ReadinessEstimate()
    clocks = [PollClock.start(0.0, 1.0, est, poll_first=False) for _ in range(20)]
    scouts = [c for c in clocks if c.aim is Aim.SCOUT]
    assert len(scouts) == SCOUTS
    assert sorted(c.next_at for c in scouts) == [
        pytest.approx((k + 1) / SCOUTS) for k in range(SCOUTS)
    ]
    waiting = [c for c in clocks if c.waiting]
    assert len(waiting) == 20 - SCOUTS
    assert {c.next_at for c in waiting} == {WAITING_FIRST_INTERVALS * 1.0}


def test_a_scout_that_stops_makes_room_for_another() -> None:
    est = ReadinessEstimate()
    first = [PollClock.start(0.0, 1.0, est, poll_first=False) for _ in range(SCOUTS)]
    assert PollClock.start(0.0, 1.0, est, poll_first=False).waiting
    first[0].close()  # e.g. its job timed out or was cancelled
    assert PollClock.start(0.0, 1.0, est, poll_first=False).aim is Aim.SCOUT


def test_waiters_aim_at_what_a_scout_learns() -> None:
    """A scout sees its task ready 5 s after its submit: a task that waits,
    submitted 0.3 s later, aims at 5.3 s; one whose time has passed polls now."""
    est = ReadinessEstimate()
    scout = PollClock.start(0.0, 0.5, est, poll_first=False)
    for _ in range(SCOUTS - 1):
        PollClock.start(0.0, 0.5, est, poll_first=False)
    late = PollClock.start(0.3, 0.5, est, poll_first=False)
    early = PollClock.start(-1.0, 0.5, est, poll_first=False)
    assert late.waiting and not late.learn()
    scout.settled(5.0)
    assert est.known
    assert late.learn() and late.next_at == pytest.approx(5.3)
    assert early.learn() and early.next_at == pytest.approx(4.0)
    assert late.aim is Aim.ESTIMATE and not late.learn()


def test_a_waiter_polls_on_its_own_on_a_doubling_schedule() -> None:
    """A backstop in case the scouts are slow: 4, 8, 16 intervals apart, capped."""
    assert [waiting_poll(k, 0.5) for k in range(5)] == [
        0.5 * min(WAITING_FIRST_INTERVALS * 2**k, WAITING_MAX_INTERVALS)
        for k in range(5)
    ]
    est = ReadinessEstimate()
    for _ in range(SCOUTS):
        PollClock.start(0.0, 0.5, est, poll_first=False)
    clock = PollClock.start(0.0, 0.5, est, poll_first=False)
    sent = clock.next_at
    clock.not_yet(sent, sent + 0.01)
    assert clock.waiting
    assert clock.next_at == pytest.approx(sent + waiting_poll(1, 0.5))


def test_an_early_aimed_poll_returns_to_the_timeline() -> None:
    """Aimed at 0.9 s with a 0.5 s interval, a "not yet" sends the next poll to
    the timeline's next point, 1.0 s, not 0.5 s after the early one."""
    est = ReadinessEstimate()
    est.observe(0.9)
    clock = PollClock.start(0.0, 0.5, est, poll_first=False)
    assert clock.aim is Aim.ESTIMATE
    clock.not_yet(clock.next_at, clock.next_at + 0.01)
    assert (clock.aim, clock.next_at) == (Aim.TIMELINE, pytest.approx(1.0))


@given(
    starts=st.lists(st.floats(0, 5), min_size=1, max_size=40),
    ready_after=st.floats(0.01, 20),
    interval=st.floats(0.05, 2),
)
def test_every_task_is_found_ready_and_waiters_never_poll_before_a_scout(
    starts: list[float], ready_after: float, interval: float
) -> None:
    """Tasks all ready `ready_after` s after their submit, submitted at `starts`
    (in order): simulated poll by poll, each is found ready no later than one
    interval after it is, and none of the tasks that waited polled before the
    first scout's first poll."""
    est = ReadinessEstimate()
    starts = sorted(starts)
    clocks = [PollClock.start(s, interval, est, poll_first=False) for s in starts]
    found: dict[int, float] = {}
    first_scout_poll = min(c.next_at for c in clocks if c.aim is Aim.SCOUT)
    waiter_polls: list[float] = []
    waiters = {i for i, c in enumerate(clocks) if c.waiting}
    for _ in range(10_000):
        pending = [i for i in range(len(clocks)) if i not in found]
        if not pending:
            break
        for i in pending:
            clocks[i].learn()
        i = min(pending, key=lambda k: clocks[k].next_at)
        clock = clocks[i]
        now = clock.next_at
        if i in waiters:
            waiter_polls.append(now)
        if now >= starts[i] + ready_after:
            clock.settled(now)
            clock.close()
            found[i] = now
        else:
            clock.not_yet(now, now)
    assert len(found) == len(clocks)
    assert all(t >= first_scout_poll for t in waiter_polls)
    for i, t in found.items():
        lateness = t - (starts[i] + ready_after)
        assert lateness <= interval + 1e-6
