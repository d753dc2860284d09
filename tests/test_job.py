"""The runner and a job's lifecycle against FakeApi: exact requests, records, stops."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batch_runner.engine.plan import WorkItem, work_items
from batch_runner.engine.retry import RetryPolicy
from batch_runner.engine.runner import Phase, Runner, RunOptions, RunResult, StopReason
from batch_runner.errors import (
    AuthError,
    InsufficientCreditsError,
    PermanentApiError,
    TaskNotFoundError,
    TransientApiError,
)
from batch_runner.models import JobSpec
from batch_runner.outputs.audit import suspected_duplicate_submits
from batch_runner.store.ledger import LedgerWriter, read_ledger
from batch_runner.wire.fake import FakeAnswer, FakeApi, FakeImage, FakeRequest
from batch_runner.wire.protocol import PollResult, SubmitResult

from .fakes import Script, png

OPTS = RunOptions(
    concurrency=1,
    retry=RetryPolicy(attempts=3, wait_initial=0.0, wait_max=0.0),
    poll_interval=0.0,
    job_timeout=30,
)


def specs(n: int) -> list[JobSpec]:
    return [JobSpec(job_id=f"j{i}", prompt=f"prompt {i}") for i in range(n)]


def items(n: int) -> list[WorkItem]:
    return [WorkItem(j) for j in specs(n)]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Harness:
    """A Runner over FakeApi with a ledger and an attempt log in `out`."""

    def __init__(self, out: Path, handler: Any, options: RunOptions = OPTS) -> None:
        self.out = out
        self.api = FakeApi(handler)
        self.options = options
        self.runner: Runner | None = None

    async def run(self, work: list[WorkItem]) -> RunResult:
        async with (
            LedgerWriter(self.out / "ledger.jsonl") as ledger,
            LedgerWriter(self.out / "attempts.jsonl") as attempts,
        ):
            self.runner = Runner(
                self.api,
                ledger,
                self.options,
                out_dir=self.out,
                attempt_log=attempts,
                run_id="r1",
            )
            return await self.runner.run(work)

    def calls(self) -> list[tuple[str, str | None]]:
        return [
            (r.kind, r.job.job_id if r.job else r.taskid or r.url)
            for r in self.api.requests
        ]

    def ledger(self) -> list[dict[str, Any]]:
        return lines(self.out / "ledger.jsonl")

    def attempts(self) -> list[dict[str, Any]]:
        path = self.out / "attempts.jsonl"
        return lines(path) if path.exists() else []

    def suspects(self) -> dict[str, int]:
        return suspected_duplicate_submits(self.ledger(), self.attempts())


async def test_one_job_goes_submit_poll_download_with_exact_records(
    tmp_path: Path,
) -> None:
    """Each job sends exactly one submit, one poll and one download, in order, and
    leaves a submitted then a succeeded record naming its file and its facts.
    At concurrency 1 the next job is submitted only once the first task has
    finished generating (its download may still be going)."""
    h = Harness(tmp_path, Script())
    result = await h.run(items(2))
    assert (result.succeeded, result.failed, result.submits) == (2, 0, 2)
    calls = h.calls()
    for j in ("j0", "j1"):
        assert [c for c in calls if c[1] is not None and j in c[1]] == [
            ("submit", j),
            ("poll", f"t-{j}"),
            ("download", f"mem://t-{j}/0"),
        ]
    assert len(calls) == 6
    assert calls.index(("submit", "j1")) > calls.index(("poll", "t-j0"))
    records = h.ledger()
    for j in ("j0", "j1"):
        assert [r["status"] for r in records if r["job_id"] == j] == [
            "submitted",
            "succeeded",
        ]
    records = [r for r in records if r["job_id"] == "j0"]
    assert records[0]["attempts"] == 1 and records[0]["run"] == "r1"
    assert records[1]["files"] == ["images/j0.png"]
    assert records[1]["images"][0]["bytes"] == len(png())
    assert (tmp_path / "images" / "j0.png").read_bytes() == png()
    assert h.suspects() == {}


async def test_outage_keeps_jobs_pending_and_lets_inflight_tasks_finish(
    tmp_path: Path,
) -> None:
    """Connection refused on submit: after its retries the job has no record, the
    run drains at once (queued jobs send nothing), a resumed task still finishes."""
    h = Harness(tmp_path, None, RunOptions(**{**_fields(OPTS), "concurrency": 2}))

    async def override(request: FakeRequest) -> FakeAnswer | None:
        if request.kind == "submit":
            raise TransientApiError("cannot connect: refused", maybe_sent=False)
        if request.kind == "poll":
            # still in flight when the outage is noticed; finishes after it
            assert h.runner is not None
            while h.runner.phase is Phase.RUNNING:
                await asyncio.sleep(0)
        return None

    h.api.handler = Script(override=override)
    work = [WorkItem(JobSpec("resumed", "p"), "t-resumed"), *items(5)]
    result = await h.run(work)
    assert result.stop is StopReason.UNREACHABLE
    assert result.stop_message == "API unreachable: cannot connect: refused"
    assert (result.succeeded, result.failed, result.submits) == (1, 0, 0)
    assert h.api.count("submit") == 3  # j0's three attempts; nobody else tried
    assert [(r["job_id"], r["status"]) for r in h.ledger()] == [
        ("resumed", "succeeded")
    ]
    # every attempt is known never to have left: nothing is suspect
    assert [a.get("outcome") for a in h.attempts()] == [None, "not-sent"] * 3
    assert h.suspects() == {}


async def test_credit_stop_and_rejected_key_leave_no_suspects(tmp_path: Path) -> None:
    """Answers that create no record (9000, 401) get an outcome line, so the audit
    does not take them for lost answers."""
    for name, error in (
        ("credits", InsufficientCreditsError("no credits", code=9000)),
        ("auth", AuthError("API key rejected (HTTP 401)", http_status=401)),
    ):
        out = tmp_path / name
        out.mkdir()

        def override(request: FakeRequest, error: Exception = error) -> None:
            if request.kind == "submit" and request.job and request.job.job_id != "j0":
                raise error

        h = Harness(out, Script(override=override))
        result = await h.run(items(4))
        assert result.stop is (
            StopReason.CREDITS if name == "credits" else StopReason.AUTH
        )
        assert h.api.count("submit") == 2
        answered = [a for a in h.attempts() if "outcome" in a]
        assert answered == [
            {
                "job_id": "j1",
                "run": "r1",
                "n": 1,
                "outcome": "answered",
                "http": error.http_status,  # type: ignore[attr-defined]
                "code": error.code,  # type: ignore[attr-defined]
                "ts": answered[0]["ts"],
            }
        ]
        assert h.suspects() == {}


async def test_lost_answer_is_counted_uncertain_and_suspect(tmp_path: Path) -> None:
    """A submit whose answer was lost (timeout) is retried; the record says one of
    two attempts was uncertain, and the audit names the job."""
    sent = 0

    def override(request: FakeRequest) -> None:
        nonlocal sent
        if request.kind == "submit":
            sent += 1
            if sent == 1:
                raise TransientApiError("request timed out")

    h = Harness(tmp_path, Script(override=override))
    result = await h.run(items(1))
    assert result.succeeded == 1 and result.retries == 1
    assert h.ledger()[0]["attempts"] == 2 and h.ledger()[0]["uncertain"] == 1
    assert not [a for a in h.attempts() if "outcome" in a]
    assert h.suspects() == {"j0": 1}


async def test_no_download_records_generated_and_a_later_run_fetches(
    tmp_path: Path,
) -> None:
    """--no-download records 'generated' with the URLs and fetches nothing; the
    plan then gives the job to a run with downloads, which sends no submit or poll."""
    script = Script(images=2)
    first = Harness(
        tmp_path, script, RunOptions(**{**_fields(OPTS), "download": False})
    )
    result = await first.run(items(1))
    assert (result.generated, result.succeeded) == (1, 0)
    assert first.api.count("download") == 0
    record = first.ledger()[-1]
    assert record["status"] == "generated" and "files" not in record
    assert record["url"] == ["mem://t-j0/0", "mem://t-j0/1"]

    state = read_ledger(tmp_path / "ledger.jsonl")
    assert list(work_items(specs(1), state, retry_failed=False, download=False)) == []
    second = Harness(tmp_path, script)
    result = await second.run(list(work_items(specs(1), state, retry_failed=False)))
    assert (result.succeeded, result.submits) == (1, 0)
    assert second.calls() == [
        ("download", "mem://t-j0/0"),
        ("download", "mem://t-j0/1"),
    ]
    assert second.ledger()[-1]["files"] == ["images/j0~0.png", "images/j0~1.png"]


async def test_expired_urls_fall_back_to_the_taskid(tmp_path: Path) -> None:
    """A generated job whose URLs expired asks its task for fresh ones (no new task);
    if the task is gone too, the job fails at not-found."""

    def override(request: FakeRequest) -> PollResult | None:
        if request.kind == "download" and request.url == "mem://old":
            raise PermanentApiError("image download HTTP 403", http_status=403)
        if request.kind == "poll" and request.taskid == "t-gone":
            raise TaskNotFoundError("task not found (HTTP 200: task not found)")
        return None

    h = Harness(tmp_path, Script(override=override))
    result = await h.run(
        [
            WorkItem(JobSpec("a", "p"), "t-a", ("mem://old",)),
            WorkItem(JobSpec("b", "p"), "t-gone", ("mem://old",)),
        ]
    )
    assert (result.succeeded, result.failed, result.submits) == (1, 1, 0)
    assert h.calls()[:3] == [
        ("download", "mem://old"),
        ("poll", "t-a"),
        ("download", "mem://t-a/0"),
    ]
    assert h.api.count("submit") == 0
    final = {r["job_id"]: r for r in h.ledger()}
    assert final["a"]["status"] == "succeeded" and final["a"]["url"] == ["mem://t-a/0"]
    assert (final["b"]["status"], final["b"]["stage"]) == ("failed", "not-found")


async def test_unreachable_image_host_keeps_the_job_for_the_next_run(
    tmp_path: Path,
) -> None:
    """A download that cannot connect is not a failure: the job is recorded
    generated (URLs kept), counted unfinished, and the next run downloads it."""
    down = True

    def override(request: FakeRequest) -> None:
        if request.kind == "download" and down:
            raise TransientApiError("cannot connect: refused", maybe_sent=False)

    h = Harness(tmp_path, Script(override=override))
    result = await h.run(items(1))
    assert (result.failed, result.unfinished, result.stop) == (0, 1, StopReason.NONE)
    assert h.ledger()[-1]["status"] == "generated"
    down = False
    state = read_ledger(tmp_path / "ledger.jsonl")
    result = await Harness(tmp_path, Script(override=override)).run(
        list(work_items(specs(1), state, retry_failed=False))
    )
    assert result.succeeded == 1 and result.submits == 0


async def test_sniffed_type_names_the_file(tmp_path: Path) -> None:
    """A PNG served as image/jpeg is saved as .png."""

    def override(request: FakeRequest) -> FakeImage | None:
        if request.kind == "download":
            return FakeImage(png(), content_type="image/jpeg")
        return None

    h = Harness(tmp_path, Script(override=override))
    await h.run(items(1))
    assert h.ledger()[-1]["files"] == ["images/j0.png"]


async def test_retry_hook_counts_retries_and_throttling(tmp_path: Path) -> None:
    """Two 503s and a 429 before success: three retries, one of them throttled,
    and the 429 does not use up an attempt (3 allowed, 4 sent)."""
    answers: list[Exception] = [
        TransientApiError("HTTP 503", http_status=503),
        TransientApiError("HTTP 429", http_status=429, retry_after=0.0),
        TransientApiError("HTTP 503", http_status=503),
    ]

    def override(request: FakeRequest) -> None:
        if request.kind == "submit" and answers:
            raise answers.pop(0)

    h = Harness(tmp_path, Script(override=override))
    result = await h.run(items(1))
    assert (result.succeeded, result.retries, result.throttled) == (1, 3, 1)
    assert h.ledger()[0]["attempts"] == 4


async def test_failure_breaker_drains_after_n_in_a_row(tmp_path: Path) -> None:
    """--max-failures 2: after two permanent failures no further job is sent."""

    def override(request: FakeRequest) -> None:
        if request.kind == "submit":
            raise PermanentApiError("HTTP 400: bad", http_status=400)

    options = RunOptions(**{**_fields(OPTS), "max_failures": 2})
    h = Harness(tmp_path, Script(override=override), options)
    result = await h.run(items(5))
    assert result.stop is StopReason.FAILURES and result.failed == 2
    assert h.api.count("submit") == 2


async def test_budget_submits_exactly_max_jobs(tmp_path: Path) -> None:
    """--max-jobs 2 submits two new jobs; a resumed task is still collected."""
    options = RunOptions(**{**_fields(OPTS), "max_jobs": 2})
    h = Harness(tmp_path, Script(), options)
    work = [*items(4), WorkItem(JobSpec("r", "p"), "t-r")]
    result = await h.run(work)
    assert result.stop is StopReason.BUDGET
    assert (result.succeeded, result.submits) == (3, 2)


async def test_rejected_key_cancels_inflight_jobs(tmp_path: Path) -> None:
    """A 401 moves the run to cancelling: a job stuck polling is cancelled and
    keeps its submitted record; nothing is recorded failed."""
    stuck = asyncio.Event()

    async def override(request: FakeRequest) -> None:
        if request.kind == "poll":
            stuck.set()
            await asyncio.Event().wait()  # never answers
        if request.kind == "submit" and request.job and request.job.job_id == "j1":
            await stuck.wait()
            raise AuthError("API key rejected (HTTP 401)", http_status=401)

    options = RunOptions(**{**_fields(OPTS), "concurrency": 2})
    h = Harness(tmp_path, Script(override=override), options)
    result = await h.run(items(3))
    assert result.stop is StopReason.AUTH
    assert h.runner is not None and h.runner.phase is Phase.CANCELLING
    assert [(r["job_id"], r["status"]) for r in h.ledger()] == [("j0", "submitted")]
    assert h.api.count("submit") == 2


async def test_signals_move_the_phase_forward(tmp_path: Path) -> None:
    """The first stop request stops starting work, the second cancels; a job in
    flight keeps its submitted record and nothing is marked failed."""
    polling = asyncio.Event()

    async def override(request: FakeRequest) -> None:
        if request.kind == "poll":
            polling.set()
            await asyncio.Event().wait()

    h = Harness(tmp_path, Script(override=override))
    task = asyncio.create_task(h.run(items(3)))
    await polling.wait()
    assert h.runner is not None
    h.runner.request_stop(15)
    assert h.runner.phase is Phase.STOPPING
    h.runner.request_stop(15)
    assert h.runner.phase is Phase.CANCELLING
    result = await task
    assert (result.stop, result.signal) == (StopReason.SIGNAL, 15)
    assert [(r["job_id"], r["status"]) for r in h.ledger()] == [("j0", "submitted")]


async def test_a_bug_in_one_job_is_recorded_and_spares_the_others(
    tmp_path: Path,
) -> None:
    """An unexpected exception fails its job at stage 'internal'; the others run."""

    def override(request: FakeRequest) -> None:
        if request.kind == "poll" and request.taskid == "t-j0":
            raise ValueError("boom")

    h = Harness(tmp_path, Script(override=override))
    result = await h.run(items(2))
    assert (result.succeeded, result.failed) == (1, 1)
    failed = [r for r in h.ledger() if r["status"] == "failed"]
    assert failed[0]["stage"] == "internal" and "boom" in failed[0]["msg"]


def _fields(options: RunOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in options.__slots__}


def _ready_after(
    seconds: float, loop: asyncio.AbstractEventLoop
) -> Callable[[FakeRequest], FakeAnswer]:
    """A server whose tasks are done `seconds` after their submit."""
    submitted: dict[str, float] = {}

    def handler(request: FakeRequest) -> FakeAnswer:
        if request.kind == "submit":
            assert request.job is not None
            taskid = f"t-{request.job.job_id}"
            submitted[taskid] = loop.time()
            return SubmitResult(taskid, (), 1000, "ok")
        if request.kind == "poll":
            assert request.taskid is not None
            if loop.time() - submitted[request.taskid] < seconds:
                return PollResult(2, (), "", 1000, "processing")
            return PollResult(3, (f"mem://{request.taskid}",), "", 1000, "ok")
        return png(1, 1)

    return handler


async def test_first_poll_follows_the_runs_observed_readiness(tmp_path: Path) -> None:
    """Tasks that take 0.2 s are, once the run has seen a few, first polled just
    before they are ready instead of every 20 ms from the submit: under half the
    polls of the fixed timeline (about 10 per job)."""
    handler = _ready_after(0.2, asyncio.get_running_loop())
    h = Harness(tmp_path, handler, dataclasses.replace(OPTS, poll_interval=0.02))
    result = await h.run(items(12))
    assert result.succeeded == 12
    assert h.api.count("poll") < 12 * 10 / 2


async def test_the_first_wave_sends_scouts_instead_of_polling_every_task(
    tmp_path: Path,
) -> None:
    """40 tasks submitted at once, each ready 0.25 s after its submit, with a
    10 ms poll interval: polling every task would cost about 25 polls each
    (1,000). A few scouts poll every interval; the rest wait for what they
    learn, polling on their own only at 4, 8 and 16 intervals meanwhile."""
    handler = _ready_after(0.25, asyncio.get_running_loop())
    options = dataclasses.replace(OPTS, concurrency=40, poll_interval=0.01)
    h = Harness(tmp_path, handler, options)
    result = await h.run(items(40))
    assert result.succeeded == 40
    assert h.api.count("poll") < 1000 / 4


async def test_a_finished_task_downloads_outside_its_generation_slot(
    tmp_path: Path,
) -> None:
    """Concurrency 2 bounds the tasks generating at once, not the downloads:
    while a finished task's image comes down (slowly here), the next job is
    already submitted, and never more than 2 tasks are generating."""
    generating: set[str] = set()
    downloading = 0
    most_generating = 0
    submits_during_downloads = 0

    async def handler(request: FakeRequest) -> FakeAnswer:
        nonlocal downloading, most_generating, submits_during_downloads
        if request.kind == "submit":
            assert request.job is not None
            taskid = f"t-{request.job.job_id}"
            generating.add(taskid)
            most_generating = max(most_generating, len(generating))
            submits_during_downloads += downloading > 0
            return SubmitResult(taskid, (), 1000, "ok")
        if request.kind == "poll":
            assert request.taskid is not None
            generating.discard(request.taskid)
            return PollResult(3, (f"mem://{request.taskid}",), "", 1000, "ok")
        downloading += 1
        try:
            await asyncio.sleep(0.1)
        finally:
            downloading -= 1
        return png(1, 1)

    options = dataclasses.replace(OPTS, concurrency=2)
    h = Harness(tmp_path, handler, options)
    result = await h.run(items(6))
    assert result.succeeded == 6
    assert most_generating == 2
    assert submits_during_downloads >= 3
    assert result.peak_concurrency == 2
