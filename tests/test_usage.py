"""Usage errors on every command: exit 2 and one line naming the option, never a
traceback (also in JSON logs); bad --base-url; --ledger and env sharding accepted
by every command that reads a run."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch_runner.cli.main import main

from .procs import KEY, final_states, write_manifest

FAST = ["--no-progress", "--poll-interval", "0.02", "--mock-generation-time", "0.01"]


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI; assert exit 2 and exactly one stderr line; return that line."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "m.yaml", 3)


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a directory\n")
    return path


@pytest.fixture
def finished(tmp_path: Path, manifest: Path) -> Path:
    out = tmp_path / "done"
    assert main(["run", str(manifest), "--mock", "--out", str(out), *FAST]) == 0
    return out


# -- defect: a bad --shard exits 1 on status but 2 on run --------------------------


@pytest.mark.parametrize("command", ["run", "status", "failed"])
@pytest.mark.parametrize("spec", ["5/2", "-1/2", "x", "1/0"])
def test_bad_shard_is_a_usage_error_on_every_command(
    command: str,
    spec: str,
    manifest: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--shard` out of range or malformed exits 2 naming the option."""
    extra = ["--mock"] if command == "run" else []
    line = usage_error(
        capsys,
        [command, str(manifest), "--out", str(tmp_path / "o"), *extra, "--shard", spec],
    )
    assert "--shard" in line


# -- option values: finite, in range, named in plain words --------------------------


RUN_FLOATS = [
    "--rate",
    "--poll-interval",
    "--job-timeout",
    "--request-timeout",
    "--grace",
    "--credits-per-image",
    "--mock-fault-rate",
    "--mock-generation-time",
]


@pytest.mark.parametrize("option", RUN_FLOATS)
@pytest.mark.parametrize("value", ["inf", "nan", "1e999", "abc"])
def test_run_float_options_must_be_finite_numbers(
    option: str,
    value: str,
    manifest: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """inf, nan and words are refused (an infinite poll interval never ends)."""
    line = usage_error(
        capsys,
        ["run", str(manifest), "--mock", "--out", str(tmp_path / "o"), option, value],
    )
    assert option in line and value in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["run", "M", "--concurrency", "abc"], "--concurrency"),
        (["run", "M", "--concurrency", "0"], "--concurrency"),
        (["run", "M", "--max-concurrency", "1.5"], "--max-concurrency"),
        (["run", "M", "--retries", "-1"], "--retries"),
        (["run", "M", "--max-jobs", "many"], "--max-jobs"),
        (["run", "M", "--max-failures", "0"], "--max-failures"),
        (["run", "M", "--max-image-bytes", "0"], "--max-image-bytes"),
        (["run", "M", "--shards", "0"], "--shards"),
        (["export", "D", "O", "--shard-size", "0"], "--shard-size"),
        (["simulator", "--port", "70000"], "--port"),
        (["simulator", "--generation-time", "inf"], "--generation-time"),
        (["simulator", "--latency", "nan"], "--latency"),
        (["simulator", "--fault-rate", "2"], "--fault-rate"),
        (["simulator", "--images-per-task", "-1"], "--images-per-task"),
        (["simulator", "--task-ttl", "inf"], "--task-ttl"),
        (["simulator", "--max-rps", "-3"], "--max-rps"),
    ],
)
def test_bad_numbers_name_the_option_in_plain_words(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad number names its option, with no Python type names in the message."""
    line = usage_error(capsys, argv)
    assert option in line
    assert "invalid" not in line and "_" not in line.split(option, 1)[1], line


def test_argument_errors_follow_the_log_format(
    manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --log-format json even an argument error is one JSON object."""
    line = usage_error(
        capsys,
        ["run", str(manifest), "--concurrency", "abc", "--log-format", "json"],
    )
    entry = json.loads(line)
    assert entry["level"] == "error" and "--concurrency" in entry["msg"]


# -- bad paths: exit 2, one line ---------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_bad_paths_exit_2_with_one_line(
    manifest: Path,
    a_file: Path,
    finished: Path,
    tmp_path: Path,
    busy_port: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Files where directories belong, directories where files belong, missing
    runs and a busy port: exit 2, one line naming what is wrong."""
    missing = tmp_path / "no-such-run"
    cases: list[tuple[list[str], str]] = [
        (["run", str(manifest), "--mock", "--out", str(a_file)], "--out"),
        (["run", str(manifest), "--mock", "--ledger", str(tmp_path)], "--ledger"),
        (["run", str(manifest), "--mock", "--log-file", str(tmp_path)], "--log-file"),
        (["status"], "--out"),
        (["status", "--out", str(missing)], "no ledger"),
        (["status", "--out", str(a_file)], "--out"),
        (["failed", "--out", str(missing)], "no ledger"),
        (["failed"], "--out"),
        (["gallery", str(missing)], "no ledger"),
        (["export", str(missing), str(tmp_path / "wds")], "no ledger"),
        (["export", str(finished), str(a_file)], "OUT"),
        (["simulator", "--port", str(busy_port)], str(busy_port)),
    ]
    for argv, needle in cases:
        line = usage_error(capsys, argv)
        assert needle in line, (argv, line)
    assert not (tmp_path / "wds").exists()


def test_json_log_stays_one_object_per_line_on_bad_paths(
    manifest: Path, a_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --out FILE --log-format json` prints one JSON error object, no traceback."""
    line = usage_error(
        capsys,
        ["run", str(manifest), "--mock", "--out", str(a_file), "--log-format", "json"],
    )
    assert json.loads(line)["level"] == "error"


# -- --base-url ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://api.example/",
        "127.0.0.1:1",
        "localhost:8080",
        "http://",
        "https://api.example/?x=1",
        "https://user:pw@api.example",
        "https://api.example:99999",
    ],
)
def test_base_url_must_be_http_or_https(
    url: str,
    manifest: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A base URL that is not plain http(s) is refused before anything is sent,
    from the flag and from TENSORSLAB_BASE_URL."""
    monkeypatch.setenv("TENSORSLAB_API_KEY", KEY)
    out = tmp_path / "o"
    line = usage_error(
        capsys, ["run", str(manifest), "--base-url", url, "--out", str(out), *FAST]
    )
    assert "--base-url" in line
    monkeypatch.setenv("TENSORSLAB_BASE_URL", url)
    line = usage_error(capsys, ["run", str(manifest), "--out", str(out), *FAST])
    assert "TENSORSLAB_BASE_URL" in line
    assert not out.exists()


# -- --ledger everywhere -------------------------------------------------------------


def test_every_run_reading_command_accepts_ledger(
    tmp_path: Path, manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """status, failed, gallery and export accept --ledger like run does."""
    out = tmp_path / "run"
    ledger = tmp_path / "elsewhere" / "book.jsonl"
    args = ["run", str(manifest), "--mock", "--out", str(out), "--ledger", str(ledger)]
    assert main([*args, *FAST]) == 0
    capsys.readouterr()
    assert main(["status", "--ledger", str(ledger), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["succeeded"] == 3
    assert main(["status", "--out", str(out), "--ledger", str(ledger), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images_on_disk"] == report["images_expected"] == 3
    assert main(["failed", "--ledger", str(ledger)]) == 0
    assert capsys.readouterr().out.strip() != ""  # the CSV header
    assert main(["gallery", str(out), "--ledger", str(ledger)]) == 0
    assert (out / "index.html").read_text().count("<img") == 3
    wds = tmp_path / "wds"
    assert main(["export", str(out), str(wds), "--ledger", str(ledger)]) == 0
    assert len(list(wds.glob("*.tar"))) == 1


# -- sharding from the environment for status and failed -------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {"JOB_COMPLETION_INDEX": "1"},
        {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"},
        {
            "SLURM_ARRAY_TASK_ID": "4",
            "SLURM_ARRAY_TASK_MIN": "0",
            "SLURM_ARRAY_TASK_MAX": "4",
            "SLURM_ARRAY_TASK_STEP": "4",
            "SLURM_ARRAY_TASK_COUNT": "2",
        },
    ],
)
def test_status_and_failed_take_the_shard_from_the_environment(
    env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under a scheduler, status and failed read the shard's own run directory and
    count only the shard's jobs, as run does."""
    monkeypatch.chdir(tmp_path)
    manifest = write_manifest(tmp_path / "m.yaml", 10, fail=2)
    shards = ["--shards", "2"] if "JOB_COMPLETION_INDEX" in env else []
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    main(["run", str(manifest), "--mock", *shards, *FAST])
    run_dir = tmp_path / "runs" / "m-shard-1-of-2"
    jobs = final_states(run_dir / "ledger.jsonl")
    failed = sorted(j for j, r in jobs.items() if r["status"] == "failed")
    capsys.readouterr()
    assert main(["status", str(manifest), *shards, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == len(jobs) and report["pending"] == 0
    assert main(["failed", str(manifest), *shards]) == 0
    csv_lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split(",")[0] for line in csv_lines[1:]) == failed


@pytest.mark.parametrize("url", ["ftp://api.example", "127.0.0.1:1"])
def test_library_refuses_a_bad_base_url_before_sending(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_batch_sync raises UsageError naming base_url (or the variable) for a
    base URL that is not http(s), and writes no ledger."""
    from batch_runner import UsageError, run_batch_sync

    out = tmp_path / "o"
    with pytest.raises(UsageError, match="base_url"):
        run_batch_sync(["a prompt"], out=out, api_key=KEY, base_url=url)
    monkeypatch.setenv("TENSORSLAB_BASE_URL", url)
    with pytest.raises(UsageError, match="TENSORSLAB_BASE_URL"):
        run_batch_sync(["a prompt"], out=out, api_key=KEY)
    assert not (out / "ledger.jsonl").exists()


def test_status_and_failed_take_a_run_directory_as_their_argument(
    finished: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status runs/x` (a directory where the manifest goes) reports that run."""
    capsys.readouterr()
    assert main(["status", str(finished), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["succeeded"] == 3
    assert main(["failed", str(finished)]) == 0
    assert capsys.readouterr().out.startswith("id,")
