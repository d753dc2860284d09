"""What the Z-Image wire format means: request fields out, envelopes in. Pure, no I/O.

Liberal in what we accept (section 8 of the API notes lists what is undocumented):
a `url` may be a string or a list, `image_status` may arrive as a string, an
unknown status means "keep polling", an unknown envelope code is treated like
9999. Conservative in what we send: only documented fields, always multipart.
"""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass
from typing import Any

from batch_runner.errors import (
    AuthError,
    InsufficientCreditsError,
    PermanentApiError,
    TaskNotFoundError,
    TransientApiError,
)
from batch_runner.jsontext import loads
from batch_runner.models import JobSpec

CODE_SUCCESS = 1000
CODE_INSUFFICIENT_CREDITS = 9000
CODE_FAILURE = 9999

STATUS_QUEUED = 1
STATUS_PROCESSING = 2
STATUS_DONE = 3
STATUS_FAILED = 4

SUBMIT_PATH = "/v1/images/zimage"
POLL_PATH = "/v1/images/infobytaskid"

# Servers word these differently and none is documented; match loosely, both orders.
_AUTH_WORDS = re.compile(
    r"(invalid|wrong|incorrect|expired|missing|revoked|unauthori[sz]ed|bad)\W+"
    r"(\w+\W+)?(api[\s_-]?key|apikey|token|key|credential)"
    r"|(api[\s_-]?key|apikey|token)\W+(\w+\W+)?"
    r"(invalid|expired|missing|revoked|not\s+valid|not\s+found|required)",
    re.IGNORECASE,
)
_NOT_FOUND_WORDS = re.compile(
    r"not\s+(be\s+)?(found|exist)|does\s*n[o']t\s+exist|no\s+such\s+task|"
    r"unknown\s+task|invalid\s+task|task\s+expired",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """A task the server accepted; `urls` is non-empty only in synchronous mode."""

    taskid: str
    urls: tuple[str, ...]
    code: int
    msg: str


@dataclass(frozen=True, slots=True)
class PollResult:
    """One look at a task; `status` is the raw image_status (None if absent)."""

    status: int | None
    urls: tuple[str, ...]
    error_message: str
    code: int
    msg: str

    @property
    def done(self) -> bool:
        # a server that omits image_status but hands out URLs is finished too
        return self.status == STATUS_DONE or (self.status is None and bool(self.urls))

    @property
    def failed(self) -> bool:
        return self.status == STATUS_FAILED


def submit_fields(job: JobSpec) -> list[tuple[str, str]]:
    """Form fields for a submit: resolution always, seed/prompt_extend only when set."""
    fields = [("prompt", job.prompt), ("resolution", job.resolution)]
    if job.seed is not None:
        fields.append(("seed", str(job.seed)))
    if job.prompt_extend is not None:
        fields.append(("prompt_extend", "1" if job.prompt_extend else "0"))
    return fields


def multipart_body(fields: list[tuple[str, str]], boundary: str) -> tuple[bytes, str]:
    """Encode text fields as multipart/form-data; returns (body, content type).

    Built by hand because every submit pays for it: aiohttp's MultipartWriter
    costs more per request than everything else the runner does for a job. The
    format is RFC 7578: CRLF line ends, one `form-data` part per field.
    """
    while any(boundary in value for _, value in fields):
        boundary += "x"  # the boundary must not occur inside a value
    dash = f"--{boundary}\r\n".encode()
    parts = [
        dash
        + f'Content-Disposition: form-data; name="{name}"\r\n'
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n".encode()
        + value.encode()
        + b"\r\n"
        for name, value in fields
    ]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, 3600.0))


def normalize_urls(value: Any) -> tuple[str, ...]:
    """`url` as documented is a list on poll and a string on submit; accept both."""
    if isinstance(value, str):
        return (value,) if value.strip() else ()
    if isinstance(value, list | tuple):
        return tuple(u for u in value if isinstance(u, str) and u.strip())
    return ()


def _excerpt(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", "replace")
    return " ".join(text.split())


def classify_http(
    http_status: int,
    body: bytes,
    retry_after_header: str | None,
    *,
    polling: bool,
) -> dict[str, Any]:
    """Turn a raw HTTP answer into the envelope dict, or raise the matching ApiError.

    Only bodies that parse to a JSON object with an integer-like `code` come back;
    everything else raises. `polling` selects the "task not found" reading of 404
    and of failure envelopes.
    """
    envelope = _decode_envelope(body)
    msg = str(envelope.get("msg", "")) if envelope is not None else ""
    code = _as_int(envelope.get("code")) if envelope is not None else None

    if http_status in (401, 403) or (
        code != CODE_SUCCESS and msg and _AUTH_WORDS.search(msg)
    ):
        raise AuthError(
            f"API key rejected (HTTP {http_status}"
            + (f", code {code}" if code is not None else "")
            + (f": {msg}" if msg else "")
            + ")",
            code=code,
            http_status=http_status,
        )
    if code == CODE_INSUFFICIENT_CREDITS:
        raise InsufficientCreditsError(
            msg or "insufficient credits", code=code, http_status=http_status
        )
    retry_after = parse_retry_after(retry_after_header)
    if http_status == 429 or http_status == 408 or http_status >= 500:
        raise TransientApiError(
            f"HTTP {http_status}: {msg or _excerpt(body) or 'no body'}",
            code=code,
            http_status=http_status,
            retry_after=retry_after,
        )
    if polling and (http_status == 404 or (msg and _NOT_FOUND_WORDS.search(msg))):
        raise TaskNotFoundError(
            f"task not found (HTTP {http_status}: {msg or 'no message'})",
            code=code,
            http_status=http_status,
        )
    if http_status >= 400:
        raise PermanentApiError(
            f"HTTP {http_status}: {msg or _excerpt(body) or 'no body'}",
            code=code,
            http_status=http_status,
        )
    if envelope is None or code is None:
        raise TransientApiError(
            f"malformed response (HTTP {http_status}): {_excerpt(body) or 'empty'}",
            http_status=http_status,
            retry_after=retry_after,
        )
    if code != CODE_SUCCESS:
        # 9999 and any undocumented code: the docs call it "failure", which in
        # practice is often momentary, so callers retry it a bounded number of times.
        raise TransientApiError(
            f"code {code}: {msg or 'failure'}",
            code=code,
            http_status=http_status,
            retry_after=retry_after,
        )
    return envelope


def _decode_envelope(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def parse_submit(envelope: dict[str, Any]) -> SubmitResult:
    """A 1000 envelope from submit; without a taskid or url it is malformed."""
    data = envelope.get("data")
    data = data if isinstance(data, dict) else {}
    taskid = data.get("taskid", data.get("task_id", ""))
    taskid = str(taskid) if isinstance(taskid, str | int) else ""
    urls = normalize_urls(data.get("url", data.get("urls")))
    if not taskid and not urls:
        raise TransientApiError(
            "malformed submit response: no taskid", code=_as_int(envelope.get("code"))
        )
    return SubmitResult(
        taskid=taskid,
        urls=urls,
        code=int(envelope.get("code", CODE_SUCCESS)),
        msg=str(envelope.get("msg", "")),
    )


def parse_poll(envelope: dict[str, Any]) -> PollResult:
    """A 1000 envelope from infobytaskid."""
    data = envelope.get("data")
    data = data if isinstance(data, dict) else {}
    status = _as_int(data.get("image_status"))
    error = data.get("error_message") or data.get("message") or ""
    return PollResult(
        status=status,
        urls=normalize_urls(data.get("url")),
        error_message=str(error),
        code=int(envelope.get("code", CODE_SUCCESS)),
        msg=str(envelope.get("msg", "")),
    )
