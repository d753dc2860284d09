"""The resume snapshot: what a ledger's first N bytes fold to, kept beside it, so
planning and `status` read the snapshot and the ledger's tail, not the whole.

`.resume-state` (`.<name>.resume-state` for a `--ledger` of another name) is a
cache of the ledger, never a source of truth: any snapshot that is missing,
unreadable, of another format version, or does not match its ledger (another
file, or other bytes where the snapshot ends) is ignored and the whole ledger
is read, as before. It is written at the end of a run (`write_snapshot`) and by
nothing that only reads.

It holds, after a one-line JSON header (format, version, the ledger offset it
covers and checks of the ledger's bytes, and what is counted over every line:
records, the warnings of unreadable lines, the image names of old run dirs,
the first and last timestamps):

- the keys (8 bytes each, `manifest.keys`) of the jobs of derived id whose
  last record is a plain "succeeded" with one image: the bulk of a ledger;
- every other job's last record (and, where a later line is a record only to
  `status`, that line too), reduced to the fields replay reads, as JSON lines
  that the ledger's own readers fold.

So loading it is folding a ledger in which each job has one line, by the same
code, which is what makes its state the full fold's (the tests split random
ledgers anywhere and compare).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec

from batch_runner.errors import LedgerError
from batch_runner.manifest.keys import job_key
from batch_runner.models import JobStatus
from batch_runner.store.audit_mark import AuditMark, matches, take_mark
from batch_runner.store.final_records import byte_checks, is_checkpointed, last_line
from batch_runner.store.jobmap import SUCCEEDED
from batch_runner.store.ledger import (
    HEX_DIGITS,
    Bounded,
    Readable,
    RecordHead,
    ResumeState,
    _blocks,
    _decode_block,
    _lines,
    _urls,
    read_head,
    replay_file,
)
from batch_runner.store.rundir import RunDir, atomic_write, beside_ledger

log = logging.getLogger("batch_runner.store.snapshot")

SNAPSHOT_NAME = ".resume-state"
FORMAT = "batch-runner resume-state"
#: bump on any change to what the snapshot holds or means
VERSION = 1
#: what a reduced line keeps of a record: what replay and `status` read
_KEPT = (
    "job_id",
    "status",
    "taskid",
    "stage",
    "msg",
    "files",
    "url",
    "prompt",
    "resolution",
    "seed",
    "prompt_extend",
)
_SPOOL_BYTES = 8 << 20
#: the most ledger bytes a run folds into the snapshot at its end (about
#: 18,000 jobs' lines, ~3 MB of memory); more is left to `batch-runner snapshot`
RUN_MAX_TAIL = 16 << 20
_STATUSES = frozenset(s.value for s in JobStatus)
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


class Header(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The snapshot's first line."""

    format: str
    version: int
    #: the ledger bytes [0, ledger_end) are what the snapshot stands for
    ledger_end: int
    dev: int
    ino: int
    head_crc: int
    tail_crc: int
    #: how many 8-byte keys follow the header, then how many bytes of lines
    packed: int
    reduced_bytes: int
    #: the resume state's: records folded, warnings of unreadable lines,
    #: image stems of old run dirs
    records: int
    warnings: list[str]
    legacy_stems: dict[str, str]
    #: `status`'s: records, unreadable lines, first and last timestamps
    status_records: int
    unreadable: int
    first_ts: str | None
    last_ts: str | None
    #: the attempt log's offset and the duplicate-submit audit up to both
    #: offsets (`store.audit_mark`); None without an attempt log, or when a
    #: run's end could not take it incrementally
    audit: AuditMark | None = None


_HEADER_DECODER = msgspec.json.Decoder(Header)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot that matches its ledger: the header, the packed keys, and
    where its reduced lines are in `path`."""

    path: Path
    header: Header
    packed: array[int]
    reduced_at: int

    @contextlib.contextmanager
    def reduced(self) -> Iterator[Readable]:
        """The reduced lines, streamed from the file."""
        with self.path.open("rb") as fh:
            fh.seek(self.reduced_at)
            yield Bounded(fh, self.header.reduced_bytes)


def snapshot_path(ledger: Path) -> Path:
    """Where the snapshot of `ledger` lives: beside it."""
    return beside_ledger(ledger, SNAPSHOT_NAME)


def load_snapshot(ledger: Path, *, stop: int | None = None) -> Snapshot | None:
    """The ledger's snapshot, if there is one and it matches the ledger (and
    covers no more than `stop` bytes of it); None otherwise."""
    path = snapshot_path(ledger)
    try:
        with path.open("rb") as fh:
            header = _HEADER_DECODER.decode(fh.readline())
            reduced_at = fh.tell() + 8 * header.packed
            if (
                header.format != FORMAT
                or header.version != VERSION
                or os.fstat(fh.fileno()).st_size != reduced_at + header.reduced_bytes
            ):
                return None
            packed = array("Q")
            packed.frombytes(fh.read(8 * header.packed))
        if sys.byteorder != "little":
            packed.byteswap()
        with ledger.open("rb") as lf:
            end = header.ledger_end
            if (stop is not None and end > stop) or not is_checkpointed(
                lf, end, header.dev, header.ino, header.head_crc, header.tail_crc
            ):
                log.debug(
                    "%s does not match %s: the whole ledger is read", path, ledger
                )
                return None
    except (OSError, ValueError, msgspec.MsgspecError):
        # missing, torn, another version: a cache that cannot be used
        return None
    return Snapshot(path, header, packed, reduced_at)


def read_resume_state(ledger: Path, *, stop: int | None = None) -> ResumeState:
    """`store.ledger.read_ledger`, from the snapshot and the ledger's tail when
    the snapshot matches: the same state (see the module docstring). Up to
    byte `stop` of the ledger, if given."""
    state = ResumeState()
    snap = load_snapshot(ledger, stop=stop)
    start = 0
    if snap is not None:
        header = snap.header
        state.legacy_stems.update(header.legacy_stems)
        state.jobs.load_packed(snap.packed, SUCCEEDED)
        with snap.reduced() as lines:
            replay_file(lines, state=state, freeze=False)
        # what the whole ledger said, not what its reduced lines say
        state.records = header.records
        state.warnings = list(header.warnings)
        start = header.ledger_end
    return _fold_tail(ledger, state, start, stop)


def _fold_tail(
    ledger: Path, state: ResumeState, start: int, stop: int | None
) -> ResumeState:
    try:
        with ledger.open("rb") as fh:
            fh.seek(start)
            stream: Readable = fh if stop is None else Bounded(fh, stop - start)
            return replay_file(stream, name=str(ledger), state=state, start=start)
    except FileNotFoundError:
        state.jobs.freeze()
        return state
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {ledger}: {exc}") from exc


# -- writing --------------------------------------------------------------------


def write_snapshot(
    ledger: Path, *, max_tail: int | None = None, attempts: Path | None = None
) -> bool:
    """Bring the ledger's snapshot up to its last whole line: from the snapshot
    there is and the ledger's tail, so it costs what the tail costs (the first
    one reads the whole ledger). Call it holding the ledger's lock: no line may
    be appended meanwhile. Never raises: returns whether it wrote one (a
    failure is logged; the snapshot is only a cache).

    Folding the tail holds every job in it (about 170 bytes each), so with
    `max_tail` a tail longer than that many bytes is left to the next call
    without it (`batch-runner snapshot DIR`): a run's own memory must not grow
    with the number of jobs it did (RUN_MAX_TAIL).

    With `attempts` (the run's attempt log) it also checkpoints the
    duplicate-submit audit (`store.audit_mark`): from the previous mark and
    the two tails, or, for a first snapshot or without `max_tail`, from the
    start of both files."""
    target = snapshot_path(ledger)
    try:
        return _write(ledger, target, max_tail, attempts)
    except (
        OSError,
        LedgerError,
        ValueError,
        RecursionError,
        msgspec.MsgspecError,
    ) as exc:
        # e.g. a warning or image name with a lone surrogate, which no UTF-8
        # header can hold: the next plan reads the whole ledger, as before
        log.warning("could not write %s: %s", target, exc)
        return False


@dataclass(slots=True)
class Totals:
    """What `status` counts over every line of a ledger, not per job: kept in
    the snapshot's header for the lines it covers."""

    records: int = 0
    unreadable: int = 0
    first_ts: str | None = None
    last_ts: str | None = None


def _write(
    ledger: Path,
    target: Path,
    max_tail: int | None = None,
    attempts: Path | None = None,
) -> bool:
    with ledger.open("rb") as fh:
        st = os.fstat(fh.fileno())
        # a torn last line is left to the tail, whose warning says it is torn
        end = last_line(fh)[1]
        if end == 0:
            return False
        head_crc, tail_crc = byte_checks(fh, end)
    prev = load_snapshot(ledger, stop=end)
    start = prev.header.ledger_end if prev is not None else 0
    if (
        prev is not None
        and start == end
        and (
            max_tail is not None
            or attempts is None
            or not attempts.exists()
            or matches(prev.header.audit, attempts)
        )
    ):
        return False  # up to date (or a run's end, which never reads it all)
    if max_tail is not None and end - start > max_tail:
        log.info(
            "%s: not brought up to date (%.0f MB of ledger since it, over the "
            "%.0f MB a run folds at its end); `batch-runner snapshot %s` writes it",
            target,
            (end - start) / 1e6,
            max_tail / 1e6,
            ledger.parent,
        )
        return False
    mark = None
    if attempts is not None:
        prev_mark = prev.header.audit if prev is not None else None
        if matches(prev_mark, attempts):
            mark = take_mark(ledger, attempts, prev_mark, start, end)
        elif prev is None or max_tail is None:
            mark = take_mark(ledger, attempts, None, 0, end)
    # what is counted over every line: the previous snapshot's, plus the tail's
    tail_state = _fold_tail(ledger, ResumeState(), start, end)
    totals = Totals()
    stems: dict[str, str] = {}
    records, warnings = tail_state.records, tail_state.warnings
    if prev is not None:
        h = prev.header
        totals = Totals(h.status_records, h.unreadable, h.first_ts, h.last_ts)
        stems.update(h.legacy_stems)
        records += h.records
        warnings = [*h.warnings, *warnings]
    for stem, owner in tail_state.legacy_stems.items():
        stems.setdefault(stem, owner)
    del tail_state
    # spilled to disk past a few MB: a million explicit ids' lines are large
    with tempfile.SpooledTemporaryFile(_SPOOL_BYTES) as reduced:
        packed = _final_lines(ledger, prev, start, end, totals, reduced)
        header = Header(
            format=FORMAT,
            version=VERSION,
            ledger_end=end,
            dev=st.st_dev,
            ino=st.st_ino,
            head_crc=head_crc,
            tail_crc=tail_crc,
            packed=len(packed),
            reduced_bytes=reduced.tell(),
            records=records,
            warnings=warnings,
            legacy_stems=stems,
            status_records=totals.records,
            unreadable=totals.unreadable,
            first_ts=totals.first_ts,
            last_ts=totals.last_ts,
            audit=mark,
        )
        if sys.byteorder != "little":
            packed.byteswap()
        with atomic_write(target, fsync=False) as out:
            out.write(msgspec.json.encode(header) + b"\n")
            out.write(packed.tobytes())
            reduced.seek(0)
            shutil.copyfileobj(reduced, out)
    return True


def _final_lines(
    ledger: Path,
    prev: Snapshot | None,
    start: int,
    end: int,
    totals: Totals,
    reduced: IO[bytes],
) -> array[int]:
    """Each job's last record (and any later line only `status` reads) of the
    previous snapshot's lines and the ledger's tail, in two passes: the keys
    that pack (with the previous snapshot's that stand), and the reduced
    lines of the others (written to `reduced`). Counts the tail's
    lines into `totals`."""
    # pass 1: which line is each job's last, for replay and for `status`
    last: dict[int, int] = {}
    later: dict[int, int] = {}
    for n, (key, head, replays, tail) in enumerate(_records(ledger, prev, start, end)):
        if tail:
            _count(totals, head)
        if head is None:
            continue
        if replays:
            last[key] = n
            later.pop(key, None)
        else:
            later[key] = n
    # pass 2: those lines. A job's last record that is a plain "succeeded" of
    # a derived id packs to its key; the packed keys are folded first, so a
    # later line that only `status` reads still comes after it
    plain: list[int] = []
    for n, (key, head, _, _) in enumerate(_records(ledger, prev, start, end)):
        if head is None:
            continue
        if last.get(key) == n:
            if _is_plain(head):
                plain.append(key)
                continue
        elif later.get(key) != n:
            continue
        reduced.write(_reduce(head))
    packed = array("Q", sorted(plain))
    if prev is not None:
        kept = array("Q", (k for k in prev.packed if k not in last))
        packed = array("Q", sorted((*kept, *packed))) if plain else kept
    return packed


def _count(totals: Totals, head: RecordHead | None) -> None:
    """`status`'s count of one non-blank line (None: unreadable)."""
    if head is None:
        totals.unreadable += 1
        return
    totals.records += 1
    ts = head.ts
    if type(ts) is str:
        if totals.first_ts is None or ts < totals.first_ts:
            totals.first_ts = ts
        if totals.last_ts is None or ts > totals.last_ts:
            totals.last_ts = ts


def _records(
    ledger: Path, prev: Snapshot | None, start: int, end: int
) -> Iterator[tuple[int, RecordHead | None, bool, bool]]:
    """(job key, head, whether replay takes it, whether it is the ledger's) of
    each non-blank line of the previous snapshot's reduced lines, then of the
    ledger's tail; a line that is no record gives (-1, None, False, ...)."""
    if prev is not None:
        with prev.reduced() as lines:
            for key, head, replays in _line_records(lines):
                yield key, head, replays, False
    with ledger.open("rb") as fh:
        fh.seek(start)
        for key, head, replays in _line_records(Bounded(fh, end - start)):
            yield key, head, replays, True


def _line_records(
    stream: Readable,
) -> Iterator[tuple[int, RecordHead | None, bool]]:
    for _, block in _blocks(stream):
        heads: list[RecordHead | None] | None = list(_decode_block(block) or ())
        if not heads:
            heads = [read_head(raw) for raw in _lines(block) if raw.strip()]
        for head in heads:
            if head is None or not _is_record(head):
                yield -1, None, False
            else:
                yield job_key(head.job_id), head, _replays(head)


def _is_record(head: RecordHead) -> bool:
    """`read_head`'s test: what `status` counts as a record."""
    return (
        isinstance(head.job_id, str) and bool(head.job_id) and head.status in _STATUSES
    )


def _replays(head: RecordHead) -> bool:
    """Whether `ResumeState.apply_head` takes a record (see its ValueErrors)."""
    taskid = head.taskid
    has_task = isinstance(taskid, str) and bool(taskid)
    status = head.status
    if status == "submitted":
        return has_task
    if status == "generated":
        return has_task or bool(_urls(head.url))
    return True


def _is_plain(head: RecordHead) -> bool:
    """A derived id's "succeeded" with one image: its key says all."""
    job_id, files = head.job_id, head.files
    return (
        head.status == "succeeded"
        and len(job_id) == 16
        and not job_id.strip(HEX_DIGITS)
        and type(files) is list
        and len(files) == 1
        and type(files[0]) is str
    )


def _reduce(head: RecordHead) -> bytes:
    """A record's line as replay and `status` need it: the fields they read.
    The standard library's encoder: it writes back what it read (NaN, lone
    surrogates), where msgspec would write null."""
    fields: dict[str, Any] = {}
    for name in _KEPT:
        value = getattr(head, name)
        if value is not None:
            fields[name] = value
    return (_ENCODER.encode(fields) + "\n").encode("ascii")


def snapshot_run(
    out: str | os.PathLike[str], *, ledger: str | os.PathLike[str] | None = None
) -> bool:
    """Write (or bring up to date) the resume snapshot of the run directory
    `out` (its ledger, or `ledger`), under the run's lock: raises
    RunLockedError at once if a run holds it. Returns whether it wrote one
    (False: already up to date, or nothing to snapshot). What a run leaves
    undone at its end when its part of the ledger is over RUN_MAX_TAIL."""
    run_dir = RunDir(out, ledger=ledger)
    if not run_dir.ledger.is_file():
        raise LedgerError(f"no ledger at {run_dir.ledger}")
    # a run that holds the lock brings the snapshot up to date itself at its
    # end (for up to RUN_MAX_TAIL of new ledger); the rest can wait for it
    with run_dir.lock(hint="try again when it has finished"):
        return write_snapshot(run_dir.ledger, attempts=run_dir.attempts)
