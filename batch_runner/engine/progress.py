"""Progress reporting: a tqdm bar on stderr, or nothing."""

from __future__ import annotations

import logging
import sys
from typing import Protocol

from tqdm import tqdm


class Progress(Protocol):
    def advance(self, succeeded: int = 0, failed: int = 0) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    """Used when stderr is not a terminal or --no-progress was given."""

    def advance(self, succeeded: int = 0, failed: int = 0) -> None:
        pass

    def close(self) -> None:
        pass


class TqdmProgress:
    """A bar over the jobs in scope; tqdm itself throttles redraws (mininterval)."""

    def __init__(self, total: int) -> None:
        self._ok = 0
        self._failed = 0
        self._bar = tqdm(
            total=total,
            unit="job",
            file=sys.stderr,
            mininterval=0.25,
            dynamic_ncols=True,
            leave=True,
        )

    def advance(self, succeeded: int = 0, failed: int = 0) -> None:
        self._ok += succeeded
        self._failed += failed
        if self._failed:
            # once something failed, keep both counts current next to the bar
            self._bar.set_postfix(ok=self._ok, failed=self._failed, refresh=False)
        self._bar.update(succeeded + failed)

    def close(self) -> None:
        self._bar.close()


class TqdmLoggingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes log lines above the bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)
