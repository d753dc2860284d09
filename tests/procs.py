"""Helpers to drive the real CLI and a standalone simulator as subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY = "sk-SUBPROCESS-KEY-5f3a9c"
#: the installed console script, beside the interpreter running the tests
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "batch-runner")


@dataclass
class StandaloneSim:
    url: str
    proc: subprocess.Popen[str]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_sim/stats", timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def add_credits(self, n: int) -> None:
        req = urllib.request.Request(
            self.url + "/_sim/credits",
            data=json.dumps({"add": n}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(req, timeout=5).close()


@contextmanager
def standalone_simulator(*knobs: str) -> Iterator[StandaloneSim]:
    """`batch-runner simulator --port 0 ...` in its own process; yields its URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batch_runner",
            "simulator",
            "--port",
            "0",
            "--key",
            KEY,
            *knobs,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line + (
            proc.stderr.read() if proc.stderr else ""
        )
        yield StandaloneSim(url=line.split()[-1].strip(), proc=proc)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def runner_env(key: str | None = KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TENSORSLAB_API_KEY"}
    if key is not None:
        env["TENSORSLAB_API_KEY"] = key
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_runner(args: Sequence[str], key: str | None = KEY) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batch_runner", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=runner_env(key),
    )


def run_runner(
    args: Sequence[str], key: str | None = KEY, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batch_runner", "run", *args],
        capture_output=True,
        text=True,
        env=runner_env(key),
        timeout=timeout,
    )


def ledger_records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def final_states(path: Path) -> dict[str, dict[str, Any]]:
    state: dict[str, dict[str, Any]] = {}
    for rec in ledger_records(path):
        state[rec["job_id"]] = rec
    return state


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def write_manifest(path: Path, n: int, *, fail: int = 0, prefix: str = "job") -> Path:
    lines = ["jobs:"]
    lines += [
        f"  - {{id: {prefix}-{i}, prompt: 'image number {i}', seed: {i}}}"
        for i in range(n)
    ]
    lines += [
        f"  - {{id: {prefix}-fail-{i}, prompt: 'doomed {i} [fail]'}}"
        for i in range(fail)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
