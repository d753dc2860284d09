"""Peer (b): the OpenAI cookbook's api_request_parallel_processor.py, adapted.

Same structure as the cookbook script: read the input one line at a time; a
capacity bucket refilled from elapsed time; a retry queue served before new
lines; a task spawned only when capacity allows (one per loop pass, then a 1 ms
sleep); a pause after a rate-limit error; each result appended to a JSONL file
as it completes. Adapted to Z-Image: one "request" is submit + poll until done
+ download, and besides the per-second submit bucket a cap on jobs in flight
gives it the same concurrency knob as the other tools. As in the cookbook, a
failure anywhere retries the whole request (here: resubmits, paying again).

    python bench/peers/cookbook_style.py --base-url URL --key K --manifest M.csv \
        --out DIR [--concurrency 64] [--poll-interval 1] [--max-requests-per-second R]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR = 15.0
SECONDS_TO_SLEEP_EACH_LOOP = 0.001  # as in the cookbook: at most ~1,000 starts/s


@dataclass
class StatusTracker:
    num_tasks_started: int = 0
    num_tasks_in_progress: int = 0  # started, not yet finished (incl. retrying)
    num_tasks_running: int = 0  # adaptation: spawned and not yet returned
    num_tasks_succeeded: int = 0
    num_tasks_failed: int = 0
    num_rate_limit_errors: int = 0
    num_api_errors: int = 0
    num_other_errors: int = 0
    time_of_last_rate_limit_error: float = 0.0
    pause_after_rate_limit: float = SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR


class ApiFailure(Exception):
    """The API answered, but not with success (429, an error envelope)."""


@dataclass
class APIRequest:
    task_id: int
    request: dict[str, str]
    attempts_left: int
    result: list[str] = field(default_factory=list)

    async def call_api(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        header: dict[str, str],
        poll_interval: float,
        images: Path,
        retry_queue: asyncio.Queue[APIRequest],
        save_filepath: Path,
        status: StatusTracker,
    ) -> None:
        """Submit, poll until done, download; on any error queue a retry."""
        error: Exception | None = None
        output: dict[str, Any] = {}
        try:
            form = aiohttp.FormData(self.request, default_to_multipart=True)
            submitted = await _post(
                session, base_url + "/v1/images/zimage", header, status, data=form
            )
            taskid = submitted["taskid"]
            while True:
                task = await _post(
                    session,
                    base_url + "/v1/images/infobytaskid",
                    header,
                    status,
                    json={"taskid": taskid},
                )
                if task["image_status"] in (3, 4):
                    break
                await asyncio.sleep(poll_interval)
            if task["image_status"] == 4:
                raise ApiFailure(task.get("error_message") or "generation failed")
            async with session.get(task["url"][0]) as resp:
                resp.raise_for_status()
                body = await resp.read()
            path = images / f"{self.task_id:07d}.png"
            path.write_bytes(body)
            output = {"taskid": taskid, "file": str(path)}
        except Exception as exc:  # the cookbook retries on any exception
            if not isinstance(exc, ApiFailure):
                status.num_other_errors += 1
            error = exc
        status.num_tasks_running -= 1
        if error is not None:
            self.result.append(repr(error))
            if self.attempts_left:
                retry_queue.put_nowait(self)
            else:
                append_to_jsonl([self.request, self.result], save_filepath)
                status.num_tasks_in_progress -= 1
                status.num_tasks_failed += 1
        else:
            append_to_jsonl([self.request, output], save_filepath)
            status.num_tasks_in_progress -= 1
            status.num_tasks_succeeded += 1


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    header: dict[str, str],
    status: StatusTracker,
    **kwargs: Any,
) -> dict[str, Any]:
    async with session.post(url, headers=header, **kwargs) as resp:
        if resp.status == 429:
            status.num_rate_limit_errors += 1
            status.time_of_last_rate_limit_error = time.time()
            retry_after = resp.headers.get("Retry-After")
            if retry_after:
                status.pause_after_rate_limit = float(retry_after)
            raise ApiFailure("rate limited")
        body = await resp.json(content_type=None)
    if body.get("code") != 1000:
        status.num_api_errors += 1
        raise ApiFailure(
            f"HTTP {resp.status} code {body.get('code')}: {body.get('msg')}"
        )
    data: dict[str, Any] = body["data"]
    return data


def append_to_jsonl(data: Any, filename: Path) -> None:
    """As in the cookbook: open, append one line, close."""
    json_string = json.dumps(data)
    with open(filename, "a") as f:
        f.write(json_string + "\n")


def task_id_generator_function() -> Iterator[int]:
    task_id = 0
    while True:
        yield task_id
        task_id += 1


async def process_requests_from_file(args: argparse.Namespace) -> StatusTracker:
    images = args.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    save_filepath = args.out / "results.jsonl"
    header = {"Authorization": f"Bearer {args.key}"}
    base_url = args.base_url.rstrip("/")
    max_rps = args.max_requests_per_second

    queue_of_requests_to_retry: asyncio.Queue[APIRequest] = asyncio.Queue()
    task_id_generator = task_id_generator_function()
    status_tracker = StatusTracker()
    next_request: APIRequest | None = None
    available_request_capacity = max_rps
    last_update_time = time.time()
    file_not_finished = True
    spawned: set[asyncio.Task[None]] = set()

    with args.manifest.open(newline="", encoding="utf-8") as file:
        requests = csv.DictReader(file)
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout
        ) as session:
            while True:
                # get next request (if one is not already waiting for capacity)
                if next_request is None:
                    if not queue_of_requests_to_retry.empty():
                        next_request = queue_of_requests_to_retry.get_nowait()
                    elif file_not_finished:
                        try:
                            row = next(requests)
                            fields = {
                                "prompt": row["prompt"],
                                "resolution": "1024*1024",
                            }
                            if row.get("seed"):
                                fields["seed"] = row["seed"]
                            next_request = APIRequest(
                                task_id=next(task_id_generator),
                                request=fields,
                                attempts_left=args.max_attempts,
                            )
                            status_tracker.num_tasks_started += 1
                            status_tracker.num_tasks_in_progress += 1
                        except StopIteration:
                            file_not_finished = False

                # update available capacity
                current_time = time.time()
                seconds_since_update = current_time - last_update_time
                available_request_capacity = min(
                    available_request_capacity + max_rps * seconds_since_update,
                    max_rps,
                )
                last_update_time = current_time

                # if enough capacity available, call API
                if (
                    next_request is not None
                    and available_request_capacity >= 1
                    and status_tracker.num_tasks_running < args.concurrency
                ):
                    available_request_capacity -= 1
                    next_request.attempts_left -= 1
                    status_tracker.num_tasks_running += 1
                    task = asyncio.create_task(
                        next_request.call_api(
                            session=session,
                            base_url=base_url,
                            header=header,
                            poll_interval=args.poll_interval,
                            images=images,
                            retry_queue=queue_of_requests_to_retry,
                            save_filepath=save_filepath,
                            status=status_tracker,
                        )
                    )
                    # the cookbook drops the task; keep a reference so it is not
                    # garbage-collected mid-flight
                    spawned.add(task)
                    task.add_done_callback(spawned.discard)
                    next_request = None

                # if all tasks are finished, break
                if status_tracker.num_tasks_in_progress == 0 and not file_not_finished:
                    break

                # main loop sleeps briefly so concurrent tasks can run
                await asyncio.sleep(SECONDS_TO_SLEEP_EACH_LOOP)

                # if a rate limit error was hit recently, pause to cool down
                since_error = time.time() - status_tracker.time_of_last_rate_limit_error
                if since_error < status_tracker.pause_after_rate_limit:
                    await asyncio.sleep(
                        status_tracker.pause_after_rate_limit - since_error
                    )
    return status_tracker


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--manifest", type=Path, required=True, help="CSV with `prompt`")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--concurrency", type=int, default=64, help="max jobs in flight")
    p.add_argument("--poll-interval", type=float, default=1.0)
    p.add_argument("--max-requests-per-second", type=float, default=100_000.0)
    p.add_argument("--max-attempts", type=int, default=5)
    args = p.parse_args()
    started = time.perf_counter()
    status = asyncio.run(process_requests_from_file(args))
    elapsed = time.perf_counter() - started
    ok = status.num_tasks_succeeded
    print(
        json.dumps(
            {
                "tool": "cookbook",
                "jobs": status.num_tasks_started,
                "succeeded": ok,
                "failed": status.num_tasks_failed,
                "rate_limit_errors": status.num_rate_limit_errors,
                "elapsed_s": round(elapsed, 3),
                "jobs_per_s": round(ok / elapsed, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
