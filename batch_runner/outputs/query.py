"""Reading a run from Python: where it stands (`status`) and each job's current
record (`records`), both streamed from the ledger."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from batch_runner.engine.sharding import Shard, as_shard
from batch_runner.errors import LedgerError
from batch_runner.manifest.items import Jobs, job_source
from batch_runner.models import JobStatus
from batch_runner.outputs.dataset import numbered_final_records
from batch_runner.outputs.report import RunStatus, run_status
from batch_runner.store.rundir import RunDir

_ALL_STATUSES = frozenset(s.value for s in JobStatus)


def status(
    out: str | os.PathLike[str],
    manifest: Jobs | None = None,
    *,
    ledger: str | os.PathLike[str] | None = None,
    shard: str | Shard | None = None,
) -> RunStatus:
    """The numbers `batch-runner status --json` prints, as an object.

    Attributes `total`, `succeeded`, `failed`, `submitted`, `pending` (known only
    when `manifest` is given: the run's jobs, as `run_batch` takes them),
    `images_on_disk`,
    `failure_reasons`, `suspected_duplicates`, ...; `to_dict()` gives them all.
    Raises LedgerError if the run has no ledger yet.
    """
    run_dir = _existing(out, ledger)
    chosen = as_shard(shard)
    return run_status(
        run_dir.ledger,
        run_dir.root,
        job_source(manifest) if manifest is not None else None,
        keep=chosen.keeps if chosen is not None else None,
    )


def records(
    out: str | os.PathLike[str], *, ledger: str | os.PathLike[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Each job's current record (its last ledger line) as a dict, in the order
    those lines appear in the ledger.

    Streamed: one pass notes where each job's last line is (a 64-bit key per
    job, never the records), a second parses only those lines. Records a live
    run appends meanwhile are not included: the result is one snapshot.
    Raises LedgerError if the run has no ledger yet.
    """
    run_dir = _existing(out, ledger)
    return (
        record
        for _, record in numbered_final_records(run_dir.ledger, statuses=_ALL_STATUSES)
    )


def _existing(
    out: str | os.PathLike[str], ledger: str | os.PathLike[str] | None
) -> RunDir:
    run_dir = RunDir(out, ledger=ledger)
    if not run_dir.ledger.is_file():
        raise LedgerError(f"no ledger at {run_dir.ledger}: nothing has run there yet")
    return run_dir
