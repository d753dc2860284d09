"""The resume state's containers, keyed by job keys (`manifest.keys`) instead
of id strings: how a million-job ledger fits in a small pod. Pure.

`JobCodes` holds one small int (a state code) per job: the bulk of a ledger,
its succeeded jobs, costs an int key each and no id string. The few jobs with
more to remember (a taskid to poll, a failure, URLs to fetch) are in a
`KeyedMap`, which keeps their id strings too and answers like a dict of ids.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from operator import countOf
from typing import Generic, TypeVar

from batch_runner.manifest.keys import job_key

V = TypeVar("V")

#: a job's state in `JobCodes`, by its last record
SUCCEEDED = 1
SUBMITTED = 2
FAILED = 3
GENERATED = 4


class KeyedMap(Mapping[str, V], Generic[V]):
    """job id -> value, stored under the job's key with the id beside it, so
    a lookup by id is exact and iteration gives ids back."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: dict[int, tuple[str, V]] = {}

    def __getitem__(self, job_id: str) -> V:
        item = self._items.get(job_key(job_id)) if isinstance(job_id, str) else None
        if item is None or item[0] != job_id:
            raise KeyError(job_id)
        return item[1]

    def __iter__(self) -> Iterator[str]:
        return (job_id for job_id, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def get_key(self, key: int) -> V | None:
        """The value of the job with this key, if any."""
        item = self._items.get(key)
        return None if item is None else item[1]

    def put(self, key: int, job_id: str, value: V) -> None:
        self._items[key] = (job_id, value)

    def discard(self, key: int) -> None:
        self._items.pop(key, None)


class JobCodes:
    """job key -> state code (SUCCEEDED, SUBMITTED, FAILED, GENERATED) of
    every job a ledger knows."""

    __slots__ = ("codes",)

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}

    def set(self, key: int, code: int) -> int | None:
        """Give a job its new code; returns its old one."""
        old = self.codes.get(key)
        self.codes[key] = code
        return old

    def count(self, code: int) -> int:
        """How many jobs are in this state."""
        return countOf(self.codes.values(), code)

    def get(self, key: int) -> int | None:
        return self.codes.get(key)

    def __len__(self) -> int:
        return len(self.codes)


class SucceededJobs:
    """The succeeded jobs of a `JobCodes`, as a read-only set of job ids:
    membership, size and equality; not iterable, as no id strings are kept
    (`keys` gives the job keys)."""

    __slots__ = ("_codes",)

    def __init__(self, codes: JobCodes) -> None:
        self._codes = codes

    def __contains__(self, job_id: object) -> bool:
        return (
            isinstance(job_id, str)
            and self._codes.codes.get(job_key(job_id)) == SUCCEEDED
        )

    def __len__(self) -> int:
        return self._codes.count(SUCCEEDED)

    def __bool__(self) -> bool:
        return SUCCEEDED in self._codes.codes.values()

    def keys(self) -> set[int]:
        return {k for k, code in self._codes.codes.items() if code == SUCCEEDED}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SucceededJobs):
            return len(self) == len(other) and self.keys() == other.keys()
        if isinstance(other, AbstractSet):
            return len(other) == len(self) and all(job in self for job in other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self)} succeeded jobs>"
