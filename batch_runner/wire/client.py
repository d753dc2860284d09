"""The Z-Image HTTP client: one request per call, every failure mapped to an ApiError.

Retries, pacing and bookkeeping live in the engine; writing images lives in the
store. This layer only speaks HTTP. The API key is attached per request to API
calls and never to image downloads, which may live on another host.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

import aiohttp
from yarl import URL

from batch_runner.errors import (
    ApiError,
    AuthError,
    PermanentApiError,
    TransientApiError,
)
from batch_runner.jsontext import dumps
from batch_runner.models import JobSpec
from batch_runner.redact import Redactor
from batch_runner.wire.api import ImageBody
from batch_runner.wire.auth import KeyForms, Verdict
from batch_runner.wire.protocol import (
    POLL_PATH,
    SUBMIT_PATH,
    PollResult,
    SubmitResult,
    classify_http,
    multipart_body,
    parse_poll,
    parse_retry_after,
    parse_submit,
    submit_fields,
)
from batch_runner.wire.urls import api_url, check_base_url

T = TypeVar("T")
P = ParamSpec("P")

#: API envelopes are tiny; anything bigger is not an envelope
MAX_ENVELOPE_BYTES = 1 << 20
DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
#: bodies of a declared length up to this are read whole, in one call
_WHOLE_BODY = 1 << 20
#: result fields that carry the server's own words, which may echo the request
_FREE_TEXT = ("msg", "error_message")


def _redacted(
    method: Callable[Concatenate[ZImageClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[ZImageClient, P], Coroutine[Any, Any, T]]:
    """Redact the key from what a call hands back: a server may echo the request
    (its headers included) in an error message or in a result's text."""

    async def call(self: ZImageClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            result = await method(self, *args, **kwargs)
        except ApiError as exc:
            self._scrub(exc)
            raise
        if dataclasses.is_dataclass(result) and not isinstance(result, type):
            # only free text: taskids and URLs are needed verbatim
            changed = {
                name: clean
                for name in _FREE_TEXT
                if isinstance(text := getattr(result, name, None), str)
                and (clean := self._redact(text)) != text
            }
            if changed:
                result = dataclasses.replace(result, **changed)
        return result

    functools.update_wrapper(call, method)
    return call


class ZImageClient:
    """Submit, poll and download against one base URL, over a caller-owned session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        *,
        request_timeout: float = 60.0,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    ) -> None:
        self._session = session
        self._base = check_base_url(base_url)
        self._redact = Redactor([api_key])
        self._keys = KeyForms.for_key(api_key)
        #: trial requests of a fallback key form go one at a time
        self._key_lock = asyncio.Lock()
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._max_image_bytes = max_image_bytes
        self._submit_url = api_url(self._base, SUBMIT_PATH)
        self._poll_url = api_url(self._base, POLL_PATH)
        self._boundary = "zimage-" + secrets.token_hex(12)

    @_redacted
    async def submit(self, job: JobSpec) -> SubmitResult:
        """POST the job as multipart; returns the taskid (and URLs if synchronous)."""
        # Always multipart, as documented, even though every field is text.
        body, content_type = multipart_body(submit_fields(job), self._boundary)
        envelope = await self._api_call(
            lambda headers: self._session.post(
                self._submit_url,
                data=body,
                headers={**headers, "Content-Type": content_type},
                timeout=self._timeout,
            ),
            polling=False,
        )
        return parse_submit(envelope)

    @_redacted
    async def poll(self, taskid: str) -> PollResult:
        """Ask for the task's status and, when done, its image URLs."""
        envelope = await self._api_call(
            lambda headers: self._session.post(
                self._poll_url,
                # bytes, not json=: aiohttp would run the stdlib encoder per poll
                data=dumps({"taskid": taskid}),
                headers={**headers, "Content-Type": "application/json"},
                timeout=self._timeout,
            ),
            polling=True,
        )
        return parse_poll(envelope)

    async def _api_call(
        self,
        send: Callable[[dict[str, str]], Any],
        *,
        polling: bool,
    ) -> dict[str, Any]:
        while True:
            if self._keys.on_trial:
                async with self._key_lock:
                    # still deciding once we hold the lock: send under it
                    if self._keys.on_trial:
                        envelope = await self._exchange(send, polling=polling)
                        if envelope is not None:
                            return envelope
                        continue
            envelope = await self._exchange(send, polling=polling)
            if envelope is not None:
                return envelope

    async def _exchange(
        self, send: Callable[[dict[str, str]], Any], *, polling: bool
    ) -> dict[str, Any] | None:
        """One request with the current key form; None: resend with another form."""
        rejection = self._keys.rejection
        if rejection is not None:
            # the key was rejected earlier in this run: do not send it again
            raise AuthError(
                rejection.message,
                code=rejection.code,
                http_status=rejection.http_status,
            )
        index, header = self._keys.current

        async def exchange() -> tuple[int, bytes, str | None]:
            async with send({"Authorization": header}) as resp:
                body = await _read_capped(resp, MAX_ENVELOPE_BYTES)
                return resp.status, body, resp.headers.get("Retry-After")

        status, body, retry_after = await _map_transport_errors(exchange)
        try:
            envelope = classify_http(status, body, retry_after, polling=polling)
        except AuthError as exc:
            if self._keys.rejected(index, exc) is Verdict.RESEND:
                return None
            raise
        self._keys.accepted(index)
        return envelope

    @contextlib.asynccontextmanager
    async def download(self, url: str) -> AsyncIterator[ImageBody]:
        """Open one image; the body streams, capped at `max_image_bytes`.

        Only the opening and the reading are mapped to ApiErrors: whatever the
        caller raises while it handles the bytes passes through untouched.
        """

        async def open_image() -> aiohttp.ClientResponse:
            resp = await self._session.get(
                target, timeout=self._timeout, max_redirects=MAX_REDIRECTS
            )
            if resp.status != 200:
                resp.release()
                _raise_for_download_status(resp.status, resp.headers.get("Retry-After"))
            declared = resp.content_length
            if declared is not None and declared > self._max_image_bytes:
                resp.release()
                raise PermanentApiError(
                    f"image is {declared} bytes, over --max-image-bytes"
                )
            return resp

        try:
            target = URL(url)
            if not target.is_absolute() and not target.scheme:
                # a relative URL is taken to live on the API's host
                target = self._base.join(target)
            if target.scheme not in ("http", "https") or not target.host:
                raise PermanentApiError(
                    f"refusing to download non-http(s) URL: {url!r}"
                )
            resp = await _map_transport_errors(open_image)
        except ApiError as exc:
            # the URL came from the API's answer, which may echo the request
            self._scrub(exc)
            raise
        try:
            yield _ResponseBody(resp, self._max_image_bytes)
        finally:
            resp.release()

    def _scrub(self, exc: ApiError) -> None:
        """Redact the key from an error's message, in place."""
        clean = self._redact(exc.message)
        if clean != exc.message:
            exc.message = clean
            exc.args = (clean, *exc.args[1:])


class _ResponseBody:
    """An aiohttp response body as an ImageBody: chunks, transport errors mapped."""

    def __init__(self, resp: aiohttp.ClientResponse, limit: int) -> None:
        self._resp = resp
        self._limit = limit
        self._size = 0
        # a body of known, small length is read in one call: most images are,
        # and chunked reads cost a call per chunk plus one to find the end
        length = resp.content_length
        self._whole = length is not None and length <= _WHOLE_BODY

    @property
    def content_type(self) -> str | None:
        return self._resp.headers.get("Content-Type")

    def __aiter__(self) -> _ResponseBody:
        return self

    async def __anext__(self) -> bytes:
        if self._whole:
            if self._size:
                raise StopAsyncIteration
            chunk = await _map_transport_errors(self._resp.read)
        else:
            chunk = await _map_transport_errors(lambda: self._resp.content.read(_CHUNK))
        if not chunk:
            raise StopAsyncIteration
        self._size += len(chunk)
        if self._size > self._limit:
            raise PermanentApiError(f"image exceeds --max-image-bytes ({self._limit})")
        return chunk


def _raise_for_download_status(status: int, retry_after: str | None) -> None:
    # 404 may be a CDN that has not caught up yet; it is retried a bounded number
    # of times like 5xx, then the job is recorded failed at the download stage.
    if status in (404, 408, 429) or status >= 500:
        raise TransientApiError(
            f"image download HTTP {status}",
            http_status=status,
            retry_after=parse_retry_after(retry_after),
        )
    raise PermanentApiError(f"image download HTTP {status}", http_status=status)


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    declared = resp.content_length
    if declared is not None and declared <= limit:
        # HTTP/1.1 framing stops the body at its declared length
        return await resp.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise TransientApiError(
                f"response body over {limit} bytes", http_status=resp.status
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _map_transport_errors(call: Callable[[], Awaitable[T]]) -> T:
    """Run one exchange; network-level failures become TransientApiError."""
    try:
        return await call()
    except ApiError:
        raise
    except aiohttp.ClientConnectorError as exc:
        # the connection was never made (refused, DNS, TLS), so the request cannot
        # have been billed
        raise TransientApiError(
            f"cannot connect: {exc.os_error or exc}", maybe_sent=False
        ) from exc
    except aiohttp.ConnectionTimeoutError as exc:
        # timed out while connecting: nothing was sent either
        raise TransientApiError(
            "cannot connect: connection timed out", maybe_sent=False
        ) from exc
    except aiohttp.TooManyRedirects as exc:
        raise PermanentApiError(f"too many redirects (> {MAX_REDIRECTS})") from exc
    except aiohttp.InvalidURL as exc:
        raise PermanentApiError(f"invalid URL: {exc}") from exc
    except TimeoutError as exc:
        raise TransientApiError("request timed out") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise TransientApiError("server closed the connection") from exc
    except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
        raise TransientApiError(f"bad response: {type(exc).__name__}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TransientApiError(f"network error: {type(exc).__name__}") from exc
