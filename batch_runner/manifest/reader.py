"""Read a manifest (YAML, CSV or JSONL) into validated, expanded, deduplicated jobs.

The public entry point: `validate_manifest` checks every row, `iter_jobs` streams the
jobs; it picks the reader by suffix (or takes jobs given as Python values, see
`JobItems`), expands `repeat` and finds duplicate ids.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Collection, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch_runner.errors import ManifestError
from batch_runner.manifest.csv_keys import KeyBlock
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
    repeat_copies,
)
from batch_runner.manifest.identity import derive_job_id
from batch_runner.manifest.items import JobItems
from batch_runner.manifest.jsonl_rows import _jsonl_rows
from batch_runner.manifest.key_cache import cached_keyed_rows
from batch_runner.manifest.keys import job_key, key_id
from batch_runner.manifest.matrix import MAX_MATRIX_JOBS, Matrix
from batch_runner.manifest.params import JobParams
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
    "KeyedJobSink",
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


class KeyedJobSink:
    """What `validate_manifest` feeds each distinct job by its key
    (`manifest.keys`) rather than its id string: planners of millions of jobs.
    Passed as `on_job_params`, a sink is fed this way too."""

    def on_job_key(
        self, key: int, job_id: str | None, params: JobParams | None, /
    ) -> None:
        """One distinct job: `job_id` is its explicit id, None for a derived
        one (`keys.key_id` spells it); `params` are given for explicit ids."""
        raise NotImplementedError

    def on_job_keys(self, keys: list[int], /) -> None:
        """Consecutive distinct jobs with derived ids (none met before)."""
        for key in keys:
            self.on_job_key(key, None, None)

    def on_done(self, derived: AbstractSet[int], /) -> None:
        """After the last job: the keys of every job with a derived id told
        (`on_job_keys`, or `on_job_key` with no id), so a sink may count
        those all at once instead of one by one."""


#: one job of the manifest before deduplication: (line, key, explicit id or
#: None, its parameters if explicit, the matrix it came from)
_KeyedJob = tuple[int, int, str | None, JobParams | None, Matrix | None]


def validate_manifest(
    path: ManifestSource,
    on_job: Callable[[str], None] | None = None,
    *,
    on_job_params: Callable[[str, JobParams | None], None] | KeyedJobSink | None = None,
    on_job_key: KeyedJobSink | None = None,
    key_cache: Path | None = None,
    write_key_cache: bool = False,
) -> ManifestSummary:
    """Read and check every row of the manifest; raise the first ManifestError.

    `on_job` is called with the id of each distinct job, in order, so a caller
    can plan in the same pass instead of reading a large manifest again.
    `on_job_params` likewise, with the job's parameters too, to compare them
    with a ledger's; None for a job whose id is derived from them, which
    therefore cannot have other parameters under the same id. `on_job_key`
    (or a `KeyedJobSink` given as `on_job_params`) gets each job's key instead
    of its id, which spares a million-row manifest a million id strings.
    `key_cache`: where a CSV's job keys are cached between plans of the same
    bytes (`manifest.key_cache`), read if it is of these bytes and, with
    `write_key_cache` (a run, under its lock), written if not; None reads the
    CSV every time.
    """
    if on_job_key is None and isinstance(on_job_params, KeyedJobSink):
        on_job_key, on_job_params = on_job_params, None
    by_id = on_job_params if not isinstance(on_job_params, KeyedJobSink) else None
    source = _source(path)
    check = _Validation(source, on_job, by_id, on_job_key)
    for item in _keyed(source, key_cache, write_key_cache):
        if isinstance(item, KeyBlock):
            if check.fresh_block(item.keys):
                continue
            for line, key in enumerate(item.keys, start=item.first_line):
                check.job(line, key, None, None, None)
        else:
            line, key, job_id, params, matrix = item
            check.job(line, key, job_id, params, matrix)
    if on_job_key is not None:
        on_job_key.on_done(check.ids.derived)
    return check.summary()


class _Validation:
    """One pass of `validate_manifest`: duplicates found, jobs told."""

    def __init__(
        self,
        source: _Source,
        on_job: Callable[[str], None] | None,
        by_id: Callable[[str, JobParams | None], None] | None,
        sink: KeyedJobSink | None,
    ) -> None:
        self.source = source
        self.on_job = on_job
        self.by_id = by_id
        self.sink = sink
        self.ids = _IdSet()
        self.jobs = self.skipped = self.duplicate_rows = self.position = 0
        self.duplicates: list[tuple[int, str]] = []
        self.repeated: set[str] = set()
        self.last_duplicate_line = 0
        self.matrix_rows = self.matrix_jobs = 0
        self.last_matrix: Matrix | None = None

    def fresh_block(self, keys: list[int]) -> bool:
        """Take a block of derived ids if none was met before (the common
        case, a block at a time); False leaves it to `job`, one by one."""
        if not self.ids.add_derived(keys):
            return False
        self.position += len(keys)
        self.jobs += len(keys)
        if self.sink is not None:
            self.sink.on_job_keys(keys)
        if self.on_job is not None or self.by_id is not None:
            for key in keys:
                self._tell(key_id(key, None), None)
        return True

    def job(
        self,
        line: int,
        key: int,
        job_id: str | None,
        params: JobParams | None,
        matrix: Matrix | None,
    ) -> None:
        self.position += 1
        seen = self.ids.add(key, job_id)
        if matrix is not None and matrix is not self.last_matrix:
            self.last_matrix = matrix
            self.matrix_rows += 1
        if seen is not _Seen.NEW and seen is not _Seen.SAME_JOB:
            # a clash of keys is a clash of ids unless the keys collided
            _raise_clash(self.source, key_id(key, job_id), line, seen, self.position)
            seen = _Seen.NEW
        if seen is _Seen.NEW:
            self.jobs += 1
            if matrix is not None:
                self.matrix_jobs += 1
            if self.sink is not None:
                self.sink.on_job_key(key, job_id, params)
            if self.on_job is not None or self.by_id is not None:
                self._tell(key_id(key, job_id), params)
            return
        self.skipped += 1
        the_id = key_id(key, job_id)
        self.repeated.add(the_id)
        # One warning per manifest row, not per copy of a repeated job.
        if line != self.last_duplicate_line:
            self.last_duplicate_line = line
            self.duplicate_rows += 1
            if len(self.duplicates) < MAX_DUPLICATE_WARNINGS:
                self.duplicates.append((line, the_id))

    def _tell(self, job_id: str, params: JobParams | None) -> None:
        if self.on_job is not None:
            self.on_job(job_id)
        if self.by_id is not None:
            self.by_id(job_id, params)

    def summary(self) -> ManifestSummary:
        where = _name(self.source)
        if self.jobs == 0:
            raise ManifestError("manifest has no jobs", path=where)
        return ManifestSummary(
            path=where,
            jobs=self.jobs,
            duplicates_skipped=self.skipped,
            warnings=_duplicate_warnings(
                self.source, self.duplicates, self.duplicate_rows
            ),
            repeated=frozenset(self.repeated),
            matrix_rows=self.matrix_rows,
            matrix_jobs=self.matrix_jobs,
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
    for position, (row, job_id, seed, explicit) in enumerate(
        _expanded(source), start=1
    ):
        if ids is not None:
            seen = ids.add(job_key(job_id), job_id if explicit else None)
            if seen is not _Seen.NEW and seen is not _Seen.SAME_JOB:
                _raise_clash(source, job_id, row.line, seen, position)
                seen = _Seen.NEW
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
    """The ids seen so far, as their keys (`manifest.keys`) rather than strings.

    Derived ids' keys are exact, so a derived id met again is the same job.
    An explicit id's key is 128 bits of hash: a match is a clash (an error)
    only once `_raise_clash` has found the earlier id in the file, so even
    colliding keys never stop a manifest nor merge two jobs.

    Case: an id with capitals also leaves the key of its lower-case form,
    so `Cat` after `cat` (or `CAT`) is found. Only ids with capitals pay for
    it; derived ids are lower-case hex.
    """

    __slots__ = ("_derived", "_explicit", "_folded")

    def __init__(self) -> None:
        self._explicit: set[int] = set()
        self._derived: set[int] = set()
        #: keys of the lower-cased forms of the ids that have capitals
        self._folded: set[int] = set()

    def add(self, key: int, explicit_id: str | None) -> _Seen:
        """Note a job's key; `explicit_id` is its id if explicit, else None.
        A clash is only what the keys say (see `_raise_clash`): the job is
        noted all the same, so a collision cannot hide a later clash."""
        seen = _Seen.NEW
        if key in self._explicit:
            seen = _Seen.CLASH
        elif key in self._derived:
            seen = _Seen.SAME_JOB if explicit_id is None else _Seen.CLASH
        folded_key = None
        if explicit_id is not None:
            folded = explicit_id.lower()
            if folded != explicit_id:
                folded_key = job_key(folded)
                if seen is _Seen.NEW and (
                    folded_key in self._folded
                    or folded_key in self._explicit
                    or folded_key in self._derived
                ):
                    seen = _Seen.CASE_CLASH
            elif seen is _Seen.NEW and key in self._folded:
                seen = _Seen.CASE_CLASH
        elif seen is _Seen.NEW and key in self._folded:
            seen = _Seen.CASE_CLASH
        if seen is not _Seen.SAME_JOB:
            (self._explicit if explicit_id is not None else self._derived).add(key)
            if folded_key is not None:
                self._folded.add(folded_key)
        return seen

    @property
    def derived(self) -> AbstractSet[int]:
        """The keys of the distinct derived ids noted."""
        return self._derived

    def add_derived(self, keys: list[int]) -> bool:
        """`add` of derived ids' keys all at once, if they are all new and
        distinct (True); otherwise nothing is added (False)."""
        derived = self._derived
        if (
            not derived.isdisjoint(keys)
            or (self._explicit and not self._explicit.isdisjoint(keys))
            or (self._folded and not self._folded.isdisjoint(keys))
        ):
            return False
        # no set of the block is built (a million keys at 1M rows): added in
        # place, and taken out again if two of them were the same
        before = len(derived)
        derived.update(keys)
        if len(derived) - before != len(keys):
            derived.difference_update(keys)
            return False
        return True


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


def _earlier(
    source: _Source, job_id: str, position: int, *, any_case: bool
) -> tuple[str, int] | None:
    """The first of the manifest's jobs before the `position`-th (1-based) whose
    id equals `job_id` (with `any_case`: but for letter case), and its line."""
    folded = job_id.lower()
    for n, (row, other, _, _) in enumerate(_expanded(source), start=1):
        if n >= position:
            break
        if other == job_id if not any_case else other.lower() == folded:
            return other, row.line
    return None


def _raise_clash(
    source: _Source, job_id: str, line: int, seen: _Seen, position: int
) -> None:
    """Raise the error for the clash of ids the keys found (`seen`) at the
    `position`-th job, naming the earlier job; return if the file shows none
    (the keys collided: a new job)."""
    first = _earlier(source, job_id, position, any_case=False)
    if first is not None:
        raise ManifestError(
            f"duplicate job id {job_id!r}: it is already used by the job on line "
            f"{first[1]}",
            path=_name(source),
            line=line,
            field="id",
        )
    other = _earlier(source, job_id, position, any_case=True)
    if other is not None:
        raise ManifestError(
            f"job id {job_id!r} differs from {other[0]!r} on line {other[1]} "
            "only in letter case; their image files would be one file on "
            "case-insensitive file systems (macOS, Windows)",
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


def _keyed(
    source: _Source, key_cache: Path | None = None, write_key_cache: bool = False
) -> Iterator[_KeyedJob | KeyBlock]:
    """`_expanded` as keys: `(line, key, explicit id or None, its parameters
    if explicit, source matrix)` per job, before deduplication. A CSV file is
    read by `csv_keys`, which hashes derived ids straight into keys."""
    if isinstance(source, JobItems) or os.path.splitext(source)[1].lower() not in (
        _CSV_SUFFIXES
    ):
        for row, job_id, seed, explicit in _expanded(source):
            yield (
                row.line,
                job_key(job_id),
                job_id if explicit else None,
                JobParams(row.prompt, row.resolution, seed, row.prompt_extend, row.line)
                if explicit
                else None,
                row.source_matrix,
            )
        return
    yield from cached_keyed_rows(source, key_cache, write=write_key_cache)


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
            for job_id, seed in repeat_copies(row, row.repeat, base_id, where):
                yield row, job_id, seed, explicit


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
        # PyYAML only for a YAML manifest: a CSV plan need not import it
        from batch_runner.manifest.yaml_rows import _yaml_rows

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
