"""Re-encoding off the event loop: one worker pool per run, shut down on every exit.

Downloads land in a private work folder; the pool turns each into the stored
file, which is renamed into `images/` only when complete, so a final name
never holds a half-written or not-yet-converted image.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import multiprocessing
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from batch_runner.store.rundir import INCOMING_NAME
from batch_runner.store.transcode import (
    ImageOptions,
    SourceFacts,
    require_pillow,
    transcode_file,
)

PoolKind = Literal["thread", "process"]
WORK_DIR_NAME = INCOMING_NAME


def cpu_count() -> int:
    """The cores this process may run on (its affinity, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class StoredImage:
    """An image in its final place, with the facts the ledger keeps about it."""

    path: Path
    bytes: int
    sha256: str
    width: int
    height: int
    #: the image as served, when the stored file is a re-encoding of it
    source: SourceFacts | None

    def facts(self, file: str) -> dict[str, object]:
        """The ledger's `images` entry; `file` is the path relative to the run."""
        entry: dict[str, object] = {
            "file": file,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "width": self.width,
            "height": self.height,
        }
        if self.source is not None:
            entry["source"] = self.source.to_json()
        return entry


class Transcoder:
    """Turns downloaded files into stored ones in a pool sized to the cores.

    Threads by default: Pillow releases the GIL while decoding, resizing and
    encoding, so threads run in parallel without pickling or process start-up
    (bench/bench_transcode.py measures both). Use as `async with`.
    """

    def __init__(
        self,
        options: ImageOptions,
        images_dir: Path,
        *,
        pool: PoolKind = "thread",
        workers: int | None = None,
        work_dir: Path | None = None,
    ) -> None:
        require_pillow(options)
        self.options = options
        self.images_dir = images_dir
        #: downloads go here first; cleared at start and at exit. On the same
        #: file system as `images_dir`, so the final rename is atomic
        self.work_dir = work_dir or images_dir / WORK_DIR_NAME
        self._kind = pool
        self._workers = workers or cpu_count()
        self._pool: concurrent.futures.Executor | None = None
        self._names = itertools.count()

    async def __aenter__(self) -> Transcoder:
        # leftovers of a run that died are downloads its jobs will fetch again
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self._kind == "process":
            # forkserver: forking a process that runs an event loop and
            # aiohttp's threads can copy a held lock into the child
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self._workers, mp_context=multiprocessing.get_context("forkserver")
            )
        else:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self._workers, thread_name_prefix="transcode"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Drop queued work, wait for the images being encoded, clear the folder.

        Safe to call twice. Waiting happens in a thread so the loop keeps
        serving whatever else is shutting down.
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            # shielded: a cancelled caller must not leave workers writing into
            # a folder that is then half removed
            await asyncio.shield(
                asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
            )
        shutil.rmtree(self.work_dir, ignore_errors=True)

    async def store(self, downloaded: Path, stem: str) -> StoredImage:
        """Re-encode `downloaded` (a file in `work_dir`) and put it in `images_dir`.

        The downloaded file is gone afterwards, whatever happens. Raises
        TranscodeError when the image cannot be decoded or encoded.
        """
        if self._pool is None:
            raise RuntimeError("Transcoder used outside `async with`")
        tmp = self.work_dir / f".{stem}.{next(self._names)}.out"
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self._pool, transcode_file, downloaded, tmp, self.options
            )
            final = self.images_dir / (stem + result.ext)
            os.replace(result.path, final)
        finally:
            # on cancellation a worker may still be writing `tmp`; aclose()
            # waits for it and removes the whole folder
            _remove(downloaded, tmp)
        return StoredImage(
            path=final,
            bytes=result.bytes,
            sha256=result.sha256,
            width=result.width,
            height=result.height,
            source=result.source,
        )


def _remove(*paths: Path) -> None:
    """Unlink what exists. On the loop on purpose: a metadata operation, like the
    rename that puts a download in place."""
    for path in paths:
        path.unlink(missing_ok=True)
