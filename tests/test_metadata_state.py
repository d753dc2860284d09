"""Compacting metadata.jsonl by appending: whatever the history, the file is the
one a rewrite from the whole metadata log gives, and anything that makes an
append unsafe sends it back to the rewrite."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from batch_runner.outputs import dataset, metadata_state
from batch_runner.outputs.dataset import compact_metadata, write_metadata
from batch_runner.store.ledger import encode_record
from batch_runner.store.rundir import RunDir

pytestmark = pytest.mark.pure

_PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
#: mostly one label of one kind, as most manifests have
_METAS: list[dict[str, Any]] = [
    *[{"k": i} for i in range(6)],
    {"k": "x"},
    {"k": 1, "e": True},
    {},
]
#: jobs "z..." never get their file on disk
_JOBS = ["a", "b", "c", "d", "e", "z"]
_TAMPERS = [*["none"] * 8, "forget", "edit", "rebuild", "no-log", "torn-state"]


class _Dir:
    def __init__(self, root: Path) -> None:
        self.run = RunDir(root)
        self.run.images.mkdir(parents=True)

    def write(self, job_id: str, status: str, meta: dict[str, Any], n: int) -> None:
        record: dict[str, Any] = {"job_id": job_id, "status": status, "prompt": f"p{n}"}
        if status == "succeeded":
            record.update(meta=meta, files=[f"images/{job_id}-{n}.png"])
            if not job_id.startswith("z"):
                (self.run.images / f"{job_id}-{n}.png").write_bytes(_PNG + bytes([n]))
        with self.run.ledger.open("ab") as fh:
            fh.write(encode_record(record))

    def metadata(self) -> bytes:
        return self.run.metadata.read_bytes() if self.run.metadata.exists() else b""


def _tamper(d: _Dir, how: str) -> None:
    if how == "forget":
        d.run.metadata_state.unlink(missing_ok=True)
    elif how == "edit" and d.run.metadata.exists():
        data = d.run.metadata.read_bytes()
        # the same size, one byte changed: only the checks of its bytes see it
        d.run.metadata.write_bytes(data[:-2] + b" \n" if len(data) > 2 else b"x\n")
    elif how == "rebuild":
        write_metadata(d.run.root)
    elif how == "no-log":
        d.run.metadata_log.unlink(missing_ok=True)
    elif how == "torn-state" and d.run.metadata_state.exists():
        data = d.run.metadata_state.read_bytes()
        d.run.metadata_state.write_bytes(data[: len(data) // 2])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    batches=st.lists(
        st.tuples(
            st.lists(
                st.tuples(
                    st.sampled_from(_JOBS),
                    st.sampled_from(["succeeded"] * 5 + ["failed"]),
                    st.sampled_from(range(len(_METAS))),
                ),
                max_size=6,
            ),
            st.sampled_from(_TAMPERS),
        ),
        min_size=2,
        max_size=6,
    )
)
def test_appending_writes_what_a_rewrite_writes(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[tuple[list[tuple[str, str, int]], str]],
) -> None:
    """Runs that add rows, redo jobs (drops), fail them, bring new labels or
    kinds, leave files missing; between runs the state removed or torn,
    metadata.jsonl edited or rebuilt from the ledger, the log deleted. After
    each compaction the file is byte for byte what compacting everything
    from scratch gives."""
    appending = _Dir(tmp_path_factory.mktemp("appending"))
    scratch = _Dir(tmp_path_factory.mktemp("scratch"))
    real_append = dataset._append_rows

    def append(*args: Any) -> int | None:
        rows = real_append(*args)
        event("appended" if rows is not None else "rewritten")
        return rows

    n = 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataset, "_append_rows", append)
        for events, tamper in batches:
            for job_id, status, meta in events:
                n += 1
                for d in (appending, scratch):
                    d.write(job_id, status, _METAS[meta], n)
            rows = compact_metadata(appending.run.root)
            scratch.run.metadata_state.unlink(missing_ok=True)
            assert rows == compact_metadata(scratch.run.root)
            assert appending.metadata() == scratch.metadata()
            _tamper(appending, tamper)


def _uniform(d: _Dir, jobs: range) -> None:
    for i in jobs:
        d.write(f"j{i}", "succeeded", {"k": i}, i)


def test_a_run_that_adds_rows_of_the_same_labels_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nightly case: new jobs, labels as before. The rows are appended and
    the old ones are not read again."""
    d = _Dir(tmp_path)
    _uniform(d, range(5))
    assert compact_metadata(tmp_path) == 5
    before = d.metadata()

    def no_rewrite(*args: object) -> Any:
        raise AssertionError("rewrote the whole file")

    monkeypatch.setattr(dataset, "_write_rows", no_rewrite)
    _uniform(d, range(5, 8))
    assert compact_metadata(tmp_path) == 8
    after = d.metadata()
    assert after.startswith(before)
    assert [json.loads(x)["job_id"] for x in after.splitlines()[5:]] == [
        "j5",
        "j6",
        "j7",
    ]
    state = metadata_state.load(d.run.metadata_state)
    assert state is not None and state.rows == 8
    assert state.log.end == d.run.metadata_log.stat().st_size


@pytest.mark.parametrize(
    ("later", "why"),
    [
        ({"job_id": "j1", "status": "failed"}, "a drop"),
        ({"job_id": "n", "status": "succeeded", "meta": {"k": "text"}}, "a new kind"),
        ({"job_id": "n", "status": "succeeded", "meta": {"new": 1}}, "a new label"),
    ],
)
def test_what_an_append_cannot_give_is_rewritten(
    tmp_path: Path, later: dict[str, Any], why: str
) -> None:
    """A job redone (its old row must go), or a row that would change the
    columns every earlier row carries: the whole file is rewritten."""
    d = _Dir(tmp_path)
    _uniform(d, range(3))
    compact_metadata(tmp_path)
    if later["status"] == "succeeded":
        later = {**later, "prompt": "p", "files": ["images/n.png"]}
        (d.run.images / "n.png").write_bytes(_PNG)
    with d.run.ledger.open("ab") as fh:
        fh.write(encode_record(later))
    compact_metadata(tmp_path)
    compacted = d.metadata()
    write_metadata(tmp_path)
    assert d.metadata() == compacted, why


def test_a_metadata_file_replaced_by_hand_is_rewritten(tmp_path: Path) -> None:
    """Another file in its place (even of the same size and time) is never
    appended to."""
    d = _Dir(tmp_path)
    _uniform(d, range(3))
    compact_metadata(tmp_path)
    good = d.metadata()
    st = d.run.metadata.stat()
    d.run.metadata.write_bytes(good.replace(b'"j0"', b'"jX"'))
    os.utime(d.run.metadata, ns=(st.st_atime_ns, st.st_mtime_ns))
    _uniform(d, range(3, 4))
    assert compact_metadata(tmp_path) == 4
    assert b'"jX"' not in d.metadata() and d.metadata().startswith(good)


def test_non_finite_labels_are_json_text_and_rows_stay_strict_json(
    tmp_path: Path,
) -> None:
    """A ledger line written by hand with NaN or Infinity (which the ledger
    reader accepts): its column becomes JSON text, so every row still parses
    as strict JSON, which pyarrow needs."""
    d = _Dir(tmp_path)
    d.write("a", "succeeded", {"k": 1.5}, 1)
    png = d.run.images / "b-2.png"
    png.write_bytes(_PNG)
    with d.run.ledger.open("ab") as fh:
        fh.write(
            b'{"job_id":"b","status":"succeeded","prompt":"p","meta":{"k":NaN,'
            b'"m":Infinity},"files":["images/b-2.png"]}\n'
        )

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in metadata.jsonl")

    assert compact_metadata(tmp_path) == 2
    rows = [
        json.loads(line, parse_constant=refuse) for line in d.metadata().splitlines()
    ]
    assert {r["job_id"]: (r["meta_k"], r["meta_m"]) for r in rows} == {
        "a": ("1.5", None),
        "b": ("NaN", "Infinity"),
    }
