"""The resume snapshot: snapshot + ledger tail folds to exactly what the whole
ledger folds to, and any snapshot that does not match its ledger is ignored."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_runner.outputs.report import RunStatus, _scan, run_status
from batch_runner.store.ledger import ResumeState, read_ledger
from batch_runner.store.snapshot import (
    FORMAT,
    load_snapshot,
    read_resume_state,
    snapshot_path,
    write_snapshot,
)
from tests.procs import run_runner, start_runner, wait_for

_IDS = st.sampled_from(
    [
        "0123456789abcdef",
        "fedcba9876543210",
        "00000000000000aa",
        "0123456789abcdef-1",
        "0123456789abcdef-2",
        "job-1",
        "job-2",
        "Job-1",
        "ünï",
    ]
)
_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from(["", "x", "a cat", "16:9"]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@st.composite
def _record(draw: st.DrawFn) -> dict[str, Any]:
    record: dict[str, Any] = {
        "job_id": draw(st.one_of(_IDS, st.sampled_from(["", None, 3]))),
        "status": draw(
            st.sampled_from(
                ["succeeded", "submitted", "failed", "generated", "weird", None]
            )
        ),
    }
    optional = {
        "taskid": st.one_of(st.none(), st.sampled_from(["", "t1", "t2"])),
        "files": st.one_of(
            st.none(),
            st.just([]),
            st.lists(
                st.sampled_from(["images/a.png", "images/a-1.png", 3]), max_size=3
            ),
        ),
        "url": st.one_of(
            st.none(), st.just("u"), st.lists(st.sampled_from(["u", "", 1]), max_size=2)
        ),
        "stage": st.one_of(st.none(), st.sampled_from(["submit", "download", "poll"])),
        "msg": st.one_of(st.none(), st.sampled_from(["boom 12", "boom 13", ""])),
        "ts": st.sampled_from(["2026-01-01", "2026-01-02", "2025-12-31", 5]),
        "prompt": _ANY,
        "resolution": _ANY,
        "seed": _ANY,
        "prompt_extend": _ANY,
        "meta": st.just({"k": "v"}),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            record[name] = draw(strategy)
    return record


_LINE = st.one_of(
    _record().map(lambda r: json.dumps(r).encode() + b"\n"),
    _record().map(lambda r: json.dumps(r).encode() + b"\n"),
    st.sampled_from([b"\n", b"garbage\n", b'{"job_id": "job-1",\n', b"[1, 2]\n"]),
)


def _resume(state: ResumeState) -> dict[str, Any]:
    return {
        "jobs": sorted(state.jobs.items()),
        "submitted": dict(state.submitted.items()),
        "failed": dict(state.failed.items()),
        "generated": dict(state.generated.items()),
        "legacy_stems": state.legacy_stems,
        "params": state.params._keys,
        "records": state.records,
        "warnings": state.warnings,
    }


def _status(ledger: Path) -> dict[str, Any]:
    status = RunStatus()
    scan = _scan(ledger, status, audit=False, params=True)
    assert scan.params is not None
    return {
        "jobs": sorted(scan.states.items()),
        "failures": scan.failures,
        "files_of": scan.files_of,
        "params": scan.params._keys,
        "status": status.to_dict(),
    }


def _full(ledger: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    snap = snapshot_path(ledger)
    saved = snap.read_bytes() if snap.exists() else None
    snap.unlink(missing_ok=True)
    full = _resume(read_ledger(ledger)), _status(ledger)
    if saved is not None:
        snap.write_bytes(saved)
    return full


def _via_snapshot(ledger: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return _resume(read_resume_state(ledger)), _status(ledger)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    lines=st.lists(_LINE, max_size=25),
    torn=st.binary(max_size=12),
    cuts=st.lists(st.floats(0, 1), min_size=1, max_size=3),
)
def test_snapshot_and_tail_fold_to_the_full_fold(
    tmp_path: Path, lines: list[bytes], torn: bytes, cuts: list[float]
) -> None:
    """A ledger (reruns, every status, unreadable and torn lines) snapshotted
    after any byte, even mid-line, and any number of times, then read from
    snapshot + tail, equals the whole ledger's fold, for replay and `status`."""
    data = b"".join(lines) + torn
    ledger = tmp_path / "ledger.jsonl"
    snapshot_path(ledger).unlink(missing_ok=True)
    ledger.write_bytes(b"")
    written = 0
    for cut in sorted(cuts):
        upto = int(cut * len(data))
        with ledger.open("ab") as fh:
            fh.write(data[written:upto])
        written = max(written, upto)
        write_snapshot(ledger)
        assert _via_snapshot(ledger) == _full(ledger)
    with ledger.open("ab") as fh:
        fh.write(data[written:])
    assert _via_snapshot(ledger) == _full(ledger)


def _ledger(tmp_path: Path, n: int = 6) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    ledger = run / "ledger.jsonl"
    lines = []
    for i in range(n):
        job = f"{i:016x}" if i % 2 else f"job-{i}"
        lines.append({"job_id": job, "status": "submitted", "taskid": f"t{i}"})
        lines.append(
            {"job_id": job, "status": "succeeded", "files": [f"images/{job}.png"]}
        )
    lines.append({"job_id": "job-x", "status": "failed", "stage": "poll", "msg": "no"})
    ledger.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in lines))
    return ledger


def _counts(ledger: Path) -> tuple[int, int, int]:
    state = read_resume_state(ledger)
    return len(state.jobs), len(state.succeeded), len(state.failed)


def test_a_run_dir_with_a_snapshot_reads_the_tail_only(tmp_path: Path) -> None:
    """After a snapshot, only the bytes past it are read from the ledger: a
    snapshot that claims the jobs are done is believed while it matches."""
    ledger = _ledger(tmp_path)
    assert write_snapshot(ledger)
    snap = load_snapshot(ledger)
    assert snap is not None
    assert snap.header.format == FORMAT
    assert snap.header.ledger_end == ledger.stat().st_size
    assert len(snap.packed) == 3  # the derived ids' plain successes
    assert not write_snapshot(ledger)  # up to date: nothing to do
    with ledger.open("ab") as fh:
        fh.write(b'{"job_id":"job-y","status":"submitted","taskid":"t"}\n')
    assert _counts(ledger) == (8, 6, 1)
    assert write_snapshot(ledger)
    assert load_snapshot(ledger).header.ledger_end == ledger.stat().st_size  # type: ignore[union-attr]


def test_deleted_or_truncated_snapshot_falls_back_to_the_whole_ledger(
    tmp_path: Path,
) -> None:
    """Deleting or truncating the snapshot, or writing garbage or another
    version in its place, gives the full fold."""
    ledger = _ledger(tmp_path)
    want = _full(ledger)
    snap = snapshot_path(ledger)
    write_snapshot(ledger)
    good = snap.read_bytes()
    for broken in (
        good[: len(good) // 2],
        good[:10],
        b"",
        b"garbage\n",
        good.replace(b'"version":1', b'"version":99'),
        good + b"x",
    ):
        snap.write_bytes(broken)
        assert load_snapshot(ledger) is None
        assert _via_snapshot(ledger) == want
    snap.unlink()
    assert _via_snapshot(ledger) == want


def test_a_replaced_or_edited_ledger_ignores_the_snapshot(tmp_path: Path) -> None:
    """A ledger replaced by another file, truncated, or edited where the
    snapshot ends (or at its start) is read whole."""
    ledger = _ledger(tmp_path)
    write_snapshot(ledger)
    original = ledger.read_bytes()
    # replaced (a new file, as an editor or a restore writes it)
    edited = original.replace(b'"status": "failed"', b'"status": "succeeded"')
    tmp = ledger.with_suffix(".new")
    tmp.write_bytes(edited)
    tmp.replace(ledger)
    assert load_snapshot(ledger) is None
    assert _via_snapshot(ledger) == _full(ledger)
    # same file, edited in place at its end
    write_snapshot(ledger)
    with ledger.open("r+b") as fh:
        fh.seek(len(edited) - 20)
        fh.write(b"X")
    assert load_snapshot(ledger) is None
    assert _via_snapshot(ledger) == _full(ledger)
    # same file, edited in place at its start
    write_snapshot(ledger)
    with ledger.open("r+b") as fh:
        fh.write(b"[")
    assert load_snapshot(ledger) is None
    assert _via_snapshot(ledger) == _full(ledger)
    # truncated below the snapshot's end
    write_snapshot(ledger)
    with ledger.open("r+b") as fh:
        fh.truncate(len(edited) // 2)
    assert load_snapshot(ledger) is None
    assert _via_snapshot(ledger) == _full(ledger)


def test_a_run_dir_of_an_old_version_and_a_ledger_elsewhere(tmp_path: Path) -> None:
    """A run dir without a snapshot is read whole; a --ledger of another name
    gets a snapshot of its own beside it, never the run dir's."""
    ledger = _ledger(tmp_path)
    assert not snapshot_path(ledger).exists()
    assert _via_snapshot(ledger) == _full(ledger)
    other = tmp_path / "elsewhere" / "mine.jsonl"
    other.parent.mkdir()
    other.write_bytes(ledger.read_bytes()[:40] + b"\n")
    write_snapshot(ledger)
    assert snapshot_path(other) == other.with_name(".mine.jsonl.resume-state")
    assert load_snapshot(other) is None
    assert write_snapshot(other)
    assert _via_snapshot(other) == _full(other)
    # another ledger moved into place beside a snapshot that is not its own
    os.replace(other, ledger)
    assert load_snapshot(ledger) is None
    assert _via_snapshot(ledger) == _full(ledger)


def test_warnings_of_unreadable_lines_before_the_snapshot_are_kept(
    tmp_path: Path,
) -> None:
    """The warnings the full fold gives for unreadable lines are given the same
    when those lines are inside the snapshot; `status` counts them too."""
    ledger = _ledger(tmp_path)
    with ledger.open("ab") as fh:
        fh.write(b"not json\n")
    write_snapshot(ledger)
    with ledger.open("ab") as fh:
        fh.write(b'{"job_id":"job-z","status":"submitted","taskid":"t"}\n{"torn')
    state = read_resume_state(ledger)
    assert len(state.warnings) == 2
    assert "not json" not in state.warnings[0]
    assert state.warnings == read_ledger(ledger).warnings
    status = run_status(ledger, ledger.parent)
    assert status.unreadable_lines == 2


def test_lines_only_status_reads_keep_the_state_replay_had(tmp_path: Path) -> None:
    """A "generated" without URLs or taskid, or a "submitted" without a taskid,
    after a job's good record: `status` takes them, replay skips them; the
    snapshot keeps both views, whether the good record packs or not."""
    ledger = tmp_path / "ledger.jsonl"
    for job in ("0123456789abcdef", "job-1"):
        good = {"job_id": job, "status": "succeeded", "files": ["images/a.png"]}
        lines = [
            good,
            {"job_id": job, "status": "generated"},
            {"job_id": job, "status": "submitted", "taskid": ""},
        ]
        for cut in range(4):
            data = [json.dumps(r).encode() + b"\n" for r in lines]
            ledger.write_bytes(b"".join(data[:cut]))
            snapshot_path(ledger).unlink(missing_ok=True)
            write_snapshot(ledger)
            with ledger.open("ab") as fh:
                fh.write(b"".join(data[cut:]))
            assert _via_snapshot(ledger) == _full(ledger), (job, cut)


@pytest.mark.integration
def test_sigkill_mid_run_then_plan_equals_the_full_fold(tmp_path: Path) -> None:
    """A run leaves a snapshot; a second run, SIGKILLed mid-way, appends past it
    and leaves it stale; the plan and `status` then read snapshot + tail and
    say exactly what the whole ledger says."""
    import batch_runner

    manifest = tmp_path / "m.csv"
    rows = [f"picture {i},{i}" for i in range(40)]
    manifest.write_text("prompt,seed\n" + "\n".join(rows[:12]) + "\n")
    out = tmp_path / "run"
    fast = ["--mock", "--poll-interval", "0.05", "--no-progress"]
    first = run_runner([str(manifest), "--out", str(out), *fast], key=None)
    assert first.returncode == 0, first.stderr
    ledger = out / "ledger.jsonl"
    snap = load_snapshot(ledger)
    assert snap is not None and snap.header.ledger_end == ledger.stat().st_size
    manifest.write_text("prompt,seed\n" + "\n".join(rows) + "\n")
    proc = start_runner(
        [
            str(manifest),
            "--out",
            str(out),
            "--concurrency",
            "3",
            "--mock-generation-time",
            "0.3",
            *fast,
        ],
        key=None,
    )
    covered = snap.header.ledger_end
    wait_for(lambda: ledger.stat().st_size > covered + 2000, timeout=60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    assert load_snapshot(ledger) is not None  # stale, and still used
    with_snapshot = (
        batch_runner.plan(str(manifest), out=out).to_dict(),
        batch_runner.status(out, str(manifest)).to_dict(),
        _resume(read_resume_state(ledger)),
    )
    snapshot_path(ledger).unlink()
    full = (
        batch_runner.plan(str(manifest), out=out).to_dict(),
        batch_runner.status(out, str(manifest)).to_dict(),
        _resume(read_ledger(ledger)),
    )
    assert with_snapshot == full
    assert 12 <= full[0]["done"] < 40


def test_a_snapshot_that_cannot_be_written_leaves_the_whole_ledger_read(
    tmp_path: Path,
) -> None:
    """A timestamp with a lone surrogate (legal in the ledger's JSON, not in
    UTF-8) cannot go in the header: no snapshot, and the full fold."""
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text(
        '{"job_id":"j","status":"succeeded","files":["images/j.png"],'
        '"ts":"2026\\ud800"}\n'
    )
    assert not write_snapshot(ledger)
    assert not snapshot_path(ledger).exists()
    assert _via_snapshot(ledger) == _full(ledger)


def test_a_long_tail_is_left_to_the_snapshot_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With `max_tail` (what a run passes at its end) a tail longer than that is
    not folded, so the run's memory does not grow with its jobs; `batch-runner
    snapshot DIR` writes it, and a short tail after it is folded again."""
    from batch_runner.cli.main import main
    from batch_runner.store.lock import RunLock

    ledger = _ledger(tmp_path)
    size = ledger.stat().st_size
    assert not write_snapshot(ledger, max_tail=size - 1)
    assert not snapshot_path(ledger).exists()
    with RunLock(ledger.parent):
        assert main(["snapshot", str(ledger.parent)]) == 4
    err = capsys.readouterr().err
    assert "try again when it has finished" in err and "--out" not in err
    assert not snapshot_path(ledger).exists()
    assert main(["snapshot", str(ledger.parent)]) == 0
    assert capsys.readouterr().out.strip() == str(snapshot_path(ledger))
    assert load_snapshot(ledger) is not None
    with ledger.open("ab") as fh:
        fh.write(b'{"job_id":"job-y","status":"submitted","taskid":"t"}\n')
    assert write_snapshot(ledger, max_tail=size - 1)
    assert load_snapshot(ledger).header.ledger_end == ledger.stat().st_size  # type: ignore[union-attr]
    assert _counts(ledger) == (8, 6, 1)
