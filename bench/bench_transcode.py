"""What --image-format/--max-side cost: ms per 1024x1024 image, and pool throughput.

Part 1 re-encodes one image inline (no pool) per setting and reports the median
ms/image. Part 2 pushes a batch through the runner's real path
(`Transcoder.store`: read the download, re-encode, write, rename) inline on the
event loop, through a thread pool and through a process pool, each sized to the
cores, and reports images/s and the event loop's worst stall (how late a 5 ms
ticker woke up): what a download waiting on the loop would have suffered.

    python bench/bench_transcode.py [--rounds 5] [--batch 32] [--side 1024] [--json OUT]

The source is a photo-like 1024x1024 RGB PNG (structure plus noise, ~2 MB:
Z-Image serves PNGs of generated pictures) made here, so nothing is fetched.
Settings alternate within each round so a noisy machine hurts all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from batch_runner.engine.transcoder import Transcoder, cpu_count
from batch_runner.store.transcode import (
    ImageFormat,
    ImageOptions,
    transcode_bytes,
    transcode_file,
)

SETTINGS: list[tuple[str, ImageOptions]] = [
    # a served PNG asked for as PNG at its size is stored as served
    ("png (kept as served)", ImageOptions(ImageFormat.PNG)),
    ("jpeg q90", ImageOptions(ImageFormat.JPEG)),
    ("webp q90", ImageOptions(ImageFormat.WEBP)),
    # the same as `original --max-side 512` for a served PNG
    ("png --max-side 512", ImageOptions(ImageFormat.PNG, max_side=512)),
    ("jpeg q90 --max-side 512", ImageOptions(ImageFormat.JPEG, max_side=512)),
    ("webp q90 --max-side 512", ImageOptions(ImageFormat.WEBP, max_side=512)),
]
#: the pool comparison uses the setting a dataset most likely picks
POOL_SETTING = ImageOptions(ImageFormat.JPEG, max_side=512)


def photo_like(side: int = 1024, seed: int = 7) -> bytes:
    """A PNG with both smooth structure and fine noise, like a generated photo."""
    fractal = Image.effect_mandelbrot((side, side), (-2.0, -1.5, 1.0, 1.5), 64)
    noise = Image.effect_noise((side, side), 48)
    gradient = Image.linear_gradient("L").resize((side, side))
    rgb = Image.merge(
        "RGB",
        (
            Image.blend(fractal, noise, 0.35),
            Image.blend(gradient, noise, 0.25),
            Image.blend(gradient.rotate(90 + seed), fractal, 0.5),
        ),
    )
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return out.getvalue()


def time_inline(source: bytes, options: ImageOptions) -> float:
    """Milliseconds for one in-process re-encode of `source`."""
    start = time.perf_counter()
    transcode_bytes(source, options)
    return (time.perf_counter() - start) * 1000


class Ticker:
    """Measures how late the event loop runs a 5 ms sleeper (its worst stall)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - before - 0.005)

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


@dataclass
class PoolRun:
    images_per_s: float = 0.0
    #: the ticker's worst lateness while the batch ran
    stall_ms: float = 0.0
    #: from creating the pool to the first image stored (worker start-up)
    first_ms: float = 0.0


def sources(folder: Path, source: bytes, count: int, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{prefix}-{i}.png" for i in range(count)]
    for path in paths:
        path.write_bytes(source)
    return paths


async def through_pool(kind: str, work: Path, source: bytes, batch: int) -> PoolRun:
    """`batch` images through Transcoder.store, as the runner does."""
    images = work / f"images-{kind}"
    run = PoolRun()
    start = time.perf_counter()
    transcoder = Transcoder(POOL_SETTING, images, pool=kind)  # type: ignore[arg-type]
    async with transcoder:
        first = sources(transcoder.work_dir, source, 1, "first")[0]
        await transcoder.store(first, "first")
        run.first_ms = (time.perf_counter() - start) * 1000
        # every process worker starts on its first task: warm them all up
        warm = sources(transcoder.work_dir, source, cpu_count(), "warm")
        await asyncio.gather(*(transcoder.store(p, p.stem) for p in warm))
        paths = sources(transcoder.work_dir, source, batch, "src")
        with Ticker() as ticker:
            start = time.perf_counter()
            await asyncio.gather(*(transcoder.store(p, p.stem) for p in paths))
            elapsed = time.perf_counter() - start
    shutil.rmtree(images)
    run.images_per_s, run.stall_ms = batch / elapsed, ticker.worst * 1000
    return run


async def inline_on_loop(work: Path, source: bytes, batch: int) -> PoolRun:
    """The same batch encoded on the event loop itself: what the pool avoids."""
    paths = sources(work / "images-inline", source, batch, "src")
    with Ticker() as ticker:
        start = time.perf_counter()
        for path in paths:
            transcode_file(path, path.with_suffix(".out"), POOL_SETTING)
            await asyncio.sleep(0)
        elapsed = time.perf_counter() - start
    shutil.rmtree(work / "images-inline")
    return PoolRun(batch / elapsed, ticker.worst * 1000)


async def idle(work: Path) -> PoolRun:
    """The ticker alone for a second: how late the loop wakes on this machine
    anyway (other processes, the scheduler)."""
    with Ticker() as ticker:
        await asyncio.sleep(1.0)
    return PoolRun(stall_ms=ticker.worst * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--side", type=int, default=1024, help="source image side (default 1024)"
    )
    args = parser.parse_args()
    source = photo_like(args.side)
    print(
        f"source: {args.side}x{args.side} RGB PNG, {len(source) / 1e6:.2f} MB; "
        f"{cpu_count()} core(s); Pillow {Image.__version__}"
    )

    per_image: dict[str, list[float]] = {name: [] for name, _ in SETTINGS}
    sizes: dict[str, int] = {}
    for name, options in SETTINGS:
        data, *_ = transcode_bytes(source, options)  # warm-up, and the size
        sizes[name] = len(data) if data is not None else len(source)
    for _ in range(args.rounds):
        for name, options in SETTINGS:
            per_image[name].append(time_inline(source, options))
    print("\n| setting | ms/image (median) | min | stored size |")
    print("|---|---|---|---|")
    for name, _ in SETTINGS:
        ms = per_image[name]
        print(
            f"| {name} | {statistics.median(ms):.1f} | {min(ms):.1f} | "
            f"{sizes[name] / 1e3:.0f} kB |"
        )

    runs: dict[str, Callable[[Path], Awaitable[PoolRun]]] = {
        "no re-encoding (baseline stall)": idle,
        "inline on the loop": lambda w: inline_on_loop(w, source, args.batch),
        "thread pool": lambda w: through_pool("thread", w, source, args.batch),
        "process pool": lambda w: through_pool("process", w, source, args.batch),
    }
    pools: dict[str, list[PoolRun]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(max(1, args.rounds // 2)):
            order = list(runs)
            order = order[rnd % len(order) :] + order[: rnd % len(order)]
            for name in order:
                work = Path(tmp) / f"{name.replace(' ', '-')}-{rnd}"
                work.mkdir()
                pools[name].append(asyncio.run(runs[name](work)))
    print(
        f"\n{args.batch} images, jpeg q90 --max-side 512, "
        f"{cpu_count()} worker(s) per pool, medians:\n"
    )
    print("| how | images/s | worst event-loop stall | pool start to 1st image |")
    print("|---|---|---|---|")
    summary = {name: median_run(results) for name, results in pools.items()}
    for name, run in summary.items():
        rate = f"{run.images_per_s:.1f}" if run.images_per_s else "-"
        first = f"{run.first_ms:.0f} ms" if run.first_ms else "-"
        print(f"| {name} | {rate} | {run.stall_ms:.0f} ms | {first} |")

    if args.json:
        report: dict[str, Any] = {
            "cores": cpu_count(),
            "source_bytes": len(source),
            "ms_per_image": {k: statistics.median(v) for k, v in per_image.items()},
            "stored_bytes": sizes,
            "pools": {k: asdict(v) for k, v in summary.items()},
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def median_run(runs: list[PoolRun]) -> PoolRun:
    return PoolRun(
        statistics.median(r.images_per_s for r in runs),
        statistics.median(r.stall_ms for r in runs),
        statistics.median(r.first_ms for r in runs),
    )


if __name__ == "__main__":
    main()
