"""The planning commands and calls import no HTTP client, simulator, progress bar,
image library or object store (nor PyYAML for a CSV): a second of every
million-job plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

HEAVY = (
    "aiohttp",
    "tqdm",
    "PIL",
    "obstore",
    "batch_runner.simulator.app",
    "uvloop",
    "yaml",
)

_PROBE = """
import sys
{body}
heavy = [m for m in {heavy!r} if m in sys.modules]
print("heavy:" + ",".join(heavy))
"""


def _heavy_after(body: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(body=body, heavy=HEAVY)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.splitlines()[-1].removeprefix("heavy:")


def _run_dir(tmp_path: Path) -> tuple[Path, Path]:
    manifest = tmp_path / "m.csv"
    manifest.write_text("prompt\na cat\na dog\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "ledger.jsonl").write_text("")
    return manifest, out


def test_status_and_dry_run_commands_import_nothing_heavy(tmp_path: Path) -> None:
    """`status`, `failed` and `run --dry-run` leave aiohttp, tqdm, the simulator,
    Pillow and obstore unimported."""
    manifest, out = _run_dir(tmp_path)
    for argv in (
        ["status", str(manifest), "--out", str(out), "--json"],
        ["failed", "--out", str(out)],
        ["run", str(manifest), "--dry-run", "--out", str(out), "--no-progress"],
    ):
        body = (
            "from batch_runner.cli.main import main\n"
            f"code = main({argv!r})\n"
            "assert code == 0, code"
        )
        assert _heavy_after(body) == "", argv


def test_library_plan_and_status_import_nothing_heavy(tmp_path: Path) -> None:
    """`batch_runner.plan` and `batch_runner.status` stay light; `run_batch` is
    still there when asked for."""
    manifest, out = _run_dir(tmp_path)
    body = (
        "import batch_runner\n"
        f"p = batch_runner.plan({str(manifest)!r}, out={str(out)!r})\n"
        "assert p.to_submit == 2, p\n"
        f"s = batch_runner.status({str(out)!r}, {str(manifest)!r})\n"
        "assert s.pending == 2, s"
    )
    assert _heavy_after(body) == ""
    body = "import batch_runner\nprint(batch_runner.run_batch_sync.__name__)"
    assert "aiohttp" in _heavy_after(body)


def test_lazy_names_are_the_same_objects() -> None:
    """Every name in `__all__` resolves, to the object its module defines."""
    import batch_runner
    from batch_runner.engine import run, survey
    from batch_runner.engine.runner import StopReason

    for name in batch_runner.__all__:
        assert getattr(batch_runner, name) is not None, name
    assert batch_runner.plan is survey.plan is run.plan
    assert batch_runner.StopReason is StopReason
    assert set(batch_runner.__all__) <= set(dir(batch_runner))
