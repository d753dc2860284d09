"""Combine shard run directories into one dataset directory, refusing conflicts.

The merged ledger holds, per job, the record that decides its state, after the
audit trail: every input's submit outcomes (records with `attempts`), which say
how many submit requests each run sent and how many lost their answer. Each
input keeps its full history; copying every record would let an input's later
"failed" hide another input's "succeeded". Records and attempt lines already in
OUT_DIR are not copied twice, which makes merging idempotent and incremental:
OUT_DIR's own ledger and attempts.jsonl, if any, take part as the first input,
so merging the same inputs again changes nothing and merging a new shard adds to
the result.

Which record decides, when inputs disagree:
- the same job must mean the same request: any difference in prompt,
  resolution, seed, prompt_extend or meta is a conflict;
- "succeeded" wins over "submitted", which wins over "failed" (a job still in
  flight may yet succeed; a resumed run then polls its taskid);
- two "succeeded" records must name the same files with the same sha256, else
  it is a conflict; if equal, the first input's record is kept, unless a later
  one has more of its files on disk.
Only each input's final record of a job takes part in that choice.

OUT_DIR must be new, empty, or an earlier merge's output (it holds merge.json):
merging into a run directory would rewrite its ledger under its own
attempts.jsonl and make every job look like a duplicate submit.

Every check runs before anything is written. Images are hardlinked when
possible (same filesystem; the runner never rewrites an image in place, so a
shared inode is safe, and deleting an input later leaves the merge intact),
copied otherwise; a file name already in OUT_DIR with other content is a
conflict. The ledger is written to a temp file and renamed only after every
image is in place, then attempts.jsonl the same way (in that order, so a crash
between them can hide a suspect but never invent one), and metadata.jsonl is
rebuilt from the ledger.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from batch_runner.errors import BatchRunnerError, UsageError
from batch_runner.jsontext import loads
from batch_runner.models import JobStatus
from batch_runner.outputs.dataset import (
    ImageFacts,
    facts_from_file,
    image_facts,
    record_files,
    write_metadata,
)
from batch_runner.store.final_records import numbered_final_records, records_at
from batch_runner.store.ledger import encode_record, ledger_lines, parse_record
from batch_runner.store.rundir import (
    LEDGER_NAME,
    MERGE_MARKER_NAME,
    RunDir,
    atomic_write,
)

log = logging.getLogger("batch_runner.outputs.merge")

#: copy buffer when an image cannot be hardlinked (another filesystem)
_COPY_CHUNK = 1 << 20

_ALL_STATUSES = tuple(s.value for s in JobStatus)
#: which final state a merge keeps when inputs disagree
_RANK = {
    JobStatus.FAILED: 0,
    JobStatus.SUBMITTED: 1,
    JobStatus.GENERATED: 2,
    JobStatus.SUCCEEDED: 3,
}
_PARAMS = ("prompt", "resolution", "seed", "meta")


class MergeError(BatchRunnerError):
    """A merge was refused; nothing was written."""


class MergeTargetError(MergeError, UsageError):
    """The directories given cannot be merged as asked (OUT_DIR is an input, is
    not empty, or an input is not a run directory): a usage error, exit 2."""


class MergeConflictError(MergeError):
    """Two inputs (or an input and OUT_DIR) disagree about a job or an image file."""

    def __init__(self, message: str, *, job_id: str, first: Path, second: Path) -> None:
        self.job_id = job_id
        self.first = first
        self.second = second
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class MergeReport:
    """What the merged directory holds, by each job's final state."""

    #: the run directories merged, as given
    inputs: tuple[Path, ...]
    jobs: int
    succeeded: int
    failed: int
    #: jobs whose final record is "submitted": a run in OUT_DIR would poll them
    submitted: int
    #: files linked or copied in by this merge (files already there are not)
    images_copied: int
    #: files of succeeded jobs missing from their input; left out, logged
    images_missing: int


@dataclass(slots=True)
class _Candidate:
    """The little kept per job while reading the inputs: where its record is,
    and what must match across inputs."""

    source: int
    lineno: int
    status: str
    params: bytes
    #: the record's identity, so an input's copy of it is not written twice
    digest: bytes
    #: (file, sha256 or None when the file is gone) of a succeeded record
    images: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True, slots=True)
class _Source:
    run_dir: Path
    ledger: Path


@dataclass(slots=True)
class _Plan:
    """Images to bring into OUT_DIR, decided before any is written."""

    copies: list[tuple[Path, Path]] = field(default_factory=list)
    #: out-relative file -> (sha256, source index, job id) of what will be there
    placed: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    missing: int = 0


def _params_digest(record: Mapping[str, Any]) -> bytes:
    params = {name: record.get(name) for name in _PARAMS}
    # ledgers before null was recorded wrote false for an unset prompt_extend,
    # so false and null cannot be told apart: both mean "not on"
    params["prompt_extend"] = bool(record.get("prompt_extend"))
    text = json.dumps(params, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).digest()


def _record_digest(record: Mapping[str, Any]) -> bytes:
    # without `images`, which a merge adds to records older than it
    line = encode_record({k: v for k, v in record.items() if k != "images"})
    return hashlib.blake2b(line, digest_size=16).digest()


def _image_key(
    run_dir: Path, record: Mapping[str, Any]
) -> tuple[tuple[str, str | None], ...]:
    present, _ = image_facts(run_dir, record)
    shas = {facts.index: facts.sha256 for facts in present}
    return tuple((file, shas.get(i)) for i, file in enumerate(record_files(record)))


def _same_images(
    a: tuple[tuple[str, str | None], ...], b: tuple[tuple[str, str | None], ...]
) -> bool:
    """Same files with the same content; a file gone from one input cannot differ."""
    if [file for file, _ in a] != [file for file, _ in b]:
        return False
    return all(
        x is None or y is None or x == y for (_, x), (_, y) in zip(a, b, strict=True)
    )


def _on_disk(candidate: _Candidate) -> int:
    return sum(sha is not None for _, sha in candidate.images)


def _choose(
    job_id: str, old: _Candidate, new: _Candidate, sources: Sequence[_Source]
) -> _Candidate:
    """The candidate that decides the job's merged state, or a conflict."""
    first, second = sources[old.source].run_dir, sources[new.source].run_dir
    if old.params != new.params:
        raise MergeConflictError(
            f"job {job_id!r} has a different prompt or parameters in {first} "
            f"and in {second}",
            job_id=job_id,
            first=first,
            second=second,
        )
    if old.status == new.status == JobStatus.SUCCEEDED:
        if old.images and new.images and not _same_images(old.images, new.images):
            raise MergeConflictError(
                f"job {job_id!r} succeeded with different images in {first} "
                f"and in {second}",
                job_id=job_id,
                first=first,
                second=second,
            )
        # equal: keep the first, unless the other has more of the files on disk
        # (a --no-download success names none; an input may have lost some)
        return new if _on_disk(new) > _on_disk(old) else old
    return new if _RANK[JobStatus(new.status)] > _RANK[JobStatus(old.status)] else old


def _collect(sources: Sequence[_Source]) -> dict[str, _Candidate]:
    """job id -> the candidate that decides it, in first-seen order."""
    chosen: dict[str, _Candidate] = {}
    for index, source in enumerate(sources):
        for lineno, record in numbered_final_records(
            source.ledger, statuses=_ALL_STATUSES
        ):
            job_id = record["job_id"]
            status = record["status"]
            candidate = _Candidate(
                source=index,
                lineno=lineno,
                status=status,
                params=_params_digest(record),
                digest=_record_digest(record),
                images=(
                    _image_key(source.run_dir, record)
                    if status == JobStatus.SUCCEEDED
                    else ()
                ),
            )
            old = chosen.get(job_id)
            chosen[job_id] = (
                candidate if old is None else _choose(job_id, old, candidate, sources)
            )
    return chosen


def _same_content(path: Path, other: Path, facts: ImageFacts) -> bool:
    with contextlib.suppress(OSError):
        if os.path.samefile(path, other):
            return True
    try:
        if path.stat().st_size != facts.size:
            return False
        return facts_from_file(path, facts.file).sha256 == facts.sha256
    except OSError:
        return False


def _plan_images(
    out_dir: Path,
    sources: Sequence[_Source],
    index: int,
    record: Mapping[str, Any],
    plan: _Plan,
) -> list[ImageFacts]:
    """Add the record's images to the plan; conflicts raise before any write."""
    source = sources[index]
    job_id = record["job_id"]
    present, missing = image_facts(source.run_dir, record)
    if missing:
        plan.missing += len(missing)
        log.warning(
            "job %s: %d image file(s) missing in %s are left out: %s",
            job_id,
            len(missing),
            source.run_dir,
            ", ".join(missing),
        )
    for facts in present:
        src = source.run_dir / facts.file
        dest = out_dir / facts.file
        placed = plan.placed.get(facts.file)
        if placed is not None:
            sha, other, other_job = placed
            if sha != facts.sha256:
                raise MergeConflictError(
                    f"job {job_id!r} in {source.run_dir} and job {other_job!r} in "
                    f"{sources[other].run_dir} both have {facts.file}, with "
                    "different content",
                    job_id=job_id,
                    first=sources[other].run_dir,
                    second=source.run_dir,
                )
            continue
        if dest.exists() or dest.is_symlink():
            if not _same_content(dest, src, facts):
                raise MergeConflictError(
                    f"job {job_id!r}: {facts.file} from {source.run_dir} already "
                    f"exists in {out_dir} with different content",
                    job_id=job_id,
                    first=source.run_dir,
                    second=out_dir,
                )
        else:
            plan.copies.append((src, dest))
        plan.placed[facts.file] = (facts.sha256, index, job_id)
    return present


def _write_history(
    fh: IO[bytes], sources: Sequence[_Source], chosen: Mapping[str, _Candidate]
) -> int:
    """Every input's submit outcomes that are not a job's deciding record, each
    once, input by input in ledger order; returns how many were written."""
    written = {c.digest for c in chosen.values()}
    count = 0
    for source in sources:
        for raw in ledger_lines(source.ledger):
            # a cheap test first: only lines with this key can be outcomes
            if b'"attempts"' not in raw:
                continue
            record = parse_record(raw)
            if record is None or "attempts" not in record:
                continue
            digest = _record_digest(record)
            if digest in written:
                continue
            written.add(digest)
            fh.write(encode_record(record))
            count += 1
    return count


def _write_attempts(fh: IO[bytes], sources: Sequence[_Source]) -> int:
    """Every input's attempts.jsonl lines, each once, in input order."""
    seen: set[bytes] = set()
    for source in sources:
        for raw in ledger_lines(RunDir(source.run_dir).attempts):
            line = raw.strip()
            try:
                if not isinstance(loads(line), dict):
                    continue
            except (ValueError, RecursionError):
                continue  # a torn line: the audit cannot read it either
            digest = hashlib.blake2b(line, digest_size=16).digest()
            if digest not in seen:
                seen.add(digest)
                fh.write(line + b"\n")
    return len(seen)


def _write_ledger_and_plan(
    fh: IO[bytes],
    out_dir: Path,
    sources: Sequence[_Source],
    chosen: Mapping[str, _Candidate],
    plan: _Plan,
) -> None:
    """The audit trail, then the chosen records, input by input in ledger order,
    so a merge of its own output reproduces it byte for byte."""
    _write_history(fh, sources, chosen)
    by_source: dict[int, set[int]] = {}
    for candidate in chosen.values():
        by_source.setdefault(candidate.source, set()).add(candidate.lineno)
    for index, source in enumerate(sources):
        for _, record in records_at(source.ledger, by_source.get(index, set())):
            if record["status"] == JobStatus.SUCCEEDED:
                present = _plan_images(out_dir, sources, index, record, plan)
                if "images" not in record and present:
                    # hashed now for a record older than `images`: keep the work
                    record["images"] = [
                        {
                            "file": f.file,
                            "sha256": f.sha256,
                            "bytes": f.size,
                            "width": f.width,
                            "height": f.height,
                        }
                        for f in present
                    ]
            fh.write(encode_record(record))


def _place(src: Path, dest: Path) -> None:
    """Hardlink `src` at `dest`, or copy it there (temp name, then rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
        return
    except OSError as exc:
        # other filesystem, or one without hardlinks: copy instead
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
    # no fsync per image, as before: the ledger that names them is fsynced
    with src.open("rb") as fin, atomic_write(dest, fsync=False) as fout:
        shutil.copyfileobj(fin, fout, _COPY_CHUNK)


def _same_dir(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _visible_entries(directory: Path) -> list[str]:
    """Names in `directory` other than hidden ones (locks, temp files)."""
    try:
        return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise MergeTargetError(f"{directory} is not a directory") from None


def _check_out_dir(out_dir: Path) -> None:
    """OUT_DIR must be new, empty, or an earlier merge's output."""
    entries = _visible_entries(out_dir)
    if entries and MERGE_MARKER_NAME not in entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise MergeTargetError(
            f"{out_dir} is not empty ({shown}) and not the output of an earlier "
            "merge (no merge.json); merge into a new or empty directory"
        )


def _marker(out_dir: Path, run_dirs: Sequence[Path]) -> bytes:
    """merge.json: every input ever merged into OUT_DIR, in first-merged order."""
    inputs: list[str] = []
    try:
        old = loads(RunDir(out_dir).merge_marker.read_bytes())
        if isinstance(old, dict) and isinstance(old.get("inputs"), list):
            inputs = [i for i in old["inputs"] if isinstance(i, str)]
    except (OSError, ValueError):
        pass
    for run_dir in run_dirs:
        name = os.fspath(run_dir.resolve())
        if name not in inputs:
            inputs.append(name)
    text = json.dumps({"merged_by": "batch-runner", "inputs": inputs}, indent=1)
    return (text + "\n").encode("utf-8")


def merge_runs(out_dir: Path, run_dirs: Sequence[Path]) -> MergeReport:
    """Merge run directories (ledger.jsonl, attempts.jsonl, images/) into
    `out_dir`: each job's deciding record after every input's submit outcomes,
    the attempt log, the images, and a rebuilt metadata.jsonl.

    Raises MergeConflictError (naming the job and both directories) when inputs
    disagree, MergeTargetError (a MergeError and a UsageError) when `out_dir` is
    one of the inputs, is not empty and not an earlier merge's output, or an
    input is not a run directory; either way before writing anything. OUT_DIR
    is locked like a run directory while merging.
    """
    if not run_dirs:
        raise MergeTargetError("nothing to merge: no run directories given")
    if any(_same_dir(run_dir, out_dir) for run_dir in run_dirs):
        raise MergeTargetError(
            f"{out_dir} is one of the inputs; merge into a new directory"
        )
    for run_dir in run_dirs:
        if not RunDir(run_dir).ledger.is_file():
            raise MergeTargetError(
                f"{run_dir} is not a run directory: no {LEDGER_NAME}"
            )
    _check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = RunDir(out_dir)
    # the ledger's own lock too: a run given `--ledger OUT_DIR/ledger.jsonl`
    # must not append to the ledger this merge is replacing
    with out.lock():
        # again under the lock: a run may have written there since
        _check_out_dir(out_dir)
        out_ledger = out.ledger
        sources = [_Source(d, RunDir(d).ledger) for d in run_dirs]
        if out_ledger.is_file():
            sources.insert(0, _Source(out_dir, out_ledger))
        chosen = _collect(sources)
        plan = _Plan()
        with atomic_write(out_ledger) as fh:
            _write_ledger_and_plan(fh, out_dir, sources, chosen, plan)
            # from here on OUT_DIR is a merge output, even if a copy fails
            with atomic_write(out.merge_marker) as marker:
                marker.write(_marker(out_dir, run_dirs))
            for src, dest in plan.copies:
                _place(src, dest)
        with atomic_write(out.attempts) as fh:
            _write_attempts(fh, sources)
        write_metadata(out_dir)
    statuses = [c.status for c in chosen.values()]
    return MergeReport(
        inputs=tuple(run_dirs),
        jobs=len(chosen),
        succeeded=statuses.count(JobStatus.SUCCEEDED),
        failed=statuses.count(JobStatus.FAILED),
        submitted=statuses.count(JobStatus.SUBMITTED),
        images_copied=len(plan.copies),
        images_missing=plan.missing,
    )
