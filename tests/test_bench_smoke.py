"""Smoke test of the benchmark scripts: each runs 20 jobs against a simulator.

Keeps bench/ from rotting as the package changes; asserts outcomes only, never
timings (those belong to `python bench/run_bench.py`).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
harness: Any = importlib.import_module("harness")
scale: Any = importlib.import_module("scale")

JOBS = 20
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def sim() -> Iterator[Any]:
    # 0.05 s generation: the peers' and the runner's poll loops go round at
    # least once (the bare loop polls once and needs generation time 0); a few
    # 429/5xx faults exercise their retry paths
    with harness.simulator(
        "--generation-time", "0.05", "--image-scale", "0.0078125",
        "--fault-rate", "0.05", "--fault-kinds", "429,500,503",
        "--retry-after", "0.05",
    ) as running:  # fmt: skip
        yield running


@pytest.fixture(scope="module")
def instant_sim() -> Iterator[Any]:
    with harness.simulator("--generation-time", "0") as running:
        yield running


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path: Path = harness.write_csv_manifest(tmp_path / "m.csv", JOBS)
    return path


def _run_script(tool: str, url: str, manifest: Path, out: Path) -> dict[str, Any]:
    cmd = harness.tool_command(tool, url=url, manifest=manifest, out=out, concurrency=4)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("tool", ["naive", "cookbook"])
def test_peer_runs_every_job(
    tool: str, sim: Any, manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    report = _run_script(tool, sim.url, manifest, out)
    assert (report["succeeded"], report["failed"]) == (JOBS, 0)
    assert len(list((out / "images").glob("*.png"))) == JOBS
    if tool == "naive":
        results = json.loads((out / "results.json").read_text())
    else:
        results = (out / "results.jsonl").read_text().splitlines()
    assert len(results) == JOBS


def test_bare_loop_runs_every_job(
    instant_sim: Any, manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    report = _run_script("bare", instant_sim.url, manifest, out)
    assert (report["succeeded"], report["failed"]) == (JOBS, 0)
    assert len(list((out / "images").glob("*.png"))) == JOBS
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["succeeded"] * JOBS


def test_runner_summary_is_parsed(sim: Any, manifest: Path) -> None:
    result = harness.run_tool(
        "runner", sim=sim, manifest=manifest, jobs=JOBS, concurrency=4, timeout=30
    )
    assert (result["rc"], result["succeeded"]) == (0, JOBS)
    assert result["own_jobs_per_s"] > 0 and result["peak_rss_mb"] > 0


def test_scale_files_match_the_runner(tmp_path: Path) -> None:
    # ids in the generated ledger must be the runner's, or the plan is wrong;
    # run_scale checks the printed plan and status counts itself
    res = scale.run_scale(40, runs=1, cache=tmp_path)
    assert [r["command"] for r in res["results"]] == [
        f"{command}, {state}"
        for command in ("plan (run --dry-run)", "status --json")
        for state in scale.STATES
    ]
    assert res["ledger_lines"] == 40
    res = scale.run_scale(40, runs=1, cache=tmp_path, attempt_log=True)
    assert (
        res["attempt_log"]
        and (tmp_path / "rows-40" / "run" / "attempts.jsonl").stat().st_size
    )
    res = scale.run_scale(40, runs=1, cache=tmp_path, explicit_ids=True)
    assert res["explicit_ids"] and res["ledger_lines"] == 40


def test_metadata_end_bench_appends_what_it_rewrites(tmp_path: Path) -> None:
    """metadata_end.py builds a small directory, and each round's appended
    file equals its rewritten one (it exits non-zero otherwise)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "metadata_end.py"),
            *("--rows", "30", "--add", "4", "--rounds", "2"),
            *("--cache", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("same bytes: True") == 2
    assert "rewrite / append" in proc.stdout


def test_transcode_bench_reports_every_setting_and_pool(tmp_path: Path) -> None:
    """bench_transcode.py runs on a small image and reports every setting and
    every way of running the pool."""
    out = tmp_path / "transcode.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_transcode.py"),
            "--rounds",
            "1",
            "--batch",
            "2",
            "--side",
            "96",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["ms_per_image"]) == set(report["stored_bytes"])
    assert len(report["ms_per_image"]) == 6
    assert set(report["pools"]) == {
        "no re-encoding (baseline stall)",
        "inline on the loop",
        "thread pool",
        "process pool",
    }
    assert all(run["images_per_s"] > 0 for name, run in report["pools"].items()
               if name != "no re-encoding (baseline stall)")  # fmt: skip


def test_yaml_scale_measures_both_formats(tmp_path: Path) -> None:
    """The YAML scale bench runs the dry run on the YAML and the CSV of 30 jobs."""
    res = scale.run_yaml_scale(30, runs=1, cache=tmp_path)
    assert [r["command"] for r in res["results"]] == [
        "run --dry-run (yaml)",
        "run --dry-run (csv)",
    ]
    assert all(r["peak_rss_mb"] > 0 for r in res["results"])
