"""Read a manifest (YAML, CSV or JSONL) into validated, expanded, deduplicated jobs.

The public entry point: `validate_manifest` checks every row, `iter_jobs` streams the
jobs; it picks the reader by suffix (or takes jobs given as Python values, see
`JobItems`), expands `repeat` and finds duplicate ids.
"""

from __future__ import annotations

import enum
import hashlib
import os
import sys
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from batch_runner.errors import ManifestError
from batch_runner.manifest.csv_rows import CSV_COLUMNS, META_PREFIX, _csv_rows
from batch_runner.manifest.fields import (
    DEFAULT_KEYS,
    DEFAULT_RESOLUTION,
    JOB_KEYS,
    MAX_META_VALUES,
    MAX_PROMPT_CHARS,
    MAX_REPEAT,
    _check_id,
    _check_prompt,
    _Row,
)
from batch_runner.manifest.identity import (
    MAX_JOB_ID_LENGTH,
    derive_job_id,
    expand_repeat,
)
from batch_runner.manifest.items import JobItems
from batch_runner.manifest.jsonl_rows import _jsonl_rows
from batch_runner.manifest.matrix import MAX_MATRIX_JOBS, Matrix
from batch_runner.manifest.params import JobParams
from batch_runner.manifest.yaml_rows import _yaml_rows
from batch_runner.models import JobSpec

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_KEYS",
    "DEFAULT_RESOLUTION",
    "JOB_KEYS",
    "MAX_DUPLICATE_WARNINGS",
    "MAX_MATRIX_JOBS",
    "MAX_META_VALUES",
    "MAX_PROMPT_CHARS",
    "MAX_REPEAT",
    "META_PREFIX",
    "JobItems",
    "JobParams",
    "ManifestSource",
    "ManifestSummary",
    "iter_jobs",
    "validate_manifest",
]

#: detailed duplicate warnings kept; the rest are counted in one summary line
MAX_DUPLICATE_WARNINGS = 100

_YAML_SUFFIXES = (".yaml", ".yml")
_CSV_SUFFIXES = (".csv",)
_JSONL_SUFFIXES = (".jsonl", ".ndjson")

#: a manifest file, or jobs given as Python values
ManifestSource = str | os.PathLike[str] | JobItems
#: a manifest file's path as text, or the jobs given as values
_Source = str | JobItems


@dataclass(frozen=True, slots=True)
class ManifestSummary:
    """What `validate_manifest` found: how many jobs will run, and what it skipped."""

    path: str
    #: distinct jobs that will run, after `repeat` expansion and deduplication
    jobs: int
    duplicates_skipped: int
    #: human-readable, each naming file:line
    warnings: tuple[str, ...]
    #: derived ids that more than one row produced; `iter_jobs(repeated=...)`
    #: needs to remember only these (usually none) instead of every id
    repeated: frozenset[str] = frozenset()
    #: rows with a `matrix`, and the distinct jobs they expanded into (with
    #: `repeat`); both are included in `jobs`
    matrix_rows: int = 0
    matrix_jobs: int = 0


def validate_manifest(
    path: ManifestSource,
    on_job: Callable[[str], None] | None = None,
    *,
    on_job_params: Callable[[str, JobParams | None], None] | None = None,
) -> ManifestSummary:
    """Read and check every row of the manifest; raise the first ManifestError.

    `on_job` is called with the id of each distinct job, in order, so a caller
    can plan in the same pass instead of reading a large manifest again.
    `on_job_params` likewise, with the job's parameters too, to compare them
    with a ledger's; None for a job whose id is derived from them, which
    therefore cannot have other parameters under the same id.
    """
    source = _source(path)
    where = _name(source)
    ids = _IdSet()
    jobs = skipped = duplicate_rows = 0
    duplicates: list[tuple[int, str]] = []
    repeated: set[str] = set()
    last_duplicate_line = 0
    matrix_rows = matrix_jobs = 0
    last_matrix: Matrix | None = None
    for row, job_id, seed, explicit in _expanded(source):
        seen = ids.add(job_id, explicit)
        if row.source_matrix is not None and row.source_matrix is not last_matrix:
            last_matrix = row.source_matrix
            matrix_rows += 1
        if seen is _Seen.NEW:
            jobs += 1
            if row.source_matrix is not None:
                matrix_jobs += 1
            if on_job is not None:
                on_job(job_id)
            if on_job_params is not None:
                on_job_params(
                    job_id,
                    JobParams(
                        row.prompt, row.resolution, seed, row.prompt_extend, row.line
                    )
                    if explicit
                    else None,
                )
        elif seen is _Seen.SAME_JOB:
            skipped += 1
            repeated.add(job_id)
            # One warning per manifest row, not per copy of a repeated job.
            if row.line != last_duplicate_line:
                last_duplicate_line = row.line
                duplicate_rows += 1
                if len(duplicates) < MAX_DUPLICATE_WARNINGS:
                    duplicates.append((row.line, job_id))
        else:
            _raise_clash(source, job_id, row.line, seen)
    if jobs == 0:
        raise ManifestError("manifest has no jobs", path=where)
    return ManifestSummary(
        path=where,
        jobs=jobs,
        duplicates_skipped=skipped,
        warnings=_duplicate_warnings(source, duplicates, duplicate_rows),
        repeated=frozenset(repeated),
        matrix_rows=matrix_rows,
        matrix_jobs=matrix_jobs,
    )


def iter_jobs(
    path: ManifestSource, *, repeated: Collection[str] | None = None
) -> Iterator[JobSpec]:
    """Yield the manifest's jobs in order, expanded and deduplicated (first wins).

    Meant to run after `validate_manifest`, but still raises ManifestError, and
    nothing else, on bad input. Given the summary's `repeated`, it trusts that
    validation and remembers only those ids, so memory stays flat however long
    the manifest; without it, it checks duplicates itself (a set of every id).
    """
    source = _source(path)
    where = _name(source)
    ids = _IdSet() if repeated is None else None
    only = frozenset(repeated or ())
    emitted: set[str] = set()
    empty = True
    for row, job_id, seed, explicit in _expanded(source):
        if ids is not None:
            seen = ids.add(job_id, explicit)
        elif job_id in only:
            seen = _Seen.SAME_JOB if job_id in emitted else _Seen.NEW
            emitted.add(job_id)
        else:
            seen = _Seen.NEW
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
        elif seen is not _Seen.SAME_JOB:
            _raise_clash(source, job_id, row.line, seen)
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
    #: equal to an earlier id but for letter case (`Cat`, `cat`): one image
    #: file on case-insensitive file systems (macOS, Windows)
    CASE_CLASH = "case clash"


class _IdSet:
    """The ids seen so far, as 64-bit digests rather than strings.

    Half the memory of the strings: about 70 MB for a million ids. The digest is
    the built-in (keyed SipHash) `hash()` where it is 64 bits wide, several
    times faster than hashlib, and 8 bytes of blake2b elsewhere; a set only
    has to agree with itself within one pass. A false match needs a 64-bit
    collision (about 3e-8 at a million jobs), and the error path re-reads the
    file comparing real ids.

    Case: an id with capitals also leaves the digest of its lower-case form,
    so `Cat` after `cat` (or `CAT`) is found. Only ids with capitals pay for
    it; derived ids are lower-case hex.
    """

    __slots__ = ("_derived", "_explicit", "_folded")

    def __init__(self) -> None:
        self._explicit: set[object] = set()
        self._derived: set[object] = set()
        #: lower-cased forms of the ids that have capitals
        self._folded: set[object] = set()

    def add(self, job_id: str, explicit: bool) -> _Seen:
        digest = _digest(job_id)
        if digest in self._explicit:
            return _Seen.CLASH
        if digest in self._derived:
            return _Seen.CLASH if explicit else _Seen.SAME_JOB
        folded = job_id.lower() if explicit else job_id
        if folded != job_id:
            folded_digest = _digest(folded)
            if (
                folded_digest in self._folded
                or folded_digest in self._explicit
                or folded_digest in self._derived
            ):
                return _Seen.CASE_CLASH
            self._folded.add(folded_digest)
        elif digest in self._folded:
            return _Seen.CASE_CLASH
        (self._explicit if explicit else self._derived).add(digest)
        return _Seen.NEW


def _blake2b_digest(job_id: str) -> object:
    return hashlib.blake2b(job_id.encode(), digest_size=8).digest()


_digest: Callable[[str], object] = (
    hash if sys.hash_info.width >= 64 else _blake2b_digest
)


def _first_lines(source: _Source, job_ids: Iterable[str]) -> dict[str, int]:
    """Re-read the manifest to find the first line producing each of `job_ids`."""
    wanted = set(job_ids)
    found: dict[str, int] = {}
    if not wanted:
        return found
    for row, job_id, _, _ in _expanded(source):
        if job_id in wanted and job_id not in found:
            found[job_id] = row.line
            if len(found) == len(wanted):
                break
    return found


def _first_case_variant(source: _Source, job_id: str) -> tuple[str, int] | None:
    """The first id (and its line) equal to `job_id` but for case, if any."""
    folded = job_id.lower()
    for row, other, _, _ in _expanded(source):
        if other != job_id and other.lower() == folded:
            return other, row.line
    return None


def _raise_clash(source: _Source, job_id: str, line: int, seen: _Seen) -> NoReturn:
    if seen is _Seen.CASE_CLASH:
        other = _first_case_variant(source, job_id)
        if other is not None:
            raise ManifestError(
                f"job id {job_id!r} differs from {other[0]!r} on line {other[1]} "
                "only in letter case; their image files would be one file on "
                "case-insensitive file systems (macOS, Windows)",
                path=_name(source),
                line=line,
                field="id",
            )
    first = _first_lines(source, [job_id]).get(job_id)
    if first is None or first == line:
        # Only a 64-bit digest collision can get here.
        detail = "collides with an earlier job id"
    else:
        detail = f"is already used by the job on line {first}"
    raise ManifestError(
        f"duplicate job id {job_id!r}: it {detail}",
        path=_name(source),
        line=line,
        field="id",
    )


def _duplicate_warnings(
    source: _Source, duplicates: list[tuple[int, str]], duplicate_rows: int
) -> tuple[str, ...]:
    where = _name(source)
    firsts = _first_lines(source, (job_id for _, job_id in duplicates))
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


def _expanded(source: _Source) -> Iterator[tuple[_Row, str, int | None, bool]]:
    """Yield `(row, job id, seed, id is explicit)` per job, before deduplication.

    No JobSpec here: building one costs more than the rest of a CSV row, and
    the validation pass never needs it.
    """
    where = _name(source)
    for row in _read_rows(source):
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


# --- formats ------------------------------------------------------------------


def _source(path: ManifestSource) -> _Source:
    return path if isinstance(path, JobItems) else os.fspath(path)


def _name(source: _Source) -> str:
    """What messages call the manifest: its path, or `<jobs>` for values."""
    return source.name if isinstance(source, JobItems) else source


def _read_rows(source: _Source) -> Iterator[_Row]:
    if isinstance(source, JobItems):
        return _with_matrices(source.rows(), source.name)
    where = source
    suffix = os.path.splitext(where)[1].lower()
    if suffix in _CSV_SUFFIXES:
        return _csv_rows(where)
    if suffix in _JSONL_SUFFIXES:
        return _with_matrices(_jsonl_rows(where), where)
    if suffix in _YAML_SUFFIXES:
        return _with_matrices(_yaml_rows(where), where)
    raise ManifestError(
        f"unknown manifest format {suffix or '(no extension)'!r}: use .yaml/.yml, "
        ".csv or .jsonl/.ndjson",
        path=where,
    )


# --- matrices -----------------------------------------------------------------


def _with_matrices(rows: Iterable[_Row], where: str) -> Iterator[_Row]:
    """Each row, with a matrix row replaced by one row per combination."""
    for row in rows:
        if row.matrix is None:
            yield row
        else:
            yield from _matrix_rows(row, row.matrix, where)


def _matrix_rows(row: _Row, matrix: Matrix, where: str) -> Iterator[_Row]:
    base_meta = row.meta or {}
    for prompt, job_id, values in matrix.combinations():
        try:
            # A value can make a prompt empty or too long; checked values and
            # templates cannot bring in anything else a prompt must not hold.
            if not prompt or prompt.isspace() or len(prompt) > MAX_PROMPT_CHARS:
                _check_prompt(prompt, where, row.line)
            if job_id is not None:
                _check_id(job_id, where, row.line)
        except ManifestError as err:
            raise ManifestError(
                f"{err.message} (matrix {Matrix.describe(values)})",
                path=where,
                line=row.line,
                field=err.field,
            ) from None
        # the variables' values win over the job's own meta of the same name
        yield _Row(
            line=row.line,
            prompt=prompt,
            job_id=job_id,
            resolution=row.resolution,
            seed=row.seed,
            prompt_extend=row.prompt_extend,
            repeat=row.repeat,
            meta={**base_meta, **values},
            source_matrix=matrix,
        )
