"""Merging shard run directories: the union, conflicts refused before any write,
idempotence, and which record wins when inputs disagree."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from batch_runner.errors import BatchRunnerError
from batch_runner.models import JobSpec, JobStatus
from batch_runner.outputs.dataset import write_metadata
from batch_runner.outputs.merge import MergeConflictError, MergeError, merge_runs
from batch_runner.store.ledger import iter_records, latest_records, make_record

from .test_dataset import FakeRun, run_cli

SHARD_A: list[dict[str, Any]] = [
    {"id": "a1", "prompt": "A lighthouse", "seed": 1, "meta": {"shard": "a"}},
    {"prompt": "A harbour at night", "repeat": 2, "meta": {"shard": "a"}},
    {"id": "a-bad", "prompt": "[fail] a storm"},
]
SHARD_B: list[dict[str, Any]] = [
    {"id": "b1", "prompt": "A desert road", "meta": {"shard": "b", "n": 1}},
    {"id": "b2", "prompt": "A red canyon", "seed": 9},
]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a directory by relative path, except the lock."""
    return {
        p.relative_to(run_dir).as_posix(): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def metadata(run_dir: Path) -> list[dict[str, Any]]:
    text = (run_dir / "metadata.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.integration
def test_merge_two_cli_shards_is_their_union_and_idempotent(tmp_path: Path) -> None:
    """Two real shards merge into their union; merging again changes nothing."""
    a = run_cli(tmp_path, "a", SHARD_A)
    b = run_cli(tmp_path, "b", SHARD_B)
    out = tmp_path / "merged"

    report = merge_runs(out, [a, b])

    finals = {
        **latest_records(a / "ledger.jsonl"),
        **latest_records(b / "ledger.jsonl"),
    }
    assert (report.jobs, report.succeeded, report.failed, report.submitted) == (
        6,
        5,
        1,
        0,
    )
    assert (report.images_copied, report.images_missing) == (5, 0)
    assert report.inputs == (a, b)
    merged = list(iter_records(out / "ledger.jsonl"))
    # the inputs' submit outcomes (the audit trail), then one record per job
    history, deciding = merged[: -len(finals)], merged[-len(finals) :]
    assert {r["job_id"]: r for r in deciding} == finals
    assert len(deciding) == len(finals)
    assert history and all(r["status"] == "submitted" for r in history)
    assert all("attempts" in r for r in history)
    attempts = (out / "attempts.jsonl").read_bytes()
    assert (
        attempts
        == (a / "attempts.jsonl").read_bytes() + (b / "attempts.jsonl").read_bytes()
    )
    for record in deciding:
        source = b if record["job_id"] in ("b1", "b2") else a
        for file in record.get("files", []):
            assert os.path.samefile(out / file, source / file)
    rows = metadata(out)
    assert sorted(r["job_id"] for r in rows) == sorted(
        j for j, r in finals.items() if r["status"] == "succeeded"
    )
    assert {r["meta_shard"] for r in rows} == {"a", "b", None}

    before = snapshot(out)
    again = merge_runs(out, [a, b])
    assert snapshot(out) == before
    assert again.images_copied == 0
    assert (again.jobs, again.succeeded, again.failed) == (6, 5, 1)


def test_merging_one_shard_at_a_time_equals_merging_both(tmp_path: Path) -> None:
    """OUT_DIR's own ledger takes part, so merges add up incrementally."""
    a, b = FakeRun(tmp_path / "a"), FakeRun(tmp_path / "b")
    a.succeed("x", meta={"s": 1})
    a.fail("y")
    b.succeed("z", count=2)
    merge_runs(tmp_path / "both", [a.dir, b.dir])
    merge_runs(tmp_path / "steps", [a.dir])
    report = merge_runs(tmp_path / "steps", [b.dir])
    assert (report.jobs, report.succeeded, report.images_copied) == (3, 2, 2)
    assert snapshot(tmp_path / "steps") == snapshot(tmp_path / "both")


@pytest.mark.integration
def test_same_id_with_different_prompt_is_a_conflict_naming_both_dirs(
    tmp_path: Path,
) -> None:
    """One id with two prompts is refused, naming job and dirs, writing nothing."""
    a = run_cli(tmp_path, "a", [{"id": "hero", "prompt": "A knight"}])
    b = run_cli(tmp_path, "b", [{"id": "hero", "prompt": "A dragon"}])
    out = tmp_path / "merged"
    with pytest.raises(MergeConflictError) as caught:
        merge_runs(out, [a, b])
    err = caught.value
    assert isinstance(err, BatchRunnerError)
    assert (err.job_id, err.first, err.second) == ("hero", a, b)
    assert "'hero'" in str(err) and str(a) in str(err) and str(b) in str(err)
    assert snapshot(out) == {}


def test_same_job_with_different_images_is_a_conflict(tmp_path: Path) -> None:
    """Same request, both succeeded, different image bytes: refused."""
    a, b = FakeRun(tmp_path / "a"), FakeRun(tmp_path / "b")
    a.succeed("j", variant=1)
    b.succeed("j", variant=2)
    with pytest.raises(MergeConflictError, match="different images") as caught:
        merge_runs(tmp_path / "out", [a.dir, b.dir])
    assert (caught.value.first, caught.value.second) == (a.dir, b.dir)


def test_identical_duplicates_merge_and_the_first_record_is_kept(
    tmp_path: Path,
) -> None:
    """The same job with the same image in two inputs is fine; one record results."""
    a, b = FakeRun(tmp_path / "a"), FakeRun(tmp_path / "b")
    first = a.succeed("j", seed=4)
    b.succeed("j", seed=4)
    report = merge_runs(tmp_path / "out", [a.dir, b.dir])
    assert (report.jobs, report.succeeded, report.images_copied) == (1, 1, 1)
    assert list(iter_records(tmp_path / "out" / "ledger.jsonl")) == [first]


@pytest.mark.parametrize("succeeded_first", [True, False])
def test_succeeded_wins_over_failed_and_submitted(
    tmp_path: Path, succeeded_first: bool
) -> None:
    """In any input order, succeeded beats submitted, which beats failed."""
    ok, bad = FakeRun(tmp_path / "ok"), FakeRun(tmp_path / "bad")
    won = ok.succeed("j")
    bad.fail("j")
    bad.fail("k")
    ok.append(
        make_record(JobSpec("k", "a prompt", "1:1"), JobStatus.SUBMITTED, taskid="t")
    )
    order = [ok.dir, bad.dir] if succeeded_first else [bad.dir, ok.dir]
    report = merge_runs(tmp_path / "out", order)
    finals = latest_records(tmp_path / "out" / "ledger.jsonl")
    assert finals["j"]["status"] == "succeeded" and finals["j"] == won
    assert finals["k"]["status"] == "submitted"
    assert (report.succeeded, report.failed, report.submitted) == (1, 0, 1)
    assert [r["job_id"] for r in metadata(tmp_path / "out")] == ["j"]


def test_existing_file_with_other_content_is_a_conflict(tmp_path: Path) -> None:
    """A file already in OUT_DIR (an earlier merge's) with other bytes is refused
    before any write."""
    a, z = FakeRun(tmp_path / "a"), FakeRun(tmp_path / "z")
    a.succeed("first")
    a.succeed("clash")
    z.succeed("earlier")
    out = tmp_path / "out"
    merge_runs(out, [z.dir])
    (out / "images" / "clash.png").write_bytes(b"something else")
    before = snapshot(out)
    with pytest.raises(MergeConflictError, match=r"clash\.png") as caught:
        merge_runs(out, [a.dir])
    assert (caught.value.job_id, caught.value.first, caught.value.second) == (
        "clash",
        a.dir,
        out,
    )
    assert snapshot(out) == before


def test_two_jobs_claiming_one_file_name_conflict(tmp_path: Path) -> None:
    """In run dirs from before "~" names, job "x" with two images and job "x-0"
    both own images/x-0.png: refused."""
    a, b = FakeRun(tmp_path / "a"), FakeRun(tmp_path / "b")
    a.succeed("x", count=2, old_names=True)
    b.succeed("x-0", "other")
    with pytest.raises(MergeConflictError, match=r"x-0\.png"):
        merge_runs(tmp_path / "out", [a.dir, b.dir])


def test_out_dir_that_is_an_input_is_refused(tmp_path: Path) -> None:
    """Merging a directory into itself (also through a symlink) is refused."""
    a = FakeRun(tmp_path / "a")
    a.succeed("j")
    before = snapshot(a.dir)
    with pytest.raises(MergeError, match="one of the inputs"):
        merge_runs(a.dir, [a.dir])
    (tmp_path / "link").symlink_to(a.dir)
    with pytest.raises(MergeError, match="one of the inputs"):
        merge_runs(tmp_path / "link", [tmp_path / "other", a.dir])
    with pytest.raises(MergeError, match="not a run directory"):
        merge_runs(tmp_path / "out", [tmp_path / "missing"])
    assert snapshot(a.dir) == before
    assert not (tmp_path / "out").exists()


def test_images_are_copied_when_hardlinks_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Across filesystems (EXDEV) images are copied, complete, under the same name."""
    a = FakeRun(tmp_path / "a")
    a.succeed("j", count=2)

    def cross_device(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    report = merge_runs(tmp_path / "out", [a.dir])
    assert report.images_copied == 2
    for name in ("j~0.png", "j~1.png"):
        copy, source = tmp_path / "out" / "images" / name, a.dir / "images" / name
        assert copy.read_bytes() == source.read_bytes()
        assert not os.path.samefile(copy, source)
    assert [
        p.name for p in (tmp_path / "out" / "images").iterdir() if p.name[0] == "."
    ] == []


def test_old_records_gain_images_and_missing_files_are_counted(
    tmp_path: Path,
) -> None:
    """Old records gain `images`; files gone from an input are counted."""
    a = FakeRun(tmp_path / "a")
    a.succeed("old", legacy=True)
    a.succeed("gone")
    (a.dir / "images" / "gone.png").unlink()
    report = merge_runs(tmp_path / "out", [a.dir])
    assert (report.images_copied, report.images_missing) == (1, 1)
    finals = latest_records(tmp_path / "out" / "ledger.jsonl")
    (facts,) = finals["old"]["images"]
    assert facts["file"] == "images/old.png" and facts["width"] == 16
    assert write_metadata(tmp_path / "out") == 1


def test_equal_duplicate_with_its_file_on_disk_is_preferred(tmp_path: Path) -> None:
    """Of two equal successes, the one whose image still exists is merged."""
    a, b = FakeRun(tmp_path / "a"), FakeRun(tmp_path / "b")
    a.succeed("j")
    (a.dir / "images" / "j.png").unlink()
    b.succeed("j")
    report = merge_runs(tmp_path / "out", [a.dir, b.dir])
    assert (report.images_copied, report.images_missing) == (1, 0)
    assert os.path.samefile(
        tmp_path / "out" / "images" / "j.png", b.dir / "images" / "j.png"
    )


# -- audit trails and where a merge may write -------------------------------------


def _with_suspects(run: FakeRun, job_id: str, *, lost: int, cut_off: bool) -> None:
    """A job whose submit took `lost + 1` attempts, `lost` of them without an
    answer, then succeeded; with `cut_off`, an earlier run died mid-submit."""
    spec = JobSpec(job_id, "a prompt", "1:1")
    with (run.dir / "attempts.jsonl").open("a") as fh:
        if cut_off:
            fh.write(json.dumps({"job_id": job_id, "run": "r0", "n": 1}) + "\n")
        for n in range(1, lost + 2):
            fh.write(json.dumps({"job_id": job_id, "run": "r1", "n": n}) + "\n")
    submitted = make_record(
        spec,
        JobStatus.SUBMITTED,
        taskid=f"t-{job_id}",
        attempts=lost + 1,
        uncertain=lost,
        run="r1",
    )
    run.append(submitted)
    run.succeed(job_id)


def _suspects(run_dir: Path) -> dict[str, int]:
    from batch_runner.outputs.report import run_status

    return run_status(run_dir / "ledger.jsonl", run_dir).suspected_duplicates


def test_merge_carries_suspected_duplicate_submits_across(tmp_path: Path) -> None:
    """Suspects of every input stay suspects in the merge, no more and no fewer,
    and merging again (or one input at a time) does not count them twice."""
    a, b = FakeRun(tmp_path / "a"), FakeRun(tmp_path / "b")
    _with_suspects(a, "lost-answers", lost=2, cut_off=False)
    _with_suspects(a, "crashed", lost=0, cut_off=True)
    _with_suspects(b, "clean", lost=0, cut_off=False)
    b.succeed("plain")
    expected = {"lost-answers": 2, "crashed": 1}
    assert {**_suspects(a.dir), **_suspects(b.dir)} == expected

    out = tmp_path / "out"
    report = merge_runs(out, [a.dir, b.dir])
    assert (report.jobs, report.succeeded) == (4, 4)
    assert _suspects(out) == expected
    assert {
        j: r["status"] for j, r in latest_records(out / "ledger.jsonl").items()
    } == {
        "lost-answers": "succeeded",
        "crashed": "succeeded",
        "clean": "succeeded",
        "plain": "succeeded",
    }
    before = snapshot(out)
    merge_runs(out, [a.dir, b.dir])
    assert snapshot(out) == before
    merge_runs(tmp_path / "steps", [a.dir])
    merge_runs(tmp_path / "steps", [b.dir])
    assert snapshot(tmp_path / "steps") == before


def test_merge_into_a_run_directory_that_is_not_an_input_is_refused(
    tmp_path: Path,
) -> None:
    """`merge A B` with A a run directory (not a merge output) would rewrite A's
    ledger under its own attempts.jsonl: refused, A untouched."""
    a, b = FakeRun(tmp_path / "a"), FakeRun(tmp_path / "b")
    _with_suspects(a, "x", lost=0, cut_off=False)
    b.succeed("y")
    before = snapshot(a.dir)
    with pytest.raises(MergeError, match="not empty"):
        merge_runs(a.dir, [b.dir])
    assert snapshot(a.dir) == before
    assert _suspects(a.dir) == {}


def test_merge_into_a_run_directory_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From the CLI the refusal is a usage error: exit 2, one line naming OUT_DIR."""
    from batch_runner.cli.main import main

    a, b = FakeRun(tmp_path / "a"), FakeRun(tmp_path / "b")
    a.succeed("x")
    b.succeed("y")
    assert main(["merge", str(a.dir), str(b.dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(a.dir) in err[0] and "not empty" in err[0]


def test_merge_refuses_a_non_empty_directory_but_accepts_empty_or_merged(
    tmp_path: Path,
) -> None:
    """OUT_DIR must be new, empty, or the output of an earlier merge."""
    a = FakeRun(tmp_path / "a")
    a.succeed("j")
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(MergeError, match="not empty"):
        merge_runs(stray, [a.dir])
    assert sorted(p.name for p in stray.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert merge_runs(empty, [a.dir]).jobs == 1
    assert merge_runs(empty, [a.dir]).jobs == 1


def test_a_merge_output_a_run_wrote_into_keeps_its_own_audit_trail(
    tmp_path: Path,
) -> None:
    """A merge output later used as a run directory is still a merge output:
    its own ledger and attempts take part, and its suspects are kept."""
    a = FakeRun(tmp_path / "a")
    a.succeed("j")
    out = tmp_path / "out"
    merge_runs(out, [a.dir])
    _with_suspects(FakeRun(out), "later", lost=1, cut_off=False)
    assert _suspects(out) == {"later": 1}
    merge_runs(out, [a.dir])
    assert _suspects(out) == {"later": 1}
