"""What durability costs: ledger appends per second with and without --fsync.

Measured side by side in one process, alternating, so the ratio means something
on a noisy shared machine. Two workloads: sequential appends (one job at a
time, the worst case) and 64 concurrent appenders (group commit shares fsyncs).

    python bench/bench_ledger.py [--records N]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from batch_runner.models import JobSpec, JobStatus
from batch_runner.store.ledger import LedgerWriter, make_record


async def sequential(path: Path, n: int, fsync: bool) -> float:
    job = JobSpec(job_id="bench", prompt="a benchmark prompt of typical length")
    record = make_record(job, JobStatus.SUCCEEDED, taskid="zimg_0123456789abcdef")
    async with LedgerWriter(path, fsync=fsync) as writer:
        start = time.perf_counter()
        for _ in range(n):
            await writer.append(record)
        return n / (time.perf_counter() - start)


async def concurrent(path: Path, n: int, fsync: bool, workers: int = 64) -> float:
    job = JobSpec(job_id="bench", prompt="a benchmark prompt of typical length")
    record = make_record(job, JobStatus.SUCCEEDED, taskid="zimg_0123456789abcdef")
    async with LedgerWriter(path, fsync=fsync) as writer:

        async def worker(count: int) -> None:
            for _ in range(count):
                await writer.append(record)

        start = time.perf_counter()
        await asyncio.gather(*(worker(n // workers) for _ in range(workers)))
        return (n // workers * workers) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[tuple[str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for name, fn in (("sequential", sequential), ("64 concurrent", concurrent)):
                for fsync in (False, True):
                    path = Path(tmp) / f"{name}-{fsync}-{rnd}.jsonl"
                    rate = asyncio.run(fn(path, args.records, fsync))
                    results.setdefault((name, fsync), []).append(rate)
    print(f"{'workload':<15} {'no fsync/s':>12} {'fsync/s':>10} {'fsync cost':>11}")
    for name in ("sequential", "64 concurrent"):
        plain = max(results[name, False])
        synced = max(results[name, True])
        print(f"{name:<15} {plain:>12,.0f} {synced:>10,.0f} {plain / synced:>10.1f}x")


if __name__ == "__main__":
    main()
