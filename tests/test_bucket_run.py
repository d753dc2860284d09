"""Runs whose --out is a bucket, end to end: the real CLI in subprocesses, the
standalone simulator, and moto's S3 server on loopback (signals, kills, lost
state dirs, and every reading command pointed at the bucket)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from batch_runner.cli.main import main
from tests.procs import (
    KEY,
    run_runner,
    runner_env,
    standalone_simulator,
    start_runner,
    wait_for,
    write_manifest,
)
from tests.s3server import Bucket

FAST = ["--no-progress", "--poll-interval", "0.02"]
ROOT = Path(__file__).resolve().parent.parent


def bucket_ledger(bucket: Bucket, prefix: str = "run") -> list[dict[str, Any]]:
    """The ledger as the bucket holds it: its segments, in order, parsed."""
    records = []
    for key in bucket.keys(f"{prefix}/ledger/"):
        for line in bucket.get(key).splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


def local_records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def last_states(records: list[dict[str, Any]]) -> dict[str, str]:
    return {r["job_id"]: r["status"] for r in records}


def test_full_run_lands_in_the_bucket_with_a_local_layout(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """A run to s3:// leaves images (real PNGs), metadata.jsonl and the ledger
    in the bucket, stages no image locally, and writes the key into no object."""
    jobs = 10
    manifest = write_manifest(tmp_path / "m.yaml", jobs)
    state = tmp_path / "state"
    with standalone_simulator("--generation-time", "0.05") as sim:
        res = run_runner(
            [
                str(manifest),
                "--base-url",
                sim.url,
                "--out",
                s3_bucket.url(),
                "--state-dir",
                str(state),
                *FAST,
            ]
        )
    assert res.returncode == 0, res.stderr
    keys = s3_bucket.keys()
    images = [k for k in keys if k.startswith("run/images/")]
    assert images == sorted(f"run/images/job-{i}.png" for i in range(jobs))
    for key in images:
        with Image.open(io.BytesIO(s3_bucket.get(key))) as img:
            assert img.format == "PNG"
            img.load()
    assert "run/metadata.jsonl" in keys
    rows = [json.loads(x) for x in s3_bucket.get("run/metadata.jsonl").splitlines()]
    assert sorted(r["file_name"] for r in rows) == sorted(
        f"images/job-{i}.png" for i in range(jobs)
    )
    assert any(k.startswith("run/attempts/") for k in keys)
    states = last_states(bucket_ledger(s3_bucket))
    assert states == {f"job-{i}": "succeeded" for i in range(jobs)}
    # nothing staged: the state dir keeps no image once it is uploaded
    assert not any((state / "images").iterdir())
    for key in keys:
        assert KEY.encode() not in s3_bucket.get(key), key


def test_sigterm_then_lost_state_dir_resubmits_nothing(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """After SIGTERM every taskid is in the bucket, even with syncs an hour
    apart; a new machine (state dir gone) resumes from the bucket alone and the
    server creates exactly one task per job."""
    jobs = 24
    manifest = write_manifest(tmp_path / "m.yaml", jobs)
    state = tmp_path / "state"
    with standalone_simulator("--generation-time", "1.0") as sim:
        args = [
            str(manifest),
            "--base-url",
            sim.url,
            "--out",
            s3_bucket.url(),
            "--state-dir",
            str(state),
            "--sync-interval",
            "3600",  # only the clean stop can have uploaded anything
            "--concurrency",
            "6",
            "--grace",
            "0.2",
            *FAST,
        ]
        proc = start_runner(args)
        ledger = state / "ledger.jsonl"
        wait_for(lambda: ledger.exists() and ledger.read_bytes().count(b"\n") >= 8)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        local = local_records(ledger)
        in_bucket = bucket_ledger(s3_bucket)
        assert in_bucket == local  # every record went up at the stop
        taskids = {r["job_id"]: r["taskid"] for r in in_bucket if r["taskid"]}
        assert 0 < len(taskids) < jobs
        created_before = sim.stats()["tasks_created"]
        assert created_before == len(taskids)

        shutil.rmtree(state)  # the pod is gone, and its disk with it
        final = run_runner(args)
        assert final.returncode == 0, final.stderr
        assert "restored from" in final.stderr
        assert sim.stats()["tasks_created"] == jobs
    records = bucket_ledger(s3_bucket)
    assert last_states(records) == {f"job-{i}": "succeeded" for i in range(jobs)}
    for rec in records:
        if rec["job_id"] in taskids and rec["taskid"]:
            assert rec["taskid"] == taskids[rec["job_id"]]


def test_kill9_with_state_kept_resumes_within_todays_bound(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """SIGKILL with the state dir kept: records never synced go up on the next
    run, and duplicates stay within the local bound (at most the submits in
    flight at the kill)."""
    jobs, concurrency = 30, 6
    manifest = write_manifest(tmp_path / "m.yaml", jobs)
    state = tmp_path / "state"
    with standalone_simulator("--generation-time", "0.4") as sim:
        args = [
            str(manifest),
            "--base-url",
            sim.url,
            "--out",
            s3_bucket.url(),
            "--state-dir",
            str(state),
            "--sync-interval",
            "3600",
            "--concurrency",
            str(concurrency),
            *FAST,
        ]
        proc = start_runner(args)
        ledger = state / "ledger.jsonl"
        wait_for(lambda: ledger.exists() and ledger.read_bytes().count(b"\n") >= 10)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        assert s3_bucket.keys("run/ledger/") == []  # no sync happened before
        final = run_runner(args)
        assert final.returncode == 0, final.stderr
        created = sim.stats()["tasks_created"]
    assert jobs <= created <= jobs + concurrency
    records = bucket_ledger(s3_bucket)
    assert records == local_records(state / "ledger.jsonl")
    assert last_states(records) == {f"job-{i}": "succeeded" for i in range(jobs)}


def test_kill9_with_state_lost_loses_at_most_the_unsynced_records(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """SIGKILL and a lost state dir: jobs resubmitted are at most those whose
    taskid was recorded only locally (the last sync interval) plus the submits
    in flight; everything the bucket had is kept."""
    jobs, concurrency = 30, 6
    manifest = write_manifest(tmp_path / "m.yaml", jobs)
    state = tmp_path / "state"
    with standalone_simulator("--generation-time", "0.4") as sim:
        args = [
            str(manifest),
            "--base-url",
            sim.url,
            "--out",
            s3_bucket.url(),
            "--state-dir",
            str(state),
            "--sync-interval",
            "0.3",
            "--concurrency",
            str(concurrency),
            *FAST,
        ]
        proc = start_runner(args)
        wait_for(lambda: len(s3_bucket.keys("run/ledger/")) >= 2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        synced = bucket_ledger(s3_bucket)
        local = local_records(state / "ledger.jsonl")
        assert local[: len(synced)] == synced  # the bucket holds a prefix
        synced_ids = {r["job_id"] for r in synced if r["taskid"]}
        only_local = {r["job_id"] for r in local if r["taskid"]} - synced_ids
        shutil.rmtree(state)
        final = run_runner(args)
        assert final.returncode == 0, final.stderr
        created = sim.stats()["tasks_created"]
    assert jobs <= created <= jobs + len(only_local) + concurrency
    records = bucket_ledger(s3_bucket)
    assert records[: len(synced)] == synced
    assert last_states(records) == {f"job-{i}": "succeeded" for i in range(jobs)}


def test_reading_commands_take_the_bucket_url(
    s3_bucket: Bucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """status, failed, merge, export and gallery read a run from the bucket alone."""
    manifest = write_manifest(tmp_path / "m.yaml", 6, fail=2)
    url = s3_bucket.url("shards/a")
    with standalone_simulator("--generation-time", "0.05") as sim:
        res = run_runner([str(manifest), "--base-url", sim.url, "--out", url, *FAST])
    assert res.returncode == 1, res.stderr  # two jobs fail by design

    assert main(["status", str(manifest), "--out", url, "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)
    assert (totals["succeeded"], totals["failed"], totals["pending"]) == (6, 2, 0)
    assert totals["images_on_disk"] == totals["images_expected"] == 6

    assert main(["failed", "--out", url]) == 0
    assert capsys.readouterr().out.count("doomed") == 2

    # a dry run plans against the bucket's ledger, even from a new machine
    assert main(["run", str(manifest), "--out", url, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "already done:    6" in plan and "failed, skipped: 2" in plan

    merged = tmp_path / "merged"
    assert main(["merge", str(merged), url]) == 0
    assert sorted(p.name for p in (merged / "images").iterdir()) == sorted(
        f"job-{i}.png" for i in range(6)
    )
    assert not [p for p in merged.iterdir() if p.name.startswith(".fetch")]
    assert last_states(local_records(merged / "ledger.jsonl")) == last_states(
        bucket_ledger(s3_bucket, "shards/a")
    )

    wds = tmp_path / "wds"
    assert main(["export", url, str(wds)]) == 0
    assert [p.name for p in wds.iterdir()] == ["shard-000000.tar"]

    capsys.readouterr()
    assert main(["gallery", url]) == 0
    assert capsys.readouterr().out.strip() == f"{url}/index.html"
    page = s3_bucket.get("shards/a/index.html").decode()
    assert page.count('<img src="images/job-') == 6
    assert "missing file" not in page


def test_status_of_an_empty_prefix_says_nothing_ran(
    s3_bucket: Bucket, capsys: pytest.CaptureFixture[str]
) -> None:
    """status on a prefix with no ledger exits 1 with one line, no traceback."""
    assert main(["status", "--out", s3_bucket.url("nothing")]) == 1
    err = capsys.readouterr().err
    assert "no ledger" in err and "Traceback" not in err


def test_without_the_extra_a_bucket_url_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With obstore not importable, --out s3:// exits 2 naming the extra: the
    real console script in a process where the import fails, and in-process for
    the reading commands."""
    code = (
        "import sys; sys.modules['obstore'] = sys.modules['obstore.store'] = None; "
        "from batch_runner.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    manifest = write_manifest(tmp_path / "m.yaml", 2)
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "run",
            str(manifest),
            "--mock",
            "--out",
            "s3://b/x",
        ],
        capture_output=True,
        text=True,
        env=runner_env(),
        timeout=60,
    )
    assert res.returncode == 2, res.stderr
    assert "pip install 'zimage-batch-runner[s3]'" in res.stderr
    assert "Traceback" not in res.stderr
    monkeypatch.setitem(sys.modules, "obstore.store", None)
    for argv in (
        ["status", "--out", "s3://b/x"],
        ["failed", "--out", "s3://b/x"],
        ["gallery", "s3://b/x"],
        ["merge", str(tmp_path / "merged"), "s3://b/x"],
        ["export", "s3://b/x", str(tmp_path / "wds")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "zimage-batch-runner[s3]" in err and "Traceback" not in err


def test_options_that_need_a_bucket_or_a_disk_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--state-dir without a URL, --ledger with one, a URL without a bucket, or
    a bucket as merge's output are usage errors (exit 2)."""
    manifest = write_manifest(tmp_path / "m.yaml", 2)
    cases = [
        ["run", str(manifest), "--mock", "--state-dir", str(tmp_path / "s")],
        ["run", str(manifest), "--mock", "--out", "s3://b/x", "--ledger", "l.jsonl"],
        ["merge", "s3://b/merged", str(tmp_path)],
        ["run", str(manifest), "--mock", "--out", "s3:///no-bucket"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.strip() and "Traceback" not in err


def test_kubernetes_example_writes_every_shard_to_the_bucket(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """jobs/k8s-indexed-job.yaml's own command, run once per completion index
    with its paths pointed here, puts every job in the bucket exactly once,
    with no shared volume; merge then reads the shards from the bucket."""
    import yaml

    docs = list(
        yaml.safe_load_all((ROOT / "jobs" / "k8s-indexed-job.yaml").read_text())
    )
    job = next(d for d in docs if d and d.get("kind") == "Job")
    pod = job["spec"]["template"]["spec"]
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    container = pod["containers"][0]
    script = container["args"][0]
    assert '--out "s3://my-bucket/runs/prompts-shard-${JOB_COMPLETION_INDEX}"' in script
    jobs = 24
    (tmp_path / "config").mkdir()
    manifest = tmp_path / "config" / "prompts.csv"
    manifest.write_text(
        "id,prompt\n" + "".join(f"p-{i},picture {i}\n" for i in range(jobs))
    )
    script = (
        script.replace("/config/", f"{tmp_path}/config/")
        .replace("s3://my-bucket/", f"s3://{s3_bucket.name}/")
        .replace(
            "--state-dir /state", f"--state-dir {tmp_path}/state-$JOB_COMPLETION_INDEX"
        )
    )
    completions = job["spec"]["completions"]
    with standalone_simulator("--generation-time", "0.05") as sim:
        env = runner_env()
        env["TENSORSLAB_BASE_URL"] = sim.url
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        pods = [
            subprocess.Popen(
                [*container["command"], script],
                env={**env, "JOB_COMPLETION_INDEX": str(i)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(completions)
        ]
        for p in pods:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        assert sim.stats()["tasks_created"] == jobs
    merged = tmp_path / "merged"
    urls = [f"s3://{s3_bucket.name}/runs/prompts-shard-{i}" for i in range(completions)]
    assert main(["merge", str(merged), *urls]) == 0
    states = last_states(local_records(merged / "ledger.jsonl"))
    assert states == {f"p-{i}": "succeeded" for i in range(jobs)}
    assert len(list((merged / "images").iterdir())) == jobs


def test_library_calls_take_a_bucket_url(s3_bucket: Bucket, tmp_path: Path) -> None:
    """run_batch_sync, plan, status and records accept out="s3://..." as the
    CLI does, and refuse what cannot work with UsageError."""
    import batch_runner

    url = s3_bucket.url("lib")
    jobs = ["a cat", "a dog", {"id": "owl", "prompt": "an owl"}]
    result = batch_runner.run_batch_sync(
        jobs,
        out=url,
        state_dir=tmp_path / "state",
        mock=True,
        mock_generation_time=0,
        poll_interval=0.02,
        sync_interval=60,
    )
    assert result.ok and result.succeeded == 3
    assert len(s3_bucket.keys("lib/images/")) == 3
    assert batch_runner.plan(jobs, out=url).done == 3
    assert batch_runner.status(url).succeeded == 3
    assert batch_runner.status(url).images_on_disk == 3
    assert {r["job_id"] for r in batch_runner.records(url)} >= {"owl"}
    with pytest.raises(batch_runner.LedgerError):
        batch_runner.status(s3_bucket.url("nothing-here"))
    with pytest.raises(batch_runner.UsageError, match="state_dir"):
        batch_runner.run_batch_sync(
            jobs, out=tmp_path / "d", state_dir=tmp_path, mock=True
        )
    with pytest.raises(batch_runner.UsageError, match="ledger"):
        batch_runner.run_batch_sync(jobs, out=url, ledger=tmp_path / "l", mock=True)


def test_reencoded_images_go_to_the_bucket_under_their_new_name(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """With --image-format, the re-encoded file (not the download) is what goes
    up, named with its new extension, and metadata.jsonl describes it."""
    import batch_runner

    url = s3_bucket.url("jpeg")
    result = batch_runner.run_batch_sync(
        ["a cat", "a dog"],
        out=url,
        state_dir=tmp_path / "state",
        mock=True,
        mock_generation_time=0,
        poll_interval=0.02,
        image_format="jpeg",
    )
    assert result.ok, result
    keys = s3_bucket.keys("jpeg/images/")
    assert len(keys) == 2 and all(k.endswith(".jpg") for k in keys)
    for key in keys:
        with Image.open(io.BytesIO(s3_bucket.get(key))) as img:
            assert img.format == "JPEG"
    rows = [json.loads(x) for x in s3_bucket.get("jpeg/metadata.jsonl").splitlines()]
    assert sorted(f"jpeg/{r['file_name']}" for r in rows) == keys
    assert not any((tmp_path / "state" / "images").iterdir())
