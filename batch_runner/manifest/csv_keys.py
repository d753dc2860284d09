"""The CSV manifest read for planning: each job's key, fast.

Validating and planning a million-row CSV is mostly per-row overhead. Lines
are read in blocks; a block of plain rows of a plain layout (`_Bulk`) is
checked and turned into its derived ids' keys by one regex pass and a hash
per line, with no Python code per row. Any other block goes line by line:
a line without quotes is split on commas and its fields checked with the
tests of `csv_rows`, and a derived id is hashed straight into its key; a line
with quotes, or a row with `repeat` or a cell that fails a quick check, goes
to `csv_rows`' own code, which raises the very error a plain read would.
Never builds a JobSpec.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Generator, Iterable, Iterator
from itertools import repeat, starmap
from operator import itemgetter, methodcaller
from typing import Any, TextIO

from batch_runner.errors import ManifestError
from batch_runner.manifest.csv_rows import (
    _csv_bool,
    _csv_error,
    _csv_int,
    _csv_layout,
    _csv_row,
    _CsvLayout,
)
from batch_runner.manifest.fields import (
    DEFAULT_RESOLUTION,
    MAX_PROMPT_CHARS,
    _check_id,
    _check_prompt,
    _Row,
    repeat_copies,
)
from batch_runner.manifest.identity import (
    MAX_SEED,
    derive_job_id,
    normalize_resolution,
)
from batch_runner.manifest.keys import job_key
from batch_runner.manifest.params import JobParams
from batch_runner.manifest.textio import _open_text, _raise_first_bad_line

#: (line, key, explicit id or None for a derived one, its parameters if
#: explicit, None: the matrix slot of `reader._KeyedJob`)
KeyedRow = tuple[int, int, str | None, JobParams | None, None]

#: a longer line may hold a cell over csv's field size limit: csv decides
_LONG_LINE = 100_000
#: seeds of at most 9 digits are below MAX_SEED whatever they are
_SHORT_SEED = 9
#: lines are read in blocks of about this many characters
_BLOCK_CHARS = 1 << 16

_json_string = json.encoder.encode_basestring
_PROMPT_EXTEND_JSON = {None: "null", True: "true", False: "false"}
#: sha256 with nothing hashed yet; copying it skips setting up a new hash
_SHA256 = hashlib.sha256()
_DIGEST = methodcaller("digest")
_from_bytes: Callable[[bytes, str], int] = int.from_bytes  # type: ignore[assignment]
_FIRST_8 = itemgetter(slice(0, 8))
#: the bytes JSON escapes in a string (`encode_basestring`: quote, backslash,
#: control characters) and that csv reads otherwise than a split on commas
#: (quotes, NUL); "\n" ends lines and "\r" is checked apart
_NOT_PLAIN = bytes(range(0x20)).replace(b"\n", b"").replace(b"\r", b"") + b'"\\'


class KeyBlock:
    """Consecutive jobs with derived ids, one per line from `first_line` on
    (no blank lines, no `repeat`): their keys, read in one go (`_Bulk`)."""

    __slots__ = ("first_line", "keys")

    def __init__(self, first_line: int, keys: list[int]) -> None:
        self.first_line = first_line
        self.keys = keys


def csv_keyed_rows(where: str) -> Iterator[KeyedRow | KeyBlock]:
    """The jobs of the CSV file in order, as blocks of keys or one `KeyedRow`
    per job (each copy of a `repeat` row); raises the ManifestError
    `csv_rows` would."""
    with _open_text(where) as stream:
        try:
            yield from _rows(stream, where)
        except UnicodeDecodeError:
            _raise_first_bad_line(where)


class _Bulk:
    """Reads a block of plain rows at C speed: one regex checks every line
    and picks its prompt and seed, which are formatted into the derived id's
    canonical JSON (`identity.derive_job_id`) and hashed, with no Python code
    per row. Only for layouts of `prompt`, `seed` and `meta.*` columns; a
    block with a line the regex does not match (an empty or blank prompt, an
    odd seed, a blank line, a character JSON escapes) is left to the line
    reader (None)."""

    __slots__ = ("_reads",)

    def __init__(self, reads: list[tuple[re.Pattern[str], str, int]]) -> None:
        #: (regex, format of the canonical JSON from its groups, the prompt's
        #: group), tried in turn
        self._reads = reads

    @classmethod
    def for_layout(cls, layout: _CsvLayout) -> _Bulk | None:
        others = (layout.job_id, layout.resolution, layout.prompt_extend)
        if max(*others, layout.repeat) >= 0:
            return None
        res = _json_string(DEFAULT_RESOLUTION)
        prompt = f"([^,\n]{{1,{MAX_PROMPT_CHARS}}})"
        # with a seed column: every seed set (in canonical digits), or none
        seeds = (f"(0|[1-9][0-9]{{0,{_SHORT_SEED - 1}}})", "")
        reads = []
        for seed in seeds if layout.seed >= 0 else ("",):
            columns = ["[^,\n]*"] * layout.width
            columns[layout.prompt] = prompt
            if layout.seed >= 0:
                columns[layout.seed] = seed
            # groups come in column order
            p, s = (1, 0) if seed and layout.seed < layout.prompt else (0, 1)
            seed_json = f"{{{s}}}" if seed else "null"
            pattern = re.compile("^" + ",".join(columns) + "$", re.MULTILINE)
            reads.append((pattern, f'["{{{p}}}",{res},{seed_json},null]', p))
        return cls(reads)

    def _read(self, text: str, lines: int) -> tuple[list[Any], str, int] | None:
        """What the first regex that matches all `lines` of `text` found."""
        for pattern, canonical, prompt_at in self._reads:
            # a match is a whole line: as many as lines means all of them
            found = pattern.findall(text)
            if len(found) == lines:
                return found, canonical, prompt_at if pattern.groups > 1 else -1
        return None

    def keys(self, lines: list[str]) -> list[int] | None:
        """The keys of the jobs on `lines` (one each), or None if any line is
        not plain."""
        text = "".join(lines)
        if "\r" in text:
            if text.count("\r") != text.count("\r\n"):
                return None
            text = text.replace("\r\n", "\n")
        raw = text.encode()
        if len(raw.translate(None, _NOT_PLAIN)) != len(raw):
            return None
        read = self._read(text, len(lines))
        if read is None:
            return None
        found, canonical, prompt_at = read
        prompts: Iterable[str] = found
        jsons: Iterable[str]
        if prompt_at < 0:
            jsons = map(canonical.format, found)
        else:
            prompts = map(itemgetter(prompt_at), found)
            jsons = starmap(canonical.format, found)
        if any(map(str.isspace, prompts)):
            return None
        encoded = "\n".join(jsons).encode().split(b"\n")
        digests = map(_DIGEST, map(hashlib.sha256, encoded))
        return list(map(_from_bytes, map(_FIRST_8, digests), repeat("big")))


def _header(lines: Iterator[str], where: str) -> tuple[_CsvLayout | None, int]:
    """The layout from the first non-blank record, and the lines it took."""
    reader = csv.reader(lines, strict=True)
    start = 1
    try:
        for cells in reader:
            if cells:
                return _csv_layout(cells, where, start), reader.line_num
            start = reader.line_num + 1
    except csv.Error as err:
        raise _csv_error(err, where, start, reader.line_num) from None
    return None, reader.line_num


def _record(
    first: str, lines: Iterator[str], where: str, start: int
) -> tuple[list[str] | None, int]:
    """One record read by csv from `first` on (it may span lines), and the
    number of lines it took; None at the end of the data."""
    reader = csv.reader(itertools.chain((first,), lines), strict=True)
    try:
        cells = next(reader, None)
    except csv.Error as err:
        raise _csv_error(err, where, start, start + reader.line_num - 1) from None
    return cells, reader.line_num


def _copies(row: _Row, where: str) -> Iterator[KeyedRow]:
    """The jobs of a row `csv_rows` read (one with `repeat`, or an odd one)."""
    explicit = row.job_id is not None
    base_id = (
        row.job_id
        if row.job_id is not None
        else derive_job_id(row.prompt, row.resolution, row.seed, row.prompt_extend)
    )
    copies = (
        [(base_id, row.seed)]
        if row.repeat is None
        else repeat_copies(row, row.repeat, base_id, where)
    )
    for job_id, seed in copies:
        params = (
            JobParams(row.prompt, row.resolution, seed, row.prompt_extend, row.line)
            if explicit
            else None
        )
        yield row.line, job_key(job_id), job_id if explicit else None, params, None


def _rows(stream: TextIO, where: str) -> Generator[KeyedRow | KeyBlock, None, None]:
    layout, line = _header(stream, where)
    if layout is None:
        return
    bulk = _Bulk.for_layout(layout)
    while block := stream.readlines(_BLOCK_CHARS):
        keys = bulk.keys(block) if bulk is not None else None
        if keys is not None:
            yield KeyBlock(line + 1, keys)
            line += len(block)
        else:
            line = yield from _line_rows(iter(block), stream, layout, where, line)


def _line_rows(  # noqa: C901
    block: Iterator[str],
    stream: TextIO,
    layout: _CsvLayout,
    where: str,
    line: int,
) -> Generator[KeyedRow, None, int]:
    """The jobs of the lines of `block` (a record that goes on past it is read
    on from `stream`), one at a time; returns the last line number read."""
    width = layout.width
    p_at, id_at, res_at = layout.prompt, layout.job_id, layout.resolution
    seed_at, ext_at, rep_at = layout.seed, layout.prompt_extend, layout.repeat
    new_sha = _SHA256.copy
    from_bytes = int.from_bytes
    for text in block:
        line += 1
        start = line
        if '"' in text or "\x00" in text or len(text) > _LONG_LINE:
            found, used = _record(text, itertools.chain(block, stream), where, start)
            line += used - 1
            if not found:
                continue
            cells = found
        else:
            stripped = text.rstrip("\r\n")
            if not stripped:
                continue  # a blank line, as csv skips it
            cells = stripped.split(",")
        if len(cells) != width or (rep_at >= 0 and cells[rep_at].strip()):
            yield from _copies(_csv_row(cells, layout, where, start), where)
            continue
        prompt = cells[p_at]
        if not prompt or prompt.isspace() or len(prompt) > MAX_PROMPT_CHARS:
            _check_prompt(prompt, where, start)
        job_id = None
        if id_at >= 0 and (cell := cells[id_at]):
            job_id = _check_id(cell, where, start)
        resolution = DEFAULT_RESOLUTION
        if res_at >= 0 and (cell := cells[res_at].strip()):
            try:
                resolution = normalize_resolution(cell)
            except ValueError as err:
                raise ManifestError(
                    str(err), path=where, line=start, field="resolution"
                ) from None
        # the seed as canonical JSON (no sign, no leading zeros) where it is
        # one already: a derived id needs that, not the int
        seed_text = "null"
        if seed_at >= 0 and (cell := cells[seed_at]):
            if (
                len(cell) <= _SHORT_SEED
                and cell.isdigit()
                and cell.isascii()
                and (cell[0] != "0" or len(cell) == 1)
            ):
                seed_text = cell
            elif cell := cell.strip():
                seed_text = str(_csv_int(cell, where, start, "seed", 0, MAX_SEED))
        extend: bool | None = None
        if ext_at >= 0 and (cell := cells[ext_at].strip()):
            extend = _csv_bool(cell, where, start)
        if job_id is not None:
            seed = None if seed_text == "null" else int(seed_text)
            params = JobParams(prompt, resolution, seed, extend, start)
            yield start, job_key(job_id), job_id, params, None
            continue
        # derive_job_id's canonical JSON, hashed straight into the key
        sha = new_sha()
        sha.update(
            f"[{_json_string(prompt)},{_json_string(resolution)},{seed_text},"
            f"{_PROMPT_EXTEND_JSON[extend]}]".encode()
        )
        yield start, from_bytes(sha.digest()[:8], "big"), None, None, None
    return line
