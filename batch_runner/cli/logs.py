"""Logging set-up: text or one JSON object per line, to stderr and a file."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


class RedactingFilter(logging.Filter):
    """Scrubs secrets from every message, as a last line of defence."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            text = record.getMessage()
            if any(s in text for s in self._secrets):
                for secret in self._secrets:
                    text = text.replace(secret, "***")
                record.msg, record.args = text, None
        return True


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
    redact = RedactingFilter(secrets or [])
    logger = logging.getLogger("batch_runner")
    for old in logger.handlers:
        old.close()
    logger.handlers[:] = handlers
    for handler in handlers:
        handler.addFilter(redact)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    return logger
