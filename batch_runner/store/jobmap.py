"""The resume state's containers, keyed by job keys (`manifest.keys`) instead
of id strings: how a million-job ledger fits in a small pod. Pure.

`JobCodes` holds one small int (a state code) per job: the bulk of a ledger,
its succeeded jobs, costs an int key each and no id string. The few jobs with
more to remember (a taskid to poll, a failure, URLs to fetch) are in a
`KeyedMap`, which keeps their id strings too and answers like a dict of ids.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from itertools import compress
from operator import countOf
from typing import Generic, TypeVar

from batch_runner.manifest.keys import DERIVED_LIMIT, job_key

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
    every job a ledger knows.

    A dict while the ledger is folded (`codes`: later records win); `freeze`
    then packs the keys of derived ids (all below 2**64) into one sorted
    array, 8 bytes a job plus a byte for its code, and keeps only the other
    keys in the dict. Frozen, a lookup is a binary search (microseconds, for
    the jobs a run starts one by one); the plan of a whole manifest asks
    instead which of its keys the ledger has, all at once (`count_in`).
    """

    __slots__ = ("_small", "_small_codes", "codes")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self._small = array("Q")
        self._small_codes = b""

    def set(self, key: int, code: int) -> int | None:
        """Give a job its new code; returns its old one. Not once frozen."""
        old = self.codes.get(key)
        self.codes[key] = code
        return old

    def get(self, key: int) -> int | None:
        code = self.codes.get(key)
        if code is not None or not self._small or not 0 <= key < DERIVED_LIMIT:
            return code
        at = bisect_left(self._small, key)
        if at < len(self._small) and self._small[at] == key:
            return self._small_codes[at]
        return None

    def load_packed(self, keys: array[int], code: int) -> None:
        """Start from `keys` (sorted, distinct, below 2**64), all in state
        `code`: a resume snapshot's succeeded jobs. Before any `set`."""
        self._small = keys
        self._small_codes = bytes((code,)) * len(keys)

    def freeze(self) -> None:
        """Pack the keys below 2**64 away from the dict (see the class doc)."""
        codes = self.codes
        if not codes:
            return
        if self._small:
            self._merge()
            return
        # the usual ledger has derived ids only: then all of it, in C
        wide = min(codes) < 0 or max(codes) >= DERIVED_LIMIT
        small = (
            sorted(key for key in codes if 0 <= key < DERIVED_LIMIT)
            if wide
            else sorted(codes)
        )
        if not small:
            return
        self._small = array("Q", small)
        self._small_codes = bytes(map(codes.__getitem__, small))
        del small
        self.codes = (
            {k: c for k, c in codes.items() if not 0 <= k < DERIVED_LIMIT}
            if wide
            else {}
        )

    def _merge(self) -> None:
        """`freeze` when keys are packed already (`load_packed`): the dict's
        keys below 2**64 join them, and its codes win."""
        small = {k: c for k, c in self.codes.items() if 0 <= k < DERIVED_LIMIT}
        if not small:
            return
        self.codes = {k: c for k, c in self.codes.items() if not 0 <= k < DERIVED_LIMIT}
        packed = self._small
        codes = bytearray(self._small_codes)
        new = []
        for key, code in small.items():
            at = bisect_left(packed, key)
            if at < len(packed) and packed[at] == key:
                codes[at] = code
            else:
                new.append((key, code))
        if not new:
            self._small_codes = bytes(codes)
            return
        merged = dict(zip(packed, codes, strict=True))
        merged.update(new)
        keys = sorted(merged)
        self._small = array("Q", keys)
        self._small_codes = bytes(map(merged.__getitem__, keys))

    def items(self) -> Iterator[tuple[int, int]]:
        """Every (key, code)."""
        yield from zip(self._small, self._small_codes, strict=True)
        yield from self.codes.items()

    def count(self, code: int) -> int:
        """How many jobs are in this state."""
        return countOf(self._small_codes, code) + countOf(self.codes.values(), code)

    def by_code(self) -> Counter[int]:
        """How many jobs are in each state."""
        counts = Counter(self._small_codes)
        counts.update(self.codes.values())
        return counts

    def count_in(self, keys: AbstractSet[int]) -> Counter[int]:
        """How many of the derived ids' jobs (keys below 2**64) whose keys are
        in `keys` are in each state."""
        small: Iterable[int] = (k for k in keys if 0 <= k < DERIVED_LIMIT)
        if len(self._small) > len(keys):
            return Counter(filter(None, map(self.get, small)))
        found = map(keys.__contains__, self._small)
        counts = Counter(compress(self._small_codes, found))
        if self.codes:
            counts.update(
                c for k, c in self.codes.items() if 0 <= k < DERIVED_LIMIT and k in keys
            )
        return counts

    def keys_in(self, keys: AbstractSet[int], code: int) -> Iterator[int]:
        """The keys below 2**64 of `keys` whose jobs are in state `code`."""
        for key, found in self.items():
            if found == code and 0 <= key < DERIVED_LIMIT and key in keys:
                yield key

    def __len__(self) -> int:
        return len(self._small) + len(self.codes)


class SucceededJobs:
    """The succeeded jobs of a `JobCodes`, as a read-only set of job ids:
    membership, size and equality; not iterable, as no id strings are kept
    (`keys` gives the job keys)."""

    __slots__ = ("_codes",)

    def __init__(self, codes: JobCodes) -> None:
        self._codes = codes

    def __contains__(self, job_id: object) -> bool:
        return isinstance(job_id, str) and self._codes.get(job_key(job_id)) == SUCCEEDED

    def __len__(self) -> int:
        return self._codes.count(SUCCEEDED)

    def __bool__(self) -> bool:
        return len(self) > 0

    def keys(self) -> set[int]:
        return {k for k, code in self._codes.items() if code == SUCCEEDED}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SucceededJobs):
            return len(self) == len(other) and self.keys() == other.keys()
        if isinstance(other, AbstractSet):
            return len(other) == len(self) and all(job in self for job in other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self)} succeeded jobs>"
