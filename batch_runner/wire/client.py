"""The Z-Image HTTP client: one request per call, every failure mapped to an ApiError.

Retries, pacing and bookkeeping live in the runner; this layer only speaks HTTP.
The API key is attached per request to API calls and never to image downloads,
which may live on another host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import os
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import aiofiles
import aiohttp
from yarl import URL

from batch_runner.errors import (
    ApiError,
    AuthError,
    PermanentApiError,
    TransientApiError,
)
from batch_runner.models import JobSpec
from batch_runner.redact import Redactor
from batch_runner.store.images import extension_for, image_size, sniff_extension
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
#: enough of the file to recognise it and, for JPEG, usually to find its size
_HEAD_BYTES = 64 * 1024
#: bodies up to this size are written in one go, without a thread
_SMALL_IMAGE = 256 * 1024
#: result fields that carry the server's own words, which may echo the request
_FREE_TEXT = ("msg", "error_message")


@dataclass(frozen=True, slots=True)
class DownloadedFile:
    """An image that is complete and renamed into place."""

    path: Path
    size: int
    sha256: str = ""
    width: int | None = None
    height: int | None = None


def _redacted(
    method: Callable[Concatenate[ZImageClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[ZImageClient, P], Coroutine[Any, Any, T]]:
    """Redact the key from what a call hands back: a server may echo the request
    (its headers included) in an error message or in a result's text."""

    async def call(self: ZImageClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            result = await method(self, *args, **kwargs)
        except ApiError as exc:
            clean = self._redact(exc.message)
            if clean != exc.message:
                exc.message = clean
                exc.args = (clean, *exc.args[1:])
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
        self._key = api_key
        self._redact = Redactor([api_key])
        self._auth = {"Authorization": f"Bearer {api_key}"}
        #: until one request succeeds we may still learn the server wants the raw
        #: key, as the docs' curl sample sends it
        self._auth_settled = False
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._max_image_bytes = max_image_bytes
        self._submit_url = api_url(self._base, SUBMIT_PATH)
        self._poll_url = api_url(self._base, POLL_PATH)
        self._boundary = "zimage-" + secrets.token_hex(12)
        self._tmp_counter = itertools.count()

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
                json={"taskid": taskid},
                headers=headers,
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
        async def exchange(headers: dict[str, str]) -> tuple[int, bytes, str | None]:
            async with send(headers) as resp:
                body = await _read_capped(resp, MAX_ENVELOPE_BYTES)
                return resp.status, body, resp.headers.get("Retry-After")

        status, body, retry_after = await _map_transport_errors(
            lambda: exchange(self._auth)
        )
        try:
            envelope = classify_http(status, body, retry_after, polling=polling)
        except AuthError:
            if self._auth_settled:
                raise
            # Every known client sends "Bearer <key>", the docs' sample the bare
            # key; a server that refuses one form gets the other, once.
            raw = {"Authorization": self._key}
            status, body, retry_after = await _map_transport_errors(
                lambda: exchange(raw)
            )
            envelope = classify_http(status, body, retry_after, polling=polling)
            self._auth = raw
        self._auth_settled = True
        return envelope

    @_redacted
    async def download(self, url: str, images_dir: Path, stem: str) -> DownloadedFile:
        """Stream one image to a temp file, check it is an image, rename into place.

        A partial file never carries the final name, so a crash mid-download
        leaves only a `.part` file that the next run ignores and replaces.
        """
        target = URL(url)
        if not target.is_absolute() and not target.scheme:
            # a relative URL is taken to live on the API's host
            target = self._base.join(target)
        if target.scheme not in ("http", "https") or not target.host:
            raise PermanentApiError(f"refusing to download non-http(s) URL: {url!r}")
        # unique within this process; stale ones from dead runs are removed at start
        tmp = images_dir / f".{stem}.{os.getpid()}-{next(self._tmp_counter)}.part"

        async def fetch() -> DownloadedFile:
            try:
                async with self._session.get(
                    target,
                    timeout=self._timeout,
                    max_redirects=MAX_REDIRECTS,
                ) as resp:
                    if resp.status != 200:
                        _raise_for_download_status(
                            resp.status, resp.headers.get("Retry-After")
                        )
                    declared = resp.content_length
                    if declared is not None and declared > self._max_image_bytes:
                        raise PermanentApiError(
                            f"image is {declared} bytes, over --max-image-bytes"
                        )
                    size, head, digest = await self._stream_to(resp, tmp)
                    ext = sniff_extension(head)
                    if ext is None:
                        raise PermanentApiError(
                            f"downloaded file is not an image ({size} bytes, "
                            f"Content-Type {resp.content_type!r})"
                        )
                    final = images_dir / (
                        stem + extension_for(resp.headers.get("Content-Type"), head)
                    )
                    os.replace(tmp, final)
                    dims = image_size(head)
                    return DownloadedFile(
                        path=final,
                        size=size,
                        sha256=digest,
                        width=dims[0] if dims else None,
                        height=dims[1] if dims else None,
                    )
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

        return await _map_transport_errors(fetch)

    async def _stream_to(
        self, resp: aiohttp.ClientResponse, tmp: Path
    ) -> tuple[int, bytes, str]:
        """Write the body to `tmp`; returns size, the first bytes, and sha256.

        Small bodies are written with one plain write: three thread hops through
        aiofiles cost more than writing a few hundred KiB to the page cache.
        Larger ones stream through aiofiles so the loop never blocks on them.
        """
        digest = hashlib.sha256()
        buffered: list[bytes] = []
        size = 0
        chunks = resp.content.iter_chunked(_CHUNK)
        async for chunk in chunks:
            size += len(chunk)
            self._check_size(size)
            digest.update(chunk)
            buffered.append(chunk)
            if size > _SMALL_IMAGE:
                break
        else:
            data = b"".join(buffered)
            with tmp.open("wb") as out:
                out.write(data)
            return size, data[:_HEAD_BYTES], digest.hexdigest()
        head = b"".join(buffered)[:_HEAD_BYTES]
        async with aiofiles.open(tmp, "wb") as out:
            await out.write(b"".join(buffered))
            buffered.clear()
            async for chunk in chunks:
                size += len(chunk)
                self._check_size(size)
                digest.update(chunk)
                await out.write(chunk)
        return size, head, digest.hexdigest()

    def _check_size(self, size: int) -> None:
        if size > self._max_image_bytes:
            raise PermanentApiError(
                f"image exceeds --max-image-bytes ({self._max_image_bytes})"
            )


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
        # the connection was never made, so the request cannot have been billed
        raise TransientApiError(
            f"cannot connect: {exc.os_error or exc}", maybe_sent=False
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
