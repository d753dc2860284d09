"""The CSV manifest reader: a header row naming the columns, then one job per record.

Streamed record by record, so a large manifest is never held in memory.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from batch_runner.errors import ManifestError
from batch_runner.manifest.fields import (
    MAX_PROMPT_CHARS,
    MAX_REPEAT,
    _check_id,
    _check_int,
    _check_prompt,
    _Row,
    _unknown_key,
)
from batch_runner.manifest.identity import MAX_SEED, normalize_resolution
from batch_runner.manifest.textio import _open_text, _raise_first_bad_line

CSV_COLUMNS = ("prompt", "id", "resolution", "seed", "prompt_extend", "repeat")
META_PREFIX = "meta."

_TRUE_WORDS = frozenset({"1", "true", "yes"})
_FALSE_WORDS = frozenset({"0", "false", "no"})
#: longer digit strings are out of range for every integer field
_MAX_INT_DIGITS = 12


@dataclass(frozen=True, slots=True)
class _CsvLayout:
    """Where each known column sits in a row; -1 when the header lacks it."""

    width: int
    prompt: int
    job_id: int
    resolution: int
    seed: int
    prompt_extend: int
    repeat: int
    meta: tuple[tuple[int, str], ...]


def _csv_layout(header: list[str], where: str, line: int) -> _CsvLayout:
    index: dict[str, int] = {}
    meta: list[tuple[int, str]] = []
    seen: set[str] = set()
    for i, raw_name in enumerate(header):
        name = raw_name.strip()
        if name in seen:
            raise ManifestError(
                "duplicate column", path=where, line=line, field=name or None
            )
        seen.add(name)
        if name in CSV_COLUMNS:
            index[name] = i
        elif name.startswith(META_PREFIX) and len(name) > len(META_PREFIX):
            meta.append((i, name[len(META_PREFIX) :]))
        elif not name:
            raise ManifestError(
                f"column {i + 1} has no name in the header", path=where, line=line
            )
        else:
            raise _unknown_key(
                name, (*CSV_COLUMNS, "meta.<name>"), where, line, what="column"
            )
    if "prompt" not in index:
        raise ManifestError(
            "missing required column", path=where, line=line, field="prompt"
        )
    return _CsvLayout(
        width=len(header),
        prompt=index["prompt"],
        job_id=index.get("id", -1),
        resolution=index.get("resolution", -1),
        seed=index.get("seed", -1),
        prompt_extend=index.get("prompt_extend", -1),
        repeat=index.get("repeat", -1),
        meta=tuple(meta),
    )


def _csv_int(cell: str, where: str, line: int, field: str, low: int, high: int) -> int:
    if cell.isdigit() and cell.isascii() and len(cell) <= _MAX_INT_DIGITS:
        value = int(cell)
        if low <= value <= high:
            return value
    text = cell.strip()
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()):
        raise ManifestError(
            f"must be a whole number, got {cell!r}", path=where, line=line, field=field
        )
    # Checking length first keeps int() away from its 4300-digit limit.
    if len(digits) > _MAX_INT_DIGITS:
        raise ManifestError(
            f"must be between {low} and {high}, got {text}",
            path=where,
            line=line,
            field=field,
        )
    return _check_int(int(text), where, line, field, low, high)


def _csv_bool(cell: str, where: str, line: int) -> bool:
    word = cell.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ManifestError(
        f"must be one of 0/1/true/false/yes/no, got {cell!r}",
        path=where,
        line=line,
        field="prompt_extend",
    )


def _csv_row(cells: list[str], layout: _CsvLayout, where: str, line: int) -> _Row:
    if len(cells) != layout.width:
        raise ManifestError(
            f"expected {layout.width} fields as in the header, found {len(cells)}",
            path=where,
            line=line,
        )
    prompt = cells[layout.prompt]
    if not prompt or prompt.isspace() or len(prompt) > MAX_PROMPT_CHARS:
        _check_prompt(prompt, where, line)
    row = _Row(line, prompt)
    # An empty (or, for numbers, blank) cell means the field is not set.
    if layout.job_id >= 0 and (cell := cells[layout.job_id]):
        row.job_id = _check_id(cell, where, line)
    if layout.resolution >= 0 and (cell := cells[layout.resolution].strip()):
        try:
            row.resolution = normalize_resolution(cell)
        except ValueError as err:
            raise ManifestError(
                str(err), path=where, line=line, field="resolution"
            ) from None
    if layout.seed >= 0 and (cell := cells[layout.seed].strip()):
        row.seed = _csv_int(cell, where, line, "seed", 0, MAX_SEED)
    if layout.prompt_extend >= 0 and (cell := cells[layout.prompt_extend].strip()):
        row.prompt_extend = _csv_bool(cell, where, line)
    if layout.repeat >= 0 and (cell := cells[layout.repeat].strip()):
        row.repeat = _csv_int(cell, where, line, "repeat", 1, MAX_REPEAT)
    if layout.meta:
        row.meta = {name: cells[i] for i, name in layout.meta if cells[i]}
    return row


def _csv_rows(where: str) -> Iterator[_Row]:
    with _open_text(where) as stream:
        try:
            yield from _csv_records(stream, where)
        except UnicodeDecodeError:
            _raise_first_bad_line(where)


def _csv_records(stream: TextIO, where: str) -> Iterator[_Row]:
    reader = csv.reader(stream, strict=True)
    layout: _CsvLayout | None = None
    start = 1
    try:
        for cells in reader:
            # csv yields [] for a blank line.
            if cells:
                if layout is None:
                    layout = _csv_layout(cells, where, start)
                else:
                    yield _csv_row(cells, layout, where, start)
            start = reader.line_num + 1
    except csv.Error as err:
        raise _csv_error(err, where, start, reader.line_num) from None


def _csv_error(err: csv.Error, where: str, start: int, end: int) -> ManifestError:
    message = str(err)
    if "unexpected end of data" in message:
        message = "unterminated quoted field (a '\"' is never closed)"
    elif end > start:
        message = f"malformed CSV record (lines {start}-{end}): {message}"
    else:
        message = f"malformed CSV record: {message}"
    return ManifestError(message, path=where, line=start)
