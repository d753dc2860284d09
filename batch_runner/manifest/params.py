"""A job's parameters (what is sent for it) and their in-memory key.

The key tells an edited job from an unchanged one: Python's `hash()` of the
parameters as a tuple. Fast and 8 bytes, it is only ever compared within one
process and never stored (unlike ids and seeds, see `identity`).
"""

from __future__ import annotations

from typing import NamedTuple

from batch_runner.manifest.identity import derive_job_id
from batch_runner.models import JobSpec


def params_key(
    prompt: str, resolution: str, seed: int | None, prompt_extend: bool | None
) -> int:
    """The in-memory key of a job's parameters (see the module docstring).

    `prompt_extend` false counts as unset: ledgers before it was recorded as
    null wrote false for both, so old records cannot tell them apart. 64 bits
    on 64-bit builds: two different parameter sets share a key with
    probability 2**-64. CPython's hash() never returns -1, which leaves -1
    free to mean "unknown".
    """
    return hash((prompt, resolution, seed, prompt_extend is True))


class JobParams(NamedTuple):
    """What a job sends, and its manifest line: handed to `on_job_params`.

    A NamedTuple: validation makes one per job with an explicit id, a million
    times for a large manifest, and a frozen dataclass is several times slower
    to build.
    """

    prompt: str
    resolution: str
    seed: int | None
    prompt_extend: bool | None
    line: int

    def key(self) -> int:
        """`params_key` of these parameters."""
        return params_key(self.prompt, self.resolution, self.seed, self.prompt_extend)

    def derives(self, job_id: str) -> bool:
        """Whether `job_id` is the id these parameters get when none is given
        (with false prompt_extend also read as unset: `failed` wrote unset as 0)."""
        if job_id == derive_job_id(
            self.prompt, self.resolution, self.seed, self.prompt_extend
        ):
            return True
        return self.prompt_extend is False and job_id == derive_job_id(
            self.prompt, self.resolution, self.seed, None
        )

    @classmethod
    def of(cls, job: JobSpec) -> JobParams:
        """A JobSpec's parameters (its line is not known: 0)."""
        return cls(job.prompt, job.resolution, job.seed, job.prompt_extend, 0)
