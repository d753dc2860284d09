"""A run directory in a bucket, worked on through a local state directory.

The state dir holds the working copy (ledger, attempt log, lock, partial
downloads); the bucket gets the same layout as a local run: `images/<id>.<ext>`
uploaded as each image arrives, `metadata.jsonl`, and the ledger and attempt
log as numbered segments (store/sync.py) every `sync_interval` seconds and at
every clean stop. Commands that only read a run (status, failed, merge,
export, gallery) fetch what they need into a temporary directory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from batch_runner.errors import StoreError, StoreNotFoundError
from batch_runner.store.remote import RemoteUrl, Store
from batch_runner.store.rundir import (
    ATTEMPTS_NAME,
    IMAGES_NAME,
    LEDGER_NAME,
    METADATA_NAME,
)
from batch_runner.store.sync import SegmentedLog, download_log

log = logging.getLogger("batch_runner")
T = TypeVar("T")

#: where the ledger and attempt-log segments live under the run's prefix
LEDGER_DIR = "ledger"
ATTEMPTS_DIR = "attempts"
DEFAULT_SYNC_INTERVAL = 10.0
_DOWNLOAD_CONCURRENCY = 16


class BucketRun:
    """Keeps a bucket in step with the local working copy of one run.

    `open()` before the ledger is read (restores it on a new machine), then
    `start()` the periodic sync; `upload_image()` for each image as it lands;
    `close()` at any clean stop uploads every record written so far.
    """

    def __init__(
        self,
        store: Store,
        state_dir: Path,
        *,
        sync_interval: float = DEFAULT_SYNC_INTERVAL,
    ) -> None:
        self.store = store
        self.url: RemoteUrl = store.url
        self.state_dir = state_dir
        self.sync_interval = sync_interval
        self.ledger = SegmentedLog(store, state_dir / LEDGER_NAME, LEDGER_DIR)
        self.attempts = SegmentedLog(store, state_dir / ATTEMPTS_NAME, ATTEMPTS_DIR)
        self.images_uploaded = 0
        #: False once a final sync failed: records are left only in the state dir
        self.synced = True
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def ledger_path(self) -> Path:
        return self.ledger.local

    @property
    def images_dir(self) -> Path:
        """Where downloads land before they go up (and are deleted)."""
        return self.state_dir / IMAGES_NAME

    async def open(self) -> None:
        """Restore the working copy from the bucket, or check it matches."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for name, mirror in (("ledger", self.ledger), ("attempt log", self.attempts)):
            done = await mirror.open()
            log.info("%s %s: %s", self.url, name, done)
        _remove_leftovers(self.images_dir)

    def start(self) -> None:
        """Sync every `sync_interval` seconds until `close()`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._every_interval(), name="bucket-sync"
            )

    async def _every_interval(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.sync_interval)
                return
            try:
                await self.sync()
            except Exception as exc:
                # the records are safe in the state dir; the next sync retries,
                # and the final one reports a failure that persists
                log.warning("bucket sync failed (will retry): %s", exc)

    async def sync(self) -> None:
        """Upload the ledger and attempt-log lines written since the last sync."""
        # the attempt log first: a submit's outcome should never reach the
        # bucket before the attempt that explains it
        await self.attempts.sync()
        await self.ledger.sync()

    async def close(self) -> bool:
        """Stop the periodic sync and upload everything; False if that failed."""
        if self._task is not None:
            # let a sync in progress finish rather than cut its upload short
            self._stop.set()
            await self._task
            self._task = None
        try:
            await self.sync()
        except StoreError as exc:
            self.synced = False
            log.error(
                "could not upload the last records to %s: %s; they are kept in %s "
                "and go up on the next run that uses this state dir",
                self.url,
                exc,
                self.state_dir,
            )
            return False
        self.synced = True
        log.info(
            "%s: ledger in %d segment(s), %d image(s) uploaded this run",
            self.url,
            self.ledger.next_number - 1,
            self.images_uploaded,
        )
        return True

    async def upload_image(self, local: Path, rel: str) -> None:
        """Upload a downloaded image to `rel` in the bucket, then delete it locally."""
        await self.store.put_file(rel, local)
        # kept on failure, for the retry; a run that dies first leaves it to
        # the next run's open(), which clears the state dir's images/
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local)
        self.images_uploaded += 1

    async def upload_metadata(self, local: Path) -> None:
        await self.store.put_file(METADATA_NAME, local)

    async def image_keys(self) -> set[str]:
        """`images/...` keys present in the bucket."""
        return await image_keys(self.store)


def _remove_leftovers(images_dir: Path) -> None:
    """An image downloaded but not uploaded when the last run died: its job was
    not recorded succeeded, so it is fetched again; the file only takes space."""
    if images_dir.is_dir():
        for leftover in images_dir.iterdir():
            if leftover.is_file():
                leftover.unlink()


async def image_keys(store: Store) -> set[str]:
    """The run's image objects, as paths relative to the run (`images/<name>`)."""
    return {
        info.key
        for info in await store.list(IMAGES_NAME)
        if not info.key.rsplit("/", 1)[-1].startswith(".")
    }


async def fetch_ledger(store: Store, dest_dir: Path) -> Path:
    """Download the run's ledger (and attempt log) into `dest_dir`; returns the
    ledger's path. Raises StoreError when the bucket holds no ledger."""
    ledger = dest_dir / LEDGER_NAME
    if await download_log(store, LEDGER_DIR, ledger) == 0:
        raise StoreNotFoundError(
            f"no ledger at {store.url.child(LEDGER_DIR)}/: nothing has run there yet"
        )
    await download_log(store, ATTEMPTS_DIR, dest_dir / ATTEMPTS_NAME)
    return ledger


async def fetch_ledger_if_any(store: Store, dest_dir: Path) -> bool:
    """`fetch_ledger`, but a prefix where nothing has run yet is no error."""
    try:
        await fetch_ledger(store, dest_dir)
    except StoreNotFoundError:
        return False
    return True


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even where an event
    loop is already running in this thread (a notebook): then on a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def fetch_images(store: Store, dest_dir: Path, keys: Iterable[str]) -> int:
    """Download image objects (relative keys) under `dest_dir`; returns how many.
    Keys that vanished meanwhile are skipped."""
    sem = asyncio.Semaphore(_DOWNLOAD_CONCURRENCY)
    got = 0

    async def one(key: str) -> None:
        nonlocal got
        target = dest_dir / key
        target.parent.mkdir(parents=True, exist_ok=True)
        async with sem:
            try:
                await store.get_file(key, target)
            except StoreNotFoundError:
                target.unlink(missing_ok=True)
                return
        got += 1

    await asyncio.gather(*(one(k) for k in sorted(keys)))
    return got
