"""The README documents every command and flag, and its examples are valid."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from batch_runner.cli.main import build_parser
from batch_runner.manifest.reader import validate_manifest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    return dict(action.choices)


def test_every_subcommand_and_option_is_in_the_readme() -> None:
    """Each subcommand and each of its long options appears in the README."""
    for name, sub in subcommands().items():
        assert f"batch-runner {name}" in README, name
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in README, f"{name} {option}"


def test_every_option_has_help_text() -> None:
    """No option is undocumented in --help."""
    for name, sub in subcommands().items():
        for action in sub._actions:
            if action.option_strings:
                assert action.help, f"{name} {action.option_strings}"


def test_shipped_manifests_are_valid() -> None:
    """sample_jobs.yaml and the examples in jobs/ parse (except the broken one)."""
    assert validate_manifest(ROOT / "sample_jobs.yaml").jobs == 12
    for path in sorted((ROOT / "jobs").glob("*")):
        if path.suffix in (".yaml", ".csv", ".jsonl") and path.name not in (
            "invalid.yaml",
            "k8s-indexed-job.yaml",
        ):
            assert validate_manifest(path).jobs > 0, path


def test_readme_setup_commands_are_the_ci_commands() -> None:
    """The README's two set-up commands are what .ci/run does."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/pip install -e '.[test]'" in README
    assert "pip install --quiet -e '.[test]'" in ci
    test_cmd = re.search(r"^\$ (\.venv/bin/python -m pytest)$", README, re.M)
    assert test_cmd and test_cmd.group(1) in ci
