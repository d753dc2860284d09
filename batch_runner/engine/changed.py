"""Reading the ledger again for the few jobs an edit check needs more about.

The plan finds edited jobs by 8-byte digests kept in memory. To settle the
rare jobs it kept none for, and to say what changed in the refusal, the
ledger's last records of just those jobs are read again.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from batch_runner.engine.plan import PlanCounts
from batch_runner.errors import ChangedJobsError
from batch_runner.manifest.params import JobParams
from batch_runner.store.ledger import ledger_lines, parse_record, read_head

#: characters of a prompt shown on each side of its first difference
_CONTEXT = 24


def changed_jobs_error(
    counts: PlanCounts, *, manifest: str, ledger: Path
) -> ChangedJobsError:
    """The one-line refusal naming the changed jobs and what changed."""
    examples = counts.changed_examples
    old = last_records(ledger, {job_id for job_id, _ in examples})
    named = "; ".join(
        f"{job_id} (line {params.line}: {describe_change(old.get(job_id), params)})"
        for job_id, params in examples
    )
    more = counts.changed - len(examples)
    if more:
        named += f"; and {more} more"
    n = counts.changed
    them = "them" if n > 1 else "it"
    return ChangedJobsError(
        f"{n} job{'s' if n > 1 else ''} changed since the ledger recorded {them}: "
        f"{named}. Nothing was sent. Rerun with --rerun-changed to regenerate "
        f"{them} (new images replace the old; the ledger keeps every record), "
        "or restore the old parameters",
        path=manifest,
        job_ids=tuple(job_id for job_id, _ in examples),
        count=n,
    )


def last_records(ledger: Path, job_ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """The last readable record of each of `job_ids` (a few) in the ledger."""
    found: dict[str, dict[str, Any]] = {}
    for raw in ledger_lines(ledger):
        head = read_head(raw)
        if head is not None and head.job_id in job_ids:
            record = parse_record(raw)
            if record is not None:
                found[head.job_id] = record
    return found


def describe_change(old: Mapping[str, Any] | None, new: JobParams) -> str:
    """`prompt 'a cat' -> 'a dog', seed 1 -> 2`: what differs from `old`."""
    if old is None:
        return "parameters differ"
    changes = []
    if old.get("prompt") != new.prompt:
        before, after = _around_difference(str(old.get("prompt")), new.prompt)
        changes.append(f"prompt {before!r} -> {after!r}")
    for name in ("resolution", "seed"):
        if old.get(name) != getattr(new, name):
            changes.append(f"{name} {old.get(name)} -> {getattr(new, name)}")
    # unset and false count as one (older ledgers wrote false for unset)
    if bool(old.get("prompt_extend")) != bool(new.prompt_extend):
        changes.append(
            f"prompt_extend {bool(old.get('prompt_extend'))} -> "
            f"{bool(new.prompt_extend)}"
        )
    return ", ".join(changes) or "parameters differ"


def _around_difference(before: str, after: str) -> tuple[str, str]:
    """Both texts cut to the neighbourhood of their first difference."""
    if len(before) <= 2 * _CONTEXT and len(after) <= 2 * _CONTEXT:
        return before, after
    start = 0
    for a, b in zip(before, after, strict=False):
        if a != b:
            break
        start += 1
    start = max(0, start - _CONTEXT)

    def cut(text: str) -> str:
        piece = text[start : start + 2 * _CONTEXT]
        prefix = "…" if start > 0 else ""
        suffix = "…" if start + 2 * _CONTEXT < len(text) else ""
        return prefix + piece + suffix

    return cut(before), cut(after)
