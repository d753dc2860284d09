"""The duplicate-submit audit checkpointed in the resume snapshot: `status`
from the snapshot's mark and the two tails names the same suspects as the
audit of both whole files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_runner.models import JobSpec, JobStatus
from batch_runner.outputs.report import RunStatus, _scan, run_status
from batch_runner.store.ledger import encode_record, make_record
from batch_runner.store.snapshot import (
    load_snapshot,
    snapshot_path,
    snapshot_run,
    write_snapshot,
)

#: one job of a run: its submit attempts (each: None = cut off, "answered",
#: "not-sent"), then whether the run recorded its outcome, and how many of
#: those attempts lost their answer
_job = st.tuples(
    st.lists(st.sampled_from([None, "answered", "not-sent"]), min_size=1, max_size=3),
    st.booleans(),
    st.integers(0, 2),
)
_run = st.lists(st.tuples(st.sampled_from("abcdef"), _job), min_size=1, max_size=5)


def _write_run(run_dir: Path, k: int, jobs: list[tuple[str, Any]]) -> None:
    """The lines one run leaves: attempt lines (with outcome lines where an
    answer was not a taskid), then the submit outcome in the ledger."""
    run = f"run-{k}"
    with (
        (run_dir / "attempts.jsonl").open("a") as attempts,
        (run_dir / "ledger.jsonl").open("ab") as ledger,
    ):
        for job_id, (tries, recorded, uncertain) in jobs:
            for n, outcome in enumerate(tries, start=1):
                line = {"job_id": job_id, "run": run, "n": n, "ts": "t"}
                attempts.write(json.dumps(line) + "\n")
                if outcome is not None:
                    attempts.write(json.dumps({**line, "outcome": outcome}) + "\n")
            if recorded:
                spec = JobSpec(job_id=job_id, prompt=f"p {job_id}")
                record = make_record(
                    spec,
                    JobStatus.SUBMITTED,
                    taskid=f"t-{job_id}-{k}",
                    attempts=len(tries),
                    uncertain=min(uncertain, len(tries)),
                    run=run,
                )
                ledger.write(encode_record(record))


def _scan_mark(run_dir: Path) -> object:
    """The audit mark `status` starts from, None if it reads the whole ledger."""
    scan = _scan(
        run_dir / "ledger.jsonl",
        RunStatus(),
        audit=run_dir / "attempts.jsonl",
        params=False,
    )
    return scan.mark


def _suspects(run_dir: Path) -> dict[str, int]:
    return dict(run_status(run_dir / "ledger.jsonl", run_dir).suspected_duplicates)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    runs=st.lists(_run, min_size=1, max_size=5),
    snapshots=st.lists(st.sampled_from([None, "run-end", "command"]), max_size=5),
)
def test_status_from_the_mark_names_the_whole_audits_suspects(
    runs: list[list[tuple[str, Any]]],
    snapshots: list[str | None],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Runs one after another, a snapshot after some of them (as a run's end
    writes it, with a small tail limit, or as `batch-runner snapshot`): the
    suspects `status` finds from the snapshot are those of the whole files."""
    run_dir = tmp_path_factory.mktemp("audit")
    for k, jobs in enumerate(runs):
        _write_run(run_dir, k, jobs)
        how = snapshots[k] if k < len(snapshots) else None
        if how == "run-end":
            write_snapshot(
                run_dir / "ledger.jsonl",
                max_tail=400,
                attempts=run_dir / "attempts.jsonl",
            )
        elif how == "command" and (run_dir / "ledger.jsonl").exists():
            snapshot_run(run_dir)
    with_snapshot = _suspects(run_dir)
    snap = load_snapshot(run_dir / "ledger.jsonl")
    if snap is not None and snap.header.audit is not None:
        # the attempt log only grew since: the mark is what status starts from
        assert _scan_mark(run_dir) == snap.header.audit
    snapshot_path(run_dir / "ledger.jsonl").unlink(missing_ok=True)
    assert with_snapshot == _suspects(run_dir)


def _two_runs(tmp_path: Path) -> Path:
    _write_run(tmp_path, 0, [("a", ([None, None], True, 1)), ("b", ([None], False, 0))])
    snapshot_run(tmp_path)
    _write_run(
        tmp_path, 1, [("c", ([None, "answered"], True, 0)), ("d", ([None], False, 0))]
    )
    return tmp_path


def test_status_reads_only_the_tails_after_the_mark(tmp_path: Path) -> None:
    """With a matching mark the scan starts at the snapshot; the suspects are
    a (1 uncertain), b (cut off, never recorded) and d."""
    run_dir = _two_runs(tmp_path)
    snap = load_snapshot(run_dir / "ledger.jsonl")
    assert snap is not None and snap.header.audit is not None
    assert snap.header.audit.suspects == {"a": 1, "b": 1}
    assert _scan_mark(run_dir) == snap.header.audit
    assert _suspects(run_dir) == {"a": 1, "b": 1, "d": 1}


@pytest.mark.parametrize("change", ["replace", "truncate", "edit"])
def test_an_attempt_log_that_no_longer_matches_is_audited_whole(
    tmp_path: Path, change: str
) -> None:
    run_dir = _two_runs(tmp_path)
    attempts = run_dir / "attempts.jsonl"
    data = attempts.read_bytes()
    if change == "replace":
        tmp = run_dir / "new.jsonl"
        tmp.write_bytes(data)
        os.replace(tmp, attempts)
    elif change == "truncate":
        attempts.write_bytes(data[: len(data) // 3])
    else:
        edited = data.replace(b'"job_id": "a"', b'"job_id": "x"', 1)
        assert edited != data
        attempts.write_bytes(edited)
    assert _scan_mark(run_dir) is None
    expected = _suspects(run_dir)
    snapshot_path(run_dir / "ledger.jsonl").unlink()
    assert _suspects(run_dir) == expected


@pytest.mark.integration
def test_a_run_leaves_a_mark_and_status_starts_from_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batch_runner.cli.main import main

    manifest = tmp_path / "m.csv"
    manifest.write_text("prompt\n" + "".join(f"p{i}\n" for i in range(5)))
    out = tmp_path / "run"
    assert main(["run", str(manifest), "--out", str(out), "--mock"]) == 0
    snap = load_snapshot(out / "ledger.jsonl")
    assert snap is not None and snap.header.audit is not None
    assert snap.header.audit.attempts_end == (out / "attempts.jsonl").stat().st_size
    capsys.readouterr()
    assert main(["status", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["succeeded"] == 5 and not report.get("suspected_duplicates")
