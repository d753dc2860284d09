"""Memory of the library's `records()` on a million-line ledger, against loading
every job's last record into a dict (what a naive reader does).

Reuses bench/scale.py's cached files (a ledger of N lines: N/2 jobs, each with a
"submitted" and a "succeeded" line). Measures each child's own peak RSS and
wall time, and checks that both count the same jobs.

    python bench/records_rss.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from harness import PY, child_env, measure
from scale import DEFAULT_CACHE, prepare

_RECORDS = (
    "import sys, batch_runner\n"
    "print(sum(1 for r in batch_runner.records(sys.argv[1]) if r['job_id']))\n"
)
_LOAD_ALL = (
    "import sys\n"
    "from pathlib import Path\n"
    "from batch_runner.store.ledger import latest_records\n"
    "print(len(latest_records(Path(sys.argv[1]) / 'ledger.jsonl')))\n"
)
_IMPORT_ONLY = "import batch_runner\nprint(0)\n"


def run(rows: int) -> dict[str, Any]:
    files, generated_s = prepare(rows, DEFAULT_CACHE)
    env = child_env(key=None)
    results = []
    for name, code in (
        ("import batch_runner (baseline)", _IMPORT_ONLY),
        ("records() streamed", _RECORDS),
        ("latest_records() dict of all", _LOAD_ALL),
    ):
        m = measure([PY, "-c", code, str(files.run_dir)], timeout=900, env=env).check()
        results.append(
            {
                "reader": name,
                "jobs": int(m.stdout.strip()),
                "wall_s": round(m.wall_s, 2),
                "peak_rss_mb": round(m.peak_rss_mb, 1),
            }
        )
    return {
        "ledger_lines": files.ledger_lines,
        "ledger_mb": round((files.run_dir / "ledger.jsonl").stat().st_size / 2**20, 1),
        "generated_s": round(generated_s, 1),
        "results": results,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    args = p.parse_args()
    print(json.dumps(run(args.rows), indent=2))


if __name__ == "__main__":
    main()
