"""What to do with each manifest job given the ledger. Pure."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from batch_runner.models import JobSpec
from batch_runner.store.ledger import ResumeState


class Action(enum.StrEnum):
    SUBMIT = "submit"
    #: a taskid is on record: ask for it instead of paying for a new task
    POLL = "poll"
    #: the task finished but its images are not on disk: download them
    FETCH = "fetch"
    DONE = "done"
    SKIP_FAILED = "skip-failed"


#: failures after which the server-side task is known to have succeeded, so
#: --retry-failed fetches it again instead of paying for a new one
_REFETCH_STAGES = frozenset({"download", "transcode"})


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A job to run now; `taskid` set means poll it rather than submit, `urls`
    set means download them (and poll `taskid` for fresh ones if they fail)."""

    job: JobSpec
    taskid: str | None = None
    urls: tuple[str, ...] = ()


def decide(
    job: JobSpec, state: ResumeState, *, retry_failed: bool, download: bool = True
) -> tuple[Action, str | None]:
    """The action for one job and the taskid to poll, if any."""
    return decide_id(job.job_id, state, retry_failed=retry_failed, download=download)


def decide_id(
    job_id: str, state: ResumeState, *, retry_failed: bool, download: bool = True
) -> tuple[Action, str | None]:
    """`decide` for a bare job id (all the ledger knows a job by). With
    `download=False` a generated job is as done as that run can make it."""
    if job_id in state.succeeded:
        return Action.DONE, None
    taskid = state.submitted.get(job_id)
    if taskid is not None:
        return Action.POLL, taskid
    generated = state.generated.get(job_id)
    if generated is not None:
        return (Action.FETCH if download else Action.DONE), generated.taskid
    failed = state.failed.get(job_id)
    if failed is not None:
        if not retry_failed:
            return Action.SKIP_FAILED, None
        if failed.taskid and failed.stage in _REFETCH_STAGES:
            return Action.POLL, failed.taskid
    return Action.SUBMIT, None


@dataclass(slots=True)
class PlanCounts:
    """How many jobs fall under each action."""

    counts: dict[Action, int] = field(default_factory=lambda: dict.fromkeys(Action, 0))

    @property
    def in_scope(self) -> int:
        return (
            self.counts[Action.SUBMIT]
            + self.counts[Action.POLL]
            + self.counts[Action.FETCH]
        )

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def plan_counter(
    state: ResumeState,
    *,
    retry_failed: bool,
    keep: Callable[[str], bool] | None = None,
    download: bool = True,
) -> tuple[PlanCounts, Callable[[str], None]]:
    """A PlanCounts and the callback that fills it, one job id at a time; `keep`
    filters ids (a shard)."""
    counts = PlanCounts()

    def count(job_id: str) -> None:
        if keep is None or keep(job_id):
            action, _ = decide_id(
                job_id, state, retry_failed=retry_failed, download=download
            )
            counts.counts[action] += 1

    return counts, count


def count_plan(
    jobs: Iterable[JobSpec],
    state: ResumeState,
    *,
    retry_failed: bool,
    download: bool = True,
) -> PlanCounts:
    counts, count = plan_counter(state, retry_failed=retry_failed, download=download)
    for job in jobs:
        count(job.job_id)
    return counts


def work_items(
    jobs: Iterable[JobSpec],
    state: ResumeState,
    *,
    retry_failed: bool,
    download: bool = True,
) -> Iterator[WorkItem]:
    """The jobs to run, in manifest order, streamed."""
    for job in jobs:
        action, taskid = decide(
            job, state, retry_failed=retry_failed, download=download
        )
        if action is Action.SUBMIT:
            yield WorkItem(job)
        elif action is Action.POLL:
            yield WorkItem(job, taskid)
        elif action is Action.FETCH:
            yield WorkItem(job, taskid, state.generated[job.job_id].urls)
