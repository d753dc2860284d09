"""Command line: parse, wire the pieces together, map outcomes to exit codes.

This is the only module that reads argv or the environment, installs signal
handlers, configures logging, or starts the built-in simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from batch_runner import __version__, simulator
from batch_runner.client import DEFAULT_MAX_IMAGE_BYTES, ZImageClient
from batch_runner.errors import BatchRunnerError, ManifestError, RunLockedError
from batch_runner.ledger import LedgerWriter, read_ledger
from batch_runner.lock import RunLock
from batch_runner.manifest import iter_jobs, validate_manifest
from batch_runner.plan import Action, count_plan, work_items
from batch_runner.progress import (
    NullProgress,
    Progress,
    TqdmLoggingHandler,
    TqdmProgress,
)
from batch_runner.retry import RetryPolicy
from batch_runner.runner import Runner, RunOptions, RunResult, StopReason

log = logging.getLogger("batch_runner")

DEFAULT_BASE_URL = "https://api.tensorslab.com"
KEY_ENV = "TENSORSLAB_API_KEY"
BASE_URL_ENV = "TENSORSLAB_BASE_URL"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CREDITS = 3
EXIT_LOCKED = 4
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


# -- argument parsing ---------------------------------------------------------


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _poll_interval(text: str) -> float:
    value = float(text)
    if not value >= 0.01:
        raise argparse.ArgumentTypeError(f"must be >= 0.01 seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batch-runner",
        description="Resumable batch text-to-image generation through the "
        "TensorsLab Z-Image API.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run (or resume) a manifest of prompts",
        description="Run a manifest; rerunning the same command resumes it.",
    )
    run.add_argument("manifest", type=Path, help="YAML, CSV or JSONL manifest")
    run.add_argument("--out", type=Path, help="run directory (default runs/<stem>)")
    run.add_argument("--ledger", type=Path, help="ledger (default DIR/ledger.jsonl)")
    where = run.add_mutually_exclusive_group()
    where.add_argument(
        "--base-url",
        help=f"API base URL (default ${BASE_URL_ENV} or {DEFAULT_BASE_URL})",
    )
    where.add_argument(
        "--mock",
        action="store_true",
        help="run against the built-in Z-Image simulator (no key needed)",
    )
    run.add_argument(
        "--concurrency",
        type=_positive_int,
        default=8,
        help="max jobs in flight (default 8)",
    )
    run.add_argument(
        "--rate",
        type=_positive_float,
        default=None,
        help="max submits per second, evenly spaced (default: no limit)",
    )
    run.add_argument(
        "--retries",
        type=_non_negative_int,
        default=5,
        help="retries per request after the first try (default 5)",
    )
    run.add_argument(
        "--poll-interval",
        type=_poll_interval,
        default=1.0,
        help="seconds between polls for the first minute (default 1.0)",
    )
    run.add_argument(
        "--job-timeout",
        type=_positive_float,
        default=900.0,
        help="give up on a task still queued/processing after this "
        "many seconds (default 900)",
    )
    run.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=60.0,
        help="timeout of one HTTP request in seconds (default 60)",
    )
    run.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="on SIGINT/SIGTERM, seconds to let in-flight jobs finish",
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="run jobs the ledger records as failed again",
    )
    run.add_argument(
        "--no-download",
        dest="download",
        action="store_false",
        help="record image URLs without downloading them",
    )
    run.add_argument(
        "--max-image-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_IMAGE_BYTES,
        help="refuse images larger than this (default 50 MiB)",
    )
    run.add_argument(
        "--fsync",
        action="store_true",
        help="fsync the ledger after each write (survives power loss)",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on if stderr is a TTY)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log every retry")
    run.add_argument(
        "--mock-fault-rate",
        type=float,
        default=0.0,
        help="with --mock: fraction of requests the simulator faults",
    )
    run.add_argument(
        "--mock-generation-time",
        type=float,
        default=0.5,
        help="with --mock: seconds the simulator takes per image",
    )

    sim = sub.add_parser(
        "simulator",
        help="run the Z-Image simulator standalone",
        description="Serve a local Z-Image simulator for testing pipelines.",
    )
    simulator.add_arguments(sim)
    return parser


# -- the run command ----------------------------------------------------------


ATTEMPTS_NAME = "attempts.jsonl"


def remove_partial_downloads(images_dir: Path) -> None:
    """`.part` files are downloads a crash interrupted; their jobs fetch again."""
    if images_dir.is_dir():
        for part in images_dir.glob(".*.part"):
            part.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class RunPaths:
    out_dir: Path
    ledger: Path


def resolve_paths(manifest: Path, out: Path | None, ledger: Path | None) -> RunPaths:
    out_dir = out if out is not None else Path("runs") / manifest.stem
    return RunPaths(out_dir=out_dir, ledger=ledger or out_dir / "ledger.jsonl")


def _setup_logging(verbose: bool, use_tqdm: bool) -> None:
    handler: logging.Handler = (
        TqdmLoggingHandler() if use_tqdm else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("batch_runner")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def cmd_run(ns: argparse.Namespace) -> int:
    use_tqdm = sys.stderr.isatty() if ns.progress is None else ns.progress
    _setup_logging(ns.verbose, use_tqdm)
    if ns.mock:
        api_key = os.environ.get(KEY_ENV) or "sim-" + secrets.token_hex(12)
        base_url = None
    else:
        api_key = os.environ.get(KEY_ENV, "").strip()
        base_url = ns.base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        if not api_key:
            log.error(
                "no API key: set %s (or use --mock to run on the simulator)", KEY_ENV
            )
            return EXIT_USAGE

    paths = resolve_paths(ns.manifest, ns.out, ns.ledger)
    try:
        # the lock comes first so a second run exits 4 at once, before it spends
        # time validating a large manifest
        with RunLock(paths.out_dir):
            summary = validate_manifest(ns.manifest)
            for warning in summary.warnings:
                log.warning("%s", warning)
            return asyncio.run(_run(ns, paths, api_key, base_url, use_tqdm))
    except RunLockedError as exc:
        log.error("%s", exc)
        return EXIT_LOCKED
    except ManifestError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except BatchRunnerError as exc:
        log.error("%s", exc)
        return EXIT_FAILED


async def _run(
    ns: argparse.Namespace,
    paths: RunPaths,
    api_key: str,
    base_url: str | None,
    use_tqdm: bool,
) -> int:
    started = time.monotonic()
    state = read_ledger(paths.ledger)
    for warning in state.warnings:
        log.warning("%s", warning)
    counts = count_plan(iter_jobs(ns.manifest), state, retry_failed=ns.retry_failed)
    c = counts.counts
    log.info(
        "%d jobs: %d to submit, %d to poll, %d already done, %d failed earlier%s",
        counts.total,
        c[Action.SUBMIT],
        c[Action.POLL],
        c[Action.DONE],
        c[Action.SKIP_FAILED],
        " (skipped; --retry-failed reruns them)" if c[Action.SKIP_FAILED] else "",
    )

    async with contextlib.AsyncExitStack() as stack:
        if base_url is None:
            sim = await stack.enter_async_context(
                await simulator.start_simulator(
                    simulator.SimulatorConfig(
                        key=api_key,
                        fault_rate=ns.mock_fault_rate,
                        generation_time=ns.mock_generation_time,
                        # a simulated hang ends in a 503 after 3 s: demos must not stall
                        hang_time=min(3.0, ns.request_timeout),
                    )
                )
            )
            base_url = sim.url
            log.info("using the built-in Z-Image simulator at %s", base_url)
        session = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
                raise_for_status=False,
            )
        )
        client = ZImageClient(
            session,
            base_url,
            api_key,
            request_timeout=ns.request_timeout,
            max_image_bytes=ns.max_image_bytes,
        )
        ledger = await stack.enter_async_context(
            LedgerWriter(paths.ledger, fsync=ns.fsync, secrets=[api_key])
        )
        attempt_log = await stack.enter_async_context(
            LedgerWriter(paths.out_dir / ATTEMPTS_NAME, fsync=ns.fsync)
        )
        remove_partial_downloads(paths.out_dir / "images")
        progress: Progress = (
            TqdmProgress(counts.in_scope)
            if use_tqdm and counts.in_scope
            else NullProgress()
        )
        stack.callback(progress.close)
        runner = Runner(
            client,
            ledger,
            RunOptions(
                concurrency=ns.concurrency,
                rate=ns.rate,
                retry=RetryPolicy(attempts=ns.retries + 1),
                poll_interval=ns.poll_interval,
                job_timeout=ns.job_timeout,
                download=ns.download,
                grace=ns.grace,
            ),
            out_dir=paths.out_dir,
            progress=progress,
            attempt_log=attempt_log,
            run_id=f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}",
        )
        runner._progress = progress
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, runner.request_stop, signum)
        try:
            items = work_items(
                iter_jobs(ns.manifest), state, retry_failed=ns.retry_failed
            )
            result = await runner.run(items)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    return _finish(result, counts.in_scope, c[Action.SKIP_FAILED], started)


def _finish(
    result: RunResult, in_scope: int, failed_before: int, started: float
) -> int:
    elapsed = time.monotonic() - started
    pending = max(0, in_scope - result.succeeded - result.failed)
    rate = result.succeeded / elapsed if elapsed > 0 else 0.0
    extra = f", {failed_before} failed earlier" if failed_before else ""
    print(
        f"succeeded {result.succeeded}, failed {result.failed}, pending {pending}"
        f"{extra}; {result.submits} submitted, {result.retries} retries; "
        f"{elapsed:.1f}s, {rate:.2f} jobs/s",
        flush=True,
    )
    if result.stop is StopReason.AUTH:
        log.error("%s", result.stop_message)
        return EXIT_USAGE
    if result.stop is StopReason.LEDGER:
        log.error("%s", result.stop_message)
        return EXIT_FAILED
    if result.stop is StopReason.SIGNAL:
        log.warning("interrupted; rerun the same command to resume")
        return EXIT_SIGTERM if result.signal == signal.SIGTERM else EXIT_SIGINT
    if result.stop is StopReason.CREDITS:
        log.error(
            "stopped: insufficient credits (%s); %d job(s) left pending for the "
            "next run",
            result.stop_message,
            pending,
        )
        return EXIT_CREDITS
    if result.failed or failed_before or pending:
        return EXIT_FAILED
    return EXIT_OK


# -- the simulator command ----------------------------------------------------


def cmd_simulator(ns: argparse.Namespace) -> int:
    config = simulator.config_from_args(ns)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(simulator.serve_forever(config, ns.host, ns.port))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if ns.command == "run":
        return cmd_run(ns)
    return cmd_simulator(ns)
