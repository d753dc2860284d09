"""One whole run as a library call: lock, ledger, validation and plan, simulator,
HTTP session, ledger writers, runner, metadata, result.

`run_batch` (async) and `run_batch_sync` are the entry points; the CLI's `run` is
one caller of `run_batch_sync`. Nothing here prints, exits, configures logging
or installs signal handlers unless asked to (`handle_signals=True`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import math
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import aiohttp

from batch_runner.engine.env import BASE_URL_ENV, DEFAULT_BASE_URL, KEY_ENV
from batch_runner.engine.plan import Action, PlanCounts, work_items
from batch_runner.engine.progress import NullProgress, Progress, TqdmProgress
from batch_runner.engine.result import Plan, RunResult, conclude
from batch_runner.engine.retry import RetryPolicy
from batch_runner.engine.runner import Runner, RunOptions
from batch_runner.engine.runner import RunResult as RunTally
from batch_runner.engine.sharding import Shard, as_shard
from batch_runner.engine.survey import (
    _check_int,
    _locate,
    _refusal,
    _survey,
)

# moved to engine.survey (a dry run must not import aiohttp); still importable here
from batch_runner.engine.survey import _Survey as _Survey
from batch_runner.engine.survey import plan as plan
from batch_runner.engine.transcoder import Transcoder
from batch_runner.engine.uploads import bucket_publisher
from batch_runner.errors import (
    BatchRunnerError,
    UsageError,
)
from batch_runner.exit_codes import ExitCode
from batch_runner.manifest.items import Jobs, job_source
from batch_runner.manifest.reader import (
    ManifestSource,
    iter_jobs,
)
from batch_runner.models import JobSpec
from batch_runner.outputs.dataset import compact_metadata
from batch_runner.outputs.metadata_log import MetadataLog
from batch_runner.outputs.metadata_log import sync as sync_metadata_log
from batch_runner.simulator import app as simulator
from batch_runner.store.bucket import (
    DEFAULT_SYNC_INTERVAL,
    BucketRun,
)
from batch_runner.store.ledger import (
    LedgerWriter,
    ResumeState,
)
from batch_runner.store.remote import (
    Store,
)
from batch_runner.store.rundir import RunDir
from batch_runner.store.snapshot import RUN_MAX_TAIL, write_snapshot
from batch_runner.store.transcode import ImageFormatName, ImageOptions, image_options
from batch_runner.wire.client import DEFAULT_MAX_IMAGE_BYTES, ZImageClient
from batch_runner.wire.urls import check_base_url

log = logging.getLogger("batch_runner")

#: called with each ledger record as it is written
OnRecord = Callable[[dict[str, Any]], object]
EventLoop = Literal["auto", "asyncio", "uvloop"]


@dataclass(frozen=True, slots=True)
class _Settings:
    """Everything one run was asked to do, checked."""

    source: ManifestSource
    run_dir: RunDir
    api_key: str
    #: None: start the built-in simulator
    base_url: str | None
    options: RunOptions
    request_timeout: float
    retry_failed: bool
    rerun_changed: bool
    max_image_bytes: int
    fsync: bool
    progress: bool
    shard: Shard | None
    mock_fault_rate: float
    mock_generation_time: float
    on_record: OnRecord | None
    handle_signals: bool
    images: ImageOptions
    #: the run directory is this bucket; `run_dir.root` is then its state dir
    store: Store | None = None
    sync_interval: float = DEFAULT_SYNC_INTERVAL


# -- the public calls ------------------------------------------------------------


async def run_batch(
    jobs: Jobs,
    *,
    out: str | os.PathLike[str],
    api_key: str | None = None,
    base_url: str | None = None,
    mock: bool = False,
    ledger: str | os.PathLike[str] | None = None,
    concurrency: int | Literal["auto"] = 8,
    max_concurrency: int = 256,
    rate: float | None = None,
    retries: int = 5,
    poll_interval: float = 1.0,
    job_timeout: float = 900.0,
    request_timeout: float = 60.0,
    grace: float = 10.0,
    retry_failed: bool = False,
    rerun_changed: bool = False,
    download: bool = True,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    image_format: ImageFormatName = "original",
    quality: int | None = None,
    max_side: int | None = None,
    fsync: bool = False,
    max_jobs: int | None = None,
    max_failures: int | None = None,
    shard: str | Shard | None = None,
    progress: bool = False,
    on_record: OnRecord | None = None,
    handle_signals: bool = False,
    mock_fault_rate: float = 0.0,
    mock_generation_time: float = 0.5,
    state_dir: str | os.PathLike[str] | None = None,
    sync_interval: float = DEFAULT_SYNC_INTERVAL,
) -> RunResult:
    """Run (or resume) a batch of jobs; returns when every job in scope is done
    or the run stopped. Rerunning with the same `out` resumes: finished jobs are
    skipped, submitted tasks are polled, never paid for twice.

    `jobs` is a manifest path (YAML, CSV or JSONL), or an iterable of prompt
    strings and mappings with the manifest fields (`prompt`, `id`, `resolution`,
    `seed`, `prompt_extend`, `repeat`, `meta`, `matrix`). Every job is validated before
    anything is sent; a bad one raises ManifestError naming its line (for an
    iterable: its 1-based position, with `path` "<jobs>") and field. An
    iterable is read twice (validation, then the run) and not held in memory;
    a one-shot iterator (a generator, `map`) is copied into a list first.

    `api_key` defaults to `$TENSORSLAB_API_KEY`, `base_url` to
    `$TENSORSLAB_BASE_URL` or the real API; `mock=True` runs against the
    built-in simulator instead (no key needed). The other keywords are the
    `batch-runner run` options of the same names (`concurrency="auto"` is
    `--concurrency auto`; `retries` counts retries after the first try;
    `image_format`, `quality` and `max_side` are `--image-format`, `--quality`
    and `--max-side`, and need the `images` extra unless the format is
    "original" without `max_side`).

    `on_record(record)` is called with a copy of every ledger record as it is
    written, on the event loop (keep it quick); an exception in it is logged
    and the run goes on. With `handle_signals=True` (main thread only),
    SIGINT/SIGTERM stop the run as in the CLI: no new jobs, `grace` seconds for
    those in flight, a second signal cancels them. Cancelling the call's task
    cancels the in-flight jobs; the ledger keeps every record written.

    `out` may be an object-store URL (`s3://bucket/prefix`, also gs://, az://;
    the `s3` extra): the run then works in `state_dir` (default: a folder per
    URL under the user's cache directory), restores it from the bucket when it
    is empty, uploads each image as it arrives and the new ledger records every
    `sync_interval` seconds and at every clean stop.

    A job whose parameters differ from its id's last ledger record raises
    ChangedJobsError (a ManifestError) before anything is sent, naming the
    jobs and what changed; `rerun_changed=True` submits such jobs again.

    Raises ManifestError (bad job), UsageError (bad keyword value, no key;
    MissingExtraError, a UsageError, when Pillow or the `s3` extra is needed and
    missing), RunLockedError (another run holds `out` or the ledger),
    LedgerError, StoreError (the bucket cannot be read when the run starts).
    Slow file work (validation, the metadata index) runs in a worker thread so
    the event loop stays responsive.
    """
    settings = _settings(
        jobs,
        out=out,
        api_key=api_key,
        base_url=base_url,
        mock=mock,
        ledger=ledger,
        concurrency=concurrency,
        max_concurrency=max_concurrency,
        rate=rate,
        retries=retries,
        poll_interval=poll_interval,
        job_timeout=job_timeout,
        request_timeout=request_timeout,
        grace=grace,
        retry_failed=retry_failed,
        rerun_changed=rerun_changed,
        download=download,
        max_image_bytes=max_image_bytes,
        image_format=image_format,
        quality=quality,
        max_side=max_side,
        fsync=fsync,
        max_jobs=max_jobs,
        max_failures=max_failures,
        shard=shard,
        progress=progress,
        on_record=on_record,
        handle_signals=handle_signals,
        mock_fault_rate=mock_fault_rate,
        mock_generation_time=mock_generation_time,
        state_dir=state_dir,
        sync_interval=sync_interval,
    )
    return await _run_async(settings)


def run_batch_sync(
    jobs: Jobs,
    *,
    out: str | os.PathLike[str],
    api_key: str | None = None,
    base_url: str | None = None,
    mock: bool = False,
    ledger: str | os.PathLike[str] | None = None,
    concurrency: int | Literal["auto"] = 8,
    max_concurrency: int = 256,
    rate: float | None = None,
    retries: int = 5,
    poll_interval: float = 1.0,
    job_timeout: float = 900.0,
    request_timeout: float = 60.0,
    grace: float = 10.0,
    retry_failed: bool = False,
    rerun_changed: bool = False,
    download: bool = True,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    image_format: ImageFormatName = "original",
    quality: int | None = None,
    max_side: int | None = None,
    fsync: bool = False,
    max_jobs: int | None = None,
    max_failures: int | None = None,
    shard: str | Shard | None = None,
    progress: bool = False,
    on_record: OnRecord | None = None,
    handle_signals: bool = False,
    mock_fault_rate: float = 0.0,
    mock_generation_time: float = 0.5,
    event_loop: EventLoop = "auto",
    state_dir: str | os.PathLike[str] | None = None,
    sync_interval: float = DEFAULT_SYNC_INTERVAL,
) -> RunResult:
    """`run_batch` for code that is not async: same arguments, same result.

    In a plain script it runs the batch on an event loop of its own
    (`event_loop`: uvloop when installed with "auto", or force "asyncio" /
    "uvloop"). Called where an event loop is already running (a Jupyter cell,
    an async framework) it runs the batch on a worker thread with its own loop
    and blocks until it is done; `on_record` is then called on that thread.
    Ctrl-C (KeyboardInterrupt) cancels the in-flight jobs, waits for the ledger
    to be written, and is raised again.
    """
    settings = _settings(
        jobs,
        out=out,
        api_key=api_key,
        base_url=base_url,
        mock=mock,
        ledger=ledger,
        concurrency=concurrency,
        max_concurrency=max_concurrency,
        rate=rate,
        retries=retries,
        poll_interval=poll_interval,
        job_timeout=job_timeout,
        request_timeout=request_timeout,
        grace=grace,
        retry_failed=retry_failed,
        rerun_changed=rerun_changed,
        download=download,
        max_image_bytes=max_image_bytes,
        image_format=image_format,
        quality=quality,
        max_side=max_side,
        fsync=fsync,
        max_jobs=max_jobs,
        max_failures=max_failures,
        shard=shard,
        progress=progress,
        on_record=on_record,
        handle_signals=handle_signals,
        mock_fault_rate=mock_fault_rate,
        mock_generation_time=mock_generation_time,
        state_dir=state_dir,
        sync_interval=sync_interval,
    )
    factory = loop_factory(event_loop)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_here(settings, factory)
    if settings.handle_signals:
        raise UsageError(
            "handle_signals=True needs the main thread, but an event loop is "
            "already running here; use `await run_batch(...)` instead"
        )
    return _run_on_worker_thread(settings, factory)


# -- running ---------------------------------------------------------------------


async def _run_async(s: _Settings) -> RunResult:
    started = time.monotonic()
    _check_signals_allowed(s)
    with s.run_dir.lock():
        bucket = _bucket_of(s)
        if bucket is not None:
            await bucket.open()
        survey = await asyncio.to_thread(
            _survey,
            s.source,
            s.run_dir,
            retry_failed=s.retry_failed,
            rerun_changed=s.rerun_changed,
            shard=s.shard,
            download=s.options.download,
            write_key_cache=True,
        )
        counts, state = survey.counts, survey.state
        _refuse_changed(s, counts)
        the_plan = _announce(s, counts)
        tally = await _execute(s, state, counts, survey.summary.repeated, bucket)
        # the resume state can be large; let it go before the metadata pass
        del state
        if bucket is not None:
            await refresh_bucket_metadata(s.run_dir, bucket)
        else:
            await asyncio.to_thread(refresh_metadata, s.run_dir)
        await asyncio.to_thread(
            functools.partial(
                write_snapshot, max_tail=RUN_MAX_TAIL, attempts=s.run_dir.attempts
            ),
            s.run_dir.ledger,
        )
        return _result(s, tally, the_plan, started, bucket)


def _run_here(
    s: _Settings, factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> RunResult:
    """The synchronous path: file work in this thread (so Ctrl-C during a long
    validation stops at once), the network part on an event loop of its own."""
    started = time.monotonic()
    _check_signals_allowed(s)
    with s.run_dir.lock(), asyncio.Runner(loop_factory=factory) as runner:
        bucket = _bucket_of(s)
        if bucket is not None:
            runner.run(bucket.open())
        survey = _survey(
            s.source,
            s.run_dir,
            retry_failed=s.retry_failed,
            rerun_changed=s.rerun_changed,
            shard=s.shard,
            download=s.options.download,
            write_key_cache=True,
        )
        counts, state = survey.counts, survey.state
        _refuse_changed(s, counts)
        the_plan = _announce(s, counts)
        tally = runner.run(_execute(s, state, counts, survey.summary.repeated, bucket))
        del state
        if bucket is not None:
            runner.run(refresh_bucket_metadata(s.run_dir, bucket))
        else:
            refresh_metadata(s.run_dir)
        write_snapshot(
            s.run_dir.ledger, max_tail=RUN_MAX_TAIL, attempts=s.run_dir.attempts
        )
        return _result(s, tally, the_plan, started, bucket)


def _run_on_worker_thread(
    s: _Settings, factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> RunResult:
    """Run on a thread with its own loop (the caller's loop is busy running us)."""
    outcome: concurrent.futures.Future[RunResult] = concurrent.futures.Future()
    cancel = _CrossThreadCancel()

    async def main() -> RunResult:
        cancel.attach()
        return await _run_async(s)

    def work() -> None:
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                result = runner.run(main())
        except BaseException as exc:  # handed to the caller's thread below
            outcome.set_exception(exc)
        else:
            # only now: the loop is closed and every file is written
            outcome.set_result(result)

    thread = threading.Thread(target=work, name="batch-runner")
    thread.start()
    # Wait on the future, not on thread.join(): a join interrupted by Ctrl-C
    # marks the thread stopped while it still runs (CPython bpo-45274), so a
    # second join would return at once, before the ledger is written.
    try:
        concurrent.futures.wait([outcome])
    except KeyboardInterrupt:
        cancel.cancel()
        # wait for the jobs to wind down and the ledger to be written
        concurrent.futures.wait([outcome])
        raise
    thread.join()
    return outcome.result()


def _check_signals_allowed(s: _Settings) -> None:
    # Python delivers signals to the main thread only
    if s.handle_signals and threading.current_thread() is not threading.main_thread():
        raise UsageError("handle_signals=True works only in the main thread")


class _CrossThreadCancel:
    """Cancel a task running on another thread's loop, even before it started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self) -> None:
        """Called by the task itself, first thing."""
        with self._lock:
            if self._cancelled:
                raise asyncio.CancelledError
            self._task = asyncio.current_task()
            self._loop = asyncio.get_running_loop()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._task is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self._task.cancel)


def _refuse_changed(s: _Settings, counts: PlanCounts) -> None:
    """Jobs edited since their last run stop the run before anything is sent,
    unless `rerun_changed`."""
    if counts.counts[Action.CHANGED]:
        raise _refusal(s.source, s.run_dir, counts)


def _announce(s: _Settings, counts: PlanCounts) -> Plan:
    the_plan = Plan.from_counts(
        counts,
        max_jobs=s.options.max_jobs,
        shard=s.shard.label if s.shard else None,
    )
    log.info("%s", the_plan.describe())
    return the_plan


def _result(
    s: _Settings,
    tally: RunTally,
    the_plan: Plan,
    started: float,
    bucket: BucketRun | None = None,
) -> RunResult:
    result = conclude(
        tally,
        the_plan,
        elapsed=time.monotonic() - started,
        out=s.run_dir.root,
        ledger=s.run_dir.ledger,
    )
    if bucket is not None and not bucket.synced and result.exit_code == ExitCode.OK:
        # the last records are only in the state dir: not a finished run yet
        return replace(result, exit_code=ExitCode.FAILED)
    return result


def _bucket_of(s: _Settings) -> BucketRun | None:
    if s.store is None:
        return None
    return BucketRun(s.store, s.run_dir.root, sync_interval=s.sync_interval)


async def _execute(
    s: _Settings,
    state: ResumeState,
    counts: PlanCounts,
    repeated: frozenset[str],
    bucket: BucketRun | None = None,
) -> RunTally:
    """The network part: simulator (if mock), session, client, writers, runner;
    with a bucket, its periodic sync and the final one."""
    async with contextlib.AsyncExitStack() as stack:
        if bucket is not None:
            # registered first, so it runs last: after the ledger writers have
            # flushed every record, the final sync uploads them all
            stack.push_async_callback(bucket.close)
        base_url = s.base_url
        if base_url is None:
            sim = await stack.enter_async_context(
                await simulator.start_simulator(
                    simulator.SimulatorConfig(
                        key=s.api_key,
                        fault_rate=s.mock_fault_rate,
                        generation_time=s.mock_generation_time,
                        # a simulated hang ends in a 503 after 3 s: demos must not stall
                        hang_time=min(3.0, s.request_timeout),
                    )
                )
            )
            base_url = sim.url
            log.info("using the built-in Z-Image simulator at %s", base_url)
        session = await stack.enter_async_context(
            aiohttp.ClientSession(
                # our semaphore is the limit; the connector's default of 100
                # would silently cap the concurrency
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            )
        )
        client = ZImageClient(
            session,
            base_url,
            s.api_key,
            request_timeout=s.request_timeout,
            max_image_bytes=s.max_image_bytes,
        )
        # entered before the ledger writer so it closes after it: every line
        # the writer flushes on the way out is copied
        succeeded_log = MetadataLog(
            s.run_dir.metadata_log, s.run_dir.ledger, reruns=counts.rerun
        )
        await asyncio.to_thread(succeeded_log.open)
        stack.callback(succeeded_log.close)
        ledger = await stack.enter_async_context(
            LedgerWriter(
                s.run_dir.ledger,
                fsync=s.fsync,
                secrets=[s.api_key],
                on_record=s.on_record,
                immediate=True,
                after_write=succeeded_log.note,
            )
        )
        attempt_log = await stack.enter_async_context(
            LedgerWriter(s.run_dir.attempts, fsync=s.fsync)
        )
        s.run_dir.remove_partial_downloads()
        transcoder = (
            await stack.enter_async_context(
                Transcoder(s.images, s.run_dir.images, work_dir=s.run_dir.incoming)
            )
            if s.images.transcodes
            else None
        )
        if bucket is not None:
            bucket.start()
        progress: Progress = (
            TqdmProgress(counts.in_scope)
            if s.progress and counts.in_scope
            else NullProgress()
        )
        stack.callback(progress.close)
        runner = Runner(
            client,
            ledger,
            s.options,
            out_dir=s.run_dir.root,
            images_dir=s.run_dir.images,
            progress=progress,
            attempt_log=attempt_log,
            run_id=new_run_id(),
            transcoder=transcoder,
            legacy_stems=state.legacy_stems,
            publish=bucket_publisher(bucket) if bucket is not None else None,
        )
        if s.handle_signals:
            stack.enter_context(_stop_on_signals(runner))
        items = work_items(
            _jobs_in_scope(s, repeated),
            state,
            retry_failed=s.retry_failed,
            download=s.options.download,
            rerun=counts.rerun,
        )
        return await runner.run(items)


def new_run_id() -> str:
    """The name a run's attempt lines and submit outcomes share, which the
    duplicate-submit audit pairs them by: the start time and pid for people,
    and random bits so that two runs in one process within one second (a
    notebook, an Airflow task that runs twice) are never taken for one."""
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{started}-{os.getpid()}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def _stop_on_signals(runner: Runner) -> Iterator[None]:
    """SIGINT/SIGTERM ask the runner to stop (a second one cancels at once)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, runner.request_stop, signum)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _jobs_in_scope(s: _Settings, repeated: frozenset[str]) -> Iterator[JobSpec]:
    jobs = iter_jobs(s.source, repeated=repeated)
    return s.shard.select(jobs) if s.shard is not None else jobs


def refresh_metadata(run_dir: RunDir) -> None:
    """Compact DIR/metadata.jsonl from the metadata log, unless it is already newer."""
    target = run_dir.metadata
    try:
        sync_metadata_log(run_dir.metadata_log, run_dir.ledger)
        if (
            target.exists()
            and target.stat().st_mtime >= run_dir.metadata_log.stat().st_mtime
        ):
            return
        rows = compact_metadata(run_dir.root, run_dir.ledger)
    except (OSError, BatchRunnerError) as exc:
        # the images and the ledger are what matter; the index can be rebuilt
        log.warning("could not write %s: %s", target, exc)
        return
    log.info("metadata.jsonl: %d image(s)", rows)


async def refresh_bucket_metadata(run_dir: RunDir, bucket: BucketRun) -> None:
    """Compact metadata.jsonl against the images in the bucket, and upload it."""
    where = bucket.url.child(run_dir.metadata.name)
    try:
        present = await bucket.image_keys()
        rows = await asyncio.to_thread(
            compact_metadata, run_dir.root, run_dir.ledger, present=present.__contains__
        )
        await bucket.upload_metadata(run_dir.metadata)
    except (OSError, BatchRunnerError) as exc:
        # the images and the ledger are what matter; the index can be rebuilt
        log.warning("could not write %s: %s", where, exc)
        return
    log.info("metadata.jsonl: %d image(s)", rows)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when asked for (or, with "auto", when installed)."""
    if choice not in ("auto", "asyncio", "uvloop"):
        raise UsageError(
            f"event_loop must be 'auto', 'asyncio' or 'uvloop', got {choice!r}"
        )
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise UsageError(
                "--event-loop uvloop: uvloop is not installed "
                "(pip install 'zimage-batch-runner[fast]')"
            ) from None
        return None
    log.debug("using uvloop")
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


# -- checking the arguments ---------------------------------------------------------


def _settings(
    jobs: Jobs,
    *,
    out: str | os.PathLike[str],
    api_key: str | None,
    base_url: str | None,
    mock: bool,
    ledger: str | os.PathLike[str] | None,
    concurrency: int | Literal["auto"],
    max_concurrency: int,
    rate: float | None,
    retries: int,
    poll_interval: float,
    job_timeout: float,
    request_timeout: float,
    grace: float,
    retry_failed: bool,
    rerun_changed: bool,
    download: bool,
    max_image_bytes: int,
    image_format: ImageFormatName,
    quality: int | None,
    max_side: int | None,
    fsync: bool,
    max_jobs: int | None,
    max_failures: int | None,
    shard: str | Shard | None,
    progress: bool,
    on_record: OnRecord | None,
    handle_signals: bool,
    mock_fault_rate: float,
    mock_generation_time: float,
    state_dir: str | os.PathLike[str] | None = None,
    sync_interval: float = DEFAULT_SYNC_INTERVAL,
) -> _Settings:
    """Check every keyword (UsageError names the bad one) and resolve defaults."""
    adaptive = concurrency == "auto"
    if not adaptive:
        _check_int("concurrency", concurrency, 1)
    _check_int("max_concurrency", max_concurrency, 1)
    if rate is not None:
        _check_float("rate", rate, low=0.0, inclusive=False)
    _check_int("retries", retries, 0)
    _check_float("poll_interval", poll_interval, low=0.01)
    _check_float("job_timeout", job_timeout, low=0.0, inclusive=False)
    _check_float("request_timeout", request_timeout, low=0.0, inclusive=False)
    _check_float("grace", grace, low=0.0)
    _check_int("max_image_bytes", max_image_bytes, 1)
    if max_jobs is not None:
        _check_int("max_jobs", max_jobs, 0)
    if max_failures is not None:
        _check_int("max_failures", max_failures, 1)
    _check_float("mock_fault_rate", mock_fault_rate, low=0.0, high=1.0)
    _check_float("mock_generation_time", mock_generation_time, low=0.0)
    if on_record is not None and not callable(on_record):
        raise UsageError(f"on_record must be callable, got {on_record!r}")
    # before the key: a missing extra is the first thing to fix
    images = image_options(image_format, quality, max_side, download=download)
    _check_float("sync_interval", sync_interval, low=0.0, inclusive=False)
    run_dir, store = _locate(out, ledger, state_dir)
    key, url = _where_to_send(api_key, base_url, mock)
    options = RunOptions(
        concurrency=max_concurrency if adaptive else int(concurrency),
        adaptive=adaptive,
        max_concurrency=max_concurrency,
        rate=rate,
        retry=RetryPolicy(attempts=retries + 1),
        poll_interval=poll_interval,
        job_timeout=job_timeout,
        download=download,
        grace=grace,
        max_jobs=max_jobs,
        max_failures=max_failures,
    )
    return _Settings(
        source=job_source(jobs),
        run_dir=run_dir,
        api_key=key,
        base_url=url,
        options=options,
        request_timeout=request_timeout,
        retry_failed=retry_failed,
        rerun_changed=rerun_changed,
        max_image_bytes=max_image_bytes,
        fsync=fsync,
        progress=progress,
        shard=as_shard(shard),
        mock_fault_rate=mock_fault_rate,
        mock_generation_time=mock_generation_time,
        on_record=on_record,
        handle_signals=handle_signals,
        images=images,
        store=store,
        sync_interval=sync_interval,
    )


def _where_to_send(
    api_key: str | None, base_url: str | None, mock: bool
) -> tuple[str, str | None]:
    """The key and the base URL (None: the simulator), from arguments or env."""
    key = (api_key if api_key is not None else os.environ.get(KEY_ENV, "")).strip()
    if mock:
        if base_url is not None:
            raise UsageError("give base_url or mock=True, not both")
        # the simulator checks a key too; any will do
        return key or "sim-" + secrets.token_hex(12), None
    if not key:
        raise UsageError(
            f"no API key: pass api_key=... or set {KEY_ENV} "
            "(or use mock=True to run on the simulator)"
        )
    url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    try:
        check_base_url(url)
    except ValueError as exc:
        # refused before anything is sent, not retried job by job
        source = "base_url" if base_url else BASE_URL_ENV
        raise UsageError(f"{source}: {exc}") from None
    return key, url


def _check_float(
    name: str,
    value: object,
    *,
    low: float,
    high: float | None = None,
    inclusive: bool = True,
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value}")
    too_low = value < low if inclusive else value <= low
    if too_low or (high is not None and value > high):
        bound = f">= {low:g}" if inclusive else f"> {low:g}"
        if high is not None:
            bound = f"between {low:g} and {high:g}"
        raise UsageError(f"{name} must be {bound}, got {value}")
