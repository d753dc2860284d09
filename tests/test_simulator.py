"""Tests of the Z-Image simulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from batch_runner.simulator.app import (
    FAULT_KINDS,
    RunningSimulator,
    SimulatorConfig,
    add_arguments,
    config_from_args,
    get_state,
    make_app,
    serve_forever,
    start_simulator,
)

AUTH = {"Authorization": "Bearer test-key"}
StartSim = Callable[..., Awaitable[RunningSimulator]]


@pytest.fixture
async def start() -> AsyncIterator[StartSim]:
    sims: list[RunningSimulator] = []

    async def _start(**knobs: Any) -> RunningSimulator:
        sim = await start_simulator(SimulatorConfig(**knobs))
        sims.append(sim)
        return sim

    yield _start
    for sim in sims:
        await sim.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def form(**fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        data.add_field(name, value)
    return data


async def post_form(
    http: aiohttp.ClientSession,
    sim: RunningSimulator,
    fields: dict[str, str],
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with http.post(
        f"{sim.url}/v1/images/zimage",
        data=form(**fields),
        headers=AUTH if headers is None else headers,
    ) as resp:
        return resp.status, await resp.json()


async def submit(
    http: aiohttp.ClientSession,
    sim: RunningSimulator,
    headers: dict[str, str] | None = None,
    **fields: str,
) -> tuple[int, Any]:
    return await post_form(http, sim, fields, headers)


async def poll(
    http: aiohttp.ClientSession, sim: RunningSimulator, taskid: str
) -> tuple[int, Any]:
    async with http.post(
        f"{sim.url}/v1/images/infobytaskid", json={"taskid": taskid}, headers=AUTH
    ) as resp:
        return resp.status, await resp.json()


async def fetch(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    async with http.get(url, headers=headers) as resp:
        return resp.status, resp.content_type, await resp.read()


def png_size(data: bytes) -> tuple[int, int]:
    """Check the PNG structure and return its (width, height)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    idat_len = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT"
    raw = zlib.decompress(data[41 : 41 + idat_len])
    assert len(raw) == height * (1 + 3 * width)
    assert data[-8:-4] == b"IEND"
    return width, height


async def test_lifecycle_queued_processing_done_then_png(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """A task goes 1 -> 2 -> 3 and its URL serves a PNG of resolution * scale."""
    sim = await start(generation_time=1.0, image_scale=0.125)
    status, body = await submit(http, sim, prompt="a red fox", resolution="16:9")
    assert (status, body["code"], body["msg"]) == (
        200,
        1000,
        "Task created successfully",
    )
    taskid = body["data"]["taskid"]
    assert taskid.startswith("zimg_") and len(taskid) == 21
    seen: list[int] = []
    while True:
        status, body = await poll(http, sim, taskid)
        assert (status, body["code"], body["msg"]) == (200, 1000, "OK")
        data = body["data"]
        seen.append(data["image_status"])
        if data["image_status"] == 3:
            break
        assert data["url"] == []
        await asyncio.sleep(0.02)
    assert seen[0] == 1 and 2 in seen and seen == sorted(seen)
    assert (data["width"], data["height"]) == (1344, 768)
    assert data["prompt"] == "a red fox" and data["taskid"] == taskid
    assert isinstance(data["origseed"], int) and "error_message" not in data
    assert len(data["starttime"]) == 19
    [url] = data["url"]
    assert url == f"{sim.url}/images/{taskid}_0.png"
    code, ctype, png = await fetch(http, url)
    assert (code, ctype) == (200, "image/png")
    assert png_size(png) == (168, 96)


async def test_stats_count_early_polls_and_how_late_tasks_are_found(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """Benchmarks read how a client polls: polls before the task was done, and
    the time from done to the first poll that saw it (counted once a task)."""
    sim = await start(generation_time=0.2)
    _, body = await submit(http, sim, prompt="a red fox")
    taskid = body["data"]["taskid"]
    _, body = await poll(http, sim, taskid)
    assert body["data"]["image_status"] in (1, 2)
    await asyncio.sleep(0.35)
    for _ in range(2):
        _, body = await poll(http, sim, taskid)
        assert body["data"]["image_status"] == 3
    async with http.get(f"{sim.url}/_sim/stats") as resp:
        stats = await resp.json()
    assert (stats["polls_total"], stats["polls_early"]) == (3, 1)
    assert stats["tasks_found_done"] == 1
    assert 0.1 <= stats["found_done_delay_s"] < 5.0


async def test_images_differ_by_seed_and_repeat_for_same_seed(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """Different seeds give different PNGs; the same (prompt, seed) the same PNG."""
    sim = await start(generation_time=0)
    images = []
    for seed in ("1", "2", "1"):
        _, body = await submit(http, sim, prompt="cat", seed=seed, resolution="64*32")
        _, info = await poll(http, sim, body["data"]["taskid"])
        assert info["data"]["origseed"] == int(seed)
        _, _, png = await fetch(http, info["data"]["url"][0])
        assert png_size(png) == (8, 8)
        images.append(png)
    assert images[0] != images[1] and images[0] == images[2]


async def test_default_resolution_and_server_seed(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """Without resolution/seed the task is 1024x1024 and the server picks a seed."""
    sim = await start(generation_time=0, image_scale=0.01)
    _, body = await submit(http, sim, prompt="dog", prompt_extend="1")
    _, info = await poll(http, sim, body["data"]["taskid"])
    assert (info["data"]["width"], info["data"]["height"]) == (1024, 1024)
    assert isinstance(info["data"]["origseed"], int)
    _, _, png = await fetch(http, info["data"]["url"][0])
    assert png_size(png) == (10, 10)


@pytest.mark.parametrize(
    ("resolution", "size"),
    [("1024x768", (1024, 768)), ("512*640", (512, 640)), ("3:4", (896, 1152))],
)
async def test_resolution_forms_accepted(
    start: StartSim,
    http: aiohttp.ClientSession,
    resolution: str,
    size: tuple[int, int],
) -> None:
    """WxH, W*H and ratio resolutions are accepted and reported as width/height."""
    sim = await start(generation_time=0)
    _, body = await submit(http, sim, prompt="p", resolution=resolution)
    _, info = await poll(http, sim, body["data"]["taskid"])
    assert (info["data"]["width"], info["data"]["height"]) == size


async def test_fail_marker_ends_in_status_4(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """A prompt with the fail marker ends in status 4 with an error_message."""
    sim = await start(generation_time=0)
    _, body = await submit(http, sim, prompt="boom [fail] here")
    status, info = await poll(http, sim, body["data"]["taskid"])
    assert (status, info["code"]) == (200, 1000)
    assert info["data"]["image_status"] == 4
    assert info["data"]["error_message"] == "simulated generation failure"
    assert info["data"]["url"] == []


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({}, False),
        ({"Authorization": "Bearer wrong"}, False),
        ({"Authorization": "wrong"}, False),
        ({"Authorization": "Bearer"}, False),
        ({"Authorization": "Bearer s3cret"}, True),
        ({"Authorization": "s3cret"}, True),
    ],
)
async def test_auth_with_configured_key(
    start: StartSim,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    ok: bool,
) -> None:
    """Only the configured key passes, as "Bearer <key>" or raw; else 401."""
    sim = await start(key="s3cret")
    status, body = await submit(http, sim, headers=headers, prompt="x")
    if ok:
        assert (status, body["code"]) == (200, 1000)
    else:
        assert (status, body) == (
            401,
            {"code": 9999, "msg": "Invalid API key", "data": {}},
        )
        assert sim.state.stats.auth_failures == 1
        assert sim.state.stats.tasks_created == 0


async def test_auth_without_key_needs_a_header(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """With no key configured any non-empty Authorization passes, none is 401."""
    sim = await start()
    assert (await submit(http, sim, headers={"Authorization": "x"}, prompt="p"))[
        0
    ] == 200
    assert (await submit(http, sim, headers={}, prompt="p"))[0] == 401
    async with http.post(
        f"{sim.url}/v1/images/infobytaskid", json={"taskid": "zimg_0"}
    ) as resp:
        assert resp.status == 401


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"prompt": "  "},
        {"prompt": "p", "resolution": "big"},
        {"prompt": "p", "resolution": "0*512"},
        {"prompt": "p", "resolution": "5:4"},
        {"prompt": "p", "seed": "abc"},
        {"prompt": "p", "seed": "1.5"},
        {"prompt": "p", "prompt_extend": "2"},
        {"prompt": "p", "negative": "ugly"},
    ],
)
async def test_invalid_submit_fields_are_400(
    start: StartSim, http: aiohttp.ClientSession, fields: dict[str, str]
) -> None:
    """Missing/blank prompt, bad resolution/seed/prompt_extend, unknown fields: 400."""
    sim = await start()
    status, body = await post_form(http, sim, fields)
    assert (status, body["code"]) == (400, 9999)
    if not fields.get("prompt", "").strip():
        assert body["msg"] == "prompt is required"
    assert sim.state.stats.tasks_created == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"json": {"prompt": "p"}}, {"data": {"prompt": "p"}}],
    ids=["json", "urlencoded"],
)
async def test_non_multipart_submit_is_400(
    start: StartSim, http: aiohttp.ClientSession, kwargs: dict[str, Any]
) -> None:
    """A submit that is not multipart/form-data is rejected with 400."""
    sim = await start()
    async with http.post(f"{sim.url}/v1/images/zimage", headers=AUTH, **kwargs) as resp:
        body = await resp.json()
    assert (resp.status, body["code"]) == (400, 9999)
    assert "multipart" in body["msg"]


@pytest.mark.parametrize(
    "raw", [b"not json", b"[]", b'{"id": "x"}', b'{"taskid": 5}'], ids=str
)
async def test_malformed_poll_body_is_400(
    start: StartSim, http: aiohttp.ClientSession, raw: bytes
) -> None:
    """A poll whose body is not {"taskid": "<string>"} is rejected with 400."""
    sim = await start()
    headers = {**AUTH, "Content-Type": "application/json"}
    async with http.post(
        f"{sim.url}/v1/images/infobytaskid", data=raw, headers=headers
    ) as resp:
        body = await resp.json()
    assert (resp.status, body["code"]) == (400, 9999)


async def test_credits_run_out_then_topped_up(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """After N submits the answer is 9000; /_sim/credits adds more."""
    sim = await start(credits=2)
    for _ in range(2):
        assert (await submit(http, sim, prompt="p"))[1]["code"] == 1000
    status, body = await submit(http, sim, prompt="p")
    assert (status, body) == (
        200,
        {"code": 9000, "msg": "Insufficient credits", "data": {}},
    )
    async with http.post(f"{sim.url}/_sim/credits", json={"add": 1}) as resp:
        stats = await resp.json()
    assert stats["credits_left"] == 1 and stats["tasks_created"] == 2
    assert (await submit(http, sim, prompt="p"))[1]["code"] == 1000
    async with http.get(f"{sim.url}/_sim/stats") as resp:
        stats = await resp.json()
    assert stats["credits_left"] == 0
    assert stats["tasks_by_prompt"] == {"p": 3}
    assert stats["submits_total"] == 4 and stats["credit_rejections"] == 1


async def test_unlimited_credits_stay_unlimited(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """Adding credits to an unlimited simulator keeps it unlimited; bad bodies 400."""
    sim = await start()
    async with http.post(f"{sim.url}/_sim/credits", json={"add": 5}) as resp:
        assert (await resp.json())["credits_left"] is None
    async with http.post(f"{sim.url}/_sim/credits", json={"add": "5"}) as resp:
        assert resp.status == 400


@pytest.mark.parametrize(
    ("style", "status", "body"),
    [
        ("9999", 200, {"code": 9999, "msg": "task not found", "data": {}}),
        ("404", 404, {"code": 9999, "msg": "task not found"}),
    ],
)
async def test_unknown_taskid_styles(
    start: StartSim,
    http: aiohttp.ClientSession,
    style: str,
    status: int,
    body: dict[str, Any],
) -> None:
    """An unknown taskid is answered as the unknown_task knob says."""
    sim = await start(unknown_task=style)
    assert await poll(http, sim, "zimg_0000000000000000") == (status, body)


async def test_task_ttl_forgets_finished_tasks(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """With task_ttl a finished task turns into an unknown taskid, images 404."""
    # a long ttl, and the clock moved past it by hand: a slow first poll on a
    # busy machine cannot find the task already gone
    sim = await start(generation_time=0, task_ttl=600)
    _, body = await submit(http, sim, prompt="p")
    taskid = body["data"]["taskid"]
    _, info = await poll(http, sim, taskid)
    assert info["data"]["image_status"] == 3
    assert (await fetch(http, info["data"]["url"][0]))[0] == 200
    sim.state.sweep(time.monotonic() + 601)
    assert (await poll(http, sim, taskid))[1]["code"] == 9999
    assert (await fetch(http, info["data"]["url"][0]))[0] == 404


async def test_url_in_submit_returns_ready_urls(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """In synchronous mode the submit carries images_per_task ready URLs."""
    sim = await start(generation_time=0.05, url_in_submit=True, images_per_task=2)
    _, body = await submit(http, sim, prompt="p", resolution="128*128")
    urls = body["data"]["url"]
    taskid = body["data"]["taskid"]
    assert urls == [f"{sim.url}/images/{taskid}_{k}.png" for k in range(2)]
    pngs = [(await fetch(http, url))[2] for url in urls]
    assert [png_size(p) for p in pngs] == [(16, 16), (16, 16)]
    assert pngs[0] != pngs[1]
    assert (await fetch(http, f"{sim.url}/images/{taskid}_2.png"))[0] == 404


async def test_image_404_before_done_and_for_unknown(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """Images of unfinished or unknown tasks are 404."""
    sim = await start(generation_time=5)
    _, body = await submit(http, sim, prompt="p")
    taskid = body["data"]["taskid"]
    assert (await fetch(http, f"{sim.url}/images/{taskid}_0.png"))[0] == 404
    assert (await fetch(http, f"{sim.url}/images/zimg_nope_0.png"))[0] == 404
    assert (await fetch(http, f"{sim.url}/images/junk"))[0] == 404


async def test_downloads_with_auth_is_counted(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """Downloads carrying an Authorization header are counted separately."""
    sim = await start(generation_time=0)
    _, body = await submit(http, sim, prompt="p")
    _, info = await poll(http, sim, body["data"]["taskid"])
    url = info["data"]["url"][0]
    assert (await fetch(http, url))[0] == 200
    assert (await fetch(http, url, headers=AUTH))[0] == 200
    stats = sim.state.stats
    assert (stats.downloads_total, stats.downloads_with_auth) == (2, 1)


async def test_max_active_tasks_gives_429_with_retry_after(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """Over max_active_tasks a submit gets 429 + Retry-After and creates no task."""
    sim = await start(generation_time=5, max_active_tasks=1, retry_after=2.5)
    assert (await submit(http, sim, prompt="a"))[0] == 200
    async with http.post(
        f"{sim.url}/v1/images/zimage", data=form(prompt="b"), headers=AUTH
    ) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "2.5"
    stats = sim.state.stats
    assert stats.rejected_429_limit == 1 and stats.tasks_created == 1
    assert stats.active_tasks == 1 and stats.tasks_by_prompt == {"a": 1}


async def test_max_rps_limits_submits(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """More than max_rps submits within a second are answered 429."""
    sim = await start(max_rps=2)
    codes = [(await submit(http, sim, prompt="p"))[0] for _ in range(3)]
    assert codes == [200, 200, 429]
    assert sim.state.stats.rejected_429_limit == 1


async def test_latency_delays_api_responses(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """latency is added to each API response."""
    sim = await start(latency=0.1)
    began = time.monotonic()
    await submit(http, sim, prompt="p")
    assert time.monotonic() - began >= 0.1


FAULT_CHECKS: dict[str, Callable[[aiohttp.ClientResponse], Awaitable[None]]] = {}


def _fault_check(
    kind: str,
) -> Callable[
    [Callable[[aiohttp.ClientResponse], Awaitable[None]]],
    Callable[[aiohttp.ClientResponse], Awaitable[None]],
]:
    def register(
        fn: Callable[[aiohttp.ClientResponse], Awaitable[None]],
    ) -> Callable[[aiohttp.ClientResponse], Awaitable[None]]:
        FAULT_CHECKS[kind] = fn
        return fn

    return register


@_fault_check("500")
async def _check_500(resp: aiohttp.ClientResponse) -> None:
    assert resp.status == 500 and resp.content_type == "text/plain"


@_fault_check("503")
async def _check_503(resp: aiohttp.ClientResponse) -> None:
    assert resp.status == 503
    assert await resp.json() == {"code": 9999, "msg": "Service Unavailable"}


@_fault_check("429")
async def _check_429(resp: aiohttp.ClientResponse) -> None:
    assert resp.status == 429 and resp.headers["Retry-After"] == "0.2"


@_fault_check("hang")
async def _check_hang(resp: aiohttp.ClientResponse) -> None:
    assert resp.status == 503


@_fault_check("malformed")
async def _check_malformed(resp: aiohttp.ClientResponse) -> None:
    assert resp.status == 200 and resp.content_type == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(await resp.read())


@_fault_check("9999")
async def _check_9999(resp: aiohttp.ClientResponse) -> None:
    assert resp.status == 200
    assert await resp.json() == {"code": 9999, "msg": "Internal error", "data": {}}


@pytest.mark.parametrize("endpoint", ["zimage", "infobytaskid"])
@pytest.mark.parametrize("kind", sorted(FAULT_CHECKS))
async def test_fault_kind_seen_by_client(
    start: StartSim, http: aiohttp.ClientSession, kind: str, endpoint: str
) -> None:
    """Each answering fault kind reaches the client as specified; no task, no credit."""
    sim = await start(
        fault_rate=1.0,
        fault_kinds=(kind,),
        retry_after=0.2,
        hang_time=0.05,
        credits=1,
    )
    payload: dict[str, Any] = (
        {"data": form(prompt="p")}
        if endpoint == "zimage"
        else {"json": {"taskid": "zimg_0"}}
    )
    url = f"{sim.url}/v1/images/{endpoint}"
    async with http.post(url, headers=AUTH, **payload) as resp:
        await FAULT_CHECKS[kind](resp)
    stats = sim.state.stats
    assert stats.faults_injected == {kind: 1}
    assert stats.tasks_created == 0 and stats.credits_left == 1


async def test_reset_fault_drops_connection_quietly(
    start: StartSim, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A reset fault drops the connection, with no server-side error logged."""
    sim = await start(fault_rate=1.0, fault_kinds=("reset",))
    with caplog.at_level(logging.DEBUG):
        for _ in range(2):
            with pytest.raises(aiohttp.ClientConnectionError):
                await submit(http, sim, prompt="p")
        await asyncio.sleep(0.05)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sim.state.stats.faults_injected == {"reset": 2}
    assert sim.state.stats.tasks_created == 0


async def test_hang_fault_outlasts_client_timeout_and_close_is_quick(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """A hang trips the client timeout, and closing does not wait for hang_time
    (an hour here: waiting for it would trip the suite's timeout)."""
    sim = await start(fault_rate=1.0, fault_kinds=("hang",), hang_time=3600)
    with pytest.raises(TimeoutError):
        await http.post(
            f"{sim.url}/v1/images/zimage",
            data=form(prompt="p"),
            headers=AUTH,
            timeout=aiohttp.ClientTimeout(total=0.2),
        )
    await sim.close()
    assert sim.state.closing.is_set()
    assert sim.state.stats.faults_injected == {"hang": 1}


async def _outcomes(sim: RunningSimulator, http: aiohttp.ClientSession) -> list[Any]:
    results: list[Any] = []
    for i in range(24):
        if i % 3:
            url = f"{sim.url}/v1/images/infobytaskid"
            kwargs: dict[str, Any] = {"json": {"taskid": "zimg_0"}}
        else:
            url = f"{sim.url}/v1/images/zimage"
            kwargs = {"data": form(prompt=f"p{i}")}
        async with http.post(url, headers=AUTH, **kwargs) as resp:
            text = await resp.text()
            code = json.loads(text)["code"] if resp.status != 500 else None
            results.append((resp.status, code))
    return results


async def test_faults_are_deterministic_per_seed(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """The same seed and request order give the same faults; another seed differs."""
    knobs: dict[str, Any] = {"fault_rate": 0.5, "fault_kinds": ("500", "503", "9999")}
    runs = []
    for seed in (7, 7, 8):
        sim = await start(seed=seed, **knobs)
        runs.append(await _outcomes(sim, http))
        await sim.close()
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    statuses = [status for status, _ in runs[0]]
    assert 200 in statuses and len(set(statuses)) > 1


async def test_stats_reset_keeps_credits(
    start: StartSim, http: aiohttp.ClientSession
) -> None:
    """POST /_sim/reset-stats zeroes counters but keeps credits_left."""
    sim = await start(credits=3)
    await submit(http, sim, prompt="p")
    async with http.post(f"{sim.url}/_sim/reset-stats") as resp:
        stats = await resp.json()
    assert stats["submits_total"] == 0 and stats["credits_left"] == 2
    assert get_state(make_app(SimulatorConfig())).stats.requests_total == 0


def test_config_rejects_bad_knobs() -> None:
    """Invalid knob values raise ValueError at construction."""
    for bad in (
        {"fault_rate": 1.5},
        {"fault_kinds": ("boom",)},
        {"unknown_task": "410"},
        {"image_scale": 0.0},
        {"latency": -1.0},
    ):
        with pytest.raises(ValueError):
            SimulatorConfig(**bad)


def test_cli_arguments_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    """add_arguments + config_from_args map every flag to its knob."""
    monkeypatch.setenv("TENSORSLAB_API_KEY", "env-key")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args([])
    assert (ns.host, ns.port) == ("127.0.0.1", 8765)
    assert config_from_args(ns) == SimulatorConfig(key="env-key")
    ns = parser.parse_args(
        shlex.split(
            "--host 0.0.0.0 --port 0 --key k --generation-time 2 --latency 0.1"
            " --fault-rate 0.3 --fault-kinds 500,reset --retry-after 0.5"
            " --hang-time 3 --seed 9 --credits 10 --fail-marker !x"
            " --images-per-task 3 --image-scale 0.5 --url-in-submit"
            " --unknown-task 404 --max-active-tasks 4 --max-rps 2.5"
            " --task-ttl 60"
        )
    )
    assert (ns.host, ns.port) == ("0.0.0.0", 0)
    assert config_from_args(ns) == SimulatorConfig(
        key="k",
        generation_time=2,
        latency=0.1,
        fault_rate=0.3,
        fault_kinds=("500", "reset"),
        retry_after=0.5,
        hang_time=3,
        seed=9,
        credits=10,
        fail_marker="!x",
        images_per_task=3,
        image_scale=0.5,
        url_in_submit=True,
        unknown_task="404",
        max_active_tasks=4,
        max_rps=2.5,
        task_ttl=60,
    )
    assert set(FAULT_KINDS) >= set(SimulatorConfig().fault_kinds)
    with pytest.raises(SystemExit):
        parser.parse_args(["--fault-kinds", "500,boom"])


async def test_serve_forever_prints_url_and_serves(
    capsys: pytest.CaptureFixture[str], http: aiohttp.ClientSession
) -> None:
    """serve_forever prints one listening line, serves, and stops on cancel."""
    task = asyncio.create_task(serve_forever(SimulatorConfig(), "127.0.0.1", 0))
    out = ""
    for _ in range(200):
        await asyncio.sleep(0.01)
        out += capsys.readouterr().out
        if out:
            break
    prefix = "Z-Image simulator listening on http://127.0.0.1:"
    assert out.startswith(prefix) and out.endswith("\n") and out.count("\n") == 1
    url = out.strip().removeprefix("Z-Image simulator listening on ")
    async with http.get(f"{url}/_sim/stats") as resp:
        assert resp.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
