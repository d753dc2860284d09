"""The floor: the least work a correct client does per Z-Image job.

One aiohttp session, a semaphore, and per job exactly: a multipart submit (the
body built as one bytes object, the cheapest way to send it), one poll, one
image download written to a file, one JSON line appended to a file. No retries,
no validation, no resume. With the simulator at --generation-time 0
the first poll is always done, so the jobs/s this reaches is what the client
side of the wire costs at minimum; `run_bench.py` compares `batch-runner run`
against it. With --poll-interval S it instead sleeps S before each poll until
the task is done: the reference for the latency-bound section.

    python bench/bare_loop.py --base-url URL --key K --manifest M.csv --out DIR
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import time
from pathlib import Path

import aiohttp

SUBMIT = "/v1/images/zimage"
POLL = "/v1/images/infobytaskid"
BOUNDARY = "bare-loop-7d1f0c9b2e"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(fields: dict[str, str]) -> bytes:
    """RFC 7578 form-data with text parts, in one buffer (one send per request)."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        f"{value}\r\n"
        for name, value in fields.items()
    ]
    return ("".join(parts) + f"--{BOUNDARY}--\r\n").encode()


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


async def run(
    base_url: str,
    key: str,
    rows: list[dict[str, str]],
    out: Path,
    concurrency: int,
    poll_interval: float = 0.0,
) -> int:
    """Run every row once; returns how many ended with an image on disk."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    auth = {"Authorization": f"Bearer {key}"}
    submit_headers = {**auth, "Content-Type": CONTENT_TYPE}
    sem = asyncio.Semaphore(concurrency)
    ok = 0
    connector = aiohttp.TCPConnector(limit=0)
    with (out / "results.jsonl").open("a", encoding="utf-8") as results:
        async with aiohttp.ClientSession(connector=connector) as session:

            async def job(i: int, row: dict[str, str]) -> None:
                nonlocal ok
                fields = {"prompt": row["prompt"], "resolution": "1024*1024"}
                if row.get("seed"):
                    fields["seed"] = row["seed"]
                async with sem:
                    async with session.post(
                        base_url + SUBMIT,
                        data=multipart(fields),
                        headers=submit_headers,
                    ) as resp:
                        taskid = (await resp.json())["data"]["taskid"]
                    while True:
                        await asyncio.sleep(poll_interval)
                        async with session.post(
                            base_url + POLL, json={"taskid": taskid}, headers=auth
                        ) as resp:
                            data = (await resp.json())["data"]
                        if not poll_interval or data.get("image_status") in (3, 4):
                            break
                    if data.get("image_status") != 3:
                        status = "not-done"
                    else:
                        async with session.get(data["url"][0]) as resp:
                            body = await resp.read()
                        (images / f"{i}.png").write_bytes(body)
                        status = "succeeded"
                        ok += 1
                    line = {"i": i, "taskid": taskid, "status": status}
                    results.write(json.dumps(line) + "\n")
                    results.flush()

            await asyncio.gather(*(job(i, row) for i, row in enumerate(rows)))
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--manifest", type=Path, required=True, help="CSV with `prompt`")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.0,
        help="0 (default): poll once, at once; S: poll every S s until done",
    )
    args = p.parse_args()
    started = time.perf_counter()
    rows = read_rows(args.manifest)
    ok = asyncio.run(
        run(
            args.base_url.rstrip("/"),
            args.key,
            rows,
            args.out,
            args.concurrency,
            args.poll_interval,
        )
    )
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "tool": "bare",
                "jobs": len(rows),
                "succeeded": ok,
                "failed": len(rows) - ok,
                "elapsed_s": round(elapsed, 3),
                "jobs_per_s": round(ok / elapsed, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
