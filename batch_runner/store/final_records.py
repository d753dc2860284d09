"""Each job's last record in a ledger, found without holding the records; and
reading a ledger by byte offsets (its lines with their ends, its last line).

Two passes: the first maps each job to the line of its last record (the only
per-job memory, packed as 64-bit hashes), the second reads just those lines.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from batch_runner.models import JobStatus
from batch_runner.store.ledger import ledger_lines, open_ledger, parse_record, read_head

#: how far back `last_line` reads at a time
_TAIL_BLOCK = 1 << 16
#: bytes a checkpoint checks at a file's start and just before its offset
HEAD_CHECK = 4096
TAIL_CHECK = 64


def records_at(
    path: Path, linenos: Collection[int]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of the readable records on these 0-based lines,
    parsing no other line."""
    if not linenos:
        return
    stop = max(linenos)
    for lineno, raw in enumerate(ledger_lines(path)):
        if lineno in linenos:
            record = parse_record(raw)
            if record is not None:
                yield lineno, record
        if lineno >= stop:
            return


def final_lines(
    path: Path, statuses: Collection[str] = (JobStatus.SUCCEEDED,)
) -> set[int]:
    """0-based line numbers of each job's last record, when its status is in
    `statuses`. Holds only job id -> line number, never the records.

    At a million jobs the map is the whole cost, so it is keyed by the id's
    64-bit hash and holds `2 * line + keep` ints rather than strings and tuples
    (about half the memory). Two ids sharing a hash (about 1e-8 at a million
    jobs) would drop one row from this rebuildable index, never from the ledger.
    """
    last: dict[int, int] = {}
    for lineno, raw in enumerate(ledger_lines(path)):
        head = read_head(raw)
        if head is not None:
            last[hash(head.job_id)] = 2 * lineno + (head.status in statuses)
    return {packed >> 1 for packed in last.values() if packed & 1}


def numbered_final_records(
    path: Path,
    *,
    statuses: Collection[str] = (JobStatus.SUCCEEDED,),
    lines: Collection[int] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each job's last record whose status is in
    `statuses`, in ledger order of those last records.

    Two passes instead of `latest_records`: `final_lines` (or the `lines` it
    gave earlier), then parsing just those lines. Lines appended in between are
    not read, so the result is one consistent snapshot.
    """
    wanted = final_lines(path, statuses) if lines is None else lines
    for lineno, record in records_at(path, wanted):
        # a ledger rewritten between the passes may have another line there
        if record["status"] in statuses:
            yield lineno, record


def lists_images(status: object, files: object) -> bool:
    """Does a record with this status and `files` put rows in metadata.jsonl?
    A succeeded one with image files: one without is an old --no-download
    record, with no image to list."""
    return status == JobStatus.SUCCEEDED and isinstance(files, list) and bool(files)


def lines_with_ends(path: Path, start: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """(start, end, raw line) of each line of a ledger from byte `start` on; a
    missing file has none. A torn last line's end counts the newline the next
    ledger writer adds to it (LedgerWriter.open), so ends stay valid offsets
    once it is written."""
    fh = open_ledger(path)
    if fh is None:
        return
    with fh:
        fh.seek(start)
        for raw in fh:
            end = start + len(raw) + (0 if raw.endswith(b"\n") else 1)
            yield start, end, raw
            start = end


def last_line(fh: BinaryIO) -> tuple[bytes, int]:
    """The last complete line of a file and the offset just after it (0 and b""
    when there is none); a torn line after it is not counted. Reads backwards,
    so a long file costs a block or two."""
    pos = fh.seek(0, os.SEEK_END)
    tail = b""
    while pos > 0:
        step = min(_TAIL_BLOCK, pos)
        pos -= step
        fh.seek(pos)
        tail = fh.read(step) + tail
        last_newline = tail.rfind(b"\n")
        if last_newline < 0:
            continue
        previous = tail.rfind(b"\n", 0, last_newline)
        if previous >= 0 or pos == 0:
            return tail[previous + 1 : last_newline + 1], pos + last_newline + 1
    return b"", 0


def final_succeeded_lines(path: Path) -> Iterator[tuple[bytes, int]]:
    """(raw line, byte offset just after it) of each job's last record when it
    lists images (`lists_images`), in ledger order: what the metadata log holds
    for a ledger (`outputs.metadata_log.rebuild`)."""
    wanted = final_lines(path)
    if not wanted:
        return
    stop = max(wanted)
    for lineno, (_, end, raw) in enumerate(lines_with_ends(path)):
        if lineno in wanted:
            head = read_head(raw)
            if head is not None and lists_images(head.status, head.files):
                yield raw, end
        if lineno >= stop:
            return


def byte_checks(fh: BinaryIO, end: int) -> tuple[int, int]:
    """crc32 of a file's first bytes, and of the bytes just before `end`: what
    a checkpoint at offset `end` (the snapshot's, the audit mark's) keeps."""
    fh.seek(0)
    head = zlib.crc32(fh.read(min(HEAD_CHECK, end)))
    at = max(0, end - TAIL_CHECK)
    fh.seek(at)
    return head, zlib.crc32(fh.read(end - at))


def is_checkpointed(
    fh: BinaryIO, end: int, dev: int, ino: int, head_crc: int, tail_crc: int
) -> bool:
    """Whether the open file is the one a checkpoint at `end` was taken of,
    grown since or not: the same device and inode, at least `end` bytes, and
    the same bytes where the checkpoint checked them."""
    st = os.fstat(fh.fileno())
    return (
        (st.st_dev, st.st_ino) == (dev, ino)
        and st.st_size >= end
        and byte_checks(fh, end) == (head_crc, tail_crc)
    )
