"""The end of a run in a big run directory: metadata.jsonl appended or rewritten.

A run ends by bringing `metadata.jsonl` up to date. Rewriting it reads every
row of the directory's metadata log, so a nightly run that adds a few
thousand images to a directory of a million spent its last ~40 s on rows it
did not touch. With `.metadata-state` the new rows are appended
(`outputs/metadata_state.py`). This measures both, alternating, in one
process on one directory:

1. builds a run directory of N succeeded jobs (ledger lines as a run writes
   them, a tiny image file each) and compacts it once;
2. each round adds K succeeded jobs, compacts (the append), copies the file,
   removes the state and compacts again (the rewrite), and checks both files
   are byte for byte the same.

    python bench/metadata_end.py [--rows 200000] [--add 2000] [--rounds 3]
                                 [--cache DIR]

Prints the medians and their ratio. The directory is kept under
bench/results/metadata-cache/ keyed by N (rounds add to a copy of the log
only through the ledger, so a rerun starts from the same N again).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import time
from pathlib import Path

from batch_runner.models import JobSpec, JobStatus
from batch_runner.outputs.dataset import compact_metadata
from batch_runner.simulator.png import render_png
from batch_runner.store.ledger import encode_record, make_record
from batch_runner.store.rundir import RunDir

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / "results" / "metadata-cache"


def _add_jobs(run: RunDir, first: int, count: int, png: bytes) -> None:
    """`count` succeeded jobs, each with its image on disk."""
    lines = []
    sha = hashlib.sha256(png).hexdigest()
    for i in range(first, first + count):
        job_id = f"job{i:08d}"
        (run.images / f"{job_id}.png").write_bytes(png)
        record = make_record(
            JobSpec(job_id, f"bench prompt {i}", seed=i, meta={"k": f"v{i % 7}"}),
            JobStatus.SUCCEEDED,
            taskid=f"t{i}",
            urls=[f"http://example.invalid/{i}.png"],
            code=1000,
            msg="ok",
            files=[f"images/{job_id}.png"],
        )
        # what a run's record has: the image's facts, so nothing is hashed
        record["images"] = [
            {
                "file": f"images/{job_id}.png",
                "sha256": sha,
                "bytes": len(png),
                "width": 8,
                "height": 8,
            }
        ]
        lines.append(encode_record(record))
    with run.ledger.open("ab") as fh:
        fh.writelines(lines)


def _build(rows: int, png: bytes, cache: Path) -> RunDir:
    root = cache / f"rows-{rows}"
    done = root / ".built"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        run = RunDir(root)
        run.images.mkdir(parents=True)
        for start in range(0, rows, 10_000):
            _add_jobs(run, start, min(10_000, rows - start), png)
        done.write_text(str(rows))
    return RunDir(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--add", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args()
    png = render_png("bench", 0, 0, 8, 8)
    base = _build(args.rows, png, args.cache)
    work = args.cache / f"work-{args.rows}"
    shutil.rmtree(work, ignore_errors=True)
    print(f"copying a run directory of {args.rows:,} jobs ...", flush=True)
    shutil.copytree(base.root, work)
    run = RunDir(work)
    t0 = time.perf_counter()
    compact_metadata(work)
    print(f"first compaction (rewrite): {time.perf_counter() - t0:.2f} s", flush=True)
    appends: list[float] = []
    rewrites: list[float] = []
    first = args.rows
    for n in range(args.rounds):
        _add_jobs(run, first, args.add, png)
        first += args.add
        t0 = time.perf_counter()
        rows = compact_metadata(work)
        appends.append(time.perf_counter() - t0)
        appended = run.metadata.read_bytes()
        run.metadata_state.unlink()
        t0 = time.perf_counter()
        again = compact_metadata(work)
        rewrites.append(time.perf_counter() - t0)
        same = run.metadata.read_bytes() == appended and rows == again
        print(
            f"round {n + 1}: {rows:,} rows, +{args.add:,}: append "
            f"{appends[-1]:.3f} s, rewrite {rewrites[-1]:.3f} s, "
            f"same bytes: {same}",
            flush=True,
        )
        if not same:
            raise SystemExit("the appended file differs from the rewritten one")
    a, r = statistics.median(appends), statistics.median(rewrites)
    print(
        f"\nmedians over {args.rounds} rounds, {args.rows:,} rows + {args.add:,} "
        f"new: append {a:.3f} s, rewrite {r:.3f} s, rewrite / append {r / a:.1f}x"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
