"""The object-store layer (store/remote.py, store/sync.py) against a real S3 server."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_runner.errors import (
    MissingExtraError,
    StoreError,
    StoreExistsError,
    StoreNotFoundError,
)
from batch_runner.store.remote import (
    ObjectInfo,
    RemoteUrl,
    Store,
    default_state_dir,
    is_remote,
    open_store,
    parse_url,
)
from batch_runner.store.sync import SegmentedLog, download_log, segment_key
from tests.s3server import Bucket

# -- pure: URLs and the state directory -------------------------------------------


def test_is_remote_tells_urls_from_paths() -> None:
    """Any scheme:// is an object store except file://; plain paths are local."""
    assert is_remote("s3://bucket/prefix")
    assert is_remote("gs://b")
    assert is_remote("memory://x/y")
    assert not is_remote("runs/x")
    assert not is_remote(Path("/abs/s3:/x"))
    assert not is_remote("file:///tmp/x")


def test_parse_url_normalises_slashes_and_refuses_no_bucket() -> None:
    """Doubled and trailing slashes vanish; a URL without a bucket is an error."""
    url = parse_url("S3://my-bucket//runs/night/")
    assert url == RemoteUrl("s3", "my-bucket", "runs/night")
    assert url.url == "s3://my-bucket/runs/night"
    assert url.child("images/a.png") == "s3://my-bucket/runs/night/images/a.png"
    assert parse_url("s3://b").url == "s3://b"
    with pytest.raises(StoreError, match="no bucket"):
        parse_url("s3:///prefix")
    with pytest.raises(StoreError, match=r"'\.\.'"):
        parse_url("s3://b/a/../c")


def test_default_state_dir_is_under_xdg_cache_and_per_url(tmp_path: Path) -> None:
    """The state dir lives in $XDG_CACHE_HOME (else ~/.cache), one per URL."""
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    a = default_state_dir(parse_url("s3://b/run-a"), env)
    b = default_state_dir(parse_url("s3://b/run_a"), env)
    assert a.parent == tmp_path / "zimage-batch-runner"
    assert a.name.startswith("b-run-a-")
    assert a != b  # readable parts collide, digests do not
    assert default_state_dir(parse_url("s3://b/run-a/"), env) == a
    home = default_state_dir(parse_url("s3://b/x"), {})
    assert home.parent == Path.home() / ".cache" / "zimage-batch-runner"


# -- the store against moto --------------------------------------------------------


async def test_put_get_list_round_trip(s3_bucket: Bucket, tmp_path: Path) -> None:
    """Bytes and a streamed multi-MB file land under the prefix and read back."""
    store = open_store(s3_bucket.url("runs/one"))
    await store.put_bytes("images/a.png", b"\x89PNG-a")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024 + 17))  # above one multipart chunk
    await store.put_file("images/big.bin", big)
    assert s3_bucket.keys() == ["runs/one/images/a.png", "runs/one/images/big.bin"]
    assert s3_bucket.get("runs/one/images/big.bin") == big.read_bytes()
    assert await store.get_bytes("images/a.png") == b"\x89PNG-a"
    listed = await store.list("images")
    assert [(i.key, i.size) for i in listed] == [
        ("images/a.png", 6),
        ("images/big.bin", big.stat().st_size),
    ]
    out = tmp_path / "back.bin"
    await store.get_file("images/big.bin", out)
    assert out.read_bytes() == big.read_bytes()
    assert await store.list("nothing-here") == []
    with pytest.raises(StoreNotFoundError):
        await store.get_bytes("images/missing.png")


async def test_create_only_put_never_overwrites(s3_bucket: Bucket) -> None:
    """A create-only write of an existing key fails and leaves the object alone."""
    store = open_store(s3_bucket.url())
    await store.put_bytes("ledger/000001.jsonl", b"first\n", create=True)
    with pytest.raises(StoreExistsError):
        await store.put_bytes("ledger/000001.jsonl", b"second\n", create=True)
    assert s3_bucket.get("run/ledger/000001.jsonl") == b"first\n"


async def test_objects_carry_a_content_type_from_their_name(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """Images, the gallery and JSONL get their MIME types, so a served bucket
    shows them in a browser."""
    store = open_store(s3_bucket.url())
    page = tmp_path / "index.html"
    page.write_text("<html></html>")
    await store.put_file("index.html", page)
    await store.put_bytes("images/a.png", b"\x89PNG")
    await store.put_bytes("ledger/000001.jsonl", b"{}\n", create=True)

    def kind(key: str) -> str:
        head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)
        return str(head["ContentType"])

    assert kind("run/index.html") == "text/html; charset=utf-8"
    assert kind("run/images/a.png") == "image/png"
    assert kind("run/ledger/000001.jsonl") == "application/x-ndjson"


async def test_unreachable_endpoint_is_a_store_error(
    s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead endpoint surfaces as StoreError (one line), not a library traceback."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    store = open_store(s3_bucket.url(), retry_timeout=1)
    with pytest.raises(StoreError) as caught:
        await store.list("ledger")
    assert "\n" not in str(caught.value)


def test_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without obstore installed, opening an s3:// URL names the extra to install."""
    monkeypatch.setitem(sys.modules, "obstore.store", None)
    with pytest.raises(MissingExtraError, match=r"zimage-batch-runner\[s3\]"):
        open_store("s3://bucket/prefix")


# -- ledger segments ------------------------------------------------------------


async def test_sync_uploads_whole_lines_as_numbered_segments(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """Each sync writes the complete lines since the last one as the next segment."""
    store = open_store(s3_bucket.url())
    local = tmp_path / "ledger.jsonl"
    local.write_bytes(b'{"a":1}\n{"b":2}\n{"c":')  # a line still being written
    log = SegmentedLog(store, local, "ledger")
    assert await log.open() == "nothing in the bucket yet"
    assert await log.sync() == 16
    assert await log.sync() == 0  # nothing new: no empty segment
    with local.open("ab") as fh:
        fh.write(b'3}\n{"d":4}\n')
    assert await log.sync() == 16
    assert s3_bucket.keys("run/ledger/") == [
        "run/ledger/000001.jsonl",
        "run/ledger/000002.jsonl",
    ]
    assert s3_bucket.get("run/ledger/000002.jsonl") == b'{"c":3}\n{"d":4}\n'


async def test_lost_state_restores_from_segments(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """A new machine rebuilds the file from the bucket and continues the numbering."""
    store = open_store(s3_bucket.url())
    local = tmp_path / "a" / "ledger.jsonl"
    local.parent.mkdir()
    local.write_bytes(b"one\ntwo\n")
    first = SegmentedLog(store, local, "ledger")
    await first.open()
    await first.sync()
    with local.open("ab") as fh:
        fh.write(b"three\n")
    await first.sync()

    fresh = tmp_path / "b" / "ledger.jsonl"
    second = SegmentedLog(store, fresh, "ledger")
    assert "restored from 2 segment(s)" in await second.open()
    assert fresh.read_bytes() == b"one\ntwo\nthree\n"
    with fresh.open("ab") as fh:
        fh.write(b"four\n")
    await second.sync()
    assert s3_bucket.get(f"run/{segment_key('ledger', 3)}") == b"four\n"


async def test_kept_state_resumes_where_the_bucket_stands(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """With the local copy kept, only lines the bucket lacks are uploaded next."""
    store = open_store(s3_bucket.url())
    local = tmp_path / "ledger.jsonl"
    local.write_bytes(b"one\n")
    log = SegmentedLog(store, local, "ledger")
    await log.open()
    await log.sync()
    # killed before the next sync: these lines exist only locally
    with local.open("ab") as fh:
        fh.write(b"two\n")
    again = SegmentedLog(store, local, "ledger")
    assert "holds all 1 segment(s)" in await again.open()
    await again.sync()
    assert s3_bucket.get("run/ledger/000002.jsonl") == b"two\n"


async def test_upload_whose_answer_was_lost_is_recognised(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """A segment already there with the same bytes counts as synced; other bytes
    mean a second writer, which is refused."""
    store = open_store(s3_bucket.url())
    local = tmp_path / "ledger.jsonl"
    local.write_bytes(b"one\n")
    log = SegmentedLog(store, local, "ledger")
    await log.open()
    s3_bucket.put("run/ledger/000001.jsonl", b"one\n")  # as if our PUT went through
    assert await log.sync() == 4
    with local.open("ab") as fh:
        fh.write(b"two\n")
    s3_bucket.put("run/ledger/000002.jsonl", b"someone else\n")
    with pytest.raises(StoreError, match="another run"):
        await log.sync()


async def test_state_dir_of_another_run_is_refused(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """A local file that is not the bucket's content is an error, not a silent mix."""
    store = open_store(s3_bucket.url())
    s3_bucket.put("run/ledger/000001.jsonl", b"bucket line\n")
    local = tmp_path / "ledger.jsonl"
    local.write_bytes(b"other run!!!\n")
    with pytest.raises(StoreError, match="does not match"):
        await SegmentedLog(store, local, "ledger").open()


async def test_stale_state_dir_catches_up_from_the_bucket(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """A local copy that is an older prefix of the bucket fetches what it lacks."""
    store = open_store(s3_bucket.url())
    s3_bucket.put("run/ledger/000001.jsonl", b"one\n")
    s3_bucket.put("run/ledger/000002.jsonl", b"two\n")
    local = tmp_path / "ledger.jsonl"
    local.write_bytes(b"one\n")
    assert "caught up 1" in await SegmentedLog(store, local, "ledger").open()
    assert local.read_bytes() == b"one\ntwo\n"


async def test_download_log_ignores_stray_objects(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """Only numbered segments, in numeric order, make up the downloaded file."""
    store = open_store(s3_bucket.url())
    s3_bucket.put("run/ledger/000010.jsonl", b"ten\n")
    s3_bucket.put("run/ledger/000009.jsonl", b"nine\n")
    s3_bucket.put("run/ledger/notes.txt", b"junk\n")
    dest = tmp_path / "ledger.jsonl"
    assert await download_log(store, "ledger", dest) == 2
    assert dest.read_bytes() == b"nine\nten\n"


# -- the same logic through fsspec, many histories at once ----------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.binary(min_size=0, max_size=30)),
        st.tuples(st.just("sync"), st.none()),
        st.tuples(st.just("lose-state"), st.none()),
    ),
    max_size=25,
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
async def test_any_history_restores_every_synced_line(
    tmp_path: Path, ops: list[tuple[str, bytes | None]]
) -> None:
    """Whatever appends, syncs and lost state dirs happen, the bucket's segments
    concatenate to exactly the whole lines synced so far, and a restored file
    continues from there."""
    store = open_store(f"memory://h-{secrets.token_hex(6)}/run")
    workdir = tmp_path / secrets.token_hex(4)
    workdir.mkdir()
    local = workdir / "ledger.jsonl"
    log = SegmentedLog(store, local, "ledger")
    await log.open()
    expected_synced = b""
    written = b""
    for op, data in ops:
        if op == "append":
            assert data is not None
            line = data.replace(b"\n", b" ") + b"\n"
            written += line
            with local.open("ab") as fh:
                fh.write(line)
        elif op == "sync":
            await log.sync()
            expected_synced = written
        else:
            local.unlink(missing_ok=True)
            written = expected_synced
            log = SegmentedLog(store, local, "ledger")
            await log.open()
            assert (local.read_bytes() if local.exists() else b"") == expected_synced
    await log.sync()
    check = workdir / "check.jsonl"
    await download_log(store, "ledger", check)
    assert (check.read_bytes() if check.exists() else b"") == written


# -- the run's bucket: uploads and the final sync ------------------------------


def _saved_png(images_dir: Path, stem: str) -> Path:
    """An image as store.images.save_image leaves it: complete, in place."""
    images_dir.mkdir(parents=True, exist_ok=True)
    path = images_dir / f"{stem}.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n-image")
    return path


async def test_image_goes_up_then_leaves_the_local_disk(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """A saved image is uploaded under images/ and deleted locally."""
    from batch_runner.engine.uploads import bucket_publisher
    from batch_runner.store.bucket import BucketRun

    run = BucketRun(open_store(s3_bucket.url()), tmp_path / "state")
    await run.open()
    path = _saved_png(run.images_dir, "job-1")
    await bucket_publisher(run)(path)
    assert not path.exists()
    assert s3_bucket.get("run/images/job-1.png") == b"\x89PNG\r\n\x1a\n-image"


async def test_upload_failure_is_a_retryable_download_error(
    s3_bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket that cannot take the image is a transient failure (retried like
    a download, then a download-stage failure); the file stays for the retry
    and the next run's start clears it."""
    from batch_runner.engine.uploads import bucket_publisher
    from batch_runner.errors import TransientApiError
    from batch_runner.store.bucket import BucketRun

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    run = BucketRun(open_store(s3_bucket.url(), retry_timeout=1), tmp_path / "s")
    path = _saved_png(run.images_dir, "job-1")
    with pytest.raises(TransientApiError, match="cannot upload"):
        await bucket_publisher(run)(path)
    assert path.exists()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_bucket.endpoint)
    await BucketRun(open_store(s3_bucket.url()), tmp_path / "s").open()
    assert list(run.images_dir.iterdir()) == []


async def test_final_sync_failure_is_reported_and_keeps_the_records(
    s3_bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the bucket is gone at the stop, close() says so (False) and the
    records stay in the state dir; the next run with it uploads them."""
    from batch_runner.store.bucket import BucketRun

    state = tmp_path / "state"
    run = BucketRun(open_store(s3_bucket.url()), state)
    await run.open()
    (state / "ledger.jsonl").write_bytes(b'{"job_id":"a"}\n')
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    dead = BucketRun(open_store(s3_bucket.url(), retry_timeout=1), state)
    assert await dead.close() is False
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_bucket.endpoint)
    again = BucketRun(open_store(s3_bucket.url()), state)
    await again.open()
    assert await again.close() is True
    assert s3_bucket.get("run/ledger/000001.jsonl") == b'{"job_id":"a"}\n'


async def test_torn_last_segment_is_tolerated(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """A last segment cut mid-line (a store without atomic writes) restores as a
    torn ledger line: skipped with a warning, and later records still count."""
    from batch_runner.store.ledger import LedgerWriter, read_ledger

    store = open_store(s3_bucket.url())
    good = b'{"job_id":"a","status":"failed","taskid":null,"stage":"submit"}\n'
    s3_bucket.put("run/ledger/000001.jsonl", good)
    s3_bucket.put("run/ledger/000002.jsonl", b'{"job_id":"b","sta')
    local = tmp_path / "ledger.jsonl"
    log = SegmentedLog(store, local, "ledger")
    assert "restored from 2" in await log.open()
    async with LedgerWriter(local) as writer:
        await writer.append({"job_id": "c", "status": "failed", "taskid": None})
    await log.sync()
    whole = tmp_path / "whole.jsonl"
    await download_log(store, "ledger", whole)
    state = read_ledger(whole)
    assert {"a", "c"} <= set(state.failed) and "b" not in state.failed
    assert any("skipped unreadable line" in w for w in state.warnings)


class _LosesOneAnswer:
    """A Store whose first create-only PUT lands but whose answer is lost."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.lost = False

    async def put_bytes(self, key: str, data: bytes, *, create: bool = False) -> None:
        await self.inner.put_bytes(key, data, create=create)
        if not self.lost:
            self.lost = True
            raise StoreError("timed out waiting for the answer")

    async def put_file(self, key: str, path: Path) -> None:
        await self.inner.put_file(key, path)

    async def get_bytes(self, key: str) -> bytes:
        return await self.inner.get_bytes(key)

    async def get_file(self, key: str, path: Path) -> None:
        await self.inner.get_file(key, path)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await self.inner.list(prefix)


async def test_segment_landed_unseen_then_more_lines_is_adopted(
    s3_bucket: Bucket, tmp_path: Path
) -> None:
    """A segment whose PUT landed but whose answer was lost (or was cancelled at
    a stop) is recognised even after more lines were written: the next sync
    counts it and uploads only the rest (regression: it used to refuse the
    bucket as written by "another run")."""
    store = _LosesOneAnswer(open_store(s3_bucket.url()))
    local = tmp_path / "ledger.jsonl"
    local.write_bytes(b"one\n")
    log = SegmentedLog(store, local, "ledger")
    await log.open()
    with pytest.raises(StoreError):
        await log.sync()
    with local.open("ab") as fh:
        fh.write(b"two\n")
    assert await log.sync() == 8
    assert s3_bucket.get("run/ledger/000001.jsonl") == b"one\n"
    assert s3_bucket.get("run/ledger/000002.jsonl") == b"two\n"
    assert await log.sync() == 0
