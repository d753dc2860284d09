"""Planning without running: the ledger's state and the manifest's jobs counted
into a plan (`plan`, the dry run; `_survey`, which a run starts with).

Kept apart from `engine.run` so that a dry run, `status` and the library's
`plan()` import no HTTP client, simulator or progress bar: at a million jobs,
every fixed cost counts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from batch_runner.engine.changed import changed_jobs_error
from batch_runner.engine.plan import Action, PlanCounts, plan_counter
from batch_runner.engine.result import Plan
from batch_runner.engine.sharding import Shard, as_shard
from batch_runner.errors import ChangedJobsError, StoreError, UsageError
from batch_runner.manifest.items import JobItems, Jobs, job_source
from batch_runner.manifest.key_cache import key_cache_path
from batch_runner.manifest.reader import (
    ManifestSource,
    ManifestSummary,
    validate_manifest,
)
from batch_runner.store.bucket import fetch_ledger_if_any, run_blocking
from batch_runner.store.ledger import ResumeState, recorded_params
from batch_runner.store.remote import (
    RemoteUrl,
    Store,
    default_state_dir,
    is_remote,
    open_store,
    parse_url,
)
from batch_runner.store.rundir import RunDir
from batch_runner.store.snapshot import read_resume_state

log = logging.getLogger("batch_runner")


def plan(
    jobs: Jobs,
    *,
    out: str | os.PathLike[str],
    ledger: str | os.PathLike[str] | None = None,
    retry_failed: bool = False,
    rerun_changed: bool = False,
    shard: str | Shard | None = None,
    max_jobs: int | None = None,
    download: bool = True,
) -> Plan:
    """What `run_batch` would do now, sending nothing (a dry run): the jobs are
    validated exactly as for a run and compared with the ledger. Takes no lock
    and needs no key. Raises ManifestError on a bad job; jobs edited since
    their last run are counted (`changed`), and unless `rerun_changed`,
    `refusal` says why a run would refuse to start. With a bucket URL as
    `out`, the ledger is read from the bucket (into a temporary folder, never
    into the state dir a run may be using)."""
    chosen = as_shard(shard)
    if max_jobs is not None:
        _check_int("max_jobs", max_jobs, 0)
    source = job_source(jobs)
    with contextlib.ExitStack() as scratch:
        run_dir, store = _locate(out, ledger, None)
        if store is not None:
            run_dir = RunDir(scratch.enter_context(tempfile.TemporaryDirectory()))
            run_blocking(fetch_ledger_if_any(store, run_dir.root))
        survey = _survey(
            source,
            run_dir,
            retry_failed=retry_failed,
            rerun_changed=rerun_changed,
            shard=chosen,
            download=download,
        )
        counts = survey.counts
        refusal = (
            str(_refusal(source, run_dir, counts))
            if counts.counts[Action.CHANGED]
            else None
        )
    return Plan.from_counts(
        counts,
        max_jobs=max_jobs,
        shard=chosen.label if chosen else None,
        refusal=refusal,
        matrix_rows=survey.summary.matrix_rows,
        matrix_jobs=survey.summary.matrix_jobs,
    )


@dataclass(frozen=True, slots=True)
class _Survey:
    """The ledger's state, the manifest's summary and the plan they make."""

    counts: PlanCounts
    state: ResumeState
    summary: ManifestSummary


def _survey(
    source: ManifestSource,
    run_dir: RunDir,
    *,
    retry_failed: bool,
    rerun_changed: bool = False,
    shard: Shard | None,
    download: bool = True,
    write_key_cache: bool = False,
) -> _Survey:
    """Read the ledger, then validate every job and count the plan in one pass
    (millions of rows), comparing each job's parameters with its last record;
    raises ManifestError before anything is sent. `write_key_cache`: a run,
    which holds the lock, leaves the manifest's keys for later plans."""
    # the snapshot a run leaves and the ledger's tail: the whole ledger's state
    state = read_resume_state(run_dir.ledger)
    for warning in state.warnings:
        log.warning("%s", warning)
    counts, count = plan_counter(
        state,
        retry_failed=retry_failed,
        keep=shard.keeps if shard is not None else None,
        download=download,
        rerun_changed=rerun_changed,
    )
    summary = validate_manifest(
        source,
        on_job_params=count,
        key_cache=key_cache_path(run_dir.ledger),
        write_key_cache=write_key_cache,
    )
    if count.unsettled:
        count.settle(recorded_params(run_dir.ledger, count.unsettled))
    for warning in summary.warnings:
        log.warning("%s", warning)
    return _Survey(counts, state, summary)


def _refusal(
    source: ManifestSource, run_dir: RunDir, counts: PlanCounts
) -> ChangedJobsError:
    name = source.name if isinstance(source, JobItems) else os.fspath(source)
    return changed_jobs_error(counts, manifest=name, ledger=run_dir.ledger)


def _locate(
    out: str | os.PathLike[str],
    ledger: str | os.PathLike[str] | None,
    state_dir: str | os.PathLike[str] | None,
) -> tuple[RunDir, Store | None]:
    """The run directory for `out`: a local folder, or for an object-store URL
    its state dir (published at the URL) and the store; raises UsageError (or
    MissingExtraError) for what cannot work."""
    text = os.fspath(out)
    if not is_remote(text):
        if state_dir is not None:
            raise UsageError(
                "state_dir (--state-dir) goes with an object-store out (s3://...)"
            )
        return RunDir(out, ledger=ledger), None
    try:
        url: RemoteUrl = parse_url(text)
    except StoreError as exc:
        raise UsageError(f"out: {exc}") from None
    if ledger is not None:
        raise UsageError(
            f"ledger (--ledger) cannot be used with out {url}: the ledger is in "
            "the bucket"
        )
    store = open_store(url)  # MissingExtraError now, not after validating
    root = Path(state_dir) if state_dir is not None else default_state_dir(url)
    return RunDir(root, location=url.url), store


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise UsageError(f"{name} must be >= {low}, got {value}")
