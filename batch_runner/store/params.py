"""What each job was last run with, in 8 bytes: how a rerun notices edited jobs.

Folded from the ledger with the resume state. A record's parameters (prompt,
resolution, seed, prompt_extend) become their 64-bit in-memory key
(`params_key`). Ids that look derived (16 hex digits) are skipped, at no cost
in memory: a derived id is a hash of its job's parameters, so a job whose
parameters derive its id is unchanged, and the rare one whose do not (an
explicit id that merely looks derived) is looked up again (`compare`).
"""

from __future__ import annotations

import re

from batch_runner.manifest.keys import DERIVED_LIMIT, job_key
from batch_runner.manifest.params import params_key

#: a record whose parameters cannot be read; hash() never returns -1
UNKNOWN = -1

_DERIVED = re.compile(r"[0-9a-f]{16}")


def looks_derived(job_id: str) -> bool:
    """Whether an id has the form of a derived one (16 lower-case hex digits)."""
    return len(job_id) == 16 and _DERIVED.fullmatch(job_id) is not None


class ParamsIndex:
    """job key (`manifest.keys`) -> key of the parameters of its last record
    (see module doc).

    With `derived_too`, ids that look derived are kept as well: for the few
    `compare` cannot decide.
    """

    __slots__ = ("_derived_too", "_keys")

    def __init__(self, *, derived_too: bool = False) -> None:
        self._keys: dict[int, int] = {}
        self._derived_too = derived_too

    def __len__(self) -> int:
        """How many keys are kept."""
        return len(self._keys)

    def note(
        self,
        job_id: str,
        prompt: object,
        resolution: object,
        seed: object,
        prompt_extend: object,
    ) -> None:
        """Note the parameters of a job's record (later records win); values
        of the wrong type (a hand-edited line) make them unknown."""
        self.note_key(job_key(job_id), prompt, resolution, seed, prompt_extend)

    def note_key(
        self,
        key: int,
        prompt: object,
        resolution: object,
        seed: object,
        prompt_extend: object,
    ) -> None:
        """`note` for a job known by its key."""
        # an id of derived form has a key below DERIVED_LIMIT (and only it)
        if 0 <= key < DERIVED_LIMIT and not self._derived_too:
            return
        # `type(...) is`: this runs for every ledger line of an explicit id
        if (
            type(prompt) is str
            and type(resolution) is str
            and (seed is None or type(seed) is int)
            and (prompt_extend is None or type(prompt_extend) is bool)
        ):
            self._keys[key] = params_key(prompt, resolution, seed, prompt_extend)
        else:
            self._keys[key] = UNKNOWN

    def recorded(self, job_id: str) -> int | None:
        """The key last noted for a job; None if none is known."""
        return self.recorded_key(job_key(job_id))

    def recorded_key(self, key: int) -> int | None:
        """`recorded` for a job known by its key."""
        params = self._keys.get(key)
        return None if params is None or params == UNKNOWN else params

    def compare(self, job_id: str, key: int) -> bool | None:
        """Whether a job the ledger has records of was last run with other
        parameters than those of `key`: True or False; None for an id that
        looks derived, whose parameters were not kept (see the module doc)."""
        recorded = self.recorded(job_id)
        if recorded is not None:
            return recorded != key
        if not self._derived_too and looks_derived(job_id):
            return None
        return False  # unreadable parameters cannot prove an edit
