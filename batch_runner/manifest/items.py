"""Jobs given as Python values (prompt strings or mappings of manifest fields)
instead of a file: the same rows, checks and errors as a manifest. Pure."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from batch_runner.errors import ManifestError
from batch_runner.manifest.fields import _Row, _row_from
from batch_runner.manifest.kinds import kind as _kind

#: the "path" errors name for jobs given as values; the "line" is the position
ITEMS_NAME = "<jobs>"

#: what a library call takes as jobs: a manifest path (YAML, CSV, JSONL), or an
#: iterable of prompt strings and mappings of manifest fields
Jobs = str | os.PathLike[str] | Iterable[str | Mapping[str, Any]]


def job_source(jobs: Jobs) -> str | os.PathLike[str] | JobItems:
    """A path stays a path (the reader opens it); anything else must be an
    iterable of jobs and is wrapped in JobItems."""
    if isinstance(jobs, str | os.PathLike):
        return jobs
    if isinstance(jobs, bytes | Mapping) or not isinstance(jobs, Iterable):
        raise TypeError(
            "jobs must be a manifest path (str or Path) or an iterable of jobs "
            f"(prompt strings or mappings), not {type(jobs).__name__}"
        )
    return JobItems(jobs)


class JobItems:
    """An iterable of jobs, read like a manifest whose line N is the Nth item.

    Each item is a prompt string or a mapping with the manifest fields
    (`prompt`, `id`, `resolution`, `seed`, `prompt_extend`, `repeat`, `meta`,
    `matrix`).
    The reader iterates the items more than once (validation first, then the
    run), so a one-shot iterator (a generator, `map`, an open file) is copied
    into a list here; a re-iterable collection is not copied.
    """

    __slots__ = ("_items", "name")

    def __init__(self, items: Iterable[object], name: str = ITEMS_NAME) -> None:
        if isinstance(items, str | bytes | os.PathLike | Mapping):
            raise TypeError(
                "JobItems takes an iterable of jobs (wrap a single job in a list), "
                f"not {type(items).__name__}"
            )
        self._items: Iterable[object] = list(items) if iter(items) is items else items
        self.name = name

    def rows(self) -> Iterator[_Row]:
        """One row per item, checked by the manifest's own field checks."""
        where = self.name
        for position, item in enumerate(self._items, start=1):
            if isinstance(item, str):
                yield _row_from({"prompt": (item, position)}, position, {}, where)
            elif isinstance(item, Mapping):
                fields: dict[str, tuple[object, int]] = {}
                for key, value in item.items():
                    if not isinstance(key, str):
                        raise ManifestError(
                            f"field names must be strings, not {_kind(key)} ({key!r})",
                            path=where,
                            line=position,
                        )
                    fields[key] = (value, position)
                yield _row_from(fields, position, {}, where)
            else:
                raise ManifestError(
                    "each job must be a prompt string or a mapping of manifest "
                    f"fields, not {_kind(item)}",
                    path=where,
                    line=position,
                )
