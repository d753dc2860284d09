"""--image-format/--quality/--max-side end to end: the simulator's PNGs stored as
each format, decoded back with Pillow, checked against the ledger and metadata."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from batch_runner import MissingExtraError, UsageError, records, run_batch_sync
from batch_runner.cli.main import main
from batch_runner.engine.plan import Action, WorkItem, decide
from batch_runner.engine.runner import Runner
from batch_runner.engine.transcoder import WORK_DIR_NAME, Transcoder
from batch_runner.models import JobSpec
from batch_runner.outputs.dataset import export_webdataset, write_metadata
from batch_runner.store.ledger import LedgerWriter, read_ledger
from batch_runner.store.transcode import ImageFormat, ImageOptions
from batch_runner.wire.api import Api
from batch_runner.wire.client import ZImageClient
from batch_runner.wire.fake import FakeAnswer, FakeApi, FakeRequest
from batch_runner.wire.protocol import PollResult, SubmitResult

from .conftest import KEY, SimFactory
from .procs import final_states, ledger_records, runner_env, standalone_simulator
from .test_runner import FAST

ROOT = Path(__file__).resolve().parent.parent
CLI_FAST = ["--no-progress", "--poll-interval", "0.02"]

#: the simulator serves 16:9 jobs at 1344x768 x image_scale: 672x384 at 0.5
WIDE = JobSpec(job_id="wide", prompt="a wide harbour", resolution="16:9", seed=1)
TALL = JobSpec(job_id="tall", prompt="a tall tower", resolution="9:16", seed=2)
SMALL = JobSpec(job_id="small", prompt="a small stamp", resolution="64*48", seed=3)


async def run_with(
    url: str,
    out: Path,
    options: ImageOptions,
    jobs: list[JobSpec | WorkItem],
    api: Api | None = None,
) -> None:
    """Run `jobs` through a Runner with a Transcoder, against the simulator at
    `url` or against `api`."""
    async with contextlib.AsyncExitStack() as stack:
        if api is None:
            session = await stack.enter_async_context(aiohttp.ClientSession())
            api = ZImageClient(session, url, KEY, request_timeout=5)
        ledger = await stack.enter_async_context(LedgerWriter(out / "ledger.jsonl"))
        transcoder = await stack.enter_async_context(
            Transcoder(options, out / "images")
        )
        runner = Runner(api, ledger, FAST, out_dir=out, transcoder=transcoder)
        await runner.run([j if isinstance(j, WorkItem) else WorkItem(j) for j in jobs])


def check_stored(out: Path, record: dict[str, object], pillow: str, ext: str) -> None:
    """The ledger's facts are the stored file's: name, bytes, sha256, size."""
    images = record["images"]
    assert isinstance(images, list) and len(images) == 1
    facts = images[0]
    path = out / facts["file"]
    assert path.suffix == ext and record["files"] == [facts["file"]]
    data = path.read_bytes()
    assert facts["bytes"] == len(data)
    assert facts["sha256"] == hashlib.sha256(data).hexdigest()
    image = Image.open(io.BytesIO(data))
    assert image.format == pillow
    assert image.size == (facts["width"], facts["height"])


@pytest.mark.parametrize(
    ("fmt", "pillow", "ext"),
    [
        (ImageFormat.PNG, "PNG", ".png"),
        (ImageFormat.JPEG, "JPEG", ".jpg"),
        (ImageFormat.WEBP, "WEBP", ".webp"),
        (ImageFormat.ORIGINAL, "PNG", ".png"),
    ],
)
async def test_each_format_is_stored_downscaled_and_described(
    sim: SimFactory, tmp_path: Path, fmt: ImageFormat, pillow: str, ext: str
) -> None:
    """Every image is stored in the asked format at --max-side 100 (aspect kept,
    the small one never upscaled); ledger facts and metadata.jsonl describe the
    stored files, the record keeps the source URL and the served image's facts."""
    server = await sim(image_scale=0.5)
    await run_with(
        server.url, tmp_path, ImageOptions(fmt, max_side=100), [WIDE, TALL, SMALL]
    )
    states = final_states(tmp_path / "ledger.jsonl")
    assert {r["status"] for r in states.values()} == {"succeeded"}
    sizes = {}
    for job_id, record in states.items():
        check_stored(tmp_path, record, pillow, ext)
        facts = record["images"][0]
        sizes[job_id] = (facts["width"], facts["height"])
        assert record["url"][0].startswith(server.url) and record["url"][0].endswith(
            ".png"
        )
        source = facts.get("source")
        if job_id == "small" and fmt in (ImageFormat.PNG, ImageFormat.ORIGINAL):
            assert source is None  # already a small PNG: stored as served
        else:
            assert source is not None and source["format"] == "png"
            assert source["sha256"] != facts["sha256"]
    # 672x384 -> 100x57, 384x672 -> 57x100, 32x24 stays (64*48 x 0.5)
    assert sizes == {"wide": (100, 57), "tall": (57, 100), "small": (32, 24)}
    # nothing left over: no served PNGs beside the stored files, no work folder
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(
        f"{job}{ext}" for job in sizes
    )
    assert write_metadata(tmp_path) == 3
    rows = [
        json.loads(line)
        for line in (tmp_path / "metadata.jsonl").read_text().splitlines()
    ]
    for row in rows:
        stored = states[row["job_id"]]["images"][0]
        assert row["file_name"] == stored["file"] and row["file_name"].endswith(ext)
        assert (row["width"], row["height"], row["sha256"]) == (
            stored["width"],
            stored["height"],
            stored["sha256"],
        )


async def test_several_images_per_task_are_each_stored(
    sim: SimFactory, tmp_path: Path
) -> None:
    """A task with two images stores `<id>~0.jpg` and `<id>~1.jpg`, each with
    its own facts and source."""
    server = await sim(images_per_task=2)
    await run_with(server.url, tmp_path, ImageOptions(ImageFormat.JPEG), [WIDE])
    record = final_states(tmp_path / "ledger.jsonl")["wide"]
    assert record["files"] == ["images/wide~0.jpg", "images/wide~1.jpg"]
    assert len(record["url"]) == 2
    for facts in record["images"]:
        data = (tmp_path / facts["file"]).read_bytes()
        assert facts["sha256"] == hashlib.sha256(data).hexdigest()
        assert facts["source"]["format"] == "png"
    assert record["images"][0]["sha256"] != record["images"][1]["sha256"]


def served_png(side: int = 64) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((side, side), 50).convert("RGB").save(out, format="PNG")
    return out.getvalue()


@pytest.mark.pure
async def test_undecodable_image_fails_at_transcode_and_is_refetched(
    tmp_path: Path,
) -> None:
    """An image Pillow cannot decode (PNG magic, cut short) fails the job at stage
    `transcode` keeping its taskid and URL, leaves no file, and --retry-failed
    fetches it again from the taskid instead of paying for a new task."""
    good = served_png()
    served = [good[:100], good]

    def handler(request: FakeRequest) -> FakeAnswer:
        if request.kind == "submit":
            return SubmitResult("t1", (), 1000, "ok")
        if request.kind == "poll":
            return PollResult(3, ("mem://t1_0.png",), "", 1000, "ok")
        return served.pop(0)

    api = FakeApi(handler)
    await run_with("", tmp_path, ImageOptions(ImageFormat.JPEG), [WIDE], api=api)
    record = final_states(tmp_path / "ledger.jsonl")["wide"]
    assert record["status"] == "failed" and record["stage"] == "transcode"
    assert record["taskid"] == "t1" and record["url"] == ["mem://t1_0.png"]
    assert "cannot re-encode image" in record["msg"]
    assert list((tmp_path / "images").iterdir()) == []
    state = read_ledger(tmp_path / "ledger.jsonl")
    assert decide(WIDE, state, retry_failed=True) == (Action.POLL, "t1")
    await run_with(
        "",
        tmp_path,
        ImageOptions(ImageFormat.JPEG),
        [WorkItem(WIDE, "t1")],
        api=api,
    )
    again = final_states(tmp_path / "ledger.jsonl")["wide"]
    assert again["status"] == "succeeded" and again["files"] == ["images/wide.jpg"]
    assert api.count("submit") == 1 and api.count("download") == 2


# -- the CLI ---------------------------------------------------------------------


def test_cli_stores_webp_and_metadata_points_at_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --mock --image-format webp --quality 80 --max-side 64` exits 0 with
    every image a WebP of longer side <= 64 listed in metadata.jsonl."""
    out = tmp_path / "run"
    code = main(
        [
            "run",
            str(ROOT / "sample_jobs.yaml"),
            "--mock",
            "--mock-generation-time",
            "0",
            "--out",
            str(out),
            "--image-format",
            "webp",
            "--quality",
            "80",
            "--max-side",
            "64",
            *CLI_FAST,
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert rows and all(row["file_name"].endswith(".webp") for row in rows)
    for row in rows:
        with Image.open(out / row["file_name"]) as image:
            assert image.format == "WEBP" and max(image.size) <= 64
            assert image.size == (row["width"], row["height"])
    assert not (out / "images" / WORK_DIR_NAME).exists()
    shards = export_webdataset(out, tmp_path / "wds", 100)
    with tarfile.open(shards[0]) as tar:
        names = tar.getnames()
    assert sorted(n for n in names if not n.endswith(".json")) == sorted(
        Path(row["file_name"]).stem.replace(".", "%2E") + ".webp" for row in rows
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--image-format", "png", "--quality", "80"], "--quality applies to jpeg"),
        (["--quality", "80"], "--quality needs --image-format"),
        (["--image-format", "jpeg", "--quality", "0"], "must be between 1 and 100"),
        (["--max-side", "0"], "must be >= 1"),
        (["--image-format", "gif"], "invalid choice"),
        (
            ["--image-format", "jpeg", "--no-download"],
            "cannot be combined with --no-download",
        ),
        (["--dry-run", "--quality", "9"], "--quality needs"),
    ],
)
def test_bad_image_flags_exit_2_before_anything_runs(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    """Each bad combination exits 2 with a one-line error naming the option, and
    creates no run directory."""
    out = tmp_path / "run"
    code = main(
        ["run", str(ROOT / "sample_jobs.yaml"), "--mock", "--out", str(out), *flags]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


# -- the library -----------------------------------------------------------------


def test_run_batch_sync_takes_the_image_keywords(tmp_path: Path) -> None:
    """`run_batch_sync(..., image_format="jpeg", quality=70, max_side=48)` stores
    JPEGs no larger than 48 pixels, as the CLI flags do."""
    result = run_batch_sync(
        ["a lighthouse at dawn", {"prompt": "a fox", "resolution": "16:9"}],
        out=tmp_path / "run",
        mock=True,
        mock_generation_time=0.0,
        poll_interval=0.02,
        image_format="jpeg",
        quality=70,
        max_side=48,
    )
    assert result.succeeded == 2 and result.ok
    for record in records(tmp_path / "run"):
        facts = record["images"][0]
        assert (
            facts["file"].endswith(".jpg")
            and max(facts["width"], facts["height"]) <= 48
        )
        with Image.open(tmp_path / "run" / facts["file"]) as image:
            assert image.format == "JPEG"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_format": "tiff"}, "--image-format must be one of"),
        ({"image_format": "png", "quality": 50}, "--quality applies to jpeg"),
        ({"max_side": 0}, "--max-side must be >= 1"),
        ({"image_format": "webp", "download": False}, "--no-download"),
    ],
)
def test_bad_image_keywords_raise_usage_error(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    """Bad image keywords are UsageErrors raised before any run directory exists."""
    with pytest.raises(UsageError, match=message):
        run_batch_sync(["x"], out=tmp_path / "run", mock=True, **kwargs)
    assert not (tmp_path / "run").exists()


def test_library_without_pillow_raises_missing_extra_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Pillow hidden, an image option raises MissingExtraError (a UsageError)
    naming the extra, and `original` without max_side still runs."""
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(MissingExtraError, match=r"zimage-batch-runner\[images\]"):
        run_batch_sync(["x"], out=tmp_path / "run", mock=True, max_side=64)
    assert not (tmp_path / "run").exists()
    result = run_batch_sync(
        ["x"], out=tmp_path / "run", mock=True, mock_generation_time=0.0
    )
    assert result.succeeded == 1


#: runs the CLI with Pillow hidden, as if the `images` extra were not installed
HIDE_PILLOW = (
    "import sys; sys.modules['PIL'] = None; "
    "from batch_runner.cli.main import main; sys.exit(main(sys.argv[1:]))"
)


def run_without_pillow(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", HIDE_PILLOW, "run", *args],
        capture_output=True,
        text=True,
        env=runner_env(),
        timeout=120,
    )


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "flags",
    [["--image-format", "jpeg"], ["--max-side", "512"], ["--image-format", "png"]],
)
def test_without_pillow_exit_2_naming_the_extra_and_nothing_sent(
    tmp_path: Path, flags: list[str]
) -> None:
    """Without Pillow, a flag that needs it exits 2 naming the `images` extra,
    before a single request reaches the API."""
    with standalone_simulator() as sim:
        res = run_without_pillow(
            [
                str(ROOT / "sample_jobs.yaml"),
                "--base-url",
                sim.url,
                "--out",
                str(tmp_path / "run"),
                *flags,
            ]
        )
        assert sim.stats()["requests_total"] == 0
    assert res.returncode == 2, res.stderr
    assert "needs Pillow: pip install 'zimage-batch-runner[images]'" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.subprocess
def test_without_pillow_the_default_stores_images_as_served(tmp_path: Path) -> None:
    """`original` without --max-side needs no Pillow: the run succeeds and the
    stored bytes are exactly the served ones; what a crashed transcoding run
    left in the work folder is cleared."""
    out = tmp_path / "run"
    leftover = out / "images" / WORK_DIR_NAME / "job.png"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a download")
    res = run_without_pillow(
        [
            str(ROOT / "sample_jobs.yaml"),
            "--mock",
            "--mock-generation-time",
            "0",
            "--out",
            str(out),
            *CLI_FAST,
        ]
    )
    assert res.returncode == 0, res.stderr
    records = [r for r in ledger_records(out / "ledger.jsonl") if "images" in r]
    assert records and all("source" not in r["images"][0] for r in records)
    assert all(r["images"][0]["file"].endswith(".png") for r in records)
    assert not leftover.parent.exists()
