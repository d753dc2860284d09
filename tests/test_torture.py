"""The torture suite: the real CLI as a subprocess against a standalone simulator,
with faults, signals and broken input injected for real. Seeded and bounded."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from batch_runner.cli.main import main

from .procs import (
    CONSOLE_SCRIPT,
    KEY,
    final_states,
    ledger_records,
    run_runner,
    standalone_simulator,
    start_runner,
    wait_for,
    write_manifest,
)

FAST = ["--no-progress", "--poll-interval", "0.02"]


def test_chaos_every_fault_kind_nothing_lost_nothing_duplicated(tmp_path: Path) -> None:
    """300 jobs, 30% of requests faulted with every kind: each job ends succeeded
    exactly once except those designed to fail; the key appears nowhere."""
    good, doomed = 300, 10
    manifest = write_manifest(tmp_path / "chaos.yaml", good, fail=doomed)
    out = tmp_path / "out"
    with standalone_simulator(
        "--fault-rate",
        "0.3",
        "--seed",
        "11",
        "--retry-after",
        "0.05",
        "--hang-time",
        "0.5",
        "--generation-time",
        "0.05",
    ) as sim:
        res = run_runner(
            [
                str(manifest),
                "--base-url",
                sim.url,
                "--out",
                str(out),
                *FAST,
                "--concurrency",
                "32",
                "--retries",
                "14",
                "--request-timeout",
                "0.3",
                "-v",
            ],
            timeout=300,
        )
        stats = sim.stats()
    assert res.returncode == 1, res.stderr[-2000:]
    assert set(stats["faults_injected"]) == {
        "500",
        "503",
        "429",
        "reset",
        "hang",
        "malformed",
        "9999",
    }
    assert sum(stats["faults_injected"].values()) > 100
    # Faults happen before the simulator acts, so a job gets a second task only
    # when a real answer was lost: on a loaded machine a submit can outlast the
    # 0.3 s request timeout after the task was created. Each such attempt must
    # be on record as uncertain; nothing is duplicated silently.
    uncertain = sum(r.get("uncertain", 0) for r in ledger_records(out / "ledger.jsonl"))
    assert good + doomed <= stats["tasks_created"] <= good + doomed + uncertain
    states = final_states(out / "ledger.jsonl")
    assert len(states) == good + doomed
    assert Counter(r["status"] for r in states.values()) == {
        "succeeded": good,
        "failed": doomed,
    }
    assert all(states[f"job-fail-{i}"]["stage"] == "generate" for i in range(doomed))
    succeeded_lines = Counter(
        r["job_id"]
        for r in ledger_records(out / "ledger.jsonl")
        if r["status"] == "succeeded"
    )
    assert set(succeeded_lines.values()) == {1}
    assert len(list((out / "images").glob("*.png"))) == good
    assert not list((out / "images").glob(".*"))
    assert f"succeeded {good}, failed {doomed}, pending 0" in res.stderr
    everything = res.stdout + res.stderr
    for path in out.rglob("*"):
        if path.is_file():
            everything += path.read_bytes().decode("utf-8", "replace")
    assert KEY not in everything
    assert "retry" in res.stderr  # -v logs the retries


BROKEN: dict[str, tuple[bytes, int | None, str | None]] = {
    # name: (content, expected line or None, expected field or None)
    "malformed.yaml": (b"jobs:\n  - prompt: ok\n  - [unclosed\n", 3, None),
    "tabs.yaml": (b"jobs:\n\t- prompt: x\n", 2, None),
    "unterminated.csv": (b'prompt,seed\n"a cat,1\n', 2, None),
    "fields.csv": (b"prompt,seed\na cat,1\na dog,2,extra\n", 3, None),
    "badjson.jsonl": (b'{"prompt": "ok"}\n{"prompt": "x",}\n', 2, None),
    "utf16.yaml": ("- a cat\n".encode("utf-16"), 1, None),
    "empty.yaml": (b"", None, None),
    "empty_jobs.yaml": (b"jobs: []\n", None, None),
    "header_only.csv": (b"prompt,seed\n", None, None),
    "binary.csv": (bytes(range(256)) * 4, 2, None),  # 0x0a ends line 1
    "seed_text.yaml": (b"- prompt: a\n  seed: abc\n", 2, "seed"),
    "seed_bool.jsonl": (b'{"prompt": "a", "seed": true}\n', 1, "seed"),
    "seed_csv.csv": (b"prompt,seed\na cat,1.5\n", 2, "seed"),
    "resolution_int.yaml": (b"- prompt: a\n  resolution: 1024\n", 2, "resolution"),
    "resolution_2k.yaml": (b"- prompt: a\n  resolution: 2K\n", 2, "resolution"),
    "bad_id.yaml": (b"- prompt: a\n  id: ../etc/passwd\n", 2, "id"),
    "reserved_id.csv": (b"id,prompt\nNUL,a cat\n", 2, "id"),
    "dup_id.yaml": (b"- {id: x, prompt: a}\n- {id: x, prompt: b}\n", 2, "id"),
    "huge_prompt.jsonl": (
        json.dumps({"prompt": "x" * 9000}).encode() + b"\n",
        1,
        "prompt",
    ),
    "unknown_key.yaml": (b"- prompt: a\n  seeds: 3\n", 2, "seeds"),
    "unknown_col.csv": (b"promt,seed\na cat,1\n", 1, "promt"),
    "missing_prompt.yaml": (b"- seed: 3\n", 1, "prompt"),
    "blank_prompt.csv": (b"prompt,seed\n   ,1\n", 2, "prompt"),
    "repeat_zero.yaml": (b"- prompt: a\n  repeat: 0\n", 2, "repeat"),
    "extend_maybe.yaml": (b"- prompt: a\n  prompt_extend: maybe\n", 2, "prompt_extend"),
    "meta_list.jsonl": (b'{"prompt": "a", "meta": [1, 2]}\n', 1, "meta"),
    "defaults_prompt.yaml": (b"defaults: {prompt: x}\njobs: [a]\n", 1, "prompt"),
    "wrong_ext.txt": (b"a cat\n", None, None),
}


def test_bad_input_corpus_exits_2_and_sends_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each broken manifest exits 2 naming file, line and field in one line; the
    simulator receives zero requests and no ledger is written."""
    # in process, one after the other: seventeen interpreters started at once
    # outlast any timeout on a loaded machine (test_cli covers the subprocess)
    assert len(BROKEN) >= 15
    monkeypatch.setenv("TENSORSLAB_API_KEY", KEY)
    with standalone_simulator() as sim:
        for name, (content, line, field) in BROKEN.items():
            path = tmp_path / name
            path.write_bytes(content)
            out = tmp_path / f"out-{name}"
            args = ["run", str(path), "--base-url", sim.url, "--out", str(out)]
            code = main(args)
            err = capsys.readouterr().err
            where = f"{path}:{line}:" if line else f"{path}"
            assert code == 2, (name, err)
            assert where in err, (name, err)
            if field:
                assert f"field '{field}'" in err, (name, err)
            assert len(err.splitlines()) == 1, (name, err)
            assert not (out / "ledger.jsonl").exists()
        stats = sim.stats()
    assert stats["requests_total"] == 0 and stats["downloads_total"] == 0


def test_second_signal_stops_at_once(tmp_path: Path) -> None:
    """A second SIGTERM cuts the grace period short; the ledger stays readable.
    Tasks take an hour and the grace is an hour, so only the second signal can
    end the run."""
    manifest = write_manifest(tmp_path / "m.yaml", 20)
    out = tmp_path / "out"
    with standalone_simulator("--generation-time", "3600") as sim:
        proc = start_runner(
            [
                str(manifest),
                "--base-url",
                sim.url,
                "--out",
                str(out),
                *FAST,
                "--grace",
                "3600",
                "--concurrency",
                "4",
            ]
        )
        ledger = out / "ledger.jsonl"
        wait_for(lambda: ledger.exists() and ledger.read_bytes().count(b"\n") >= 4)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert proc.poll() is None  # still in its grace period
        proc.send_signal(signal.SIGTERM)
        # not a speed bound: without the second signal this would take an hour
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    raw = ledger.read_bytes()
    assert raw.endswith(b"\n")
    assert len(ledger_records(ledger)) == raw.count(b"\n") >= 4


def test_expired_task_fails_and_retry_failed_resubmits(tmp_path: Path) -> None:
    """A recorded taskid the server forgot is recorded failed (not-found); a plain
    rerun skips it, --retry-failed resubmits it."""
    manifest = write_manifest(tmp_path / "m.yaml", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "ledger.jsonl").write_text(
        json.dumps(
            {
                "job_id": "job-0",
                "status": "submitted",
                "taskid": "zimg_expired00000000",
                "url": None,
                "code": 1000,
                "msg": "",
                "ts": "2026-01-01T00:00:00+00:00",
                "prompt": "image number 0",
                "resolution": "1024*1024",
                "seed": 0,
                "prompt_extend": False,
                "meta": {},
            }
        )
        + "\n"
    )
    with standalone_simulator() as sim:
        args = [
            str(manifest),
            "--base-url",
            sim.url,
            "--out",
            str(out),
            *FAST,
            "--retries",
            "2",
        ]
        first = run_runner(args)
        assert first.returncode == 1
        state = final_states(out / "ledger.jsonl")["job-0"]
        assert state["status"] == "failed" and state["stage"] == "not-found"
        assert run_runner(args).returncode == 1
        assert sim.stats()["submits_total"] == 0
        third = run_runner([*args, "--retry-failed"])
        assert third.returncode == 0, third.stderr
        assert sim.stats()["tasks_created"] == 1
    assert final_states(out / "ledger.jsonl")["job-0"]["status"] == "succeeded"


def test_crash_during_download_redownloads_without_resubmitting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash between submit and a finished download leaves the job 'submitted'
    and a .part file; the rerun fetches the image again from the same taskid."""
    manifest = write_manifest(tmp_path / "m.yaml", 1)
    out = tmp_path / "out"
    with standalone_simulator() as sim:
        args = [str(manifest), "--base-url", sim.url, "--out", str(out), *FAST]
        assert run_runner(args).returncode == 0
        ledger = out / "ledger.jsonl"
        lines = ledger.read_text().splitlines()
        assert [json.loads(x)["status"] for x in lines] == ["submitted", "succeeded"]
        # rewind to the moment of the crash: taskid recorded, download half done
        ledger.write_text(lines[0] + "\n")
        image = out / "images" / "job-0.png"
        image.unlink()
        (out / "images" / ".job-0.1234abcd.part").write_bytes(b"\x89PNG half")
        assert run_runner(args).returncode == 0
        assert sim.stats()["tasks_created"] == 1
    assert image.read_bytes().startswith(b"\x89PNG")
    assert not list((out / "images").glob(".*.part"))


def test_different_run_directories_run_side_by_side(tmp_path: Path) -> None:
    """Two runs on two directories both finish; the lock is per directory."""
    manifest = write_manifest(tmp_path / "m.yaml", 10)
    with standalone_simulator("--generation-time", "0.2") as sim:
        procs = [
            start_runner(
                [
                    str(manifest),
                    "--base-url",
                    sim.url,
                    "--out",
                    str(tmp_path / f"out{i}"),
                    *FAST,
                ]
            )
            for i in (1, 2)
        ]
        codes = [p.wait(60) for p in procs]
        for p in procs:
            p.communicate()
    assert codes == [0, 0]


def test_concurrent_runs_on_one_directory_second_exits_4(tmp_path: Path) -> None:
    """While one run works, a second on the same directory exits 4 without waiting
    for it: the first is still running (its tasks take an hour) when the second
    has exited, and the second sent nothing."""
    manifest = write_manifest(tmp_path / "m.yaml", 10)
    out = tmp_path / "out"
    with standalone_simulator("--generation-time", "3600") as sim:
        first = start_runner(
            [
                str(manifest),
                "--base-url",
                sim.url,
                "--out",
                str(out),
                *FAST,
                "--grace",
                "0",
            ]
        )
        wait_for(lambda: (out / "ledger.jsonl").exists())
        wait_for(lambda: sim.stats()["tasks_created"] == 8)
        second = run_runner([str(manifest), "--base-url", sim.url, "--out", str(out)])
        assert first.poll() is None
        assert sim.stats()["tasks_created"] == 8
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)
    assert second.returncode == 4
    assert f"pid {first.pid}" in second.stderr and "started" in second.stderr


def test_fsync_flag_syncs_every_ledger_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--fsync makes the writer fsync the ledger; without it, it never does."""
    manifest = write_manifest(tmp_path / "m.yaml", 5)
    import os

    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    base = ["run", str(manifest), "--mock", *FAST, "--mock-generation-time", "0.01"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert not [p for p in synced if p.endswith("ledger.jsonl")]
    assert main([*base, "--out", str(tmp_path / "b"), "--fsync"]) == 0
    ledger_syncs = [p for p in synced if p == str(tmp_path / "b" / "ledger.jsonl")]
    assert len(ledger_syncs) >= 2  # at least one group for submitted, one succeeded


def test_cli_subprocess_help_mentions_every_run_flag() -> None:
    """Every documented run flag is accepted by the parser."""
    res = subprocess.run(
        [CONSOLE_SCRIPT, "run", "--help"], capture_output=True, text=True, check=True
    )
    for flag in (
        "--out",
        "--ledger",
        "--base-url",
        "--mock",
        "--concurrency",
        "--rate",
        "--retries",
        "--poll-interval",
        "--job-timeout",
        "--request-timeout",
        "--retry-failed",
        "--no-download",
        "--progress",
        "--grace",
        "--fsync",
        "--max-image-bytes",
    ):
        assert flag in res.stdout
