"""Scale: planning a resume of a 1,000,000-job manifest stays fast and small.

Generates (once, cached under bench/results/scale-cache/ keyed by size) a CSV
manifest of N rows (prompt, seed, meta.k; ids derived by the runner, or
explicit ones with --explicit-ids, whose parameters the plan then compares with
the ledger's job by job) and a ledger of N lines in which the first half of the
jobs are done: each has a "submitted" line and a "succeeded" line, as a real
run writes them, with ids taken from batch_runner.manifest.reader.iter_jobs so
they match. Then measures wall time and the child's own peak RSS (wait4) of

    python -m batch_runner run M.csv --dry-run --out DIR
    python -m batch_runner status M.csv --out DIR --json

and checks each printed the expected counts. The ledger has the resume
snapshot (`.resume-state`) that `batch-runner snapshot DIR` writes (a run
writes it at its end for up to 16 MB of new ledger), written here the same
way; --no-snapshot removes it, so the whole ledger is read. Each command is
measured cold (no `.manifest-keys`: a plan of a new or edited manifest,
which parses the CSV) and warm (the cache of these bytes is there, as a run
of this manifest leaves it; written here the same way).
Goals: peak RSS < 150 MB and wall time < 5 s, for both commands.

With --yaml-jobs N it instead measures `run --dry-run` of the same jobs written
as an N-job YAML manifest (prompt, seed, meta mapping) next to the CSV: YAML is
streamed too, goal a few seconds and < 120 MB at 100,000 jobs.

    python bench/scale.py [--rows 1000000] [--runs 2] [--explicit-ids]
                          [--no-snapshot] [--attempt-log]
    python bench/scale.py --yaml-jobs 100000 [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import PY, REPO, BenchError, child_env, measure, write_csv_manifest

from batch_runner.manifest.key_cache import cached_keyed_rows, key_cache_path
from batch_runner.manifest.reader import iter_jobs
from batch_runner.models import JobStatus
from batch_runner.store.ledger import encode_record, make_record
from batch_runner.store.snapshot import load_snapshot, snapshot_path, write_snapshot

CACHE_VERSION = 1
RSS_GOAL_MB = 150.0
TIME_GOAL_S = 5.0
YAML_RSS_GOAL_MB = 120.0
YAML_TIME_GOAL_S = 5.0
DEFAULT_CACHE = REPO / "bench" / "results" / "scale-cache"


@dataclass(frozen=True)
class ScaleFiles:
    rows: int
    manifest: Path
    run_dir: Path
    ledger_lines: int
    done_jobs: int


def prepare(
    rows: int, cache: Path = DEFAULT_CACHE, *, explicit_ids: bool = False
) -> tuple[ScaleFiles, float]:
    """The cached manifest and ledger for `rows`; builds them if missing.
    With `explicit_ids` every row has an `id` (`job-<n>`): the ledger's
    parameters are then compared job by job, not implied by derived ids.

    Returns the files and the seconds spent generating (0 when cached).
    """
    base = cache / (f"rows-{rows}-ids" if explicit_ids else f"rows-{rows}")
    manifest = base / "manifest.csv"
    run_dir = base / "run"
    marker = base / "complete.json"
    done = rows // 2
    files = ScaleFiles(rows, manifest, run_dir, 2 * done, done)
    try:
        meta = json.loads(marker.read_text())
        if meta == {"version": CACHE_VERSION, "rows": rows, "lines": 2 * done}:
            return files, 0.0
    except (OSError, ValueError):
        pass
    started = time.perf_counter()
    marker.unlink(missing_ok=True)
    if explicit_ids:
        write_id_manifest(manifest, rows, tag="scale")
    else:
        write_csv_manifest(manifest, rows, tag="scale")
    run_dir.mkdir(parents=True, exist_ok=True)
    ledger = run_dir / "ledger.jsonl"
    tmp = ledger.with_suffix(".tmp")
    ts = "2026-01-01T00:00:00.000+00:00"
    with tmp.open("wb") as out:
        chunk: list[bytes] = []
        for n, job in enumerate(iter_jobs(manifest)):
            if n >= done:
                break
            taskid = f"zimg_{n:016x}"
            url = f"https://cdn.example.com/images/{taskid}_0.png"
            submitted = make_record(
                job, JobStatus.SUBMITTED, taskid=taskid, code=1000, ts=ts,
                msg="Task created successfully", attempts=1, run="bench-run",
            )  # fmt: skip
            succeeded = make_record(
                job, JobStatus.SUCCEEDED, taskid=taskid, urls=[url], code=1000,
                msg="ok", files=[f"images/{job.job_id}.png"], ts=ts,
            )  # fmt: skip
            succeeded["images"] = [
                {
                    "file": f"images/{job.job_id}.png",
                    "sha256": f"{n:064x}",
                    "bytes": 1234,
                    "width": 1024,
                    "height": 1024,
                }
            ]
            chunk.append(encode_record(submitted))
            chunk.append(encode_record(succeeded))
            if len(chunk) >= 20_000:
                out.write(b"".join(chunk))
                chunk.clear()
        out.write(b"".join(chunk))
    tmp.replace(ledger)
    marker.write_text(
        json.dumps({"version": CACHE_VERSION, "rows": rows, "lines": 2 * done})
    )
    return files, time.perf_counter() - started


def _check_dry_run(stdout: str, files: ScaleFiles) -> None:
    want = f"{files.rows - files.done_jobs} to submit"
    if want not in stdout or f"{files.done_jobs} already done" not in stdout:
        raise BenchError(f"dry run printed an unexpected plan:\n{stdout[-1000:]}")


def _check_status(stdout: str, files: ScaleFiles) -> None:
    status = json.loads(stdout.strip().splitlines()[-1])
    got = (status.get("succeeded"), status.get("pending"))
    if got != (files.done_jobs, files.rows - files.done_jobs):
        raise BenchError(f"status counted (succeeded, pending) = {got}")


def write_id_manifest(path: Path, rows: int, *, tag: str) -> Path:
    """The rows of `write_csv_manifest` with an explicit id column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        fh.write("id,prompt,seed,meta.k\n")
        for start in range(0, rows, 10_000):
            fh.write(
                "".join(
                    f"job-{i},{tag} prompt number {i} a lighthouse at dusk,{i},"
                    f"v{i % 7}\n"
                    for i in range(start, min(rows, start + 10_000))
                )
            )
    tmp.replace(path)
    return path


def ensure_attempt_log(files: ScaleFiles, *, wanted: bool) -> None:
    """Give the run dir the attempt log a real run leaves (one attempt per
    submitted job, answered by its "submitted" record), or none."""
    attempts = files.run_dir / "attempts.jsonl"
    if not wanted:
        attempts.unlink(missing_ok=True)
        return
    if attempts.exists():
        return
    tmp = attempts.with_suffix(".tmp")
    with tmp.open("w") as out:
        chunk: list[str] = []
        for n, job in enumerate(iter_jobs(files.manifest)):
            if n >= files.done_jobs:
                break
            line = {"job_id": job.job_id, "run": "bench-run", "n": 1, "ts": "t"}
            chunk.append(json.dumps(line, separators=(",", ":")) + "\n")
            if len(chunk) >= 20_000:
                out.write("".join(chunk))
                chunk.clear()
        out.write("".join(chunk))
    tmp.replace(attempts)


def ensure_snapshot(ledger: Path, *, snapshot: bool) -> float:
    """Leave the resume snapshot a run writes at its end (`snapshot`), or none
    (the first plan of a ledger an old version wrote); with an attempt log
    beside the ledger, with its audit mark. Returns the seconds writing it
    took (0 when it was there)."""
    if not snapshot:
        snapshot_path(ledger).unlink(missing_ok=True)
        return 0.0
    attempts = ledger.with_name("attempts.jsonl")
    snap = load_snapshot(ledger)
    if snap is not None and (snap.header.audit is not None or not attempts.exists()):
        return 0.0
    started = time.perf_counter()
    if not write_snapshot(ledger, attempts=attempts if attempts.exists() else None):
        raise BenchError(f"could not write the snapshot of {ledger}")
    return time.perf_counter() - started


#: cold: a plan of a new or edited manifest; warm: the same bytes a run planned
STATES = ("cold: manifest parsed", "warm: manifest keys cached")


def run_scale(
    rows: int,
    runs: int = 1,
    cache: Path = DEFAULT_CACHE,
    *,
    explicit_ids: bool = False,
    snapshot: bool = True,
    attempt_log: bool = False,
) -> dict[str, Any]:
    """Measure the dry-run plan and `status` on the cached files; runs alternate.
    With `snapshot`, the ledger has the resume snapshot a run leaves; with
    `attempt_log`, the run dir has the attempt log a run leaves, which
    `status` audits the ledger against."""
    files, generated_s = prepare(rows, cache, explicit_ids=explicit_ids)
    ensure_attempt_log(files, wanted=attempt_log)
    snapshot_s = ensure_snapshot(files.run_dir / "ledger.jsonl", snapshot=snapshot)
    commands = {
        "plan (run --dry-run)": [
            PY, "-m", "batch_runner", "run", str(files.manifest),
            "--dry-run", "--out", str(files.run_dir), "--no-progress",
        ],
        "status --json": [
            PY, "-m", "batch_runner", "status", str(files.manifest),
            "--out", str(files.run_dir), "--json",
        ],
    }  # fmt: skip
    checks = {"plan (run --dry-run)": _check_dry_run, "status --json": _check_status}
    samples: dict[str, list[tuple[float, float]]] = {}
    env = child_env(key=None)
    keys = key_cache_path(files.run_dir / "ledger.jsonl")
    for _ in range(runs):
        for name, cmd in commands.items():
            # explicit ids are compared job by job: never cached
            for state in STATES[:1] if explicit_ids else STATES:
                keys.unlink(missing_ok=True)
                if state.startswith("warm"):
                    # what a run of this manifest leaves, written the same way
                    for _ in cached_keyed_rows(str(files.manifest), keys, write=True):
                        pass
                    if not keys.exists():
                        raise BenchError(f"no key cache written at {keys}")
                m = measure(cmd, timeout=600, env=env).check()
                checks[name](m.stdout, files)
                samples.setdefault(f"{name}, {state}", []).append(
                    (m.wall_s, m.peak_rss_mb)
                )
    rows_out = []
    for name, got in samples.items():
        wall = statistics.median(s for s, _ in got)
        rss = max(r for _, r in got)
        rows_out.append(
            {
                "command": name,
                "rows": rows,
                "ledger_lines": files.ledger_lines,
                "runs": len(got),
                "wall_s": round(wall, 2),
                "peak_rss_mb": round(rss, 1),
                "time_ok": wall < TIME_GOAL_S,
                "rss_ok": rss < RSS_GOAL_MB,
            }
        )
    return {
        "rows": rows,
        "explicit_ids": explicit_ids,
        "snapshot": snapshot,
        "attempt_log": attempt_log,
        "ledger_lines": files.ledger_lines,
        "manifest_mb": round(files.manifest.stat().st_size / 2**20, 1),
        "ledger_mb": round((files.run_dir / "ledger.jsonl").stat().st_size / 2**20, 1),
        "generated_s": round(generated_s, 1),
        # what the run that left the snapshot spent writing it (0: cached)
        "snapshot_write_s": round(snapshot_s, 1),
        "results": rows_out,
    }


def write_yaml_manifest(path: Path, jobs: int, *, tag: str = "bench") -> Path:
    """The jobs of `write_csv_manifest` as a YAML list (meta as a mapping)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        chunk: list[str] = []
        for i in range(jobs):
            chunk.append(
                f"- prompt: {tag} prompt number {i} a lighthouse at dusk\n"
                f"  seed: {i}\n  meta: {{k: v{i % 7}}}\n"
            )
            if len(chunk) >= 10_000:
                fh.write("".join(chunk))
                chunk.clear()
        fh.write("".join(chunk))
    tmp.replace(path)
    return path


def run_yaml_scale(
    jobs: int, runs: int = 1, cache: Path = DEFAULT_CACHE
) -> dict[str, Any]:
    """Measure `run --dry-run` of an N-job YAML manifest and of the same CSV."""
    base = cache / f"yaml-{jobs}"
    manifests = {
        "yaml": base / "manifest.yaml",
        "csv": base / "manifest.csv",
    }
    if not manifests["yaml"].exists():
        write_yaml_manifest(manifests["yaml"], jobs)
    if not manifests["csv"].exists():
        write_csv_manifest(manifests["csv"], jobs)
    env = child_env(key=None)
    samples: dict[str, list[tuple[float, float, float]]] = {n: [] for n in manifests}
    for _ in range(runs):
        for name, manifest in manifests.items():
            cmd = [
                PY, "-m", "batch_runner", "run", str(manifest), "--dry-run",
                "--out", str(base / f"run-{name}"), "--no-progress",
            ]  # fmt: skip
            m = measure(cmd, timeout=600, env=env).check()
            if f"{jobs} to submit" not in m.stdout:
                raise BenchError(f"unexpected plan for {name}:\n{m.stdout[-1000:]}")
            samples[name].append((m.wall_s, m.peak_rss_mb, m.cpu_s))
    results = []
    for name, got in samples.items():
        wall = statistics.median(s for s, _, _ in got)
        rss = max(r for _, r, _ in got)
        results.append(
            {
                "command": f"run --dry-run ({name})",
                "jobs": jobs,
                "runs": len(got),
                "wall_s": round(wall, 2),
                # CPU seconds: what a busy shared machine inflates least
                "cpu_s": round(statistics.median(c for _, _, c in got), 2),
                "peak_rss_mb": round(rss, 1),
                "time_ok": wall < YAML_TIME_GOAL_S,
                "rss_ok": rss < YAML_RSS_GOAL_MB,
            }
        )
    return {
        "jobs": jobs,
        "yaml_mb": round(manifests["yaml"].stat().st_size / 2**20, 1),
        "results": results,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument(
        "--explicit-ids",
        action="store_true",
        help="give every row an id, so parameters are compared job by job",
    )
    p.add_argument(
        "--no-snapshot",
        action="store_true",
        help="remove the ledger's resume snapshot first: the whole ledger is read",
    )
    p.add_argument(
        "--attempt-log",
        action="store_true",
        help="give the run dir an attempt log, as a real run leaves (status "
        "then audits the ledger against it)",
    )
    p.add_argument(
        "--yaml-jobs",
        type=int,
        metavar="N",
        help="measure the dry run of an N-job YAML manifest instead",
    )
    args = p.parse_args()
    if args.yaml_jobs:
        result = run_yaml_scale(args.yaml_jobs, args.runs, args.cache)
    else:
        result = run_scale(
            args.rows,
            args.runs,
            args.cache,
            explicit_ids=args.explicit_ids,
            snapshot=not args.no_snapshot,
            attempt_log=args.attempt_log,
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
