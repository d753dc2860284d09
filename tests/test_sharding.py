"""Shard selection: --shard I/N and the Kubernetes/Slurm environments."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch_runner.engine.sharding import (
    Shard,
    choose_shard,
    parse_shard,
    shard_from_env,
)
from batch_runner.models import JobSpec


@given(
    st.lists(st.text(min_size=1, max_size=20), max_size=60, unique=True),
    st.integers(1, 9),
    st.randoms(),
)
def test_every_job_in_exactly_one_shard_whatever_the_order(
    ids: list[str], n: int, rnd: object
) -> None:
    """The shards partition the jobs, independent of manifest order."""
    jobs = [JobSpec(job_id=i, prompt="p") for i in ids]
    shuffled = list(jobs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    picked = [[j.job_id for j in Shard(i, n).select(jobs)] for i in range(n)]
    picked_shuffled = [
        {j.job_id for j in Shard(i, n).select(shuffled)} for i in range(n)
    ]
    assert sorted(x for part in picked for x in part) == sorted(ids)
    assert [set(p) for p in picked] == picked_shuffled


def test_parse_shard() -> None:
    """I/N parses; out-of-range or malformed specs are refused."""
    assert parse_shard("2/4") == Shard(2, 4)
    for bad in ("4/4", "1", "a/b", "-1/3", "0/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_kubernetes_indexed_job() -> None:
    """JOB_COMPLETION_INDEX with --shards N selects the shard."""
    assert shard_from_env({"JOB_COMPLETION_INDEX": "3"}, 8) == Shard(
        3, 8, source="JOB_COMPLETION_INDEX"
    )
    with pytest.raises(ValueError, match="--shards"):
        shard_from_env({"JOB_COMPLETION_INDEX": "3"}, None)


def test_slurm_array_uses_count_and_min() -> None:
    """Slurm task ids are offset by SLURM_ARRAY_TASK_MIN; the count comes from
    SLURM_ARRAY_TASK_COUNT unless --shards says otherwise."""
    env = {
        "SLURM_ARRAY_TASK_ID": "5",
        "SLURM_ARRAY_TASK_COUNT": "8",
        "SLURM_ARRAY_TASK_MIN": "1",
    }
    assert shard_from_env(env, None) == Shard(4, 8, source="SLURM_ARRAY_TASK_ID")
    assert shard_from_env(
        {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}, None
    ) == Shard(0, 2, source="SLURM_ARRAY_TASK_ID")


def test_explicit_shard_wins_and_none_without_scheduler() -> None:
    """--shard beats the environment; no flag and no scheduler means no sharding."""
    assert choose_shard("1/2", None, {"JOB_COMPLETION_INDEX": "0"}) == Shard(1, 2)
    assert choose_shard(None, None, {}) is None
    with pytest.raises(ValueError):
        choose_shard("1/2", 3, {})
    with pytest.raises(ValueError):
        choose_shard(None, 3, {})


@given(
    low=st.integers(0, 1000),
    step=st.integers(1, 50),
    count=st.integers(1, 40),
    step_known=st.booleans(),
    shards=st.sampled_from([None, "same"]),
)
def test_slurm_array_with_a_step_maps_each_task_to_its_own_shard(
    low: int, step: int, count: int, step_known: bool, shards: str | None
) -> None:
    """`--array=LOW-HIGH:STEP`: the tasks LOW, LOW+STEP, ... map one to one onto
    shards 0..COUNT-1, whether Slurm exports the step or only MIN/MAX/COUNT."""
    high = low + step * (count - 1)
    seen = []
    for k in range(count):
        env = {
            "SLURM_ARRAY_TASK_ID": str(low + k * step),
            "SLURM_ARRAY_TASK_MIN": str(low),
            "SLURM_ARRAY_TASK_MAX": str(high),
            "SLURM_ARRAY_TASK_COUNT": str(count),
        }
        if step_known:
            env["SLURM_ARRAY_TASK_STEP"] = str(step)
        shard = shard_from_env(env, count if shards else None)
        assert shard is not None and shard.count == count
        seen.append(shard.index)
    assert seen == list(range(count))


def test_irregular_or_off_grid_slurm_arrays_are_refused() -> None:
    """A task id off the array's grid, or a list like 1,3,7 that no step
    describes, is an error naming the variables, never a wrong shard."""
    off_grid = {
        "SLURM_ARRAY_TASK_ID": "5",
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_TASK_MAX": "12",
        "SLURM_ARRAY_TASK_STEP": "4",
        "SLURM_ARRAY_TASK_COUNT": "4",
    }
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_STEP"):
        shard_from_env(off_grid, None)
    irregular = {
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_ARRAY_TASK_MIN": "1",
        "SLURM_ARRAY_TASK_MAX": "7",
        "SLURM_ARRAY_TASK_COUNT": "3",
    }
    with pytest.raises(ValueError, match="--shard"):
        shard_from_env(irregular, None)
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_STEP"):
        shard_from_env({**off_grid, "SLURM_ARRAY_TASK_STEP": "0"}, None)


def test_parse_shard_names_the_problem() -> None:
    """A negative index is reported as out of range, not as a format error."""
    with pytest.raises(ValueError, match="out of range"):
        parse_shard("-1/2")
