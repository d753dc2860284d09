"""Read a manifest (YAML, CSV or JSONL) into validated, expanded, deduplicated jobs.

Two passes share one reader: `validate_manifest` reads every row and raises the
first problem before anything is submitted; `iter_jobs` then streams the jobs.
CSV and JSONL are streamed row by row so a million-row manifest costs only the
set of id digests used for duplicate detection; YAML is composed whole (it is
meant for hand-written manifests).

Every problem is a `ManifestError` naming the file, the line and the field.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import enum
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, NoReturn, TextIO

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from batch_runner.errors import ManifestError
from batch_runner.identity import (
    MAX_JOB_ID_LENGTH,
    MAX_SEED,
    derive_job_id,
    expand_repeat,
    normalize_resolution,
    validate_job_id,
)
from batch_runner.models import JobSpec

MAX_PROMPT_CHARS = 8192
MAX_REPEAT = 10_000
DEFAULT_RESOLUTION = "1024*1024"
#: values (scalars, list items, mapping entries) allowed in one job's meta;
#: stops a YAML alias bomb from exploding into the ledger
MAX_META_VALUES = 10_000
#: detailed duplicate warnings kept; the rest are counted in one summary line
MAX_DUPLICATE_WARNINGS = 100

JOB_KEYS = ("prompt", "id", "resolution", "seed", "prompt_extend", "repeat", "meta")
DEFAULT_KEYS = ("resolution", "seed", "prompt_extend", "repeat", "meta")
CSV_COLUMNS = ("prompt", "id", "resolution", "seed", "prompt_extend", "repeat")
META_PREFIX = "meta."

_YAML_SUFFIXES = (".yaml", ".yml")
_CSV_SUFFIXES = (".csv",)
_JSONL_SUFFIXES = (".jsonl", ".ndjson")

_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"
_NULL_TAG = "tag:yaml.org,2002:null"

_TRUE_WORDS = frozenset({"1", "true", "yes"})
_FALSE_WORDS = frozenset({"0", "false", "no"})
#: longer digit strings are out of range for every integer field
_MAX_INT_DIGITS = 12


@dataclass(frozen=True, slots=True)
class ManifestSummary:
    """What `validate_manifest` found: how many jobs will run, and what it skipped."""

    path: str
    #: distinct jobs that will run, after `repeat` expansion and deduplication
    jobs: int
    duplicates_skipped: int
    #: human-readable, each naming file:line
    warnings: tuple[str, ...]


def validate_manifest(
    path: str | os.PathLike[str], on_job: Callable[[str], None] | None = None
) -> ManifestSummary:
    """Read and check every row of the manifest; raise the first ManifestError.

    `on_job` is called with the id of each distinct job, in order, so a caller
    can plan in the same pass instead of reading a large manifest again.
    """
    where = os.fspath(path)
    ids = _IdSet()
    jobs = skipped = duplicate_rows = 0
    duplicates: list[tuple[int, str]] = []
    last_duplicate_line = 0
    for row, job_id, _, explicit in _expanded(where):
        seen = ids.add(job_id, explicit)
        if seen is _Seen.NEW:
            jobs += 1
            if on_job is not None:
                on_job(job_id)
        elif seen is _Seen.SAME_JOB:
            skipped += 1
            # One warning per manifest row, not per copy of a repeated job.
            if row.line != last_duplicate_line:
                last_duplicate_line = row.line
                duplicate_rows += 1
                if len(duplicates) < MAX_DUPLICATE_WARNINGS:
                    duplicates.append((row.line, job_id))
        else:
            _raise_clash(where, job_id, row.line)
    if jobs == 0:
        raise ManifestError("manifest has no jobs", path=where)
    return ManifestSummary(
        path=where,
        jobs=jobs,
        duplicates_skipped=skipped,
        warnings=_duplicate_warnings(where, duplicates, duplicate_rows),
    )


def iter_jobs(path: str | os.PathLike[str]) -> Iterator[JobSpec]:
    """Yield the manifest's jobs in order, expanded and deduplicated (first wins).

    Meant to run after `validate_manifest`, but still raises ManifestError, and
    nothing else, on bad input.
    """
    where = os.fspath(path)
    ids = _IdSet()
    empty = True
    for row, job_id, seed, explicit in _expanded(where):
        seen = ids.add(job_id, explicit)
        if seen is _Seen.NEW:
            empty = False
            yield JobSpec(
                job_id=job_id,
                prompt=row.prompt,
                resolution=row.resolution,
                seed=seed,
                prompt_extend=row.prompt_extend,
                meta=_own_meta(row),
                source=f"{where}:{row.line}",
            )
        elif seen is _Seen.CLASH:
            _raise_clash(where, job_id, row.line)
    if empty:
        raise ManifestError("manifest has no jobs", path=where)


def _own_meta(row: _Row) -> dict[str, Any]:
    """Give each job a meta dict no other job shares, so none can change another's."""
    if row.meta is None:
        return {}
    # A row's dict is already its own unless `repeat` hands it to several jobs.
    return row.meta if row.repeat is None else dict(row.meta)


# --- duplicates -------------------------------------------------------------


class _Seen(enum.Enum):
    NEW = "new"
    #: a derived id seen before: the same content, so it runs once
    SAME_JOB = "same job"
    #: an explicit id used twice, or an explicit id equal to a derived one
    CLASH = "clash"


class _IdSet:
    """The ids seen so far, as 64-bit digests rather than strings.

    Half the memory of the strings: about 70 MB for a million ids. The digest is
    the built-in (keyed SipHash) `hash()` where it is 64 bits wide, several
    times faster than hashlib, and 8 bytes of blake2b elsewhere; a set only
    has to agree with itself within one pass. A false match needs a 64-bit
    collision (about 3e-8 at a million jobs), and the error path re-reads the
    file comparing real ids.
    """

    __slots__ = ("_derived", "_explicit")

    def __init__(self) -> None:
        self._explicit: set[object] = set()
        self._derived: set[object] = set()

    def add(self, job_id: str, explicit: bool) -> _Seen:
        digest = _digest(job_id)
        if digest in self._explicit:
            return _Seen.CLASH
        if digest in self._derived:
            return _Seen.CLASH if explicit else _Seen.SAME_JOB
        (self._explicit if explicit else self._derived).add(digest)
        return _Seen.NEW


def _blake2b_digest(job_id: str) -> object:
    return hashlib.blake2b(job_id.encode(), digest_size=8).digest()


_digest: Callable[[str], object] = (
    hash if sys.hash_info.width >= 64 else _blake2b_digest
)


def _first_lines(where: str, job_ids: Iterable[str]) -> dict[str, int]:
    """Re-read the manifest to find the first line producing each of `job_ids`."""
    wanted = set(job_ids)
    found: dict[str, int] = {}
    if not wanted:
        return found
    for row, job_id, _, _ in _expanded(where):
        if job_id in wanted and job_id not in found:
            found[job_id] = row.line
            if len(found) == len(wanted):
                break
    return found


def _raise_clash(where: str, job_id: str, line: int) -> NoReturn:
    first = _first_lines(where, [job_id]).get(job_id)
    if first is None or first == line:
        # Only a 64-bit digest collision can get here.
        detail = "collides with an earlier job id"
    else:
        detail = f"is already used by the job on line {first}"
    raise ManifestError(
        f"duplicate job id {job_id!r}: it {detail}", path=where, line=line, field="id"
    )


def _duplicate_warnings(
    where: str, duplicates: list[tuple[int, str]], duplicate_rows: int
) -> tuple[str, ...]:
    firsts = _first_lines(where, (job_id for _, job_id in duplicates))
    warnings = [
        f"{where}:{line}: same prompt, resolution, seed and prompt_extend as "
        f"line {firsts.get(job_id, '?')} (job id {job_id}); it runs only once"
        for line, job_id in duplicates
    ]
    if duplicate_rows > len(duplicates):
        warnings.append(
            f"{where}: {duplicate_rows - len(duplicates)} more rows repeat "
            "earlier jobs and are skipped too"
        )
    return tuple(warnings)


# --- rows -> jobs -------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    """One manifest row after type checks and defaults, before `repeat`."""

    line: int
    prompt: str
    job_id: str | None = None
    resolution: str = DEFAULT_RESOLUTION
    seed: int | None = None
    prompt_extend: bool | None = None
    repeat: int | None = None
    meta: dict[str, Any] | None = None


def _expanded(where: str) -> Iterator[tuple[_Row, str, int | None, bool]]:
    """Yield `(row, job id, seed, id is explicit)` per job, before deduplication.

    No JobSpec here: building one costs more than the rest of a CSV row, and
    the validation pass never needs it.
    """
    for row in _read_rows(where):
        explicit = row.job_id is not None
        base_id = (
            row.job_id
            if row.job_id is not None
            else derive_job_id(row.prompt, row.resolution, row.seed, row.prompt_extend)
        )
        if row.repeat is None:
            yield row, base_id, row.seed, explicit
        else:
            for job_id, seed in _repeat_copies(row, row.repeat, base_id, where):
                yield row, job_id, seed, explicit


def _repeat_copies(
    row: _Row, repeat: int, base_id: str, where: str
) -> list[tuple[str, int]]:
    last_id = f"{base_id}-{repeat - 1}"
    if len(last_id) > MAX_JOB_ID_LENGTH:
        raise ManifestError(
            f"with repeat {repeat} the job id grows to {len(last_id)} "
            f"characters ({last_id!r}); at most {MAX_JOB_ID_LENGTH} are allowed",
            path=where,
            line=row.line,
            field="id",
        )
    try:
        return expand_repeat(base_id, row.seed, repeat)
    except ValueError as err:
        raise ManifestError(
            str(err), path=where, line=row.line, field="repeat"
        ) from None


# --- value checks shared by every format ----------------------------------------


def _kind(value: object) -> str:
    """Name a value's type the way a manifest author thinks of it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _check_prompt(value: object, where: str, line: int) -> str:
    if not isinstance(value, str):
        raise ManifestError(
            f"prompt must be a string, not {_kind(value)} (quote it)",
            path=where,
            line=line,
            field="prompt",
        )
    if not value or value.isspace():
        raise ManifestError("prompt is empty", path=where, line=line, field="prompt")
    if len(value) > MAX_PROMPT_CHARS:
        raise ManifestError(
            f"huge prompt: {len(value)} characters; at most {MAX_PROMPT_CHARS} "
            "are allowed",
            path=where,
            line=line,
            field="prompt",
        )
    if not value.isascii() and not _is_utf8(value):
        raise ManifestError(
            "prompt contains an unpaired surrogate (a broken \\u escape?)",
            path=where,
            line=line,
            field="prompt",
        )
    # Sent exactly as written: surrounding whitespace is the author's business.
    return value


def _is_utf8(text: str) -> bool:
    """Whether `text` holds no lone surrogates, which JSON escapes can produce."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_id(value: object, where: str, line: int) -> str:
    if not isinstance(value, str):
        raise ManifestError(
            f"id must be a string, not {_kind(value)} (quote it)",
            path=where,
            line=line,
            field="id",
        )
    try:
        return validate_job_id(value)
    except ValueError as err:
        raise ManifestError(str(err), path=where, line=line, field="id") from None


def _check_resolution(value: object, where: str, line: int) -> str:
    if not isinstance(value, str):
        raise ManifestError(
            f"resolution must be a string such as '1024*1024' or '16:9', "
            f"not {_kind(value)}",
            path=where,
            line=line,
            field="resolution",
        )
    try:
        return normalize_resolution(value)
    except ValueError as err:
        raise ManifestError(
            str(err), path=where, line=line, field="resolution"
        ) from None


def _check_int(
    value: object, where: str, line: int, field: str, low: int, high: int
) -> int:
    # bool is an int subclass, but `seed: true` is a mistake, not the seed 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(
            f"must be an integer, not {_kind(value)}",
            path=where,
            line=line,
            field=field,
        )
    if not low <= value <= high:
        raise ManifestError(
            f"must be between {low} and {high}, got {value}",
            path=where,
            line=line,
            field=field,
        )
    return value


def _check_seed(value: object, where: str, line: int) -> int:
    return _check_int(value, where, line, "seed", 0, MAX_SEED)


def _check_repeat(value: object, where: str, line: int) -> int:
    return _check_int(value, where, line, "repeat", 1, MAX_REPEAT)


def _check_prompt_extend(value: object, where: str, line: int) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ManifestError(
        f"must be true/false (or 1/0), not {_kind(value)}",
        path=where,
        line=line,
        field="prompt_extend",
    )


def _check_meta(value: object, where: str, line: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(
            f"meta must be a mapping of your own labels, not {_kind(value)}",
            path=where,
            line=line,
            field="meta",
        )
    problem = _json_problem(value)
    if problem is not None:
        raise ManifestError(problem, path=where, line=line, field="meta")
    return dict(value)


def _json_problem(meta: dict[Any, Any]) -> str | None:
    """Say why `meta` cannot be written to the JSON ledger unchanged, if it cannot."""
    # Iterative, with a budget: YAML aliases can nest deeply or multiply.
    stack: list[tuple[str, object]] = [("meta", meta)]
    budget = MAX_META_VALUES
    while stack:
        name, value = stack.pop()
        budget -= 1
        if budget < 0:
            return f"meta has more than {MAX_META_VALUES} values"
        if isinstance(value, str):
            if not value.isascii() and not _is_utf8(value):
                return f"{name} contains an unpaired surrogate"
            continue
        if value is None or isinstance(value, int | float):
            continue
        if isinstance(value, list):
            stack.extend((f"{name}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"{name}: key {key!r} must be a string"
                stack.append((f"{name}.{key}", item))
        else:
            return f"{name} is {_kind(value)}, which JSON cannot hold (quote it)"
    return None


_CHECKS: dict[str, Callable[[object, str, int], object]] = {
    "id": _check_id,
    "resolution": _check_resolution,
    "seed": _check_seed,
    "prompt_extend": _check_prompt_extend,
    "repeat": _check_repeat,
    "meta": _check_meta,
}


def _unknown_key(
    name: str, valid: Iterable[str], where: str, line: int | None, what: str = "field"
) -> ManifestError:
    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ManifestError(
        f"unknown {what} {name!r}{hint}", path=where, line=line, field=name
    )


_ROW_ATTRIBUTES = {
    "id": "job_id",
    "resolution": "resolution",
    "seed": "seed",
    "prompt_extend": "prompt_extend",
    "repeat": "repeat",
    "meta": "meta",
}

#: a field's value and the line it is on
_Fields = Mapping[str, tuple[object, int]]


def _checked(fields: _Fields, where: str) -> dict[str, object]:
    """Check every field but `prompt`; the keys must already be known."""
    return {
        key: _CHECKS[key](value, where, line)
        for key, (value, line) in fields.items()
        if key != "prompt"
    }


def _defaults_from(fields: _Fields, where: str) -> dict[str, object]:
    for key, (_, line) in fields.items():
        if key in ("prompt", "id"):
            raise ManifestError(
                f"{key!r} cannot have a default: every job needs its own",
                path=where,
                line=line,
                field=key,
            )
        if key not in DEFAULT_KEYS:
            raise _unknown_key(key, DEFAULT_KEYS, where, line)
    return _checked(fields, where)


def _row_from(
    fields: _Fields, line: int, defaults: Mapping[str, object], where: str
) -> _Row:
    for key, (_, key_line) in fields.items():
        if key not in JOB_KEYS:
            raise _unknown_key(key, JOB_KEYS, where, key_line)
    if "prompt" not in fields:
        raise ManifestError(
            "missing required field", path=where, line=line, field="prompt"
        )
    prompt, prompt_line = fields["prompt"]
    row = _Row(line=line, prompt=_check_prompt(prompt, where, prompt_line))
    checked = _checked(fields, where)
    for key, value in {**defaults, **checked}.items():
        setattr(row, _ROW_ATTRIBUTES[key], value)
    default_meta = defaults.get("meta")
    if isinstance(default_meta, dict):
        # A fresh dict per row: rows must never share a meta that one might change.
        job_meta = checked.get("meta")
        row.meta = {**default_meta, **(job_meta if isinstance(job_meta, dict) else {})}
    return row


# --- formats ------------------------------------------------------------------


def _read_rows(where: str) -> Iterator[_Row]:
    suffix = os.path.splitext(where)[1].lower()
    if suffix in _CSV_SUFFIXES:
        return _csv_rows(where)
    if suffix in _JSONL_SUFFIXES:
        return _jsonl_rows(where)
    if suffix in _YAML_SUFFIXES:
        return _yaml_rows(where)
    raise ManifestError(
        f"unknown manifest format {suffix or '(no extension)'!r}: use .yaml/.yml, "
        ".csv or .jsonl/.ndjson",
        path=where,
    )


def _open_binary(where: str) -> BinaryIO:
    try:
        return open(where, "rb")
    except OSError as err:
        raise _unreadable(err, where) from None


def _open_text(where: str) -> TextIO:
    try:
        # utf-8-sig drops a BOM so it cannot stick to the first column name;
        # newline="" lets csv see quoted line breaks as they are.
        return open(where, encoding="utf-8-sig", newline="")
    except OSError as err:
        raise _unreadable(err, where) from None


def _unreadable(err: OSError, where: str) -> ManifestError:
    return ManifestError(f"cannot open manifest: {err.strerror or err}", path=where)


def _decode_line(raw: bytes, where: str, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ManifestError(
            f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1})",
            path=where,
            line=line,
        ) from None


def _raise_first_bad_line(where: str) -> NoReturn:
    """Find the line a buffered UTF-8 decoder choked on, by decoding line by line."""
    with _open_binary(where) as stream:
        for line, raw in enumerate(stream, start=1):
            _decode_line(
                raw.removeprefix(codecs.BOM_UTF8) if line == 1 else raw, where, line
            )
    raise ManifestError("not UTF-8 text", path=where)


# CSV


@dataclass(frozen=True, slots=True)
class _CsvLayout:
    """Where each known column sits in a row; -1 when the header lacks it."""

    width: int
    prompt: int
    job_id: int
    resolution: int
    seed: int
    prompt_extend: int
    repeat: int
    meta: tuple[tuple[int, str], ...]


def _csv_layout(header: list[str], where: str, line: int) -> _CsvLayout:
    index: dict[str, int] = {}
    meta: list[tuple[int, str]] = []
    seen: set[str] = set()
    for i, raw_name in enumerate(header):
        name = raw_name.strip()
        if name in seen:
            raise ManifestError(
                "duplicate column", path=where, line=line, field=name or None
            )
        seen.add(name)
        if name in CSV_COLUMNS:
            index[name] = i
        elif name.startswith(META_PREFIX) and len(name) > len(META_PREFIX):
            meta.append((i, name[len(META_PREFIX) :]))
        elif not name:
            raise ManifestError(
                f"column {i + 1} has no name in the header", path=where, line=line
            )
        else:
            raise _unknown_key(
                name, (*CSV_COLUMNS, "meta.<name>"), where, line, what="column"
            )
    if "prompt" not in index:
        raise ManifestError(
            "missing required column", path=where, line=line, field="prompt"
        )
    return _CsvLayout(
        width=len(header),
        prompt=index["prompt"],
        job_id=index.get("id", -1),
        resolution=index.get("resolution", -1),
        seed=index.get("seed", -1),
        prompt_extend=index.get("prompt_extend", -1),
        repeat=index.get("repeat", -1),
        meta=tuple(meta),
    )


def _csv_int(cell: str, where: str, line: int, field: str, low: int, high: int) -> int:
    if cell.isdigit() and cell.isascii() and len(cell) <= _MAX_INT_DIGITS:
        value = int(cell)
        if low <= value <= high:
            return value
    text = cell.strip()
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()):
        raise ManifestError(
            f"must be a whole number, got {cell!r}", path=where, line=line, field=field
        )
    # Checking length first keeps int() away from its 4300-digit limit.
    if len(digits) > _MAX_INT_DIGITS:
        raise ManifestError(
            f"must be between {low} and {high}, got {text}",
            path=where,
            line=line,
            field=field,
        )
    return _check_int(int(text), where, line, field, low, high)


def _csv_bool(cell: str, where: str, line: int) -> bool:
    word = cell.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ManifestError(
        f"must be one of 0/1/true/false/yes/no, got {cell!r}",
        path=where,
        line=line,
        field="prompt_extend",
    )


def _csv_row(cells: list[str], layout: _CsvLayout, where: str, line: int) -> _Row:
    if len(cells) != layout.width:
        raise ManifestError(
            f"expected {layout.width} fields as in the header, found {len(cells)}",
            path=where,
            line=line,
        )
    prompt = cells[layout.prompt]
    if not prompt or prompt.isspace() or len(prompt) > MAX_PROMPT_CHARS:
        _check_prompt(prompt, where, line)
    row = _Row(line, prompt)
    # An empty (or, for numbers, blank) cell means the field is not set.
    if layout.job_id >= 0 and (cell := cells[layout.job_id]):
        row.job_id = _check_id(cell, where, line)
    if layout.resolution >= 0 and (cell := cells[layout.resolution].strip()):
        try:
            row.resolution = normalize_resolution(cell)
        except ValueError as err:
            raise ManifestError(
                str(err), path=where, line=line, field="resolution"
            ) from None
    if layout.seed >= 0 and (cell := cells[layout.seed].strip()):
        row.seed = _csv_int(cell, where, line, "seed", 0, MAX_SEED)
    if layout.prompt_extend >= 0 and (cell := cells[layout.prompt_extend].strip()):
        row.prompt_extend = _csv_bool(cell, where, line)
    if layout.repeat >= 0 and (cell := cells[layout.repeat].strip()):
        row.repeat = _csv_int(cell, where, line, "repeat", 1, MAX_REPEAT)
    if layout.meta:
        row.meta = {name: cells[i] for i, name in layout.meta if cells[i]}
    return row


def _csv_rows(where: str) -> Iterator[_Row]:
    with _open_text(where) as stream:
        try:
            yield from _csv_records(stream, where)
        except UnicodeDecodeError:
            _raise_first_bad_line(where)


def _csv_records(stream: TextIO, where: str) -> Iterator[_Row]:
    reader = csv.reader(stream, strict=True)
    layout: _CsvLayout | None = None
    start = 1
    try:
        for cells in reader:
            # csv yields [] for a blank line.
            if cells:
                if layout is None:
                    layout = _csv_layout(cells, where, start)
                else:
                    yield _csv_row(cells, layout, where, start)
            start = reader.line_num + 1
    except csv.Error as err:
        raise _csv_error(err, where, start, reader.line_num) from None


def _csv_error(err: csv.Error, where: str, start: int, end: int) -> ManifestError:
    message = str(err)
    if "unexpected end of data" in message:
        message = "unterminated quoted field (a '\"' is never closed)"
    elif end > start:
        message = f"malformed CSV record (lines {start}-{end}): {message}"
    else:
        message = f"malformed CSV record: {message}"
    return ManifestError(message, path=where, line=start)


# JSONL


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _NonStandardNumber(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _reject_constant(name: str) -> NoReturn:
    raise _NonStandardNumber(name)


def _parse_json_line(text: str, where: str, line: int) -> object:
    try:
        return json.loads(
            text, object_pairs_hook=_unique_pairs, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as err:
        message = f"invalid JSON: {err.msg} (column {err.colno})"
    except _DuplicateKey as err:
        raise ManifestError(
            "duplicate key", path=where, line=line, field=err.key
        ) from None
    except _NonStandardNumber as err:
        message = f"invalid JSON: {err} is not a JSON number"
    except RecursionError:
        message = "invalid JSON: nested too deeply"
    raise ManifestError(message, path=where, line=line)


def _jsonl_rows(where: str) -> Iterator[_Row]:
    with _open_binary(where) as stream:
        for line, raw in enumerate(stream, start=1):
            text = _decode_line(
                raw.removeprefix(codecs.BOM_UTF8) if line == 1 else raw, where, line
            )
            if not text.strip():
                continue
            value = _parse_json_line(text, where, line)
            if isinstance(value, str):
                yield _row_from({"prompt": (value, line)}, line, {}, where)
            elif isinstance(value, dict):
                fields = {key: (item, line) for key, item in value.items()}
                yield _row_from(fields, line, {}, where)
            else:
                raise ManifestError(
                    f"each line must be a JSON object (or a prompt string), "
                    f"not {_kind(value)}",
                    path=where,
                    line=line,
                )


# YAML


def _node_line(node: Node) -> int:
    mark = node.start_mark
    return mark.line + 1 if mark is not None else 0


def _yaml_rows(where: str) -> Iterator[_Row]:
    root = _compose(where)
    if root is None:
        return
    constructor = SafeConstructor()
    jobs, defaults = _yaml_top(root, where, constructor)
    if jobs is None:
        return
    for item in jobs.value:
        yield _yaml_job(item, defaults, where, constructor)


def _compose(where: str) -> Node | None:
    with _open_binary(where) as stream:
        raw = stream.read().removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ManifestError(
            f"not UTF-8 text (byte 0x{raw[err.start]:02x})", path=where, line=line
        ) from None
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        raise _yaml_error(err, where) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        raise ManifestError(
            f"invalid YAML: character {_codepoint(err.character)} is not allowed",
            path=where,
            line=line,
        ) from None
    except yaml.YAMLError as err:
        raise ManifestError(f"invalid YAML: {err}", path=where) from None
    except RecursionError:
        raise ManifestError("invalid YAML: nested too deeply", path=where) from None


def _codepoint(character: object) -> str:
    # PyYAML reports the character as its code point for text input.
    if isinstance(character, str) and len(character) == 1:
        character = ord(character)
    return f"U+{character:04X}" if isinstance(character, int) else repr(character)


def _yaml_error(
    err: yaml.MarkedYAMLError, where: str, field: str | None = None
) -> ManifestError:
    mark = err.problem_mark
    message = ", ".join(part for part in (err.context, err.problem) if part)
    # An error found at the end of the file (an unclosed bracket or quote) is
    # better placed where the unfinished construct began.
    if err.context_mark is not None and (
        mark is None or (mark.buffer is not None and mark.index >= len(mark.buffer) - 1)
    ):
        mark = err.context_mark
        message += " (reached the end of the file)"
    return ManifestError(
        f"invalid YAML: {message or 'cannot be read'}",
        path=where,
        line=mark.line + 1 if mark is not None else None,
        field=field,
    )


def _yaml_items(
    node: MappingNode, where: str, constructor: SafeConstructor
) -> dict[str, tuple[Node, int]]:
    """Return a mapping's `key: (value node, key line)`, with `<<` merges applied."""
    explicit = sum(1 for key, _ in node.value if key.tag != _MERGE_TAG)
    if explicit != len(node.value):
        try:
            constructor.flatten_mapping(node)
        except yaml.MarkedYAMLError as err:
            raise _yaml_error(err, where) from None
    # flatten_mapping puts merged pairs first, so explicit keys override them;
    # only explicit keys can be duplicates.
    pairs: list[tuple[Node, Node]] = node.value
    merged_count = len(pairs) - explicit
    items: dict[str, tuple[Node, int]] = {}
    explicit_names: set[str] = set()
    for position, (key, value) in enumerate(pairs):
        line = _node_line(key)
        if not isinstance(key, ScalarNode):
            raise ManifestError(
                "keys must be plain names, not lists or mappings",
                path=where,
                line=line,
            )
        name = str(key.value)
        if position >= merged_count:
            if name in explicit_names:
                raise ManifestError("duplicate key", path=where, line=line, field=name)
            explicit_names.add(name)
        items[name] = (value, line)
    return items


def _yaml_value(
    key: str, node: Node, where: str, line: int, constructor: SafeConstructor
) -> object:
    if (
        key == "resolution"
        and isinstance(node, ScalarNode)
        and node.tag == _INT_TAG
        and ":" in node.value
    ):
        # YAML 1.1 reads an unquoted 16:9 as the base-60 integer 969.
        return str(node.value)
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as err:
        raise _yaml_error(err, where, field=key) from None
    except RecursionError:
        raise ManifestError(
            "nested too deeply", path=where, line=line, field=key
        ) from None


def _yaml_fields(
    node: MappingNode, valid: Iterable[str], where: str, constructor: SafeConstructor
) -> dict[str, tuple[object, int]]:
    items = _yaml_items(node, where, constructor)
    valid = tuple(valid)
    for name, (_, line) in items.items():
        if name not in valid and name not in ("prompt", "id"):
            raise _unknown_key(name, valid, where, line)
    return {
        name: (_yaml_value(name, value, where, line, constructor), line)
        for name, (value, line) in items.items()
    }


def _yaml_top(
    root: Node, where: str, constructor: SafeConstructor
) -> tuple[SequenceNode | None, dict[str, object]]:
    if isinstance(root, SequenceNode):
        return root, {}
    if not isinstance(root, MappingNode):
        raise ManifestError(
            "a YAML manifest must be a list of jobs, or a mapping with 'jobs' "
            "(and optionally 'defaults')",
            path=where,
            line=_node_line(root),
        )
    items = _yaml_items(root, where, constructor)
    for name, (_, line) in items.items():
        if name not in ("defaults", "jobs"):
            raise _unknown_key(name, ("defaults", "jobs"), where, line, what="key")
    if "jobs" not in items:
        raise ManifestError(
            "missing the list of jobs", path=where, line=_node_line(root), field="jobs"
        )
    jobs, jobs_line = items["jobs"]
    defaults: dict[str, object] = {}
    if "defaults" in items:
        defaults = _yaml_defaults(*items["defaults"], where, constructor)
    if _is_null(jobs):
        return None, defaults
    if not isinstance(jobs, SequenceNode):
        raise ManifestError(
            "must be a list of jobs", path=where, line=jobs_line, field="jobs"
        )
    return jobs, defaults


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def _yaml_defaults(
    node: Node, line: int, where: str, constructor: SafeConstructor
) -> dict[str, object]:
    if _is_null(node):
        return {}
    if not isinstance(node, MappingNode):
        raise ManifestError(
            "must be a mapping", path=where, line=line, field="defaults"
        )
    return _defaults_from(_yaml_fields(node, DEFAULT_KEYS, where, constructor), where)


def _yaml_job(
    node: Node, defaults: Mapping[str, object], where: str, constructor: SafeConstructor
) -> _Row:
    line = _node_line(node)
    if isinstance(node, MappingNode):
        fields = _yaml_fields(node, JOB_KEYS, where, constructor)
        return _row_from(fields, line, defaults, where)
    if isinstance(node, ScalarNode) and not _is_null(node):
        prompt = _yaml_value("prompt", node, where, line, constructor)
        return _row_from({"prompt": (prompt, line)}, line, defaults, where)
    raise ManifestError(
        "a job must be a prompt string or a mapping with 'prompt'",
        path=where,
        line=line,
    )
