"""What `metadata.jsonl` was last compacted from, so the next run can append to it.

Compacting rewrites `metadata.jsonl` from the whole metadata log: at a million
rows that is about 40 s at the end of every run, even a nightly run that added
a few thousand images. `DIR/.metadata-state` lets the next compaction append
instead. It records:

- how far into the metadata log the file goes (a byte offset), with the log's
  inode and crc32s of its first bytes and of those before that offset (the
  resume snapshot's check of its ledger), so a log rebuilt or replaced since
  is noticed;
- the file itself as it was written: inode, size, mtime and the crc32 of all
  of it (checked as the append copies it), so a file edited, replaced or
  rewritten by anything else is noticed;
- the columns learnt from its rows (`MetadataSchema`) and how many rows it has.

When all of that still holds, the rows of the log's new lines are appended
(`outputs.dataset.compact_metadata`); when the new lines drop a job (a
`--rerun-changed`) or would change the columns, or anything does not match,
the file is rebuilt from the whole log as before. Like the other caches beside
the ledger, `rm DIR/.metadata-state` is always safe: it only costs the next run
a full rewrite. Rows listed earlier are not checked against the disk again, so
an image deleted by hand keeps its row until a full rewrite.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from batch_runner.store.final_records import byte_checks, is_checkpointed
from batch_runner.store.rundir import atomic_write

log = logging.getLogger("batch_runner.outputs.metadata_state")

FORMAT = "zimage-metadata-state"
#: 2: the log is checked by `byte_checks` (head and tail), not a tail alone
VERSION = 2


class Place(msgspec.Struct, frozen=True):
    """A point in a file that only grows, checked as the snapshot checks its
    ledger (`store.final_records.byte_checks`): its inode, an offset in it,
    and crc32s of its first bytes and of the bytes just before that offset."""

    dev: int
    ino: int
    end: int
    head_crc: int
    tail_crc: int


class Written(msgspec.Struct, frozen=True):
    """A file as it was written: a write since changes its inode, size or
    time, and one that restores all three still changes its crc32, which the
    append checks as it copies the file."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    #: of the whole file, computed as it was written
    crc: int


class State(msgspec.Struct, frozen=True):
    format: str
    version: int
    log: Place
    metadata: Written
    rows: int
    #: meta label -> the kinds of value its rows hold (MetadataSchema)
    kinds: dict[str, list[str]]
    #: columns that have had a non-null value
    seen: list[str]


_DECODER = msgspec.json.Decoder(State)


def place(path: Path, end: int) -> Place:
    """The log at offset `end`. Raises OSError."""
    with path.open("rb") as fh:
        st = os.fstat(fh.fileno())
        head_crc, tail_crc = byte_checks(fh, end)
    return Place(st.st_dev, st.st_ino, end, head_crc, tail_crc)


def _stat(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def holds(state: State, log_path: Path, metadata: Path) -> bool:
    """Whether `metadata` looks like the file the state describes (its crc32 is
    the caller's to check, as it reads it) and the log still holds, unchanged,
    the lines it was written from."""
    m = state.metadata
    try:
        if _stat(metadata) != (m.dev, m.ino, m.size, m.mtime_ns):
            return False
        at = state.log
        with log_path.open("rb") as fh:
            return is_checkpointed(fh, at.end, at.dev, at.ino, at.head_crc, at.tail_crc)
    except OSError:
        return False


def load(path: Path) -> State | None:
    """The state, or None when there is none or it cannot be used (torn,
    another version): a miss, never an error."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        state = _DECODER.decode(raw)
    except msgspec.DecodeError:
        return None
    if state.format != FORMAT or state.version != VERSION:
        return None
    return state


def save(
    path: Path,
    *,
    log_path: Path,
    log_end: int,
    metadata: Path,
    metadata_crc: int,
    rows: int,
    kinds: dict[str, list[str]],
    seen: list[str],
) -> None:
    """Record what `metadata` was just written from. Never raises: without a
    state the next compaction rewrites the whole file, as it always could."""
    try:
        state = State(
            format=FORMAT,
            version=VERSION,
            log=place(log_path, log_end),
            metadata=Written(*_stat(metadata), crc=metadata_crc),
            rows=rows,
            kinds=kinds,
            seen=seen,
        )
        with atomic_write(path, fsync=False) as out:
            out.write(msgspec.json.encode(state) + b"\n")
    except OSError as exc:
        log.warning("could not write %s: %s", path, exc)
        forget(path)


def forget(path: Path) -> None:
    """Remove the state (before metadata.jsonl is rewritten some other way)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)
