"""Job keys and the compact structures built on them answer exactly like the
id strings they replace, the fast readers exactly like the plain ones."""

from __future__ import annotations

import io
import string
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_runner.errors import ManifestError
from batch_runner.manifest import keys
from batch_runner.manifest.identity import derive_job_id, expand_repeat
from batch_runner.manifest.keys import (
    DERIVED_LIMIT,
    WIDE_TAG,
    is_derived_key,
    job_key,
    key_id,
)
from batch_runner.manifest.params import JobParams
from batch_runner.manifest.reader import (
    KeyBlock,
    _expanded,
    _keyed,
    validate_manifest,
)
from batch_runner.models import JobSpec, JobStatus
from batch_runner.store.jobmap import KeyedMap
from batch_runner.store.ledger import (
    ResumeState,
    encode_record,
    make_record,
    replay,
    replay_file,
)

_hex16 = st.text(alphabet="0123456789abcdef", min_size=16, max_size=16)
_ids = st.one_of(
    _hex16,
    st.builds(lambda h, k: f"{h}-{k}", _hex16, st.integers(0, 20000)),
    st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1),
    st.text(min_size=1, max_size=20),
)


@given(st.lists(_ids, max_size=40))
def test_distinct_ids_have_distinct_keys(ids: list[str]) -> None:
    """Keys of distinct ids differ (exactly so for derived forms)."""
    assert len({job_key(i) for i in ids}) == len(set(ids))


@given(_hex16, st.integers(0, 9999))
def test_derived_keys_are_the_ids_own_value(base: str, copy: int) -> None:
    """A derived id's key is its value, and spells the id back."""
    assert job_key(base) == int(base, 16) < DERIVED_LIMIT
    assert key_id(job_key(base), None) == base
    copy_id = f"{base}-{copy}"
    assert is_derived_key(job_key(copy_id))
    assert key_id(job_key(copy_id), None) == copy_id


@pytest.mark.parametrize(
    "job_id",
    ["0123456789ABCDEF", "0x23456789abcdef", "0123456789abcde_", " 123456789abcdef",
     "0123456789abcdef-01", "0123456789abcdef-+1", "0123456789abcdef-99999", "cat"],
)  # fmt: skip
def test_other_ids_get_wide_keys(job_id: str) -> None:
    """Ids int() would read but that are not of derived form are hashed apart."""
    assert job_key(job_id) >= WIDE_TAG
    assert not is_derived_key(job_key(job_id))


@given(st.lists(st.tuples(st.sampled_from(["put", "drop"]), _ids)))
def test_keyed_map_answers_like_a_dict(ops: list[tuple[str, str]]) -> None:
    """A KeyedMap gives back what a dict of ids would."""
    model: dict[str, int] = {}
    mapped: KeyedMap[int] = KeyedMap()
    for n, (op, job_id) in enumerate(ops):
        if op == "put":
            model[job_id] = n
            mapped.put(job_key(job_id), job_id, n)
        else:
            model.pop(job_id, None)
            mapped.discard(job_key(job_id))
    assert mapped == model and sorted(mapped) == sorted(model)
    for _, job_id in ops:
        assert mapped.get(job_id) == model.get(job_id)


_statuses = st.sampled_from(list(JobStatus))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "0123456789abcdef"]),
                          _statuses, st.booleans())))  # fmt: skip
def test_resume_state_answers_like_sets_of_ids(
    events: list[tuple[str, JobStatus, bool]],
) -> None:
    """The compact resume state says of every id what str sets would."""
    lines = []
    last: dict[str, JobStatus] = {}
    for n, (job_id, status, has_task) in enumerate(events):
        taskid = f"t{n}" if has_task or status is JobStatus.SUBMITTED else None
        job = JobSpec(job_id=job_id, prompt="p")
        files = [f"images/{job_id}.png"] if status is JobStatus.SUCCEEDED else None
        urls = ["http://x/1.png"] if status is JobStatus.GENERATED else None
        lines.append(
            encode_record(
                make_record(job, status, taskid=taskid, urls=urls, files=files)
            )
        )
        last[job_id] = status
    state = replay(lines)
    done = {j for j, s in last.items() if s is JobStatus.SUCCEEDED}
    assert state.succeeded == done and len(state.succeeded) == len(done)
    for job_id in ("a", "b", "0123456789abcdef", "c"):
        assert (job_id in state.succeeded) == (job_id in done)
        assert state.status_of(job_id) is last.get(job_id)
    assert set(state.submitted) == {
        j for j, s in last.items() if s is JobStatus.SUBMITTED
    }


# --- the ledger read in blocks equals the ledger read line by line ------------

_good = st.builds(
    lambda j, s, t: encode_record(
        make_record(JobSpec(job_id=j, prompt="p"), s, taskid=t, files=["f"])
    ),
    st.sampled_from(["0123456789abcdef", "fedcba9876543210", "named"]),
    _statuses,
    st.sampled_from([None, "t1", "t2"]),
)
_odd = st.sampled_from(
    [
        b"\n",
        b"  \n",
        b'{"job_id":"x","status":"weird"}\n',
        b'{"job_id":"0123456789abcdef","status":"succeeded","files":["f"]}'
        b'{"job_id":"fedcba9876543210","status":"submitted","taskid":"t"}\n',
        b'{"job_id":"0123456789abcdef",\n',
        b'"status":"submitted","taskid":"t"}\n',
        b'{"job_id":"named","status":"succeeded","files":[]}\r\n',
        b"[1,2]\n",
        b'{"job_id":"a","status":"failed","seed":NaN}\n',
    ]
)


def _file_lines(blob: bytes) -> list[bytes]:
    return io.BytesIO(blob).readlines()


def _same_state(a: ResumeState, b: ResumeState) -> None:
    assert dict(a.jobs.items()) == dict(b.jobs.items())
    assert dict(a.submitted) == dict(b.submitted)
    assert dict(a.failed) == dict(b.failed)
    assert dict(a.generated) == dict(b.generated)
    assert (a.records, a.warnings) == (b.records, b.warnings)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_good, _odd), max_size=60), st.booleans())
def test_block_reading_equals_line_reading(lines: list[bytes], torn: bool) -> None:
    """Whatever the lines (two objects on one, one across two, junk, blanks,
    a torn tail), reading in blocks folds what reading line by line does."""
    blob = b"".join(lines)
    if torn and blob:
        blob = blob[:-3]
    _same_state(replay_file(io.BytesIO(blob)), replay(_file_lines(blob)))


def test_block_reading_spans_many_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny blocks (and one long line) read the same as line by line."""
    from batch_runner.store import ledger

    monkeypatch.setattr(ledger, "_BLOCK_BYTES", 64)
    lines = [
        encode_record(
            make_record(
                JobSpec(job_id=derive_job_id(f"p{i}", "1:1", i, None), prompt="x" * i),
                JobStatus.SUCCEEDED if i % 3 else JobStatus.SUBMITTED,
                taskid="t",
                files=["f"],
            )
        )
        for i in range(0, 300, 7)
    ]
    blob = b"".join(lines) + b"junk\n" + b"".join(lines[:3])
    _same_state(replay_file(io.BytesIO(blob)), replay(_file_lines(blob)))


# --- the CSV read for planning equals the plain read --------------------------


def _reference(path: Path) -> list[tuple[int, int, str | None, JobParams | None]]:
    out = []
    for row, job_id, seed, explicit in _expanded(str(path)):
        params = (
            JobParams(row.prompt, row.resolution, seed, row.prompt_extend, row.line)
            if explicit
            else None
        )
        out.append((row.line, job_key(job_id), job_id if explicit else None, params))
    return out


def _fast(path: Path) -> list[tuple[int, int, str | None, JobParams | None]]:
    out: list[tuple[int, int, str | None, JobParams | None]] = []
    for item in _keyed(str(path)):
        if isinstance(item, KeyBlock):
            out.extend(
                (line, key, None, None)
                for line, key in enumerate(item.keys, start=item.first_line)
            )
        else:
            out.append(item[:4])
    return out


def _outcome(read: object, path: Path) -> object:
    try:
        return read(path)  # type: ignore[operator]
    except ManifestError as err:
        return str(err)


_cell = st.sampled_from(
    ["a cat", " ", "", "x y", '"q, uoted"', '"multi\nline"', "tab\there", "b\\s",
     "7", "007", "-1", "99999999999", "2147483647", "1e3", "yes", "No", "maybe",
     "16:9", "512x512", "3", "0", "ID_1", "id.2", "CON", "Ünï"]
)  # fmt: skip
_layouts = st.sampled_from(
    [
        ("prompt",),
        ("prompt", "seed"),
        ("seed", "prompt", "meta.k"),
        ("prompt", "seed", "meta.k"),
        ("id", "prompt", "seed"),
        ("prompt", "resolution", "prompt_extend", "repeat"),
        ("prompt", "seed", "repeat"),
    ]
)


def csv_lines(
    layout: tuple[str, ...], rows: list[list[str]], data: st.DataObject
) -> list[str]:
    """A header and rows of drawn cells, some padded or cut to the header's width."""
    width = len(layout)
    lines = [",".join(layout)]
    for cells in rows:
        if data.draw(st.booleans()):
            cells = (cells + ["a prompt"] * width)[:width]
        lines.append(",".join(cells))
    return lines


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=_layouts,
    rows=st.lists(st.lists(_cell, min_size=0, max_size=5), max_size=12),
    newline=st.sampled_from(["\n", "\r\n"]),
    data=st.data(),
)
def test_fast_csv_reader_equals_the_plain_one(
    layout: tuple[str, ...],
    rows: list[list[str]],
    newline: str,
    data: st.DataObject,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Every job (line, key, id, parameters) or the very same error, whatever
    the rows: quotes, blanks, odd seeds, wrong widths, repeat, CRLF."""
    lines = csv_lines(layout, rows, data)
    path = tmp_path_factory.mktemp("csv") / "m.csv"
    path.write_text(newline.join(lines) + newline, encoding="utf-8")
    assert _outcome(_fast, path) == _outcome(_reference, path)


def test_plain_blocks_are_read_in_one_go(tmp_path: Path) -> None:
    """A large plain CSV is read as key blocks, with the keys of derived ids."""
    path = tmp_path / "m.csv"
    rows = [f"prompt {i},{i},v{i % 3}" for i in range(5000)]
    path.write_text("prompt,seed,meta.k\n" + "\n".join(rows) + "\n")
    items = list(_keyed(str(path)))
    assert all(isinstance(item, KeyBlock) for item in items)
    assert _fast(path) == _reference(path)


# --- colliding keys never merge two jobs, nor stop a manifest -----------------


@pytest.fixture
def tiny_hash(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every id that is not of derived form gets one of two keys."""
    monkeypatch.setattr(keys, "wide_hash", lambda job_id: len(job_id) % 2)
    yield


_explicit = st.lists(
    st.text(alphabet="aAbB0-", min_size=1, max_size=4), min_size=1, max_size=12
)


@settings(max_examples=150, deadline=None)
@given(_explicit)
def test_manifest_checks_are_exact_under_colliding_keys(ids: list[str]) -> None:
    """With keys that collide all the time, a manifest is accepted, or refused
    with the same error, exactly as with the real keys."""
    text = "id,prompt\n" + "".join(f"{i},p{n}\n" for n, i in enumerate(ids))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.csv"
        path.write_text(text)
        real = _outcome(lambda p: validate_manifest(p).jobs, path)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(keys, "wide_hash", lambda job_id: len(job_id) % 2)
            tiny = _outcome(lambda p: validate_manifest(p).jobs, path)
    assert tiny == real
    folded = [i.lower() for i in ids]
    if len(set(folded)) == len(ids):
        assert real == len(ids)
    else:
        assert isinstance(real, str) and "job id" in real


def test_repeat_copies_keep_exact_keys(tiny_hash: None, tmp_path: Path) -> None:
    """Derived ids never use the hash: copies of `repeat` stay apart."""
    path = tmp_path / "m.csv"
    path.write_text("prompt,repeat\na,3\nb,2\na,3\n")
    summary = validate_manifest(path)
    assert (summary.jobs, summary.duplicates_skipped) == (5, 3)
    base = derive_job_id("a", "1024*1024", None, None)
    assert [job_id for job_id, _ in expand_repeat(base, None, 3)] == [
        key_id(job_key(f"{base}-{k}"), None) for k in range(3)
    ]


_small_keys = st.integers(0, DERIVED_LIMIT - 1)
_any_keys = st.one_of(_small_keys, st.integers(DERIVED_LIMIT, WIDE_TAG * 2))


@given(
    st.dictionaries(_any_keys, st.integers(1, 4), max_size=40),
    st.sets(_any_keys, max_size=40),
)
def test_frozen_codes_answer_like_the_dict(
    codes: dict[int, int], keys_: set[int]
) -> None:
    """Packed into a sorted array, the codes answer every question as before."""
    from batch_runner.store.jobmap import JobCodes

    jobs = JobCodes()
    for key, code in codes.items():
        jobs.set(key, code)
    jobs.freeze()
    probe = keys_ | set(codes)
    assert all(jobs.get(k) == codes.get(k) for k in probe)
    assert dict(jobs.items()) == codes and len(jobs) == len(codes)
    assert jobs.by_code() == Counter(codes.values())
    small_in = {k: c for k, c in codes.items() if k < DERIVED_LIMIT and k in keys_}
    assert jobs.count_in(keys_) == Counter(small_in.values())
    for code in range(1, 5):
        assert jobs.count(code) == list(codes.values()).count(code)
        assert set(jobs.keys_in(keys_, code)) == {
            k for k, c in small_in.items() if c == code
        }


def test_mmap_threshold_is_fixed_on_glibc() -> None:
    """On Linux with glibc the threshold is set (twice is harmless); elsewhere
    nothing changes."""
    import platform
    import sys

    from batch_runner.cli.heap import keep_mmap_threshold

    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_mmap_threshold() is expected
    assert keep_mmap_threshold() is expected
