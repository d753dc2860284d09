"""The duplicate-submit audit, checkpointed in the resume snapshot.

`status` names the jobs that may have been submitted (and billed) more than
once (`outputs.audit`) by pairing the ledger's submit outcomes with
`attempts.jsonl`. Both grow with every run, so at a million jobs the pairing
read the whole ledger (about 10 s) even where the snapshot covered it.

The audit splits at a run boundary. A run writes its attempt lines and its
outcomes while it holds the run's lock, and the snapshot is written under that
lock too (at a run's end, or by `batch-runner snapshot`), so each run's lines
lie wholly before the snapshot's two offsets or wholly after them, and the
audit pairs lines of one run only (its key is the job and the run). So the
audit of the whole is the audit of the part before the offsets plus that of
the part after them: the snapshot keeps the attempt log's offset, checked like
the ledger's (device, inode, crc32 of its first 4 KiB and of the 64 bytes
before the offset), with the suspects found before it, and `status` adds
those of the two tails. An attempt log that does not match (replaced,
truncated, edited where it is checked) sends `status` back to the whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from batch_runner.jsontext import loads
from batch_runner.outputs.audit import suspected_duplicate_submits
from batch_runner.store.final_records import byte_checks, is_checkpointed, last_line
from batch_runner.store.ledger import RecordHead, iter_head_blocks, open_ledger


class AuditMark(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the attempt log stood at the snapshot, and what the audit of
    everything before (both files' lines up to their offsets) found."""

    attempts_end: int
    dev: int
    ino: int
    head_crc: int
    tail_crc: int
    #: job id -> submit requests that may have created an unseen task
    suspects: dict[str, int]


def matches(mark: AuditMark | None, attempts: Path) -> bool:
    """Whether `attempts` is the attempt log `mark` was taken of, grown since
    or not (a missing one is not)."""
    if mark is None:
        return False
    try:
        with attempts.open("rb") as fh:
            return is_checkpointed(
                fh, mark.attempts_end, mark.dev, mark.ino, mark.head_crc, mark.tail_crc
            )
    except OSError:
        return False


def outcome_of(head: RecordHead) -> dict[str, Any] | None:
    """The audit's fields of a ledger record: those of a submit's outcome."""
    if head.attempts is None:
        return None
    return {
        "job_id": head.job_id,
        "run": head.run,
        "attempts": head.attempts,
        "uncertain": head.uncertain,
    }


def attempt_records(attempts: Path, start: int = 0) -> Iterator[dict[str, Any]]:
    """The attempt log's objects from byte `start` on (unreadable lines skipped)."""
    fh = open_ledger(attempts)
    if fh is None:
        return
    with fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(start)
        yield from _records(fh, size - start)


def merged(*parts: Mapping[str, int]) -> dict[str, int]:
    """Suspect counts of several parts, added up."""
    total: dict[str, int] = {}
    for part in parts:
        for job_id, n in part.items():
            total[job_id] = total.get(job_id, 0) + n
    return total


def take_mark(
    ledger: Path,
    attempts: Path,
    prev: AuditMark | None,
    ledger_start: int,
    ledger_end: int,
) -> AuditMark | None:
    """The mark of a snapshot of the ledger up to `ledger_end`: the audit of
    the ledger from `ledger_start` and of the attempt log from `prev`'s
    offset (or both from 0, with no `prev`), added to `prev`'s. Call it under
    the run's lock, like the snapshot. None if there is no attempt log."""
    fh = open_ledger(attempts)
    if fh is None:
        return None
    with fh:
        st = os.fstat(fh.fileno())
        start = prev.attempts_end if prev is not None else 0
        # a torn last line (a run killed mid-write) is left to the tail
        end = max(start, last_line(fh)[1])
        head_crc, tail_crc = byte_checks(fh, end)
        fh.seek(start)
        found = suspected_duplicate_submits(
            _outcomes(iter_head_blocks(ledger, ledger_start, ledger_end)),
            _records(fh, end - start),
        )
    return AuditMark(
        attempts_end=end,
        dev=st.st_dev,
        ino=st.st_ino,
        head_crc=head_crc,
        tail_crc=tail_crc,
        suspects=merged(prev.suspects if prev is not None else {}, found),
    )


def _outcomes(blocks: Iterable[list[RecordHead | None]]) -> Iterator[dict[str, Any]]:
    for heads in blocks:
        for head in heads:
            if head is not None:
                outcome = outcome_of(head)
                if outcome is not None:
                    yield outcome


def _records(fh: BinaryIO, length: int) -> Iterator[dict[str, Any]]:
    """The objects of the next `length` bytes' lines."""
    left = length
    while left > 0:
        raw = fh.readline(left)
        if not raw:
            return
        left -= len(raw)
        try:
            rec = loads(raw)
        except (ValueError, RecursionError):
            continue
        if isinstance(rec, dict):
            yield rec
