"""Why a run stops and how far its winding down has gone. Pure.

Phases only move forward; each stop reason names the phase it needs.
"""

from __future__ import annotations

import enum


class Phase(enum.IntEnum):
    """How much of the run is still allowed to start; only ever moves forward."""

    #: jobs are submitted, resumed tasks polled
    RUNNING = 0
    #: no new submits; already-paid tasks (in flight or resumed) are still collected
    DRAINING = 1
    #: nothing new starts; jobs in flight get the grace period to finish
    STOPPING = 2
    #: jobs in flight are being cancelled; the ledger keeps what it already says
    CANCELLING = 3


class StopReason(enum.StrEnum):
    """Why the run ended before its manifest did (NONE: it did not)."""

    NONE = "none"
    #: --max-jobs reached: a planned stop, the rest waits for the next run
    BUDGET = "budget"
    #: --max-failures consecutive permanent failures: the API looks broken
    FAILURES = "failures"
    #: requests cannot reach the API (connection refused, DNS): jobs stay pending
    UNREACHABLE = "unreachable"
    #: code 9000: out of credits; submitted tasks are still collected
    CREDITS = "credits"
    SIGNAL = "signal"
    LEDGER = "ledger"
    AUTH = "auth"


#: when several reasons to stop arise, the exit code reports the strongest
PRIORITY = {reason: rank for rank, reason in enumerate(StopReason)}

#: the phase each reason moves the run to
PHASE_FOR = {
    StopReason.NONE: Phase.RUNNING,
    # only the dispatcher stops: jobs it already let through still submit
    StopReason.BUDGET: Phase.RUNNING,
    StopReason.FAILURES: Phase.DRAINING,
    StopReason.UNREACHABLE: Phase.DRAINING,
    StopReason.CREDITS: Phase.DRAINING,
    StopReason.SIGNAL: Phase.STOPPING,
    StopReason.LEDGER: Phase.CANCELLING,
    StopReason.AUTH: Phase.CANCELLING,
}


def stronger(reason: StopReason, than: StopReason) -> bool:
    """Whether `reason` should replace `than` as the run's stop reason."""
    return PRIORITY[reason] > PRIORITY[than]
