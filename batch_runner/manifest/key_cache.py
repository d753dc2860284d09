"""A cache of a CSV manifest's job keys, beside the ledger it is planned against.

Planning a million-row CSV (a nightly `status`, a `run --dry-run`, the start
of a run) is mostly reading the CSV: about 3.7 s of a 5 s plan, of which the
sha256 of each row's canonical parameters (the derived id) is 1.5 s. When the
file is byte for byte the one planned last time, its keys are the same. So a
run whose manifest was read entirely as blocks of derived-id keys
(`csv_keys.KeyBlock`: no explicit ids, no `repeat`, no row needing the
line-by-line reader) leaves them in `.manifest-keys` beside the ledger, and
every later plan of the same bytes (`status`, `--dry-run`, the next run)
reads them from there instead of parsing the CSV.

Same bytes is checked, not assumed: the cache holds the manifest's size and
sha256 (about 40 ms for a 58 MB CSV here), and the package version, since the
keys are what this code derives from the bytes. Anything else is a miss that
parses the CSV as before: a file that changed, was replaced or grew; a cache
of another manifest (one cache per ledger: the last run's manifest); a cache
that is torn or of another version. Only what a parse yields is cached:
everything derived from it (duplicates, counts, the plan) is computed again,
the same way.

Only a run writes it, under the run's lock, as the snapshot: commands that
only read (`status`, `--dry-run`, the library's `plan()`) never write to a run
directory. It is written as the parse goes, to a temporary file renamed into
place once the whole manifest was read and did not change meanwhile (size and
mtime before and after), so a reader never sees half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import sys
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from batch_runner.manifest.csv_keys import KeyBlock, KeyedRow, csv_keyed_rows
from batch_runner.store.rundir import beside_ledger

log = logging.getLogger("batch_runner")

KEY_CACHE_NAME = ".manifest-keys"
#: the first line of a cache file; its JSON header follows on the second
MAGIC = b"zimage-batch-runner manifest keys v1\n"
#: each block: its first line and its number of keys (two little-endian
#: uint64), then the keys themselves (little-endian uint64 each); then an end
#: marker
_BLOCK = struct.Struct("<QQ")
#: the first line of the end marker: after the last block, its count is the
#: number of blocks (a cache without it is torn)
_END = (1 << 64) - 1
_HASH_CHUNK = 1 << 20
#: derived keys are below 2**64 (see `manifest.keys`); anything else is not cached
_KEY_LIMIT = 1 << 64


def key_cache_path(ledger: Path) -> Path:
    """Where the key cache of the run whose ledger is `ledger` lives: beside it."""
    return beside_ledger(ledger, KEY_CACHE_NAME)


def _version() -> str:
    from batch_runner import __version__

    return __version__


def _fingerprint(fh: BinaryIO) -> tuple[int, str]:
    """(size, sha256 hex) of an open file, read from its start."""
    digest = hashlib.sha256()
    size = 0
    while chunk := fh.read(_HASH_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _stat_key(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _header(size: int, digest: str) -> bytes:
    """The cache's second line: what it was made from, and by which version."""
    header = {"version": _version(), "size": size, "sha256": digest}
    return json.dumps(header, sort_keys=True).encode() + b"\n"


def cached_keyed_rows(
    manifest: str, cache: Path | None, *, write: bool = False
) -> Iterator[KeyedRow | KeyBlock]:
    """`csv_keyed_rows(manifest)`, from `cache` when it holds this manifest's
    bytes; otherwise parsed, and with `write` left in `cache` for next time
    when it can be (see the module docstring). `cache` None: always parsed."""
    if cache is None or not (write or cache.is_file()):
        # nothing to read and nothing to write: no need to hash the manifest
        yield from csv_keyed_rows(manifest)
        return
    before = _stat_key(manifest)
    try:
        with open(manifest, "rb") as fh:
            size, digest = _fingerprint(fh)
    except OSError:
        # the parse names the problem (a missing file, a directory ...)
        yield from csv_keyed_rows(manifest)
        return
    header = _header(size, digest)
    cached = _load(cache, header)
    if cached is not None:
        log.debug("%s: job keys from %s", manifest, cache)
        yield from cached
        return
    if not write:
        yield from csv_keyed_rows(manifest)
        return
    writer = _Writer(cache, header)
    try:
        for item in csv_keyed_rows(manifest):
            writer.add(item)
            yield item
    except BaseException:
        writer.abandon()
        raise
    if _stat_key(manifest) != before:
        writer.abandon()  # changed while read: the digest may not be of these keys
    else:
        writer.commit()


def _load(cache: Path, header: bytes) -> Iterator[KeyBlock] | None:
    """The cached blocks, one at a time, if `cache` is a whole cache made for
    `header`; None otherwise. The whole file is checked before the first block
    is given out, so a reader never gets part of the keys and then a miss."""
    try:
        data = cache.read_bytes()
    except OSError:
        return None
    start = len(MAGIC) + len(header)
    if data[:start] != MAGIC + header:
        return None
    spans: list[tuple[int, int, int]] = []
    at = start
    while at + _BLOCK.size <= len(data):
        first_line, count = _BLOCK.unpack_from(data, at)
        at += _BLOCK.size
        if first_line == _END:
            if count != len(spans) or at != len(data):
                return None
            return _blocks(data, spans)
        stop = at + 8 * count
        if stop > len(data):
            return None
        spans.append((first_line, at, stop))
        at = stop
    return None  # no end marker: torn, or not ours


def _blocks(data: bytes, spans: list[tuple[int, int, int]]) -> Iterator[KeyBlock]:
    view = memoryview(data)
    for first_line, start, stop in spans:
        keys = array("Q")
        keys.frombytes(view[start:stop])
        if sys.byteorder != "little":
            keys.byteswap()
        yield KeyBlock(first_line, keys.tolist())


class _Writer:
    """Writes the cache as the parse goes (no copy of the keys in memory);
    gives up at the first item that is not a block of derived keys."""

    def __init__(self, cache: Path, header: bytes) -> None:
        self._cache = cache
        self._tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        self._fh: BinaryIO | None = None
        self._blocks = 0
        if cache.parent.is_dir():
            try:
                self._fh = self._tmp.open("wb")
                self._fh.write(MAGIC + header)
            except OSError:
                self.abandon()

    def add(self, item: KeyedRow | KeyBlock) -> None:
        if self._fh is None:
            return
        if not isinstance(item, KeyBlock) or any(
            key >= _KEY_LIMIT for key in item.keys
        ):
            self.abandon()
            return
        keys = array("Q", item.keys)
        if sys.byteorder != "little":
            keys.byteswap()
        try:
            self._fh.write(_BLOCK.pack(item.first_line, len(item.keys)))
            self._fh.write(keys.tobytes())
        except OSError:
            self.abandon()
            return
        self._blocks += 1

    def abandon(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            with contextlib.suppress(OSError):
                self._tmp.unlink()

    def commit(self) -> None:
        """End the cache and move it into place."""
        if self._fh is None:
            return
        fh, self._fh = self._fh, None
        try:
            with fh:
                fh.write(_BLOCK.pack(_END, self._blocks))
            os.replace(self._tmp, self._cache)
        except OSError as exc:
            log.debug("could not write %s: %s", self._cache, exc)
            with contextlib.suppress(OSError):
                self._tmp.unlink()
