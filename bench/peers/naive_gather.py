"""Peer (a): the script most people write first, done competently.

Read every prompt, then `asyncio.gather(*(job(row) for row in rows))` with a
semaphore inside each job: submit (multipart), poll until done, download the
image, return a result dict. Transient errors (429, 5xx, network) are retried a
few times with backoff, honouring Retry-After. Results are collected in a list
and dumped to results.json at the end.

What it lacks by design, and what the benchmark shows it costs: one coroutine
(and task) per job exists from the start, so memory grows with the manifest;
nothing is written until the very end, so a crash loses every result, and
nothing can be resumed.

    python bench/peers/naive_gather.py --base-url URL --key K --manifest M.csv \
        --out DIR [--concurrency 64] [--poll-interval 1]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

RETRIES = 5


class Transient(Exception):
    """Worth another try: 429, 5xx, a dropped connection, a timeout."""

    def __init__(self, msg: str, retry_after: float | None = None) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


async def call_json(
    session: aiohttp.ClientSession,
    url: str,
    request: Callable[[], dict[str, Any]],
    auth: dict[str, str],
) -> dict[str, Any]:
    """POST `request()` (fresh each try: a FormData is consumed by a send) and
    return `data` of a code-1000 envelope, retrying transient failures."""
    for attempt in range(RETRIES + 1):
        try:
            async with session.post(url, headers=auth, **request()) as resp:
                if resp.status == 429 or resp.status >= 500:
                    header = resp.headers.get("Retry-After")
                    raise Transient(
                        f"HTTP {resp.status}", float(header) if header else None
                    )
                if resp.status >= 400:
                    raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
                envelope = await resp.json(content_type=None)
            if envelope.get("code") != 1000:
                raise Transient(f"code {envelope.get('code')}: {envelope.get('msg')}")
            data: dict[str, Any] = envelope["data"]
            return data
        except (Transient, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if attempt == RETRIES:
                raise
            delay = getattr(exc, "retry_after", None) or random.uniform(
                0, 0.5 * 2**attempt
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def generate(
    session: aiohttp.ClientSession,
    sem: asyncio.Semaphore,
    base: str,
    auth: dict[str, str],
    i: int,
    row: dict[str, str],
    images: Path,
    poll_interval: float,
) -> dict[str, Any]:
    async with sem:
        fields = {"prompt": row["prompt"], "resolution": "1024*1024"}
        if row.get("seed"):
            fields["seed"] = row["seed"]
        submitted = await call_json(
            session,
            base + "/v1/images/zimage",
            lambda: {"data": aiohttp.FormData(fields, default_to_multipart=True)},
            auth,
        )
        taskid = submitted["taskid"]
        while True:
            task = await call_json(
                session,
                base + "/v1/images/infobytaskid",
                lambda: {"json": {"taskid": taskid}},
                auth,
            )
            if task["image_status"] == 3:
                break
            if task["image_status"] == 4:
                return {"i": i, "taskid": taskid, "status": "failed"}
            await asyncio.sleep(poll_interval)
        url = task["url"][0]
        async with session.get(url) as resp:
            resp.raise_for_status()
            body = await resp.read()
        path = images / f"{i:07d}.png"
        path.write_bytes(body)
        return {"i": i, "taskid": taskid, "status": "succeeded", "file": str(path)}


async def main_async(args: argparse.Namespace) -> list[Any]:
    with args.manifest.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    images = args.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    sem = asyncio.Semaphore(args.concurrency)
    auth = {"Authorization": f"Bearer {args.key}"}
    base = args.base_url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        results: list[Any] = await asyncio.gather(
            *(
                generate(session, sem, base, auth, i, row, images, args.poll_interval)
                for i, row in enumerate(rows)
            ),
            return_exceptions=True,
        )
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--manifest", type=Path, required=True, help="CSV with `prompt`")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--poll-interval", type=float, default=1.0)
    args = p.parse_args()
    started = time.perf_counter()
    results = asyncio.run(main_async(args))
    records = [
        r if isinstance(r, dict) else {"status": "error", "error": repr(r)}
        for r in results
    ]
    (args.out / "results.json").write_text(json.dumps(records))
    elapsed = time.perf_counter() - started
    ok = sum(1 for r in records if r["status"] == "succeeded")
    print(
        json.dumps(
            {
                "tool": "naive",
                "jobs": len(records),
                "succeeded": ok,
                "failed": len(records) - ok,
                "elapsed_s": round(elapsed, 3),
                "jobs_per_s": round(ok / elapsed, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
