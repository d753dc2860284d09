"""Open a manifest file and decode it as UTF-8, naming the line of any bad byte."""

from __future__ import annotations

import codecs
from typing import BinaryIO, NoReturn, TextIO

from batch_runner.errors import ManifestError


def _open_binary(where: str) -> BinaryIO:
    try:
        return open(where, "rb")
    except OSError as err:
        raise _unreadable(err, where) from None


def _open_text(where: str) -> TextIO:
    try:
        # utf-8-sig drops a BOM so it cannot stick to the first column name;
        # newline="" lets csv see quoted line breaks as they are.
        return open(where, encoding="utf-8-sig", newline="")
    except OSError as err:
        raise _unreadable(err, where) from None


def _unreadable(err: OSError, where: str) -> ManifestError:
    return ManifestError(f"cannot open manifest: {err.strerror or err}", path=where)


def _decode_line(raw: bytes, where: str, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ManifestError(
            f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1})",
            path=where,
            line=line,
        ) from None


def _raise_first_bad_line(where: str) -> NoReturn:
    """Find the line a buffered UTF-8 decoder choked on, by decoding line by line."""
    with _open_binary(where) as stream:
        for line, raw in enumerate(stream, start=1):
            _decode_line(
                raw.removeprefix(codecs.BOM_UTF8) if line == 1 else raw, where, line
            )
    raise ManifestError("not UTF-8 text", path=where)
