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

from batch_runner.manifest.params import params_key

#: a record whose parameters cannot be read; hash() never returns -1
UNKNOWN = -1

_DERIVED = re.compile(r"[0-9a-f]{16}")


def looks_derived(job_id: str) -> bool:
    """Whether an id has the form of a derived one (16 lower-case hex digits)."""
    return len(job_id) == 16 and _DERIVED.fullmatch(job_id) is not None


class ParamsIndex:
    """job id -> key of the parameters of its last record (see module doc).

    With `derived_too`, ids that look derived are kept as well: for the few
    `compare` cannot decide.
    """

    __slots__ = ("_derived_too", "_keys")

    def __init__(self, *, derived_too: bool = False) -> None:
        self._keys: dict[str, int] = {}
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
        if len(job_id) == 16 and not self._derived_too and looks_derived(job_id):
            return
        # `type(...) is`: this runs for every ledger line of an explicit id
        if (
            type(prompt) is str
            and type(resolution) is str
            and (seed is None or type(seed) is int)
            and (prompt_extend is None or type(prompt_extend) is bool)
        ):
            key = params_key(prompt, resolution, seed, prompt_extend)
        else:
            key = UNKNOWN
        # A dict keeps the first key object it saw: drop it, so the key is the
        # same string object the resume state holds for the job's last record,
        # not a second copy of the id (65 bytes a job).
        keys = self._keys
        keys.pop(job_id, None)
        keys[job_id] = key

    def recorded(self, job_id: str) -> int | None:
        """The key last noted for a job; None if none is known."""
        key = self._keys.get(job_id)
        return None if key is None or key == UNKNOWN else key

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
