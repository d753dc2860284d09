"""The key form is decided once per run: the pure flow, then the client under load."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from batch_runner.errors import AuthError
from batch_runner.models import JobSpec
from batch_runner.wire.auth import KeyForms, Verdict
from batch_runner.wire.client import ZImageClient

KEY = "k-123"
REFUSED = AuthError("API key rejected (HTTP 401)", http_status=401)


def test_bearer_first_then_the_raw_key_once() -> None:
    """Bearer is tried first; its rejection moves to the raw key, on trial; a
    success settles it for the run."""
    forms = KeyForms.for_key(KEY)
    assert forms.current == (0, f"Bearer {KEY}") and not forms.on_trial
    assert forms.rejected(0, REFUSED) is Verdict.RESEND
    assert forms.current == (1, KEY) and forms.on_trial
    # a request still in flight with the old form is told to resend, not to
    # move the choice again
    assert forms.rejected(0, REFUSED) is Verdict.RESEND and forms.current[0] == 1
    forms.accepted(1)
    assert forms.settled and not forms.on_trial


def test_both_forms_refused_rejects_the_key_for_good() -> None:
    """When the last form is refused too, every later request is rejected."""
    forms = KeyForms.for_key(KEY)
    forms.rejected(0, REFUSED)
    assert forms.rejected(1, REFUSED) is Verdict.REJECTED
    assert forms.rejection is REFUSED and not forms.on_trial
    assert forms.rejected(0, REFUSED) is Verdict.REJECTED


def test_a_settled_form_refused_later_means_a_revoked_key() -> None:
    """After a success, a 401 is not a reason to try the other form."""
    forms = KeyForms.for_key(KEY)
    forms.accepted(0)
    assert forms.rejected(0, REFUSED) is Verdict.REJECTED
    assert forms.current == (0, f"Bearer {KEY}")


@pytest.mark.integration
@pytest.mark.parametrize("accepts", ["raw", "nothing"])
async def test_concurrent_requests_decide_the_form_once(accepts: str) -> None:
    """Eight requests at once against a server that wants the raw key (or no key
    of ours): at most 8 + 1 are refused in all, and later calls are not sent
    once the key is known to be rejected."""
    headers: list[str | None] = []
    gate = asyncio.Event()

    async def submit(request: web.Request) -> web.Response:
        headers.append(request.headers.get("Authorization"))
        if len(headers) >= 8:
            gate.set()
        await gate.wait()  # all eight are in flight before any is answered
        if accepts == "raw" and request.headers.get("Authorization") == KEY:
            return web.json_response({"code": 1000, "data": {"taskid": "t"}})
        return web.json_response({"code": 9999, "msg": "Invalid API key"}, status=401)

    app = web.Application()
    app.router.add_post("/v1/images/zimage", submit)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        client = ZImageClient(session, str(server.make_url("/")), KEY)
        job = JobSpec("j", "p")
        results = await asyncio.gather(
            *(client.submit(job) for _ in range(8)), return_exceptions=True
        )
        refused = [h for h in headers if accepts == "nothing" or h != KEY]
        if accepts == "raw":
            assert all(not isinstance(r, BaseException) for r in results)
            assert headers.count(f"Bearer {KEY}") == 8
            assert headers.count(KEY) == 8  # the trial plus the seven resends
        else:
            assert all(isinstance(r, AuthError) for r in results)
            assert len(refused) == 8 + 1
            with pytest.raises(AuthError):
                await client.submit(job)
            assert len(headers) == 9  # rejected without sending
