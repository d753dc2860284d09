"""Envelope classification and request fields, without a server."""

from __future__ import annotations

import json

import pytest

from batch_runner.errors import (
    AuthError,
    InsufficientCreditsError,
    PermanentApiError,
    TaskNotFoundError,
    TransientApiError,
)
from batch_runner.models import JobSpec
from batch_runner.wire.protocol import (
    classify_http,
    normalize_urls,
    parse_poll,
    parse_retry_after,
    parse_submit,
    submit_fields,
)


def body(code: object, msg: str = "", data: object = None) -> bytes:
    return json.dumps({"code": code, "msg": msg, "data": data or {}}).encode()


def test_submit_fields_send_only_what_is_set() -> None:
    """resolution is always sent; seed and prompt_extend only when set (0 included)."""
    job = JobSpec(job_id="a", prompt="p")
    assert submit_fields(job) == [("prompt", "p"), ("resolution", "1024*1024")]
    job = JobSpec(
        job_id="a", prompt="p", resolution="16:9", seed=0, prompt_extend=False
    )
    assert submit_fields(job) == [
        ("prompt", "p"),
        ("resolution", "16:9"),
        ("seed", "0"),
        ("prompt_extend", "0"),
    ]


def test_success_envelope_is_returned() -> None:
    """A 200 with code 1000 comes back as the parsed envelope."""
    env = classify_http(200, body(1000, "ok", {"taskid": "t1"}), None, polling=False)
    assert parse_submit(env).taskid == "t1"


@pytest.mark.parametrize("status", [401, 403])
def test_http_auth_errors(status: int) -> None:
    """HTTP 401/403 mean the key was rejected."""
    with pytest.raises(AuthError, match="API key rejected"):
        classify_http(status, b"", None, polling=False)


@pytest.mark.parametrize(
    "msg", ["Invalid API key", "api key is invalid", "token expired", "Missing apikey"]
)
def test_body_saying_key_invalid_is_auth_error(msg: str) -> None:
    """A 200 body whose message says the key is bad is an auth error too."""
    with pytest.raises(AuthError):
        classify_http(200, body(9999, msg), None, polling=False)


def test_credits() -> None:
    """Code 9000 raises InsufficientCreditsError whatever the HTTP status."""
    with pytest.raises(InsufficientCreditsError):
        classify_http(200, body(9000, "Insufficient credits"), None, polling=False)
    with pytest.raises(InsufficientCreditsError):
        classify_http(402, body(9000, "no"), None, polling=False)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 408])
def test_retryable_statuses(status: int) -> None:
    """429, 408 and 5xx are transient; Retry-After is carried along."""
    with pytest.raises(TransientApiError) as info:
        classify_http(status, b"oops", "3", polling=False)
    assert info.value.retry_after == 3.0
    assert info.value.http_status == status


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1,2]", b'{"msg":"no code"}'])
def test_malformed_bodies_are_transient(raw: bytes) -> None:
    """A 200 whose body is not an envelope is retried, not trusted."""
    with pytest.raises(TransientApiError, match="malformed"):
        classify_http(200, raw, None, polling=True)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"code": 1000, "msg": "ok", "data": {"taskid": "t1", "score": NaN}}',
        '{"code": 1000, "data": {"taskid": "t1"}}'.encode("utf-16"),
        b'{"code": 1000, "data": {"taskid": "t1", "note": "\\ud800"}}',
        b'{"code": 1000, "data": {"taskid": "t1", "big": 123456789012345678901234}}',
    ],
)
def test_envelopes_the_fast_parser_refuses_are_still_read(raw: bytes) -> None:
    """What the standard library's json accepts stays accepted (NaN, UTF-16,
    a lone surrogate escape, integers beyond 64 bits): liberal in what we read."""
    assert parse_submit(classify_http(200, raw, None, polling=False)).taskid == "t1"


def test_9999_is_transient_and_unknown_codes_too() -> None:
    """9999 and undocumented codes are failures worth a bounded retry."""
    for code in (9999, 1234):
        with pytest.raises(TransientApiError) as info:
            classify_http(200, body(code, "Internal error"), None, polling=False)
        assert not isinstance(info.value, TaskNotFoundError)
        assert info.value.code == code


def test_task_not_found_on_poll() -> None:
    """A poll answered 404 or 'task not found' is TaskNotFoundError."""
    with pytest.raises(TaskNotFoundError):
        classify_http(404, body(9999, "no"), None, polling=True)
    with pytest.raises(TaskNotFoundError):
        classify_http(200, body(9999, "task not found"), None, polling=True)
    with pytest.raises(TaskNotFoundError):
        classify_http(200, body(9999, "Task does not exist"), None, polling=True)


def test_other_4xx_are_permanent() -> None:
    """A 400 on submit is the request's fault: retrying will not help."""
    with pytest.raises(PermanentApiError):
        classify_http(400, body(9999, "prompt is required"), None, polling=False)


def test_retry_after_forms() -> None:
    """Retry-After accepts seconds and HTTP dates, and ignores garbage."""
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    date = "Wed, 21 Oct 2015 07:28:10 GMT"
    assert parse_retry_after(date, now=1445412480.0) == 10.0


def test_urls_string_or_list() -> None:
    """`url` may be a string, a list, empty or junk."""
    assert normalize_urls("http://x/a.png") == ("http://x/a.png",)
    assert normalize_urls(["a", "", 3, "b"]) == ("a", "b")
    assert normalize_urls("") == ()
    assert normalize_urls(None) == ()


def test_parse_poll_is_liberal() -> None:
    """String statuses and missing fields do not break polling."""
    res = parse_poll(
        {
            "code": 1000,
            "msg": "OK",
            "data": {"image_status": "3", "url": "http://x/y.png"},
        }
    )
    assert res.done and res.urls == ("http://x/y.png",)
    res = parse_poll({"code": 1000, "msg": "OK", "data": {"image_status": 7}})
    assert not res.done and not res.failed
    res = parse_poll({"code": 1000, "msg": "OK", "data": None})
    assert res.status is None
    res = parse_poll(
        {"code": 1000, "data": {"image_status": 4, "error_message": "nsfw"}}
    )
    assert res.failed and res.error_message == "nsfw"


def test_submit_without_taskid_is_malformed() -> None:
    """A success envelope with neither taskid nor url cannot be acted on."""
    with pytest.raises(TransientApiError):
        parse_submit({"code": 1000, "msg": "ok", "data": {}})
    sync = parse_submit({"code": 1000, "data": {"taskid": "", "url": "http://x/a.png"}})
    assert sync.urls == ("http://x/a.png",)
