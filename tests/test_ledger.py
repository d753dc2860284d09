"""Ledger records, replay (incl. torn lines, fuzzed) and the single writer."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_runner.errors import LedgerError
from batch_runner.models import JobSpec, JobStatus
from batch_runner.store.ledger import (
    LedgerWriter,
    ResumeState,
    encode_record,
    make_record,
    read_ledger,
    replay,
    utc_now_iso,
)

JOB = JobSpec(job_id="j1", prompt="a cat", resolution="16:9", seed=3, meta={"k": "v"})


def rec(job_id: str, status: JobStatus, taskid: str | None = "t") -> bytes:
    job = JobSpec(job_id=job_id, prompt=f"p {job_id}")
    return encode_record(make_record(job, status, taskid=taskid))


def test_record_carries_the_whole_job() -> None:
    """Every record has the fields needed to rebuild the manifest."""
    r = make_record(
        JOB,
        JobStatus.SUCCEEDED,
        taskid="t",
        urls=["u"],
        code=1000,
        files=["images/j1.png"],
    )
    assert r["job_id"] == "j1" and r["status"] == "succeeded"
    assert r["prompt"] == "a cat" and r["resolution"] == "16:9"
    assert r["seed"] == 3 and r["meta"] == {"k": "v"}
    # never set, so never sent: null, not false
    assert r["prompt_extend"] is None
    assert r["url"] == ["u"] and r["files"] == ["images/j1.png"]
    assert r["ts"].endswith("+00:00")
    assert set(r) >= {"job_id", "status", "taskid", "url", "code", "msg", "ts"}


def test_last_record_wins() -> None:
    """A job's state is its last line."""
    state = replay(
        [
            rec("a", JobStatus.SUBMITTED, "t1"),
            rec("a", JobStatus.FAILED),
            rec("b", JobStatus.SUBMITTED, "t2"),
            rec("a", JobStatus.SUCCEEDED),
        ]
    )
    assert state.status_of("a") is JobStatus.SUCCEEDED
    assert state.submitted == {"b": "t2"}
    assert state.failed == {}


def test_torn_last_line_is_skipped_with_offset() -> None:
    """A half-written last line is ignored with a warning naming its byte offset."""
    good = rec("a", JobStatus.SUCCEEDED)
    state = replay([good, b'{"job_id":"b","sta'])
    assert state.succeeded == {"a"}
    assert len(state.warnings) == 1
    assert f"byte {len(good)}" in state.warnings[0]
    assert "torn" in state.warnings[0]


def test_torn_line_in_the_middle_does_not_hide_later_lines() -> None:
    """After a resume appended past a torn line, both sides still replay."""
    lines = [
        rec("a", JobStatus.SUCCEEDED),
        b'{"job_id":"b","sta\n',
        rec("c", JobStatus.SUCCEEDED),
    ]
    assert replay(lines).succeeded == {"a", "c"}


def test_unknown_status_and_junk_are_skipped() -> None:
    """Lines that are JSON but not records are skipped, not fatal."""
    lines = [
        b"[1,2]\n",
        b'{"job_id":"x","status":"weird"}\n',
        b"\xff\xfe\n",
        b'{"status":"succeeded"}\n',
        b'{"job_id":"s","status":"submitted"}\n',
        rec("a", JobStatus.SUCCEEDED),
    ]
    state = replay(lines)
    assert state.succeeded == {"a"} and len(state.warnings) == 5


@st.composite
def ledgers(draw: st.DrawFn) -> list[tuple[str, JobStatus]]:
    ids = draw(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=40))
    return [(i, draw(st.sampled_from(list(JobStatus)))) for i in ids]


@settings(max_examples=200, deadline=None)
@given(ledgers(), st.data())
def test_fuzz_truncation_never_loses_a_complete_record(
    events: list[tuple[str, JobStatus]], data: st.DataObject
) -> None:
    """Cutting the file anywhere loses at most the record that was cut."""
    lines = [rec(i, s, f"t-{n}") for n, (i, s) in enumerate(events)]
    blob = b"".join(lines)
    cut = data.draw(st.integers(0, len(blob)))
    truncated = blob[:cut]
    complete = []
    pos = 0
    for line in lines:
        # a record missing only its newline was written whole and counts
        if pos + len(line) - 1 <= cut:
            complete.append(line)
        pos += len(line)
    state = replay(truncated.splitlines(keepends=True))
    expected = replay(complete)
    assert state.succeeded == expected.succeeded
    assert state.submitted == expected.submitted
    assert set(state.failed) == set(expected.failed)


@settings(max_examples=100, deadline=None)
@given(ledgers(), st.binary(max_size=30), st.data())
def test_fuzz_garbage_interleaved_never_loses_succeeded(
    events: list[tuple[str, JobStatus]], junk: bytes, data: st.DataObject
) -> None:
    """Junk lines inserted anywhere never hide a succeeded job, never raise."""
    lines = [rec(i, s) for i, s in events]
    at = data.draw(st.integers(0, len(lines)))
    noisy = [*lines[:at], junk.replace(b"\n", b"") + b"\n", *lines[at:]]
    clean = replay(lines)
    state = replay(noisy)
    assert state.succeeded == clean.succeeded


def test_read_missing_ledger_is_empty(tmp_path: Path) -> None:
    """No ledger yet means nothing done yet."""
    state = read_ledger(tmp_path / "nope.jsonl")
    assert isinstance(state, ResumeState) and state.records == 0


async def test_writer_appends_flushes_and_heals_torn_tail(tmp_path: Path) -> None:
    """Appends after a torn tail start on a fresh line; every record is readable."""
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(rec("a", JobStatus.SUCCEEDED) + b'{"job_id":"b","st')
    async with LedgerWriter(path) as writer:
        await asyncio.gather(
            *(
                writer.append(
                    make_record(
                        JobSpec(job_id=f"n{i}", prompt="p"), JobStatus.SUCCEEDED
                    )
                )
                for i in range(50)
            )
        )
        # flushed: readable before close
        assert len(read_ledger(path).succeeded) == 51
    state = read_ledger(path)
    assert state.succeeded == {"a", *(f"n{i}" for i in range(50))}
    assert len(state.warnings) == 1


async def test_writer_redacts_secrets(tmp_path: Path) -> None:
    """A secret that slips into a message never reaches the file."""
    path = tmp_path / "l.jsonl"
    async with LedgerWriter(path, secrets=["sk-SECRET"]) as writer:
        await writer.append(make_record(JOB, JobStatus.FAILED, msg="bad key sk-SECRET"))
    text = path.read_text()
    assert "sk-SECRET" not in text and "***" in text
    assert json.loads(text)["msg"] == "bad key ***"


async def test_writer_cancelled_caller_still_writes(tmp_path: Path) -> None:
    """Cancelling the caller after hand-over does not lose the record."""
    path = tmp_path / "l.jsonl"
    async with LedgerWriter(path, fsync=True) as writer:
        task = asyncio.create_task(writer.append(make_record(JOB, JobStatus.SUCCEEDED)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert read_ledger(path).succeeded == {"j1"}


@settings(max_examples=100, deadline=None)
@given(ledgers())
def test_fast_path_agrees_with_full_parsing(
    events: list[tuple[str, JobStatus]],
) -> None:
    """Replaying our writer's layout (regex fast path) gives the same state as the
    same records in another key order (full JSON parsing)."""
    records = [
        make_record(JobSpec(job_id=i, prompt="p"), s, taskid=f"t-{n}")
        for n, (i, s) in enumerate(events)
    ]
    fast = replay([encode_record(r) for r in records])
    slow = replay([(json.dumps(r, sort_keys=True) + "\n").encode() for r in records])
    assert fast.succeeded == slow.succeeded
    assert fast.submitted == slow.submitted
    assert set(fast.failed) == set(slow.failed)
    assert fast.records == slow.records


#: what --no-download wrote before the "generated" state existed
OLD_NO_DOWNLOAD_LINE = (
    b'{"job_id":"old","status":"succeeded","taskid":"t-old","url":["http://x/a.png"],'
    b'"code":1000,"msg":"ok","ts":"2026-01-01T00:00:00.000+00:00","prompt":"p",'
    b'"resolution":"1024*1024","seed":null,"prompt_extend":false,"meta":{},'
    b'"files":[]}\n'
)


def test_generated_and_old_no_download_records_are_work_left(tmp_path: Path) -> None:
    """A "generated" record, and an old "succeeded" one with no files but URLs,
    both replay as generated (to download); status counts them apart from the
    succeeded ones; a later success replaces them."""
    generated = encode_record(
        make_record(JOB, JobStatus.GENERATED, taskid="t1", urls=["http://x/1.png"])
    )
    state = replay([OLD_NO_DOWNLOAD_LINE, generated, rec("done", JobStatus.SUCCEEDED)])
    assert state.succeeded == {"done"}
    assert state.generated["old"].urls == ("http://x/a.png",)
    assert state.generated["j1"].taskid == "t1"
    assert state.status_of("old") is JobStatus.GENERATED
    assert (
        replay([OLD_NO_DOWNLOAD_LINE, rec("old", JobStatus.SUCCEEDED)]).generated == {}
    )

    from batch_runner.outputs.report import format_status, run_status

    ledger = tmp_path / "ledger.jsonl"
    ledger.write_bytes(
        OLD_NO_DOWNLOAD_LINE + generated + rec("done", JobStatus.SUCCEEDED)
    )
    report = run_status(ledger)
    assert (report.succeeded, report.generated, report.total) == (1, 2, 3)
    assert "generated (not downloaded) 2" in format_status(report, "run")


def test_generated_record_needs_urls_or_a_taskid() -> None:
    """A generated record that says neither where the images are nor which task
    made them is unreadable, and reported as such."""
    bad = encode_record(make_record(JOB, JobStatus.GENERATED))
    state = replay([bad])
    assert state.generated == {} and "without URLs or a taskid" in state.warnings[0]


async def test_immediate_writer_has_the_line_on_disk_when_append_returns(
    tmp_path: Path,
) -> None:
    """Without fsync, an immediate writer's append writes and flushes in the
    caller: the line is readable the moment append returns, in order."""
    path = tmp_path / "l.jsonl"
    async with LedgerWriter(path, immediate=True) as writer:
        for i in range(3):
            await writer.append(
                make_record(JobSpec(job_id=f"n{i}", prompt="p"), JobStatus.SUCCEEDED)
            )
            assert len(read_ledger(path).succeeded) == i + 1
        assert writer.records_written == 3
    assert [r["job_id"] for r in map(json.loads, path.read_text().splitlines())] == [
        "n0",
        "n1",
        "n2",
    ]


async def test_immediate_writer_fails_every_append_after_a_failed_write(
    tmp_path: Path,
) -> None:
    """A write the disk refuses raises LedgerError, and so does every later
    append: nothing is silently dropped."""
    path = tmp_path / "l.jsonl"
    async with LedgerWriter(path, immediate=True) as writer:
        assert writer._fh is not None
        writer._fh.close()
        # a full disk: every write fails with ENOSPC
        writer._fh = Path("/dev/full").open("ab")  # noqa: SIM115 (the writer closes it)
        with pytest.raises(LedgerError):
            await writer.append(make_record(JOB, JobStatus.SUCCEEDED))
        with pytest.raises(LedgerError):
            await writer.append(make_record(JOB, JobStatus.FAILED))


def test_encoded_records_are_the_standard_library_compact_json() -> None:
    """The fast encoder writes byte for byte what json.dumps (compact, UTF-8)
    writes, and falls back to it for what it refuses (a 100-bit integer)."""
    job = JobSpec(
        job_id="j-ü", prompt='say "hi" \\ ✓ \n', seed=7, meta={"a": [1, 2.5, None]}
    )
    record = make_record(job, JobStatus.SUCCEEDED, taskid="t", urls=["u"], files=[])
    expected = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
    assert encode_record(record) == expected.encode("utf-8")
    big = {**record, "meta": {"n": 2**100}}
    assert json.loads(encode_record(big))["meta"]["n"] == 2**100


def test_record_time_is_iso_8601_utc_to_the_millisecond() -> None:
    """The cached formatting gives what datetime's isoformat gives, across
    seconds."""
    for _ in range(3):
        before = datetime.now(UTC).replace(microsecond=0)
        stamp = utc_now_iso()
        after = datetime.now(UTC)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", stamp)
        assert before <= datetime.fromisoformat(stamp) <= after
        time.sleep(0.4)
