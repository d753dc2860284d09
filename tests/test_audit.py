"""Suspected duplicate submits from the attempt log and the ledger."""

from __future__ import annotations

from batch_runner.outputs.audit import suspected_duplicate_submits


def test_attempt_cut_off_by_a_crash_is_suspect() -> None:
    """An attempt with no outcome recorded in its run may have created a task."""
    attempts = [
        {"job_id": "a", "run": "r1", "n": 1},
        {"job_id": "a", "run": "r2", "n": 1},
        {"job_id": "b", "run": "r1", "n": 1},
    ]
    ledger = [
        {"job_id": "a", "run": "r2", "attempts": 1, "status": "submitted"},
        {"job_id": "b", "run": "r1", "attempts": 1, "status": "submitted"},
    ]
    assert suspected_duplicate_submits(ledger, attempts) == {"a": 1}


def test_lost_answers_within_a_run_are_suspect() -> None:
    """Retries after a lost answer are counted from the outcome's `uncertain`."""
    attempts = [{"job_id": "a", "run": "r", "n": n} for n in (1, 2, 3)]
    ledger = [{"job_id": "a", "run": "r", "attempts": 3, "uncertain": 2}]
    assert suspected_duplicate_submits(ledger, attempts) == {"a": 2}


def test_clean_history_has_no_suspects() -> None:
    """Retries answered by an error status are not suspects; junk is ignored."""
    attempts = [
        {"job_id": "a", "run": "r", "n": 1},
        {"job_id": "a", "run": "r", "n": 2},
        {"junk": True},
    ]
    ledger = [{"job_id": "a", "run": "r", "attempts": 2}, {"job_id": 5}]
    assert suspected_duplicate_submits(ledger, attempts) == {}


def test_answered_and_unsent_attempts_are_not_suspect() -> None:
    """An attempt followed by its outcome line (an answer, or known not sent) is
    settled even when no ledger record covers it; one without stays suspect."""
    attempts = [
        {"job_id": "a", "run": "r", "n": 1},
        {"job_id": "a", "run": "r", "n": 1, "outcome": "answered", "code": 9000},
        {"job_id": "b", "run": "r", "n": 1},
        {"job_id": "b", "run": "r", "n": 1, "outcome": "not-sent"},
        {"job_id": "c", "run": "r", "n": 1},
        {"job_id": "c", "run": "r", "n": 1, "outcome": "answered", "http": 503},
        {"job_id": "c", "run": "r", "n": 2},
    ]
    assert suspected_duplicate_submits([], attempts) == {"c": 1}


def test_outcome_lines_in_any_order_and_old_logs() -> None:
    """An outcome line read before its attempt (merged logs) still settles it; a
    log without outcome lines reads as before."""
    attempts = [
        {"job_id": "a", "run": "r", "n": 1, "outcome": "answered"},
        {"job_id": "a", "run": "r", "n": 1},
    ]
    assert suspected_duplicate_submits([], attempts) == {}
    old = [{"job_id": "a", "run": "r", "n": 1}, {"job_id": "a", "run": "r", "n": 2}]
    assert suspected_duplicate_submits([], old) == {"a": 2}
    covered = [{"job_id": "a", "run": "r", "attempts": 2, "uncertain": 1}]
    assert suspected_duplicate_submits(covered, old) == {"a": 1}
