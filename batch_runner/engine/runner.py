"""The run loop: feed work items through a bounded queue into a limited pool of jobs.

Owns what jobs share (gate, rate, phase, counters, breaker); one job is `engine.job`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from batch_runner.engine.job import Job, JobEnd, JobEnv, Outcome
from batch_runner.engine.limits import AimdConcurrency, RateLimiter
from batch_runner.engine.plan import WorkItem
from batch_runner.engine.progress import NullProgress, Progress
from batch_runner.engine.readiness import ReadinessEstimate
from batch_runner.engine.retry import Retrier, RetryDetails, RetryPolicy
from batch_runner.engine.stop import PHASE_FOR, Phase, StopReason, stronger
from batch_runner.engine.transcoder import Transcoder
from batch_runner.store.ledger import LedgerWriter
from batch_runner.wire.api import Api

__all__ = [
    "Api",
    "ConcurrencyGate",
    "Phase",
    "RunOptions",
    "RunResult",
    "Runner",
    "StopReason",
]

log = logging.getLogger("batch_runner")


@dataclass(frozen=True, slots=True)
class RunOptions:
    concurrency: int = 8
    #: find the concurrency by AIMD between 1 and `max_concurrency`
    adaptive: bool = False
    max_concurrency: int = 256
    #: a 429 (or 503 with Retry-After) does not use up a retry, up to this many
    #: per request
    max_throttled: int = 100
    rate: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_interval: float = 1.0
    job_timeout: float = 900.0
    download: bool = True
    grace: float = 10.0
    #: submit at most this many new jobs in this run
    max_jobs: int | None = None
    #: stop submitting after this many permanent failures in a row
    max_failures: int | None = None


@dataclass(slots=True)
class RunResult:
    succeeded: int = 0
    failed: int = 0
    #: jobs whose task is known but could not be collected in this run (polls
    #: kept failing, or the image host was unreachable); the next run resumes them
    unfinished: int = 0
    #: tasks finished and recorded "generated" without downloading (--no-download)
    generated: int = 0
    submits: int = 0
    retries: int = 0
    #: 429 (or 503 + Retry-After) answers: the server pacing us
    throttled: int = 0
    #: most jobs in flight at once
    peak_concurrency: int = 0
    stop: StopReason = StopReason.NONE
    stop_message: str = ""
    signal: int | None = None


class ConcurrencyGate:
    """A semaphore whose size can change while jobs hold it (for AIMD)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self._freed = asyncio.Event()

    async def acquire(self) -> None:
        while self.in_use >= self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)

    def release(self) -> None:
        self.in_use -= 1
        self._freed.set()

    def resize(self, limit: int) -> None:
        grew = limit > self.limit
        self.limit = limit
        if grew:
            self._freed.set()


@dataclass(slots=True)
class _Lease:
    """What one job holds: a generation slot until its task has finished,
    then a download slot."""

    generating: bool = True
    downloading: bool = False


class Runner:
    """Runs work items against an Api, writing every outcome to the ledger.

    `concurrency` bounds the tasks generating at once. A job whose task has
    finished moves to one of as many download slots and frees its generation
    slot, so the next submit goes out while the images come down: on a
    latency-bound run every cycle of a slot would otherwise pay the download,
    the image write and the ledger line on top of the generation.
    """

    def __init__(
        self,
        api: Api,
        ledger: LedgerWriter,
        options: RunOptions,
        *,
        out_dir: Path,
        images_dir: Path | None = None,
        progress: Progress | None = None,
        rng: random.Random | None = None,
        attempt_log: LedgerWriter | None = None,
        run_id: str = "",
        transcoder: Transcoder | None = None,
        legacy_stems: Mapping[str, str] | None = None,
        publish: Callable[[Path], Awaitable[None]] | None = None,
    ) -> None:
        self._opt = options
        self._images_dir = images_dir or out_dir / "images"
        self._progress = progress or NullProgress()
        self._rate = RateLimiter(options.rate) if options.rate else None
        self._aimd = (
            AimdConcurrency(maximum=options.max_concurrency)
            if options.adaptive
            else None
        )
        self._slots = ConcurrencyGate(
            self._aimd.limit if self._aimd else options.concurrency
        )
        self._downloads = ConcurrencyGate(
            options.max_concurrency if options.adaptive else options.concurrency
        )
        self._env = JobEnv(
            api=api,
            ledger=ledger,
            retrier=Retrier(
                policy=options.retry,
                max_throttled=options.max_throttled,
                on_retry=(self._on_retry,),
                rng=rng or random.Random(),
            ),
            out_dir=out_dir,
            images_dir=self._images_dir,
            poll_interval=options.poll_interval,
            job_timeout=options.job_timeout,
            download=options.download,
            attempt_log=attempt_log,
            run_id=run_id,
            legacy_stems=legacy_stems or {},
            may_submit=self._may_submit,
            pace_submit=self._pace_submit if self._rate is not None else None,
            on_submit_latency=self._submit_latency if self._aimd else None,
            transcoder=transcoder,
            publish=publish,
            readiness=ReadinessEstimate(),
            readiness_learned=asyncio.Event(),
        )
        self._phase = Phase.RUNNING
        self._inflight: set[asyncio.Task[None]] = set()
        self._feeder: asyncio.Task[None] | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._new_jobs_started = 0
        self._failures_in_a_row = 0
        self.result = RunResult()

    @property
    def phase(self) -> Phase:
        return self._phase

    # -- stopping ----------------------------------------------------------------

    def request_stop(self, signum: int | None = None) -> None:
        """First call: stop starting work, let in-flight jobs finish for `grace`
        seconds. A second call cancels them at once. Jobs that are cancelled keep
        whatever the ledger already says (a recorded taskid stays "submitted")."""
        if self._phase >= Phase.STOPPING:
            log.warning("second stop request: cancelling in-flight jobs now")
            self._enter(Phase.CANCELLING)
            return
        self._note_stop(StopReason.SIGNAL, "")
        self.result.signal = signum
        self._enter(Phase.STOPPING)
        log.warning(
            "stopping: no new jobs; waiting up to %.0fs for %d in-flight job(s)",
            self._opt.grace,
            len(self._inflight),
        )
        if self._feeder is not None:
            self._feeder.cancel()
        loop = asyncio.get_running_loop()
        self._grace_timer = loop.call_later(
            self._opt.grace, self._enter, Phase.CANCELLING
        )

    def _stop(self, reason: StopReason, message: str) -> None:
        """A condition of the whole run: note it and move to the phase it needs."""
        if PHASE_FOR[reason] is Phase.DRAINING and self._phase < Phase.DRAINING:
            log.warning("no new submits: %s; in-flight tasks will finish", message)
        self._note_stop(reason, message)
        self._enter(PHASE_FOR[reason])

    def _note_stop(self, reason: StopReason, message: str) -> None:
        if stronger(reason, self.result.stop):
            self.result.stop = reason
            self.result.stop_message = message

    def _enter(self, phase: Phase) -> None:
        """Move forward to `phase` (never back); cancelling cancels in-flight jobs."""
        self._phase = max(self._phase, phase)
        if phase is Phase.CANCELLING:
            if self._feeder is not None:
                self._feeder.cancel()
            for task in list(self._inflight):
                if task is not asyncio.current_task():
                    task.cancel()

    def _may_submit(self) -> bool:
        return self._phase is Phase.RUNNING

    # -- the loop ----------------------------------------------------------------

    async def run(self, items: Iterable[WorkItem]) -> RunResult:
        """Run every item; returns when all are done or the run was stopped."""
        self._images_dir.mkdir(parents=True, exist_ok=True)
        queue: asyncio.Queue[WorkItem | None] = asyncio.Queue(
            maxsize=max(16, 2 * self._opt.concurrency)
        )
        self._feeder = asyncio.create_task(self._feed(items, queue), name="feeder")
        dispatcher = asyncio.create_task(self._dispatch(queue), name="dispatcher")
        feed_error: BaseException | None = None
        try:
            await asyncio.wait(
                {dispatcher, self._feeder}, return_when=asyncio.FIRST_EXCEPTION
            )
            feed_error = (
                self._feeder.exception()
                if self._feeder.done() and not self._feeder.cancelled()
                else None
            )
            if feed_error is not None:
                # rows were validated up front, so this is a bug: wind down, raise
                self._enter(Phase.STOPPING)
                dispatcher.cancel()
            await asyncio.wait({dispatcher})
            while self._inflight:
                await asyncio.wait(set(self._inflight))
        finally:
            if self._grace_timer is not None:
                self._grace_timer.cancel()
            pending = [dispatcher, self._feeder, *self._inflight]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if feed_error is not None:
            raise feed_error
        self.result.peak_concurrency = self._slots.peak
        return self.result

    async def _feed(
        self, items: Iterable[WorkItem], queue: asyncio.Queue[WorkItem | None]
    ) -> None:
        try:
            for item in items:
                await queue.put(item)
        except BaseException:
            # Stopping or a bad row: a full queue means the dispatcher is busy and
            # will see the phase; an empty one needs the sentinel to wake it.
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
            raise
        await queue.put(None)

    async def _dispatch(self, queue: asyncio.Queue[WorkItem | None]) -> None:
        while True:
            item = await queue.get()
            if item is None or self._phase >= Phase.STOPPING:
                return
            if item.taskid is None and not item.urls:
                if self._phase is not Phase.RUNNING:
                    continue  # left pending for the next run
                if self._budget_spent():
                    # only the dispatcher stops: jobs already let through still
                    # submit, or the budget would not be spent
                    self._note_stop(
                        StopReason.BUDGET, f"--max-jobs {self._opt.max_jobs} reached"
                    )
                    continue
                self._new_jobs_started += 1
            await self._slots.acquire()
            if self._phase >= Phase.STOPPING:
                self._slots.release()
                return
            lease = _Lease()
            task = asyncio.create_task(
                self._run_item(item, lease), name=item.job.job_id
            )
            self._inflight.add(task)
            # a done callback, not a `finally`: a task cancelled before its
            # first step never runs its body
            task.add_done_callback(functools.partial(self._job_finished, lease))

    def _job_finished(self, lease: _Lease, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if lease.generating:
            self._slots.release()
        if lease.downloading:
            self._downloads.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("job task crashed", exc_info=task.exception())

    def _budget_spent(self) -> bool:
        limit = self._opt.max_jobs
        return limit is not None and self._new_jobs_started >= limit

    # -- one job's outcome -------------------------------------------------------

    async def _run_item(self, item: WorkItem, lease: _Lease) -> None:
        async def generated() -> None:
            if not lease.generating:
                return
            await self._downloads.acquire()
            # no await from here on: the lease always says what is held
            lease.downloading = True
            lease.generating = False
            self._slots.release()

        job = Job(self._env, item, generated=generated)
        try:
            end = await job.run()
        finally:
            if job.submitted:
                self.result.submits += 1
        self._account(end)

    def _account(self, end: JobEnd) -> None:
        """Counters, the failure breaker and the stop a job's end calls for."""
        result = self.result
        outcome = end.outcome
        if outcome is Outcome.SUCCEEDED:
            result.succeeded += 1
            self._failures_in_a_row = 0
            self._progress.advance(succeeded=1)
        elif outcome is Outcome.GENERATED:
            result.generated += 1
            self._failures_in_a_row = 0
            self._progress.advance(succeeded=1)
        elif outcome is Outcome.FAILED:
            result.failed += 1
            self._failures_in_a_row += 1
            self._progress.advance(failed=1)
            limit = self._opt.max_failures
            if limit is not None and self._failures_in_a_row >= limit:
                self._stop(
                    StopReason.FAILURES,
                    f"{self._failures_in_a_row} permanent failures in a row "
                    f"(--max-failures {limit}); the API may be down or rejecting "
                    f"every job (last: {end.message})",
                )
        elif outcome is Outcome.UNFINISHED and end.stop not in (
            StopReason.AUTH,
            StopReason.LEDGER,
        ):
            result.unfinished += 1
        if end.stop is not StopReason.NONE:
            self._stop(end.stop, end.message)

    # -- hooks for the jobs ------------------------------------------------------

    async def _pace_submit(self) -> None:
        assert self._rate is not None
        delay = self._rate.reserve(time.monotonic())
        if delay > 0:
            await asyncio.sleep(delay)

    def _submit_latency(self, seconds: float) -> None:
        assert self._aimd is not None
        self._aimd.on_success(time.monotonic(), seconds)
        self._slots.resize(self._aimd.limit)

    def _on_retry(self, details: RetryDetails) -> None:
        self.result.retries += 1
        if details.throttled:
            self.result.throttled += 1
            if self._aimd is not None:
                self._aimd.on_backpressure(time.monotonic())
                self._slots.resize(self._aimd.limit)
        log.debug(
            "%s %s: %s; retry %d/%d in %.2fs",
            details.what,
            details.job_id,
            details.error.message,
            details.attempt,
            self._opt.retry.attempts - 1,
            details.wait,
        )
