"""When to poll a new task first: learned from this run's submit -> ready times (pure).

A fixed first poll is wrong both ways: too late on a fast server, wasted polls
on a slow one. The estimate is a low quantile of recent readiness, never below
a small floor.

Until the first task is seen ready nothing is known, and the first wave of a
run (hundreds of tasks submitted at once) would all poll at the interval to
find out: at 500 tasks, a 0.5 s interval and 5 s generation, 5,000 polls that
all say "not yet". Instead a few scouts poll at the interval and the others
wait for what the first of them learns, polling on their own only on a
doubling schedule in case the scouts are slow.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

#: never poll a new task sooner than this after its submit was answered
FIRST_POLL_FLOOR = 0.002
#: the quantile of recent ready times the first poll aims at
READY_QUANTILE = 0.1
#: how far below that quantile a probe's first poll goes, so that when tasks
#: get faster the estimate follows them down (a ready time is only ever seen at
#: a poll, so it can never be observed earlier than the poll that found it)
PROBE_FACTOR = 0.9
#: one new task in this many probes; the others aim at the quantile itself, so
#: tasks of a steady length are found ready at their first poll. More than
#: 1 / READY_QUANTILE of the window must be probes for the quantile to move down.
PROBE_EVERY = 5
#: while nothing is known, at most this many tasks poll at the interval, each
#: a quarter interval out of step with the last, so that together they see the
#: first task ready within a quarter interval of it
SCOUTS = 4
#: ... and the others poll on their own after 4, 8, 16 ... intervals (at most
#: WAITING_MAX_INTERVALS apart) until a scout, or one of them, sees a task
#: ready: a backstop for scouts whose tasks are slow, not the usual way
WAITING_FIRST_INTERVALS = 4
WAITING_MAX_INTERVALS = 16
#: recent observations kept; the estimate is refreshed every `REFRESH` of them
WINDOW = 256
REFRESH = 16


@dataclass(slots=True)
class ReadinessEstimate:
    """The run's estimate of how long after its submit a task is ready.

    `observe(s)` takes the time, counted from the submit's answer, at which a
    poll that found the task finished was sent; `first_poll(default)` is the
    delay before a new task's first poll: `default` (the poll interval) until
    anything is known, then PROBE_FACTOR x the READY_QUANTILE of the last
    WINDOW observations, at least FIRST_POLL_FLOOR. On the real API that stays
    near the generation time (few wasted polls); at zero latency it polls
    almost at once.
    """

    window: int = WINDOW
    refresh: int = REFRESH
    _seen: deque[float] = field(default_factory=deque)
    _since_refresh: int = 0
    _estimate: float | None = None
    _asked: int = 0
    _scouts: int = 0

    @property
    def known(self) -> bool:
        """Whether any task of this run has been seen finished yet."""
        return self._estimate is not None

    def enlist_scout(self) -> float | None:
        """While nothing is known: whether a new task should poll at the
        interval to find out, and if so at what phase (a fraction of the
        interval, for its first poll; call `scout_done` when it stops polling),
        or None: wait (see `waiting_poll`)."""
        if self._scouts >= SCOUTS:
            return None
        self._scouts += 1
        return self._scouts / SCOUTS

    def scout_done(self) -> None:
        self._scouts -= 1

    def observe(self, seconds: float) -> None:
        seen = self._seen
        seen.append(max(0.0, seconds))
        if len(seen) > self.window:
            seen.popleft()
        self._since_refresh += 1
        # the first few observations refresh at once: a run must not poll
        # late for its first `refresh` jobs
        if self._since_refresh >= self.refresh or len(seen) <= self.refresh:
            self._since_refresh = 0
            ordered = sorted(seen)
            quantile = ordered[int(READY_QUANTILE * (len(ordered) - 1))]
            self._estimate = max(FIRST_POLL_FLOOR, quantile)

    def first_poll(self, default: float) -> float:
        """Seconds from the submit's answer to the first poll: the quantile,
        or for one task in PROBE_EVERY, PROBE_FACTOR below it."""
        if self._estimate is None:
            return default
        self._asked += 1
        if self._asked % PROBE_EVERY == 0:
            return max(FIRST_POLL_FLOOR, PROBE_FACTOR * self._estimate)
        return self._estimate


def waiting_poll(polls: int, interval: float) -> float:
    """Seconds until the next poll of a task that waits for the scouts, after
    `polls` polls of its own: 4, 8, 16 ... intervals, at most
    WAITING_MAX_INTERVALS. A backstop only: the scouts normally learn first."""
    return interval * min(WAITING_FIRST_INTERVALS * 2.0**polls, WAITING_MAX_INTERVALS)
