"""The run loop: feed jobs through a bounded queue into a limited pool of job tasks.

Each job task submits (or resumes polling), polls until the image is ready,
downloads it and records every step in the ledger. A job task never lets an
exception escape except cancellation: failures become ledger records, and
run-wide conditions (credits, a rejected key, a signal) become a stop reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from batch_runner.engine.limits import AimdConcurrency, RateLimiter
from batch_runner.engine.plan import WorkItem
from batch_runner.engine.progress import NullProgress, Progress
from batch_runner.engine.retry import RetryPolicy, next_poll_interval
from batch_runner.errors import (
    ApiError,
    AuthError,
    InsufficientCreditsError,
    LedgerError,
    TaskNotFoundError,
    TransientApiError,
)
from batch_runner.models import JobSpec, JobStatus
from batch_runner.store.images import image_stem
from batch_runner.store.ledger import LedgerWriter, make_record, utc_now_iso
from batch_runner.wire.client import DownloadedFile
from batch_runner.wire.protocol import PollResult, SubmitResult

log = logging.getLogger("batch_runner")
T = TypeVar("T")


class Api(Protocol):
    """The seam between the runner and the wire (ZImageClient in production)."""

    async def submit(self, job: JobSpec) -> SubmitResult: ...

    async def poll(self, taskid: str) -> PollResult: ...

    async def download(
        self, url: str, images_dir: Path, stem: str
    ) -> DownloadedFile: ...


class StopReason(enum.StrEnum):
    NONE = "none"
    CREDITS = "credits"
    AUTH = "auth"
    SIGNAL = "signal"
    LEDGER = "ledger"
    #: --max-jobs reached: a planned stop, the rest waits for the next run
    BUDGET = "budget"
    #: --max-failures consecutive permanent failures: the API looks broken
    FAILURES = "failures"


#: when several reasons to stop arise, the exit code reports the strongest
_PRIORITY = {
    StopReason.NONE: 0,
    StopReason.BUDGET: 1,
    StopReason.FAILURES: 2,
    StopReason.CREDITS: 3,
    StopReason.SIGNAL: 4,
    StopReason.LEDGER: 5,
    StopReason.AUTH: 6,
}


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
    #: jobs whose task is still known only as "submitted" (polls kept failing)
    unfinished: int = 0
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


class Runner:
    """Runs work items against an Api, writing every outcome to the ledger."""

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
    ) -> None:
        self._api = api
        self._ledger = ledger
        self._opt = options
        self._out_dir = out_dir
        self._images_dir = images_dir or out_dir / "images"
        self._progress = progress or NullProgress()
        self._rng = rng or random.Random()
        self._attempt_log = attempt_log
        self._run_id = run_id
        self._rate = RateLimiter(options.rate) if options.rate else None
        self._aimd = (
            AimdConcurrency(maximum=options.max_concurrency)
            if options.adaptive
            else None
        )
        self._slots = ConcurrencyGate(
            self._aimd.limit if self._aimd else options.concurrency
        )
        self._inflight: set[asyncio.Task[None]] = set()
        self._feeder: asyncio.Task[None] | None = None
        self._no_new_submits = False
        self._stopping = False
        self._grace_timer: asyncio.TimerHandle | None = None
        self._new_jobs_started = 0
        self._failures_in_a_row = 0
        self.result = RunResult()

    # -- stopping --------------------------------------------------------

    def request_stop(self, signum: int | None = None) -> None:
        """First call: stop starting work, let in-flight jobs finish for `grace`
        seconds. A second call cancels them at once. Jobs that are cancelled keep
        whatever the ledger already says (a recorded taskid stays "submitted")."""
        if self._stopping:
            log.warning("second stop request: cancelling in-flight jobs now")
            self._cancel_inflight()
            return
        self._stopping = True
        self._no_new_submits = True
        if _PRIORITY[StopReason.SIGNAL] > _PRIORITY[self.result.stop]:
            self.result.stop = StopReason.SIGNAL
        self.result.signal = signum
        log.warning(
            "stopping: no new jobs; waiting up to %.0fs for %d in-flight job(s)",
            self._opt.grace,
            len(self._inflight),
        )
        if self._feeder is not None:
            self._feeder.cancel()
        loop = asyncio.get_running_loop()
        self._grace_timer = loop.call_later(self._opt.grace, self._cancel_inflight)

    def _cancel_inflight(self) -> None:
        if self._feeder is not None:
            self._feeder.cancel()
        for task in list(self._inflight):
            if task is not asyncio.current_task():
                task.cancel()

    def _stop_now(self, reason: StopReason, message: str) -> None:
        if _PRIORITY[reason] > _PRIORITY[self.result.stop]:
            self.result.stop = reason
            self.result.stop_message = message
        self._stopping = True
        self._no_new_submits = True
        self._cancel_inflight()

    # -- the loop ----------------------------------------------------------

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
                self._stopping = True
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
            # will see the stop flag; an empty one needs the sentinel to wake it.
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
            raise
        await queue.put(None)

    async def _dispatch(self, queue: asyncio.Queue[WorkItem | None]) -> None:
        while True:
            item = await queue.get()
            if item is None or self._stopping:
                return
            if item.taskid is None:
                if self._no_new_submits:
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
            if self._stopping:
                self._slots.release()
                return
            task = asyncio.create_task(self._run_item(item), name=item.job.job_id)
            self._inflight.add(task)
            task.add_done_callback(self._job_finished)

    def _job_finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("job task crashed", exc_info=task.exception())

    # -- one job -------------------------------------------------------------

    async def _run_item(self, item: WorkItem) -> None:
        try:
            await self._process(item)
        except AuthError as exc:
            self._stop_now(StopReason.AUTH, str(exc))
        except LedgerError as exc:
            self._stop_now(StopReason.LEDGER, str(exc))
        except InsufficientCreditsError as exc:
            self._credits_exhausted(exc)
        except Exception as exc:
            # a bug must not lose the job silently nor kill its siblings
            log.exception("unexpected error in job %s", item.job.job_id)
            await self._record_failed(
                item.job, item.taskid, f"internal error: {exc!r}", stage="internal"
            )

    async def _process(self, item: WorkItem) -> None:
        job, taskid = item.job, item.taskid
        urls: Sequence[str] = ()
        resumed = taskid is not None
        if taskid is None:
            submitted = await self._submit(job)
            if submitted is None:
                return
            taskid, urls = submitted.taskid, submitted.urls
        if not urls:
            assert taskid is not None
            poll = await self._wait_for_task(job, taskid, poll_first=resumed)
            if poll is None:
                return
            urls = poll.urls
            if not urls:
                await self._record_failed(
                    job, taskid, "task finished without image URLs", stage="generate"
                )
                return
        downloaded = await self._download_all(job, taskid, urls)
        if downloaded is None:
            return
        files, images = downloaded
        record = make_record(
            job,
            JobStatus.SUCCEEDED,
            taskid=taskid,
            urls=urls,
            code=1000,
            msg="ok",
            files=files,
        )
        if images:
            # facts about each file, so dataset metadata never rereads the images
            record["images"] = images
        await self._ledger.append(record)
        self._failures_in_a_row = 0
        self.result.succeeded += 1
        self._progress.advance(succeeded=1)

    async def _submit(self, job: JobSpec) -> SubmitResult | None:
        if self._rate is not None:
            delay = self._rate.reserve(time.monotonic())
            if delay > 0:
                await asyncio.sleep(delay)
        if self._no_new_submits:
            return None
        uncertain = 0
        sent = 0

        async def attempt() -> SubmitResult:
            nonlocal uncertain, sent
            sent += 1
            if self._attempt_log is not None:
                # flushed before the request leaves: if we die before the answer is
                # recorded, `status` can still name this job as a possible duplicate
                await self._attempt_log.append(
                    {
                        "job_id": job.job_id,
                        "run": self._run_id,
                        "n": sent,
                        "ts": utc_now_iso(),
                    }
                )
            try:
                return await self._api.submit(job)
            except TransientApiError as exc:
                if exc.maybe_sent and (exc.http_status in (None, 200)):
                    uncertain += 1
                raise

        try:
            result, attempts = await self._call(attempt, job, "submit")
        except InsufficientCreditsError as exc:
            self._credits_exhausted(exc)
            return None
        except (AuthError, LedgerError):
            raise
        except ApiError as exc:
            await self._record_failed(
                job,
                None,
                exc.message,
                stage="submit",
                exc=exc,
                attempts=sent,
                uncertain=uncertain,
            )
            return None
        self.result.submits += 1
        if result.taskid:
            await self._ledger.append(
                make_record(
                    job,
                    JobStatus.SUBMITTED,
                    taskid=result.taskid,
                    urls=result.urls,
                    code=result.code,
                    msg=result.msg,
                    attempts=attempts,
                    uncertain=uncertain,
                    run=self._run_id or None,
                )
            )
        return result

    async def _wait_for_task(
        self, job: JobSpec, taskid: str, *, poll_first: bool
    ) -> PollResult | None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        interval = self._opt.poll_interval
        # Polls keep to a timeline counted from the submit (t0 + k * interval),
        # so a slow poll response does not push every later poll back.
        next_poll = started if poll_first else started + interval
        try:
            async with asyncio.timeout(self._opt.job_timeout):
                while True:
                    wait = next_poll - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    result, _ = await self._call(
                        lambda: self._api.poll(taskid), job, "poll"
                    )
                    if result.done:
                        return result
                    if result.failed:
                        await self._record_failed(
                            job,
                            taskid,
                            result.error_message or result.msg or "generation failed",
                            stage="generate",
                            code=result.code,
                        )
                        return None
                    now = loop.time()
                    interval = next_poll_interval(
                        now - started, interval, self._opt.poll_interval
                    )
                    # never two polls back to back after a stall
                    next_poll = max(next_poll + interval, now + interval / 2)
        except TimeoutError:
            await self._record_failed(
                job,
                taskid,
                f"task still queued or processing after {self._opt.job_timeout:g}s "
                "(--job-timeout)",
                stage="timeout",
            )
        except TaskNotFoundError as exc:
            await self._record_failed(
                job, taskid, exc.message, stage="not-found", exc=exc
            )
        except TransientApiError as exc:
            # The task was paid for and may well finish: keep it "submitted" so
            # the next run polls it again rather than paying for a new one.
            log.warning(
                "job %s: giving up polling for now (%s); rerun to resume",
                job.job_id,
                exc.message,
            )
            self.result.unfinished += 1
        except InsufficientCreditsError as exc:
            self._credits_exhausted(exc)
            self.result.unfinished += 1
        except (AuthError, LedgerError):
            raise
        except ApiError as exc:
            await self._record_failed(job, taskid, exc.message, stage="poll", exc=exc)
        return None

    async def _download_all(
        self, job: JobSpec, taskid: str | None, urls: Sequence[str]
    ) -> tuple[list[str], list[dict[str, object]]] | None:
        if not self._opt.download:
            return [], []
        files: list[str] = []
        images: list[dict[str, object]] = []
        for index, url in enumerate(urls):
            stem = image_stem(job.job_id, index, len(urls))
            try:
                downloaded, _ = await self._call(
                    lambda u=url, s=stem: self._api.download(u, self._images_dir, s),  # type: ignore[misc]
                    job,
                    "download",
                )
            except (AuthError, LedgerError):
                raise
            except ApiError as exc:
                await self._record_failed(
                    job,
                    taskid,
                    f"download failed: {exc.message}",
                    stage="download",
                    urls=urls,
                    exc=exc,
                )
                return None
            rel = _relative(downloaded.path, self._out_dir)
            files.append(rel)
            images.append(
                {
                    "file": rel,
                    "sha256": downloaded.sha256,
                    "bytes": downloaded.size,
                    "width": downloaded.width,
                    "height": downloaded.height,
                }
            )
        return files, images

    # -- helpers -------------------------------------------------------------

    async def _call(
        self, op: Callable[[], Awaitable[T]], job: JobSpec, what: str
    ) -> tuple[T, int]:
        """Run `op`, retrying transient failures; returns (result, attempts).

        A 429 (or a 503 with Retry-After) is the server pacing us, not the
        request failing: it waits as told and, up to `max_throttled` times, does
        not use up a retry.
        """
        policy = self._opt.retry
        attempt = 0
        throttled = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                result = await op()
            except TransientApiError as exc:
                # 429, or 503 with Retry-After, is the server pacing us; a bare
                # 503 may be an outage, which must use up retries and fail
                pacing = exc.http_status == 429 or (
                    exc.http_status == 503 and exc.retry_after is not None
                )
                if pacing:
                    self.result.throttled += 1
                    if self._aimd is not None:
                        self._aimd.on_backpressure(time.monotonic())
                        self._slots.resize(self._aimd.limit)
                    if throttled < self._opt.max_throttled:
                        throttled += 1
                        attempt -= 1
                if not policy.should_retry(exc, attempt):
                    raise
                delay = policy.delay_for(exc, max(attempt, 1), self._rng)
                self.result.retries += 1
                log.debug(
                    "%s %s: %s; retry %d/%d in %.2fs",
                    what,
                    job.job_id,
                    exc.message,
                    attempt,
                    policy.attempts - 1,
                    delay,
                )
                await asyncio.sleep(delay)
            else:
                if self._aimd is not None and what == "submit":
                    now = time.monotonic()
                    self._aimd.on_success(now, now - started)
                    self._slots.resize(self._aimd.limit)
                return result, attempt + throttled

    def _budget_spent(self) -> bool:
        limit = self._opt.max_jobs
        return limit is not None and self._new_jobs_started >= limit

    def _halt_submits(self, reason: StopReason, message: str) -> None:
        """Stop new submits but let submitted tasks finish (credits, budgets)."""
        if not self._no_new_submits:
            log.warning("no new submits: %s; in-flight tasks will finish", message)
        self._no_new_submits = True
        self._note_stop(reason, message)

    def _note_stop(self, reason: StopReason, message: str) -> None:
        if _PRIORITY[reason] > _PRIORITY[self.result.stop]:
            self.result.stop = reason
            self.result.stop_message = message

    def _credits_exhausted(self, exc: InsufficientCreditsError) -> None:
        self._halt_submits(
            StopReason.CREDITS, f"insufficient credits (code 9000: {exc.message})"
        )

    async def _record_failed(
        self,
        job: JobSpec,
        taskid: str | None,
        msg: str,
        *,
        stage: str,
        code: int | None = None,
        urls: Sequence[str] | None = None,
        exc: ApiError | None = None,
        attempts: int | None = None,
        uncertain: int = 0,
    ) -> None:
        if code is None and exc is not None:
            code = exc.code if exc.code is not None else exc.http_status
        await self._ledger.append(
            make_record(
                job,
                JobStatus.FAILED,
                taskid=taskid,
                urls=urls,
                code=code,
                msg=msg,
                stage=stage,
                attempts=attempts,
                uncertain=uncertain,
                run=(self._run_id or None) if attempts is not None else None,
            )
        )
        log.warning("job %s failed at %s: %s", job.job_id, stage, msg)
        self.result.failed += 1
        self._failures_in_a_row += 1
        limit = self._opt.max_failures
        if limit is not None and self._failures_in_a_row >= limit:
            self._halt_submits(
                StopReason.FAILURES,
                f"{self._failures_in_a_row} permanent failures in a row "
                f"(--max-failures {limit}); the API may be down or rejecting "
                f"every job (last: {msg})",
            )
        self._progress.advance(failed=1)


def _relative(path: Path, base: Path) -> str:
    """`files` entries are relative to the run directory, with forward slashes."""
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()
