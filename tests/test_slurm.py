"""jobs/slurm-array.sh on a real single-node Slurm cluster started by
.ci/slurm-up.sh (munged, slurmctld, slurmd on this machine, no containers)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from batch_runner.manifest.identity import shard_of
from tests.procs import (
    CONSOLE_SCRIPT,
    KEY,
    final_states,
    ledger_records,
    runner_env,
    standalone_simulator,
)

ROOT = Path(__file__).resolve().parent.parent
SLURM_UP = ROOT / ".ci" / "slurm-up.sh"
ARRAY_JOB = ROOT / "jobs" / "slurm-array.sh"
#: .ci/slurm-up.sh's "Slurm cannot be installed here" (the autotools skip code)
CANNOT_INSTALL = 77
#: where the slurm.conf of .ci/slurm-up.sh has slurmd log
SLURMD_LOG = Path("/var/log/slurm/slurmd.log")
SHARDS = 4
JOBS = 32

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """The local cluster, installed and started if needed; skipped only where
    Slurm cannot be installed, failed when it is there but broken."""
    if shutil.which("bash") is None:
        pytest.skip("no bash to run .ci/slurm-up.sh")
    # the script is idempotent: against a cluster it started it only checks
    # that the node takes jobs, so it runs whether or not sinfo answers
    up = subprocess.run(
        ["bash", str(SLURM_UP)], capture_output=True, text=True, timeout=600
    )
    if up.returncode == CANNOT_INSTALL:
        pytest.skip(f"Slurm cannot be installed here: {up.stderr.strip()}")
    assert up.returncode == 0, (
        f".ci/slurm-up.sh exited {up.returncode}:\n{up.stdout}{up.stderr}"
    )


def write_prompts(folder: Path, n: int) -> list[str]:
    rows = ["id,prompt,seed"]
    ids = [f"lighthouse-{i}" for i in range(n)]
    rows += [
        f"{job_id},a lighthouse in storm number {i},{i}" for i, job_id in enumerate(ids)
    ]
    (folder / "prompts.csv").write_text("\n".join(rows) + "\n")
    return ids


def job_logs(folder: Path) -> str:
    """Every task's log, for an assertion message worth reading."""
    parts = [
        f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted(folder.glob("zimage-*.log"))
    ]
    if not parts:
        parts.append("(no task logs: the tasks never started)")
    # slurmd's reasons for a task that failed before its log opened name a
    # path in the folder
    if SLURMD_LOG.is_file():
        lines = SLURMD_LOG.read_text(errors="replace").splitlines()
        parts += [f"--- {SLURMD_LOG}:", *(ln for ln in lines if str(folder) in ln)]
    return "\n".join(parts)


def sbatch_wait(folder: Path, env: dict[str, str]) -> tuple[str, int, str]:
    """`sbatch --wait --array=1-4 jobs/slurm-array.sh` in FOLDER: (job id,
    exit code, output). The array is cancelled if it outlives the test."""
    proc = subprocess.Popen(
        ["sbatch", "--wait", f"--array=1-{SHARDS}", str(ARRAY_JOB)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    match = re.match(r"Submitted batch job (\d+)", first)
    if match is None:
        proc.wait(30)
        pytest.fail(f"sbatch did not submit: {first}{proc.stdout.read()}")
    try:
        rest, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", match[1]], check=False)
        proc.kill()
        proc.communicate()
        pytest.fail(f"array {match[1]} still running after 600 s\n{job_logs(folder)}")
    return match[1], proc.returncode, first + rest


def test_slurm_array_runs_every_job_exactly_once(
    slurm_cluster: None, tmp_path: Path
) -> None:
    """sbatch --wait --array=1-4 from a folder holding only prompts.csv runs
    every prompt exactly once across shards 0..3, and merge joins them."""
    ids = write_prompts(tmp_path, JOBS)
    with standalone_simulator("--generation-time", "0.2") as sim:
        env = runner_env(KEY)  # the key reaches the tasks by inheritance
        env["TENSORSLAB_BASE_URL"] = sim.url
        # as after `source .venv/bin/activate`: the tasks find batch-runner
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
        job_id, code, out = sbatch_wait(tmp_path, env)
        logs = job_logs(tmp_path)
        assert code == 0, (
            f"sbatch --wait exited {code} for array {job_id}:\n{out}\n{logs}"
        )
        stats = sim.stats()

    # one log per task, each saying which shard it ran
    task_logs = sorted(tmp_path.glob(f"zimage-{job_id}_*.log"))
    assert [p.name for p in task_logs] == [
        f"zimage-{job_id}_{t}.log" for t in range(1, SHARDS + 1)
    ], logs
    for t, log in enumerate(task_logs):
        assert f"running shard-{t}-of-{SHARDS}" in log.read_text(), logs

    shard_dirs = [tmp_path / "runs" / f"prompts-shard-{i}" for i in range(SHARDS)]
    assert sorted((tmp_path / "runs").iterdir()) == shard_dirs
    submitted: Counter[str] = Counter()
    for index, shard_dir in enumerate(shard_dirs):
        records = ledger_records(shard_dir / "ledger.jsonl")
        assert records, f"shard {index} ran nothing\n{logs}"
        for rec in records:
            # the shard dir (from SLURM_ARRAY_TASK_ID - MIN in the script) is
            # the shard the runner chose from the same environment
            assert shard_of(rec["job_id"], SHARDS) == index, rec["job_id"]
            if rec["status"] == "submitted":
                submitted[rec["job_id"]] += 1
    assert submitted == Counter(dict.fromkeys(ids, 1))

    merge = subprocess.run(
        [CONSOLE_SCRIPT, "merge", "merged", *map(str, shard_dirs)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert merge.returncode == 0, merge.stderr
    merged = final_states(tmp_path / "merged" / "ledger.jsonl")
    assert sorted(merged) == sorted(ids)
    assert {rec["status"] for rec in merged.values()} == {"succeeded"}
    assert len({rec["taskid"] for rec in merged.values()}) == JOBS
    assert len(list((tmp_path / "merged" / "images").iterdir())) == JOBS

    # the simulator saw each prompt once: nothing paid for twice
    assert stats["tasks_created"] == JOBS
    assert set(stats["tasks_by_prompt"].values()) == {1}
    for log in task_logs:
        assert KEY not in log.read_text()


@pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("runuser") is None,
    reason="as root this needs runuser to drop to nobody",
)
def test_slurm_up_gives_the_skip_code_where_it_cannot_install() -> None:
    """Without root, .ci/slurm-up.sh exits 77 with a reason (what the test
    skips on) instead of failing halfway through installing or starting."""
    cmd = ["bash", str(SLURM_UP)]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "nobody", "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == CANNOT_INSTALL, proc.stderr
    assert "needs root" in proc.stderr
