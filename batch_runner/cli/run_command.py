"""The `run` command: its options as `run_batch_sync` keywords, the dry-run plan
printed, the exit code taken from the result.

The run itself (lock, validation, network, ledger, summary) is the library's;
this module only adds what belongs to a command line: printing the plan, signal
handling, and exit codes for errors.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from batch_runner.cli.heap import keep_mmap_threshold
from batch_runner.engine.result import Plan
from batch_runner.engine.sharding import Shard
from batch_runner.engine.survey import plan
from batch_runner.errors import ManifestError, RunLockedError, UsageError
from batch_runner.exit_codes import ExitCode
from batch_runner.store.transcode import image_options

log = logging.getLogger("batch_runner")


def run_command(
    ns: argparse.Namespace,
    *,
    out_dir: Path | str,
    shard: Shard | None,
    api_key: str,
    base_url: str | None,
    progress: bool,
) -> int:
    """Run (or dry-run) the manifest in `ns`; returns the exit code. `out_dir`
    is a folder, or an object-store URL (str) worked on in `ns.state_dir`."""
    try:
        if ns.dry_run:
            keep_mmap_threshold()  # a large plan's tables go back to the OS
            # what the run would refuse, the dry run refuses too
            image_options(
                ns.image_format, ns.quality, ns.max_side, download=ns.download
            )
            the_plan = plan(
                ns.manifest,
                out=out_dir,
                ledger=ns.ledger,
                retry_failed=ns.retry_failed,
                rerun_changed=ns.rerun_changed,
                shard=shard,
                max_jobs=ns.max_jobs,
                download=ns.download,
            )
            print_plan(the_plan, ns.credits_per_image)
            if the_plan.refusal is not None:
                # the run would refuse: so does its rehearsal
                log.error("%s", the_plan.refusal)
                return ExitCode.USAGE
            return ExitCode.OK
        # the network part's modules (aiohttp, the simulator), only for a run
        from batch_runner.engine.run import run_batch_sync
        from batch_runner.wire.client import DEFAULT_MAX_IMAGE_BYTES

        result = run_batch_sync(
            ns.manifest,
            out=out_dir,
            ledger=ns.ledger,
            api_key=api_key,
            base_url=base_url,
            mock=ns.mock,
            concurrency="auto" if ns.concurrency is None else ns.concurrency,
            max_concurrency=ns.max_concurrency,
            rate=ns.rate,
            retries=ns.retries,
            poll_interval=ns.poll_interval,
            job_timeout=ns.job_timeout,
            request_timeout=ns.request_timeout,
            grace=ns.grace,
            retry_failed=ns.retry_failed,
            rerun_changed=ns.rerun_changed,
            download=ns.download,
            max_image_bytes=ns.max_image_bytes
            if ns.max_image_bytes is not None
            else DEFAULT_MAX_IMAGE_BYTES,
            image_format=ns.image_format,
            quality=ns.quality,
            max_side=ns.max_side,
            fsync=ns.fsync,
            max_jobs=ns.max_jobs,
            max_failures=ns.max_failures,
            shard=shard,
            progress=progress,
            handle_signals=True,
            mock_fault_rate=ns.mock_fault_rate,
            mock_generation_time=ns.mock_generation_time,
            event_loop=ns.event_loop,
            state_dir=ns.state_dir,
            sync_interval=ns.sync_interval,
        )
    except RunLockedError as exc:
        log.error("%s", exc)
        return ExitCode.LOCKED
    except (ManifestError, UsageError) as exc:
        log.error("%s", exc)
        return ExitCode.USAGE
    return int(result.exit_code)


def print_plan(the_plan: Plan, credits_per_image: float | None) -> None:
    """The dry run's report on stdout; nothing was sent."""
    print(f"plan: {the_plan.describe()}")
    if the_plan.matrix_rows:
        print(
            f"  matrices:        {the_plan.matrix_rows} row(s) expanded into "
            f"{the_plan.matrix_jobs} jobs"
        )
    print(f"  to submit:       {the_plan.to_submit}")
    print(f"  to poll:         {the_plan.poll}")
    if the_plan.fetch:
        print(f"  to download:     {the_plan.fetch} (generated earlier, no new task)")
    print(f"  already done:    {the_plan.done}")
    print(f"  failed, skipped: {the_plan.failed_skipped}")
    if the_plan.changed:
        verdict = "refused" if the_plan.refused else "to submit again"
        print(f"  changed:         {the_plan.changed} ({verdict})")
    if credits_per_image is not None:
        print(
            f"  credits:         {the_plan.credits(credits_per_image):g} "
            f"({the_plan.to_submit} images x {credits_per_image:g}; polled tasks "
            "are already paid for)"
        )
    print("dry run: nothing was sent")
