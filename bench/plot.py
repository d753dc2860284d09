"""Draw docs/bench-throughput.png: jobs/s against concurrency, one line per tool.

Reads the `sweep` section of bench/results/results.json (written by
`python bench/run_bench.py`, or by this script with --measure, which runs only
that section: 2,000 jobs at concurrency 8..128, generation time 0). Shows that
the runner keeps pace with hand-written peers at every concurrency, next to
the bare loop as the floor of client cost. Needs matplotlib (the `bench` extra).

    python bench/plot.py [--measure] [--results bench/results/results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness import REPO, TOOL_LABELS

STYLES: dict[str, dict[str, Any]] = {
    "runner": {"color": "#1f6feb", "marker": "o", "linewidth": 2.5},
    "naive": {"color": "#d29922", "marker": "s", "linewidth": 1.8},
    "cookbook": {"color": "#8250df", "marker": "^", "linewidth": 1.8},
    "bare": {"color": "#6e7781", "marker": ".", "linewidth": 1.2, "linestyle": "--"},
}


def plot(sweep: dict[str, Any], env: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, ScalarFormatter

    runs = sweep["runs"]
    tools = [t for t in STYLES if any(r["tool"] == t for r in runs)]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for tool in tools:
        points = sorted(
            (int(r["concurrency"]), float(r["wall_jobs_per_s"]))
            for r in runs
            if r["tool"] == tool
        )
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, label=TOOL_LABELS[tool], **STYLES[tool])
    concurrencies = sorted({int(r["concurrency"]) for r in runs})
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(concurrencies))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_ylim(bottom=0)
    ax.set_xlabel(
        "concurrency (the runner: tasks generating; the others: jobs in flight)"
    )
    ax.set_ylabel("jobs/s (wall clock, incl. start-up)")
    ax.set_title(
        f"Throughput vs concurrency: {sweep['jobs']:,} jobs, generation time 0, "
        "local simulator"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.text(
        0.01,
        0.01,
        f"{env.get('cpus')} CPUs shared with the simulator; Python "
        f"{env.get('python')}, aiohttp {env.get('aiohttp')}; {env.get('date')}; "
        "one run per point, noisy machine",
        fontsize=7,
        color="#57606a",
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--results", type=Path, default=REPO / "bench" / "results" / "results.json"
    )
    p.add_argument("--out", type=Path, default=REPO / "docs" / "bench-throughput.png")
    p.add_argument("--measure", action="store_true", help="run the sweep section first")
    args = p.parse_args()
    if args.measure:
        import run_bench

        rc = run_bench.main(["--only", "sweep", "--out", str(args.results.parent)])
        if rc:
            return rc
    try:
        results = json.loads(args.results.read_text())
        sweep = results["sections"]["sweep"]
        if not sweep.get("runs"):
            raise KeyError("runs")  # the section failed
    except (OSError, ValueError, KeyError):
        print(f"no sweep results in {args.results}; use --measure", file=sys.stderr)
        return 1
    print(plot(sweep, results.get("environment", {}), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
