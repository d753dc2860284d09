"""Shared plumbing of the benchmarks: a simulator in its own process, measured
child processes (wall time, CPU time and peak RSS of exactly that child), and
manifest files. Imported by run_bench.py, scale.py and plot.py; proves nothing
by itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PY = sys.executable
KEY = "sk-bench-0123456789abcdef"
#: the simulator clamps each side to >= 8 px; 1024 * 1/128 = 8, its smallest PNG
SMALLEST_IMAGE_SCALE = 1 / 128

TOOLS = ("runner", "bare", "naive", "cookbook")
TOOL_LABELS = {
    "runner": "batch-runner run",
    "bare": "bare aiohttp loop",
    "naive": "naive gather script",
    "cookbook": "cookbook-style loop",
}


class BenchError(RuntimeError):
    """A measured command failed or a simulator did not start."""


# -- the simulator --------------------------------------------------------------


@dataclass
class Simulator:
    url: str
    proc: subprocess.Popen[bytes]

    def stats(self) -> dict[str, Any]:
        """The simulator's counters, minus the per-prompt map (it grows with N)."""
        with urllib.request.urlopen(self.url + "/_sim/stats", timeout=30) as resp:
            stats: dict[str, Any] = json.loads(resp.read())
        stats.pop("tasks_by_prompt", None)
        return stats

    def cpu_seconds(self) -> float:
        """user+system CPU the simulator process has used so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1]
        except OSError:
            return float("nan")
        parts = fields.split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def simulator(*knobs: str, startup_timeout: float = 30.0) -> Iterator[Simulator]:
    """`python -m batch_runner simulator --port 0 ...` in its own process on
    127.0.0.1; always stopped (SIGTERM, then SIGKILL) when the block exits."""
    cmd = [PY, "-m", "batch_runner", "simulator", "--host", "127.0.0.1"]
    cmd += ["--port", "0", "--key", KEY, *knobs]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = _read_line(proc.stdout, startup_timeout)
        match = re.search(r"listening on (http://\S+)", line)
        if match is None:
            raise BenchError(f"simulator did not start: {line!r} ({' '.join(cmd)})")
        yield Simulator(url=match[1], proc=proc)
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def _read_line(stream: Any, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            return ""
        return str(stream.readline().decode("utf-8", "replace"))
    finally:
        sel.close()


def stop_process(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


# -- measured children ----------------------------------------------------------


@dataclass
class Measured:
    """One child process: exit code, wall seconds, its own peak RSS and CPU."""

    cmd: list[str]
    rc: int
    wall_s: float
    peak_rss_mb: float
    cpu_s: float
    stdout: str
    stderr: str
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> Measured:
        if self.rc != 0:
            tail = "\n".join(self.stderr.splitlines()[-15:])
            raise BenchError(f"exit {self.rc}: {' '.join(self.cmd)}\n{tail}")
        return self


#: Runs the measured command and reports its rusage. Why a wrapper: on exec,
#: Linux folds the pre-exec image's peak RSS into the new program's ru_maxrss,
#: and a child forked (or vforked) straight from this harness, which grows to
#: 100+ MB while it builds the scale files, would report at least that. The
#: wrapper is a bare `python -S` of a few MB, so its children report their own.
_WRAPPER = """
import json, os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(report, "w") as fh:
    json.dump({"status": status, "wall_s": wall, "maxrss_kib": ru.ru_maxrss,
               "cpu_s": ru.ru_utime + ru.ru_stime}, fh)
"""


def measure(
    cmd: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
) -> Measured:
    """Run `cmd` to completion; report its wall time, CPU time and own peak RSS.

    The rusage comes from wait4() on exactly that process (RUSAGE_CHILDREN
    would blur several children), taken by a tiny wrapper (see _WRAPPER).
    stdout/stderr go to temp files, so a chatty child never blocks on a pipe;
    on timeout the whole process group is killed.
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory(prefix="zbench-rusage-") as tmp,
    ):
        report = Path(tmp) / "rusage.json"
        proc = subprocess.Popen(
            [PY, "-S", "-c", _WRAPPER, str(report), *cmd],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            raise BenchError(
                f"timed out after {timeout:.0f}s: {' '.join(cmd)}"
            ) from None
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
        try:
            usage = json.loads(report.read_text())
        except (OSError, ValueError):
            raise BenchError(
                f"could not run {' '.join(cmd)} (wrapper exit {proc.returncode})\n"
                + stderr[-2000:]
            ) from None
        return Measured(
            cmd=list(cmd),
            rc=os.waitstatus_to_exitcode(usage["status"]),
            wall_s=usage["wall_s"],
            peak_rss_mb=usage["maxrss_kib"] / 1024,
            cpu_s=usage["cpu_s"],
            stdout=stdout,
            stderr=stderr,
        )


def child_env(key: str | None = KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TENSORSLAB_API_KEY"}
    if key is not None:
        env["TENSORSLAB_API_KEY"] = key
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- the tools under test -------------------------------------------------------


def tool_command(
    tool: str,
    *,
    url: str,
    manifest: Path,
    out: Path,
    concurrency: int | str,
    poll_interval: float | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line that runs `manifest` through `tool` against `url`.

    poll_interval None means 0.01 s, except for the bare loop: one poll at once.
    """
    if poll_interval is None and tool != "bare":
        poll_interval = 0.01
    if tool == "runner":
        return [
            PY, "-m", "batch_runner", "run", str(manifest),
            "--base-url", url, "--out", str(out),
            "--concurrency", str(concurrency),
            "--poll-interval", f"{poll_interval:g}",
            "--no-progress", "--log-format", "json", *extra,
        ]  # fmt: skip
    script = {
        "bare": BENCH_DIR / "bare_loop.py",
        "naive": BENCH_DIR / "peers" / "naive_gather.py",
        "cookbook": BENCH_DIR / "peers" / "cookbook_style.py",
    }[tool]
    cmd = [
        PY, str(script), "--base-url", url, "--key", KEY,
        "--manifest", str(manifest), "--out", str(out),
        "--concurrency", str(concurrency), *extra,
    ]  # fmt: skip
    if poll_interval is not None:
        cmd += ["--poll-interval", f"{poll_interval:g}"]
    return cmd


def own_report(tool: str, m: Measured) -> dict[str, Any]:
    """What the tool says about itself: jobs, succeeded, elapsed_s, jobs_per_s.

    The runner logs a JSON `summary`; the bench scripts print one JSON line.
    """
    stream = m.stderr if tool == "runner" else m.stdout
    for line in reversed(stream.splitlines()):
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if tool == "runner" and isinstance(obj.get("summary"), dict):
            s = obj["summary"]
            return {
                "succeeded": s["succeeded"],
                "failed": s["failed"],
                "elapsed_s": s["elapsed_s"],
                "jobs_per_s": s["jobs_per_s"],
            }
        if tool != "runner" and "jobs_per_s" in obj:
            return dict(obj)
    raise BenchError(f"{tool}: no summary in its output\n{stream[-2000:]}")


def run_tool(
    tool: str,
    *,
    sim: Simulator,
    manifest: Path,
    jobs: int,
    concurrency: int | str,
    poll_interval: float | None = None,
    extra: Sequence[str] = (),
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run one tool on a fresh temp output dir (deleted after), return numbers."""
    out = Path(tempfile.mkdtemp(prefix=f"zbench-{tool}-"))
    try:
        cmd = tool_command(
            tool,
            url=sim.url,
            manifest=manifest,
            out=out / "run",
            concurrency=concurrency,
            poll_interval=poll_interval,
            extra=extra,
        )
        sim_cpu = sim.cpu_seconds()
        m = measure(
            cmd,
            timeout=timeout or max(120.0, jobs / 20),
            env=child_env(),
        )
        sim_cpu = sim.cpu_seconds() - sim_cpu
        report = own_report(tool, m)
        if m.rc != 0 and tool != "runner":
            m.check()
        ok = int(report["succeeded"])
        return {
            "tool": tool,
            "jobs": jobs,
            "concurrency": concurrency,
            "rc": m.rc,
            "succeeded": ok,
            "wall_s": round(m.wall_s, 3),
            "wall_jobs_per_s": round(ok / m.wall_s, 2),
            "own_jobs_per_s": float(report["jobs_per_s"]),
            "own_elapsed_s": float(report["elapsed_s"]),
            "peak_rss_mb": round(m.peak_rss_mb, 1),
            "cpu_s": round(m.cpu_s, 2),
            "cpu_ms_per_job": round(1000 * m.cpu_s / max(ok, 1), 3),
            "sim_cpu_s": round(sim_cpu, 2),
        }
    finally:
        shutil.rmtree(out, ignore_errors=True)


# -- manifests ------------------------------------------------------------------


def write_csv_manifest(path: Path, rows: int, *, tag: str = "bench") -> Path:
    """CSV with columns prompt,seed,meta.k; ids are derived by the runner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        fh.write("prompt,seed,meta.k\n")
        chunk: list[str] = []
        for i in range(rows):
            chunk.append(f"{tag} prompt number {i} a lighthouse at dusk,{i},v{i % 7}\n")
            if len(chunk) >= 10_000:
                fh.write("".join(chunk))
                chunk.clear()
        fh.write("".join(chunk))
    tmp.replace(path)
    return path
