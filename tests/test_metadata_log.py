"""The metadata log: rows copied as the ledger is written, caught up after crashes,
and compacted into metadata.jsonl without a per-job index."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_runner.outputs import metadata_log
from batch_runner.outputs.dataset import compact_metadata, write_metadata
from batch_runner.outputs.metadata_log import (
    MetadataLog,
    copied_line,
    drop_line,
    mark_line,
    parse_line,
    row_line,
)
from batch_runner.store.final_records import numbered_final_records
from batch_runner.store.ledger import encode_record
from batch_runner.store.rundir import RunDir

pytestmark = pytest.mark.pure

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def _succeeded(job_id: str, n: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": "succeeded",
        "prompt": f"p{n}",
        "files": [f"images/{job_id}.png"],
        **extra,
    }


@given(
    meta=st.dictionaries(st.text(max_size=6), _json_values, max_size=4),
    end=st.integers(min_value=0, max_value=2**53),
)
def test_a_row_copies_its_ledger_line_byte_for_byte(
    meta: dict[str, Any], end: int
) -> None:
    """A row parses back to the record and the ledger offset, and gives back the
    exact ledger line it copies."""
    line = encode_record(_succeeded("j1", meta=meta))
    row = row_line(line, end)
    parsed = parse_line(row)
    assert parsed is not None and parsed.ledger_end == end
    assert parsed.record == json.loads(line) and parsed.drop is None
    assert copied_line(row) == line.rstrip(b"\n")


def test_drops_and_marks_are_not_rows() -> None:
    """A drop names its job, a mark only an offset, and neither copies a line."""
    drop = parse_line(drop_line("j1", 7))
    assert drop is not None and (drop.drop, drop.record, drop.ledger_end) == (
        "j1",
        None,
        7,
    )
    mark = parse_line(mark_line(9))
    assert mark is not None and (mark.drop, mark.record) == (None, None)
    assert copied_line(drop_line("j1", 7)) is None
    assert copied_line(mark_line(9)) is None
    assert copied_line(mark_line(9, b'{"job_id":"a"}')) is None
    assert parse_line(b'{"ledger_end":3,"job_id":"x","status":"failed"}') is None
    assert parse_line(b'{"ledger_end":3,"job_') is None


# -- the log against the ledger, through runs and crashes --------------------


class _Ledger:
    """A ledger file written as the ledger writer does, feeding a MetadataLog."""

    def __init__(self, root: Path) -> None:
        self.run = RunDir(root)
        self.log: MetadataLog | None = None
        self.size = self.run.ledger.stat().st_size if self.run.ledger.exists() else 0

    def start(self, rerun: list[str]) -> None:
        self.log = MetadataLog(self.run.metadata_log, self.run.ledger, reruns=rerun)
        self.log.open()

    def write(self, record: dict[str, Any], *, noted: bool = True) -> None:
        line = encode_record(record)
        with self.run.ledger.open("ab") as fh:
            fh.write(line)
        self.size += len(line)
        assert self.log is not None
        if noted:
            self.log.note(record, line, self.size)

    def crash(self, keep_fraction: float) -> None:
        """Lose part of what the log had buffered, as a SIGKILL would."""
        assert self.log is not None and self.log._fh is not None
        flushed = self.run.metadata_log.stat().st_size
        fh = self.log._fh
        self.log._fh = None
        fh.flush()
        fh.close()
        total = self.run.metadata_log.stat().st_size
        keep = flushed + int((total - flushed) * keep_fraction)
        os.truncate(self.run.metadata_log, keep)


def _expected(ledger: Path) -> list[dict[str, Any]]:
    return [
        record for _, record in numbered_final_records(ledger) if record.get("files")
    ]


_events = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.sampled_from(["succeeded", "failed", "submitted"]),
    ),
    max_size=12,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    runs=st.lists(
        st.tuples(_events, st.booleans(), st.floats(0, 1), st.booleans()),
        min_size=1,
        max_size=4,
    ),
    mark_every=st.integers(1, 4),
    data=st.data(),
)
def test_the_log_holds_each_jobs_last_success_through_runs_and_crashes(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    runs: list[tuple[list[tuple[str, str]], bool, float, bool]],
    mark_every: int,
    data: st.DataObject,
) -> None:
    """Whatever runs, reruns and crashes happened (losing buffered log lines, or
    the log line of the last ledger line), the log after `sync` lists exactly
    each job's last record when it succeeded, in ledger order: what a scan of
    the whole ledger finds."""
    monkeypatch.setattr(metadata_log, "MARK_EVERY", mark_every)

    def no_rebuild(*args: object) -> int:
        raise AssertionError("a log the runner wrote is caught up, never rebuilt")

    monkeypatch.setattr(metadata_log, "rebuild", no_rebuild)
    root = tmp_path_factory.mktemp("run")
    done: set[str] = set()
    for n, (events, crashes, keep, last_unnoted) in enumerate(runs):
        ledger = _Ledger(root)
        rerun = sorted(data.draw(st.sets(st.sampled_from(sorted(done) or ["-"]))))
        rerun = [job for job in rerun if job in done]
        ledger.start(rerun)
        # a rerun job is open again once the run starts on it, not before
        reopened = set(rerun)
        for index, (job_id, status) in enumerate(events):
            if job_id in done and job_id not in reopened:
                continue  # the runner never touches a finished job again
            reopened.discard(job_id)
            record = (
                _succeeded(job_id, n)
                if status == "succeeded"
                else {"job_id": job_id, "status": status, "taskid": "t"}
            )
            final = index == len(events) - 1
            ledger.write(record, noted=not (crashes and last_unnoted and final))
            if status == "succeeded":
                done.add(job_id)
            else:
                done.discard(job_id)
        if crashes:
            ledger.crash(keep)
        else:
            assert ledger.log is not None
            ledger.log.close()
    run = RunDir(root)
    metadata_log.sync(run.metadata_log, run.ledger)
    assert list(metadata_log.records(run.metadata_log)) == _expected(run.ledger)


def test_sync_rebuilds_a_log_that_belongs_to_another_ledger(tmp_path: Path) -> None:
    """A ledger replaced under the log (same size or not) makes `sync` rebuild the
    log from the ledger rather than trust rows that are not there."""
    run = RunDir(tmp_path)
    run.ledger.write_bytes(encode_record(_succeeded("a")))
    metadata_log.sync(run.metadata_log, run.ledger)
    assert [r["job_id"] for r in metadata_log.records(run.metadata_log)] == ["a"]
    # same length, other bytes: the byte check catches it
    run.ledger.write_bytes(encode_record(_succeeded("b")))
    metadata_log.sync(run.metadata_log, run.ledger)
    assert [r["job_id"] for r in metadata_log.records(run.metadata_log)] == ["b"]
    run.ledger.write_bytes(b"")
    metadata_log.sync(run.metadata_log, run.ledger)
    assert list(metadata_log.records(run.metadata_log)) == []


def test_a_torn_log_tail_is_cut_and_recopied(tmp_path: Path) -> None:
    """A log cut mid-line by a crash loses the torn line to the truncation and
    gets it back from the ledger."""
    run = RunDir(tmp_path)
    lines = [encode_record(_succeeded(job)) for job in "abc"]
    run.ledger.write_bytes(b"".join(lines))
    metadata_log.sync(run.metadata_log, run.ledger)
    whole = run.metadata_log.read_bytes()
    run.metadata_log.write_bytes(whole[: len(whole) // 2])
    metadata_log.sync(run.metadata_log, run.ledger)
    assert [r["job_id"] for r in metadata_log.records(run.metadata_log)] == list("abc")


def test_a_torn_ledger_line_is_copied_at_the_offset_its_newline_will_have(
    tmp_path: Path,
) -> None:
    """A last ledger line a crash left without its newline is listed, and the
    rows after the writer ends it line up with the ledger."""
    run = RunDir(tmp_path)
    first = encode_record(_succeeded("a"))
    torn = encode_record(_succeeded("b")).rstrip(b"\n")
    run.ledger.write_bytes(first + torn)
    assert metadata_log.sync(run.metadata_log, run.ledger) == len(first + torn) + 1
    ledger = _Ledger(tmp_path)
    with run.ledger.open("ab") as fh:
        fh.write(b"\n")  # what LedgerWriter.open does
    ledger.size += 1
    ledger.start([])
    ledger.write(_succeeded("c"))
    assert ledger.log is not None
    ledger.log.close()
    assert metadata_log.sync(run.metadata_log, run.ledger) == run.ledger.stat().st_size
    assert [r["job_id"] for r in metadata_log.records(run.metadata_log)] == list("abc")


def test_compaction_writes_what_a_ledger_rebuild_writes(tmp_path: Path) -> None:
    """metadata.jsonl compacted from the log is byte-identical to one rebuilt from
    the whole ledger, with reruns, failures and missing files in the history."""
    run = RunDir(tmp_path)
    run.images.mkdir()
    for job in "abcd":
        (run.images / f"{job}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    ledger = _Ledger(tmp_path)
    ledger.start([])
    ledger.write(_succeeded("a", meta={"k": 1}))
    ledger.write(_succeeded("b", meta={"k": "x"}))
    ledger.write({"job_id": "c", "status": "failed", "msg": "no"})
    ledger.write(_succeeded("d"))
    ledger.write(_succeeded("e"))  # its file is not on disk
    assert ledger.log is not None
    ledger.log.close()
    ledger = _Ledger(tmp_path)
    ledger.start(["a", "b"])
    ledger.write(_succeeded("a", 2, meta={"k": 2.5}))
    ledger.write({"job_id": "b", "status": "failed", "msg": "no"})
    assert ledger.log is not None
    ledger.log.close()

    assert compact_metadata(tmp_path) == 2
    compacted = run.metadata.read_bytes()
    assert write_metadata(tmp_path) == 2
    assert run.metadata.read_bytes() == compacted
    rows = [json.loads(line) for line in compacted.splitlines()]
    assert sorted((r["job_id"], r["prompt"], r["meta_k"]) for r in rows) == [
        ("a", "p2", 2.5),
        ("d", "p0", None),
    ]


def test_a_run_that_writes_nothing_leaves_the_log_untouched(tmp_path: Path) -> None:
    """Opening and closing the log with no ledger line in between writes nothing,
    so a rerun of a finished run does not compact metadata.jsonl again."""
    ledger = _Ledger(tmp_path)
    ledger.start([])
    ledger.write(_succeeded("a"))
    assert ledger.log is not None
    ledger.log.close()
    before = ledger.run.metadata_log.read_bytes()
    again = _Ledger(tmp_path)
    again.start([])
    assert again.log is not None
    again.log.close()
    assert ledger.run.metadata_log.read_bytes() == before
