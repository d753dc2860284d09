"""What a run or a dry run reports: the plan, the result, and the exit code the CLI
gives it. Pure: built from counts, no I/O but the summary log line."""

from __future__ import annotations

import dataclasses
import logging
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_runner.engine.plan import Action, PlanCounts
from batch_runner.engine.stop import StopReason
from batch_runner.exit_codes import ExitCode

if TYPE_CHECKING:
    from batch_runner.engine.runner import RunResult as RunTally

log = logging.getLogger("batch_runner")


@dataclass(frozen=True, slots=True)
class Plan:
    """What a run would do, from the manifest and the ledger (a dry run)."""

    #: jobs in scope (in the shard, if one was given)
    total: int
    #: new jobs, each a paid task, before `max_jobs`
    submit: int
    #: jobs with a taskid on record: polled, never paid for again
    poll: int
    done: int
    #: failed earlier and skipped (`retry_failed=True` reruns them)
    failed_skipped: int
    max_jobs: int | None = None
    #: e.g. "shard-0-of-4"
    shard: str | None = None
    #: jobs generated earlier whose images are to download (no new task)
    fetch: int = 0
    #: jobs whose parameters changed since their last run: refused (under
    #: `refused`), or counted under `submit` with `rerun_changed=True`
    changed: int = 0
    refused: int = 0
    #: why a run would refuse to start (the changed jobs, named), or None
    refusal: str | None = None
    #: manifest rows with a `matrix`, and the jobs they expanded into
    matrix_rows: int = 0
    matrix_jobs: int = 0

    @classmethod
    def from_counts(
        cls,
        counts: PlanCounts,
        *,
        max_jobs: int | None,
        shard: str | None,
        refusal: str | None = None,
        matrix_rows: int = 0,
        matrix_jobs: int = 0,
    ) -> Plan:
        c = counts.counts
        return cls(
            total=counts.total,
            submit=c[Action.SUBMIT],
            poll=c[Action.POLL],
            done=c[Action.DONE],
            failed_skipped=c[Action.SKIP_FAILED],
            max_jobs=max_jobs,
            shard=shard,
            fetch=c[Action.FETCH],
            changed=counts.changed,
            refused=c[Action.CHANGED],
            refusal=refusal,
            matrix_rows=matrix_rows,
            matrix_jobs=matrix_jobs,
        )

    @property
    def to_submit(self) -> int:
        """The tasks this run would pay for: `submit`, capped by `max_jobs`."""
        if self.max_jobs is None:
            return self.submit
        return min(self.submit, self.max_jobs)

    def credits(self, per_image: float) -> float:
        """What `to_submit` costs at `per_image` credits (polls are paid for)."""
        return self.to_submit * per_image

    def describe(self) -> str:
        """The one-line plan a run logs before it starts."""
        shard = f" in {self.shard}" if self.shard else ""
        skipped = (
            " (skipped; --retry-failed reruns them)" if self.failed_skipped else ""
        )
        fetch = f"{self.fetch} to download, " if self.fetch else ""
        rerun = (
            f" ({self.changed} of them changed since their last run)"
            if self.changed and not self.refused
            else ""
        )
        refused = (
            f", {self.refused} changed since their last run (refused)"
            if self.refused
            else ""
        )
        return (
            f"{self.total} jobs{shard}: {self.submit} to submit{rerun}, "
            f"{self.poll} to poll, {fetch}{self.done} already done, "
            f"{self.failed_skipped} failed earlier{skipped}{refused}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "to_submit": self.to_submit}


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended: counts of this run, why it stopped, and its exit code.

    Counts are of this run only; `status()` gives the whole ledger's totals.
    """

    #: jobs that succeeded in this run
    succeeded: int
    #: jobs recorded failed in this run
    failed: int
    #: jobs in scope this run left for the next one (not started, or unfinished)
    pending: int
    #: tasks created (paid for) in this run
    submitted: int
    #: requests sent again after a transient failure
    retries: int
    #: 429 (or 503 with Retry-After) answers: the server pacing the run
    throttled: int
    #: most jobs in flight at once
    peak_concurrency: int
    #: jobs the ledger already had as failed, skipped (`retry_failed` reruns them)
    failed_earlier: int
    #: jobs with a task that could not be collected now (polls kept failing, or
    #: the image host was unreachable); the next run resumes them
    unfinished: int
    stop_reason: StopReason
    #: what stopped the run, in words ("" when it simply finished)
    stop_message: str
    #: the signal that stopped the run (with `handle_signals=True`), if any
    signal: int | None
    #: what `batch-runner run` exits with for this outcome (0 = all done)
    exit_code: ExitCode
    #: seconds, from the call to its return
    elapsed: float
    out: Path
    ledger: Path
    #: tasks finished and recorded "generated" without downloading
    #: (`download=False`); a later run with downloads fetches them
    generated: int = 0

    @property
    def ok(self) -> bool:
        """Whether the CLI would exit 0: every job in scope is done (or the
        `max_jobs` budget was reached cleanly)."""
        return self.exit_code == ExitCode.OK

    @property
    def jobs_per_s(self) -> float:
        return self.succeeded / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            stop_reason=self.stop_reason.value,
            exit_code=int(self.exit_code),
            out=str(self.out),
            ledger=str(self.ledger),
            jobs_per_s=self.jobs_per_s,
        )
        return data


def conclude(
    tally: RunTally,
    plan: Plan,
    *,
    elapsed: float,
    out: Path,
    ledger: Path,
) -> RunResult:
    """Turn the runner's tally into a RunResult and log the summary line (and
    what stopped the run, if something did)."""
    in_scope = plan.submit + plan.poll + plan.fetch
    result = RunResult(
        succeeded=tally.succeeded,
        failed=tally.failed,
        pending=max(0, in_scope - tally.succeeded - tally.failed - tally.generated),
        submitted=tally.submits,
        retries=tally.retries,
        throttled=tally.throttled,
        peak_concurrency=tally.peak_concurrency,
        failed_earlier=plan.failed_skipped,
        unfinished=tally.unfinished,
        stop_reason=tally.stop,
        stop_message=tally.stop_message,
        signal=tally.signal,
        exit_code=ExitCode.OK,
        elapsed=elapsed,
        out=out,
        ledger=ledger,
        generated=tally.generated,
    )
    _log_summary(result)
    return dataclasses.replace(result, exit_code=_exit_code(result))


def _log_summary(result: RunResult) -> None:
    extra = f", {result.failed_earlier} failed earlier" if result.failed_earlier else ""
    if result.generated:
        extra += f", {result.generated} generated (not downloaded)"
    log.info(
        "summary: succeeded %d, failed %d, pending %d%s; %d submitted, %d retries "
        "(%d throttled); peak concurrency %d; %.1fs, %.2f jobs/s",
        result.succeeded,
        result.failed,
        result.pending,
        extra,
        result.submitted,
        result.retries,
        result.throttled,
        result.peak_concurrency,
        result.elapsed,
        result.jobs_per_s,
        extra={
            "summary": {
                "succeeded": result.succeeded,
                "failed": result.failed,
                "pending": result.pending,
                "failed_earlier": result.failed_earlier,
                "generated": result.generated,
                "unfinished": result.unfinished,
                "submitted": result.submitted,
                "retries": result.retries,
                "throttled": result.throttled,
                "peak_concurrency": result.peak_concurrency,
                "elapsed_s": round(result.elapsed, 3),
                "jobs_per_s": round(result.jobs_per_s, 3),
                "stop": result.stop_reason.value,
            }
        },
    )


def _exit_code(result: RunResult) -> ExitCode:
    """The CLI's exit code for this outcome; logs what stopped the run."""
    stop = result.stop_reason
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
            result.pending,
        )
        return ExitCode.CREDITS
    if stop is StopReason.FAILURES:
        log.error("stopped submitting: %s", result.stop_message)
        return ExitCode.FAILED
    if stop is StopReason.UNREACHABLE:
        log.error(
            "stopped submitting: %s; %d job(s) left pending for the next run "
            "(nothing was recorded failed)",
            result.stop_message,
            result.pending,
        )
        return ExitCode.FAILED
    if result.failed or result.failed_earlier or result.unfinished:
        return ExitCode.FAILED
    if result.pending and stop is not StopReason.BUDGET:
        return ExitCode.FAILED
    if stop is StopReason.BUDGET:
        log.info(
            "%s; %d job(s) left for the next run", result.stop_message, result.pending
        )
    return ExitCode.OK
