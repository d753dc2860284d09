"""The JSONL manifest reader: one JSON object (or prompt string) per line, streamed."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import Any, NoReturn

from batch_runner.errors import ManifestError
from batch_runner.manifest.fields import _Row, _row_from
from batch_runner.manifest.kinds import kind as _kind
from batch_runner.manifest.textio import _decode_line, _open_binary


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _NonStandardNumber(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _reject_constant(name: str) -> NoReturn:
    raise _NonStandardNumber(name)


def _parse_json_line(text: str, where: str, line: int) -> object:
    try:
        return json.loads(
            text, object_pairs_hook=_unique_pairs, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as err:
        message = f"invalid JSON: {err.msg} (column {err.colno})"
    except _DuplicateKey as err:
        raise ManifestError(
            "duplicate key", path=where, line=line, field=err.key
        ) from None
    except _NonStandardNumber as err:
        message = f"invalid JSON: {err} is not a JSON number"
    except RecursionError:
        message = "invalid JSON: nested too deeply"
    raise ManifestError(message, path=where, line=line)


def _jsonl_rows(where: str) -> Iterator[_Row]:
    with _open_binary(where) as stream:
        for line, raw in enumerate(stream, start=1):
            text = _decode_line(
                raw.removeprefix(codecs.BOM_UTF8) if line == 1 else raw, where, line
            )
            if not text.strip():
                continue
            value = _parse_json_line(text, where, line)
            if isinstance(value, str):
                yield _row_from({"prompt": (value, line)}, line, {}, where)
            elif isinstance(value, dict):
                fields = {key: (item, line) for key, item in value.items()}
                yield _row_from(fields, line, {}, where)
            else:
                raise ManifestError(
                    f"each line must be a JSON object (or a prompt string), "
                    f"not {_kind(value)}",
                    path=where,
                    line=line,
                )
