"""The API key is redacted as a whole token where it could leak (logs, tracebacks,
log fields, server text, ledger outcome fields) and nowhere else: a user's prompts
and meta are stored exactly as given, and a short key does not mangle words."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from batch_runner.cli.logs import setup_logging
from batch_runner.cli.main import main
from batch_runner.errors import ApiError
from batch_runner.models import JobSpec, JobStatus
from batch_runner.redact import Redactor
from batch_runner.store.ledger import LedgerWriter, make_record
from batch_runner.wire.client import ZImageClient

from .procs import final_states

REAL_KEY = "sk-live-7Qz1x9Kp2VwT"
FAST = ["--no-progress", "--poll-interval", "0.02", "--mock-generation-time", "0.01"]


# -- the pure redactor -----------------------------------------------------------


def test_short_keys_are_redacted_only_as_whole_tokens() -> None:
    """Key `k` leaves "peak" alone; key `cat` leaves "category" alone."""
    assert Redactor(["k"])("peak concurrency 8; key k rejected") == (
        "peak concurrency 8; key *** rejected"
    )
    assert Redactor(["cat"])("category cat, cat. (cat)") == "category ***, ***. (***)"
    assert Redactor(["cat"])("concatenate") == "concatenate"


def test_realistic_key_is_redacted_wherever_it_stands_alone() -> None:
    """A real key is caught after `Bearer `, `=`, quotes and at the ends."""
    r = Redactor([REAL_KEY])
    for text in (
        f"Bearer {REAL_KEY}",
        f"key={REAL_KEY}&x=1",
        f"'{REAL_KEY}'",
        REAL_KEY,
        f'{{"Authorization": "{REAL_KEY}"}}',
    ):
        assert REAL_KEY not in r(text), text
    assert not Redactor(["", "  "])  # no secret: nothing to do
    assert Redactor([])("anything") == "anything"


TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789_-", min_size=1, max_size=12
)


@given(
    key=TOKEN,
    words=st.lists(
        st.one_of(TOKEN, st.sampled_from([" ", ".", ", ", "=", "/", "'", "-"])),
        max_size=20,
    ),
)
def test_redaction_removes_every_whole_token_and_nothing_else(
    key: str, words: list[str]
) -> None:
    """After redaction the key never stands as a whole token; text without such an
    occurrence is returned unchanged."""
    text = "".join(w if i % 3 else w + key for i, w in enumerate(words))
    out = Redactor([key])(text)
    token = re.compile(
        (r"(?<!\w)" if re.match(r"\w", key[0]) else "")
        + re.escape(key)
        + (r"(?!\w)" if re.match(r"\w", key[-1]) else "")
    )
    assert token.search(out) is None
    if token.search(text) is None:
        assert out == text


# -- logs ------------------------------------------------------------------------


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    yield io.StringIO()
    logger = logging.getLogger("batch_runner")
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()


def _logger(
    stream: io.StringIO, fmt: str, secret: str, log_file: Path | None = None
) -> logging.Logger:
    return setup_logging(
        fmt=fmt,
        console=logging.StreamHandler(stream),
        secrets=[secret],
        log_file=log_file,
    )


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_logs_redact_messages_fields_and_tracebacks_by_token(
    log_stream: io.StringIO, fmt: str, tmp_path: Path
) -> None:
    """Messages, `extra` fields and tracebacks lose the key, in text and JSON, on
    stderr and in the log file; ordinary words containing a short key survive."""
    log_file = tmp_path / "run.log"
    log = _logger(log_stream, fmt, "k", log_file)
    log.info("summary: peak concurrency %d", 8, extra={"detail": "sent k"})
    try:
        raise ApiError("server said: bad key k")
    except ApiError:
        log.exception("request failed for key %s", "k")
    for text in (log_stream.getvalue(), log_file.read_text()):
        assert "peak concurrency 8" in text
        assert not re.search(r"(?<!\w)k(?!\w)", text), text
        assert "bad key ***" in text and "Traceback" in text
        if fmt == "json":
            lines = [json.loads(line) for line in text.splitlines()]
            assert lines[0]["detail"] == "sent ***"
            assert len(lines) == 2 and "exc" in lines[1]


def test_logs_with_a_realistic_key(log_stream: io.StringIO) -> None:
    """A real key in a message, a field or an exception never reaches the log."""
    log = _logger(log_stream, "json", REAL_KEY)
    log.warning("Authorization: Bearer %s", REAL_KEY, extra={"headers": [REAL_KEY]})
    try:
        raise RuntimeError(f"echo {REAL_KEY}")
    except RuntimeError:
        log.exception("boom")
    assert REAL_KEY not in log_stream.getvalue()


# -- the ledger ------------------------------------------------------------------


async def test_ledger_keeps_the_users_data_and_redacts_outcome_text(
    tmp_path: Path,
) -> None:
    """With key `cat` the prompt and meta are stored as given; only text that came
    back from outside (the message) is redacted, as a whole token."""
    path = tmp_path / "ledger.jsonl"
    job = JobSpec(job_id="cat", prompt="a cat on a mat", meta={"animal": "cat"})
    async with LedgerWriter(path, secrets=["cat"]) as writer:
        await writer.append(
            make_record(job, JobStatus.FAILED, msg="invalid key cat (category 7)")
        )
    record = json.loads(path.read_text())
    assert record["prompt"] == "a cat on a mat"
    assert record["meta"] == {"animal": "cat"}
    assert record["job_id"] == "cat"
    assert record["msg"] == "invalid key *** (category 7)"


def test_short_key_run_stores_prompts_exactly_and_logs_whole_words(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A whole run with key `cat`, then `k`: the ledger and metadata.jsonl keep
    "a cat on a mat"; the summary reads "peak concurrency"."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "- {id: mat, prompt: 'a cat on a mat', meta: {animal: cat}}\n"
        "- {id: k, prompt: 'k is a letter'}\n"
    )
    for key in ("cat", "k"):
        out = tmp_path / key
        monkeypatch.setenv("TENSORSLAB_API_KEY", key)
        assert main(["run", str(manifest), "--mock", "--out", str(out), *FAST]) == 0
        err = capsys.readouterr().err
        assert "peak concurrency" in err
        states = final_states(out / "ledger.jsonl")
        assert states["mat"]["prompt"] == "a cat on a mat"
        assert states["mat"]["meta"] == {"animal": "cat"}
        assert states["k"]["prompt"] == "k is a letter"
        rows = [
            json.loads(line)
            for line in (out / "metadata.jsonl").read_text().splitlines()
        ]
        by_id = {row["job_id"]: row for row in rows}
        assert by_id["mat"]["prompt"] == "a cat on a mat"
        assert by_id["mat"]["meta_animal"] == "cat"
        assert by_id["k"]["prompt"] == "k is a letter"


# -- the client: text the server echoes back ---------------------------------------


async def _echo_server(key: str) -> web.AppRunner:
    """A server that echoes the Authorization header in its error messages."""

    async def submit(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        return web.json_response(
            {"code": 400, "msg": f"rejected request with {auth}", "data": {}},
            status=400,
        )

    async def poll(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        return web.json_response(
            {
                "code": 1000,
                "msg": f"ok for {auth}",
                "data": {
                    "taskid": "t1",
                    "image_status": 4,
                    "error_message": f"generation failed; caller {auth}",
                    "url": [],
                },
            }
        )

    app = web.Application()
    app.router.add_post("/v1/images/zimage", submit)
    app.router.add_post("/v1/images/infobytaskid", poll)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.mark.parametrize("key", [REAL_KEY, "cat"])
async def test_client_redacts_echoed_key_in_errors_and_results(key: str) -> None:
    """An error message or poll text that echoes the key reaches the caller
    with the key redacted as a whole token."""
    runner = await _echo_server(key)
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as session:
            client = ZImageClient(session, url, key, request_timeout=5)
            with pytest.raises(ApiError) as caught:
                await client.submit(JobSpec(job_id="j", prompt="a cat on a mat"))
            result = await client.poll("t1")
    finally:
        await runner.cleanup()
    for text in (str(caught.value), caught.value.message, result.msg):
        assert "Bearer ***" in text, text
        assert not re.search(rf"(?<!\w){re.escape(key)}(?!\w)", text), text
    assert result.error_message == "generation failed; caller Bearer ***"
