"""Operating a run: status, failed, dry runs, budgets, JSON logs, sharding."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from batch_runner.cli.main import main
from batch_runner.manifest.reader import iter_jobs, validate_manifest
from batch_runner.outputs.dataset import write_metadata

from .procs import (
    CONSOLE_SCRIPT,
    KEY,
    final_states,
    ledger_records,
    run_runner,
    standalone_simulator,
    write_manifest,
)

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--no-progress", "--poll-interval", "0.02", "--mock-generation-time", "0.01"]


def run_mock(manifest: Path, out: Path, *extra: str) -> int:
    return main(["run", str(manifest), "--mock", "--out", str(out), *FAST, *extra])


@pytest.fixture
def finished_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run of 8 jobs, 2 designed to fail, with meta labels."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "defaults: {meta: {team: a}}\njobs:\n"
        + "".join(
            f"  - {{id: ok-{i}, prompt: 'fine {i}', seed: {i}}}\n" for i in range(6)
        )
        + "  - {id: bad-0, prompt: 'doomed [fail]', resolution: '16:9',"
        " meta: {why: test}}\n"
        + "  - {id: bad-1, prompt: 'also doomed [fail]', seed: 9}\n"
    )
    out = tmp_path / "out"
    assert run_mock(manifest, out) == 1
    return manifest, out


def test_status_json_and_text(
    finished_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """status --json reports totals, failure reasons, images and timestamps."""
    manifest, out = finished_run
    capsys.readouterr()
    assert main(["status", str(manifest), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {
        k: report[k] for k in ("total", "succeeded", "failed", "submitted", "pending")
    } == {"total": 8, "succeeded": 6, "failed": 2, "submitted": 0, "pending": 0}
    assert report["failure_reasons"] == [
        {
            "stage": "generate",
            "msg": "simulated generation failure",
            "count": 2,
            "example": "simulated generation failure",
        }
    ]
    assert report["images_on_disk"] == report["images_expected"] == 6
    assert report["first_ts"] <= report["last_ts"]
    assert main(["status", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "succeeded 6, failed 2" in text and "simulated generation failure" in text


def test_status_counts_pending_from_the_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Jobs in the manifest but not in the ledger are pending."""
    manifest = write_manifest(tmp_path / "m.yaml", 10)
    out = tmp_path / "out"
    assert run_mock(manifest, out, "--max-jobs", "4") == 0
    capsys.readouterr()
    assert main(["status", str(manifest), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["succeeded"], report["pending"], report["total"]) == (4, 6, 10)


def test_failed_prints_a_valid_retry_manifest(
    finished_run: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """`failed` writes the failed jobs as a CSV manifest with the same ids and
    parameters, and the reasons on stderr."""
    _, out = finished_run
    capsys.readouterr()
    assert main(["failed", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    retry = tmp_path / "retry.csv"
    retry.write_text(captured.out)
    assert validate_manifest(retry).jobs == 2
    jobs = {j.job_id: j for j in iter_jobs(retry)}
    assert set(jobs) == {"bad-0", "bad-1"}
    assert jobs["bad-0"].resolution == "16:9" and jobs["bad-1"].seed == 9
    assert jobs["bad-0"].meta == {"team": "a", "why": "test"}
    assert "bad-0: [generate] simulated generation failure" in captured.err
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert rows[0]["prompt"] == "doomed [fail]"


def test_dry_run_needs_no_key_and_sends_nothing(tmp_path: Path) -> None:
    """--dry-run prints the plan and the credits; zero requests, no ledger."""
    manifest = write_manifest(tmp_path / "m.yaml", 7)
    with standalone_simulator() as sim:
        res = run_runner(
            [
                str(manifest),
                "--base-url",
                sim.url,
                "--out",
                str(tmp_path / "out"),
                "--dry-run",
                "--credits-per-image",
                "2.5",
            ],
            key=None,
        )
        assert sim.stats()["requests_total"] == 0
    assert res.returncode == 0, res.stderr
    assert "to submit:       7" in res.stdout
    assert "credits:         17.5" in res.stdout
    assert not (tmp_path / "out" / "ledger.jsonl").exists()


def test_dry_run_compares_with_the_ledger(
    finished_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """After a run the plan shows what is done and what failed."""
    manifest, out = finished_run
    capsys.readouterr()
    assert run_mock(manifest, out, "--dry-run") == 0
    text = capsys.readouterr().out
    assert "already done:    6" in text and "failed, skipped: 2" in text
    assert run_mock(manifest, out, "--dry-run", "--retry-failed") == 0
    assert "to submit:       2" in capsys.readouterr().out


def test_max_jobs_submits_only_n_and_exits_0(tmp_path: Path) -> None:
    """--max-jobs N submits N new jobs, exits 0, and leaves the rest pending."""
    manifest = write_manifest(tmp_path / "m.yaml", 10)
    out = tmp_path / "out"
    assert run_mock(manifest, out, "--max-jobs", "3", "--concurrency", "2") == 0
    assert len(final_states(out / "ledger.jsonl")) == 3
    assert run_mock(manifest, out, "--max-jobs", "3") == 0
    assert len(final_states(out / "ledger.jsonl")) == 6
    assert run_mock(manifest, out) == 0
    assert len(final_states(out / "ledger.jsonl")) == 10


def test_max_failures_trips_the_breaker(tmp_path: Path) -> None:
    """N permanent failures in a row stop new submits with exit 1 and a reason."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text("".join(f"- 'broken {i} [fail]'\n" for i in range(30)))
    with standalone_simulator() as sim:
        res = run_runner(
            [
                str(manifest),
                "--base-url",
                sim.url,
                "--out",
                str(tmp_path / "out"),
                "--no-progress",
                "--poll-interval",
                "0.02",
                "--max-failures",
                "3",
                "--concurrency",
                "1",
            ]
        )
        created = sim.stats()["tasks_created"]
    assert res.returncode == 1
    assert "3 permanent failures in a row" in res.stderr
    assert created == 3


def test_json_logs_and_log_file(tmp_path: Path) -> None:
    """--log-format json makes every stderr line a JSON object, the summary
    included; --log-file gets the same lines."""
    manifest = write_manifest(tmp_path / "m.yaml", 3)
    log_file = tmp_path / "logs" / "run.log"
    res = run_runner(
        [
            str(manifest),
            "--mock",
            "--out",
            str(tmp_path / "out"),
            *FAST,
            "--log-format",
            "json",
            "--log-file",
            str(log_file),
        ]
    )
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stderr.splitlines()]
    assert all({"ts", "level", "msg"} <= set(x) for x in lines)
    summary = [x for x in lines if "summary" in x]
    assert summary and summary[-1]["summary"]["succeeded"] == 3
    file_lines = [json.loads(x) for x in log_file.read_text().splitlines()]
    assert [x["msg"] for x in file_lines] == [x["msg"] for x in lines]
    assert KEY not in log_file.read_text()


def test_shards_partition_a_run_and_env_selects_them(tmp_path: Path) -> None:
    """Three shard runs (via --shard, Kubernetes and Slurm variables) each get their
    own directory and together run every job exactly once."""
    manifest = write_manifest(tmp_path / "m.yaml", 24)
    outs = [tmp_path / f"s{i}" for i in range(3)]
    env_k8s = {"JOB_COMPLETION_INDEX": "1"}
    env_slurm = {
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_ARRAY_TASK_MIN": "1",
        "SLURM_ARRAY_TASK_COUNT": "3",
    }
    assert run_mock(manifest, outs[0], "--shard", "0/3") == 0
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env_k8s.items():
            mp.setenv(k, v)
        assert run_mock(manifest, outs[1], "--shards", "3") == 0
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env_slurm.items():
            mp.setenv(k, v)
        assert run_mock(manifest, outs[2]) == 0
    seen = [set(final_states(o / "ledger.jsonl")) for o in outs]
    assert all(seen)
    assert sum(len(s) for s in seen) == 24
    assert set().union(*seen) == {f"job-{i}" for i in range(24)}


def test_default_run_dir_is_per_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --out, each shard writes to runs/<stem>-shard-I-of-N."""
    manifest = write_manifest(tmp_path / "m.yaml", 4)
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(manifest), "--mock", "--shard", "1/2", *FAST]) == 0
    assert (tmp_path / "runs" / "m-shard-1-of-2" / "ledger.jsonl").exists()


def test_kubernetes_and_slurm_examples_are_valid() -> None:
    """The shipped examples parse and run the runner with a per-shard --out."""
    docs = list(
        yaml.safe_load_all((ROOT / "jobs" / "k8s-indexed-job.yaml").read_text())
    )
    job = next(d for d in docs if d and d.get("kind") == "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    command = " ".join(container.get("command", []) + container.get("args", []))
    assert "batch-runner run" in command and "--shards" in command
    assert f"--shards {spec['completions']}" in command
    assert "$(JOB_COMPLETION_INDEX)" in command or "JOB_COMPLETION_INDEX" in command
    slurm = ROOT / "jobs" / "slurm-array.sh"
    text = slurm.read_text()
    assert "#SBATCH --array=" in text and "batch-runner run" in text
    assert "SLURM_ARRAY_TASK_ID" in text
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(slurm)], check=True)


def test_gallery_export_and_merge_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gallery, export and merge subcommands work from the command line."""
    import tarfile

    a = write_manifest(tmp_path / "a.yaml", 4, prefix="a")
    b = write_manifest(tmp_path / "b.yaml", 3, prefix="b")
    assert run_mock(a, tmp_path / "ra") == 0
    assert run_mock(b, tmp_path / "rb") == 0
    assert (tmp_path / "ra" / "metadata.jsonl").read_text().count("\n") == 4
    assert main(["gallery", str(tmp_path / "ra")]) == 0
    assert (tmp_path / "ra" / "index.html").read_text().count("<img") == 4
    assert (
        main(
            ["export", str(tmp_path / "ra"), str(tmp_path / "wds"), "--shard-size", "3"]
        )
        == 0
    )
    shards = sorted((tmp_path / "wds").glob("*.tar"))
    assert len(shards) == 2
    with tarfile.open(shards[0]) as tar:
        names = tar.getnames()
    assert len(names) == 6 and all("." not in n.rsplit(".", 1)[0] for n in names)
    assert (
        main(
            ["merge", str(tmp_path / "all"), str(tmp_path / "ra"), str(tmp_path / "rb")]
        )
        == 0
    )
    merged = final_states(tmp_path / "all" / "ledger.jsonl")
    assert len(merged) == 7 and len(list((tmp_path / "all" / "images").iterdir())) == 7
    assert "merged 2 run directories" in capsys.readouterr().err


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_event_loop_choice(tmp_path: Path, loop: str) -> None:
    """Runs complete on the plain asyncio loop and on uvloop (when installed)."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    manifest = write_manifest(tmp_path / "m.yaml", 3)
    assert run_mock(manifest, tmp_path / "out", "--event-loop", loop) == 0
    assert len(final_states(tmp_path / "out" / "ledger.jsonl")) == 3


@pytest.mark.subprocess
@pytest.mark.slow
def test_failed_jsonl_retry_merges_with_the_original_run(tmp_path: Path) -> None:
    """Run with submit faults, `failed --format jsonl`, run that retry into another
    directory, merge both: no conflict, every job succeeded exactly once, and
    meta of every type comes back unchanged."""
    manifest = tmp_path / "m.jsonl"
    jobs = [
        {
            "id": f"j{i}",
            "prompt": f"picture {i}",
            "meta": {"n": i, "ok": i % 2 == 0, "tags": ["a", i], "none": None},
            **({"prompt_extend": bool(i % 3)} if i % 2 else {}),
        }
        for i in range(12)
    ]
    manifest.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    first, second = tmp_path / "first", tmp_path / "second"
    with standalone_simulator(
        "--fault-rate", "0.5", "--fault-kinds", "500", "--url-in-submit",
        "--generation-time", "0", "--seed", "3",
    ) as sim:  # fmt: skip
        res = run_runner(
            [str(manifest), "--base-url", sim.url, "--out", str(first),
             "--retries", "0", "--concurrency", "1", "--no-progress"]
        )  # fmt: skip
    assert res.returncode == 1, res.stderr
    states = final_states(first / "ledger.jsonl")
    failed_ids = {j for j, r in states.items() if r["status"] == "failed"}
    assert failed_ids and len(failed_ids) < len(jobs)

    retry = subprocess.run(
        [CONSOLE_SCRIPT, "failed", "--out", str(first), "--format", "jsonl"],
        capture_output=True,
        text=True,
        check=True,
    )
    retry_file = tmp_path / "retry.jsonl"
    retry_file.write_text(retry.stdout)
    assert {json.loads(line)["id"] for line in retry.stdout.splitlines()} == failed_ids
    assert run_mock(retry_file, second) == 0

    merged = tmp_path / "merged"
    assert main(["merge", str(merged), str(first), str(second)]) == 0
    finals = final_states(merged / "ledger.jsonl")
    assert {j: r["status"] for j, r in finals.items()} == {
        j["id"]: "succeeded" for j in jobs
    }
    expected = {j["id"]: j for j in jobs}
    for job_id, record in finals.items():
        assert record["meta"] == expected[job_id]["meta"]
        assert record["prompt_extend"] == expected[job_id].get("prompt_extend")
    succeeded_lines = [
        r for r in ledger_records(merged / "ledger.jsonl") if r["status"] == "succeeded"
    ]
    assert len(succeeded_lines) == len(jobs)


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_job_with_two_images_and_a_job_named_like_its_file_keep_both_images(
    tmp_path: Path,
) -> None:
    """Job `x` with two images, then job `x-0` in the same run directory: no file
    is replaced, each record's files hold the bytes it recorded, and the export
    ships each image under its own job."""
    import hashlib

    out = tmp_path / "out"
    first = tmp_path / "first.jsonl"
    first.write_text(json.dumps({"id": "x", "prompt": "two images"}) + "\n")
    with standalone_simulator(
        "--images-per-task", "2", "--generation-time", "0"
    ) as sim:
        res = run_runner(
            [str(first), "--base-url", sim.url, "--out", str(out), "--no-progress",
             "--poll-interval", "0.02"]
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
    both = tmp_path / "both.jsonl"
    both.write_text(
        first.read_text() + json.dumps({"id": "x-0", "prompt": "one"}) + "\n"
    )
    assert run_mock(both, out) == 0
    finals = final_states(out / "ledger.jsonl")
    owners: dict[str, str] = {}
    for job_id, record in finals.items():
        assert record["status"] == "succeeded"
        for image in record["images"]:
            assert image["file"] not in owners, (image["file"], owners)
            owners[image["file"]] = job_id
            data = (out / image["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == image["sha256"]
    assert sorted(owners.values()) == ["x", "x", "x-0"]
    assert main(["export", str(out), str(tmp_path / "wds")]) == 0
    shipped = 0
    for shard in sorted((tmp_path / "wds").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    body = json.load(tar.extractfile(member))  # type: ignore[arg-type]
                    recorded = {
                        i["file"]: i["sha256"] for i in finals[body["job_id"]]["images"]
                    }
                    assert recorded[body["file_name"]] == body["sha256"]
                    shipped += 1
    assert shipped == 3


def test_an_old_run_dir_keeps_its_names_and_no_new_file_replaces_one(
    tmp_path: Path,
) -> None:
    """A run dir from before "~" names (job `x` owns `images/x-0.png`): its files
    stay readable, and a new job `x-0` gets a file of its own."""
    import hashlib

    from .test_dataset import FakeRun

    old = FakeRun(tmp_path / "out")
    old.succeed("x", "two images", count=2, old_names=True)
    before = (old.dir / "images" / "x-0.png").read_bytes()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "x-0", "prompt": "one"}) + "\n")
    assert run_mock(manifest, old.dir) == 0
    assert (old.dir / "images" / "x-0.png").read_bytes() == before
    finals = final_states(old.ledger)
    assert finals["x"]["files"] == ["images/x-0.png", "images/x-1.png"]
    (new_file,) = finals["x-0"]["files"]
    assert new_file not in finals["x"]["files"]
    data = (old.dir / new_file).read_bytes()
    assert hashlib.sha256(data).hexdigest() == finals["x-0"]["images"][0]["sha256"]
    assert write_metadata(old.dir) == 3
