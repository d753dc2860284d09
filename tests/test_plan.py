"""What the planner decides for each job against the ledger state."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from batch_runner.engine.plan import Action, count_plan, decide, work_items
from batch_runner.models import JobSpec, JobStatus
from batch_runner.store.ledger import encode_record, make_record, replay


def job(i: str) -> JobSpec:
    return JobSpec(job_id=i, prompt=f"p{i}")


def state_of(*records: tuple[str, JobStatus, str | None, str | None]):  # type: ignore[no-untyped-def]
    lines = []
    for job_id, status, taskid, stage in records:
        lines.append(
            encode_record(make_record(job(job_id), status, taskid=taskid, stage=stage))
        )
    return replay(lines)


def test_decisions() -> None:
    """Done is skipped, submitted is polled, failed skipped unless retried."""
    st_ = state_of(
        ("a", JobStatus.SUCCEEDED, "t1", None),
        ("b", JobStatus.SUBMITTED, "t2", None),
        ("c", JobStatus.FAILED, "t3", "generate"),
        ("d", JobStatus.FAILED, "t4", "download"),
    )
    assert decide(job("a"), st_, retry_failed=False) == (Action.DONE, None)
    assert decide(job("b"), st_, retry_failed=False) == (Action.POLL, "t2")
    assert decide(job("c"), st_, retry_failed=False) == (Action.SKIP_FAILED, None)
    assert decide(job("c"), st_, retry_failed=True) == (Action.SUBMIT, None)
    # the image was generated and paid for: fetch it again, do not resubmit
    assert decide(job("d"), st_, retry_failed=True) == (Action.POLL, "t4")
    assert decide(job("e"), st_, retry_failed=False) == (Action.SUBMIT, None)


@given(
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.sampled_from(list(JobStatus))),
        max_size=30,
    )
)
def test_resume_never_resubmits_a_recorded_taskid(
    events: list[tuple[str, JobStatus]],
) -> None:
    """Whatever the history, a job whose last record is submitted is polled, and a
    succeeded job is never run again."""
    st_ = state_of(*[(i, s, f"t{n}", None) for n, (i, s) in enumerate(events)])
    jobs = [job(i) for i in "abcdef"]
    items = {w.job.job_id: w for w in work_items(jobs, st_, retry_failed=True)}
    # the state keeps job keys, not ids: ask it about each job by id
    for job_id in (j.job_id for j in jobs if j.job_id in st_.succeeded):
        assert job_id not in items
    for job_id, taskid in st_.submitted.items():
        assert items[job_id].taskid == taskid
    for job_id, generated in st_.generated.items():
        # paid for and finished: fetched (or polled) by its taskid, never resubmitted
        assert items[job_id].taskid == generated.taskid is not None
    counts = count_plan(jobs, st_, retry_failed=True)
    assert counts.total == 6 and counts.in_scope == len(items)


def test_generated_jobs_are_fetched_not_resubmitted() -> None:
    """A generated job is downloaded from its URLs (its taskid kept for expired
    ones) when the run downloads, and left alone with --no-download."""
    st_ = replay(
        [
            encode_record(
                make_record(
                    job("g"), JobStatus.GENERATED, taskid="tg", urls=["http://x/g.png"]
                )
            )
        ]
    )
    assert decide(job("g"), st_, retry_failed=True) == (Action.FETCH, "tg")
    assert decide(job("g"), st_, retry_failed=False, download=False) == (
        Action.DONE,
        "tg",
    )
    [item] = work_items([job("g")], st_, retry_failed=False)
    assert (item.taskid, item.urls) == ("tg", ("http://x/g.png",))
    assert list(work_items([job("g")], st_, retry_failed=False, download=False)) == []
    counts = count_plan([job("g"), job("n")], st_, retry_failed=False)
    assert counts.counts[Action.FETCH] == 1 and counts.in_scope == 2
