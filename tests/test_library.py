"""The public Python API, driven as a library user would: from a script, from
`asyncio.run`, from inside a running loop, with jobs as values, and its manners
(no prints, no root-logger handlers, no signal handlers unless asked)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import pkgutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import batch_runner
from batch_runner import (
    BatchRunnerError,
    ExitCode,
    ManifestError,
    RunLockedError,
    StopReason,
    UsageError,
    plan,
    records,
    run_batch,
    run_batch_sync,
    status,
)
from batch_runner.cli.main import build_parser, main
from batch_runner.manifest.items import JobItems
from batch_runner.store.ledger import latest_records
from batch_runner.store.rundir import RunDir

from .conftest import KEY, SimFactory

#: fast settings for the built-in simulator
QUICK: dict[str, Any] = {
    "mock": True,
    "mock_generation_time": 0.0,
    "poll_interval": 0.02,
}

JOBS: list[Any] = [
    "a lighthouse at dawn",
    {"id": "boat", "prompt": "a paper boat", "seed": 7, "meta": {"k": [1, 2]}},
    {"prompt": "a fox", "repeat": 2, "resolution": "16:9"},
]


def ledger_of(out: Path) -> dict[str, dict[str, Any]]:
    return latest_records(out / "ledger.jsonl")


@pytest.fixture(autouse=True)
def library_logging() -> Iterator[None]:
    """The `batch_runner` logger as a fresh import leaves it, whatever an
    in-process CLI call (which configures it) did before; restored after."""
    logger = logging.getLogger("batch_runner")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


def test_all_names_are_importable_and_every_error_is_exported() -> None:
    """`__all__` lists real objects, and every BatchRunnerError subclass in the
    package is importable from `batch_runner`."""
    for name in batch_runner.__all__:
        assert getattr(batch_runner, name) is not None, name
    for info in pkgutil.walk_packages(batch_runner.__path__, "batch_runner."):
        if info.name != "batch_runner.__main__":  # it runs the CLI
            importlib.import_module(info.name)
    pending: list[type[BaseException]] = [BatchRunnerError]
    seen: set[type[BaseException]] = set()
    while pending:
        cls = pending.pop()
        seen.add(cls)
        pending.extend(cls.__subclasses__())
    for cls in seen:
        assert getattr(batch_runner, cls.__name__, None) is cls, cls
        assert cls.__name__ in batch_runner.__all__, cls
    assert issubclass(ManifestError, ValueError) and issubclass(UsageError, ValueError)


def test_plain_script_runs_the_batch_and_prints_nothing(tmp_path: Path) -> None:
    """`run_batch_sync` from `python -c`: the images are made, the result says so,
    and the library wrote nothing to stdout or stderr by itself."""
    out = tmp_path / "run"
    script = (
        "import json, batch_runner\n"
        f"r = batch_runner.run_batch_sync({JOBS!r}, out={str(out)!r}, mock=True,"
        " mock_generation_time=0.0, poll_interval=0.02)\n"
        "print(json.dumps(r.to_dict()))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    (line,) = res.stdout.splitlines()
    result = json.loads(line)
    assert result["succeeded"] == 4 and result["exit_code"] == 0
    assert result["stop_reason"] == "none" and result["pending"] == 0
    states = ledger_of(out)
    assert len(states) == 4 and {s["status"] for s in states.values()} == {"succeeded"}
    for rec in states.values():
        assert (out / rec["files"][0]).read_bytes().startswith(b"\x89PNG")


def test_asyncio_run_with_an_iterable_of_strings_and_mappings(tmp_path: Path) -> None:
    """`asyncio.run(run_batch(...))` runs values exactly as the same manifest
    would: ids, seeds, repeat, resolution and meta all as given."""
    out = tmp_path / "run"
    result = asyncio.run(run_batch(JOBS, out=out, **QUICK))
    assert (result.succeeded, result.failed, result.pending) == (4, 0, 0)
    assert result.submitted == 4 and result.exit_code is ExitCode.OK and result.ok
    assert result.stop_reason is StopReason.NONE and result.elapsed > 0
    assert result.out == out and result.ledger == out / "ledger.jsonl"
    states = ledger_of(out)
    assert states["boat"]["seed"] == 7 and states["boat"]["meta"] == {"k": [1, 2]}
    foxes = sorted(j for j in states if j.endswith(("-0", "-1")))
    assert len(foxes) == 2
    assert {states[f]["resolution"] for f in foxes} == {"16:9"}
    # the same jobs written as a manifest file are the same jobs (same ids)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(j) + "\n" for j in JOBS))
    again = plan(manifest, out=out)
    assert (again.total, again.done, again.to_submit) == (4, 4, 0)


async def test_sync_call_inside_a_running_loop_uses_a_worker_thread(
    tmp_path: Path,
) -> None:
    """From a coroutine (as in a Jupyter cell), `run_batch_sync` still completes,
    on a thread of its own, and blocks until it is done."""
    seen_threads: set[str] = set()

    def on_record(record: dict[str, Any]) -> None:
        seen_threads.add(threading.current_thread().name)

    result = run_batch_sync(
        ["one", "two", "three"], out=tmp_path / "run", on_record=on_record, **QUICK
    )
    assert result.succeeded == 3 and result.exit_code == 0
    assert seen_threads == {"batch-runner"}
    assert threading.current_thread().name not in seen_threads
    with pytest.raises(UsageError, match="handle_signals"):
        run_batch_sync(["x"], out=tmp_path / "other", handle_signals=True, **QUICK)


def test_a_one_shot_iterator_is_copied_and_a_collection_is_not(
    tmp_path: Path,
) -> None:
    """A generator is materialised (it is read twice); a re-iterable is
    re-iterated, not copied: both run every job once."""

    class Prompts:
        """A re-iterable that counts how often it is read."""

        def __init__(self, n: int) -> None:
            self.n = n
            self.passes = 0

        def __iter__(self) -> Iterator[str]:
            self.passes += 1
            return (f"prompt {i}" for i in range(self.n))

    prompts = Prompts(5)
    items = JobItems(prompts)
    assert items._items is prompts
    result = run_batch_sync(prompts, out=tmp_path / "a", **QUICK)
    assert result.succeeded == 5 and prompts.passes >= 2

    gen = (f"prompt {i}" for i in range(5))
    assert isinstance(JobItems(gen)._items, list)
    result = run_batch_sync(
        (f"prompt {i}" for i in range(5)), out=tmp_path / "b", **QUICK
    )
    assert result.succeeded == 5
    assert set(ledger_of(tmp_path / "a")) == set(ledger_of(tmp_path / "b"))


@pytest.mark.parametrize(
    ("bad", "line", "field"),
    [
        (["ok", "fine", {"prompt": "x", "seed": "7"}], 3, "seed"),
        (["ok", {"promt": "typo"}], 2, "promt"),
        (["ok", ""], 2, "prompt"),
        ([{"id": "a", "prompt": "p"}, {"id": "a", "prompt": "q"}], 2, "id"),
        (["ok", 42], 2, None),
    ],
)
async def test_a_bad_job_raises_manifest_error_and_sends_nothing(
    tmp_path: Path, sim: SimFactory, bad: list[Any], line: int, field: str | None
) -> None:
    """A bad item raises ManifestError naming its position and field before a
    single request reaches the API, and leaves no ledger."""
    server = await sim()
    out = tmp_path / "run"
    with pytest.raises(ManifestError) as caught:
        await run_batch(
            iter(bad), out=out, api_key=KEY, base_url=server.url, poll_interval=0.02
        )
    err = caught.value
    assert (err.path, err.line, err.field) == ("<jobs>", line, field)
    assert str(err).startswith(f"<jobs>:{line}:")
    assert server.state.stats.requests_total == 0
    assert not (out / "ledger.jsonl").exists()


def test_bad_keyword_values_raise_usage_error_naming_them(tmp_path: Path) -> None:
    """Out-of-range keywords and a missing key are UsageErrors naming the keyword."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": "lots"}, "concurrency"),
        ({"poll_interval": float("inf")}, "poll_interval"),
        ({"rate": -1}, "rate"),
        ({"retries": 1.5}, "retries"),
        ({"shard": "3/2"}, "shard"),
        ({"mock_fault_rate": 2}, "mock_fault_rate"),
        ({"event_loop": "trio"}, "event_loop"),
    ]
    for kwargs, name in cases:
        with pytest.raises(UsageError, match=name):
            run_batch_sync(["x"], out=tmp_path / "run", **{**QUICK, **kwargs})
    with pytest.raises(UsageError, match="no API key"):
        run_batch_sync(["x"], out=tmp_path / "run", api_key="")
    with pytest.raises(TypeError, match="iterable of jobs"):
        run_batch_sync({"prompt": "x"}, out=tmp_path / "run", **QUICK)  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()


def test_on_record_sees_every_record_and_its_errors_do_not_stop_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """on_record gets each record as written (in ledger order); when it raises,
    the error is logged and the run still finishes every job."""
    got: list[dict[str, Any]] = []

    def on_record(record: dict[str, Any]) -> None:
        got.append(record)
        raise RuntimeError("metrics backend down")

    with caplog.at_level(logging.ERROR, logger="batch_runner"):
        result = run_batch_sync(
            ["a", "b", "c"], out=tmp_path / "run", on_record=on_record, **QUICK
        )
    assert result.succeeded == 3 and result.exit_code == 0
    lines = (tmp_path / "run" / "ledger.jsonl").read_text().splitlines()
    assert got == [json.loads(line) for line in lines]
    assert [r["status"] for r in got].count("succeeded") == 3
    assert caplog.text.count("on_record callback raised") == len(lines)
    assert "metrics backend down" in caplog.text


def test_no_root_logger_handlers_and_no_signal_handlers(tmp_path: Path) -> None:
    """A library call leaves the root logger alone and installs no SIGTERM
    handler; with handle_signals=True it does, for the run only."""
    root_before = list(logging.getLogger().handlers)
    ours_before = list(logging.getLogger("batch_runner").handlers)
    before = signal.getsignal(signal.SIGTERM)
    during: list[object] = []

    def on_record(record: dict[str, Any]) -> None:
        during.append(signal.getsignal(signal.SIGTERM))

    asyncio.run(run_batch(["a"], out=tmp_path / "a", on_record=on_record, **QUICK))
    assert during and all(h == before for h in during)
    assert logging.getLogger().handlers == root_before
    assert logging.getLogger("batch_runner").handlers == ours_before
    assert all(
        isinstance(h, logging.NullHandler)
        for h in logging.getLogger("batch_runner").handlers
    )

    # the control: the same probe sees the handler when asked for one
    during.clear()
    asyncio.run(
        run_batch(
            ["a"],
            out=tmp_path / "b",
            on_record=on_record,
            handle_signals=True,
            **QUICK,
        )
    )
    assert during and all(h != before for h in during)
    assert signal.getsignal(signal.SIGTERM) == before


def test_status_and_records_match_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status()` gives the numbers of `status --json`; `records()` yields each
    job's last record, in ledger order."""
    out = tmp_path / "run"
    jobs = ["good one", "good two", "doomed [fail]"]
    result = run_batch_sync(jobs, out=out, **QUICK)
    assert (result.succeeded, result.failed, result.exit_code) == (2, 1, 1)

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(j) + "\n" for j in [*jobs, "never run"]))
    st = status(out, manifest)
    assert (st.total, st.succeeded, st.failed, st.submitted, st.pending) == (
        4,
        2,
        1,
        0,
        1,
    )
    assert st.images_on_disk == 2
    assert main(["status", str(manifest), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == st.to_dict()
    # jobs given as values count pending the same way
    assert status(out, [*jobs, "never run"]).pending == 1

    current = list(records(out))
    assert len(current) == 3
    assert {r["job_id"]: r for r in current} == ledger_of(out)
    assert {r["status"] for r in current} == {"succeeded", "failed"}
    assert inspect.isgenerator(records(out))
    with pytest.raises(BatchRunnerError, match="no ledger"):
        status(tmp_path / "nowhere")
    with pytest.raises(BatchRunnerError, match="no ledger"):
        records(tmp_path / "nowhere")


def test_two_runs_in_one_process_and_second_have_their_own_run_ids(
    tmp_path: Path,
) -> None:
    """The duplicate-submit audit pairs attempt lines with outcomes by run id:
    two quick runs from one notebook or task must not share one."""
    out = tmp_path / "run"
    run_batch_sync(["a first job"], out=out, **QUICK)
    run_batch_sync(["a first job", "a second job"], out=out, **QUICK)
    lines = (out / "attempts.jsonl").read_text().splitlines()
    runs = [json.loads(line)["run"] for line in lines]
    assert len(runs) == 2 and runs[0] != runs[1]
    ledger = [json.loads(x) for x in (out / "ledger.jsonl").read_text().splitlines()]
    assert [r["run"] for r in ledger if r["status"] == "submitted"] == runs


def test_plan_is_a_dry_run(tmp_path: Path) -> None:
    """`plan()` validates and counts against the ledger, takes no lock, and
    creates nothing."""
    out = tmp_path / "run"
    first = plan(JOBS, out=out, max_jobs=3)
    assert (first.total, first.submit, first.to_submit, first.done) == (4, 4, 3, 0)
    assert first.credits(2.5) == 7.5
    assert not out.exists()
    run_batch_sync(JOBS[:1], out=out, **QUICK)
    with RunDir(out).lock():  # a live run holds the lock: plan does not care
        later = plan(JOBS, out=out)
    assert (later.submit, later.done) == (3, 1)
    assert later.describe().startswith("4 jobs: 3 to submit")


async def test_cancelling_a_run_keeps_the_ledger_and_frees_the_lock(
    tmp_path: Path,
) -> None:
    """Cancelling `run_batch` mid-run leaves whole ledger lines (the paid tasks
    recorded as submitted) and releases the lock."""
    out = tmp_path / "run"
    submitted = asyncio.Event()

    def on_record(record: dict[str, Any]) -> None:
        if record["status"] == "submitted":
            submitted.set()

    task = asyncio.create_task(
        run_batch(
            ["slow a", "slow b"],
            out=out,
            on_record=on_record,
            mock=True,
            mock_generation_time=30,
            poll_interval=0.02,
        )
    )
    await submitted.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    raw = (out / "ledger.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    assert all(r["status"] == "submitted" for r in ledger_of(out).values())
    with RunDir(out).lock():
        pass
    # a second concurrent run on the same directory is refused, not doubled
    with RunDir(out).lock(), pytest.raises(RunLockedError):
        await run_batch(["slow a"], out=out, **QUICK)


def test_ctrl_c_during_a_sync_call_inside_a_loop_cancels_cleanly(
    tmp_path: Path,
) -> None:
    """KeyboardInterrupt while `run_batch_sync` waits for its worker thread
    cancels the run, waits for the ledger and the lock, then is raised."""
    out = tmp_path / "run"
    script = f"""
import asyncio, os, signal, threading
import batch_runner
from batch_runner.store.rundir import RunDir

def on_record(record):
    if record["status"] == "submitted":
        os.kill(os.getpid(), signal.SIGINT)

async def cell():
    return batch_runner.run_batch_sync(
        ["slow a", "slow b"], out={str(out)!r}, on_record=on_record, mock=True,
        mock_generation_time=60, poll_interval=0.02)

try:
    asyncio.new_event_loop().run_until_complete(cell())
except KeyboardInterrupt:
    with RunDir({str(out)!r}).lock():
        pass
    print("interrupted", sorted(t.name for t in threading.enumerate()))
"""
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "interrupted ['MainThread']"
    raw = (out / "ledger.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    assert {r["status"] for r in ledger_of(out).values()} == {"submitted"}


def test_every_run_option_has_a_keyword_of_the_same_name() -> None:
    """Each `batch-runner run` option is a `run_batch`/`run_batch_sync` keyword
    (dashes as underscores), except those that configure the process itself."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in sub.choices["run"]._actions} - {"help"}
    process_only = {
        "verbose",  # logging is the application's to configure
        "log_format",
        "log_file",
        "shards",  # the CLI reads the scheduler's environment, then passes shard
        "dry_run",  # batch_runner.plan()
        "credits_per_image",  # Plan.credits()
    }
    sync = set(inspect.signature(run_batch_sync).parameters)
    async_ = set(inspect.signature(run_batch).parameters)
    assert async_ == sync - {"event_loop"}
    expected = {"jobs" if d == "manifest" else d for d in dests - process_only}
    assert expected <= sync, expected - sync
