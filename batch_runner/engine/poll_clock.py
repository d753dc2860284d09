"""When to poll one task, answer by answer (pure: times in, times out).

A fresh task is first polled when this run's tasks have tended to be ready
(see engine.readiness). While nothing is known yet, a few scouts poll at the
interval and the rest wait for them. After a first poll that came too early,
and for every later poll, the task keeps to a timeline counted from its
submit (t0 + k * interval), so a slow poll response does not push every later
poll back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from batch_runner.engine.readiness import ReadinessEstimate, waiting_poll
from batch_runner.engine.retry import next_poll_interval


class Aim(enum.Enum):
    #: the timeline: every interval from the submit (and resumed tasks, now)
    TIMELINE = "timeline"
    #: the first poll goes at the run's readiness estimate
    ESTIMATE = "estimate"
    #: nothing is known: this task polls at the interval to find out
    SCOUT = "scout"
    #: nothing is known: this task waits for the scouts
    WAITING = "waiting"


@dataclass(slots=True)
class PollClock:
    """The poll times of one task; `next_at` is when to send the next poll."""

    started: float
    base: float
    readiness: ReadinessEstimate | None
    aim: Aim
    next_at: float
    interval: float
    polls: int = 0

    @classmethod
    def start(
        cls,
        started: float,
        base: float,
        readiness: ReadinessEstimate | None,
        *,
        poll_first: bool,
    ) -> PollClock:
        """The clock of a task whose submit was answered at `started` (or, with
        `poll_first`, a resumed task: polled at once and learnt nothing from)."""
        if poll_first or readiness is None:
            at = started if poll_first else started + base
            return cls(started, base, None, Aim.TIMELINE, at, base)
        if readiness.known:
            at = started + readiness.first_poll(base)
            return cls(started, base, readiness, Aim.ESTIMATE, at, base)
        phase = readiness.enlist_scout()
        if phase is not None:
            at = started + phase * base
            return cls(started, base, readiness, Aim.SCOUT, at, base)
        at = started + waiting_poll(0, base)
        return cls(started, base, readiness, Aim.WAITING, at, base)

    @property
    def waiting(self) -> bool:
        return self.aim is Aim.WAITING

    def learn(self) -> bool:
        """A waiting task whose run has learnt when tasks are ready aims at
        that instead (which may be in the past: poll now). True if it did."""
        if self.aim is not Aim.WAITING or self.readiness is None:
            return False
        if not self.readiness.known:
            return False
        self.aim = Aim.ESTIMATE
        self.next_at = self.started + self.readiness.first_poll(self.base)
        return True

    def settled(self, sent: float) -> None:
        """The poll sent at `sent` found the task finished (or failed)."""
        self.polls += 1
        if self.readiness is not None:
            self.readiness.observe(sent - self.started)

    def not_yet(self, sent: float, now: float) -> None:
        """The poll sent at `sent` said "not yet"; its answer came at `now`."""
        self.polls += 1
        if self.aim is Aim.WAITING:
            self.next_at = sent + waiting_poll(self.polls, self.base)
            return
        if self.aim is Aim.ESTIMATE:
            # the aimed poll came early: back to the timeline's next point
            self.aim = Aim.TIMELINE
            elapsed = now - self.started
            self.next_at = self.started + (elapsed // self.base + 1) * self.base
            return
        self.interval = next_poll_interval(now - self.started, self.interval, self.base)
        # never two polls back to back after a stall
        self.next_at = max(self.next_at + self.interval, now + self.interval / 2)

    def close(self) -> None:
        """The task stopped polling (finished, failed, timed out, cancelled)."""
        if self.aim is Aim.SCOUT and self.readiness is not None:
            self.readiness.scout_done()
            self.aim = Aim.TIMELINE
