"""In-process simulator of the TensorsLab Z-Image API, with seeded fault injection.

This is the far side of the wire. It shares no code with the client on purpose:
a misreading of the API in the client must not be mirrored here, where it would
make both sides agree and the tests pass. Where the real API is undocumented
(see the API notes, section 8) the behaviour is a knob on SimulatorConfig.

A submit or poll goes through: latency, fault draw, auth, body validation, then
(submits only) max_active_tasks, max_rps, credits. Faults come first because
they stand for infrastructure trouble in front of the real application.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import random
import re
import secrets
import socket
import struct
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from batch_runner.simulator.png import render_png, scaled_size

__all__ = [
    "FAULT_KINDS",
    "RATIO_SIZES",
    "STATE_KEY",
    "RunningSimulator",
    "SimTask",
    "SimulatorConfig",
    "SimulatorState",
    "SimulatorStats",
    "add_arguments",
    "config_from_args",
    "get_state",
    "make_app",
    "serve_forever",
    "start_simulator",
]

FAULT_KINDS: Final = ("500", "503", "429", "reset", "hang", "malformed", "9999")
RATIO_SIZES: Final[dict[str, tuple[int, int]]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
    "4:3": (1152, 896),
    "3:4": (896, 1152),
}
FAILURE_MESSAGE: Final = "simulated generation failure"
_SUBMIT_FIELDS: Final = frozenset({"prompt", "resolution", "seed", "prompt_extend"})
# Six digits per side is far beyond any real model and keeps junk like
# "1e9*1" out without inventing an undocumented upper bound.
_SIZE_RE: Final = re.compile(r"([1-9][0-9]{0,5})[*x]([1-9][0-9]{0,5})")
_INT_RE: Final = re.compile(r"-?[0-9]{1,19}")
_IMAGE_RE: Final = re.compile(r"(.+)_([0-9]{1,4})\.png")
_QUEUED_FRACTION: Final = 0.2


@dataclass(slots=True)
class SimulatorConfig:
    """Knobs of the simulator. Times are in seconds; None means "no limit".

    key: accepted API key ("Bearer <key>" or raw); None accepts any non-empty one.
    generation_time: submit to image_status 3 (status 1 for the first 20%).
    latency: added to every submit and poll response (not to downloads).
    fault_rate, fault_kinds, seed: probability, kinds and RNG seed of faults
        injected into submits and polls before any other processing.
    retry_after: Retry-After of every 429; hang_time: how long "hang" stalls.
    credits: each created task costs one; at 0 submits get code 9000.
    fail_marker: prompts containing it end in status 4 ("" disables).
    images_per_task, image_scale: URLs per task; served size / requested size.
    url_in_submit: submit waits for the task and returns data.url (sync mode).
    unknown_task: "9999" (HTTP 200, code 9999) or "404" (HTTP 404).
    max_active_tasks, max_rps: server limits answered with 429 + Retry-After.
    task_ttl: finished tasks (and their images) vanish this long after done.
    """

    key: str | None = None
    generation_time: float = 0.5
    latency: float = 0.0
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    retry_after: float = 1.0
    hang_time: float = 30.0
    seed: int = 0
    credits: int | None = None
    fail_marker: str = "[fail]"
    images_per_task: int = 1
    image_scale: float = 0.125
    url_in_submit: bool = False
    unknown_task: str = "9999"
    max_active_tasks: int | None = None
    max_rps: float | None = None
    task_ttl: float | None = None

    def __post_init__(self) -> None:
        self.fault_kinds = tuple(self.fault_kinds)
        bad = [k for k in self.fault_kinds if k not in FAULT_KINDS]
        problems = [f"unknown fault kind {k!r}" for k in bad]
        if not 0.0 <= self.fault_rate <= 1.0:
            problems.append("fault_rate must be within 0..1")
        if self.fault_rate > 0 and not self.fault_kinds:
            problems.append("fault_kinds must not be empty when fault_rate > 0")
        if self.unknown_task not in ("9999", "404"):
            problems.append("unknown_task must be '9999' or '404'")
        for name in ("generation_time", "latency", "retry_after", "hang_time"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.images_per_task < 0:
            problems.append("images_per_task must be >= 0")
        if self.image_scale <= 0:
            problems.append("image_scale must be > 0")
        for name in ("max_active_tasks", "max_rps", "task_ttl", "credits"):
            value = getattr(self, name)
            if value is not None and value < 0:
                problems.append(f"{name} must be >= 0")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(slots=True)
class SimulatorStats:
    """Counters the tests and demos read through get_state() or GET /_sim/stats.

    requests_total counts API requests (submit, poll); downloads and the
    control endpoints have their own counters or none.
    """

    requests_total: int = 0
    submits_total: int = 0
    tasks_created: int = 0
    polls_total: int = 0
    #: polls answered "not finished yet" (queued or running)
    polls_early: int = 0
    #: finished tasks polled at least once since they finished, and the summed
    #: seconds from finishing to that first poll: how late clients notice
    tasks_found_done: int = 0
    found_done_delay_s: float = 0.0
    downloads_total: int = 0
    downloads_with_auth: int = 0
    faults_injected: dict[str, int] = field(default_factory=dict)
    rejected_429_limit: int = 0
    credits_left: int | None = None
    auth_failures: int = 0
    bad_requests: int = 0
    credit_rejections: int = 0
    tasks_by_prompt: dict[str, int] = field(default_factory=dict)
    active_tasks: int = 0


@dataclass(slots=True)
class SimTask:
    """One generation task; its status is derived from the clock, not stored."""

    taskid: str
    prompt: str
    width: int
    height: int
    seed: int
    prompt_extend: str | None
    starttime: str
    created_at: float
    done_at: float
    failed: bool
    images: dict[int, bytes] = field(default_factory=dict)
    found_done: bool = False

    def status(self, now: float) -> int:
        if now >= self.done_at:
            return 4 if self.failed else 3
        queued_until = self.created_at + _QUEUED_FRACTION * (
            self.done_at - self.created_at
        )
        return 1 if now < queued_until else 2


@dataclass(frozen=True, slots=True)
class _SubmitRequest:
    prompt: str
    width: int
    height: int
    seed: int | None
    prompt_extend: str | None


class SimulatorState:
    """Tasks, counters and RNGs of one simulator instance."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.tasks: dict[str, SimTask] = {}
        self._stats = SimulatorStats(credits_left=config.credits)
        # Separate RNGs so that server-picked seeds never shift the fault
        # sequence: faults depend only on the order of API requests.
        self._fault_rng = random.Random(config.seed)
        self._seed_rng = random.Random(f"origseed:{config.seed}")
        self._active: deque[float] = deque()
        self._expiry: deque[tuple[float, str]] = deque()
        self._submit_times: deque[float] = deque()
        self.closing = asyncio.Event()
        self.inflight: set[asyncio.Task[Any]] = set()

    @property
    def stats(self) -> SimulatorStats:
        self._stats.active_tasks = self.active_tasks()
        return self._stats

    def snapshot(self) -> dict[str, Any]:
        return asdict(self.stats)

    def reset_stats(self) -> None:
        self._stats = SimulatorStats(credits_left=self._stats.credits_left)

    def add_credits(self, amount: int) -> None:
        if self._stats.credits_left is not None:
            self._stats.credits_left = max(0, self._stats.credits_left + amount)

    def sweep(self, now: float) -> None:
        # generation_time is the same for every task, so done_at (and thus
        # done_at + ttl) is non-decreasing in creation order: plain FIFOs work.
        while self._active and self._active[0] <= now:
            self._active.popleft()
        while self._expiry and self._expiry[0][0] <= now:
            self.tasks.pop(self._expiry.popleft()[1], None)

    def active_tasks(self) -> int:
        self.sweep(time.monotonic())
        return len(self._active)

    def draw_fault(self) -> str | None:
        cfg = self.config
        if self._fault_rng.random() >= cfg.fault_rate or not cfg.fault_kinds:
            return None
        kind = self._fault_rng.choice(cfg.fault_kinds)
        self._stats.faults_injected[kind] = self._stats.faults_injected.get(kind, 0) + 1
        return kind

    def take_rate_slot(self, now: float) -> bool:
        rps = self.config.max_rps
        if rps is None:
            return True
        if rps <= 0:
            return False
        # Below 1/s a 1 s window would admit nothing; widen it to hold one.
        capacity = max(1, int(rps))
        window = capacity / rps
        times = self._submit_times
        while times and times[0] <= now - window:
            times.popleft()
        if len(times) >= capacity:
            return False
        times.append(now)
        return True

    def create_task(self, req: _SubmitRequest, now: float) -> SimTask:
        cfg = self.config
        taskid = "zimg_" + secrets.token_hex(8)
        while taskid in self.tasks:
            taskid = "zimg_" + secrets.token_hex(8)
        seed = req.seed if req.seed is not None else self._seed_rng.randrange(2**31)
        task = SimTask(
            taskid=taskid,
            prompt=req.prompt,
            width=req.width,
            height=req.height,
            seed=seed,
            prompt_extend=req.prompt_extend,
            starttime=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            created_at=now,
            done_at=now + cfg.generation_time,
            failed=bool(cfg.fail_marker) and cfg.fail_marker in req.prompt,
        )
        self.tasks[taskid] = task
        self._active.append(task.done_at)
        if cfg.task_ttl is not None:
            self._expiry.append((task.done_at + cfg.task_ttl, taskid))
        st = self._stats
        st.tasks_created += 1
        st.tasks_by_prompt[req.prompt] = st.tasks_by_prompt.get(req.prompt, 0) + 1
        if st.credits_left is not None:
            st.credits_left -= 1
        return task

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the simulator shuts down."""
        if seconds <= 0 or self.closing.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)

    async def shutdown(self) -> None:
        self.closing.set()
        # Handlers whose client already left are no longer tracked by aiohttp;
        # let them finish so no task outlives the event loop.
        others = self.inflight - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=2.0)


STATE_KEY: Final = web.AppKey("zimage_simulator_state", SimulatorState)


def get_state(app: web.Application) -> SimulatorState:
    return app[STATE_KEY]


# --------------------------------------------------------------------- helpers


def _fmt_seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _envelope(
    status: int,
    code: int,
    msg: str,
    data: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"code": code, "msg": msg, "data": {} if data is None else data}
    return web.json_response(body, status=status, headers=headers)


def _bad_request(state: SimulatorState, msg: str) -> web.Response:
    state._stats.bad_requests += 1
    return _envelope(400, 9999, msg)


def _too_many(state: SimulatorState) -> web.Response:
    headers = {"Retry-After": _fmt_seconds(state.config.retry_after)}
    return _envelope(429, 9999, "Too Many Requests", headers=headers)


def _authorised(header: str | None, key: str | None) -> bool:
    if header is None:
        return False
    value = header.strip()
    scheme, _, rest = value.partition(" ")
    token = rest.strip() if scheme.lower() == "bearer" else value
    if not token:
        return False
    return key is None or hmac.compare_digest(token.encode(), key.encode())


def _abort_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 turns the close into a TCP RST, which is what "reset" means.
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
    transport.abort()


async def _inject(
    request: web.Request, state: SimulatorState, kind: str
) -> web.Response:
    if kind == "reset":
        _abort_connection(request)
        # aiohttp fails to write this to the dead transport and drops it
        # quietly (a ConnectionError in finish_response, logged at debug).
        return web.Response(status=500)
    # Drain the body so the keep-alive connection stays usable.
    await request.read()
    if kind == "500":
        return web.Response(status=500, text="500 Internal Server Error")
    if kind == "503":
        return web.json_response(
            {"code": 9999, "msg": "Service Unavailable"}, status=503
        )
    if kind == "429":
        return _too_many(state)
    if kind == "hang":
        await state.pause(state.config.hang_time)
        return web.json_response(
            {"code": 9999, "msg": "Service Unavailable"}, status=503
        )
    if kind == "malformed":
        return web.Response(
            status=200,
            body=b'{"code":1000,"msg":"OK","da',
            content_type="application/json",
        )
    return _envelope(200, 9999, "Internal error")


async def _preamble(request: web.Request, state: SimulatorState) -> web.Response | None:
    """Latency, fault injection, then auth: what happens before the API logic."""
    await state.pause(state.config.latency)
    kind = state.draw_fault()
    if kind is not None:
        return await _inject(request, state, kind)
    if not _authorised(request.headers.get("Authorization"), state.config.key):
        state._stats.auth_failures += 1
        return _envelope(401, 9999, "Invalid API key")
    return None


async def _read_form(request: web.Request) -> dict[str, str] | str:
    if request.content_type != "multipart/form-data":
        return f"Content-Type must be multipart/form-data, got {request.content_type!r}"
    try:
        post = await request.post()
    except Exception as exc:  # aiohttp raises assorted types for broken bodies
        return f"malformed multipart body: {exc}"
    form: dict[str, str] = {}
    for name, value in post.items():
        if not isinstance(value, str):
            return f"field {name!r} must not be a file"
        if name in form:
            return f"duplicate field {name!r}"
        form[name] = value
    return form


def _parse_submit(form: dict[str, str]) -> _SubmitRequest | str:
    unknown = sorted(set(form) - _SUBMIT_FIELDS)
    if unknown:
        return f"unknown field(s): {', '.join(unknown)}"
    prompt = form.get("prompt", "")
    if not prompt.strip():
        return "prompt is required"
    resolution = form.get("resolution", "1024*1024")
    size = RATIO_SIZES.get(resolution)
    if size is None:
        match = _SIZE_RE.fullmatch(resolution)
        if match is None:
            return f"invalid resolution {resolution!r}"
        size = (int(match[1]), int(match[2]))
    seed: int | None = None
    if "seed" in form:
        if _INT_RE.fullmatch(form["seed"]) is None:
            return f"seed must be an integer, got {form['seed']!r}"
        seed = int(form["seed"])
    extend = form.get("prompt_extend")
    if extend is not None and extend not in ("0", "1"):
        return f"prompt_extend must be '0' or '1', got {extend!r}"
    return _SubmitRequest(prompt, size[0], size[1], seed, extend)


def _image_urls(
    request: web.Request, state: SimulatorState, task: SimTask
) -> list[str]:
    # through the route, so that a simulator mounted under a prefix (behind a
    # gateway path such as /zimage) hands out URLs under that prefix too
    origin = request.url.origin()
    image = request.app.router["image"]
    count = state.config.images_per_task
    return [
        str(origin.join(image.url_for(name=f"{task.taskid}_{k}.png")))
        for k in range(count)
    ]


def _task_data(
    request: web.Request, state: SimulatorState, task: SimTask
) -> dict[str, Any]:
    status = task.status(time.monotonic())
    data: dict[str, Any] = {
        "taskid": task.taskid,
        "starttime": task.starttime,
        "image_status": status,
        "url": _image_urls(request, state, task) if status == 3 else [],
        "width": task.width,
        "height": task.height,
        "prompt": task.prompt,
        "origseed": task.seed,
    }
    if status == 4:
        data["error_message"] = FAILURE_MESSAGE
    return data


# -------------------------------------------------------------------- handlers


@web.middleware
async def _track_inflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    task = asyncio.current_task()
    if task is None:
        return await handler(request)
    state.inflight.add(task)
    try:
        return await handler(request)
    finally:
        state.inflight.discard(task)


async def _submit(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    cfg, st = state.config, state._stats
    st.requests_total += 1
    st.submits_total += 1
    early = await _preamble(request, state)
    if early is not None:
        return early
    form = await _read_form(request)
    parsed = _parse_submit(form) if isinstance(form, dict) else form
    if isinstance(parsed, str):
        return _bad_request(state, parsed)
    now = time.monotonic()
    state.sweep(now)
    if cfg.max_active_tasks is not None and len(state._active) >= cfg.max_active_tasks:
        st.rejected_429_limit += 1
        return _too_many(state)
    if not state.take_rate_slot(now):
        st.rejected_429_limit += 1
        return _too_many(state)
    if st.credits_left is not None and st.credits_left <= 0:
        st.credit_rejections += 1
        return _envelope(200, 9000, "Insufficient credits")
    task = state.create_task(parsed, now)
    data: dict[str, Any] = {"taskid": task.taskid}
    if cfg.url_in_submit:
        # Synchronous mode: answer once the image exists. A failed task gets
        # an empty list, leaving the client to poll for error_message.
        await state.pause(task.done_at - time.monotonic())
        task.done_at = min(task.done_at, time.monotonic())
        data["url"] = [] if task.failed else _image_urls(request, state, task)
    return _envelope(200, 1000, "Task created successfully", data)


async def _poll(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    st = state._stats
    st.requests_total += 1
    st.polls_total += 1
    early = await _preamble(request, state)
    if early is not None:
        return early
    try:
        body = json.loads(await request.read())
    except ValueError:
        return _bad_request(state, "malformed JSON body")
    if not isinstance(body, dict) or set(body) != {"taskid"}:
        return _bad_request(state, 'body must be {"taskid": "<id>"}')
    taskid = body["taskid"]
    if not isinstance(taskid, str) or not taskid:
        return _bad_request(state, "taskid must be a non-empty string")
    state.sweep(time.monotonic())
    task = state.tasks.get(taskid)
    if task is None:
        if state.config.unknown_task == "404":
            return web.json_response(
                {"code": 9999, "msg": "task not found"}, status=404
            )
        return _envelope(200, 9999, "task not found")
    now = time.monotonic()
    if now < task.done_at:
        st.polls_early += 1
    elif not task.found_done:
        task.found_done = True
        st.tasks_found_done += 1
        st.found_done_delay_s += now - task.done_at
    return _envelope(200, 1000, "OK", _task_data(request, state, task))


async def _image(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    st = state._stats
    st.downloads_total += 1
    if "Authorization" in request.headers:
        st.downloads_with_auth += 1
    match = _IMAGE_RE.fullmatch(request.match_info["name"])
    if match is None:
        raise web.HTTPNotFound()
    state.sweep(time.monotonic())
    task = state.tasks.get(match[1])
    index = int(match[2])
    if task is None or task.status(time.monotonic()) != 3:
        raise web.HTTPNotFound()
    if index >= state.config.images_per_task:
        raise web.HTTPNotFound()
    png = task.images.get(index)
    if png is None:
        width, height = scaled_size(task.width, task.height, state.config.image_scale)
        png = task.images[index] = render_png(
            task.prompt, task.seed, index, width, height
        )
    return web.Response(body=png, content_type="image/png")


async def _control_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].snapshot())


async def _control_credits(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = json.loads(await request.read())
    except ValueError:
        body = None
    amount = body.get("add") if isinstance(body, dict) else None
    if not isinstance(amount, int) or isinstance(amount, bool):
        return web.json_response({"error": 'body must be {"add": <int>}'}, status=400)
    state.add_credits(amount)
    return web.json_response(state.snapshot())


async def _control_reset(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.reset_stats()
    return web.json_response(state.snapshot())


def make_app(config: SimulatorConfig) -> web.Application:
    state = SimulatorState(config)
    app = web.Application(middlewares=[_track_inflight])
    app[STATE_KEY] = state

    async def on_shutdown(_app: web.Application) -> None:
        await state.shutdown()

    app.on_shutdown.append(on_shutdown)
    app.router.add_post("/v1/images/zimage", _submit)
    app.router.add_post("/v1/images/infobytaskid", _poll)
    app.router.add_get("/images/{name}", _image, name="image")
    app.router.add_get("/_sim/stats", _control_stats)
    app.router.add_post("/_sim/credits", _control_credits)
    app.router.add_post("/_sim/reset-stats", _control_reset)
    return app


# --------------------------------------------------------------------- running


class RunningSimulator:
    """A started simulator: .url, .state, close(); also an async context manager."""

    def __init__(self, runner: web.AppRunner, url: str, state: SimulatorState) -> None:
        self._runner = runner
        self.url = url
        self.state = state
        self._closed = False

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._runner.cleanup()

    async def __aenter__(self) -> RunningSimulator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def start_simulator(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    app = make_app(config)
    # Hangs and sleeps wake on shutdown, so a long grace period only hides bugs.
    runner = web.AppRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
    except BaseException:
        await runner.cleanup()
        raise
    shown = f"[{host}]" if ":" in host else host
    return RunningSimulator(runner, f"http://{shown}:{bound_port}", app[STATE_KEY])


async def serve_forever(config: SimulatorConfig, host: str, port: int) -> None:
    sim = await start_simulator(config, host, port)
    try:
        print(f"Z-Image simulator listening on {sim.url}", flush=True)
        await asyncio.Event().wait()
    finally:
        await sim.close()


# ------------------------------------------------------------------------- CLI


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in FAULT_KINDS]
    if bad:
        choices = ", ".join(FAULT_KINDS)
        raise argparse.ArgumentTypeError(
            f"unknown fault kind(s) {', '.join(bad)}; choose from {choices}"
        )
    return kinds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # the command line's own checked types: finite numbers, in range, errors
    # in plain words naming the option
    from batch_runner.cli import options as t

    d = SimulatorConfig()
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to bind (default %(default)s)")
    add(
        "--port",
        type=t.port,
        default=8765,
        help="port; 0 picks a free one (default %(default)s)",
    )
    add(
        "--key",
        default=os.environ.get("TENSORSLAB_API_KEY") or None,
        help="only accept this API key (default: $TENSORSLAB_API_KEY; unset = any)",
    )
    add(
        "--generation-time",
        type=t.non_negative_float,
        default=d.generation_time,
        help="seconds per task",
    )
    add(
        "--latency",
        type=t.non_negative_float,
        default=d.latency,
        help="extra seconds per API response",
    )
    add(
        "--fault-rate",
        type=t.fraction,
        default=d.fault_rate,
        help="fault probability 0..1",
    )
    add(
        "--fault-kinds",
        type=_kinds,
        default=d.fault_kinds,
        help=f"comma list from {','.join(FAULT_KINDS)}",
    )
    add(
        "--retry-after",
        type=t.non_negative_float,
        default=d.retry_after,
        help="Retry-After of 429s",
    )
    add(
        "--hang-time",
        type=t.non_negative_float,
        default=d.hang_time,
        help="seconds a 'hang' fault stalls",
    )
    add("--seed", type=t.whole, default=d.seed, help="seed of the fault RNG")
    add(
        "--credits",
        type=t.optional(t.non_negative_int),
        default=None,
        help="credits (default unlimited)",
    )
    add("--fail-marker", default=d.fail_marker, help="prompts containing this fail")
    add(
        "--images-per-task",
        type=t.non_negative_int,
        default=d.images_per_task,
        help="image URLs per finished task",
    )
    add(
        "--image-scale",
        type=t.positive_float,
        default=d.image_scale,
        help="served size / requested",
    )
    add("--url-in-submit", action="store_true", help="answer submits with image URLs")
    add(
        "--unknown-task",
        choices=("9999", "404"),
        default=d.unknown_task,
        help="how a poll for an unknown taskid is answered: code 9999 or HTTP 404",
    )
    add(
        "--max-active-tasks",
        type=t.optional(t.non_negative_int),
        default=None,
        help="queued+running cap",
    )
    add(
        "--max-rps",
        type=t.optional(t.non_negative_float),
        default=None,
        help="submit rate limit",
    )
    add(
        "--task-ttl",
        type=t.optional(t.non_negative_float),
        default=None,
        help="forget finished tasks after",
    )


def config_from_args(ns: argparse.Namespace) -> SimulatorConfig:
    """Build the config from add_arguments() results; raises ValueError if invalid."""
    values = {
        f.name: getattr(ns, f.name)
        for f in fields(SimulatorConfig)
        if hasattr(ns, f.name)
    }
    return SimulatorConfig(**values)
