"""The `run` command: plan against the ledger, then run (or just print the plan).

Receives a fully parsed RunConfig from the CLI; owns the event loop's resources
(simulator, HTTP session, ledger writers) and turns the outcome into an exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from batch_runner.engine.plan import Action, PlanCounts, plan_counter, work_items
from batch_runner.engine.progress import NullProgress, Progress, TqdmProgress
from batch_runner.engine.runner import Runner, RunOptions, RunResult, StopReason
from batch_runner.engine.sharding import Shard
from batch_runner.errors import BatchRunnerError
from batch_runner.exit_codes import ExitCode
from batch_runner.manifest.reader import iter_jobs, validate_manifest
from batch_runner.models import JobSpec
from batch_runner.outputs.dataset import write_metadata
from batch_runner.simulator import app as simulator
from batch_runner.store.ledger import LedgerWriter, ResumeState, read_ledger
from batch_runner.wire.client import DEFAULT_MAX_IMAGE_BYTES, ZImageClient

log = logging.getLogger("batch_runner")

ATTEMPTS_NAME = "attempts.jsonl"


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything `batch-runner run` was asked to do."""

    manifest: Path
    out_dir: Path
    ledger: Path
    api_key: str
    #: None means: start the built-in simulator (--mock)
    base_url: str | None
    options: RunOptions = field(default_factory=RunOptions)
    request_timeout: float = 60.0
    retry_failed: bool = False
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    fsync: bool = False
    progress: bool = False
    shard: Shard | None = None
    dry_run: bool = False
    credits_per_image: float | None = None
    mock_fault_rate: float = 0.0
    mock_generation_time: float = 0.5
    #: "auto" uses uvloop when it is installed
    event_loop: str = "auto"


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when asked for (or, with "auto", when installed)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise BatchRunnerError(
                "--event-loop uvloop: uvloop is not installed "
                "(pip install 'zimage-batch-runner[fast]')"
            ) from None
        return None
    log.debug("using uvloop")
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def remove_partial_downloads(images_dir: Path) -> None:
    """`.part` files are downloads a crash interrupted; their jobs fetch again."""
    if images_dir.is_dir():
        for part in images_dir.glob(".*.part"):
            part.unlink(missing_ok=True)


def manifest_jobs(
    cfg: RunConfig, repeated: frozenset[str] | None = None
) -> Iterator[JobSpec]:
    jobs = iter_jobs(cfg.manifest, repeated=repeated)
    return cfg.shard.select(jobs) if cfg.shard is not None else jobs


def describe_plan(counts: PlanCounts, cfg: RunConfig) -> str:
    c = counts.counts
    shard = f" in {cfg.shard.label}" if cfg.shard else ""
    skipped = " (skipped; --retry-failed reruns them)" if c[Action.SKIP_FAILED] else ""
    return (
        f"{counts.total} jobs{shard}: {c[Action.SUBMIT]} to submit, "
        f"{c[Action.POLL]} to poll, {c[Action.DONE]} already done, "
        f"{c[Action.SKIP_FAILED]} failed earlier{skipped}"
    )


def dry_run(cfg: RunConfig, counts: PlanCounts) -> int:
    """Print the plan and the credits it would spend; sends nothing."""
    c = counts.counts
    to_submit = c[Action.SUBMIT]
    if cfg.options.max_jobs is not None:
        to_submit = min(to_submit, cfg.options.max_jobs)
    print(f"plan: {describe_plan(counts, cfg)}")
    print(f"  to submit:       {to_submit}")
    print(f"  to poll:         {c[Action.POLL]}")
    print(f"  already done:    {c[Action.DONE]}")
    print(f"  failed, skipped: {c[Action.SKIP_FAILED]}")
    if cfg.credits_per_image is not None:
        credits = to_submit * cfg.credits_per_image
        print(
            f"  credits:         {credits:g} ({to_submit} images x "
            f"{cfg.credits_per_image:g}; polled tasks are already paid for)"
        )
    print("dry run: nothing was sent")
    return ExitCode.OK


def execute(cfg: RunConfig) -> int:
    """Validate and plan, then run or print the plan; returns the exit code.

    Raises ManifestError before anything is sent if any row is bad.
    """
    started = time.monotonic()
    state = read_ledger(cfg.ledger)
    for warning in state.warnings:
        log.warning("%s", warning)
    # one pass validates every row and counts the plan (millions of rows)
    counts, count = plan_counter(
        state,
        retry_failed=cfg.retry_failed,
        keep=cfg.shard.keeps if cfg.shard is not None else None,
    )
    summary = validate_manifest(cfg.manifest, on_job=count)
    for warning in summary.warnings:
        log.warning("%s", warning)
    if cfg.dry_run:
        return dry_run(cfg, counts)
    log.info("%s", describe_plan(counts, cfg))
    with asyncio.Runner(loop_factory=loop_factory(cfg.event_loop)) as loop_runner:
        result = loop_runner.run(_run(cfg, state, counts, summary.repeated))
    # the resume state can be large; let it go before the metadata pass
    del state, count
    refresh_metadata(cfg)
    return finish(result, counts, started)


def refresh_metadata(cfg: RunConfig) -> None:
    """Rebuild DIR/metadata.jsonl from the ledger, unless it is already newer."""
    target = cfg.out_dir / "metadata.jsonl"
    try:
        if target.exists() and target.stat().st_mtime >= cfg.ledger.stat().st_mtime:
            return
        rows = write_metadata(cfg.out_dir, cfg.ledger)
    except (OSError, BatchRunnerError) as exc:
        # the images and the ledger are what matter; the index can be rebuilt
        log.warning("could not write %s: %s", target, exc)
        return
    log.info("metadata.jsonl: %d image(s)", rows)


async def _run(
    cfg: RunConfig,
    state: ResumeState,
    counts: PlanCounts,
    repeated: frozenset[str],
) -> RunResult:
    async with contextlib.AsyncExitStack() as stack:
        base_url = cfg.base_url
        if base_url is None:
            sim = await stack.enter_async_context(
                await simulator.start_simulator(
                    simulator.SimulatorConfig(
                        key=cfg.api_key,
                        fault_rate=cfg.mock_fault_rate,
                        generation_time=cfg.mock_generation_time,
                        # a simulated hang ends in a 503 after 3 s: demos must not stall
                        hang_time=min(3.0, cfg.request_timeout),
                    )
                )
            )
            base_url = sim.url
            log.info("using the built-in Z-Image simulator at %s", base_url)
        session = await stack.enter_async_context(
            aiohttp.ClientSession(
                # our semaphore is the limit; the connector's default of 100
                # would silently cap --concurrency
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            )
        )
        client = ZImageClient(
            session,
            base_url,
            cfg.api_key,
            request_timeout=cfg.request_timeout,
            max_image_bytes=cfg.max_image_bytes,
        )
        ledger = await stack.enter_async_context(
            LedgerWriter(cfg.ledger, fsync=cfg.fsync, secrets=[cfg.api_key])
        )
        attempt_log = await stack.enter_async_context(
            LedgerWriter(cfg.out_dir / ATTEMPTS_NAME, fsync=cfg.fsync)
        )
        remove_partial_downloads(cfg.out_dir / "images")
        progress: Progress = (
            TqdmProgress(counts.in_scope)
            if cfg.progress and counts.in_scope
            else NullProgress()
        )
        stack.callback(progress.close)
        runner = Runner(
            client,
            ledger,
            cfg.options,
            out_dir=cfg.out_dir,
            progress=progress,
            attempt_log=attempt_log,
            run_id=f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}",
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, runner.request_stop, signum)
        try:
            items = work_items(
                manifest_jobs(cfg, repeated), state, retry_failed=cfg.retry_failed
            )
            return await runner.run(items)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)


def finish(result: RunResult, counts: PlanCounts, started: float) -> int:
    """Log the one-line summary and choose the exit code."""
    elapsed = time.monotonic() - started
    failed_before = counts.counts[Action.SKIP_FAILED]
    pending = max(0, counts.in_scope - result.succeeded - result.failed)
    rate = result.succeeded / elapsed if elapsed > 0 else 0.0
    extra = f", {failed_before} failed earlier" if failed_before else ""
    log.info(
        "summary: succeeded %d, failed %d, pending %d%s; %d submitted, %d retries "
        "(%d throttled); peak concurrency %d; %.1fs, %.2f jobs/s",
        result.succeeded,
        result.failed,
        pending,
        extra,
        result.submits,
        result.retries,
        result.throttled,
        result.peak_concurrency,
        elapsed,
        rate,
        extra={
            "summary": {
                "succeeded": result.succeeded,
                "failed": result.failed,
                "pending": pending,
                "failed_earlier": failed_before,
                "submitted": result.submits,
                "retries": result.retries,
                "throttled": result.throttled,
                "peak_concurrency": result.peak_concurrency,
                "elapsed_s": round(elapsed, 3),
                "jobs_per_s": round(rate, 3),
                "stop": result.stop.value,
            }
        },
    )
    stop = result.stop
    if stop is StopReason.AUTH:
        log.error("%s", result.stop_message)
        return ExitCode.USAGE
    if stop is StopReason.LEDGER:
        log.error("%s", result.stop_message)
        return ExitCode.FAILED
    if stop is StopReason.SIGNAL:
        log.warning("interrupted; rerun the same command to resume")
        return ExitCode.SIGTERM if result.signal == signal.SIGTERM else ExitCode.SIGINT
    if stop is StopReason.CREDITS:
        log.error(
            "stopped: %s; %d job(s) left pending for the next run",
            result.stop_message,
            pending,
        )
        return ExitCode.CREDITS
    if stop is StopReason.FAILURES:
        log.error("stopped submitting: %s", result.stop_message)
        return ExitCode.FAILED
    if result.failed or failed_before or result.unfinished:
        return ExitCode.FAILED
    if pending and stop is not StopReason.BUDGET:
        return ExitCode.FAILED
    if stop is StopReason.BUDGET:
        log.info("%s; %d job(s) left for the next run", result.stop_message, pending)
    return ExitCode.OK
