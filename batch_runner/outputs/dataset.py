"""A run directory as a dataset: `metadata.jsonl` for Hugging Face, WebDataset shards.

Both are built from each job's last ledger record when it says "succeeded",
one sample per image file on disk. The ledger is streamed, never held: a
million-line ledger costs one map of job-id hashes, not a million records; a
run's own metadata.jsonl is compacted from its metadata log, holding no per-job
map at all (`compact_metadata`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import quote

import msgspec

from batch_runner.outputs import metadata_log, metadata_state
from batch_runner.store.final_records import final_lines, numbered_final_records
from batch_runner.store.images import image_size, safe_relative, sniff_extension
from batch_runner.store.rundir import RunDir, atomic_write

log = logging.getLogger("batch_runner.outputs.dataset")

META_PREFIX = "meta_"
SHARD_PATTERN = "shard-{:06d}.tar"

_SHARD_RE = re.compile(r"shard-(\d{6})\.tar")
#: JPEG keeps its size in a frame header that can sit after large EXIF blocks
_HEAD_BYTES = 64 << 10
_INT64 = 2**63
_COPY_CHUNK = 1 << 20
# pyarrow's JSON reader turns every string of this shape into a timestamp (and
# renders it back as "2024-05-01 00:00:00"); a superset of its ISO-8601 forms.
_TIMESTAMP_LIKE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[Tt ][0-9:.,+\-Zz ]*)?")
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# msgspec, not json: 1.7 us against 6 us a row (one row per image, so a
# million at the end of a million-job run). It writes NaN as null where json
# raised; no row can hold one, as `_cell` writes every non-finite meta value
# as JSON text (pyarrow rejects NaN), and a row's other floats are finite.
_ROW_ENCODER = msgspec.json.Encoder()
#: the columns before the meta labels, in this order
CORE_COLUMNS = (
    "file_name",
    "job_id",
    "prompt",
    "prompt_extend",
    "seed",
    "resolution",
    "width",
    "height",
    "taskid",
    "sha256",
)


# -- images -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """One image file of a job; `index` is its place in the record's `files`."""

    file: str
    sha256: str
    size: int
    width: int | None
    height: int | None
    index: int = 0


def facts_from_bytes(file: str, data: bytes, index: int = 0) -> ImageFacts:
    size = image_size(data[:_HEAD_BYTES])
    return ImageFacts(
        file=file,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        width=size[0] if size else None,
        height=size[1] if size else None,
        index=index,
    )


def facts_from_file(path: Path, file: str, index: int = 0) -> ImageFacts:
    """Hash and measure a file without holding it whole in memory."""
    digest = hashlib.sha256()
    size = 0
    head = b""
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            if len(head) < _HEAD_BYTES:
                head += chunk[: _HEAD_BYTES - len(head)]
            digest.update(chunk)
            size += len(chunk)
    dims = image_size(head)
    return ImageFacts(
        file=file,
        sha256=digest.hexdigest(),
        size=size,
        width=dims[0] if dims else None,
        height=dims[1] if dims else None,
        index=index,
    )


def _facts_from_record(entry: object, file: str, index: int) -> ImageFacts | None:
    if not isinstance(entry, dict):
        return None
    sha, size = entry.get("sha256"), entry.get("bytes")
    width, height = entry.get("width"), entry.get("height")
    if not isinstance(sha, str) or not isinstance(size, int):
        return None
    return ImageFacts(
        file=file,
        sha256=sha,
        size=size,
        width=width if isinstance(width, int) else None,
        height=height if isinstance(height, int) else None,
        index=index,
    )


def record_files(record: Mapping[str, Any]) -> list[str]:
    files = record.get("files")
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


def image_facts(
    run_dir: Path,
    record: Mapping[str, Any],
    exists: Callable[[str], bool] | None = None,
) -> tuple[list[ImageFacts], list[str]]:
    """The facts of each of a record's files that is on disk, and those that are not.

    Facts come from the record's `images` when it has them (a stat, no read);
    records written before `images` existed have their files hashed. `exists`
    answers "is this file there" instead of the disk (a run in a bucket).
    """
    known: dict[str, dict[str, Any]] = {}
    images = record.get("images")
    if isinstance(images, list):
        for entry in images:
            if isinstance(entry, dict) and isinstance(entry.get("file"), str):
                known[entry["file"]] = entry
    present: list[ImageFacts] = []
    missing: list[str] = []
    root = os.fspath(run_dir)
    for index, file in enumerate(record_files(record)):
        rel = safe_relative(file)
        if rel is None or not (
            exists(rel) if exists else os.path.isfile(os.path.join(root, rel))
        ):
            missing.append(file)
            continue
        facts = _facts_from_record(known.get(file), rel, index)
        if facts is None:
            try:
                facts = facts_from_file(run_dir / rel, rel, index)
            except OSError:
                missing.append(file)
                continue
        present.append(facts)
    return present, missing


# -- samples ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One image of a succeeded job with everything known about it."""

    job_id: str
    prompt: str
    #: None when the job never set it (and for no ledger before that was kept)
    prompt_extend: bool | None
    seed: int | None
    resolution: str
    taskid: str | None
    meta: Mapping[str, Any]
    image: ImageFacts
    #: how many files the job has: a key needs the index only when several
    count: int = 1

    def core(self) -> dict[str, Any]:
        """The fixed columns, in `CORE_COLUMNS` order."""
        return {
            "file_name": self.image.file,
            "job_id": self.job_id,
            "prompt": self.prompt,
            "prompt_extend": self.prompt_extend,
            "seed": self.seed,
            "resolution": self.resolution,
            "width": self.image.width,
            "height": self.image.height,
            "taskid": self.taskid,
            "sha256": self.image.sha256,
        }

    @property
    def key(self) -> str:
        return sample_key(self.job_id, self.image.index if self.count > 1 else None)


def samples_of(
    record: Mapping[str, Any], images: Iterable[ImageFacts]
) -> Iterator[Sample]:
    """One Sample per image of a succeeded record. Pure."""
    seed = record.get("seed")
    taskid = record.get("taskid")
    meta = record.get("meta")
    extend = record.get("prompt_extend")
    count = len(record_files(record))
    for image in images:
        yield Sample(
            job_id=str(record["job_id"]),
            prompt=str(record.get("prompt") or ""),
            prompt_extend=extend if isinstance(extend, bool) else None,
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            resolution=str(record.get("resolution") or ""),
            taskid=taskid if isinstance(taskid, str) and taskid else None,
            meta=meta if isinstance(meta, dict) else {},
            image=image,
            count=max(count, 1),
        )


@dataclass(slots=True)
class _Scan:
    """Files of succeeded jobs left out: how many, and the first few names."""

    missing: list[str] = field(default_factory=list)
    missing_count: int = 0


def _run_samples(
    run_dir: Path,
    ledger_path: Path,
    scan: _Scan,
    lines: Collection[int] | None = None,
    on_disk: Callable[[str], bool] | None = None,
) -> Iterator[Sample]:
    """Every sample of a run directory on disk, in ledger order; files that are not
    on disk are counted in `scan` instead. `lines` from `final_lines`, if known."""
    records = (r for _, r in numbered_final_records(ledger_path, lines=lines))
    for _, sample in _samples(run_dir, records, scan, on_disk):
        yield sample


def _samples(
    run_dir: Path,
    records: Iterable[Mapping[str, Any]],
    scan: _Scan,
    on_disk: Callable[[str], bool] | None = None,
) -> Iterator[tuple[tuple[int, int], Sample]]:
    """(key, sample) of each image on disk of these succeeded records, the key
    being (the record's position, the image's index): the same for the same
    record stream read twice. Files not on disk are counted in `scan`."""
    for position, record in enumerate(records):
        present, missing = image_facts(run_dir, record, on_disk)
        scan.missing_count += len(missing)
        scan.missing.extend(missing[: max(0, 5 - len(scan.missing))])
        for sample in samples_of(record, present):
            yield (position, sample.image.index), sample


def _warn_missing(run_dir: Path, scan: _Scan) -> None:
    if scan.missing_count:
        log.warning(
            "%s: %d image file(s) of succeeded jobs are not on disk (or lie outside "
            "the run directory) and were left out, e.g. %s",
            run_dir,
            scan.missing_count,
            ", ".join(scan.missing),
        )


# -- metadata.jsonl -----------------------------------------------------------


def meta_column(name: str) -> str:
    """The metadata.jsonl column of meta label `name`; injective.

    Hugging Face treats any column ending in `_file_name(s)` as a path to load,
    so such names get a trailing "_"; names already ending in "_" get one too,
    which keeps the mapping reversible (strip one "_" from any name ending so).
    """
    column = META_PREFIX + name
    if column.endswith(("_", "_file_name", "_file_names")):
        column += "_"
    return column


def value_kind(value: object) -> str:
    """The JSON type a meta value keeps in Arrow: bool, int, float, str, or json for
    what must become JSON text (nested, out of int64, non-finite, timestamp-like)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -_INT64 <= value < _INT64 else "json"
    if isinstance(value, float):
        return "float" if math.isfinite(value) else "json"
    if isinstance(value, str):
        return "json" if _TIMESTAMP_LIKE.fullmatch(value) else "str"
    return "json"


def _column_type(kinds: set[str]) -> str:
    if len(kinds) <= 1:
        return next(iter(kinds), "null")
    if kinds == {"int", "float"}:
        return "float"
    return "json"


class MetadataSchema:
    """The columns of metadata.jsonl, learnt from every row before any is written.

    Why top-level `meta_<name>` columns: they can be filtered and grouped on
    directly (`ds.filter(lambda r: r["meta_style"] == "noir")`) and show up as
    columns in the dataset viewer, where one JSON string would need parsing.
    They load reliably because of how Hugging Face reads metadata.jsonl: it takes
    the features from the first 10 MB only and casts every later block to them. So
    every row carries every column (null where a job lacks the label); a column
    keeps a native type only when all its values share it (ints and floats become
    floats); otherwise, and for nested or timestamp-like values, every value of
    the column is JSON text (`json.loads` gives back the exact value); and the rows
    that first give a column a non-null value are written first (`observe`), so
    no column is typed from nulls alone.
    """

    def __init__(self) -> None:
        self._kinds: dict[str, set[str]] = {}
        self._seen: set[str] = set()
        #: every core column has had a value: later rows only add meta columns
        self._core_seen = False
        #: grows whenever what `rows` would write for some row changes: a new
        #: column, a column's first value, a value of another kind
        self.version = 0

    def observe(self, sample: Sample) -> bool:
        """Learn from one row; True if it is the first with some column non-null."""
        first = False
        if not self._core_seen:
            for column, value in sample.core().items():
                if value is not None and column not in self._seen:
                    self._seen.add(column)
                    first = True
            self._core_seen = self._seen.issuperset(CORE_COLUMNS)
        for name, value in sample.meta.items():
            kinds = self._kinds.get(name)
            if kinds is None:
                kinds = self._kinds[name] = set()
                self.version += 1
            if value is None:
                continue
            kind = value_kind(value)
            if kind not in kinds:
                kinds.add(kind)
                self.version += 1
            column = meta_column(name)
            if column not in self._seen:
                self._seen.add(column)
                first = True
        if first:
            self.version += 1
        return first

    def export(self) -> tuple[dict[str, list[str]], list[str]]:
        """What it has learnt, as JSON-ready lists (`restore` takes them back)."""
        kinds = {name: sorted(kinds) for name, kinds in sorted(self._kinds.items())}
        return kinds, sorted(self._seen)

    @classmethod
    def restore(
        cls, kinds: Mapping[str, Iterable[str]], seen: Iterable[str]
    ) -> MetadataSchema:
        """A schema that has learnt what `export` gave."""
        schema = cls()
        schema._kinds = {name: set(values) for name, values in kinds.items()}
        schema._seen = set(seen)
        schema._core_seen = schema._seen.issuperset(CORE_COLUMNS)
        return schema

    @property
    def empty(self) -> bool:
        """Nothing learnt yet: the first row it sees will fix the columns."""
        return not self._kinds and not self._seen

    def columns(self) -> dict[str, str]:
        """meta label -> column type: bool, int, float, str, json or null."""
        return {name: _column_type(self._kinds[name]) for name in sorted(self._kinds)}

    def rows(self, samples: Iterable[Sample]) -> Iterator[dict[str, Any]]:
        cells = self.cells()
        for sample in samples:
            yield _row(sample, cells)

    def cells(self) -> list[tuple[str, str, str]]:
        """(meta label, column, column type) of each meta column, in order."""
        return [
            (name, meta_column(name), kind) for name, kind in self.columns().items()
        ]


def _row(sample: Sample, cells: list[tuple[str, str, str]]) -> dict[str, Any]:
    row = sample.core()
    meta = sample.meta
    for name, column, kind in cells:
        row[column] = _cell(meta.get(name), kind)
    return row


class SchemaChanged(Exception):
    """A row changed the columns after rows were written (`rows_in_one_pass`)."""


def rows_in_one_pass(
    samples: Iterable[Sample], schema: MetadataSchema | None = None
) -> Iterator[dict[str, Any]]:
    """`metadata_rows`, learning the columns from the first row alone, or
    SchemaChanged at the first row that would change them.

    Most runs give every job the same labels of the same kinds: their first row
    fixes the columns, no later row is moved to the front, and the rows can be
    written as they are read, in one pass instead of two. A row that adds a
    column, gives one its first value or a value of a new kind stops this;
    the caller then starts over with the two passes, which see every row
    before writing any. With `schema` (one restored from an earlier
    compaction, which it goes on learning), the columns are that schema's and
    the first row must not change them either: the rows can be appended to
    what it wrote. Pure.
    """
    schema = MetadataSchema() if schema is None else schema
    iterator = iter(samples)
    if schema.empty:
        for first in iterator:
            schema.observe(first)
            version = schema.version
            cells = schema.cells()
            yield _row(first, cells)
            break
        else:
            return
    else:
        version = schema.version
        cells = schema.cells()
    for sample in iterator:
        schema.observe(sample)
        if schema.version != version:
            raise SchemaChanged(sample.job_id)
        yield _row(sample, cells)


def _cell(value: object, kind: str) -> object:
    if value is None:
        return None
    if kind == "json":
        return _JSON.encode(value)
    if kind == "float":
        return float(value)  # type: ignore[arg-type]
    return value


def metadata_rows(samples: Iterable[Sample]) -> list[dict[str, Any]]:
    """The rows of metadata.jsonl for these samples, in file order. Pure; holds
    the rows in memory (`write_metadata` streams instead)."""
    schema = MetadataSchema()
    firsts: list[Sample] = []
    rest: list[Sample] = []
    for sample in samples:
        (firsts if schema.observe(sample) else rest).append(sample)
    return list(schema.rows([*firsts, *rest]))


def write_metadata(
    run_dir: Path,
    ledger_path: Path | None = None,
    *,
    present: Callable[[str], bool] | None = None,
) -> int:
    """Rebuild `run_dir/metadata.jsonl` (Hugging Face ImageFolder form) from the
    ledger; returns the number of rows.

    One row per image file, on disk, of each job whose last record is
    succeeded; files not on disk are left out and logged as a warning. Rows are
    in ledger order except for the few rows moved to the front for the schema
    (see MetadataSchema). The file is replaced atomically.

    Load with `datasets.load_dataset("imagefolder", data_files={"train":
    "DIR/metadata.jsonl"})`; `data_dir=DIR` also works unless an image name
    starts with train/test/validation/..., which `datasets` takes as split names.
    `present` says which files exist when they are not on this disk (a bucket).

    Finding each job's last record holds a map of every job id (as 64-bit
    hashes); a run keeps its metadata log instead and calls `compact_metadata`.
    """
    paths = RunDir(run_dir, ledger=ledger_path)
    lines = final_lines(paths.ledger)

    def records() -> Iterator[dict[str, Any]]:
        return (r for _, r in numbered_final_records(paths.ledger, lines=lines))

    # this file does not come from the metadata log: the next run rewrites it
    metadata_state.forget(paths.metadata_state)
    return _write_rows(run_dir, records, present)[0]


def compact_metadata(
    run_dir: Path,
    ledger_path: Path | None = None,
    *,
    present: Callable[[str], bool] | None = None,
) -> int:
    """`write_metadata` from the run's metadata log (`outputs.metadata_log`),
    caught up with the ledger first: the same file, with memory that does not
    grow with the number of jobs (the log is streamed once or twice, and only the
    jobs redone by --rerun-changed are held).

    When the file is the one the last compaction wrote and the log has only
    grown since, by rows that change no column, those rows are appended instead
    (`outputs.metadata_state`): a run's end then costs what its own rows cost,
    not what every row of the directory does. Call it holding the run's lock.
    """
    paths = RunDir(run_dir, ledger=ledger_path)
    metadata_log.sync(paths.metadata_log, paths.ledger)
    try:
        log_end = paths.metadata_log.stat().st_size
    except FileNotFoundError:
        log_end = None
    if log_end is not None:
        appended = _append_rows(paths, log_end, present)
        if appended is not None:
            return appended
    metadata_state.forget(paths.metadata_state)
    rows, crc, schema = _write_rows(
        run_dir, lambda: metadata_log.records(paths.metadata_log), present
    )
    if log_end is not None:
        _save_state(paths, log_end, crc, rows, schema)
    return rows


def _append_rows(
    paths: RunDir, log_end: int, present: Callable[[str], bool] | None
) -> int | None:
    """Append the rows of the log's lines since the last compaction to
    metadata.jsonl and return how many rows it has; None when that cannot
    give what a rewrite would (see `metadata_state`)."""
    state = metadata_state.load(paths.metadata_state)
    if state is None or state.log.end > log_end:
        return None
    if not metadata_state.holds(state, paths.metadata_log, paths.metadata):
        return None
    if state.log.end == log_end:
        return state.rows
    records = metadata_log.records_between(paths.metadata_log, state.log.end, log_end)
    if records is None:
        return None
    schema = MetadataSchema.restore(state.kinds, state.seen)
    scan = _Scan()
    try:
        # a copy, not an append in place: readers still see the old file or
        # the new one, never a row cut in half
        with atomic_write(paths.metadata) as fh:
            out = _Summed(fh)
            with paths.metadata.open("rb") as old:
                while chunk := old.read(_COPY_CHUNK):
                    out.write(chunk)
            if out.crc != state.metadata.crc:
                raise _NotAsWritten(paths.metadata)
            samples = (s for _, s in _samples(paths.root, records, scan, present))
            out.write_rows(rows_in_one_pass(samples, schema))
    except (SchemaChanged, _NotAsWritten):
        return None
    _warn_missing(paths.root, scan)
    rows = state.rows + out.rows
    _save_state(paths, log_end, out.crc, rows, schema)
    return rows


def _save_state(
    paths: RunDir, log_end: int, crc: int, rows: int, schema: MetadataSchema
) -> None:
    kinds, seen = schema.export()
    metadata_state.save(
        paths.metadata_state,
        log_path=paths.metadata_log,
        log_end=log_end,
        metadata=paths.metadata,
        metadata_crc=crc,
        rows=rows,
        kinds=kinds,
        seen=seen,
    )


class _NotAsWritten(Exception):
    """metadata.jsonl is not the file the last compaction wrote."""


class _Summed:
    """metadata.jsonl being written: the crc32 of what was written to it, and
    how many rows."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.crc = 0
        self.rows = 0

    def write(self, data: bytes) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self._fh.write(data)

    def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.write(_ROW_ENCODER.encode(row) + b"\n")
            self.rows += 1


def _write_rows(
    run_dir: Path,
    records: Callable[[], Iterable[Mapping[str, Any]]],
    present: Callable[[str], bool] | None,
) -> tuple[int, int, MetadataSchema]:
    """Write metadata.jsonl from the succeeded records `records()` gives (the
    same ones each call), in one pass when the first row fixes the columns
    (`rows_in_one_pass`), else in two: pass 1 learns the columns and picks the
    rows to write first; pass 2 writes. Reading twice beats holding a million
    rows; images are only stat'ed. Returns the rows written, the file's crc32
    and the columns learnt."""
    scan = _Scan()
    schema = MetadataSchema()
    try:
        with atomic_write(RunDir(run_dir).metadata) as fh:
            out = _Summed(fh)
            samples = (s for _, s in _samples(run_dir, records(), scan, present))
            out.write_rows(rows_in_one_pass(samples, schema))
    except SchemaChanged:
        pass
    else:
        _warn_missing(run_dir, scan)
        return out.rows, out.crc, schema
    schema = MetadataSchema()
    firsts: dict[tuple[int, int], Sample] = {}
    for key, sample in _samples(run_dir, records(), _Scan(), present):
        if schema.observe(sample):
            firsts[key] = sample
    scan = _Scan()
    rest = (
        sample
        for key, sample in _samples(run_dir, records(), scan, present)
        if key not in firsts
    )
    with atomic_write(RunDir(run_dir).metadata) as fh:
        out = _Summed(fh)
        out.write_rows(schema.rows(itertools.chain(firsts.values(), rest)))
    _warn_missing(run_dir, scan)
    return out.rows, out.crc, schema


# -- WebDataset ---------------------------------------------------------------


def sample_key(job_id: str, index: int | None = None) -> str:
    """The WebDataset key of a job's image: no "." (WebDataset splits the key from
    the extension at the first dot) and no "/", and injective.

    The job id is percent-encoded (RFC 3986 with "." and "~" escaped too), which
    leaves the usual ids (letters, digits, "_", "-") readable and can be decoded
    back; "~<index>" marks an image of a multi-image job, and "~" never appears
    in an encoded id, so `sample_key("a", 0)` cannot equal any id's key.
    """
    if not job_id:
        raise ValueError("empty job id")
    key = quote(job_id, safe="").replace(".", "%2E").replace("~", "%7E")
    return key if index is None else f"{key}~{index}"


def sample_json(sample: Sample) -> dict[str, Any]:
    return {
        "job_id": sample.job_id,
        "prompt": sample.prompt,
        "prompt_extend": sample.prompt_extend,
        "seed": sample.seed,
        "resolution": sample.resolution,
        "width": sample.image.width,
        "height": sample.image.height,
        "taskid": sample.taskid,
        "sha256": sample.image.sha256,
        "meta": dict(sample.meta),
        "file_name": sample.image.file,
    }


def _extension(file: str, data: bytes) -> str:
    suffix = PurePosixPath(file).suffix.lower().lstrip(".")
    return suffix or (sniff_extension(data[:16]) or ".bin").lstrip(".")


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # fixed owner, mode and mtime so the same run always gives the same bytes
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _members(
    run_dir: Path, ledger: Path, scan: _Scan
) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """(key, [(extension, bytes), ...]) of each sample, read one at a time."""
    for sample in _run_samples(run_dir, ledger, scan):
        try:
            data = (run_dir / sample.image.file).read_bytes()
        except OSError as exc:
            scan.missing_count += 1
            log.warning("%s: cannot read %s: %s", run_dir, sample.image.file, exc)
            continue
        actual = facts_from_bytes(sample.image.file, data, sample.image.index)
        if actual.sha256 != sample.image.sha256:
            # the JSON must describe the bytes in the tar, whatever the ledger says
            log.warning(
                "%s: %s differs from the ledger's sha256; exporting the file",
                run_dir,
                sample.image.file,
            )
        exported = dataclasses.replace(sample, image=actual)
        body = _JSON.encode(sample_json(exported)).encode("utf-8")
        ext = _extension(sample.image.file, data)
        yield sample.key, [(ext, data), ("json", body)]


def export_webdataset(
    run_dir: Path,
    out_dir: Path,
    shard_size: int,
    ledger_path: Path | None = None,
) -> list[Path]:
    """Write the run's samples as WebDataset shards `out_dir/shard-000000.tar`, ...
    of at most `shard_size` samples each; returns the shards in order.

    A sample is `<key>.<ext>` (the image) and `<key>.json` (job_id, prompt,
    params, size, sha256, meta, file_name), keys from `sample_key`. Ledger order
    and fixed tar metadata make a rerun byte-identical; each shard is a temp
    file until complete; shards left from an earlier, longer export are removed
    so out_dir holds exactly this export. The JSON's `sha256` is that of the
    bytes in the tar; a file that no longer matches the ledger is logged.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ledger = RunDir(run_dir, ledger=ledger_path).ledger
    out_dir.mkdir(parents=True, exist_ok=True)
    scan = _Scan()
    written: list[Path] = []
    members = _members(run_dir, ledger, scan)
    # the shard's first sample is taken here and the rest inside, so no shard
    # is ever opened for zero samples
    for first in members:
        shard = out_dir / SHARD_PATTERN.format(len(written))
        rest = itertools.islice(members, shard_size - 1)
        with (
            atomic_write(shard) as fh,
            tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for key, parts in itertools.chain([first], rest):
                for ext, data in parts:
                    _add_member(tar, f"{key}.{ext}", data)
        written.append(shard)
    _remove_stale_shards(out_dir, len(written))
    _warn_missing(run_dir, scan)
    return written


def _remove_stale_shards(out_dir: Path, count: int) -> None:
    for path in out_dir.iterdir():
        match = _SHARD_RE.fullmatch(path.name)
        if match and int(match.group(1)) >= count:
            path.unlink()
