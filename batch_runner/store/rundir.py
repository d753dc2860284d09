"""A run directory's layout (ledger, attempts, metadata, images, gallery, locks) and
the one `atomic_write` every whole-file output goes through.

Nothing else in the package spells a run directory's file names.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

from batch_runner.store.lock import LOCK_NAME, FileLock, RunLock

LEDGER_NAME = "ledger.jsonl"
ATTEMPTS_NAME = "attempts.jsonl"
METADATA_NAME = "metadata.jsonl"
#: each succeeded ledger line, copied as written: what metadata.jsonl is
#: compacted from (outputs.metadata_log)
METADATA_LOG_NAME = ".metadata-log.jsonl"
METADATA_STATE_NAME = ".metadata-state"
IMAGES_NAME = "images"
GALLERY_NAME = "index.html"
#: under images/: downloads waiting to be re-encoded (no job id contains "/",
#: so no image is ever named this)
INCOMING_NAME = ".incoming"
#: marks a directory as a merge's output, so a later merge may add to it
MERGE_MARKER_NAME = "merge.json"


def beside_ledger(ledger: Path, name: str) -> Path:
    """Where a cache of the ledger's (`name`, e.g. ".resume-state") lives:
    beside it, as `name` for a run dir's own `ledger.jsonl` and as
    `.<ledger's name><name>` for a `--ledger` of another name."""
    if ledger.name == LEDGER_NAME:
        return ledger.with_name(name)
    return ledger.with_name(f".{ledger.name}{name}")


class RunDir:
    """Where one run keeps its state and outputs.

    `root` is the local working directory: the ledger is appended there, images
    are downloaded into `root/images`, and the lock lives there. `location` is
    where the run is *published* for others to read. For a local run the two
    are the same directory; object storage plugs in by giving a bucket URL as
    the location while the run works in a local root, so nothing that appends
    or locks ever needs to know about the bucket.

    `ledger` is `root/ledger.jsonl` unless `--ledger` put it elsewhere.
    """

    __slots__ = ("ledger", "location", "root")

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        ledger: str | os.PathLike[str] | None = None,
        location: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.ledger = Path(ledger) if ledger is not None else self.root / LEDGER_NAME
        self.location = location if location is not None else os.fspath(self.root)

    def __repr__(self) -> str:
        return f"RunDir({os.fspath(self.root)!r}, ledger={os.fspath(self.ledger)!r})"

    @property
    def attempts(self) -> Path:
        """One line per submit attempt, written before the request leaves."""
        return self.root / ATTEMPTS_NAME

    @property
    def metadata(self) -> Path:
        """The Hugging Face ImageFolder index, rebuilt from the ledger."""
        return self.root / METADATA_NAME

    @property
    def metadata_log(self) -> Path:
        """The succeeded ledger lines metadata.jsonl is compacted from."""
        return self.root / METADATA_LOG_NAME

    @property
    def metadata_state(self) -> Path:
        """What metadata.jsonl was compacted from, so the next run can append."""
        return self.root / METADATA_STATE_NAME

    @property
    def images(self) -> Path:
        return self.root / IMAGES_NAME

    @property
    def incoming(self) -> Path:
        """Where downloads wait for --image-format/--max-side to re-encode them."""
        return self.images / INCOMING_NAME

    @property
    def gallery(self) -> Path:
        return self.root / GALLERY_NAME

    @property
    def merge_marker(self) -> Path:
        """Present in a merge's output: the inputs merged into it so far."""
        return self.root / MERGE_MARKER_NAME

    def lock(self, *, hint: str | None = None) -> contextlib.ExitStack:
        """Hold the run directory *and* the ledger for the length of a `with` block.

        The ledger needs a lock of its own because `--ledger` can point two run
        directories at one ledger; locking only the directory let two runs
        append to the same ledger and pay twice for every job. Raises
        RunLockedError at once (never waits) if another process holds either;
        `hint` replaces what its message advises (a run's: another --out).
        """
        stack = contextlib.ExitStack()
        with stack:
            run_lock = stack.enter_context(RunLock(self.root, hint=hint))
            guard = ledger_lock(self.ledger, hint=hint)
            # the usual case: the ledger is this directory's own, under its lock
            if os.path.realpath(guard.path) != os.path.realpath(run_lock.path):
                stack.enter_context(guard)
            return stack.pop_all()

    def remove_partial_downloads(self) -> None:
        """`.part` files are downloads a crash interrupted; their jobs fetch again.
        So is whatever a crash left waiting to be re-encoded."""
        if self.images.is_dir():
            for part in self.images.glob(".*.part"):
                part.unlink(missing_ok=True)
            shutil.rmtree(self.incoming, ignore_errors=True)


def ledger_lock(ledger: Path, *, hint: str | None = None) -> FileLock:
    """The lock that guards a ledger file.

    A file named `ledger.jsonl` is its directory's ledger, so it shares that
    directory's `.lock`: a run on `--out A` and a run given `--ledger
    A/ledger.jsonl` contend for the same lock. A ledger with another name gets
    `.<name>.lock` beside it. Either way taking the lock never creates the
    ledger (a run refused before it starts leaves none behind), and the path
    is resolved first, so a symlink to the ledger finds the same lock.
    """
    real = Path(os.path.realpath(ledger))
    name = LOCK_NAME if real.name == LEDGER_NAME else f".{real.name}.lock"
    return FileLock(
        real.with_name(name),
        what=f"ledger {ledger}",
        hint=hint or "wait for it to finish or use another --ledger",
    )


@overload
def atomic_write(
    path: Path, mode: Literal["wb"] = "wb", *, fsync: bool = True
) -> contextlib.AbstractContextManager[BinaryIO]: ...


@overload
def atomic_write(
    path: Path,
    mode: Literal["w"],
    *,
    fsync: bool = True,
    encoding: str = "utf-8",
    errors: str = "strict",
    newline: str | None = None,
) -> contextlib.AbstractContextManager[TextIO]: ...


def atomic_write(
    path: Path,
    mode: Literal["wb", "w"] = "wb",
    *,
    fsync: bool = True,
    encoding: str = "utf-8",
    errors: str = "strict",
    newline: str | None = None,
) -> contextlib.AbstractContextManager[IO[Any]]:
    """Write `path` through a temp file beside it that replaces it only if the
    `with` block completes; readers see the old file or the new one, never half.

    `fsync=True` (the default) makes the new contents durable before the
    rename. On any error, including cancellation, the temp file is removed and
    the old file is untouched.
    """
    if mode == "wb":
        return _atomic(path, "wb", fsync, None, None, None)
    return _atomic(path, "w", fsync, encoding, errors, newline)


@contextlib.contextmanager
def _atomic(
    path: Path,
    mode: str,
    fsync: bool,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
) -> Iterator[IO[Any]]:
    # not tempfile.mkstemp: its 0600 would make a dataset or a page unreadable
    # to others; os.open with 0666 lets the umask decide, like any file we write
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, mode, encoding=encoding, errors=errors, newline=newline) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
