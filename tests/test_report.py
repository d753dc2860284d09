"""`status` and `failed` read from hand-made ledgers: every field through a real
JSON parser, totals that add up, failure reasons grouped, retry manifests that
keep what the ledger holds."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from batch_runner.manifest.reader import iter_jobs
from batch_runner.models import JobSpec, JobStatus
from batch_runner.outputs.report import (
    format_status,
    normalise_reason,
    run_status,
    write_failed_csv,
    write_failed_jsonl,
)
from batch_runner.store.ledger import make_record
from batch_runner.wire.protocol import submit_fields

from .test_dataset import FakeRun


def test_meta_keys_named_like_record_fields_do_not_skew_status(
    tmp_path: Path,
) -> None:
    """A `meta` holding `files`, `status`, `job_id`, `taskid` or `ts` skews no count."""
    run = FakeRun(tmp_path / "run")
    run.succeed(
        "j",
        meta={
            "files": ["images/a.png", "images/b.png", "images/c.png"],
            "status": "failed",
            "job_id": "other",
            "taskid": "t-other",
            "ts": "1999-01-01T00:00:00.000+00:00",
        },
    )
    status = run_status(run.ledger, run.dir)
    assert (status.total, status.succeeded, status.failed) == (1, 1, 0)
    assert (status.images_on_disk, status.images_expected) == (1, 1)
    assert status.first_ts is not None and status.first_ts > "2000"


def test_records_in_any_key_order_are_read_the_same(tmp_path: Path) -> None:
    """A record whose keys are sorted (meta before status) counts like any other."""
    run = FakeRun(tmp_path / "run")
    record = run.succeed("j", meta={"status": "failed", "files": ["x", "y"]})
    run.ledger.write_text(json.dumps(record, sort_keys=True) + "\n")
    status = run_status(run.ledger, run.dir)
    assert (status.succeeded, status.failed, status.images_expected) == (1, 0, 1)


def _manifest(path: Path, ids: list[str]) -> Path:
    path.write_text(
        "".join(json.dumps({"id": i, "prompt": f"p {i}"}) + "\n" for i in ids)
    )
    return path


def test_status_with_a_manifest_counts_the_manifest_and_names_the_rest(
    tmp_path: Path,
) -> None:
    """12 jobs in the ledger, 3 of them plus 1 new in the manifest: the totals
    add up to 4 and the other 9 are reported apart."""
    run = FakeRun(tmp_path / "run")
    for i in range(10):
        run.succeed(f"s{i}", f"p s{i}")
    run.fail("f0", "p f0")
    run.fail("f1", "p f1")
    manifest = _manifest(tmp_path / "m.jsonl", ["s0", "s1", "f0", "new"])
    status = run_status(run.ledger, run.dir, manifest)
    assert (status.total, status.succeeded, status.failed) == (4, 2, 1)
    assert (status.submitted, status.pending) == (0, 1)
    assert status.other_jobs == 9
    assert status.other == {"succeeded": 8, "generated": 0, "failed": 1, "submitted": 0}
    text = format_status(status, "run")
    assert "jobs: 4 — succeeded 2, failed 1, submitted (in flight) 0, pending 1" in text
    assert "not in the manifest: 9 jobs (succeeded 8, failed 1, submitted 0)" in text


_STATES = st.sampled_from(["succeeded", "failed", "submitted", "generated"])


@given(
    ledger=st.dictionaries(
        st.from_regex(r"[a-e][0-9]", fullmatch=True), st.lists(_STATES, min_size=1)
    ),
    manifest=st.sets(st.from_regex(r"[a-g][0-9]", fullmatch=True), min_size=1),
)
def test_status_totals_always_add_up(
    ledger: dict[str, list[str]], manifest: set[str]
) -> None:
    """With a manifest, succeeded + generated + failed + submitted + pending =
    total = the manifest's jobs, and the other ledger jobs are exactly those left
    out."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = FakeRun(root / "run")
        for job_id, history in ledger.items():
            for state in history:
                spec = JobSpec(job_id, f"p {job_id}")
                run.append(make_record(spec, JobStatus(state), taskid="t"))
        path = _manifest(root / "m.jsonl", sorted(manifest))
        status = run_status(run.ledger, run.dir, path)
    assert status.pending is not None
    parts = status.succeeded + status.generated + status.failed + status.submitted
    parts += status.pending
    assert parts == status.total == len(manifest)
    assert (
        status.other_jobs == len(set(ledger) - manifest) == sum(status.other.values())
    )
    assert status.pending == len(manifest - set(ledger))
    assert status.failed == sum(
        1 for j in manifest & set(ledger) if ledger[j][-1] == "failed"
    )


def test_failure_reasons_group_messages_that_differ_only_in_numbers(
    tmp_path: Path,
) -> None:
    """Byte counts, ids and URLs in messages do not make one group per job."""
    run = FakeRun(tmp_path / "run")
    for i, size in enumerate((52428801, 61000000, 99999999)):
        spec = JobSpec(f"j{i}", f"p {i}")
        run.append(
            make_record(
                spec,
                JobStatus.FAILED,
                taskid=f"zimg_{i:016x}",
                stage="download",
                msg=f"download failed: image of {size} bytes from "
                f"https://cdn.example/zimg_{i:016x}_0.png is over 52428800 bytes",
            )
        )
    run.fail("g", msg="no")
    reasons = run_status(run.ledger, run.dir).failure_reasons
    assert [(r["stage"], r["count"]) for r in reasons] == [("download", 3), ("", 1)]
    assert (
        reasons[0]["msg"]
        == "download failed: image of <n> bytes from <url> is over <n> bytes"
    )
    assert reasons[0]["example"].startswith("download failed: image of 52428801 bytes")


def test_normalise_reason_keeps_words_and_masks_what_varies() -> None:
    """Numbers, hex ids and URLs are masked; ordinary words are not."""
    assert (
        normalise_reason("HTTP 503 after 4 tries (1.5s)")
        == "HTTP <n> after <n> tries (<n>s)"
    )
    assert normalise_reason("task 3f2a9c0d1e7b4a55 not found") == "task <id> not found"
    assert (
        normalise_reason("simulated generation failure")
        == "simulated generation failure"
    )
    assert normalise_reason("see http://x/y?z=1 now") == "see <url> now"


TYPED_META: dict[str, Any] = {
    "n": 7,
    "ok": True,
    "ratio": 2.5,
    "none": None,
    "nested": {"a": [1, "two", None]},
    "text": "7",
}


def _failed_run(tmp_path: Path) -> FakeRun:
    run = FakeRun(tmp_path / "run")
    jobs = [
        JobSpec("typed", "typed meta", "16:9", 11, None, TYPED_META),
        JobSpec("extend-off", "explicitly off", "1:1", None, False, {}),
        JobSpec("extend-on", "explicitly on", "1:1", None, True, {"k": "v"}),
    ]
    for spec in jobs:
        run.append(make_record(spec, JobStatus.FAILED, stage="submit", msg="HTTP 500"))
    run.succeed("fine")
    return run


def test_failed_jsonl_keeps_every_value_and_type(tmp_path: Path) -> None:
    """`failed --format jsonl` rebuilds each failed job exactly: meta types, nulls,
    nesting, and prompt_extend only where it was set."""
    run = _failed_run(tmp_path)
    out, reasons = io.StringIO(), io.StringIO()
    assert write_failed_jsonl(run.ledger, out, reasons) == 3
    retry = tmp_path / "retry.jsonl"
    retry.write_text(out.getvalue())
    jobs = {j.job_id: j for j in iter_jobs(retry)}
    typed = dataclasses.replace(jobs["typed"], source="")
    assert typed == JobSpec("typed", "typed meta", "16:9", 11, None, TYPED_META)
    assert jobs["extend-off"].prompt_extend is False
    assert jobs["extend-on"].prompt_extend is True
    assert "typed: [submit] HTTP 500" in reasons.getvalue()


def test_unset_prompt_extend_is_recorded_as_null_and_never_sent_on_retry(
    tmp_path: Path,
) -> None:
    """An unset prompt_extend is null in the ledger, and a retry from `failed`
    (CSV or JSONL) sends none, while an explicit false is still sent as 0."""
    record = make_record(JobSpec("j", "p"), JobStatus.FAILED)
    assert record["prompt_extend"] is None
    run = _failed_run(tmp_path)
    for writer, name in (
        (write_failed_csv, "retry.csv"),
        (write_failed_jsonl, "retry.jsonl"),
    ):
        out = io.StringIO()
        writer(run.ledger, out, io.StringIO())
        retry = tmp_path / name
        retry.write_text(out.getvalue())
        jobs = {j.job_id: j for j in iter_jobs(retry)}
        assert jobs["typed"].prompt_extend is None
        assert "prompt_extend" not in dict(submit_fields(jobs["typed"]))
        assert dict(submit_fields(jobs["extend-off"]))["prompt_extend"] == "0"


def test_old_ledgers_with_false_prompt_extend_still_read(tmp_path: Path) -> None:
    """A ledger from before null was recorded (false for unset) is still a valid
    source for `failed` and `status`."""
    run = FakeRun(tmp_path / "run")
    spec = JobSpec("old", "an old job")
    record = make_record(spec, JobStatus.FAILED, msg="no")
    record["prompt_extend"] = False
    run.append(record)
    out = io.StringIO()
    assert write_failed_csv(run.ledger, out, io.StringIO()) == 1
    (row,) = csv.DictReader(io.StringIO(out.getvalue()))
    assert row["prompt_extend"] == "0"
    assert run_status(run.ledger, run.dir).failed == 1
