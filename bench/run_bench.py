"""The benchmark: what `batch-runner run` costs and how it compares, in one run.

Every measurement runs a tool as a child process against a Z-Image simulator in
another process on 127.0.0.1. The machine is shared and noisy, so nothing here
asserts a time: tools are run side by side, alternating, and the tables give
ratios of medians. Sections (see bench/README.md for what each proves):

  overhead  runner vs a bare aiohttp loop, zero generation latency (goal >= 0.9)
  latency   C=100 with 1 s generation, C=500 with 5 s generation (goal >= 0.95)
  memory    peak RSS of full runs at 10,000 and 60,000 jobs (<= 1.15x, < 100 MB)
  scale     plan a resume / status of a 1M-row manifest (RSS < 150 MB, < 5 s)
  peers     runner vs a naive gather script vs a cookbook-style loop
  adaptive  --concurrency 8 / 64 / auto against a server capped at 20 tasks
  sweep     jobs/s against concurrency (data for bench/plot.py)

    python bench/run_bench.py [--quick] [--only NAME[,NAME]] [--out bench/results]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import scale
from harness import (
    PY,
    REPO,
    SMALLEST_IMAGE_SCALE,
    TOOL_LABELS,
    BenchError,
    run_tool,
    simulator,
    write_csv_manifest,
)

SECTIONS = ("overhead", "latency", "memory", "scale", "peers", "adaptive", "sweep")
OVERHEAD_GOAL = 0.9
LATENCY_GOAL = 0.95
MEMORY_RATIO_GOAL = 1.15
MEMORY_MB_GOAL = 100.0
IMAGE = ("--image-scale", repr(SMALLEST_IMAGE_SCALE))


@dataclass(frozen=True)
class Plan:
    """Sizes of every section; `quick` shrinks them for a smoke run."""

    quick: bool
    overhead_jobs: int = 3000
    #: alternating rounds; their median is compared (rounds of one run on
    #: this shared machine differ by more than the goal's margin)
    overhead_rounds: int = 5
    #: (concurrency, generation seconds): both have an ideal of 100 jobs/s
    latency_cases: tuple[tuple[int, float], ...] = ((100, 1.0), (500, 5.0))
    latency_jobs: int = 2500
    latency_poll: float = 0.5
    memory_sizes: tuple[int, int] = (10_000, 60_000)
    scale_rows: int = 1_000_000
    scale_runs: int = 2
    peer_sizes: tuple[int, ...] = (10_000, 200_000)
    adaptive_jobs: int = 600
    sweep_concurrency: tuple[int, ...] = (8, 16, 32, 64, 128)
    sweep_jobs: int = 2000
    sweep_tools: tuple[str, ...] = ("runner", "naive", "cookbook", "bare")

    @classmethod
    def make(cls, quick: bool, peer_sizes: tuple[int, ...] | None) -> Plan:
        if not quick:
            return cls(quick, peer_sizes=peer_sizes or cls.peer_sizes)
        return cls(
            quick,
            overhead_rounds=2,
            latency_jobs=1000,
            memory_sizes=(2_000, 12_000),
            scale_rows=100_000,
            scale_runs=1,
            peer_sizes=peer_sizes or (2_000, 20_000),
            adaptive_jobs=200,
            # the sweep only runs in quick mode when asked for with --only
            sweep_concurrency=(16, 64),
            sweep_jobs=1000,
            sweep_tools=("runner", "naive", "cookbook"),
        )


class Manifests:
    """Throughput manifests (CSV: prompt,seed,meta.k) by size, in one temp dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[int, Path] = {}

    def get(self, rows: int) -> Path:
        if rows not in self._made:
            self._made[rows] = write_csv_manifest(self.root / f"m-{rows}.csv", rows)
        return self._made[rows]


# -- tables ---------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def goal(ok: bool) -> str:
    return "met" if ok else "MISSED"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- sections -------------------------------------------------------------------


def section_overhead(plan: Plan, mf: Manifests) -> dict[str, Any]:
    """Runner vs bare loop, generation time 0, concurrency 64, alternating."""
    jobs = plan.overhead_jobs
    manifest = mf.get(jobs)
    runs: list[dict[str, Any]] = []
    with simulator("--generation-time", "0", *IMAGE) as sim:
        for rnd in range(plan.overhead_rounds):
            for tool in ("bare", "runner"):
                log(f"overhead: round {rnd + 1} {tool}")
                r = run_tool(
                    tool, sim=sim, manifest=manifest, jobs=jobs, concurrency=64
                )
                r["round"] = rnd + 1
                runs.append(r)

    def med(tool: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs if r["tool"] == tool))

    # rounded before the goal check, so the verdict matches the printed value
    ratio_wall = round(
        med("runner", "wall_jobs_per_s") / med("bare", "wall_jobs_per_s"), 3
    )
    ratio_own = round(
        med("runner", "own_jobs_per_s") / med("bare", "own_jobs_per_s"), 3
    )
    cpu_ratio = round(
        med("runner", "cpu_ms_per_job") / med("bare", "cpu_ms_per_job"), 3
    )
    rows = [
        [r["round"], TOOL_LABELS[r["tool"]], r["succeeded"], r["wall_s"],
         r["wall_jobs_per_s"], r["own_jobs_per_s"], r["cpu_ms_per_job"],
         r["peak_rss_mb"]]
        for r in runs
    ]  # fmt: skip
    md = table(
        ["round", "tool", "ok", "wall s", "jobs/s (wall)", "jobs/s (own)",
         "CPU ms/job", "peak MB"],
        rows,
    )  # fmt: skip
    md += "\n\n" + table(
        ["ratio runner / bare (medians)", "value", f"goal >= {OVERHEAD_GOAL}"],
        [
            ["jobs/s, wall clock incl. start-up", round(ratio_wall, 3),
             goal(ratio_wall >= OVERHEAD_GOAL)],
            ["jobs/s, each tool's own timer", round(ratio_own, 3),
             goal(ratio_own >= OVERHEAD_GOAL)],
            ["client CPU per job (lower is better)", round(cpu_ratio, 3), ""],
        ],
    )  # fmt: skip
    return {
        "title": f"1. Overhead: runner vs bare aiohttp loop ({jobs:,} jobs, "
        "concurrency 64, generation time 0)",
        "runs": runs,
        "ratio_wall": ratio_wall,
        "ratio_own": ratio_own,
        "ratio_cpu_per_job": cpu_ratio,
        "markdown": md,
    }


def section_latency(plan: Plan, mf: Manifests) -> dict[str, Any]:
    """Runner at concurrency C with generation time L vs the ideal C / L jobs/s,
    next to the bare loop polling at the same interval (what a minimal client
    gets here) and the runner at generation 0 (what this machine can move)."""
    rows = []
    runs = []
    jobs = plan.latency_jobs
    manifest = mf.get(jobs)
    for conc, gen in plan.latency_cases:
        got: dict[str, dict[str, Any]] = {}
        for tool in ("runner", "bare"):
            log(f"latency: {tool}, C={conc}, {jobs} jobs, generation {gen:g} s")
            with simulator("--generation-time", repr(gen), *IMAGE) as sim:
                r = run_tool(
                    tool, sim=sim, manifest=manifest, jobs=jobs, concurrency=conc,
                    poll_interval=plan.latency_poll,
                    timeout=max(300.0, 4 * jobs * gen / conc),
                )  # fmt: skip
                stats = sim.stats()
                r["polls_per_job"] = round(stats["polls_total"] / jobs, 2)
                # how long after a task was done its client first saw it
                r["found_late_ms"] = round(
                    1000
                    * stats.get("found_done_delay_s", 0.0)
                    / max(1, stats.get("tasks_found_done", 0)),
                    1,
                )
            got[tool] = r
        log(f"latency: runner, C={conc}, {jobs} jobs, generation 0")
        with simulator("--generation-time", "0", *IMAGE) as sim:
            ceiling = run_tool(
                "runner", sim=sim, manifest=manifest, jobs=jobs, concurrency=conc
            )
        r, bare = got["runner"], got["bare"]
        ideal = conc / gen
        eff = round(r["own_jobs_per_s"] / ideal, 3)
        bound = min(ideal, ceiling["own_jobs_per_s"])
        runs.append(
            {"run": r, "bare": bare, "ceiling": ceiling, "ideal": ideal,
             "generation_s": gen}
        )  # fmt: skip
        rows.append(
            [conc, f"{gen:g} s", jobs, r["succeeded"], r["own_jobs_per_s"],
             r["wall_jobs_per_s"], ideal, eff, goal(eff >= LATENCY_GOAL),
             r["polls_per_job"], r["found_late_ms"], bare["polls_per_job"],
             bare["found_late_ms"], r["cpu_ms_per_job"], bare["cpu_ms_per_job"],
             round(bare["own_jobs_per_s"] / ideal, 3),
             round(r["own_jobs_per_s"] / bare["own_jobs_per_s"], 3),
             ceiling["own_jobs_per_s"], round(r["own_jobs_per_s"] / bound, 3)]
        )  # fmt: skip
    md = table(
        ["C", "generation", "jobs", "ok", "jobs/s (own)", "jobs/s (wall)",
         "ideal C/L", "efficiency", f"goal >= {LATENCY_GOAL}", "polls/job",
         "found late ms", "bare polls/job", "bare found late ms",
         "CPU ms/job", "bare CPU ms/job", "bare loop efficiency", "runner / bare",
         "gen-0 ceiling jobs/s", "eff. vs min(ideal, ceiling)"],
        rows,
    )  # fmt: skip
    md += (
        f"\n\nRunner and bare loop poll every {plan.latency_poll:g} s. "
        "Efficiency = own jobs/s (without interpreter start-up) / (C / L). "
        "The bare loop (same C, same interval) shows what a minimal client "
        "reaches on this machine; the gen-0 ceiling is the runner at generation "
        "time 0, same jobs and C: when it is below C / L the CPU, not the "
        "pipeline, is the bound. Found late = the simulator's mean time from a "
        "task being done to the first poll that saw it. CPU ms/job is the "
        "client's own CPU: hundreds of sleeping pollers should cost little of it."
    )
    return {
        "title": "2. Latency-bound efficiency (C=100 at 1 s, C=500 at 5 s)",
        "runs": runs,
        "markdown": md,
    }


def section_memory(plan: Plan, mf: Manifests) -> dict[str, Any]:
    """Peak RSS of two full runs (downloads included) that differ only in size:
    flat memory means the larger is at most 1.15x the smaller."""
    runs = []
    small, large = plan.memory_sizes
    with simulator(
        "--generation-time", "0", "--task-ttl", "60", *IMAGE
    ) as sim:  # fmt: skip
        for jobs in (small, large):
            log(f"memory: runner, full run of {jobs:,} jobs")
            runs.append(
                run_tool(
                    "runner", sim=sim, manifest=mf.get(jobs), jobs=jobs,
                    concurrency=64, timeout=max(300.0, jobs / 10),
                )
            )  # fmt: skip
    a, b = runs
    ratio = round(b["peak_rss_mb"] / a["peak_rss_mb"], 3)
    slope_kb = round((b["peak_rss_mb"] - a["peak_rss_mb"]) * 1024 / (large - small), 4)
    million_mb = round(b["peak_rss_mb"] + slope_kb * (1_000_000 - large) / 1024, 1)
    md = table(
        ["jobs", "ok", "jobs/s (wall)", "peak RSS MB", f"< {MEMORY_MB_GOAL:g} MB"],
        [
            [r["jobs"], r["succeeded"], r["wall_jobs_per_s"], r["peak_rss_mb"],
             goal(r["peak_rss_mb"] < MEMORY_MB_GOAL)]
            for r in runs
        ],
    )  # fmt: skip
    md += "\n\n" + table(
        ["measure", "value", "goal"],
        [
            [f"peak RSS {large:,} / {small:,} jobs", ratio,
             f"<= {MEMORY_RATIO_GOAL} {goal(ratio <= MEMORY_RATIO_GOAL)}"],
            ["slope, KB per job", slope_kb, ""],
            ["1,000,000 jobs, extrapolated from the slope, MB", million_mb, ""],
        ],
    )  # fmt: skip
    return {
        "title": "3. Memory: peak RSS of full runs, "
        f"{small:,} vs {large:,} jobs (concurrency 64, generation 0)",
        "runs": runs,
        "ratio": ratio,
        "slope_kb_per_job": slope_kb,
        "million_jobs_mb": million_mb,
        "markdown": md,
    }


def section_scale(plan: Plan) -> dict[str, Any]:
    rows = plan.scale_rows
    log(f"scale: {rows:,} rows (generating if not cached)")
    res = scale.run_scale(rows, plan.scale_runs)
    md = table(
        ["command", "manifest rows", "ledger lines", "runs", "wall s (median)",
         "peak RSS MB (max)", f"< {scale.TIME_GOAL_S:g} s",
         f"< {scale.RSS_GOAL_MB:g} MB"],
        [
            [r["command"], r["rows"], r["ledger_lines"], r["runs"], r["wall_s"],
             r["peak_rss_mb"], goal(r["time_ok"]), goal(r["rss_ok"])]
            for r in res["results"]
        ],
    )  # fmt: skip
    md += (
        f"\n\nManifest {res['manifest_mb']} MB CSV (prompt,seed,meta.k; derived "
        f"ids), ledger {res['ledger_mb']} MB: half the jobs done (a submitted and "
        "a succeeded line each). Peak RSS is the child's own (wait4). "
        f"Generation took {res['generated_s']} s (0 = cached)."
    )
    return {"title": "4. Scale: planning a resume", **res, "markdown": md}


def section_peers(plan: Plan, mf: Manifests) -> dict[str, Any]:
    """Runner vs the two peers at concurrency 64, generation 0, with downloads."""
    runs = []
    tools = ["runner", "naive", "cookbook"]
    for n, jobs in enumerate(plan.peer_sizes):
        manifest = mf.get(jobs)
        with simulator(
            "--generation-time", "0", "--task-ttl", "60", *IMAGE
        ) as sim:  # fmt: skip
            # rotate the order so no tool always runs first (or last)
            for tool in tools[n % 3 :] + tools[: n % 3]:
                log(f"peers: {tool} on {jobs:,} jobs")
                runs.append(
                    run_tool(
                        tool, sim=sim, manifest=manifest, jobs=jobs, concurrency=64,
                        timeout=max(300.0, jobs / 10),
                    )
                )  # fmt: skip
    rows = []
    for jobs in plan.peer_sizes:
        base = next(r for r in runs if r["jobs"] == jobs and r["tool"] == "runner")
        for r in (r for r in runs if r["jobs"] == jobs):
            rows.append(
                [jobs, TOOL_LABELS[r["tool"]], r["succeeded"], r["wall_jobs_per_s"],
                 r["own_jobs_per_s"],
                 round(r["wall_jobs_per_s"] / base["wall_jobs_per_s"], 3),
                 r["peak_rss_mb"], r["cpu_ms_per_job"]]
            )  # fmt: skip
    md = table(
        ["jobs", "tool", "ok", "jobs/s (wall)", "jobs/s (own)", "vs runner (wall)",
         "peak MB", "CPU ms/job"],
        rows,
    )  # fmt: skip
    md += (
        "\n\nConcurrency 64, generation time 0, every image downloaded (8x8 PNG, "
        "the simulator's smallest) and deleted after each measurement; poll "
        "interval 0.01 s for all. Peak MB is each child's own peak RSS."
    )
    return {
        "title": "5. Peers (concurrency 64, generation time 0)",
        "runs": runs,
        "markdown": md,
    }


def auto_supported() -> bool:
    """Whether this checkout's runner has --concurrency auto / --max-concurrency."""
    out = subprocess.run(
        [PY, "-m", "batch_runner", "run", "--help"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    ).stdout  # fmt: skip
    return "--max-concurrency" in out and "auto" in out


def section_adaptive(plan: Plan, mf: Manifests) -> dict[str, Any]:
    """429s and jobs/s against a server that caps active tasks at 20."""
    jobs = plan.adaptive_jobs
    manifest = mf.get(jobs)
    configs: list[tuple[str, str, list[str]]] = [
        ("--concurrency 8", "8", []),
        ("--concurrency 64", "64", []),
    ]
    note = ""
    if auto_supported():
        configs.append(
            ("--concurrency auto --max-concurrency 64", "auto",
             ["--max-concurrency", "64"])
        )  # fmt: skip
    else:
        note = "\n\n`--concurrency auto` is not in this checkout; only fixed rows."
    rows = []
    runs = []
    for label, conc, extra in configs:
        log(f"adaptive: {label}, {jobs} jobs")
        with simulator(
            "--generation-time", "0.5", "--max-active-tasks", "20",
            "--retry-after", "0.2", *IMAGE,
        ) as sim:  # fmt: skip
            r = run_tool(
                "runner", sim=sim, manifest=manifest, jobs=jobs, concurrency=conc,
                poll_interval=0.1, extra=extra, timeout=600,
            )  # fmt: skip
            stats = sim.stats()
        r["rejected_429"] = stats["rejected_429_limit"]
        r["submits_total"] = stats["submits_total"]
        r["label"] = label
        runs.append(r)
        rows.append(
            [label, r["succeeded"], jobs - r["succeeded"], r["own_jobs_per_s"],
             r["wall_jobs_per_s"], round(r["own_jobs_per_s"] / 40.0, 3),
             r["rejected_429"], round(r["rejected_429"] / jobs, 2)]
        )  # fmt: skip
    md = table(
        ["runner", "ok", "not ok", "jobs/s (own)", "jobs/s (wall)",
         "of server max 40/s", "429s", "429s per job"],
        rows,
    )  # fmt: skip
    md += (
        "\n\nSimulator `--max-active-tasks 20 --retry-after 0.2 --generation-time "
        "0.5`: at most 20 tasks in progress, so at most 40 jobs/s. Runner "
        "`--poll-interval 0.1`." + note
    )
    return {
        "title": f"6. Adaptive concurrency ({jobs} jobs, server cap 20 active tasks)",
        "runs": runs,
        "markdown": md,
    }


def section_sweep(plan: Plan, mf: Manifests) -> dict[str, Any]:
    """jobs/s against concurrency for each tool (the data of the plot)."""
    jobs = plan.sweep_jobs
    manifest = mf.get(jobs)
    tools = list(plan.sweep_tools)
    runs = []
    with simulator("--generation-time", "0", *IMAGE) as sim:
        for n, conc in enumerate(plan.sweep_concurrency):
            shift = n % len(tools)
            for tool in tools[shift:] + tools[:shift]:
                log(f"sweep: {tool} at concurrency {conc}")
                runs.append(
                    run_tool(tool, sim=sim, manifest=manifest, jobs=jobs,
                             concurrency=conc)
                )  # fmt: skip
    headers = ["concurrency"] + [f"{TOOL_LABELS[t]} jobs/s" for t in tools]
    rows = []
    for conc in plan.sweep_concurrency:
        by_tool = {r["tool"]: r for r in runs if r["concurrency"] == conc}
        rows.append([conc] + [by_tool[t]["wall_jobs_per_s"] for t in tools])
    md = table(headers, rows)
    md += (
        f"\n\n{jobs:,} jobs per point, generation time 0, wall-clock jobs/s "
        "including interpreter start-up. `python bench/plot.py` draws this."
    )
    return {
        "title": f"7. Throughput against concurrency ({jobs:,} jobs, generation 0)",
        "jobs": jobs,
        "runs": runs,
        "markdown": md,
    }


# -- main -----------------------------------------------------------------------


def environment() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], capture_output=True, text=True, timeout=30, cwd=REPO
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    import aiohttp

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "loadavg_start": os.getloadavg(),
    }


def write_results(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    env = results["environment"]
    parts = [
        "# zimage-batch-runner benchmark",
        "",
        f"{env['date']}, {'quick' if results['quick'] else 'full'} mode, "
        f"commit {env['git_commit']}{' (dirty)' if env['git_dirty'] else ''}, "
        f"Python {env['python']}, aiohttp {env['aiohttp']}, {env['cpus']} CPUs, "
        f"load average {env['loadavg_start'][0]:.2f} at start. Ratios are "
        "measured side by side in one run; absolute numbers depend on the machine.",
    ]
    for name in SECTIONS:
        sec = results["sections"].get(name)
        if sec is None:
            continue
        parts += ["", f"## {sec.get('title', name)}", ""]
        parts.append(sec.get("markdown") or f"**failed:** `{sec.get('error')}`")
    (out / "results.md").write_text("\n".join(parts) + "\n")


def draw_plot(results: dict[str, Any]) -> None:
    """docs/bench-throughput.png from the sweep, if matplotlib is installed."""
    import plot

    try:
        path = plot.plot(
            results["sections"]["sweep"],
            results["environment"],
            REPO / "docs" / "bench-throughput.png",
        )
    except ImportError:
        log("matplotlib is not installed: skipping docs/bench-throughput.png")
        return
    log(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[7:14]),
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and no sweep unless --only asks for it (~3-3.5 min)",
    )
    p.add_argument(
        "--only", help=f"comma list of sections to run: {', '.join(SECTIONS)}"
    )
    p.add_argument(
        "--out",
        type=Path,
        help="results directory (default bench/results, bench/results/quick "
        "with --quick)",
    )
    p.add_argument(
        "--peer-sizes",
        help="comma list of job counts for the peers section "
        "(default 10000,200000; quick 2000,20000)",
    )
    args = p.parse_args(argv)
    if args.only:
        only = tuple(args.only.split(","))
    else:
        only = tuple(n for n in SECTIONS if not (args.quick and n == "sweep"))
    unknown = set(only) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    sizes = (
        tuple(int(s) for s in args.peer_sizes.split(",")) if args.peer_sizes else None
    )
    plan = Plan.make(args.quick, sizes)
    default_out = REPO / "bench" / "results"
    out: Path = (
        args.out or (default_out / "quick" if plan.quick else default_out)
    ).resolve()
    results_path = out / "results.json"
    results: dict[str, Any] = {"sections": {}}
    if results_path.exists():
        # --only refreshes some sections and keeps the others
        with contextlib.suppress(ValueError):
            results = json.loads(results_path.read_text())
    results["quick"] = plan.quick
    results["environment"] = environment()
    started = time.monotonic()
    failed = []
    with tempfile.TemporaryDirectory(prefix="zbench-manifests-") as tmp:
        mf = Manifests(Path(tmp))
        runners: dict[str, Callable[[], dict[str, Any]]] = {
            "overhead": lambda: section_overhead(plan, mf),
            "latency": lambda: section_latency(plan, mf),
            "memory": lambda: section_memory(plan, mf),
            "scale": lambda: section_scale(plan),
            "peers": lambda: section_peers(plan, mf),
            "adaptive": lambda: section_adaptive(plan, mf),
            "sweep": lambda: section_sweep(plan, mf),
        }
        for name in SECTIONS:
            if name not in only:
                continue
            t0 = time.monotonic()
            try:
                sec = runners[name]()
            except (BenchError, OSError, ValueError, KeyError) as exc:
                traceback.print_exc()
                failed.append(name)
                sec = {"title": name, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            sec["seconds"] = round(time.monotonic() - t0, 1)
            sec["quick"] = plan.quick
            results["sections"][name] = sec
            print(f"\n## {sec['title']}\n")
            print(sec.get("markdown") or f"**failed:** {sec['error']}", flush=True)
            log(f"{name}: {sec['seconds']} s")
            write_results(out, results)
    results["environment"]["loadavg_end"] = os.getloadavg()
    results["total_seconds"] = round(time.monotonic() - started, 1)
    write_results(out, results)
    if "sweep" in only and not plan.quick and "sweep" not in failed:
        draw_plot(results)
    log(f"done in {results['total_seconds']} s; wrote {out / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
