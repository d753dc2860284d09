"""The HTTP client against the simulator on loopback: wire format and error mapping."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from batch_runner.errors import (
    AuthError,
    InsufficientCreditsError,
    PermanentApiError,
    TaskNotFoundError,
    TransientApiError,
)
from batch_runner.models import JobSpec
from batch_runner.simulator.app import SimulatorConfig, make_app
from batch_runner.store.images import SavedImage, save_image
from batch_runner.wire.client import ZImageClient

from .conftest import KEY, SimFactory

JOB = JobSpec(
    job_id="j", prompt="a red fox", resolution="16:9", seed=5, prompt_extend=False
)


async def fetch(client: ZImageClient, url: str, into: Path, stem: str) -> SavedImage:
    """Download one image through the client and save it the way a job does."""
    async with client.download(url) as body:
        return await save_image(body, into, stem)


async def test_submit_poll_download(
    sim: SimFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A job goes through submit, poll and download to a real PNG."""
    server = await sim()
    client = ZImageClient(session, server.url, KEY)
    sub = await client.submit(JOB)
    assert sub.taskid and sub.code == 1000
    res = await client.poll(sub.taskid)
    assert res.done and len(res.urls) == 1
    got = await fetch(client, res.urls[0], tmp_path, "j")
    assert got.path == tmp_path / "j.png"
    assert got.path.read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob("*.part"))
    stats = server.state.snapshot()
    assert stats["downloads_with_auth"] == 0


async def test_wrong_key_is_auth_error(
    sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """A rejected key raises AuthError, whose text does not contain the key."""
    server = await sim()
    client = ZImageClient(session, server.url, "wrong-key-xyz")
    with pytest.raises(AuthError) as info:
        await client.submit(JOB)
    assert "wrong-key-xyz" not in str(info.value)


async def test_credits_and_not_found(
    sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    """9000 maps to InsufficientCreditsError; an unknown taskid to TaskNotFoundError."""
    server = await sim(credits=1)
    client = ZImageClient(session, server.url, KEY)
    await client.submit(JOB)
    with pytest.raises(InsufficientCreditsError):
        await client.submit(JOB)
    with pytest.raises(TaskNotFoundError):
        await client.poll("zimg_nope")
    server404 = await sim(unknown_task="404")
    with pytest.raises(TaskNotFoundError):
        await ZImageClient(session, server404.url, KEY).poll("zimg_nope")


@pytest.mark.parametrize(
    "kind", ["500", "503", "429", "reset", "malformed", "9999", "hang"]
)
async def test_every_fault_kind_is_transient(
    sim: SimFactory, session: aiohttp.ClientSession, kind: str
) -> None:
    """Each simulated fault surfaces as a TransientApiError (retryable)."""
    server = await sim(
        fault_rate=1.0, fault_kinds=(kind,), hang_time=5.0, retry_after=0.5
    )
    client = ZImageClient(session, server.url, KEY, request_timeout=0.3)
    with pytest.raises(TransientApiError) as info:
        await client.submit(JOB)
    if kind == "429":
        assert info.value.retry_after == 0.5
    assert server.state.snapshot()["tasks_created"] == 0


async def test_unreachable_server_is_transient_and_not_sent(
    session: aiohttp.ClientSession,
) -> None:
    """Connection refused is transient and known not to have reached the server."""
    client = ZImageClient(session, "http://127.0.0.1:9", KEY, request_timeout=2)
    with pytest.raises(TransientApiError) as info:
        await client.submit(JOB)
    assert info.value.maybe_sent is False


async def test_multipart_always_and_key_only_to_api(
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Submits are multipart with exactly the documented fields; downloads carry no
    Authorization header even on the API's own host."""
    seen: dict[str, object] = {}

    async def submit(request: web.Request) -> web.Response:
        seen["ctype"] = request.content_type
        seen["auth"] = request.headers.get("Authorization")
        seen["form"] = dict(await request.post())
        return web.json_response(
            {
                "code": 1000,
                "msg": "ok",
                "data": {"taskid": "", "url": str(request.url.with_path("/img.png"))},
            }
        )

    async def image(request: web.Request) -> web.Response:
        seen["img_auth"] = request.headers.get("Authorization")
        return web.Response(
            body=b"\xff\xd8\xff\xe0" + b"0" * 100, content_type="image/jpeg"
        )

    app = web.Application()
    app.router.add_post("/v1/images/zimage", submit)
    app.router.add_get("/img.png", image)
    from aiohttp.test_utils import TestServer

    async with TestServer(app) as server:
        client = ZImageClient(session, str(server.make_url("/")), KEY)
        sub = await client.submit(JobSpec(job_id="x", prompt="p"))
        assert sub.urls and not sub.taskid
        got = await fetch(client, sub.urls[0], tmp_path, "x")
    assert seen["ctype"] == "multipart/form-data"
    assert seen["auth"] == f"Bearer {KEY}"
    assert seen["form"] == {"prompt": "p", "resolution": "1024*1024"}
    assert seen["img_auth"] is None
    assert got.path.name == "x.jpg"


async def test_download_guards(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Non-images, oversize bodies and non-http URLs are refused; nothing is left."""

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>not an image</html>", content_type="text/html")

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        await resp.prepare(request)
        await resp.write(b"\x89PNG\r\n\x1a\n" + b"0" * 5000)
        return resp

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    app = web.Application()
    app.router.add_get("/html", html)
    app.router.add_get("/huge", huge)
    app.router.add_get("/loop", loop)
    from aiohttp.test_utils import TestServer

    async with TestServer(app) as server:
        client = ZImageClient(
            session, str(server.make_url("/")), KEY, max_image_bytes=1000
        )
        with pytest.raises(PermanentApiError, match="not an image"):
            await fetch(client, str(server.make_url("/html")), tmp_path, "a")
        with pytest.raises(PermanentApiError, match="max-image-bytes"):
            await fetch(client, str(server.make_url("/huge")), tmp_path, "b")
        with pytest.raises(PermanentApiError, match="redirects"):
            await fetch(client, str(server.make_url("/loop")), tmp_path, "c")
        with pytest.raises(PermanentApiError, match="non-http"):
            await fetch(client, "file:///etc/passwd", tmp_path, "d")
    assert list(tmp_path.iterdir()) == []


async def test_raw_key_server_and_relative_urls(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A server that wants the bare key (as the docs' curl sends it) still works,
    and a relative image URL is fetched from the API host, without the key."""
    seen: list[str | None] = []

    async def submit(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != KEY:
            return web.json_response(
                {"code": 9999, "msg": "Invalid API key"}, status=401
            )
        form = await request.post()
        assert form["prompt"] == "p"
        return web.json_response({"code": 1000, "data": {"taskid": "t1"}})

    async def poll(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        # no image_status at all, only URLs: taken as done
        return web.json_response({"code": 1000, "data": {"url": ["/img/t1.png"]}})

    async def image(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(
            body=b"\x89PNG\r\n\x1a\n" + b"0" * 64,
            content_type="application/octet-stream",
        )

    app = web.Application()
    app.router.add_post("/v1/images/zimage", submit)
    app.router.add_post("/v1/images/infobytaskid", poll)
    app.router.add_get("/img/t1.png", image)
    from aiohttp.test_utils import TestServer

    async with TestServer(app) as server:
        client = ZImageClient(session, str(server.make_url("/")), KEY)
        sub = await client.submit(JobSpec(job_id="x", prompt="p"))
        res = await client.poll(sub.taskid)
        assert res.done
        got = await fetch(client, res.urls[0], tmp_path, "x")
    assert seen == [f"Bearer {KEY}", KEY, KEY, None]
    assert got.path.name == "x.png"  # octet-stream: extension from magic bytes


@pytest.mark.parametrize("prefix", ["/zimage", "/zimage/", "/gw/v2"])
async def test_base_url_path_prefix_is_kept(
    session: aiohttp.ClientSession, tmp_path: Path, prefix: str
) -> None:
    """A gateway base URL with a path (`https://gateway.example/zimage`) keeps its
    path: submit, poll and download all go through the prefix."""
    mount = "/" + prefix.strip("/")
    gateway = web.Application()
    gateway.add_subapp(mount, make_app(SimulatorConfig(key=KEY, generation_time=0)))
    runner = web.AppRunner(gateway)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}{prefix}"
        client = ZImageClient(session, url, KEY)
        sub = await client.submit(JOB)
        res = await client.poll(sub.taskid)
        assert res.done and res.urls[0].startswith(url.rstrip("/") + "/images/")
        got = await fetch(client, res.urls[0], tmp_path, "j")
        assert got.path.read_bytes().startswith(b"\x89PNG")
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "url", ["ftp://api.example", "127.0.0.1:1", "http://", "https://u:p@h.example"]
)
async def test_client_refuses_a_base_url_it_cannot_use(
    session: aiohttp.ClientSession, url: str
) -> None:
    """A library caller with a bad base URL gets a ValueError, not failed jobs."""
    with pytest.raises(ValueError, match="base URL"):
        ZImageClient(session, url, KEY)


@pytest.mark.pure
async def test_connect_timeout_is_known_not_sent() -> None:
    """A connection that timed out while connecting never carried the request,
    so it counts as unreachable, unlike a timeout waiting for the answer."""
    from batch_runner.wire.client import _map_transport_errors

    async def connect_timeout() -> None:
        raise aiohttp.ConnectionTimeoutError("Connection timeout to host")

    async def read_timeout() -> None:
        raise TimeoutError

    with pytest.raises(TransientApiError) as info:
        await _map_transport_errors(connect_timeout)
    assert info.value.maybe_sent is False
    with pytest.raises(TransientApiError) as info:
        await _map_transport_errors(read_timeout)
    assert info.value.maybe_sent is True
