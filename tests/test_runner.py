"""The run loop against the simulator: concurrency, rate, faults, stops, resume."""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import aiohttp

from batch_runner.engine.plan import WorkItem
from batch_runner.engine.retry import RetryPolicy
from batch_runner.engine.runner import Runner, RunOptions, RunResult, StopReason
from batch_runner.models import JobSpec
from batch_runner.store.ledger import LedgerWriter, read_ledger
from batch_runner.wire.api import ImageBody
from batch_runner.wire.client import ZImageClient
from batch_runner.wire.protocol import PollResult, SubmitResult

from .conftest import KEY, SimFactory

FAST = RunOptions(
    concurrency=8,
    retry=RetryPolicy(attempts=8, wait_initial=0.0, wait_max=0.0),
    poll_interval=0.01,
    job_timeout=30,
)


def jobs(n: int, prefix: str = "j", prompt: str = "prompt") -> list[JobSpec]:
    return [
        JobSpec(job_id=f"{prefix}{i}", prompt=f"{prompt} {i}", seed=i) for i in range(n)
    ]


class Spy:
    """Wraps the client and counts jobs in flight and submit times."""

    def __init__(self, inner: ZImageClient) -> None:
        self.inner = inner
        self.running = 0
        self.max_running = 0
        self.submit_times: list[float] = []
        self.submits = 0

    async def submit(self, job: JobSpec) -> SubmitResult:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.submit_times.append(time.monotonic())
        self.submits += 1
        try:
            return await self.inner.submit(job)
        finally:
            await asyncio.sleep(0.005)
            self.running -= 1

    async def poll(self, taskid: str) -> PollResult:
        return await self.inner.poll(taskid)

    def download(self, url: str) -> AbstractAsyncContextManager[ImageBody]:
        return self.inner.download(url)


async def run_jobs(
    url: str,
    tmp_path: Path,
    items: list[WorkItem],
    options: RunOptions = FAST,
    key: str = KEY,
    spy: bool = False,
) -> tuple[RunResult, Spy | None]:
    async with aiohttp.ClientSession() as session:
        client = ZImageClient(session, url, key, request_timeout=2)
        api = Spy(client) if spy else client
        async with LedgerWriter(tmp_path / "ledger.jsonl") as ledger:
            runner = Runner(api, ledger, options, out_dir=tmp_path)
            result = await runner.run(items)
    return result, api if isinstance(api, Spy) else None


async def test_all_jobs_succeed_within_the_concurrency_limit(
    sim: SimFactory, tmp_path: Path
) -> None:
    """Every job ends succeeded with its image; never more than N run at once."""
    server = await sim(generation_time=0.02)
    result, spy = await run_jobs(
        server.url,
        tmp_path,
        [WorkItem(j) for j in jobs(40)],
        RunOptions(concurrency=3, retry=FAST.retry, poll_interval=0.01),
        spy=True,
    )
    assert result.succeeded == 40 and result.failed == 0
    assert spy is not None and 0 < spy.max_running <= 3
    state = read_ledger(tmp_path / "ledger.jsonl")
    assert len(state.succeeded) == 40
    assert len(list((tmp_path / "images").glob("*.png"))) == 40


async def test_rate_limit_spaces_submits(sim: SimFactory, tmp_path: Path) -> None:
    """--rate R starts submit k no earlier than k/R after the run began: evenly
    spaced from the first, with no initial burst."""
    server = await sim()
    options = RunOptions(
        concurrency=10, rate=20.0, retry=FAST.retry, poll_interval=0.01
    )
    began = time.monotonic()
    _, spy = await run_jobs(
        server.url, tmp_path, [WorkItem(j) for j in jobs(8)], options, spy=True
    )
    assert spy is not None
    # a sleep never ends early, so lateness on a busy machine cannot fail this
    for k, started in enumerate(sorted(spy.submit_times)):
        assert started >= began + k / 20.0 - 1e-3


async def test_faults_are_retried_and_designed_failures_fail(
    sim: SimFactory, tmp_path: Path
) -> None:
    """With 30% faults every job succeeds except the one designed to fail."""
    server = await sim(
        fault_rate=0.3, seed=7, retry_after=0.01, hang_time=0.5, generation_time=0.01
    )
    items = [WorkItem(j) for j in jobs(30)]
    items.append(WorkItem(JobSpec(job_id="bad", prompt="nope [fail]")))
    options = RunOptions(
        concurrency=8,
        retry=RetryPolicy(attempts=12, wait_initial=0.0, wait_max=0.0),
        poll_interval=0.01,
    )
    result, _ = await run_jobs(server.url, tmp_path, items, options)
    assert result.succeeded == 30 and result.failed == 1
    assert result.retries > 0
    state = read_ledger(tmp_path / "ledger.jsonl")
    assert state.failed["bad"].stage == "generate"
    assert "simulated generation failure" in state.failed["bad"].msg


async def test_credits_stop_new_submits_without_failing(
    sim: SimFactory, tmp_path: Path
) -> None:
    """Out of credits: submits stop, finished jobs stay, nothing is marked failed."""
    server = await sim(credits=5, generation_time=0.05)
    result, _ = await run_jobs(
        server.url,
        tmp_path,
        [WorkItem(j) for j in jobs(12)],
        RunOptions(concurrency=2, retry=FAST.retry, poll_interval=0.01),
    )
    assert result.stop is StopReason.CREDITS
    assert result.succeeded == 5 and result.failed == 0
    state = read_ledger(tmp_path / "ledger.jsonl")
    assert len(state.succeeded) == 5 and not state.failed


async def test_rejected_key_stops_the_run(sim: SimFactory, tmp_path: Path) -> None:
    """A 401 stops everything with StopReason.AUTH and records no failures."""
    server = await sim()
    result, _ = await run_jobs(
        server.url, tmp_path, [WorkItem(j) for j in jobs(20)], key="not-the-key"
    )
    assert result.stop is StopReason.AUTH
    assert "API key rejected" in result.stop_message
    assert result.failed == 0
    assert read_ledger(tmp_path / "ledger.jsonl").records == 0


async def test_resume_polls_recorded_taskids_instead_of_resubmitting(
    sim: SimFactory, tmp_path: Path
) -> None:
    """Items with a taskid are polled; the server creates no new task for them."""
    server = await sim(generation_time=0.01)
    first, _ = await run_jobs(
        server.url, tmp_path / "a", [WorkItem(j) for j in jobs(5)]
    )
    state = read_ledger(tmp_path / "a" / "ledger.jsonl")
    created = server.state.snapshot()["tasks_created"]
    taskids = {j: t for j, t in state.submitted.items()}
    assert not taskids  # all succeeded; rebuild taskids from the ledger text instead
    import json

    recs = [
        json.loads(line)
        for line in (tmp_path / "a" / "ledger.jsonl").read_text().splitlines()
    ]
    items = [
        WorkItem(JobSpec(job_id=r["job_id"], prompt=r["prompt"]), r["taskid"])
        for r in recs
        if r["status"] == "submitted"
    ]
    second, _ = await run_jobs(server.url, tmp_path / "b", items)
    assert second.succeeded == 5 and second.submits == 0
    assert server.state.snapshot()["tasks_created"] == created
    assert first.submits == 5


async def test_unknown_taskid_is_recorded_failed(
    sim: SimFactory, tmp_path: Path
) -> None:
    """A recorded taskid the server no longer knows ends failed at 'not-found'."""
    server = await sim()
    options = RunOptions(
        retry=RetryPolicy(attempts=3, wait_initial=0.0, wait_max=0.0),
        poll_interval=0.01,
    )
    result, _ = await run_jobs(
        server.url,
        tmp_path,
        [WorkItem(JobSpec(job_id="x", prompt="p"), "zimg_gone")],
        options,
    )
    assert result.failed == 1
    assert read_ledger(tmp_path / "ledger.jsonl").failed["x"].stage == "not-found"


async def test_job_timeout(sim: SimFactory, tmp_path: Path) -> None:
    """A task still processing after --job-timeout is recorded failed with a reason."""
    server = await sim(generation_time=30)
    options = RunOptions(retry=FAST.retry, poll_interval=0.01, job_timeout=0.3)
    result, _ = await run_jobs(
        server.url, tmp_path, [WorkItem(JobSpec(job_id="slow", prompt="p"))], options
    )
    assert result.failed == 1
    failed = read_ledger(tmp_path / "ledger.jsonl").failed["slow"]
    assert failed.stage == "timeout" and "--job-timeout" in failed.msg
    assert failed.taskid


async def test_sync_urls_skip_polling_and_multiple_images(
    sim: SimFactory, tmp_path: Path
) -> None:
    """URLs in the submit response skip polling; several images are numbered from 0
    after a "~"."""
    server = await sim(url_in_submit=True, images_per_task=3)
    result, _ = await run_jobs(
        server.url, tmp_path, [WorkItem(JobSpec(job_id="m", prompt="p"))]
    )
    assert result.succeeded == 1
    assert server.state.snapshot()["polls_total"] == 0
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert names == ["m~0.png", "m~1.png", "m~2.png"]


async def test_graceful_stop_records_taskids_and_leaves_no_torn_line(
    sim: SimFactory, tmp_path: Path
) -> None:
    """A stop request lets in-flight jobs record their taskid, then ends cleanly."""
    server = await sim(generation_time=60)
    async with aiohttp.ClientSession() as session:
        client = ZImageClient(session, server.url, KEY)
        async with LedgerWriter(tmp_path / "ledger.jsonl") as ledger:
            runner = Runner(
                client,
                ledger,
                RunOptions(
                    concurrency=4, retry=FAST.retry, poll_interval=0.01, grace=0.2
                ),
                out_dir=tmp_path,
            )
            task = asyncio.create_task(runner.run([WorkItem(j) for j in jobs(50)]))
            while server.state.snapshot()["tasks_created"] < 4:
                await asyncio.sleep(0.01)
            runner.request_stop(15)
            result = await asyncio.wait_for(task, 5)
    assert result.stop is StopReason.SIGNAL and result.signal == 15
    state = read_ledger(tmp_path / "ledger.jsonl")
    assert not state.warnings
    assert len(state.submitted) == server.state.snapshot()["tasks_created"] == 4


async def test_adaptive_concurrency_finds_the_server_limit(
    sim: SimFactory, tmp_path: Path
) -> None:
    """Against a server limit of 6 active tasks, auto mode finishes every job with
    far fewer 429s than a fixed concurrency of 32, and 429s use up no retries."""
    results = {}
    for name, options in {
        "fixed": RunOptions(
            concurrency=32,
            retry=RetryPolicy(attempts=2, wait_initial=0.0, wait_max=0.0),
            poll_interval=0.02,
        ),
        "auto": RunOptions(
            adaptive=True,
            max_concurrency=32,
            retry=RetryPolicy(attempts=2, wait_initial=0.0, wait_max=0.0),
            poll_interval=0.02,
        ),
    }.items():
        server = await sim(max_active_tasks=6, retry_after=0.05, generation_time=0.1)
        result, _ = await run_jobs(
            server.url, tmp_path / name, [WorkItem(j) for j in jobs(60)], options
        )
        assert result.succeeded == 60 and result.failed == 0
        results[name] = (result, server.state.snapshot()["rejected_429_limit"])
    fixed, auto = results["fixed"], results["auto"]
    assert fixed[1] > 0 and auto[1] < fixed[1] / 2
    assert auto[0].peak_concurrency <= 32


async def test_429_paces_without_using_retries_but_bare_503_does(
    sim: SimFactory, tmp_path: Path
) -> None:
    """A 429 waits without spending a retry (up to max_throttled); a 503 without
    Retry-After is an outage and spends retries, so the job fails in bounded time."""
    options = RunOptions(
        retry=RetryPolicy(attempts=2, wait_initial=0.0, wait_max=0.0),
        poll_interval=0.01,
        max_throttled=5,
    )
    for kind, requests in (("429", 5 + 2), ("503", 2)):
        server = await sim(fault_rate=1.0, fault_kinds=(kind,), retry_after=0.01)
        result, _ = await run_jobs(
            server.url,
            tmp_path / kind,
            [WorkItem(JobSpec(job_id="x", prompt="p"))],
            options,
        )
        assert result.failed == 1, kind
        assert server.state.snapshot()["submits_total"] == requests, kind
