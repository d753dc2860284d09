"""Prompt matrices: a job's `matrix` of variables, expanded into the cartesian product.

Pure and lazy: the templates are checked once per manifest row, and combinations
are produced one at a time, so a 1000 x 1000 matrix is never held in memory.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from batch_runner.errors import ManifestError
from batch_runner.manifest.kinds import kind as _kind

#: jobs one matrix row may expand into (before `repeat`); far more than any
#: dataset needs, and a bound on the time one typo in a list can cost
MAX_MATRIX_JOBS = 10_000_000

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# `{{` and `}}` are literal braces; `{...}` a placeholder; a lone brace an error
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True, slots=True)
class Template:
    """A prompt or id with `{name}` placeholders, as a `str.format` pattern."""

    #: positional fields `{0}`, `{1}`... index the matrix's variables
    pattern: str
    used: frozenset[str]

    def fill(self, texts: tuple[str, ...]) -> str:
        return self.pattern.format(*texts)


@dataclass(frozen=True, slots=True)
class Matrix:
    """The checked `matrix` of one manifest row, with its prompt and id templates."""

    names: tuple[str, ...]
    #: per variable, its values as written (for meta) and as text (for templates)
    values: tuple[tuple[tuple[object, str], ...], ...]
    prompt: Template
    job_id: Template | None
    line: int

    @property
    def size(self) -> int:
        """How many combinations (jobs before `repeat`) the matrix makes."""
        return math.prod(len(v) for v in self.values)

    def combinations(self) -> Iterator[tuple[str, str | None, dict[str, object]]]:
        """`(prompt, id or None, variable values)` per combination, lazily, with
        the last variable changing fastest."""
        names = self.names
        for combo in itertools.product(*self.values):
            texts = tuple(text for _, text in combo)
            yield (
                self.prompt.fill(texts),
                self.job_id.fill(texts) if self.job_id is not None else None,
                {name: value for name, (value, _) in zip(names, combo, strict=True)},
            )

    @staticmethod
    def describe(values: Mapping[str, object]) -> str:
        """`animal='cat', style='pixel art'`: which combination an error is about."""
        return ", ".join(f"{name}={value!r}" for name, value in values.items())


def parse_template(
    text: str, names: Mapping[str, int], where: str, line: int, field: str
) -> Template:
    """Check `text`'s placeholders against the matrix variables `names`."""
    parts: list[str] = []
    used: set[str] = set()
    position = 0
    for token in _TOKEN.finditer(text):
        parts.append(text[position : token.start()])
        position = token.end()
        brace = token[0]
        if brace in ("{{", "}}"):
            parts.append(brace)  # stays a literal brace in the pattern
            continue
        column = token.start() + 1
        name = token[1]
        if name is None:
            raise ManifestError(
                f"single {brace!r} at column {column}: write {brace * 2!r} for a "
                "literal brace",
                path=where,
                line=line,
                field=field,
            )
        if _NAME.fullmatch(name) is None:
            raise ManifestError(
                f"placeholder {token[0]!r} at column {column} is not a variable "
                "name (write '{{' and '}}' for literal braces)",
                path=where,
                line=line,
                field=field,
            )
        if name not in names:
            raise ManifestError(
                f"placeholder {{{name}}} has no variable in the matrix "
                f"(it has {', '.join(names)})",
                path=where,
                line=line,
                field=field,
            )
        used.add(name)
        parts.append(f"{{{names[name]}}}")
    parts.append(text[position:])
    return Template("".join(parts), frozenset(used))


def _value_text(value: object, where: str, line: int, name: str) -> str:
    # bool first: it is an int, but `yes` in YAML is surely a word meant as text
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ManifestError(
            f"values of {name!r} must be strings or numbers, not {_kind(value)} "
            "(quote it)",
            path=where,
            line=line,
            field="matrix",
        )
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ManifestError(
                f"a value of {name!r} contains an unpaired surrogate",
                path=where,
                line=line,
                field="matrix",
            ) from None
    return str(value)


def check_matrix(
    matrix: object,
    prompt: str,
    prompt_line: int,
    job_id: tuple[object, int] | None,
    where: str,
    line: int,
) -> Matrix:
    """Check a row's `matrix` (on `line`) and turn its prompt and id into templates.

    Refuses: a matrix that is not a mapping of names to non-empty lists, a
    value that is not a string or number, a value listed twice, a placeholder
    with no variable, a variable no placeholder uses, and an id that leaves
    out a variable with several values (every such id would repeat).
    """
    if not isinstance(matrix, dict) or not matrix:
        raise ManifestError(
            "matrix must be a mapping of variable names to lists of values, "
            "e.g. {animal: [cat, dog]}",
            path=where,
            line=line,
            field="matrix",
        )
    names: dict[str, int] = {}
    values: list[tuple[tuple[object, str], ...]] = []
    for name, items in matrix.items():
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            raise ManifestError(
                f"variable {name!r} is not a name (letters, digits and '_', "
                "not starting with a digit)",
                path=where,
                line=line,
                field="matrix",
            )
        if not isinstance(items, list) or not items:
            raise ManifestError(
                f"variable {name!r} needs a non-empty list of values, "
                f"not {'an empty list' if items == [] else _kind(items)}",
                path=where,
                line=line,
                field="matrix",
            )
        pairs = tuple((item, _value_text(item, where, line, name)) for item in items)
        texts = [text for _, text in pairs]
        if len(set(texts)) != len(texts):
            twice = next(t for i, t in enumerate(texts) if t in texts[:i])
            raise ManifestError(
                f"variable {name!r} lists {twice!r} twice",
                path=where,
                line=line,
                field="matrix",
            )
        names[name] = len(names)
        values.append(pairs)
    prompt_template = parse_template(prompt, names, where, prompt_line, "prompt")
    id_template = None
    used = set(prompt_template.used)
    if job_id is not None:
        raw_id, id_line = job_id
        if not isinstance(raw_id, str):
            raise ManifestError(
                f"id must be a string, not {_kind(raw_id)} (quote it)",
                path=where,
                line=id_line,
                field="id",
            )
        id_template = parse_template(raw_id, names, where, id_line, "id")
        missing = [
            n
            for n, i in names.items()
            if n not in id_template.used and len(values[i]) > 1
        ]
        if missing:
            raise ManifestError(
                f"the id leaves out {{{missing[0]}}}, so the jobs of the matrix "
                "would share ids: use every variable with several values in it",
                path=where,
                line=id_line,
                field="id",
            )
        used |= id_template.used
    unused = [name for name in names if name not in used]
    if unused:
        raise ManifestError(
            f"variable {unused[0]!r} is not used: put {{{unused[0]}}} in the prompt",
            path=where,
            line=line,
            field="matrix",
        )
    result = Matrix(tuple(names), tuple(values), prompt_template, id_template, line)
    if result.size > MAX_MATRIX_JOBS:
        raise ManifestError(
            f"the matrix makes {result.size} jobs; at most {MAX_MATRIX_JOBS} "
            "are allowed per row",
            path=where,
            line=line,
            field="matrix",
        )
    return result
