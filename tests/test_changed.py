"""Edited jobs: a job whose parameters differ from what its id has in the ledger
is refused before anything is sent, unless --rerun-changed regenerates it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch_runner.cli.main import main
from batch_runner.engine.plan import Action, count_plan, decide, plan_counter
from batch_runner.manifest.identity import derive_job_id
from batch_runner.manifest.params import JobParams, params_key
from batch_runner.manifest.reader import validate_manifest
from batch_runner.models import JobSpec, JobStatus
from batch_runner.store.ledger import (
    encode_record,
    make_record,
    read_ledger,
    recorded_params,
    replay,
)
from batch_runner.store.params import ParamsIndex

FAST = ["--no-progress", "--poll-interval", "0.02", "--mock-generation-time", "0.01"]


def run(manifest: Path, out: Path, *extra: str) -> int:
    return main(["run", str(manifest), "--mock", "--out", str(out), *FAST, *extra])


def records(out: Path) -> list[dict[str, Any]]:
    lines = (out / "ledger.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- the case, end to end ------------------------------------------------


@pytest.mark.integration
def test_edited_prompt_is_refused_then_rerun_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """alpha -> beta is refused (exit 2, nothing sent); --rerun-changed makes beta."""
    manifest = write(tmp_path / "m.yaml", "- {id: j1, prompt: alpha, seed: 5}\n")
    out = tmp_path / "run"
    assert run(manifest, out) == 0
    first = records(out)
    alpha_image = (out / first[-1]["files"][0]).read_bytes()

    write(manifest, "- {id: j1, prompt: beta, seed: 5}\n")
    capsys.readouterr()
    assert run(manifest, out) == 2
    err = capsys.readouterr().err
    assert "1 job changed since the ledger recorded it" in err
    assert "j1 (line 1: prompt 'alpha' -> 'beta')" in err
    assert "--rerun-changed" in err
    assert "Traceback" not in err
    assert records(out) == first  # nothing was sent, nothing written
    assert (out / first[-1]["files"][0]).read_bytes() == alpha_image

    assert run(manifest, out, "--rerun-changed") == 0
    after = records(out)
    assert after[: len(first)] == first  # the ledger keeps both records
    last = after[-1]
    assert (last["status"], last["prompt"]) == ("succeeded", "beta")
    assert last["taskid"] != first[-1]["taskid"]
    # the new image replaced the old under the same name
    new_image = (out / last["files"][0]).read_bytes()
    assert last["files"] == first[-1]["files"] and new_image != alpha_image
    assert hashlib.sha256(new_image).hexdigest() == last["images"][0]["sha256"]
    meta = (out / "metadata.jsonl").read_text()
    assert '"beta"' in meta and '"alpha"' not in meta
    assert len(meta.splitlines()) == 1

    # and now it is simply done
    assert run(manifest, out) == 0
    assert records(out) == after


@pytest.mark.integration
def test_submitted_job_with_other_parameters_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job in flight under other parameters is neither polled nor resubmitted."""
    out = tmp_path / "run"
    out.mkdir()
    old = JobSpec(job_id="j1", prompt="alpha", resolution="1:1")
    line = encode_record(make_record(old, JobStatus.SUBMITTED, taskid="zimg_old"))
    (out / "ledger.jsonl").write_bytes(line)
    manifest = write(tmp_path / "m.jsonl", '{"id": "j1", "prompt": "alpha"}\n')
    assert run(manifest, out) == 2
    assert "resolution 1:1 -> 1024*1024" in capsys.readouterr().err
    assert (out / "ledger.jsonl").read_bytes() == line

    assert run(manifest, out, "--rerun-changed") == 0
    last = records(out)[-1]
    assert (last["status"], last["resolution"]) == ("succeeded", "1024*1024")
    assert last["taskid"] != "zimg_old"


@pytest.mark.integration
def test_failed_job_with_other_parameters_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed job edited since is refused; --rerun-changed reruns it without
    --retry-failed, while an unchanged failed job stays skipped."""
    manifest = write(
        tmp_path / "m.yaml",
        "- {id: j1, prompt: 'doomed [fail]'}\n- {id: j2, prompt: 'also [fail]'}\n",
    )
    out = tmp_path / "run"
    assert run(manifest, out) == 1
    write(manifest, "- {id: j1, prompt: 'fixed'}\n- {id: j2, prompt: 'also [fail]'}\n")
    capsys.readouterr()
    assert run(manifest, out) == 2
    assert "prompt 'doomed [fail]' -> 'fixed'" in capsys.readouterr().err
    # j2 failed earlier and is unchanged: still exit 1, but j1 is done
    assert run(manifest, out, "--rerun-changed") == 1
    states = {r["job_id"]: r for r in records(out)}
    assert (states["j1"]["status"], states["j1"]["prompt"]) == ("succeeded", "fixed")
    assert states["j2"]["status"] == "failed"


@pytest.mark.integration
def test_dry_run_shows_and_refuses_changed_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run prints the changed count and exits 2 like the run would;
    with --rerun-changed it plans them as submits."""
    manifest = write(tmp_path / "m.csv", "id,prompt,seed\na,x,1\nb,y,2\nc,z,3\n")
    out = tmp_path / "run"
    assert run(manifest, out) == 0
    write(manifest, "id,prompt,seed\na,x,1\nb,y,20\nc,z,30\n")
    capsys.readouterr()
    args = ["run", str(manifest), "--dry-run", "--out", str(out)]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "changed:         2 (refused)" in captured.out
    assert "2 jobs changed" in captured.err and "seed 2 -> 20" in captured.err
    assert main([*args, "--rerun-changed"]) == 0
    captured = capsys.readouterr()
    assert "2 to submit (2 of them changed since their last run)" in captured.out
    assert "changed:         2 (to submit again)" in captured.out


@pytest.mark.integration
def test_status_reports_changed_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status MANIFEST` counts the jobs the manifest has changed (JSON and text)."""
    manifest = write(
        tmp_path / "m.yaml", "- {id: a, prompt: x}\n- {id: b, prompt: y}\n"
    )
    out = tmp_path / "run"
    assert run(manifest, out) == 0
    write(manifest, "- {id: a, prompt: x2}\n- {id: b, prompt: y}\n- new\n")
    capsys.readouterr()
    assert main(["status", str(manifest), "--out", str(out), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["succeeded"], status["pending"], status["changed"]) == (2, 1, 1)
    assert main(["status", str(manifest), "--out", str(out)]) == 0
    assert "changed since their last run: 1" in capsys.readouterr().out
    assert main(["status", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is None


@pytest.mark.integration
def test_many_changed_jobs_are_summarised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refusal names the first few jobs and counts the rest, on one line."""
    rows = "".join(f"j{i},p{i}\n" for i in range(12))
    manifest = write(tmp_path / "m.csv", "id,prompt\n" + rows)
    out = tmp_path / "run"
    assert run(manifest, out) == 0
    write(manifest, "id,prompt\n" + rows.replace(",p", ",q"))
    capsys.readouterr()
    assert run(manifest, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "12 jobs changed" in err and "j0 (line 2: prompt 'p0' -> 'q0')" in err
    assert "and 7 more" in err


# --- pure parts -------------------------------------------------------------------


def _state(*jobs: tuple[JobSpec, JobStatus]) -> Any:
    lines = [
        encode_record(make_record(job, status, taskid="t1")) for job, status in jobs
    ]
    return replay(lines)


def test_plan_decisions_for_changed_jobs() -> None:
    """Changed: CHANGED in every state, SUBMIT with rerun_changed; others as before."""
    a = JobSpec(job_id="a", prompt="x")
    st_ = _state((a, JobStatus.SUCCEEDED))
    edited = JobSpec(job_id="a", prompt="y")
    assert decide(a, st_, retry_failed=False) == (Action.DONE, None)
    assert decide(edited, st_, retry_failed=False) == (Action.CHANGED, None)
    assert decide(edited, st_, retry_failed=False, rerun_changed=True) == (
        Action.SUBMIT,
        None,
    )
    for status in (JobStatus.SUBMITTED, JobStatus.FAILED):
        assert (
            decide(edited, _state((a, status)), retry_failed=True)[0] is Action.CHANGED
        )
    # a job the ledger does not know is new, not changed
    assert decide(JobSpec(job_id="b", prompt="y"), st_, retry_failed=False)[0] is (
        Action.SUBMIT
    )
    counts = count_plan([edited, a], st_, retry_failed=False)
    assert (counts.changed, counts.counts[Action.CHANGED]) == (2 - 1, 1)


def test_unset_and_false_prompt_extend_are_not_a_change() -> None:
    """Old ledgers wrote false for unset prompt_extend, new ones null: neither
    counts as an edit against an unset (or false) manifest value; true does."""
    unset = JobSpec(job_id="a", prompt="x", prompt_extend=None)
    record = make_record(unset, JobStatus.SUCCEEDED)
    for written in (False, None):
        record["prompt_extend"] = written
        st_ = replay([encode_record(record)])
        for value in (None, False):
            job = JobSpec(job_id="a", prompt="x", prompt_extend=value)
            assert decide(job, st_, retry_failed=False)[0] is Action.DONE
        extended = JobSpec(job_id="a", prompt="x", prompt_extend=True)
        assert decide(extended, st_, retry_failed=False)[0] is Action.CHANGED


def test_derived_ids_cost_no_memory() -> None:
    """A ledger of derived-id jobs keeps no keys; explicit ids keep one each."""
    jobs = []
    for i in range(50):
        prompt = f"prompt {i}"
        extend = (None, True)[i % 2]
        job_id = derive_job_id(prompt, "1:1", i, extend)
        jobs.append(JobSpec(job_id=job_id, prompt=prompt, resolution="1:1", seed=i,
                            prompt_extend=extend))  # fmt: skip
    st_ = _state(*((j, JobStatus.SUCCEEDED) for j in jobs))
    assert len(st_.params) == 0
    assert all(decide(j, st_, retry_failed=False)[0] is Action.DONE for j in jobs)
    named = _state((JobSpec(job_id="named", prompt="p"), JobStatus.SUCCEEDED))
    assert len(named.params) == 1


@pytest.mark.parametrize(("prompt", "code"), [("alpha", 0), ("beta", 2)])
def test_explicit_id_that_looks_derived_is_still_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], prompt: str, code: int
) -> None:
    """An explicit 16-hex id is no hash of its job: its ledger record is read
    again, so an edit is refused and an unchanged job is done."""
    job_id = "0123456789abcdef"
    out = tmp_path / "run"
    out.mkdir()
    old = JobSpec(job_id=job_id, prompt="alpha")
    (out / "ledger.jsonl").write_bytes(
        encode_record(make_record(old, JobStatus.SUCCEEDED, taskid="t"))
    )
    manifest = write(tmp_path / "m.csv", f"id,prompt\n{job_id},{prompt}\n")
    assert main(["run", str(manifest), "--dry-run", "--out", str(out)]) == code
    captured = capsys.readouterr()
    if code:
        assert "prompt 'alpha' -> 'beta'" in captured.err
    else:
        assert "1 already done" in captured.out


def test_unreadable_parameters_are_not_a_change() -> None:
    """A record without readable parameters cannot prove an edit: no refusal."""
    line = b'{"job_id":"a","status":"succeeded","taskid":"t","prompt":7}\n'
    st_ = replay([line])
    assert decide(JobSpec(job_id="a", prompt="x"), st_, retry_failed=False) == (
        Action.DONE,
        None,
    )


def test_validation_pass_finds_changed_jobs(tmp_path: Path) -> None:
    """The plan counter given to validate_manifest counts changed jobs per shard."""
    st_ = _state(
        (JobSpec(job_id="a", prompt="x"), JobStatus.SUCCEEDED),
        (JobSpec(job_id="b", prompt="y"), JobStatus.SUCCEEDED),
    )
    manifest = write(tmp_path / "m.csv", "id,prompt\na,x\nb,changed\nc,new\n")
    counts, count = plan_counter(st_, retry_failed=False)
    validate_manifest(manifest, on_job_params=count)
    assert counts.changed == 1
    assert [(j, p.line) for j, p in counts.changed_examples] == [("b", 3)]
    c = counts.counts
    assert (c[Action.DONE], c[Action.CHANGED], c[Action.SUBMIT]) == (1, 1, 1)
    kept, keep_count = plan_counter(st_, retry_failed=False, keep=lambda i: i != "b")
    validate_manifest(manifest, on_job_params=keep_count)
    assert kept.changed == 0


def test_only_explicit_ids_are_compared(tmp_path: Path) -> None:
    """An explicit id that looks derived is compared; a derived id never is: it
    is the hash of its parameters (even if its record says otherwise, as with
    a prompt an old version redacted)."""
    derived = derive_job_id("a cat", "1024*1024", None, None)
    hexlike = "0123456789abcdef"
    ledger = tmp_path / "ledger.jsonl"
    jobs = [
        JobSpec(job_id=derived, prompt="a ***"),
        JobSpec(job_id=hexlike, prompt="x"),
    ]
    ledger.write_bytes(
        b"".join(
            encode_record(make_record(j, JobStatus.SUCCEEDED, taskid="t")) for j in jobs
        )
    )
    st_ = read_ledger(ledger)
    assert len(st_.params) == 0  # neither id costs memory
    manifest = write(tmp_path / "m.csv", f"id,prompt\n,a cat\n{hexlike},new\n")
    counts, count = plan_counter(st_, retry_failed=False, rerun_changed=True)
    validate_manifest(manifest, on_job_params=count)
    assert set(count.unsettled) == {hexlike}
    count.settle(recorded_params(ledger, count.unsettled))
    assert counts.rerun == {hexlike}
    assert (counts.counts[Action.DONE], counts.counts[Action.SUBMIT]) == (1, 1)


# --- ledger readers agree on the keys ------------------------------------------

_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=30
)


@given(
    prompt=_text,
    resolution=st.sampled_from(["1024*1024", "16:9", "512*768"]),
    seed=st.none() | st.integers(min_value=0, max_value=2**31 - 1),
    extend=st.none() | st.booleans(),
    status=st.sampled_from([JobStatus.SUCCEEDED, JobStatus.SUBMITTED]),
    meta=st.dictionaries(_text, _text, max_size=2),
)
def test_ledger_keys_equal_the_job_keys(
    prompt: str,
    resolution: str,
    seed: int | None,
    extend: bool | None,
    status: JobStatus,
    meta: dict[str, str],
) -> None:
    """The key replay keeps for a record equals the JobSpec's, whoever wrote
    the line (our writer, or key-sorted ASCII JSON) and whatever it escapes."""
    job = JobSpec(job_id="j", prompt=prompt, resolution=resolution, seed=seed,
                  prompt_extend=extend, meta=meta)  # fmt: skip
    record = make_record(job, status, taskid="t", msg='odd "prompt":"x" msg')
    line = encode_record(record)
    expected = params_key(prompt, resolution, seed, extend)
    assert JobParams.of(job).key() == expected
    assert replay([line]).params.recorded("j") == expected
    other = (json.dumps(record, sort_keys=True) + "\n").encode()
    assert replay([other]).params.recorded("j") == expected
    # an id that looks derived is looked up only on request
    hexlike = "0123456789abcdef"
    hex_line = line.replace(b'"j"', f'"{hexlike}"'.encode(), 1)
    assert replay([hex_line]).params.recorded(hexlike) is None
    every = ParamsIndex(derived_too=True)
    every.note(hexlike, prompt, resolution, seed, extend)
    assert every.recorded(hexlike) == expected


def test_each_job_keeps_the_key_of_its_last_record() -> None:
    """Whatever the interleaving, a job's key is that of its last record."""
    jobs = [JobSpec(job_id=f"job-{i}", prompt=f"p{i}") for i in range(300)]
    edited = [JobSpec(job_id=j.job_id, prompt=j.prompt + "!") for j in jobs]
    first = [
        encode_record(make_record(j, JobStatus.SUBMITTED, taskid="t")) for j in jobs
    ]
    later = [
        encode_record(make_record(j, JobStatus.SUCCEEDED, taskid="t")) for j in edited
    ]
    st_ = replay(first[:250] + [x for pair in zip(first[250:], later, strict=False)
                                for x in pair] + later[50:])  # fmt: skip
    for job in edited:
        assert st_.params.recorded(job.job_id) == JobParams.of(job).key()


@pytest.mark.integration
def test_library_calls_refuse_or_rerun_changed_jobs(tmp_path: Path) -> None:
    """run_batch_sync raises ChangedJobsError (sending nothing), plan() reports
    the refusal, and rerun_changed=True regenerates the job."""
    import batch_runner

    out = tmp_path / "run"
    quick = {"mock": True, "poll_interval": 0.02, "mock_generation_time": 0.01}
    batch_runner.run_batch_sync([{"id": "j1", "prompt": "alpha"}], out=out, **quick)
    edited = [{"id": "j1", "prompt": "beta"}]
    before = (out / "ledger.jsonl").read_bytes()
    with pytest.raises(batch_runner.ChangedJobsError) as err:
        batch_runner.run_batch_sync(edited, out=out, **quick)
    assert err.value.job_ids == ("j1",) and err.value.count == 1
    assert err.value.path == "<jobs>"
    assert (out / "ledger.jsonl").read_bytes() == before
    dry = batch_runner.plan(edited, out=out)
    assert (dry.changed, dry.refused, dry.submit) == (1, 1, 0)
    assert dry.refusal is not None and "prompt 'alpha' -> 'beta'" in dry.refusal
    rerun = batch_runner.plan(edited, out=out, rerun_changed=True)
    assert (rerun.changed, rerun.refused, rerun.submit, rerun.refusal) == (
        1,
        0,
        1,
        None,
    )
    result = batch_runner.run_batch_sync(edited, out=out, rerun_changed=True, **quick)
    assert (result.succeeded, result.submitted) == (1, 1)
