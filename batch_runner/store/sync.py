"""Mirror an append-only local JSONL file into a bucket as numbered segments.

Objects cannot be appended to, so each sync uploads the complete lines written
since the last one as a new object `<dir>/000001.jsonl`, `000002.jsonl`, ...,
each written once (create-only) and never overwritten. Concatenating the
segments in order gives back the file, so a new machine can restore it from
the bucket alone. Where the local copy stands relative to the bucket is
derived from the listing (the segments' sizes), never from a state file that
could disagree with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from batch_runner.errors import StoreError, StoreExistsError
from batch_runner.store.remote import ObjectInfo, Store

log = logging.getLogger("batch_runner")

_SEGMENT = re.compile(r"^(\d{6,})\.jsonl$")
#: segments downloaded at once when restoring
_FETCH_CONCURRENCY = 16


def segment_key(directory: str, number: int) -> str:
    return f"{directory}/{number:06d}.jsonl"


@dataclass(frozen=True, slots=True)
class Segment:
    number: int
    key: str
    size: int


def segments_of(listing: Sequence[ObjectInfo], directory: str) -> list[Segment]:
    """The numbered segments in a listing of `directory/`, in order; anything
    else found there (a stray upload, a temp object) is ignored."""
    found: list[Segment] = []
    head = directory.rstrip("/") + "/"
    for info in listing:
        if not info.key.startswith(head):
            continue
        match = _SEGMENT.match(info.key[len(head) :])
        if match is not None:
            found.append(Segment(int(match[1]), info.key, info.size))
    found.sort(key=lambda s: s.number)
    return found


async def fetch_segments(store: Store, segments: Sequence[Segment]) -> list[bytes]:
    """Download segments concurrently; returns their bytes in order."""
    sem = asyncio.Semaphore(_FETCH_CONCURRENCY)

    async def one(segment: Segment) -> bytes:
        async with sem:
            return await store.get_bytes(segment.key)

    return list(await asyncio.gather(*(one(s) for s in segments)))


async def download_log(store: Store, directory: str, dest: Path) -> int:
    """Concatenate the bucket's segments of `directory` into `dest` (replaced
    atomically); returns the number of segments. No segments: no file."""
    segments = segments_of(await store.list(directory), directory)
    if not segments:
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            # in batches, so a long run's ledger is never held in memory whole
            for start in range(0, len(segments), 256):
                for data in await fetch_segments(store, segments[start : start + 256]):
                    out.write(data)
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise
    return len(segments)


class SegmentedLog:
    """One local append-only file and its segments under `directory/` in a bucket.

    `open()` restores the file from the bucket when it is missing locally (a new
    pod) or finds how much of it the bucket already holds; `sync()` uploads
    the complete lines written since. One sync at a time.
    """

    def __init__(self, store: Store, local: Path, directory: str) -> None:
        self.store = store
        self.local = local
        self.directory = directory
        self.synced = 0
        self.next_number = 1
        self.segments_uploaded = 0
        self._lock = asyncio.Lock()

    async def open(self) -> str:
        """Restore or reconcile; returns what was done, for the log."""
        segments = segments_of(await self.store.list(self.directory), self.directory)
        self.next_number = segments[-1].number + 1 if segments else 1
        in_bucket = sum(s.size for s in segments)
        local_size = self.local.stat().st_size if self.local.exists() else 0
        if not segments:
            self.synced = 0
            return "nothing in the bucket yet"
        if local_size == 0:
            count = await download_log(self.store, self.directory, self.local)
            self.synced = in_bucket
            return f"restored from {count} segment(s) in the bucket"
        if in_bucket <= local_size:
            await self._check_matches(segments[-1], in_bucket)
            self.synced = in_bucket
            return f"local copy holds all {len(segments)} segment(s)"
        # the bucket is ahead of this state dir: fine only if the local file is
        # exactly the first segments (a stale state dir of the same run)
        covered = 0
        for index, segment in enumerate(segments):
            covered += segment.size
            if covered == local_size:
                await self._check_matches(segment, covered)
                rest = await fetch_segments(self.store, segments[index + 1 :])
                with self.local.open("ab") as out:
                    for data in rest:
                        out.write(data)
                self.synced = in_bucket
                return f"caught up {len(rest)} segment(s) from the bucket"
            if covered > local_size:
                break
        raise self._mismatch()

    async def _check_matches(self, segment: Segment, end: int) -> None:
        remote = await self.store.get_bytes(segment.key)
        with self.local.open("rb") as fh:
            fh.seek(end - segment.size)
            local = fh.read(segment.size)
        if local != remote:
            raise self._mismatch()

    def _mismatch(self) -> StoreError:
        return StoreError(
            f"{self.local} does not match {self.store.url.child(self.directory)}/: "
            "this state directory belongs to another run (or another machine "
            "wrote to the bucket); remove it (or pass another --state-dir) to "
            "resume from the bucket"
        )

    async def sync(self) -> int:
        """Upload the complete lines written since the last sync as the next
        segment; returns the bytes uploaded (0: nothing new).

        Safe to cancel or to fail mid-upload: a segment whose PUT went through
        unseen is recognised on the next call (see `_adopt`).
        """
        async with self._lock:
            chunk = await asyncio.to_thread(self._unsynced)
            uploaded = 0
            while chunk:
                key = segment_key(self.directory, self.next_number)
                try:
                    await self.store.put_bytes(key, chunk, create=True)
                    taken = len(chunk)
                except StoreExistsError:
                    taken = await self._adopt(key, chunk)
                self.synced += taken
                self.next_number += 1
                self.segments_uploaded += 1
                uploaded += taken
                chunk = chunk[taken:]
            return uploaded

    async def _adopt(self, key: str, chunk: bytes) -> int:
        """The segment exists: an earlier upload whose answer was lost (cancelled,
        timed out) wrote it, with the lines that were new then, which are a
        prefix of what is new now. Count those as synced; anything else is
        another writer on the same URL."""
        existing = await self.store.get_bytes(key)
        if not existing or not chunk.startswith(existing):
            raise StoreError(
                f"{self.store.url.child(key)} exists with other content: "
                "is another run writing to the same URL?"
            )
        return len(existing)

    def _unsynced(self) -> bytes:
        try:
            with self.local.open("rb") as fh:
                fh.seek(self.synced)
                data = fh.read()
        except FileNotFoundError:
            return b""
        # only whole lines: the writer may be mid-append
        end = data.rfind(b"\n")
        return data[: end + 1] if end >= 0 else b""
