"""obstore vs fsspec+s3fs against a local S3 server (moto), for the bucket run dir.

Measures what a run does to a bucket: many small PUTs (images, ledger segments),
one streamed multipart PUT of a few MB from a local file, a LIST of a prefix and
GETs of small objects; rounds alternate the two libraries so a noisy machine
hurts all alike; rounds rotate the order. obstore is measured twice: its async
API, and its blocking API on a thread pool (what the runner uses). Needs
`pip install -e '.[test,bench]'`.

    .venv/bin/python bench/bench_s3.py --objects 300 --size 65536 --big-mb 24
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LISTENING = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's standalone S3 server in its own process, on a free loopback port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            found = LISTENING.search(line)
            if found:
                break
        else:
            raise RuntimeError("moto server did not start")
        # it logs every request: keep its pipe empty or it blocks
        stderr = proc.stderr
        threading.Thread(target=stderr.read, daemon=True).start()
        yield f"http://127.0.0.1:{found.group(1)}"
    finally:
        proc.terminate()
        proc.wait(10)


def set_env(endpoint: str) -> None:
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ALLOW_HTTP="true",
    )


def make_bucket(endpoint: str, name: str) -> None:
    import boto3  # moto[server] brings it; used only to create buckets

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)


async def bounded(n: int, jobs: list[Callable[[], Awaitable[Any]]]) -> None:
    sem = asyncio.Semaphore(n)

    async def one(job: Callable[[], Awaitable[Any]]) -> None:
        async with sem:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


class Obstore:
    name = "obstore"

    def __init__(self, bucket: str) -> None:
        from obstore.store import S3Store

        self.store = S3Store(bucket, client_options={"allow_http": True})

    async def put(self, key: str, data: bytes) -> None:
        import obstore

        await obstore.put_async(self.store, key, data)

    async def put_file(self, key: str, path: Path) -> None:
        import obstore

        # multipart above 5 MiB, streamed from the file (never read whole)
        await obstore.put_async(self.store, key, path)

    async def listing(self, prefix: str) -> int:
        import obstore

        count = 0
        async for batch in obstore.list(self.store, prefix):
            count += len(batch)
        return count

    async def get(self, key: str) -> bytes:
        import obstore

        result = await obstore.get_async(self.store, key)
        return bytes(await result.bytes_async())


class ObstoreThreads:
    """obstore's blocking API on a thread pool: what the runner uses (see
    batch_runner/store/remote.py for why not the async API)."""

    name = "obstore-threads"

    def __init__(self, bucket: str) -> None:
        from batch_runner.store.remote import open_store

        self.store = open_store(f"s3://{bucket}")

    async def put(self, key: str, data: bytes) -> None:
        await self.store.put_bytes(key, data)

    async def put_file(self, key: str, path: Path) -> None:
        await self.store.put_file(key, path)

    async def listing(self, prefix: str) -> int:
        return len(await self.store.list(prefix))

    async def get(self, key: str) -> bytes:
        return await self.store.get_bytes(key)


class S3fs:
    name = "s3fs"

    def __init__(self, bucket: str) -> None:
        import s3fs

        self.bucket = bucket
        self.fs = s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True)
        self.session: Any = None

    async def start(self) -> None:
        self.session = await self.fs.set_session()

    async def put(self, key: str, data: bytes) -> None:
        await self.fs._pipe_file(f"{self.bucket}/{key}", data)

    async def put_file(self, key: str, path: Path) -> None:
        # s3fs streams the file in 50 MiB parts by default; 5 MiB like obstore
        await self.fs._put_file(
            str(path), f"{self.bucket}/{key}", chunksize=5 * 1024 * 1024
        )

    async def listing(self, prefix: str) -> int:
        self.fs.invalidate_cache()
        return len(await self.fs._ls(f"{self.bucket}/{prefix}", detail=False))

    async def get(self, key: str) -> bytes:
        data: bytes = await self.fs._cat_file(f"{self.bucket}/{key}")
        return data

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


async def one_round(
    lib: Any, args: argparse.Namespace, big: Path, tag: str
) -> dict[str, float]:
    payload = os.urandom(args.size)
    keys = [f"{tag}/images/img-{i:05d}.png" for i in range(args.objects)]
    out: dict[str, float] = {}

    t = time.perf_counter()
    await bounded(args.concurrency, [lambda k=k: lib.put(k, payload) for k in keys])
    out["put_small_per_s"] = args.objects / (time.perf_counter() - t)

    t = time.perf_counter()
    await lib.put_file(f"{tag}/big.bin", big)
    out["put_big_mb_per_s"] = args.big_mb / (time.perf_counter() - t)

    t = time.perf_counter()
    listed = await lib.listing(f"{tag}/images")
    out["list_ms"] = (time.perf_counter() - t) * 1000
    assert listed == args.objects, (lib.name, listed)

    t = time.perf_counter()
    await bounded(args.concurrency, [lambda k=k: lib.get(k) for k in keys])
    out["get_small_per_s"] = args.objects / (time.perf_counter() - t)
    assert await lib.get(keys[0]) == payload
    return out


def import_seconds(module: str) -> float:
    code = (
        "import time; t = time.perf_counter(); "
        f"import {module}; print(time.perf_counter() - t)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return float(done.stdout)


async def bench(
    args: argparse.Namespace, big: Path
) -> dict[str, list[dict[str, float]]]:
    obs = Obstore("bench")
    threads = ObstoreThreads("bench")
    s3 = S3fs("bench")
    await s3.start()
    libs: list[Any] = [obs, threads, s3]
    results: dict[str, list[dict[str, float]]] = {lib.name: [] for lib in libs}
    try:
        for r in range(args.rounds):
            # rotate the order so no library always runs first or last
            order = libs[r % 3 :] + libs[: r % 3]
            for lib in order:
                results[lib.name].append(
                    await one_round(lib, args, big, f"{lib.name}-{r}")
                )
    finally:
        await s3.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--big-mb", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with moto_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
        set_env(endpoint)
        make_bucket(endpoint, "bench")
        big = Path(tmp) / "big.bin"
        big.write_bytes(os.urandom(args.big_mb * 1024 * 1024))
        results = asyncio.run(bench(args, big))
    print(
        f"{args.objects} objects of {args.size} B, concurrency {args.concurrency}, "
        f"{args.big_mb} MiB multipart, median of {args.rounds} rounds"
    )
    names = list(results)
    print("| metric | " + " | ".join(names) + " |")
    for m in results["obstore"][0]:
        cells = [f"{statistics.median(r[m] for r in results[n]):.1f}" for n in names]
        print(f"| {m} | " + " | ".join(cells) + " |")
    imports = [
        import_seconds("obstore"),
        import_seconds("obstore"),
        import_seconds("s3fs"),
    ]
    print("| import_s | " + " | ".join(f"{t:.3f}" for t in imports) + " |")


if __name__ == "__main__":
    main()
