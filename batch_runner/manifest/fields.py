"""Per-field checks and limits shared by every manifest format, and the row they fill.

Every problem is a `ManifestError` naming the file, the line and the field.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batch_runner.errors import ManifestError
from batch_runner.manifest.identity import (
    MAX_JOB_ID_LENGTH,
    MAX_SEED,
    expand_repeat,
    normalize_resolution,
    validate_job_id,
)
from batch_runner.manifest.kinds import kind as _kind
from batch_runner.manifest.matrix import Matrix, check_matrix

MAX_PROMPT_CHARS = 8192
MAX_REPEAT = 10_000
DEFAULT_RESOLUTION = "1024*1024"
#: values (scalars, list items, mapping entries) allowed in one job's meta;
#: stops a YAML alias bomb from exploding into the ledger
MAX_META_VALUES = 10_000

JOB_KEYS = (
    "prompt",
    "id",
    "resolution",
    "seed",
    "prompt_extend",
    "repeat",
    "meta",
    "matrix",
)
DEFAULT_KEYS = ("resolution", "seed", "prompt_extend", "repeat", "meta")


@dataclass(slots=True)
class _Row:
    """One manifest row after type checks and defaults, before `repeat`."""

    line: int
    prompt: str
    job_id: str | None = None
    resolution: str = DEFAULT_RESOLUTION
    seed: int | None = None
    prompt_extend: bool | None = None
    repeat: int | None = None
    meta: dict[str, Any] | None = None
    #: set on a row with `matrix`, whose prompt and id are templates
    matrix: Matrix | None = None
    #: on each combination of a matrix row: the matrix it came from
    source_matrix: Matrix | None = None


def _check_prompt(value: object, where: str, line: int) -> str:
    if not isinstance(value, str):
        raise ManifestError(
            f"prompt must be a string, not {_kind(value)} (quote it)",
            path=where,
            line=line,
            field="prompt",
        )
    if not value or value.isspace():
        raise ManifestError("prompt is empty", path=where, line=line, field="prompt")
    if len(value) > MAX_PROMPT_CHARS:
        raise ManifestError(
            f"huge prompt: {len(value)} characters; at most {MAX_PROMPT_CHARS} "
            "are allowed",
            path=where,
            line=line,
            field="prompt",
        )
    if not value.isascii() and not _is_utf8(value):
        raise ManifestError(
            "prompt contains an unpaired surrogate (a broken \\u escape?)",
            path=where,
            line=line,
            field="prompt",
        )
    # Sent exactly as written: surrounding whitespace is the author's business.
    return value


def _is_utf8(text: str) -> bool:
    """Whether `text` holds no lone surrogates, which JSON escapes can produce."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_id(value: object, where: str, line: int) -> str:
    if not isinstance(value, str):
        raise ManifestError(
            f"id must be a string, not {_kind(value)} (quote it)",
            path=where,
            line=line,
            field="id",
        )
    try:
        return validate_job_id(value)
    except ValueError as err:
        raise ManifestError(str(err), path=where, line=line, field="id") from None


def _check_resolution(value: object, where: str, line: int) -> str:
    if not isinstance(value, str):
        raise ManifestError(
            f"resolution must be a string such as '1024*1024' or '16:9', "
            f"not {_kind(value)}",
            path=where,
            line=line,
            field="resolution",
        )
    try:
        return normalize_resolution(value)
    except ValueError as err:
        raise ManifestError(
            str(err), path=where, line=line, field="resolution"
        ) from None


def _check_int(
    value: object, where: str, line: int, field: str, low: int, high: int
) -> int:
    # bool is an int subclass, but `seed: true` is a mistake, not the seed 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(
            f"must be an integer, not {_kind(value)}",
            path=where,
            line=line,
            field=field,
        )
    if not low <= value <= high:
        raise ManifestError(
            f"must be between {low} and {high}, got {value}",
            path=where,
            line=line,
            field=field,
        )
    return value


def _check_seed(value: object, where: str, line: int) -> int:
    return _check_int(value, where, line, "seed", 0, MAX_SEED)


def _check_repeat(value: object, where: str, line: int) -> int:
    return _check_int(value, where, line, "repeat", 1, MAX_REPEAT)


def _check_prompt_extend(value: object, where: str, line: int) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ManifestError(
        f"must be true/false (or 1/0), not {_kind(value)}",
        path=where,
        line=line,
        field="prompt_extend",
    )


def _check_meta(value: object, where: str, line: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(
            f"meta must be a mapping of your own labels, not {_kind(value)}",
            path=where,
            line=line,
            field="meta",
        )
    problem = _json_problem(value)
    if problem is not None:
        raise ManifestError(problem, path=where, line=line, field="meta")
    return dict(value)


def _json_problem(meta: dict[Any, Any]) -> str | None:
    """Say why `meta` cannot be written to the JSON ledger unchanged, if it cannot."""
    # Iterative, with a budget: YAML aliases can nest deeply or multiply.
    stack: list[tuple[str, object]] = [("meta", meta)]
    budget = MAX_META_VALUES
    while stack:
        name, value = stack.pop()
        budget -= 1
        if budget < 0:
            return f"meta has more than {MAX_META_VALUES} values"
        if isinstance(value, str):
            if not value.isascii() and not _is_utf8(value):
                return f"{name} contains an unpaired surrogate"
            continue
        if value is None or isinstance(value, int | float):
            continue
        if isinstance(value, list):
            stack.extend((f"{name}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"{name}: key {key!r} must be a string"
                stack.append((f"{name}.{key}", item))
        else:
            return f"{name} is {_kind(value)}, which JSON cannot hold (quote it)"
    return None


_CHECKS: dict[str, Callable[[object, str, int], object]] = {
    "id": _check_id,
    "resolution": _check_resolution,
    "seed": _check_seed,
    "prompt_extend": _check_prompt_extend,
    "repeat": _check_repeat,
    "meta": _check_meta,
}


def _unknown_key(
    name: str, valid: Iterable[str], where: str, line: int | None, what: str = "field"
) -> ManifestError:
    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ManifestError(
        f"unknown {what} {name!r}{hint}", path=where, line=line, field=name
    )


_ROW_ATTRIBUTES = {
    "id": "job_id",
    "resolution": "resolution",
    "seed": "seed",
    "prompt_extend": "prompt_extend",
    "repeat": "repeat",
    "meta": "meta",
}

#: a field's value and the line it is on
_Fields = Mapping[str, tuple[object, int]]


def _checked(fields: _Fields, where: str) -> dict[str, object]:
    """Check every field but `prompt`; the keys must already be known."""
    return {
        key: _CHECKS[key](value, where, line)
        for key, (value, line) in fields.items()
        if key != "prompt"
    }


def _defaults_from(fields: _Fields, where: str) -> dict[str, object]:
    for key, (_, line) in fields.items():
        if key == "matrix":
            raise ManifestError(
                "'matrix' cannot have a default: give it on the jobs it expands",
                path=where,
                line=line,
                field=key,
            )
        if key in ("prompt", "id"):
            raise ManifestError(
                f"{key!r} cannot have a default: every job needs its own",
                path=where,
                line=line,
                field=key,
            )
        if key not in DEFAULT_KEYS:
            raise _unknown_key(key, DEFAULT_KEYS, where, line)
    return _checked(fields, where)


def _row_from(
    fields: _Fields, line: int, defaults: Mapping[str, object], where: str
) -> _Row:
    for key, (_, key_line) in fields.items():
        if key not in JOB_KEYS:
            raise _unknown_key(key, JOB_KEYS, where, key_line)
    if "prompt" not in fields:
        raise ManifestError(
            "missing required field", path=where, line=line, field="prompt"
        )
    prompt, prompt_line = fields["prompt"]
    row = _Row(line=line, prompt=_check_prompt(prompt, where, prompt_line))
    if "matrix" in fields:
        # The prompt and the id are templates, checked per combination later.
        matrix, matrix_line = fields["matrix"]
        row.matrix = check_matrix(
            matrix, row.prompt, prompt_line, fields.get("id"), where, matrix_line
        )
        fields = {k: v for k, v in fields.items() if k not in ("matrix", "id")}
    checked = _checked(fields, where)
    for key, value in {**defaults, **checked}.items():
        setattr(row, _ROW_ATTRIBUTES[key], value)
    default_meta = defaults.get("meta")
    if isinstance(default_meta, dict):
        # A fresh dict per row: rows must never share a meta that one might change.
        job_meta = checked.get("meta")
        row.meta = {**default_meta, **(job_meta if isinstance(job_meta, dict) else {})}
    return row


def repeat_copies(
    row: _Row, repeat: int, base_id: str, where: str
) -> list[tuple[str, int]]:
    """`(id, seed)` of each copy of a row with `repeat`, or the ManifestError
    naming the row."""
    last_id = f"{base_id}-{repeat - 1}"
    if len(last_id) > MAX_JOB_ID_LENGTH:
        raise ManifestError(
            f"with repeat {repeat} the job id grows to {len(last_id)} "
            f"characters ({last_id!r}); at most {MAX_JOB_ID_LENGTH} are allowed",
            path=where,
            line=row.line,
            field="id",
        )
    try:
        return expand_repeat(base_id, row.seed, repeat)
    except ValueError as err:
        raise ManifestError(
            str(err), path=where, line=row.line, field="repeat"
        ) from None
