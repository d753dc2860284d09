"""Reading a run from Python: where it stands (`status`) and each job's current
record (`records`), both streamed from the ledger."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_runner.engine.sharding import Shard, as_shard
from batch_runner.errors import LedgerError, StoreNotFoundError, UsageError
from batch_runner.manifest.items import Jobs, job_source
from batch_runner.models import JobStatus
from batch_runner.outputs.report import RunStatus, run_status
from batch_runner.store.final_records import numbered_final_records
from batch_runner.store.rundir import RunDir

if TYPE_CHECKING:
    from batch_runner.store.remote import Store

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
    Raises LedgerError if the run has no ledger yet. `out` may be a bucket
    URL (`s3://bucket/prefix`): the ledger is read from the bucket and
    `images_on_disk` counts the images there.
    """
    chosen = as_shard(shard)
    source = job_source(manifest) if manifest is not None else None
    keep = chosen.keeps if chosen is not None else None
    store = _bucket(out, ledger)
    if store is not None:
        from batch_runner.store.bucket import image_keys, run_blocking

        with tempfile.TemporaryDirectory() as tmp:
            fetched = _fetch(store, Path(tmp))
            result = run_status(fetched, Path(tmp), source, keep)
        result.images_on_disk = len(run_blocking(image_keys(store)))
        return result
    run_dir = _existing(out, ledger)
    return run_status(run_dir.ledger, run_dir.root, source, keep=keep)


def records(
    out: str | os.PathLike[str], *, ledger: str | os.PathLike[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Each job's current record (its last ledger line) as a dict, in the order
    those lines appear in the ledger.

    Streamed: one pass notes where each job's last line is (a 64-bit key per
    job, never the records), a second parses only those lines. Records a live
    run appends meanwhile are not included: the result is one snapshot.
    Raises LedgerError if the run has no ledger yet. `out` may be a bucket
    URL: the ledger is downloaded to a temporary file first.
    """
    store = _bucket(out, ledger)
    if store is not None:
        return _bucket_records(store)
    run_dir = _existing(out, ledger)
    return (
        record
        for _, record in numbered_final_records(run_dir.ledger, statuses=_ALL_STATUSES)
    )


def _bucket_records(store: Store) -> Iterator[dict[str, Any]]:
    # fetched now, so a missing ledger raises here rather than at the first next()
    tmp = tempfile.TemporaryDirectory()
    try:
        fetched = _fetch(store, Path(tmp.name))
    except BaseException:
        tmp.cleanup()
        raise

    def stream() -> Iterator[dict[str, Any]]:
        with tmp:
            for _, record in numbered_final_records(fetched, statuses=_ALL_STATUSES):
                yield record

    return stream()


def _fetch(store: Store, dest: Path) -> Path:
    """The bucket's ledger, downloaded into `dest`; LedgerError if it has none."""
    from batch_runner.store.bucket import fetch_ledger, run_blocking

    try:
        return run_blocking(fetch_ledger(store, dest))
    except StoreNotFoundError as exc:
        raise LedgerError(str(exc)) from None


def _bucket(
    out: str | os.PathLike[str], ledger: str | os.PathLike[str] | None
) -> Store | None:
    """The store when `out` is an object-store URL (UsageError with `ledger`)."""
    from batch_runner.store.remote import is_remote, open_store

    if not is_remote(out):
        return None
    if ledger is not None:
        raise UsageError(f"ledger cannot be given with out {out}: it is in the bucket")
    return open_store(os.fspath(out))


def _existing(
    out: str | os.PathLike[str], ledger: str | os.PathLike[str] | None
) -> RunDir:
    run_dir = RunDir(out, ledger=ledger)
    if not run_dir.ledger.is_file():
        raise LedgerError(f"no ledger at {run_dir.ledger}: nothing has run there yet")
    return run_dir
