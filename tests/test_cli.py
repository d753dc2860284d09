"""The CLI end to end: in process with --mock, and as subprocesses on a standalone
simulator (SIGKILL resume, credits, signals, auth, lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from batch_runner.cli.main import main
from batch_runner.outputs.audit import suspected_duplicate_submits
from batch_runner.outputs.dataset import write_metadata
from batch_runner.store.lock import RunLock

from .procs import (
    CONSOLE_SCRIPT,
    final_states,
    ledger_records,
    run_runner,
    standalone_simulator,
    start_runner,
    wait_for,
    write_manifest,
)

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--no-progress", "--poll-interval", "0.02"]


def test_sample_manifest_runs_and_reruns_as_a_no_op(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's main command works, and running it again redoes nothing."""
    out = tmp_path / "run"
    args = [
        "run",
        str(ROOT / "sample_jobs.yaml"),
        "--mock",
        "--out",
        str(out),
        *FAST,
        "--mock-generation-time",
        "0.05",
    ]
    assert main(args) == 0
    summary = capsys.readouterr().err
    assert "summary: succeeded 12, failed 0, pending 0" in summary
    lines = (out / "ledger.jsonl").read_text().splitlines()
    states = final_states(out / "ledger.jsonl")
    assert len(states) == 12
    assert all(r["status"] == "succeeded" for r in states.values())
    for rec in states.values():
        for f in rec["files"]:
            assert (out / f).read_bytes().startswith(b"\x89PNG")
    assert {"cover-art", "hero-variants-0", "hero-variants-2"} <= set(states)
    assert states["hero-variants-1"]["seed"] == 8
    assert states["cover-art"]["meta"] == {
        "project": "demo",
        "client": "acme",
        "batch": 7,
    }
    assert main(args) == 0
    assert "succeeded 0, failed 0, pending 0" in capsys.readouterr().err
    assert (out / "ledger.jsonl").read_text().splitlines() == lines


def test_bad_manifest_exits_2_naming_file_line_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in a field name stops the run before anything is sent."""
    with standalone_simulator() as sim:
        res = run_runner(
            [
                str(ROOT / "jobs" / "invalid.yaml"),
                "--base-url",
                sim.url,
                "--out",
                str(tmp_path),
            ]
        )
        assert res.returncode == 2
        assert "invalid.yaml:5: field 'promt'" in res.stderr
        assert sim.stats()["requests_total"] == 0
    assert not (tmp_path / "ledger.jsonl").exists()


def test_missing_key_exits_2_before_sending(tmp_path: Path) -> None:
    """Without a key (and without --mock) nothing is sent and the exit code is 2."""
    with standalone_simulator() as sim:
        res = run_runner(
            [
                str(ROOT / "sample_jobs.yaml"),
                "--base-url",
                sim.url,
                "--out",
                str(tmp_path),
            ],
            key=None,
        )
        assert res.returncode == 2 and "TENSORSLAB_API_KEY" in res.stderr
        assert sim.stats()["requests_total"] == 0


def test_rejected_key_exits_2_and_never_leaks(tmp_path: Path) -> None:
    """A wrong key stops the run with 'API key rejected'; the key is printed nowhere."""
    secret = "sk-WRONG-KEY-deadbeefcafe"
    with standalone_simulator() as sim:
        res = run_runner(
            [
                str(ROOT / "sample_jobs.yaml"),
                "--base-url",
                sim.url,
                "--out",
                str(tmp_path),
                *FAST,
            ],
            key=secret,
        )
    assert res.returncode == 2
    assert "API key rejected" in res.stderr
    everything = res.stdout + res.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            everything += path.read_bytes().decode("utf-8", "replace")
    assert secret not in everything


def test_credits_stop_exits_3_then_resume_finishes(tmp_path: Path) -> None:
    """Out of credits: exit 3, nothing failed; with more credits a rerun finishes
    without resubmitting what succeeded."""
    manifest = write_manifest(tmp_path / "m.yaml", 12)
    out = tmp_path / "out"
    with standalone_simulator("--credits", "5", "--generation-time", "0.05") as sim:
        args = [
            str(manifest),
            "--base-url",
            sim.url,
            "--out",
            str(out),
            *FAST,
            "--concurrency",
            "2",
        ]
        first = run_runner(args)
        assert first.returncode == 3, first.stderr
        states = final_states(out / "ledger.jsonl")
        assert Counter(r["status"] for r in states.values()) == {"succeeded": 5}
        assert "insufficient credits" in first.stderr
        sim.add_credits(100)
        second = run_runner(args)
        assert second.returncode == 0, second.stderr
        assert sim.stats()["tasks_created"] == 12
    states = final_states(out / "ledger.jsonl")
    assert len(states) == 12 and all(
        r["status"] == "succeeded" for r in states.values()
    )


def test_sigkill_at_random_moments_then_resume(tmp_path: Path) -> None:
    """Killed with SIGKILL three times, the run still finishes every job exactly once,
    never resubmitting a job whose taskid was recorded."""
    jobs, concurrency, kills = 60, 8, 3
    manifest = write_manifest(tmp_path / "m.yaml", jobs)
    out = tmp_path / "out"
    with standalone_simulator("--generation-time", "0.4", "--seed", "3") as sim:
        args = [
            str(manifest),
            "--base-url",
            sim.url,
            "--out",
            str(out),
            *FAST,
            "--concurrency",
            str(concurrency),
        ]
        ledger = out / "ledger.jsonl"
        for k in range(kills):
            proc = start_runner(args)
            target = 5 + 12 * k
            wait_for(
                lambda t=target: (
                    ledger.exists() and len(ledger.read_bytes().splitlines()) >= t
                )
            )
            time.sleep(0.05 * k)
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
            assert proc.returncode == -signal.SIGKILL
        final = run_runner(args)
        assert final.returncode == 0, final.stderr
        created = sim.stats()["tasks_created"]
        by_prompt = sim.stats()["tasks_by_prompt"]
    states = final_states(ledger)
    # every job the server really created twice is named as a suspected duplicate
    suspects = suspected_duplicate_submits(
        ledger_records(ledger), ledger_records(out / "attempts.jsonl")
    )
    for i in range(jobs):
        extra = by_prompt.get(f"image number {i}", 0) - 1
        if extra > 0:
            assert suspects.get(f"job-{i}", 0) >= extra, (i, suspects)
    assert sum(suspects.values()) <= kills * concurrency
    assert len(states) == jobs
    assert all(r["status"] == "succeeded" for r in states.values())
    # once a taskid is on record, the job is only ever polled under that taskid
    recorded: dict[str, str] = {}
    for rec in ledger_records(ledger):
        if rec.get("taskid"):
            assert recorded.setdefault(rec["job_id"], rec["taskid"]) == rec["taskid"]
    assert jobs <= created <= jobs + kills * concurrency
    images = list((out / "images").iterdir())
    assert sorted(p.name for p in images) == sorted(f"job-{i}.png" for i in range(jobs))
    # metadata.jsonl, compacted from the log the kills cut short, is what a
    # rebuild from the whole ledger writes
    compacted = (out / "metadata.jsonl").read_bytes()
    assert len(compacted.splitlines()) == jobs
    write_metadata(out)
    assert (out / "metadata.jsonl").read_bytes() == compacted


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_cleanly_and_rerun_completes(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """SIGTERM/SIGINT: exit 143/130, a clean ledger, and a rerun that polls the
    recorded taskids instead of resubmitting them."""
    manifest = write_manifest(tmp_path / "m.yaml", 30)
    out = tmp_path / "out"
    with standalone_simulator("--generation-time", "1.0") as sim:
        args = [
            str(manifest),
            "--base-url",
            sim.url,
            "--out",
            str(out),
            *FAST,
            "--concurrency",
            "6",
            "--grace",
            "0.3",
        ]
        proc = start_runner(args)
        ledger = out / "ledger.jsonl"
        wait_for(lambda: ledger.exists() and ledger.read_bytes().count(b"\n") >= 6)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == code, err
        raw = ledger.read_bytes()
        assert raw.endswith(b"\n")
        first = ledger_records(ledger)
        assert len(first) == raw.count(b"\n")
        recorded = {r["job_id"]: r["taskid"] for r in first if r["taskid"]}
        before = sim.stats()["tasks_created"]
        final = run_runner(args)
        assert final.returncode == 0, final.stderr
        pending = 30 - len(recorded)
        assert sim.stats()["tasks_created"] == before + pending
    for rec in ledger_records(ledger):
        if rec["job_id"] in recorded and rec["taskid"]:
            assert rec["taskid"] == recorded[rec["job_id"]]


def test_second_run_on_same_directory_exits_4(tmp_path: Path) -> None:
    """A locked run directory makes a second run exit 4 at once, naming the holder:
    before reading the manifest (a broken one still gives 4) or writing anything."""
    for manifest in ("sample_jobs.yaml", "jobs/invalid.yaml"):
        with RunLock(tmp_path):
            res = run_runner([str(ROOT / manifest), "--mock", "--out", str(tmp_path)])
        assert res.returncode == 4, res.stderr
        assert f"pid {os.getpid()}" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def test_help_lists_commands() -> None:
    """`batch-runner --help` runs and names the subcommands."""
    res = subprocess.run([CONSOLE_SCRIPT, "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    assert "run" in res.stdout and "simulator" in res.stdout
