"""Which jobs may have been submitted (and billed) more than once. Pure.

A submit is at-least-once: a request whose answer was lost (timeout, reset,
garbled body, or the process dying mid-request) may have created a task we
never heard of, and the job is then submitted again. Every attempt is logged
to `attempts.jsonl` before it is sent. Its outcome is recorded where one
exists: an attempt that got an answer other than a taskid (an error status,
code 9000, a rejected key) or never left (connection refused) gets an outcome
line in `attempts.jsonl`; the ledger's submit outcome records how many attempts
it took (`attempts`) and how many of those lost their answer (`uncertain`). An
attempt with neither was cut off by a crash, or its answer was lost before the
run stopped: only those are uncertain. Attempt logs from before outcome lines
existed read the same way, minus the answered ones they never recorded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any


def suspected_duplicate_submits(
    ledger: Iterable[Mapping[str, Any]], attempts: Iterable[Mapping[str, Any]]
) -> dict[str, int]:
    """job_id -> number of submit requests that may have created an unseen task."""
    covered: dict[tuple[str, str], int] = defaultdict(int)
    suspects: dict[str, int] = defaultdict(int)
    # Outcome lines follow their attempt in one file, so both sets stay small:
    # an attempt waits in `open_` until its outcome line closes it.
    open_: set[tuple[str, str, int]] = set()
    closed_early: set[tuple[str, str, int]] = set()
    for rec in ledger:
        job_id, run, n = rec.get("job_id"), rec.get("run"), rec.get("attempts")
        if not isinstance(job_id, str) or not isinstance(n, int):
            continue
        if isinstance(run, str):
            covered[job_id, run] = max(covered[job_id, run], n)
        uncertain = rec.get("uncertain")
        if isinstance(uncertain, int) and uncertain > 0:
            suspects[job_id] += uncertain
    for att in attempts:
        job_id, run, n = att.get("job_id"), att.get("run"), att.get("n")
        if not (
            isinstance(job_id, str) and isinstance(run, str) and isinstance(n, int)
        ):
            continue
        key = (job_id, run, n)
        if "outcome" in att:
            if key in open_:
                open_.discard(key)
            else:
                closed_early.add(key)
        elif key in closed_early:
            closed_early.discard(key)
        else:
            open_.add(key)
    for job_id, run, n in open_:
        if n > covered.get((job_id, run), 0):
            suspects[job_id] += 1
    return {job_id: count for job_id, count in suspects.items() if count > 0}
