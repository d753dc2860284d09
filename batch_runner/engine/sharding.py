"""Which slice of a manifest this process runs: `--shard I/N` or the scheduler's
environment (Kubernetes Indexed Jobs, Slurm job arrays). Pure: env is a mapping."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from batch_runner.errors import UsageError
from batch_runner.manifest.identity import shard_of
from batch_runner.models import JobSpec

#: signs are accepted here so that "-1/2" is reported as out of range
_SPEC = re.compile(r"^\s*([+-]?\d+)\s*/\s*([+-]?\d+)\s*$")


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `count` (0-based); `source` says where it came from."""

    index: int
    count: int
    source: str = "--shard"

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(
                f"shard {self.index}/{self.count} is out of range: need 0 <= I < N"
            )

    @property
    def label(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def keeps(self, job_id: str) -> bool:
        return shard_of(job_id, self.count) == self.index

    def select(self, jobs: Iterable[JobSpec]) -> Iterator[JobSpec]:
        """The jobs of this shard; every job is in exactly one shard, whatever
        the manifest order, because the choice depends on the job id alone."""
        return (job for job in jobs if self.keeps(job.job_id))


def parse_shard(spec: str) -> Shard:
    """`I/N` with 0 <= I < N."""
    match = _SPEC.match(spec)
    if not match:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {spec!r}")
    return Shard(int(match[1]), int(match[2]))


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ValueError(f"{name}={value!r} is not a non-negative integer")
    return int(value)


def _slurm_index(env: Mapping[str, str], task: int) -> int:
    """The 0-based position of array task `task` among the array's tasks.

    `--array=LOW-HIGH:STEP` runs tasks LOW, LOW+STEP, ...; Slurm exports
    SLURM_ARRAY_TASK_MIN, _MAX, _STEP and _COUNT. An array given as a list
    (`--array=1,3,5,7`) may not export a step that describes it, so when MIN,
    MAX and COUNT disagree with the step, the step is taken from them instead.
    """
    low = _env_int(env, "SLURM_ARRAY_TASK_MIN") or 0
    high = _env_int(env, "SLURM_ARRAY_TASK_MAX")
    count = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
    step = _env_int(env, "SLURM_ARRAY_TASK_STEP")
    if step == 0:
        raise ValueError("SLURM_ARRAY_TASK_STEP=0: the array's step must be >= 1")
    step = step or 1
    if (
        high is not None
        and count is not None
        and count > 1
        and low + step * (count - 1) != high
    ):
        span, rest = divmod(high - low, count - 1)
        step = span if not rest and span > 0 else 0
    offset = task - low
    if step < 1 or offset < 0 or offset % step:
        raise ValueError(
            f"SLURM_ARRAY_TASK_ID={task} is not on an evenly spaced array "
            f"(SLURM_ARRAY_TASK_MIN={low}, SLURM_ARRAY_TASK_MAX={high}, "
            f"SLURM_ARRAY_TASK_STEP={env.get('SLURM_ARRAY_TASK_STEP')}, "
            f"SLURM_ARRAY_TASK_COUNT={count}): give the shard with --shard I/N"
        )
    return offset // step


def shard_from_env(env: Mapping[str, str], shards: int | None) -> Shard | None:
    """The shard a scheduler assigned, or None when not running under one.

    Kubernetes Indexed Jobs set JOB_COMPLETION_INDEX (0-based) and leave the
    count to us (`--shards N`, the Job's `completions`). Slurm arrays set
    SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT; ids start at
    SLURM_ARRAY_TASK_MIN (often 1 in `--array=1-8`) and go up by
    SLURM_ARRAY_TASK_STEP (`--array=0-15:4`), so the index is the task's
    position in that sequence.
    """
    k8s = _env_int(env, "JOB_COMPLETION_INDEX")
    if k8s is not None:
        if shards is None:
            raise ValueError(
                "JOB_COMPLETION_INDEX is set: give the number of shards with "
                "--shards N (the Job's completions)"
            )
        return Shard(k8s, shards, source="JOB_COMPLETION_INDEX")
    task = _env_int(env, "SLURM_ARRAY_TASK_ID")
    if task is not None:
        count = shards or _env_int(env, "SLURM_ARRAY_TASK_COUNT")
        if count is None:
            raise ValueError(
                "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT "
                "is not: give --shards N"
            )
        return Shard(_slurm_index(env, task), count, source="SLURM_ARRAY_TASK_ID")
    if shards is not None:
        raise ValueError(
            "--shards N needs --shard I/N, JOB_COMPLETION_INDEX or "
            "SLURM_ARRAY_TASK_ID to say which shard this is"
        )
    return None


def choose_shard(
    spec: str | None, shards: int | None, env: Mapping[str, str]
) -> Shard | None:
    """`--shard` wins; otherwise the scheduler's environment; otherwise no sharding."""
    if spec is not None:
        shard = parse_shard(spec)
        if shards is not None and shards != shard.count:
            raise ValueError(f"--shard {spec} contradicts --shards {shards}")
        return shard
    return shard_from_env(env, shards)


def as_shard(value: str | Shard | None) -> Shard | None:
    """A library call's `shard=`: "I/N", a Shard, or None (everything)."""
    if value is None or isinstance(value, Shard):
        return value
    try:
        return parse_shard(value)
    except ValueError as exc:
        raise UsageError(f"shard: {exc}") from None
