"""One job's lifecycle: submit (or resume) -> poll -> download, each step recorded.

`Job.run` is the one place a job's errors become an outcome (and a stop reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch_runner.engine.plan import WorkItem
from batch_runner.engine.poll_clock import PollClock
from batch_runner.engine.readiness import ReadinessEstimate
from batch_runner.engine.retry import Retrier
from batch_runner.engine.stop import StopReason
from batch_runner.engine.transcoder import Transcoder
from batch_runner.errors import (
    ApiError,
    AuthError,
    InsufficientCreditsError,
    LedgerError,
    TaskNotFoundError,
    TranscodeError,
    TransientApiError,
)
from batch_runner.models import JobStatus
from batch_runner.store.images import SavedImage, image_stem, save_image
from batch_runner.store.ledger import LedgerWriter, make_record, utc_now_iso
from batch_runner.wire.api import Api
from batch_runner.wire.protocol import PollResult, SubmitResult

log = logging.getLogger("batch_runner")


class Outcome(enum.StrEnum):
    """How a job left this run."""

    #: every image is on disk; recorded "succeeded"
    SUCCEEDED = "succeeded"
    #: the task finished and its URLs are recorded "generated" (--no-download)
    GENERATED = "generated"
    #: recorded "failed"
    FAILED = "failed"
    #: a task exists but could not be collected now; the next run resumes it
    UNFINISHED = "unfinished"
    #: no task was created; the next run submits it
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class JobEnd:
    """A job's outcome; `stop` names a condition of the whole run it ran into."""

    outcome: Outcome
    #: why it failed, or what the stop is about
    message: str = ""
    stop: StopReason = StopReason.NONE


def _always() -> bool:
    return True


@dataclass(frozen=True, slots=True)
class JobEnv:
    """What every job of a run shares: the seams, the settings, and the
    runner's callbacks."""

    api: Api
    ledger: LedgerWriter
    retrier: Retrier
    out_dir: Path
    images_dir: Path
    poll_interval: float = 1.0
    job_timeout: float = 900.0
    download: bool = True
    #: every submit attempt is logged here before it is sent (see outputs.audit)
    attempt_log: LedgerWriter | None = None
    run_id: str = ""
    #: image names an old run dir gave other jobs (ResumeState.legacy_stems)
    legacy_stems: Mapping[str, str] = field(default_factory=dict)
    #: whether a new submit may be sent now (False once the run drains)
    may_submit: Callable[[], bool] = _always
    #: waits for the rate limiter before a submit
    pace_submit: Callable[[], Awaitable[None]] | None = None
    #: the latency of each accepted submit (adaptive concurrency)
    on_submit_latency: Callable[[float], None] | None = None
    #: re-encodes each download (--image-format/--max-side); None keeps them
    transcoder: Transcoder | None = None
    #: called with each stored image file before its job is recorded
    #: succeeded, retried like a download (a run in a bucket uploads it here)
    publish: Callable[[Path], Awaitable[None]] | None = None
    #: when this run's tasks tend to be ready: times each new task's first poll
    readiness: ReadinessEstimate | None = None
    #: set once `readiness` knows anything: wakes the tasks waiting for it
    readiness_learned: asyncio.Event | None = None


class _SubmitsHalted(Exception):
    """The run stopped submitting before this job's next attempt."""


def _answer_lost(exc: ApiError) -> bool:
    """The request may have reached the server, but what it said is unknown:
    the attempt may have created (and billed) a task we never heard of."""
    return (
        isinstance(exc, TransientApiError)
        and exc.maybe_sent
        and exc.http_status in (None, 200)
    )


def _unreachable(exc: BaseException) -> bool:
    """The request never left: connection refused, DNS failure, connect timeout."""
    return isinstance(exc, TransientApiError) and not exc.maybe_sent


def _credits_message(exc: InsufficientCreditsError) -> str:
    return f"insufficient credits (code 9000: {exc.message})"


class Job:
    """One work item through its lifecycle; `run()` once.

    A job never raises except cancellation: every error becomes a `JobEnd`, an
    outcome plus, for conditions of the whole run (a rejected key, no credits,
    an unreachable API, a ledger that cannot be written), the stop reason the
    runner acts on. A job that raised would take its siblings down with it.
    """

    def __init__(
        self,
        env: JobEnv,
        item: WorkItem,
        *,
        generated: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._env = env
        self._item = item
        #: awaited once the job's task has finished generating, before its
        #: images are downloaded (the runner moves it to a download slot)
        self._generated = generated
        self.spec = item.job
        #: the task this job is known by, once there is one
        self.taskid: str | None = item.taskid
        #: a submit of this job created a task in this run
        self.submitted = False

    async def run(self) -> JobEnd:
        """Take the job as far as it can go; never raises except cancellation."""
        try:
            return await self._lifecycle()
        except AuthError as exc:
            return self._stopped(StopReason.AUTH, str(exc))
        except LedgerError as exc:
            return self._stopped(StopReason.LEDGER, str(exc))
        except InsufficientCreditsError as exc:
            return self._stopped(StopReason.CREDITS, _credits_message(exc))
        except Exception as exc:
            # a bug must not lose the job silently nor kill its siblings
            log.exception("unexpected error in job %s", self.spec.job_id)
            try:
                return await self._fail(f"internal error: {exc!r}", stage="internal")
            except LedgerError as ledger_exc:
                return self._stopped(StopReason.LEDGER, str(ledger_exc))

    def _stopped(self, reason: StopReason, message: str) -> JobEnd:
        known = self.taskid is not None or bool(self._item.urls)
        return JobEnd(Outcome.UNFINISHED if known else Outcome.PENDING, message, reason)

    async def _lifecycle(self) -> JobEnd:
        if self._item.urls:
            if self._generated is not None:
                await self._generated()
            return await self._fetch_generated(self._item.urls)
        resumed = self.taskid is not None
        urls: Sequence[str] = ()
        if self.taskid is None:
            submitted = await self._submit()
            if isinstance(submitted, JobEnd):
                return submitted
            urls = submitted.urls
        if not urls:
            polled = await self._wait_for_task(poll_first=resumed)
            if isinstance(polled, JobEnd):
                return polled
            urls = polled
        if self._generated is not None:
            await self._generated()
        return await self._collect(urls)

    # -- submit ----------------------------------------------------------------

    async def _submit(self) -> SubmitResult | JobEnd:
        env = self._env
        if env.pace_submit is not None:
            await env.pace_submit()
        sent = 0
        uncertain = 0

        async def attempt() -> SubmitResult:
            nonlocal sent, uncertain
            if not env.may_submit():
                raise _SubmitsHalted
            sent += 1
            await self._log_attempt(sent)
            started = time.monotonic()
            try:
                result = await env.api.submit(self.spec)
            except ApiError as exc:
                if _answer_lost(exc):
                    uncertain += 1
                else:
                    await self._log_outcome(sent, exc)
                raise
            if env.on_submit_latency is not None:
                env.on_submit_latency(time.monotonic() - started)
            if not result.taskid:
                # no "submitted" record will account for this answer
                await self._log_outcome(sent, None)
            return result

        try:
            result, attempts = await env.retrier.call(
                attempt, what="submit", job_id=self.spec.job_id
            )
        except _SubmitsHalted:
            return JobEnd(Outcome.PENDING)
        except InsufficientCreditsError as exc:
            return JobEnd(Outcome.PENDING, _credits_message(exc), StopReason.CREDITS)
        except AuthError:
            raise
        except ApiError as exc:
            if _unreachable(exc):
                # never reached the server: not the job's fault, so no record;
                # the job stays pending and the next run simply submits it
                return JobEnd(
                    Outcome.PENDING,
                    f"API unreachable: {exc.message}",
                    StopReason.UNREACHABLE,
                )
            return await self._fail(
                exc.message, stage="submit", exc=exc, attempts=sent, uncertain=uncertain
            )
        self.submitted = True
        if result.taskid:
            self.taskid = result.taskid
            await env.ledger.append(
                make_record(
                    self.spec,
                    JobStatus.SUBMITTED,
                    taskid=result.taskid,
                    urls=result.urls,
                    code=result.code,
                    msg=result.msg,
                    attempts=attempts,
                    uncertain=uncertain,
                    run=env.run_id or None,
                )
            )
        return result

    async def _log_attempt(self, n: int) -> None:
        if self._env.attempt_log is not None:
            # flushed before the request leaves: if we die before the answer is
            # recorded, `status` can still name this job as a possible duplicate
            await self._env.attempt_log.append(
                {
                    "job_id": self.spec.job_id,
                    "run": self._env.run_id,
                    "n": n,
                    "ts": utc_now_iso(),
                }
            )

    async def _log_outcome(self, n: int, exc: ApiError | None) -> None:
        """Record that attempt `n` got an answer (or never left), so the audit
        does not count it as possibly lost. A successful answer with a taskid
        needs no line: its "submitted" record says the same."""
        if self._env.attempt_log is None:
            return
        outcome: dict[str, Any] = {
            "job_id": self.spec.job_id,
            "run": self._env.run_id,
            "n": n,
            "outcome": "not-sent"
            if exc is not None and _unreachable(exc)
            else "answered",
        }
        if exc is None:
            outcome["code"] = 1000
        else:
            outcome["http"] = exc.http_status
            outcome["code"] = exc.code
        outcome["ts"] = utc_now_iso()
        await self._env.attempt_log.append(outcome)

    # -- poll ------------------------------------------------------------------

    async def _wait_for_task(self, *, poll_first: bool) -> tuple[str, ...] | JobEnd:
        """The finished task's URLs, or how the job ended instead."""
        env = self._env
        try:
            async with asyncio.timeout(env.job_timeout):
                result = await self._poll_until_settled(poll_first=poll_first)
        except TimeoutError:
            return await self._fail(
                f"task still queued or processing after {env.job_timeout:g}s "
                "(--job-timeout)",
                stage="timeout",
            )
        except TaskNotFoundError as exc:
            return await self._fail(exc.message, stage="not-found", exc=exc)
        except InsufficientCreditsError as exc:
            return JobEnd(Outcome.UNFINISHED, _credits_message(exc), StopReason.CREDITS)
        except AuthError:
            raise
        except TransientApiError as exc:
            # The task was paid for and may well finish: keep it "submitted" so
            # the next run polls it again rather than paying for a new one.
            log.warning(
                "job %s: giving up polling for now (%s); rerun to resume",
                self.spec.job_id,
                exc.message,
            )
            if _unreachable(exc):
                return JobEnd(
                    Outcome.UNFINISHED,
                    f"API unreachable: {exc.message}",
                    StopReason.UNREACHABLE,
                )
            return JobEnd(Outcome.UNFINISHED, exc.message)
        except ApiError as exc:
            return await self._fail(exc.message, stage="poll", exc=exc)
        if result.failed:
            return await self._fail(
                result.error_message or result.msg or "generation failed",
                stage="generate",
                code=result.code,
            )
        if not result.urls:
            return await self._fail(
                "task finished without image URLs", stage="generate"
            )
        return result.urls

    async def _poll_until_settled(self, *, poll_first: bool) -> PollResult:
        env = self._env
        taskid = self.taskid
        assert taskid is not None
        loop = asyncio.get_running_loop()
        clock = PollClock.start(
            loop.time(), env.poll_interval, env.readiness, poll_first=poll_first
        )
        try:
            while True:
                wait = clock.next_at - loop.time()
                if wait > 0:
                    if clock.waiting:
                        await self._until_learned(wait)
                    else:
                        await asyncio.sleep(wait)
                if clock.learn() and clock.next_at > loop.time():
                    continue
                sent = loop.time()
                result, _ = await env.retrier.call(
                    functools.partial(env.api.poll, taskid),
                    what="poll",
                    job_id=self.spec.job_id,
                )
                if result.done or result.failed:
                    clock.settled(sent)
                    if (
                        env.readiness_learned is not None
                        and clock.readiness is not None
                    ):
                        env.readiness_learned.set()
                    return result
                clock.not_yet(sent, loop.time())
        finally:
            clock.close()

    async def _until_learned(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the run learns when tasks are ready."""
        learned = self._env.readiness_learned
        if learned is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await learned.wait()

    # -- download --------------------------------------------------------------

    async def _fetch_generated(self, urls: Sequence[str]) -> JobEnd:
        """Download a finished task's recorded URLs; if they fail (expired), ask
        the task for fresh ones. Never submits."""
        if not self._env.download:
            return JobEnd(Outcome.GENERATED)
        try:
            files, images = await self._download_all(urls)
        except (AuthError, LedgerError):
            raise
        except TranscodeError as exc:
            return await self._fail(str(exc), stage="transcode", urls=urls)
        except (ApiError, OSError) as exc:
            if (
                self.taskid is None
                or not isinstance(exc, ApiError)
                or _unreachable(exc)
            ):
                return await self._download_failed(urls, exc)
            log.info(
                "job %s: recorded image URLs failed (%s); asking task %s again",
                self.spec.job_id,
                exc.message,
                self.taskid,
            )
            polled = await self._wait_for_task(poll_first=True)
            if isinstance(polled, JobEnd):
                return polled
            return await self._collect(polled)
        return await self._succeed(urls, files, images)

    async def _collect(self, urls: Sequence[str]) -> JobEnd:
        """Download a finished task's images and record the job succeeded (or,
        with --no-download, record where the images are)."""
        if not self._env.download:
            await self._env.ledger.append(
                make_record(
                    self.spec,
                    JobStatus.GENERATED,
                    taskid=self.taskid,
                    urls=urls,
                    code=1000,
                    msg="ok",
                )
            )
            return JobEnd(Outcome.GENERATED)
        try:
            files, images = await self._download_all(urls)
        except (AuthError, LedgerError):
            raise
        except TranscodeError as exc:
            return await self._fail(str(exc), stage="transcode", urls=urls)
        except (ApiError, OSError) as exc:
            return await self._download_failed(urls, exc)
        return await self._succeed(urls, files, images)

    async def _succeed(
        self, urls: Sequence[str], files: list[str], images: list[dict[str, Any]]
    ) -> JobEnd:
        record = make_record(
            self.spec,
            JobStatus.SUCCEEDED,
            taskid=self.taskid,
            urls=urls,
            code=1000,
            msg="ok",
            files=files,
        )
        if images:
            # facts about each file, so dataset metadata never rereads the images
            record["images"] = images
        await self._env.ledger.append(record)
        return JobEnd(Outcome.SUCCEEDED)

    async def _download_failed(
        self, urls: Sequence[str], exc: ApiError | OSError
    ) -> JobEnd:
        if isinstance(exc, ApiError) and _unreachable(exc):
            # The image host cannot be reached: not the job's fault. Record
            # where the images are, so the next run fetches them (no new task).
            log.warning(
                "job %s: image host unreachable (%s); rerun to download",
                self.spec.job_id,
                exc.message,
            )
            await self._env.ledger.append(
                make_record(
                    self.spec,
                    JobStatus.GENERATED,
                    taskid=self.taskid,
                    urls=urls,
                    code=1000,
                    msg=f"not downloaded: {exc.message}",
                )
            )
            return JobEnd(Outcome.UNFINISHED, exc.message)
        if isinstance(exc, ApiError):
            return await self._fail(
                f"download failed: {exc.message}", stage="download", urls=urls, exc=exc
            )
        return await self._fail(
            f"cannot write image: {exc}", stage="download", urls=urls
        )

    async def _download_all(
        self, urls: Sequence[str]
    ) -> tuple[list[str], list[dict[str, Any]]]:
        env = self._env
        files: list[str] = []
        images: list[dict[str, Any]] = []
        for index, url in enumerate(urls):
            stem = image_stem(self.spec.job_id, index, len(urls), env.legacy_stems)
            saved, _ = await env.retrier.call(
                functools.partial(self._save, url, stem),
                what="download",
                job_id=self.spec.job_id,
            )
            if env.transcoder is not None:
                # a TranscodeError is not retried: the same bytes would fail again
                stored = await env.transcoder.store(saved.path, stem)
                await self._publish(stored.path)
                rel = _relative(stored.path, env.out_dir)
                files.append(rel)
                images.append(stored.facts(rel))
                continue
            await self._publish(saved.path)
            rel = _relative(saved.path, env.out_dir)
            files.append(rel)
            images.append(
                {
                    "file": rel,
                    "sha256": saved.sha256,
                    "bytes": saved.size,
                    "width": saved.width,
                    "height": saved.height,
                }
            )
        return files, images

    async def _publish(self, path: Path) -> None:
        env = self._env
        if env.publish is not None:
            await env.retrier.call(
                functools.partial(env.publish, path),
                what="upload",
                job_id=self.spec.job_id,
            )

    async def _save(self, url: str, stem: str) -> SavedImage:
        # with a transcoder, a download lands in its work folder, never under a
        # final name, until the stored file is complete
        env = self._env
        folder = env.transcoder.work_dir if env.transcoder else env.images_dir
        async with env.api.download(url) as body:
            return await save_image(body, folder, stem)

    # -- failure ---------------------------------------------------------------

    async def _fail(
        self,
        msg: str,
        *,
        stage: str,
        code: int | None = None,
        urls: Sequence[str] | None = None,
        exc: ApiError | None = None,
        attempts: int | None = None,
        uncertain: int = 0,
    ) -> JobEnd:
        if code is None and exc is not None:
            code = exc.code if exc.code is not None else exc.http_status
        await self._env.ledger.append(
            make_record(
                self.spec,
                JobStatus.FAILED,
                taskid=self.taskid,
                urls=urls,
                code=code,
                msg=msg,
                stage=stage,
                attempts=attempts,
                uncertain=uncertain,
                run=(self._env.run_id or None) if attempts is not None else None,
            )
        )
        log.warning("job %s failed at %s: %s", self.spec.job_id, stage, msg)
        return JobEnd(Outcome.FAILED, msg)


def _relative(path: Path, base: Path) -> str:
    """`files` entries are relative to the run directory, with forward slashes."""
    parent, name = os.path.split(path)
    if parent == os.path.join(base, "images"):
        # the usual case, without pathlib's costly relative_to
        return "images/" + name
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()
