"""What to do with each manifest job given the ledger. Pure."""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from batch_runner.manifest.keys import DERIVED_LIMIT, job_key, key_id
from batch_runner.manifest.params import JobParams
from batch_runner.manifest.reader import KeyedJobSink
from batch_runner.models import JobSpec
from batch_runner.store.jobmap import FAILED, GENERATED, SUBMITTED, SUCCEEDED
from batch_runner.store.ledger import ResumeState


class Action(enum.StrEnum):
    SUBMIT = "submit"
    #: a taskid is on record: ask for it instead of paying for a new task
    POLL = "poll"
    #: the task finished but its images are not on disk: download them
    FETCH = "fetch"
    DONE = "done"
    SKIP_FAILED = "skip-failed"
    #: the manifest gives the job other parameters than its last run had:
    #: refused, unless --rerun-changed makes it SUBMIT
    CHANGED = "changed"


#: failures after which the server-side task is known to have succeeded, so
#: --retry-failed fetches it again instead of paying for a new one
_REFETCH_STAGES = frozenset({"download", "transcode"})
#: changed jobs a plan remembers, to name them in the refusal
MAX_CHANGED_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A job to run now; `taskid` set means poll it rather than submit, `urls`
    set means download them (and poll `taskid` for fresh ones if they fail)."""

    job: JobSpec
    taskid: str | None = None
    urls: tuple[str, ...] = ()


def decide(
    job: JobSpec,
    state: ResumeState,
    *,
    retry_failed: bool,
    download: bool = True,
    rerun_changed: bool = False,
) -> tuple[Action, str | None]:
    """The action for one job and the taskid to poll, if any. A job whose id
    looks derived counts as unchanged here; the plan (`plan_counter`) settles
    such jobs from the ledger."""
    if state.status_of(job.job_id) is not None and state.params.compare(
        job.job_id, JobParams.of(job).key()
    ):
        return (Action.SUBMIT if rerun_changed else Action.CHANGED), None
    return decide_id(job.job_id, state, retry_failed=retry_failed, download=download)


def decide_id(
    job_id: str, state: ResumeState, *, retry_failed: bool, download: bool = True
) -> tuple[Action, str | None]:
    """`decide` for a bare job id (all the ledger knows a job by), parameters
    aside. With `download=False` a generated job is as done as that run can
    make it."""
    return decide_key(
        job_key(job_id), state, retry_failed=retry_failed, download=download
    )


def decide_key(
    key: int, state: ResumeState, *, retry_failed: bool, download: bool = True
) -> tuple[Action, str | None]:
    """`decide_id` for a job known by its key (`manifest.keys`)."""
    code = state.jobs.get(key)
    if code is None:
        return Action.SUBMIT, None
    if code == SUCCEEDED:
        return Action.DONE, None
    if code == SUBMITTED:
        return Action.POLL, state.submitted.get_key(key)
    if code == GENERATED:
        generated = state.generated.get_key(key)
        taskid = generated.taskid if generated is not None else None
        return (Action.FETCH if download else Action.DONE), taskid
    failed = state.failed.get_key(key)
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
    #: jobs whose parameters changed since their last run (under CHANGED, or
    #: under SUBMIT with --rerun-changed), and the first few of them
    changed: int = 0
    changed_examples: list[tuple[str, JobParams]] = field(default_factory=list)
    #: with --rerun-changed: the ids of all of them, for `work_items(rerun=...)`
    rerun: set[str] = field(default_factory=set)

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


class PlanCounter(KeyedJobSink):
    """Counts jobs into `counts`, one at a time: pass it to
    `validate_manifest(on_job_params=...)` so changed jobs are found in the
    same pass (it is fed job keys there, see `KeyedJobSink`). Jobs whose
    ledger parameters are not in memory (see `ParamsIndex.compare`) wait in
    `unsettled` for `settle`."""

    def __init__(
        self,
        state: ResumeState,
        *,
        retry_failed: bool,
        keep: Callable[[str], bool] | None = None,
        download: bool = True,
        rerun_changed: bool = False,
    ) -> None:
        self.counts = PlanCounts()
        #: job id -> (its parameters' key, its parameters), for `settle`
        self.unsettled: dict[str, tuple[int, JobParams]] = {}
        self._state = state
        self._retry_failed = retry_failed
        self._keep = keep
        self._download = download
        self._rerun_changed = rerun_changed
        #: derived ids told but not counted yet: `on_done` counts them
        self._deferred = 0
        # what a job in each state comes to, where that takes no more than
        # its code (a failed job may need its stage)
        self._by_code: dict[int | None, Action] = {
            None: Action.SUBMIT,
            SUCCEEDED: Action.DONE,
            SUBMITTED: Action.POLL,
            GENERATED: Action.FETCH if download else Action.DONE,
        }
        if not retry_failed:
            self._by_code[FAILED] = Action.SKIP_FAILED

    def __call__(self, job_id: str, params: JobParams | None = None, /) -> None:
        self.on_job_key(job_key(job_id), job_id if params is not None else None, params)

    def on_job_keys(self, keys: list[int], /) -> None:
        if self._keep is not None:
            super().on_job_keys(keys)
        else:
            self._deferred += len(keys)

    def on_done(self, derived: AbstractSet[int], /) -> None:
        # every derived id at once: which the ledger has, and in what state
        if not self._deferred:
            return
        jobs = self._state.jobs
        counts = self.counts.counts
        found = jobs.count_in(derived)
        for code, n in found.items():
            action = self._by_code.get(code)
            if action is not None:
                counts[action] += n
            else:
                for key in jobs.keys_in(derived, code):
                    self._count(key)
        counts[Action.SUBMIT] += self._deferred - sum(found.values())
        self._deferred = 0

    def on_job_key(
        self, key: int, job_id: str | None, params: JobParams | None, /
    ) -> None:
        if self._keep is not None:
            if not self._keep(key_id(key, job_id)):
                return
        elif job_id is None and 0 <= key < DERIVED_LIMIT:
            self._deferred += 1
            return
        if params is not None:
            state = self._state
            # a key is kept only for jobs the ledger has records of
            recorded = state.params.recorded_key(key)
            if recorded is not None:
                if recorded != params.key():
                    self._count_changed(key_id(key, job_id), params)
                    return
            elif (
                0 <= key < DERIVED_LIMIT
                and state.jobs.get(key) is not None
                and job_id is not None
                and not params.derives(job_id)
            ):
                # an explicit id that merely looks derived: ask the ledger
                self.unsettled[job_id] = (params.key(), params)
                return
        self._count(key)

    def settle(self, recorded: Mapping[str, int | None]) -> None:
        """Count the unsettled jobs, given the keys of the parameters the ledger
        holds for them (`recorded_params`; None: unreadable, which cannot
        prove an edit)."""
        for job_id, (key, params) in self.unsettled.items():
            last = recorded.get(job_id)
            if last is not None and last != key:
                self._count_changed(job_id, params)
            else:
                self._count(job_key(job_id))
        self.unsettled.clear()

    def _count(self, key: int) -> None:
        action, _ = decide_key(
            key,
            self._state,
            retry_failed=self._retry_failed,
            download=self._download,
        )
        self.counts.counts[action] += 1

    def _count_changed(self, job_id: str, params: JobParams) -> None:
        counts = self.counts
        counts.changed += 1
        if len(counts.changed_examples) < MAX_CHANGED_EXAMPLES:
            counts.changed_examples.append((job_id, params))
        if self._rerun_changed:
            counts.rerun.add(job_id)
            counts.counts[Action.SUBMIT] += 1
        else:
            counts.counts[Action.CHANGED] += 1


def plan_counter(
    state: ResumeState,
    *,
    retry_failed: bool,
    keep: Callable[[str], bool] | None = None,
    download: bool = True,
    rerun_changed: bool = False,
) -> tuple[PlanCounts, PlanCounter]:
    """A PlanCounts and the callback that fills it, one job id at a time; `keep`
    filters ids (a shard). Call `settle` on the counter if it has `unsettled`
    jobs before using the counts."""
    counter = PlanCounter(
        state,
        retry_failed=retry_failed,
        keep=keep,
        download=download,
        rerun_changed=rerun_changed,
    )
    return counter.counts, counter


def count_plan(
    jobs: Iterable[JobSpec],
    state: ResumeState,
    *,
    retry_failed: bool,
    download: bool = True,
    rerun_changed: bool = False,
) -> PlanCounts:
    counts, count = plan_counter(
        state, retry_failed=retry_failed, download=download, rerun_changed=rerun_changed
    )
    for job in jobs:
        count(job.job_id, JobParams.of(job))
    count.settle({})  # no ledger to read: as `decide` does
    return counts


def work_items(
    jobs: Iterable[JobSpec],
    state: ResumeState,
    *,
    retry_failed: bool,
    download: bool = True,
    rerun: Collection[str] = frozenset(),
) -> Iterator[WorkItem]:
    """The jobs to run, in manifest order, streamed; `rerun` are the changed
    jobs the plan found (`PlanCounts.rerun`), submitted again. Parameters are
    not compared here: a run with changed jobs and no --rerun-changed refuses
    to start before it gets this far."""
    for job in jobs:
        if job.job_id in rerun:
            yield WorkItem(job)
            continue
        action, taskid = decide_id(
            job.job_id, state, retry_failed=retry_failed, download=download
        )
        if action is Action.SUBMIT:
            yield WorkItem(job)
        elif action is Action.POLL:
            yield WorkItem(job, taskid)
        elif action is Action.FETCH:
            yield WorkItem(job, taskid, state.generated[job.job_id].urls)
