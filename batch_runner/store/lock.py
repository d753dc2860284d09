"""One writer per piece of run state: advisory locks the kernel drops when we die."""

from __future__ import annotations

import contextlib
import fcntl
import os
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO

from batch_runner.errors import RunLockedError

LOCK_NAME = ".lock"


class FileLock:
    """`flock` on a lock file; the file says who holds it, for the error message.

    flock (not a pid file) because the kernel releases it when the process dies,
    even by SIGKILL, so a crashed run never blocks the next one.
    """

    def __init__(self, path: Path, *, what: str, hint: str) -> None:
        self.path = path
        #: what the lock guards and what to do about it, for RunLockedError
        self._what = what
        self._hint = hint
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # "a+" so a failed attempt does not wipe the holder's details
        fh = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown process"
            fh.close()
            raise RunLockedError(
                f"{self._what} is in use by another run ({holder}); {self._hint}"
            ) from None
        fh.seek(0)
        fh.truncate()
        started = datetime.now(UTC).isoformat(timespec="seconds")
        fh.write(f"pid {os.getpid()}, started {started}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.seek(0)
                self._fh.truncate()
            self._fh.close()  # closing drops the flock
            self._fh = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class RunLock(FileLock):
    """The lock of a run directory: `DIR/.lock`."""

    def __init__(self, run_dir: Path, *, hint: str | None = None) -> None:
        super().__init__(
            run_dir / LOCK_NAME,
            what=f"run directory {run_dir}",
            hint=hint or "wait for it to finish or use another --out",
        )
