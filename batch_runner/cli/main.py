"""Command line: parse arguments, wire the pieces, map outcomes to exit codes.

The only module that reads argv or the environment, installs logging, or starts
the standalone simulator. Each command is a thin function over a library call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from batch_runner import __version__
from batch_runner.cli import options as t
from batch_runner.cli.heap import keep_mmap_threshold
from batch_runner.cli.logs import setup_logging
from batch_runner.engine.env import BASE_URL_ENV, DEFAULT_BASE_URL, KEY_ENV
from batch_runner.engine.sharding import Shard, choose_shard
from batch_runner.errors import (
    BatchRunnerError,
    ManifestError,
    RunLockedError,
    UsageError,
)
from batch_runner.exit_codes import ExitCode
from batch_runner.outputs.report import (
    format_status,
    run_status,
    write_failed_csv,
    write_failed_jsonl,
)
from batch_runner.store import bucket as bucket_store
from batch_runner.store.bucket import DEFAULT_SYNC_INTERVAL
from batch_runner.store.remote import RemoteUrl, Store, open_store
from batch_runner.store.rundir import RunDir
from batch_runner.store.transcode import DEFAULT_QUALITY, ImageFormat
from batch_runner.wire.urls import check_base_url

log = logging.getLogger("batch_runner")


# -- the parser -------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a UsageError (one log line, exit 2) instead
    of a usage dump and SystemExit, and `--shard -1/2` reaches its type check."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Python 3.13's rule: "-1/2" or "-.5" is a value, not an unknown option
        self._negative_number_matcher = re.compile(r"^-\.?\d")
        #: adds this parser's arguments when it is first used (see `_filled`)
        self.fill: Callable[[argparse.ArgumentParser], None] | None = None

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")

    def _filled(self) -> None:
        if self.fill is not None:
            fill, self.fill = self.fill, None
            fill(self)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._filled()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._filled()
        return super().format_help()


def _simulator_arguments(parser: argparse.ArgumentParser) -> None:
    from batch_runner.simulator import app as simulator

    simulator.add_arguments(parser)


def _add_location(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        type=t.location,
        help="run directory (default runs/<stem>), or a bucket URL such as "
        "s3://bucket/prefix",
    )
    p.add_argument("--ledger", type=Path, help="ledger (default DIR/ledger.jsonl)")


def _add_sharding(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--shard",
        type=t.shard_spec,
        metavar="I/N",
        help=f"{what} only shard I of N (0-based) of the manifest",
    )
    p.add_argument(
        "--shards",
        type=t.positive_int,
        metavar="N",
        help="number of shards when the shard index comes from "
        "JOB_COMPLETION_INDEX (Kubernetes) or SLURM_ARRAY_TASK_ID (Slurm)",
    )


def _add_logging(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="log every retry")
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="stderr log lines as text or one JSON object each (default text)",
    )
    p.add_argument("--log-file", type=Path, help="also append the log to this file")


def _add_run_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    run = sub.add_parser(
        "run",
        help="run (or resume) a manifest of prompts",
        description="Run a manifest; rerunning the same command resumes it.",
    )
    run.add_argument("manifest", type=Path, help="YAML, CSV or JSONL manifest")
    _add_location(run)
    run.add_argument(
        "--state-dir",
        type=Path,
        help="with --out URL: the local working copy (ledger, lock, partial "
        "downloads); default a folder per URL under ~/.cache/zimage-batch-runner",
    )
    run.add_argument(
        "--sync-interval",
        type=t.positive_float,
        default=DEFAULT_SYNC_INTERVAL,
        help="with --out URL: seconds between uploads of new ledger records "
        f"(default {DEFAULT_SYNC_INTERVAL:g}; also at every clean stop)",
    )
    where = run.add_mutually_exclusive_group()
    where.add_argument(
        "--base-url",
        type=t.base_url,
        help=f"API base URL (default ${BASE_URL_ENV} or {DEFAULT_BASE_URL})",
    )
    where.add_argument(
        "--mock",
        action="store_true",
        help="run against the built-in Z-Image simulator (no key needed)",
    )
    add = run.add_argument
    add(
        "--concurrency",
        type=t.concurrency,
        default=8,
        help="max tasks generating at once (finished ones download in as many "
        "slots of their own), or 'auto' to find the API's limit by AIMD "
        "(default 8)",
    )
    add(
        "--max-concurrency",
        type=t.positive_int,
        default=256,
        help="with --concurrency auto: the ceiling (default 256)",
    )
    add(
        "--rate",
        type=t.positive_float,
        help="max submits per second, evenly spaced (default: no limit)",
    )
    add(
        "--retries",
        type=t.non_negative_int,
        default=5,
        help="retries per request after the first try (default 5)",
    )
    add(
        "--poll-interval",
        type=t.poll_interval,
        default=1.0,
        help="seconds between polls for a task's first minute (default 1.0)",
    )
    add(
        "--job-timeout",
        type=t.positive_float,
        default=900.0,
        help="give up on a task still queued/processing after this many seconds "
        "(default 900)",
    )
    add(
        "--request-timeout",
        type=t.positive_float,
        default=60.0,
        help="timeout of one HTTP request in seconds (default 60)",
    )
    add(
        "--grace",
        type=t.non_negative_float,
        default=10.0,
        help="on SIGINT/SIGTERM, seconds to let in-flight jobs finish (default 10)",
    )
    add(
        "--retry-failed",
        action="store_true",
        help="run jobs the ledger records as failed again",
    )
    add(
        "--rerun-changed",
        action="store_true",
        help="regenerate jobs whose parameters changed since their last run "
        "(without it such a run refuses to start)",
    )
    add(
        "--no-download",
        dest="download",
        action="store_false",
        help="record image URLs without downloading them (jobs become "
        "'generated'; a later run without this flag downloads them)",
    )
    add(
        "--max-image-bytes",
        type=t.positive_int,
        # None: the library's default (wire.client, which imports aiohttp)
        default=None,
        help="refuse images larger than this (default 50 MiB)",
    )
    add(
        "--image-format",
        choices=[f.value for f in ImageFormat],
        default=ImageFormat.ORIGINAL.value,
        help="store images as served (original, the default) or re-encoded as "
        "png, jpeg or webp (needs the images extra: Pillow)",
    )
    add(
        "--quality",
        type=t.whole_at_least(1, 100),
        metavar="Q",
        help=f"jpeg/webp quality 1-100 (default {DEFAULT_QUALITY})",
    )
    add(
        "--max-side",
        type=t.positive_int,
        metavar="N",
        help="downscale so the longer side is at most N pixels, keeping the "
        "aspect ratio; never upscales (needs the images extra)",
    )
    add(
        "--fsync",
        action="store_true",
        help="fsync the ledger after each write (survives power loss)",
    )
    add(
        "--max-jobs",
        type=t.non_negative_int,
        help="submit at most N new jobs in this run; the rest stays pending (exit 0)",
    )
    add(
        "--max-failures",
        type=t.positive_int,
        help="stop submitting after N permanent failures in a row (exit 1)",
    )
    _add_sharding(run, "run")
    add(
        "--dry-run",
        action="store_true",
        help="validate, compare with the ledger and print the plan; send nothing",
    )
    add(
        "--credits-per-image",
        type=t.non_negative_float,
        help="with --dry-run: price of one image, to print the credits it would cost",
    )
    add(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on if stderr is a terminal)",
    )
    add(
        "--event-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop: uvloop when installed (auto), or force one",
    )
    _add_logging(run)
    add(
        "--mock-fault-rate",
        type=t.fraction,
        default=0.0,
        help="with --mock: fraction of requests the simulator faults",
    )
    add(
        "--mock-generation-time",
        type=t.non_negative_float,
        default=0.5,
        help="with --mock: seconds the simulator takes per image (default 0.5)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="batch-runner",
        description="Resumable batch text-to-image generation through the "
        "TensorsLab Z-Image API.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_parser(sub)

    status = sub.add_parser(
        "status",
        help="where a run stands",
        description="Totals by state, failure reasons, suspected duplicate "
        "submits and images on disk, read from the ledger.",
    )
    status.add_argument(
        "manifest",
        type=Path,
        nargs="?",
        help="the run's manifest, to count pending jobs",
    )
    _add_location(status)
    _add_sharding(status, "count")
    status.add_argument("--json", action="store_true", help="print one JSON object")

    failed = sub.add_parser(
        "failed",
        help="print the failed jobs as a CSV (or JSONL) manifest",
        description="Write the failed jobs as a manifest on stdout (same ids and "
        "parameters) and their failure reasons on stderr. CSV turns meta values "
        "into text; --format jsonl keeps every value and type, so the retry's run "
        "merges with the original.",
    )
    failed.add_argument(
        "--format",
        choices=("csv", "jsonl"),
        default="csv",
        help="manifest format on stdout (default csv)",
    )
    failed.add_argument(
        "manifest",
        type=Path,
        nargs="?",
        help="the run's manifest (only names the default --out)",
    )
    _add_location(failed)
    _add_sharding(failed, "list")

    gallery = sub.add_parser(
        "gallery",
        help="write DIR/index.html, a contact sheet of the run",
        description="Write a self-contained static HTML contact sheet of a run "
        "directory that opens from disk.",
    )
    gallery.add_argument(
        "run_dir",
        type=t.location,
        nargs="?",
        metavar="DIR",
        help="the run directory (default: the directory of --ledger)",
    )
    gallery.add_argument(
        "--ledger", type=Path, help="ledger (default DIR/ledger.jsonl)"
    )

    snap = sub.add_parser(
        "snapshot",
        help="write DIR/.resume-state so plans and status read little of the ledger",
        description="Write (or bring up to date) the run's resume snapshot. A run "
        "does it itself at its end unless the part of the ledger it wrote is "
        "large (over 16 MB): folding it would make the run's memory grow with "
        "its jobs. Takes the run's lock: exits 4 while a run holds it.",
    )
    snap.add_argument("run_dir", type=Path, metavar="DIR", help="the run directory")
    snap.add_argument("--ledger", type=Path, help="ledger (default DIR/ledger.jsonl)")

    export = sub.add_parser(
        "export",
        help="export a run as WebDataset tar shards",
        description="Export the succeeded images of a run directory as a dataset.",
    )
    export.add_argument("run_dir", type=t.location, metavar="DIR")
    export.add_argument("out", type=t.local_dir, metavar="OUT")
    export.add_argument("--ledger", type=Path, help="ledger (default DIR/ledger.jsonl)")
    export.add_argument(
        "--format",
        choices=("webdataset",),
        default="webdataset",
        help="output format (default webdataset)",
    )
    export.add_argument(
        "--shard-size",
        type=t.positive_int,
        default=1000,
        help="samples per tar shard (default 1000)",
    )

    merge = sub.add_parser(
        "merge",
        help="combine shard run directories into one",
        description="Merge run directories (ledgers and images) into OUT_DIR, "
        "refusing conflicting results.",
    )
    merge.add_argument("out_dir", type=t.local_dir, metavar="OUT_DIR")
    merge.add_argument("run_dirs", type=t.location, nargs="+", metavar="RUN_DIR")

    sim = sub.add_parser(
        "simulator",
        help="run the Z-Image simulator standalone",
        description="Serve a local Z-Image simulator for testing pipelines.",
    )
    # its options come from the simulator, which imports aiohttp: added only
    # when this command is parsed (or its help shown)
    assert isinstance(sim, _Parser)
    sim.fill = _simulator_arguments
    return parser


# -- commands -------------------------------------------------------------------


def _run_dir(
    manifest: Path | None, out: Path | RemoteUrl | None, shard: Shard | None
) -> Path | RemoteUrl:
    if out is not None:
        return out
    if manifest is None:
        raise UsageError(
            "give the run directory with --out DIR (or the ledger with "
            "--ledger PATH, or the run's manifest)"
        )
    # each shard gets its own directory, so shards never contend for one lock
    suffix = f"-{shard.label}" if shard is not None else ""
    return Path("runs") / f"{manifest.stem}{suffix}"


def _shard(ns: argparse.Namespace) -> Shard | None:
    """--shard, or the scheduler's environment, as `run` chooses it."""
    try:
        return choose_shard(ns.shard, ns.shards, os.environ)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _check_dir(path: Path | RemoteUrl | None, option: str) -> None:
    if isinstance(path, Path) and path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: is a file, not a directory")


def _check_file(path: Path | None, option: str) -> None:
    if path is not None and path.is_dir():
        raise UsageError(f"{option} {path}: is a directory, not a file")


def _existing_ledger(path: Path, where: str = "--out DIR") -> Path:
    if not path.is_file():
        raise UsageError(
            f"no ledger at {path}: nothing has run there yet "
            f"(give the run directory with {where} or the ledger with --ledger PATH)"
        )
    return path


def _location(ns: argparse.Namespace, shard: Shard | None) -> tuple[Path, Path]:
    """(run directory, ledger) of an existing run, from the same options as `run`;
    with only --ledger, the run directory is the ledger's. A bucket `--out` is
    handled by the caller (see `_bucket_store`)."""
    manifest = getattr(ns, "manifest", None)
    if ns.out is None and manifest is not None and Path(manifest).is_dir():
        # `status runs/x` is how a newcomer asks about a run: a directory given
        # where the manifest goes is the run directory, not a manifest
        ns.out, ns.manifest = Path(manifest), None
    _check_dir(ns.out, "--out")
    _check_file(ns.ledger, "--ledger")
    if ns.out is None and ns.manifest is None and ns.ledger is not None:
        run_dir: Path | RemoteUrl = ns.ledger.parent
    else:
        run_dir = _run_dir(ns.manifest, ns.out, shard)
    assert isinstance(run_dir, Path)
    return run_dir, _existing_ledger(RunDir(run_dir, ledger=ns.ledger).ledger)


def _bucket_store(url: RemoteUrl, ledger: Path | None = None) -> Store:
    if ledger is not None:
        raise UsageError(
            f"--ledger cannot be used with --out {url}: the ledger is in the bucket"
        )
    return open_store(url)


async def _fetch_for_status(store: Store, dest: Path) -> set[str]:
    await bucket_store.fetch_ledger(store, dest)
    return await bucket_store.image_keys(store)


def _base_url(flag: str | None) -> str:
    """--base-url (checked by its type), else $TENSORSLAB_BASE_URL, else the API."""
    if flag:
        return flag
    from_env = os.environ.get(BASE_URL_ENV, "").strip()
    if not from_env:
        return DEFAULT_BASE_URL
    try:
        check_base_url(from_env)
    except ValueError as exc:
        raise UsageError(f"{BASE_URL_ENV}: {exc}") from None
    return from_env


def cmd_run(ns: argparse.Namespace) -> int:
    use_tqdm = sys.stderr.isatty() if ns.progress is None else ns.progress
    shard = _shard(ns)
    api_key = os.environ.get(KEY_ENV, "").strip()
    base_url = None
    if not ns.mock:
        base_url = _base_url(ns.base_url)
        if not api_key and not ns.dry_run:
            log.error(
                "no API key: set %s (or use --mock to run on the simulator)", KEY_ENV
            )
            return ExitCode.USAGE
    if shard is not None:
        log.info("running %s (from %s)", shard.label, shard.source)
    out_dir = _run_dir(ns.manifest, ns.out, shard)
    _check_dir(out_dir, "--out")
    _check_file(ns.ledger, "--ledger")
    if ns.state_dir is not None and not isinstance(out_dir, RemoteUrl):
        raise UsageError("--state-dir goes with --out URL (an object store)")
    _check_dir(ns.state_dir, "--state-dir")
    from batch_runner.cli.run_command import run_command

    return run_command(
        ns,
        out_dir=out_dir.url if isinstance(out_dir, RemoteUrl) else out_dir,
        shard=shard,
        api_key=api_key,
        base_url=base_url,
        progress=use_tqdm and not ns.dry_run,
    )


def cmd_status(ns: argparse.Namespace) -> int:
    keep_mmap_threshold()  # a large ledger's tables go back to the OS when freed
    shard = _shard(ns)
    keep = shard.keeps if shard is not None else None
    if isinstance(ns.out, RemoteUrl):
        store = _bucket_store(ns.out, ns.ledger)
        with tempfile.TemporaryDirectory() as tmp:
            keys = asyncio.run(_fetch_for_status(store, Path(tmp)))
            status = run_status(
                Path(tmp) / "ledger.jsonl", Path(tmp), ns.manifest, keep
            )
        status.images_on_disk = len(keys)
        where = ns.out.url
    else:
        run_dir, ledger = _location(ns, shard)
        status = run_status(ledger, run_dir, ns.manifest, keep=keep)
        where = str(run_dir)
    if ns.json:
        print(json.dumps(status.to_json(), ensure_ascii=False))
    else:
        print(format_status(status, where))
    return ExitCode.OK


def cmd_failed(ns: argparse.Namespace) -> int:
    shard = _shard(ns)
    write = write_failed_jsonl if ns.format == "jsonl" else write_failed_csv
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(ns.out, RemoteUrl):
            store = _bucket_store(ns.out, ns.ledger)
            ledger = asyncio.run(bucket_store.fetch_ledger(store, Path(tmp)))
        else:
            _, ledger = _location(ns, shard)
        count = write(ledger, sys.stdout, sys.stderr)
    log.info("%d failed job(s)", count)
    return ExitCode.OK


async def _bucket_gallery(url: RemoteUrl, tmp: Path) -> str:
    from batch_runner.outputs.gallery import write_gallery

    store = open_store(url)
    await bucket_store.fetch_ledger(store, tmp)
    keys = await bucket_store.image_keys(store)
    name = url.prefix.rsplit("/", 1)[-1] or url.bucket
    page = await asyncio.to_thread(
        write_gallery, tmp, title=f"{name} — gallery", exists=keys.__contains__
    )
    # beside images/, so its relative links work wherever the bucket is served
    await store.put_file(page.name, page)
    return url.child(page.name)


def cmd_gallery(ns: argparse.Namespace) -> int:
    from batch_runner.outputs.gallery import write_gallery

    if isinstance(ns.run_dir, RemoteUrl):
        _bucket_store(ns.run_dir, ns.ledger)
        with tempfile.TemporaryDirectory() as tmp:
            print(asyncio.run(_bucket_gallery(ns.run_dir, Path(tmp))))
        return ExitCode.OK
    _check_file(ns.ledger, "--ledger")
    if ns.run_dir is None and ns.ledger is None:
        raise UsageError("give the run directory DIR (or the ledger with --ledger)")
    run_dir = ns.run_dir if ns.run_dir is not None else ns.ledger.parent
    _check_dir(run_dir, "DIR")
    ledger = _existing_ledger(RunDir(run_dir, ledger=ns.ledger).ledger, "DIR")
    path = write_gallery(run_dir, ledger)
    print(path)
    return ExitCode.OK


def _fetch_run(url: RemoteUrl, dest: Path) -> None:
    """Ledger and images of a bucket run into `dest` (a temporary folder)."""

    async def fetch() -> int:
        store = open_store(url)
        await bucket_store.fetch_ledger(store, dest)
        return await bucket_store.fetch_images(
            store, dest, await bucket_store.image_keys(store)
        )

    count = asyncio.run(fetch())
    log.info("%s: fetched the ledger and %d image(s)", url, count)


def cmd_export(ns: argparse.Namespace) -> int:
    from batch_runner.outputs.dataset import export_webdataset

    _check_dir(ns.out, "OUT")
    with contextlib.ExitStack() as scratch:
        if isinstance(ns.run_dir, RemoteUrl):
            _bucket_store(ns.run_dir, ns.ledger)
            # the tar shards need every image's bytes: fetched beside the
            # output (same disk), removed once the shards are written
            ns.out.mkdir(parents=True, exist_ok=True)
            run_dir = Path(
                scratch.enter_context(
                    tempfile.TemporaryDirectory(dir=ns.out, prefix=".fetch-")
                )
            )
            _fetch_run(ns.run_dir, run_dir)
            ledger = run_dir / "ledger.jsonl"
        else:
            run_dir = ns.run_dir
            _check_dir(run_dir, "DIR")
            _check_file(ns.ledger, "--ledger")
            ledger = _existing_ledger(RunDir(run_dir, ledger=ns.ledger).ledger, "DIR")
        shards = export_webdataset(run_dir, ns.out, ns.shard_size, ledger)
    for shard in shards:
        print(shard)
    log.info("%d shard(s) written to %s", len(shards), ns.out)
    return ExitCode.OK


def cmd_merge(ns: argparse.Namespace) -> int:
    from batch_runner.outputs.merge import merge_runs

    out_dir: Path = ns.out_dir
    with contextlib.ExitStack() as scratch:
        run_dirs: list[Path] = []
        fetched: Path | None = None
        for run_dir in ns.run_dirs:
            if isinstance(run_dir, RemoteUrl):
                if fetched is None:
                    # inside OUT_DIR: the same disk, so images are hardlinked
                    # into place rather than copied a second time
                    out_dir.mkdir(parents=True, exist_ok=True)
                    fetched = Path(
                        scratch.enter_context(
                            tempfile.TemporaryDirectory(dir=out_dir, prefix=".fetch-")
                        )
                    )
                local = fetched / str(len(run_dirs))
                _fetch_run(run_dir, local)
                run_dirs.append(local)
            else:
                run_dirs.append(run_dir)
        report = merge_runs(out_dir, run_dirs)
    log.info(
        "merged %d run director%s into %s: %d jobs (%d succeeded, %d failed, "
        "%d submitted), %d image(s) copied",
        len(report.inputs),
        "y" if len(report.inputs) == 1 else "ies",
        ns.out_dir,
        report.jobs,
        report.succeeded,
        report.failed,
        report.submitted,
        report.images_copied,
    )
    return ExitCode.OK


def cmd_simulator(ns: argparse.Namespace) -> int:
    try:
        from batch_runner.simulator import app as simulator

        config = simulator.config_from_args(ns)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(simulator.serve_forever(config, ns.host, ns.port))
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UsageError(
            f"--port {ns.port}: cannot listen on {ns.host}:{ns.port}: {reason}"
        ) from None
    return ExitCode.OK


def cmd_snapshot(ns: argparse.Namespace) -> int:
    from batch_runner.store.snapshot import snapshot_path, snapshot_run

    _check_dir(ns.run_dir, "DIR")
    _check_file(ns.ledger, "--ledger")
    ledger = _existing_ledger(RunDir(ns.run_dir, ledger=ns.ledger).ledger, "DIR")
    try:
        wrote = snapshot_run(ns.run_dir, ledger=ledger)
    except RunLockedError as exc:
        log.error("%s", exc)
        return ExitCode.LOCKED
    print(f"{snapshot_path(ledger)}{'' if wrote else ': already up to date'}")
    return ExitCode.OK


COMMANDS = {
    "run": cmd_run,
    "snapshot": cmd_snapshot,
    "status": cmd_status,
    "failed": cmd_failed,
    "gallery": cmd_gallery,
    "export": cmd_export,
    "merge": cmd_merge,
    "simulator": cmd_simulator,
}


def _log_format(argv: Sequence[str]) -> str:
    """The --log-format asked for, read leniently: argv may not parse at all."""
    for i, arg in enumerate(argv):
        if arg == "--log-format=json" or (
            arg == "--log-format" and argv[i + 1 : i + 2] == ["json"]
        ):
            return "json"
    return "text"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    secret = [os.environ.get(KEY_ENV, "")]
    try:
        ns = build_parser().parse_args(args)
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    except UsageError as exc:
        setup_logging(fmt=_log_format(args), secrets=secret)
        log.error("%s", exc)
        return ExitCode.USAGE
    use_tqdm = ns.command == "run" and (
        sys.stderr.isatty() if ns.progress is None else ns.progress
    )
    fmt = getattr(ns, "log_format", "text")
    log_file = getattr(ns, "log_file", None)
    console = None
    if use_tqdm:
        from batch_runner.engine.progress import TqdmLoggingHandler

        console = TqdmLoggingHandler()
    try:
        setup_logging(
            verbose=getattr(ns, "verbose", False),
            fmt=fmt,
            log_file=log_file,
            console=console,
            secrets=secret,
        )
    except OSError as exc:
        setup_logging(fmt=fmt, console=console, secrets=secret)
        log.error("--log-file %s: cannot append to it: %s", log_file, _reason(exc))
        return ExitCode.USAGE
    try:
        return int(COMMANDS[ns.command](ns))
    except KeyboardInterrupt:
        # Ctrl-C outside the run loop (validating a big manifest, writing the
        # metadata): nothing half-done to clean up, so no traceback either
        log.warning("interrupted")
        return ExitCode.SIGINT
    except (ManifestError, UsageError) as exc:
        log.error("%s", exc)
        return ExitCode.USAGE
    except (BatchRunnerError, ValueError) as exc:
        log.error("%s", exc)
        return ExitCode.FAILED
    except OSError as exc:
        # the disk filled up, a file vanished, permission was refused
        where = f"{exc.filename}: " if exc.filename else ""
        log.error("%s%s", where, _reason(exc))
        return ExitCode.FAILED
    except Exception as exc:
        # a bug: still one line (one JSON object), and the traceback with -v
        log.error(
            "internal error: %s: %s (rerun with -v for the traceback)",
            type(exc).__name__,
            exc,
            exc_info=getattr(ns, "verbose", False),
        )
        return ExitCode.FAILED


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
