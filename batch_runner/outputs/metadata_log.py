"""The metadata log: each succeeded record copied, as it is written, beside the ledger.

`metadata.jsonl` must be rewritten whole (its columns are typed from every
row), and finding each job's last record in the ledger takes a map of every
job id. The run avoids that map: as each succeeded record reaches the ledger,
its line goes to `.metadata-log.jsonl` too, prefixed with the ledger's size
after it, so `metadata.jsonl` is compacted from this log by streaming
(`outputs.dataset.compact_metadata`), with memory that does not grow with the
run.

The log holds three kinds of line, each starting with `{"ledger_end":N`:

- a row: a succeeded ledger line, byte for byte after that prefix;
- a drop: `{"ledger_end":N,"drop":"<job id>"}`, written before the first
  record of a job that had a row (`--rerun-changed` redoes it); rows of that
  job *before* it are stale;
- a mark: `{"ledger_end":N}`, saying the log covers the ledger up to N.

A succeeded job is redone only by `--rerun-changed`, so drops are as few as
the jobs a user edited, and nothing else is held per job. The log is a cache
of the ledger: `sync` catches it up from the ledger's tail after a crash (the
last line's `ledger_end` says where to start, and is checked against the
ledger's bytes there), and rebuilds it from the ledger when it is missing or
does not match.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from batch_runner.jsontext import loads
from batch_runner.models import JobStatus
from batch_runner.store.final_records import (
    final_succeeded_lines,
    last_line,
    lines_with_ends,
    lists_images,
)
from batch_runner.store.ledger import encode_record, ledger_lines, read_head
from batch_runner.store.rundir import atomic_write

log = logging.getLogger("batch_runner.outputs.metadata_log")

_PREFIX = b'{"ledger_end":'
#: a crash loses at most the log lines of this many ledger lines
MARK_EVERY = 1000
#: a part of the ledger to catch up that names more jobs than this is cheaper
#: to rebuild from than to check job by job (only a log that stopped early)
TAIL_JOBS_MAX = 100_000
#: how many bytes of the ledger a mark checks
_MARK_WINDOW = 64


# -- lines (pure) -------------------------------------------------------------


def row_line(ledger_line: bytes, end: int) -> bytes:
    """The log line of one ledger line (with or without its newline) that ends
    at byte `end` of the ledger."""
    body = ledger_line.rstrip(b"\r\n")
    if not body.startswith(b"{") or len(body) < 2:
        raise ValueError("a ledger line is a JSON object")
    tail = body[1:]
    return _PREFIX + str(end).encode() + (b"}" if tail == b"}" else b"," + tail) + b"\n"


def drop_line(job_id: str, end: int) -> bytes:
    return encode_record({"ledger_end": end, "drop": job_id})


def mark_line(end: int, last: bytes = b"") -> bytes:
    """A mark at ledger offset `end`, where the ledger line `last` ends (its
    newline aside): the mark keeps a checksum of that line's last bytes, so a
    ledger replaced under the log is noticed even at a mark."""
    body = last.rstrip(b"\r\n")[-_MARK_WINDOW:]
    if not body:
        return encode_record({"ledger_end": end})
    return encode_record({"ledger_end": end, "crc": zlib.crc32(body), "n": len(body)})


@dataclass(frozen=True, slots=True)
class LogLine:
    """One parsed line of the metadata log: exactly one of `record` (a row) and
    `drop` is set, or neither (a mark)."""

    ledger_end: int
    record: dict[str, Any] | None = None
    drop: str | None = None
    #: a mark's (crc32, length) of the ledger bytes before its offset
    check: tuple[int, int] | None = None


def _check(value: Mapping[str, Any]) -> tuple[int, int] | None:
    crc, n = value.get("crc"), value.get("n")
    if isinstance(crc, int) and isinstance(n, int) and 0 < n <= _MARK_WINDOW:
        return crc, n
    return None


def parse_line(raw: bytes) -> LogLine | None:
    """The line, or None when it is not one the log writes (torn, hand-edited)."""
    try:
        value = loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    end = value.pop("ledger_end", None)
    if not isinstance(end, int) or isinstance(end, bool) or end < 0:
        return None
    drop = value.get("drop")
    if isinstance(drop, str) and len(value) == 1:
        return LogLine(end, drop=drop)
    if not value.keys() - {"crc", "n"}:
        return LogLine(end, check=_check(value))
    job_id = value.get("job_id")
    if (
        isinstance(job_id, str)
        and job_id
        and value.get("status") == JobStatus.SUCCEEDED
    ):
        return LogLine(end, record=value)
    return None


def copied_line(raw: bytes) -> bytes | None:
    """The ledger line a row line copies (no newline), or None for a drop or a
    mark."""
    line = parse_line(raw)
    return None if line is None or line.record is None else _row_body(raw)


def _row_body(raw: bytes) -> bytes:
    """`copied_line` of a line already known to be a row."""
    body = raw.rstrip(b"\r\n")
    return b"{" + body[body.index(b",", len(_PREFIX)) + 1 :]


def should_log(record: Mapping[str, Any]) -> bool:
    """Does this ledger record make rows (`lists_images`)?"""
    return lists_images(record.get("status"), record.get("files"))


def kept_records(
    lines: Iterable[LogLine], drops: Mapping[str, int]
) -> Iterator[dict[str, Any]]:
    """The records of the rows that no later drop made stale, in log order.
    `drops` maps a job id to the position (0-based, counting every line) of its
    last drop. Pure."""
    for position, line in enumerate(lines):
        record = line.record
        if record is None:
            continue
        last_drop = drops.get(record["job_id"])
        if last_drop is None or position > last_drop:
            yield record


# -- reading the file ---------------------------------------------------------


def log_lines(path: Path) -> Iterator[LogLine | None]:
    """Every line of the log, parsed (None for an unreadable one), so positions
    are line numbers."""
    for raw in ledger_lines(path):
        yield parse_line(raw)


def drops_in(path: Path) -> dict[str, int]:
    """job id -> position of its last drop line."""
    drops: dict[str, int] = {}
    for position, raw in enumerate(ledger_lines(path)):
        drop = _drop_of(raw)
        if drop is not None:
            drops[drop] = position
    return drops


def _drop_of(raw: bytes) -> str | None:
    """The job a drop line drops; None for any other line. Only lines that can
    be drops are parsed: a drop's second key is "drop", a row's is a ledger
    field."""
    comma = raw.find(b",", len(_PREFIX))
    if comma > 0 and raw.startswith(b'"drop":', comma + 1):
        line = parse_line(raw)
        if line is not None:
            return line.drop
    return None


def records_between(
    path: Path, start: int, end: int
) -> Iterator[dict[str, Any]] | None:
    """The records of the rows on the log's lines between byte offsets `start`
    and `end` (line boundaries), in order; None if a drop is among them, which
    may make rows before `start` stale. Streams (the lines are read twice)."""
    if any(_drop_of(raw) is not None for raw in _lines_between(path, start, end)):
        return None
    return _rows_between(path, start, end)


def _rows_between(path: Path, start: int, end: int) -> Iterator[dict[str, Any]]:
    for raw in _lines_between(path, start, end):
        line = parse_line(raw)
        if line is not None and line.record is not None:
            yield line.record


def _lines_between(path: Path, start: int, end: int) -> Iterator[bytes]:
    for _, line_end, raw in lines_with_ends(path, start):
        if line_end > end:
            return
        yield raw


def records(path: Path) -> Iterator[dict[str, Any]]:
    """The succeeded records the log holds that are still current, in ledger
    order: what metadata.jsonl lists. Streams; holds only the drops."""
    drops = drops_in(path)
    parsed = (line if line is not None else LogLine(0) for line in log_lines(path))
    yield from kept_records(parsed, drops)


# -- keeping it in step with the ledger ----------------------------------------


def sync(log_path: Path, ledger: Path) -> int:
    """Make the log cover every line of the ledger; returns the ledger offset it
    now covers.

    Catches up from where the log's last line says it stopped (a crash loses
    only what was still buffered), or rebuilds the log from the ledger when it
    is missing, cut, or does not match the ledger (another ledger, a ledger
    replaced), or when the part to catch up names too many jobs: the rebuild is
    the one step that holds every job id (as 64-bit hashes,
    `final_succeeded_lines`), once.
    """
    try:
        ledger_size = ledger.stat().st_size
    except FileNotFoundError:
        ledger_size = 0
    start = _covered(log_path, ledger, ledger_size)
    if start is None:
        return rebuild(log_path, ledger)
    if start >= ledger_size:
        return start
    end = _catch_up(log_path, ledger, start)
    return rebuild(log_path, ledger) if end is None else end


def _covered(log_path: Path, ledger: Path, ledger_size: int) -> int | None:
    """How much of the ledger the log covers, after trimming a torn last line;
    None if the log must be rebuilt."""
    try:
        fh = log_path.open("r+b")
    except FileNotFoundError:
        return None if ledger_size else _start_empty(log_path)
    with fh:
        line, after = last_line(fh)
        if fh.seek(0, os.SEEK_END) != after:
            # a crash cut the buffered tail mid-line; the tail is caught up below
            fh.truncate(after)
        if not line:
            return None
        parsed = parse_line(line)
        # a torn last line counts the newline the ledger writer will add
        if parsed is None or parsed.ledger_end > ledger_size + 1:
            return None
        if parsed.record is not None and not _ledger_has(
            ledger, _row_body(line), parsed.ledger_end, ledger_size
        ):
            return None
        if parsed.check is not None and not _ledger_matches(
            ledger, parsed.check, parsed.ledger_end
        ):
            return None
        return parsed.ledger_end


def _start_empty(log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(log_path) as fh:
        fh.write(mark_line(0))
    return 0


def _ledger_has(ledger: Path, line: bytes, end: int, ledger_size: int) -> bool:
    """Does the ledger hold exactly `line` ending at byte `end`? `end` counts
    the line's newline, which a torn last line does not have yet."""
    start = end - len(line) - 1
    if start < 0:
        return False
    with ledger.open("rb") as fh:
        fh.seek(start)
        got = fh.read(len(line) + 1)
    return got == line + b"\n" or (got == line and end == ledger_size + 1)


def _ledger_matches(ledger: Path, check: tuple[int, int], end: int) -> bool:
    """Do the ledger's bytes before `end` (its newline aside) match a mark's
    checksum?"""
    crc, n = check
    start = end - 1 - n
    if start < 0:
        return False
    with ledger.open("rb") as fh:
        fh.seek(start)
        return zlib.crc32(fh.read(n)) == crc


def _catch_up(log_path: Path, ledger: Path, start: int) -> int | None:
    """Append the lines the log lacks for the ledger from byte `start` on, and a
    mark; None (nothing written) if that part names over `TAIL_JOBS_MAX` jobs.

    Exact for any ledger tail, not only the runner's: a record of a job whose
    row is live (in the log, or earlier in the tail) gets a drop first.
    """
    tail_jobs: set[str] = set()
    for _, _, raw in lines_with_ends(ledger, start):
        head = read_head(raw)
        if head is not None:
            tail_jobs.add(head.job_id)
            if len(tail_jobs) > TAIL_JOBS_MAX:
                return None
    live = _live_rows(log_path, tail_jobs) if tail_jobs else set()
    end = start
    last = b""
    with log_path.open("ab") as out:
        for line_start, end, raw in lines_with_ends(ledger, start):
            last = raw
            head = read_head(raw)
            if head is None:
                continue
            if head.job_id in live:
                out.write(drop_line(head.job_id, line_start))
                live.discard(head.job_id)
            if lists_images(head.status, head.files):
                out.write(row_line(raw, end))
                live.add(head.job_id)
        out.write(mark_line(end, last))
    return end


class _LineHead(msgspec.Struct):
    job_id: Any = None
    drop: Any = None


_LINE_HEAD = msgspec.json.Decoder(_LineHead)


def _live_rows(log_path: Path, jobs: Collection[str]) -> set[str]:
    """Which of `jobs` have a row in the log that no later drop made stale."""
    live: set[str] = set()
    for raw in ledger_lines(log_path):
        try:
            head = _LINE_HEAD.decode(raw)
        except msgspec.DecodeError:
            line = parse_line(raw)
            if line is None:
                continue
            head = _LineHead(line.record["job_id"] if line.record else None, line.drop)
        if isinstance(head.drop, str):
            live.discard(head.drop)
        elif isinstance(head.job_id, str) and head.job_id in jobs:
            live.add(head.job_id)
    return live


def rebuild(log_path: Path, ledger: Path) -> int:
    """Write the log afresh from the ledger's final succeeded records."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    end = 0
    with atomic_write(log_path) as out:
        for raw, line_end in final_succeeded_lines(ledger):
            out.write(row_line(raw, line_end))
            end = line_end
        ledger_end, last = _ledger_end(ledger)
        end = max(end, ledger_end)
        out.write(mark_line(end, last))
    return end


def _ledger_end(ledger: Path) -> tuple[int, bytes]:
    """The ledger's end as line ends count it (a torn last line with the newline
    its next writer adds), and its last line, for a mark."""
    try:
        with ledger.open("rb") as fh:
            last, after = last_line(fh)
            size = fh.seek(0, os.SEEK_END)
            if size > after:  # a torn last line
                fh.seek(after)
                return size + 1, fh.read()
            return size, last
    except FileNotFoundError:
        return 0, b""


class MetadataLog:
    """The run's appender: `note` is the ledger writer's `after_write`.

    Lines are buffered, with a mark (and a flush) every `MARK_EVERY` ledger
    lines: the ledger is the record of truth, and `sync` recopies whatever a
    crash kept from reaching the log, from the last line that did. A failed
    write (a full disk) stops the log for the rest of the run and is logged
    once; the run goes on and the next `sync` fills the gap.
    """

    def __init__(
        self, path: Path, ledger: Path, *, reruns: Collection[str] = ()
    ) -> None:
        self.path = path
        self.ledger = ledger
        #: jobs this run redoes whose old row the first new record makes stale
        self._reruns = set(reruns)
        self._fh: BinaryIO | None = None
        #: the ledger offset the log covers
        self._end = 0
        #: the last ledger line followed, for the next mark's checksum
        self._last = b""
        self._unmarked = 0

    def open(self) -> None:
        """Catch up with the ledger, then append from its end."""
        self._end = sync(self.path, self.ledger)
        self._fh = self.path.open("ab", buffering=1 << 16)

    def note(self, record: Mapping[str, Any], line: bytes, ledger_end: int) -> None:
        """Follow one ledger line that ends at `ledger_end`."""
        if self._fh is None:
            return
        if self._reruns:
            job_id = record.get("job_id")
            if job_id in self._reruns:
                assert isinstance(job_id, str)
                self._reruns.discard(job_id)
                # at the line's start: a log cut right after the drop must
                # still catch up this line itself
                self._write(drop_line(job_id, ledger_end - len(line)))
        if should_log(record):
            self._write(row_line(line, ledger_end))
        self._end = ledger_end
        self._last = line
        self._unmarked += 1
        if self._unmarked >= MARK_EVERY:
            self._mark()

    def _mark(self) -> None:
        self._unmarked = 0
        self._write(mark_line(self._end, self._last))
        if self._fh is not None:
            try:
                self._fh.flush()
            except OSError as exc:
                self._stop(exc)

    def _write(self, data: bytes) -> None:
        if self._fh is None:
            return
        try:
            self._fh.write(data)
        except OSError as exc:
            self._stop(exc)

    def _stop(self, exc: OSError) -> None:
        log.warning(
            "cannot write %s (%s); metadata.jsonl will be caught up from the ledger",
            self.path,
            exc,
        )
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()

    def close(self) -> None:
        """Mark how far the log got, and close it. A run that wrote no ledger
        line leaves the log untouched, so metadata.jsonl is not compacted
        again for nothing."""
        if self._fh is None:
            return
        if self._unmarked:
            self._mark()
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError as exc:
                log.warning("cannot write %s: %s", self.path, exc)
