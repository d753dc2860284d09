"""Locking: one writer per run directory *and* per ledger, across processes."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from batch_runner.errors import RunLockedError
from batch_runner.store.rundir import RunDir

from .procs import (
    ledger_records,
    run_runner,
    standalone_simulator,
    start_runner,
    wait_for,
    write_manifest,
)

FAST = ["--no-progress", "--poll-interval", "0.02"]


@pytest.mark.parametrize("first_uses_flag", [False, True])
def test_a_second_run_on_the_same_ledger_exits_4(
    tmp_path: Path, first_uses_flag: bool
) -> None:
    """`--out A` and `--out B --ledger A/ledger.jsonl` cannot both run: whichever
    comes second exits 4 at once and creates no task (issue 11, point 1)."""
    manifest = write_manifest(tmp_path / "m.yaml", 6)
    a, b = tmp_path / "A", tmp_path / "B"
    ledger = a / "ledger.jsonl"
    own = ["--out", str(a)]
    borrowed = ["--out", str(b), "--ledger", str(ledger)]
    first, second = (borrowed, own) if first_uses_flag else (own, borrowed)
    # tasks take long enough that the first run is still polling when the
    # second one starts
    with standalone_simulator("--generation-time", "60") as sim:
        proc = start_runner(
            [str(manifest), "--base-url", sim.url, *first, *FAST, "--grace", "0"]
        )
        try:
            wait_for(
                lambda: (
                    ledger.exists()
                    and sum(r["status"] == "submitted" for r in ledger_records(ledger))
                    == 6
                )
            )
            before = sim.stats()
            res = run_runner([str(manifest), "--base-url", sim.url, *second, *FAST])
            after = sim.stats()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    assert res.returncode == 4, res.stderr
    assert "in use by another run" in res.stderr
    assert "Traceback" not in res.stderr
    assert after["tasks_created"] == before["tasks_created"] == 6


def test_ledger_lock_names_the_ledger_and_its_holder(tmp_path: Path) -> None:
    """Holding a ledger's lock refuses another RunDir on that ledger, by any path."""
    ledger = tmp_path / "A" / "ledger.jsonl"
    (tmp_path / "link").symlink_to(tmp_path / "A", target_is_directory=True)
    with RunDir(tmp_path / "A").lock():
        borrowed = RunDir(tmp_path / "B", ledger=tmp_path / "link" / "ledger.jsonl")
        with pytest.raises(RunLockedError, match=r"ledger .* in use .*pid"):
            borrowed.lock()
        # the refused attempt kept no lock on B
        with RunDir(tmp_path / "B").lock():
            pass
    assert not ledger.exists()
    with RunDir(tmp_path / "B", ledger=ledger).lock():
        pass


def test_ledgers_with_other_names_lock_one_by_one(tmp_path: Path) -> None:
    """Two ledgers side by side in one folder do not block each other; one
    ledger used twice does."""
    shared = tmp_path / "ledgers"
    with RunDir(tmp_path / "A", ledger=shared / "a.jsonl").lock():
        with RunDir(tmp_path / "B", ledger=shared / "b.jsonl").lock():
            pass
        with pytest.raises(RunLockedError, match=r"a\.jsonl is in use"):
            RunDir(tmp_path / "C", ledger=shared / "a.jsonl").lock()
    assert sorted(p.name for p in shared.iterdir()) == [
        ".a.jsonl.lock",
        ".b.jsonl.lock",
    ]
