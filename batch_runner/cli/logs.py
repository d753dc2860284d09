"""Logging set-up: text or one JSON object per line, to stderr and a file."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batch_runner.redact import Redactor

#: attributes every LogRecord has; anything else was passed with `extra=`
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, msg, plus fields given as `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class RedactingFormatter(logging.Formatter):
    """Redacts secrets, as whole tokens, from everything another formatter writes.

    Working on the finished line covers every path into the log: the message
    and its arguments, `extra` fields, tracebacks and stack traces.
    """

    def __init__(self, inner: logging.Formatter, redact: Redactor) -> None:
        super().__init__()
        self._inner = inner
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(self._inner.format(record))


def setup_logging(
    *,
    verbose: bool = False,
    fmt: str = "text",
    log_file: Path | None = None,
    console: logging.Handler | None = None,
    secrets: list[str] | None = None,
) -> logging.Logger:
    """Configure the `batch_runner` logger; returns it."""
    formatter: logging.Formatter = (
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(levelname)s: %(message)s")
    )
    handlers: list[logging.Handler] = [console or logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(
            formatter
            if fmt == "json"
            else logging.Formatter("%(asctime)s %(levelname)s: %(message)s")
        )
        handlers.append(file_handler)
    handlers[0].setFormatter(formatter)
    redact = Redactor(secrets or [])
    for handler in handlers:
        if redact and handler.formatter is not None:
            handler.setFormatter(RedactingFormatter(handler.formatter, redact))
    logger = logging.getLogger("batch_runner")
    for old in logger.handlers:
        old.close()
    logger.handlers[:] = handlers
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    return logger
