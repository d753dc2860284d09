"""Dataset outputs of a run: metadata.jsonl loaded by Hugging Face `datasets`, and
WebDataset tar shards read back with tarfile."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch_runner.cli.main import main
from batch_runner.models import JobSpec, JobStatus
from batch_runner.outputs.dataset import (
    CORE_COLUMNS,
    ImageFacts,
    Sample,
    SchemaChanged,
    export_webdataset,
    meta_column,
    metadata_rows,
    rows_in_one_pass,
    sample_key,
    write_metadata,
)
from batch_runner.simulator.png import render_png
from batch_runner.store.images import image_stem
from batch_runner.store.ledger import encode_record, latest_records, make_record

FAST = ["--no-progress", "--poll-interval", "0.02", "--mock-generation-time", "0.01"]

#: labels that differ between jobs in keys and in value types, a repeat, a failure
MANIFEST: list[dict[str, Any]] = [
    {"id": "cat.v1", "prompt": "A cat", "seed": 1, "meta": {"style": "noir", "n": 3}},
    {
        "id": "dog",
        "prompt": "A dog",
        "meta": {"style": "pastel", "n": 2.5, "tags": ["a", "b"]},
    },
    {"prompt": "A bird", "repeat": 2, "meta": {"shot": "2024-05-01", "ok": True}},
    {"id": "broken", "prompt": "[fail] nothing", "meta": {"style": 7, "extra": 1}},
]


def run_cli(tmp_path: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    """Run a JSONL manifest through the real CLI with --mock; returns the run dir."""
    manifest = tmp_path / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / name
    failing = any("[fail]" in r["prompt"] for r in rows)
    assert main(["run", str(manifest), "--mock", "--out", str(out), *FAST]) == (
        1 if failing else 0
    )
    return out


class FakeRun:
    """A run directory written by hand, for ledgers the CLI cannot produce."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        (run_dir / "images").mkdir(parents=True, exist_ok=True)
        self.ledger = run_dir / "ledger.jsonl"

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        with self.ledger.open("ab") as fh:
            fh.write(encode_record(record))
        return dict(record)

    def succeed(
        self,
        job_id: str,
        prompt: str = "a prompt",
        *,
        seed: int | None = None,
        meta: Mapping[str, Any] | None = None,
        count: int = 1,
        legacy: bool = False,
        size: tuple[int, int] = (16, 8),
        variant: int = 0,
        old_names: bool = False,
    ) -> dict[str, Any]:
        """Write the job's images (content depends on `variant`) and its record;
        `old_names` numbers several images `<id>-<k>` as run dirs once did."""
        job = JobSpec(job_id, prompt, "1:1", seed, None, dict(meta or {}))
        files: list[str] = []
        images: list[dict[str, Any]] = []
        for i in range(count):
            stem = image_stem(job_id, i, count)
            if old_names and count > 1:
                stem = f"{job_id}-{i}"
            rel = f"images/{stem}.png"
            data = render_png(prompt, variant, i, *size)
            (self.dir / rel).write_bytes(data)
            files.append(rel)
            images.append(
                {
                    "file": rel,
                    "sha256": _sha(data),
                    "bytes": len(data),
                    "width": size[0],
                    "height": size[1],
                }
            )
        record = make_record(
            job, JobStatus.SUCCEEDED, taskid=f"t-{job_id}", files=files, msg="ok"
        )
        if not legacy:
            record["images"] = images
        return self.append(record)

    def fail(self, job_id: str, prompt: str = "a prompt", **kw: Any) -> dict[str, Any]:
        job = JobSpec(job_id, prompt, "1:1", kw.get("seed"), None, kw.get("meta", {}))
        return self.append(make_record(job, JobStatus.FAILED, msg="no"))


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """`datasets`, offline, with its caches under tmp_path."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import datasets  # type: ignore[import-untyped]

    # the flags are read once at import, possibly before this fixture ran
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    yield datasets


def load(hf: ModuleType, tmp_path: Path, **where: Any) -> Any:
    return hf.load_dataset(
        "imagefolder", split="train", cache_dir=str(tmp_path / "hf-cache"), **where
    )


def decode(cell: Any, kind: str) -> Any:
    """A metadata cell back to the ledger's meta value."""
    return json.loads(cell) if kind == "string" and cell is not None else cell


# -- metadata.jsonl -------------------------------------------------------------


@pytest.mark.integration
def test_imagefolder_loads_a_cli_run_with_captions_and_meta(
    tmp_path: Path, hf: ModuleType
) -> None:
    """HF ImageFolder loads a real run: one row per succeeded image, meta as columns."""
    run = run_cli(tmp_path, "run", MANIFEST)
    latest = latest_records(run / "ledger.jsonl")
    succeeded = {j: r for j, r in latest.items() if r["status"] == "succeeded"}
    assert set(succeeded) == {"cat.v1", "dog", *[j for j in latest if "-" in j]}
    assert latest["broken"]["status"] == "failed"

    assert write_metadata(run) == 4
    ds = load(hf, tmp_path, data_dir=str(run))

    assert len(ds) == sum(len(r["files"]) for r in succeeded.values())
    assert ds.column_names == [
        "image",
        *CORE_COLUMNS[1:],
        *sorted(meta_column(k) for k in ("style", "n", "tags", "shot", "ok")),
    ]
    types = {name: f.dtype for name, f in ds.features.items() if name != "image"}
    # the failed job's int `style` and its `extra` label do not reach the schema
    assert types["meta_style"] == "string"
    assert types["meta_n"] == "float64"
    assert types["meta_ok"] == "bool"
    # nested and date-like values are JSON text, so Arrow never guesses their type
    assert types["meta_tags"] == types["meta_shot"] == "string"
    for row in ds:
        record = succeeded[row["job_id"]]
        assert row["prompt"] == record["prompt"]
        assert row["seed"] == record["seed"]
        assert row["resolution"] == record["resolution"]
        assert row["taskid"] == record["taskid"]
        assert row["image"].size == (row["width"], row["height"])
        for name in ("style", "n", "ok"):
            assert row[meta_column(name)] == record["meta"].get(name)
        for name in ("tags", "shot"):
            assert decode(row[meta_column(name)], "string") == record["meta"].get(name)


def test_data_files_form_loads_ids_that_look_like_split_names(
    tmp_path: Path, hf: ModuleType
) -> None:
    """The documented data_files form loads ids that data_dir takes for splits."""
    fake = FakeRun(tmp_path / "run")
    fake.succeed("test-1", "first", meta={"k": "v"})
    fake.succeed("train_2", "second")
    assert write_metadata(fake.dir) == 2
    ds = load(hf, tmp_path, data_files={"train": str(fake.dir / "metadata.jsonl")})
    assert ds["job_id"] == ["test-1", "train_2"]
    assert ds["meta_k"] == ["v", None]


def test_late_first_values_still_load_beyond_the_first_10mb(
    tmp_path: Path, hf: ModuleType
) -> None:
    """Columns first non-null past the 10 MB HF reads for the schema: rows go first."""
    fake = FakeRun(tmp_path / "run")
    data = render_png("x", 0, 0, 16, 8)
    (fake.dir / "images" / "shared.png").write_bytes(data)
    long_prompt = "p" * 4000
    n = 3000  # 3000 rows of 4 KB: the late row sits past 10 MB
    with fake.ledger.open("wb") as fh:
        for i in range(n):
            late = i == n - 1
            job = JobSpec(
                f"job{i}",
                long_prompt,
                "1:1",
                7 if late else None,
                None,
                {"late": "yes"} if late else {"early": i},
            )
            rel = f"images/job{i}.png"
            os.link(fake.dir / "images" / "shared.png", fake.dir / rel)
            record = make_record(job, JobStatus.SUCCEEDED, taskid="t", files=[rel])
            record["images"] = [
                {"file": rel, "sha256": _sha(data), "bytes": len(data)}
                | {"width": 16, "height": 8}
            ]
            fh.write(encode_record(record))
    assert write_metadata(fake.dir) == n
    with (fake.dir / "metadata.jsonl").open() as fh:
        first_ids = [json.loads(next(fh))["job_id"] for _ in range(3)]
    assert first_ids == ["job0", f"job{n - 1}", "job1"]
    assert (fake.dir / "metadata.jsonl").stat().st_size > 11 << 20

    ds = load(hf, tmp_path, data_files={"train": str(fake.dir / "metadata.jsonl")})
    ds = ds.remove_columns("image")
    assert len(ds) == n
    assert ds[1]["seed"] == 7 and ds[1]["meta_late"] == "yes"
    assert ds[n - 1]["meta_early"] == n - 2 and ds[n - 1]["seed"] is None


def _sample(meta: Mapping[str, Any], job_id: str = "j", seed: int | None = 1) -> Sample:
    image = ImageFacts(f"images/{job_id}.png", "0" * 64, 10, 4, 4)
    return Sample(job_id, "p", False, seed, "1:1", "t", meta, image)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1, 2], [1, 2]),
        ([1, 2.5], [1.0, 2.5]),
        ([True, None], [True, None]),
        (["a", "b"], ["a", "b"]),
        ([1, "1"], ["1", '"1"']),
        ([True, 1], ["true", "1"]),
        ([{"a": 1}, [1]], ['{"a":1}', "[1]"]),
        (["2024-05-01", "x"], ['"2024-05-01"', '"x"']),
        ([2**63, 1], [str(2**63), "1"]),
        ([float("inf"), 1.0], ["Infinity", "1.0"]),
    ],
)
def test_meta_column_types(values: list[Any], expected: list[Any]) -> None:
    """One Arrow type per column: native when all values share it, else JSON text."""
    rows = metadata_rows([_sample({"k": v}, f"j{i}") for i, v in enumerate(values)])
    assert [r["meta_k"] for r in rows] == expected
    assert [type(c) for c in expected if c is not None] == [
        type(r["meta_k"]) for r in rows if r["meta_k"] is not None
    ]


def test_every_row_has_every_column_and_first_values_lead() -> None:
    """Rows share one key set; rows with a column's first value go first."""
    samples = [
        _sample({"a": 1}, "j0", seed=None),
        _sample({"a": 2}, "j1", seed=None),
        _sample({"b": "x"}, "j2", seed=None),
        _sample({}, "j3", seed=5),
    ]
    rows = metadata_rows(samples)
    assert [r["job_id"] for r in rows] == ["j0", "j2", "j3", "j1"]
    assert {tuple(r) for r in rows} == {(*CORE_COLUMNS, "meta_a", "meta_b")}
    assert rows[1]["meta_a"] is None and rows[1]["meta_b"] == "x"


_META_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False),
    st.sampled_from(["a", "noir", "2024-05-01"]),
    st.lists(st.integers(), max_size=2),
)


@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.sampled_from("abc"), _META_VALUES, max_size=3),
            st.one_of(st.none(), st.integers(0, 9)),
        ),
        max_size=12,
    )
)
def test_one_pass_writes_what_two_passes_write_or_gives_up(
    rows: list[tuple[dict[str, Any], int | None]],
) -> None:
    """The one-pass writer gives exactly `metadata_rows`' rows, or stops with
    SchemaChanged before the caller's file is used; never other rows."""
    samples = [_sample(meta, f"j{i}", seed) for i, (meta, seed) in enumerate(rows)]
    try:
        got = list(rows_in_one_pass(samples))
    except SchemaChanged:
        return
    assert got == metadata_rows(samples)


@given(
    st.sampled_from([1, 2.5, "noir", True, [1, 2], "2024-05-01", None]),
    st.integers(1, 30),
)
def test_one_pass_holds_when_every_row_has_the_same_labels(
    value: Any, count: int
) -> None:
    """The common case, every job with the same labels of one kind, never needs
    the second pass."""
    samples = [_sample({"k": value, "n": i}, f"j{i}") for i in range(count)]
    assert list(rows_in_one_pass(samples)) == metadata_rows(samples)


@pytest.mark.parametrize(
    "later",
    [{"k": 1, "extra": "x"}, {"k": 2.5}, {"k": "text"}, {"k": 1, "n": None}],
)
def test_one_pass_gives_up_when_a_later_row_changes_the_columns(
    later: dict[str, Any],
) -> None:
    """A new label, a value of a new kind, or a label first seen later."""
    samples = [_sample({"k": 1}, "j0"), _sample({"k": 2}, "j1"), _sample(later, "j2")]
    with pytest.raises(SchemaChanged):
        list(rows_in_one_pass(samples))


@pytest.mark.integration
def test_compaction_falls_back_to_two_passes(tmp_path: Path) -> None:
    """A run whose last job brings a new label: metadata.jsonl as if rebuilt
    from the ledger, the row with the label's first value moved to the front."""
    manifest = tmp_path / "mixed.jsonl"
    jobs = [("a", {"k": 1}), ("b", {"k": 2}), ("c", {"k": 3, "late": "x"})]
    manifest.write_text(
        "".join(json.dumps({"id": i, "prompt": i, "meta": m}) + "\n" for i, m in jobs)
    )
    out = tmp_path / "out"
    # one at a time, so the ledger holds a, b, c in that order
    argv = ["run", str(manifest), "--mock", "--out", str(out), "--concurrency", "1"]
    assert main([*argv, *FAST]) == 0
    compacted = (out / "metadata.jsonl").read_bytes()
    rows = [json.loads(line) for line in compacted.splitlines()]
    assert [r["job_id"] for r in rows] == ["a", "c", "b"]
    assert [r["meta_late"] for r in rows] == [None, "x", None]
    assert write_metadata(out) == 3
    assert (out / "metadata.jsonl").read_bytes() == compacted


def test_meta_columns_never_read_as_file_columns() -> None:
    """Labels ending in _file_name(s) would be loaded as images by HF: renamed."""
    assert meta_column("style") == "meta_style"
    assert meta_column("x_file_name") == "meta_x_file_name_"
    assert meta_column("file_names") == "meta_file_names_"
    assert meta_column("a_") == "meta_a__"


@given(st.text(), st.text())
def test_meta_column_is_injective(a: str, b: str) -> None:
    """Two labels never share a column."""
    assert (meta_column(a) == meta_column(b)) == (a == b)


def test_last_record_decides_and_gaps_are_skipped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Last record decides; missing files logged and skipped; old records hashed."""
    fake = FakeRun(tmp_path / "run")
    fake.succeed("redone")
    fake.fail("redone")  # a later failure (--retry-failed gone wrong) wins
    fake.fail("retried")
    fake.succeed("retried")
    fake.succeed("old", legacy=True, size=(24, 12))
    fake.succeed("gone")
    (fake.dir / "images" / "gone.png").unlink()
    outside = make_record(
        JobSpec("outside", "p"), JobStatus.SUCCEEDED, files=["../elsewhere/x.png"]
    )
    fake.append(outside)
    spaced = fake.succeed("spaced")
    fake.fail("spaced")
    with fake.ledger.open("ab") as fh:
        # another writer's layout (spaces, other key order) is parsed as JSON
        fh.write(json.dumps(dict(reversed(spaced.items()))).encode() + b"\n")
        fh.write(b'{"job_id": "torn", "status": "succ')

    with caplog.at_level(logging.WARNING, logger="batch_runner.outputs.dataset"):
        assert write_metadata(fake.dir) == 3
    assert "2 image file(s)" in caplog.text and "images/gone.png" in caplog.text
    rows = [
        json.loads(x)
        for x in (fake.dir / "metadata.jsonl").read_text().split("\n")
        if x
    ]
    assert [r["job_id"] for r in rows] == ["retried", "old", "spaced"]
    old = (fake.dir / "images" / "old.png").read_bytes()
    assert rows[1]["sha256"] == _sha(old)
    assert (rows[1]["width"], rows[1]["height"]) == (24, 12)
    assert sorted(p.name for p in fake.dir.iterdir()) == [
        "images",
        "ledger.jsonl",
        "metadata.jsonl",
    ]


def test_metadata_reads_no_image_when_the_ledger_has_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `images` in the ledger, metadata is built from stat alone."""
    fake = FakeRun(tmp_path / "run")
    fake.succeed("a", count=2)
    fake.succeed("b")

    def no_read(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an image was read")

    monkeypatch.setattr("batch_runner.outputs.dataset.facts_from_file", no_read)
    assert write_metadata(fake.dir) == 3


# -- WebDataset -----------------------------------------------------------------


def read_shard(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        out = []
        for info in tar.getmembers():
            fh = tar.extractfile(info)
            assert fh is not None
            out.append((info, fh.read()))
        return out


def test_export_webdataset_samples_keys_and_shards(tmp_path: Path) -> None:
    """Image+json per image, unique dot-free keys, at most shard_size per shard."""
    fake = FakeRun(tmp_path / "run")
    records = [
        fake.succeed("a.b", "first", seed=3, meta={"k": [1, 2]}),
        fake.succeed("a_b", "second"),
        fake.succeed("a%2Eb", "third"),
        fake.succeed("multi", "several", count=2),
    ]
    fake.fail("failed")
    out = tmp_path / "wds"

    shards = export_webdataset(fake.dir, out, shard_size=2)

    assert [p.name for p in shards] == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]
    members = [m for shard in shards for m in read_shard(shard)]
    per_shard = [len(read_shard(s)) // 2 for s in shards]
    assert per_shard == [2, 2, 1]
    names = [info.name for info, _ in members]
    keys = [n.split(".", 1)[0] for n in names]
    assert names == [f"{k}.{e}" for k in dict.fromkeys(keys) for e in ("png", "json")]
    assert all("." not in k and "/" not in k for k in keys)
    assert len(set(keys)) == 5
    for info, _ in members:
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (
            0,
            0,
            0,
            "",
            "",
        )
        assert info.mode == 0o644

    samples = [
        json.loads(data) for info, data in members if info.name.endswith(".json")
    ]
    images = [data for info, data in members if info.name.endswith(".png")]
    expected = [(r, i) for r in records for i in range(len(r["files"]))]
    assert [s["job_id"] for s in samples] == ["a.b", "a_b", "a%2Eb", "multi", "multi"]
    for sample, image, (record, i) in zip(samples, images, expected, strict=True):
        assert image == (fake.dir / record["files"][i]).read_bytes()
        assert sample == {
            "job_id": record["job_id"],
            "prompt": record["prompt"],
            "prompt_extend": None,
            "seed": record["seed"],
            "resolution": "1:1",
            "width": 16,
            "height": 8,
            "taskid": record["taskid"],
            "sha256": _sha(image),
            "meta": record["meta"],
            "file_name": record["files"][i],
        }
    assert list(dict.fromkeys(keys))[-2:] == ["multi~0", "multi~1"]
    assert sample_key("multi", 0) == "multi~0" and sample_key("a.b") == "a%2Eb"


@pytest.mark.integration
def test_export_webdataset_is_byte_identical_and_replaces_old_shards(
    tmp_path: Path,
) -> None:
    """A rerun gives the same bytes; a shorter export removes the extra old shards."""
    run = run_cli(tmp_path, "run", MANIFEST)
    out = tmp_path / "wds"
    first = [p.read_bytes() for p in export_webdataset(run, out, shard_size=1)]
    assert len(first) == 4
    again = [p.read_bytes() for p in export_webdataset(run, out, shard_size=1)]
    assert again == first

    shards = export_webdataset(run, out, shard_size=3)
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in shards]
    assert [len(read_shard(s)) for s in shards] == [6, 2]
    assert export_webdataset(tmp_path / "empty", tmp_path / "none", 5) == []


@given(
    st.text(min_size=1),
    st.none() | st.integers(0, 10_000),
    st.text(min_size=1),
    st.none() | st.integers(0, 10_000),
)
def test_sample_key_is_injective_and_dot_free(
    a: str, i: int | None, b: str, j: int | None
) -> None:
    """Keys never hold '.' or '/', decode back to (job id, index), so never collide."""
    key = sample_key(a, i)
    assert "." not in key and "/" not in key
    encoded, _, index = key.partition("~")
    assert (unquote(encoded), int(index) if index else None) == (a, i)
    assert (sample_key(a, i) == sample_key(b, j)) == ((a, i) == (b, j))


def test_interrupted_export_leaves_no_partial_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure mid-shard leaves complete shards only, and no temp file."""
    fake = FakeRun(tmp_path / "run")
    for n in range(5):
        fake.succeed(f"j{n}")
    real = tarfile.TarFile.addfile
    calls = 0

    def flaky(self: tarfile.TarFile, info: tarfile.TarInfo, fh: Any = None) -> None:
        nonlocal calls
        calls += 1
        if calls == 7:  # the 4th sample, in the second shard
            raise OSError("disk full")
        real(self, info, fh)

    monkeypatch.setattr(tarfile.TarFile, "addfile", flaky)
    out = tmp_path / "wds"
    with pytest.raises(OSError, match="disk full"):
        export_webdataset(fake.dir, out, shard_size=3)
    assert [p.name for p in out.iterdir()] == ["shard-000000.tar"]
    assert len(read_shard(out / "shard-000000.tar")) == 6


def test_tar_members_are_readable_bytes(tmp_path: Path) -> None:
    """The exported JSON is UTF-8 and keeps non-ASCII prompts and meta as written."""
    fake = FakeRun(tmp_path / "run")
    fake.succeed("uni", "Чай ☕", meta={"ключ": "значение"})
    (shard,) = export_webdataset(fake.dir, tmp_path / "wds", 10)
    (_, body) = next(m for m in read_shard(shard) if m[0].name.endswith(".json"))
    sample = json.load(io.BytesIO(body))
    assert sample["prompt"] == "Чай ☕" and sample["meta"] == {"ключ": "значение"}
