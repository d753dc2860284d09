"""Regressions for defects of the run loop, each against real parts on loopback:
an API outage, the image extension, attempt outcomes, the key form, --no-download."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from batch_runner.cli.main import main
from batch_runner.engine.plan import WorkItem, work_items
from batch_runner.engine.retry import RetryPolicy
from batch_runner.engine.runner import Runner, RunOptions, RunResult, StopReason
from batch_runner.models import JobSpec
from batch_runner.outputs.report import run_status
from batch_runner.store.ledger import LedgerWriter, read_ledger
from batch_runner.wire.client import ZImageClient

from .conftest import KEY, SimFactory
from .test_images import png

FAST = RunOptions(
    concurrency=4,
    retry=RetryPolicy(attempts=3, wait_initial=0.0, wait_max=0.0),
    poll_interval=0.01,
    job_timeout=30,
)


def jobs(n: int) -> list[JobSpec]:
    return [JobSpec(job_id=f"j{i}", prompt=f"prompt {i}", seed=i) for i in range(n)]


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def run_items(
    url: str,
    out: Path,
    items: list[WorkItem],
    options: RunOptions = FAST,
    key: str = KEY,
) -> RunResult:
    """One Runner over the real client, with an attempt log, like `run` wires it."""
    async with aiohttp.ClientSession() as session:
        client = ZImageClient(session, url, key, request_timeout=5)
        async with (
            LedgerWriter(out / "ledger.jsonl", immediate=True) as ledger,
            LedgerWriter(out / "attempts.jsonl") as attempts,
        ):
            runner = Runner(
                client, ledger, options, out_dir=out, attempt_log=attempts, run_id="r1"
            )
            return await runner.run(items)


def test_outage_leaves_jobs_pending_stops_submitting_and_exits_1(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With the API refusing connections, no job is recorded failed, only the jobs
    in flight ever tried, the run exits 1 saying so, and the next run does them."""
    monkeypatch.setenv("TENSORSLAB_API_KEY", KEY)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "jobs:\n" + "".join(f"  - {{id: o{i}, prompt: 'p {i}'}}\n" for i in range(8))
    )
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{closed_port()}"
    common = ["--out", str(out), "--no-progress", "--poll-interval", "0.02"]
    run = ["run", str(manifest), "--base-url", url, "--concurrency", "2"]
    assert main([*run, "--retries", "2", *common]) == 1
    assert "API unreachable" in capsys.readouterr().err
    state = read_ledger(out / "ledger.jsonl")
    assert not state.failed and not state.succeeded
    tried = {
        json.loads(line)["job_id"]
        for line in (out / "attempts.jsonl").read_text().splitlines()
    }
    assert 0 < len(tried) <= 2
    # nothing to --retry-failed: the next run simply does every job
    rc = main(["run", str(manifest), "--mock", "--mock-generation-time", "0", *common])
    assert rc == 0
    assert len(read_ledger(out / "ledger.jsonl").succeeded) == 8


async def test_image_is_named_after_its_magic_bytes(tmp_path: Path) -> None:
    """A PNG served as image/jpeg is saved as .png, and the ledger says so."""

    async def submit(request: web.Request) -> web.Response:
        url = str(request.url.with_path("/img/t1"))
        return web.json_response({"code": 1000, "data": {"taskid": "t1", "url": url}})

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=png(3, 2), content_type="image/jpeg")

    app = web.Application()
    app.router.add_post("/v1/images/zimage", submit)
    app.router.add_get("/img/t1", image)
    async with TestServer(app) as server:
        result = await run_items(
            str(server.make_url("/")), tmp_path, [WorkItem(JobSpec("x", "p"))]
        )
    assert result.succeeded == 1
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["x.png"]
    record = json.loads((tmp_path / "ledger.jsonl").read_text().splitlines()[-1])
    assert record["files"] == ["images/x.png"]
    assert record["images"][0]["width"] == 3


async def test_answered_attempts_are_not_suspected_duplicates(
    sim: SimFactory, tmp_path: Path
) -> None:
    """After a credit stop and after a rejected key, `status` suspects no job:
    every attempt got an answer."""
    server = await sim(credits=3, generation_time=0.01)
    credits = await run_items(
        server.url, tmp_path / "c", [WorkItem(j) for j in jobs(10)]
    )
    assert credits.stop is StopReason.CREDITS
    assert server.state.snapshot()["credit_rejections"] > 0
    report = run_status(tmp_path / "c" / "ledger.jsonl", run_dir=tmp_path / "c")
    assert report.suspected_duplicates == {}

    auth = await run_items(
        server.url, tmp_path / "a", [WorkItem(j) for j in jobs(10)], key="wrong"
    )
    assert auth.stop is StopReason.AUTH
    report = run_status(tmp_path / "a" / "ledger.jsonl", run_dir=tmp_path / "a")
    assert report.suspected_duplicates == {}


async def test_rejected_key_costs_at_most_concurrency_plus_two_requests(
    sim: SimFactory, tmp_path: Path
) -> None:
    """A wrong key is tried in both forms once per run, not once per job slot."""
    server = await sim()
    options = RunOptions(concurrency=8, retry=FAST.retry, poll_interval=0.01)
    result = await run_items(
        server.url, tmp_path, [WorkItem(j) for j in jobs(40)], options, key="wrong"
    )
    assert result.stop is StopReason.AUTH
    stats = server.state.snapshot()
    assert 0 < stats["auth_failures"] <= 8 + 2


async def test_no_download_jobs_are_downloaded_by_a_later_run(
    sim: SimFactory, tmp_path: Path
) -> None:
    """A --no-download run leaves work for later: the next run fetches every image
    from the recorded URLs without creating a task."""
    server = await sim(generation_time=0.01, images_per_task=2)
    specs = jobs(4)
    ledger = tmp_path / "ledger.jsonl"
    options = RunOptions(concurrency=4, retry=FAST.retry, poll_interval=0.01)
    no_download = RunOptions(
        concurrency=4, retry=FAST.retry, poll_interval=0.01, download=False
    )
    first = await run_items(
        server.url,
        tmp_path,
        list(work_items(specs, read_ledger(ledger), retry_failed=False)),
        no_download,
    )
    assert first.failed == 0
    assert not list((tmp_path / "images").iterdir())
    created = server.state.snapshot()["tasks_created"]
    assert created == 4
    second = await run_items(
        server.url,
        tmp_path,
        list(work_items(specs, read_ledger(ledger), retry_failed=False)),
        options,
    )
    assert second.succeeded == 4 and second.submits == 0
    assert server.state.snapshot()["tasks_created"] == created
    assert len(list((tmp_path / "images").glob("*.png"))) == 8
    assert len(read_ledger(ledger).succeeded) == 4
