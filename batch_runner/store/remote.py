"""Object-store URLs as run directories: parse them, place their state, talk to them.

s3://, gs:// and az:// go through obstore (the `s3` extra); any other scheme
through fsspec when fsspec and the scheme's package are installed. Nothing here
knows about ledgers or jobs: store/sync.py builds on these few calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import mimetypes
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from batch_runner.errors import (
    MissingExtraError,
    StoreError,
    StoreExistsError,
    StoreNotFoundError,
)

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore, RetryConfig

T = TypeVar("T")
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")
#: schemes obstore speaks natively; `file` is left to the local code paths
OBSTORE_SCHEMES = frozenset({"s3", "s3a", "gs", "az", "azure", "abfs", "abfss"})
EXTRA_HINT = "pip install 'zimage-batch-runner[s3]'"
#: images and segments above this go up as multipart uploads, streamed from disk
MULTIPART_CHUNK = 8 * 1024 * 1024


def is_remote(location: str | os.PathLike[str]) -> bool:
    """True for `scheme://...` (an object store), False for a local path."""
    match = _URL.match(os.fspath(location))
    return match is not None and match["scheme"].lower() != "file"


@dataclass(frozen=True, slots=True)
class RemoteUrl:
    """`scheme://bucket/prefix`, normalised (no trailing slash)."""

    scheme: str
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        tail = f"/{self.prefix}" if self.prefix else ""
        return f"{self.scheme}://{self.bucket}{tail}"

    def child(self, rel: str) -> str:
        """The URL of an object of the run, for messages and users."""
        return f"{self.url}/{rel}"

    def __str__(self) -> str:
        return self.url


def parse_url(text: str) -> RemoteUrl:
    """Split an object-store URL; raises StoreError when it names no bucket."""
    match = _URL.match(text.strip())
    if match is None:
        raise StoreError(f"not an object-store URL: {text!r}")
    scheme = match["scheme"].lower()
    bucket, _, prefix = match["rest"].partition("/")
    prefix = "/".join(p for p in prefix.split("/") if p)
    if not bucket:
        raise StoreError(f"{text!r}: no bucket (expected {scheme}://BUCKET/PREFIX)")
    if any(p in (".", "..") for p in prefix.split("/")):
        raise StoreError(f"{text!r}: '.' and '..' are not allowed in the prefix")
    return RemoteUrl(scheme, bucket, prefix)


def default_state_dir(url: RemoteUrl, env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CACHE_HOME/zimage-batch-runner/<readable>-<digest>` for this URL.

    The digest keeps two URLs apart whose readable parts collide; the readable
    part lets a person find the folder of a given bucket.
    """
    env = os.environ if env is None else env
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    digest = hashlib.sha256(url.url.encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{url.bucket}-{url.prefix}")
    readable = readable.strip("-.")[:60] or "run"
    return Path(cache) / "zimage-batch-runner" / f"{readable}-{digest}"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object under the run's prefix: its key relative to it, and its size."""

    key: str
    size: int


class Store(Protocol):
    """The few object-store calls a run needs; keys are relative to the run URL."""

    url: RemoteUrl

    async def put_bytes(self, key: str, data: bytes, *, create: bool = False) -> None:
        """Write one object; with `create`, fail (StoreExistsError) if it exists."""

    async def put_file(self, key: str, path: Path) -> None:
        """Upload a local file, streamed (multipart when large)."""

    async def get_bytes(self, key: str) -> bytes:
        """The whole object; StoreNotFoundError if there is none."""

    async def get_file(self, key: str, path: Path) -> None:
        """Download an object to a local file, streamed."""

    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix/`, sorted by key."""


_CONTENT_TYPES = {
    ".jsonl": "application/x-ndjson",
    ".html": "text/html; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".avif": "image/avif",
}


def content_type(key: str) -> str:
    """The Content-Type an object gets from its name, so a served bucket (the
    gallery, images) shows in a browser instead of downloading."""
    dot = key.rfind(".")
    ext = key[dot:].lower() if dot > key.rfind("/") else ""
    return _CONTENT_TYPES.get(ext) or (
        mimetypes.guess_type(key)[0] or "application/octet-stream"
    )


def _allow_http(env: Mapping[str, str]) -> bool:
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
    return endpoint.lower().startswith("http://")


class ObstoreStore:
    """s3:// gs:// az:// through obstore (Rust object_store): typed and fast.

    Chosen by measurement against moto (bench/bench_s3.py): 1.6-2x the small
    PUT/GET rate of s3fs as used here, far faster to import, no Python
    dependencies, and create-only puts. Credentials and endpoint come from the
    standard variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_REGION, ...),
    which object_store reads itself. Its blocking calls run on a thread pool
    (see `_in_thread` for why not its async API).
    """

    def __init__(
        self,
        url: RemoteUrl,
        env: Mapping[str, str] | None = None,
        *,
        retry_timeout: float | None = None,
    ) -> None:
        try:
            from obstore.store import from_url
        except ImportError:
            raise MissingExtraError(
                f"{url}: object storage needs the s3 extra ({EXTRA_HINT})"
            ) from None
        env = os.environ if env is None else env
        self.url = url
        options: ClientConfig = {}
        if _allow_http(env):
            # MinIO, moto and friends on plain http: object_store refuses it unless told
            options["allow_http"] = True
        retry: RetryConfig | None = None
        if retry_timeout is not None:
            retry = {
                "max_retries": 3,
                "retry_timeout": timedelta(seconds=retry_timeout),
                "backoff": {
                    "init_backoff": timedelta(milliseconds=100),
                    "max_backoff": timedelta(seconds=1),
                    "base": 2,
                },
            }
        try:
            self._store: ObjectStore = from_url(
                url.url, client_options=options or None, retry_config=retry
            )
        except Exception as exc:
            raise StoreError(f"{url}: {_short(exc)}") from exc

    async def put_bytes(self, key: str, data: bytes, *, create: bool = False) -> None:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        def put() -> None:
            obstore.put(
                self._store,
                key,
                data,
                mode="create" if create else "overwrite",
                attributes={"Content-Type": content_type(key)},
            )

        try:
            await _in_thread(put)
        except (AlreadyExistsError, PreconditionError) as exc:
            raise StoreExistsError(f"{self.url.child(key)} already exists") from exc
        except Exception as exc:
            raise StoreError(
                f"cannot write {self.url.child(key)}: {_short(exc)}"
            ) from exc

    async def put_file(self, key: str, path: Path) -> None:
        import obstore

        def put() -> None:
            obstore.put(
                self._store,
                key,
                path,
                attributes={"Content-Type": content_type(key)},
                chunk_size=MULTIPART_CHUNK,
                max_concurrency=4,
            )

        try:
            await _in_thread(put)
        except Exception as exc:
            raise StoreError(
                f"cannot upload {self.url.child(key)}: {_short(exc)}"
            ) from exc

    async def get_bytes(self, key: str) -> bytes:
        import obstore
        from obstore.exceptions import NotFoundError

        def get() -> bytes:
            return bytes(obstore.get(self._store, key).bytes())

        try:
            return await _in_thread(get)
        except (NotFoundError, FileNotFoundError) as exc:
            # obstore raises FileNotFoundError for a missing object
            raise StoreNotFoundError(f"{self.url.child(key)} does not exist") from exc
        except Exception as exc:
            raise StoreError(
                f"cannot read {self.url.child(key)}: {_short(exc)}"
            ) from exc

    async def get_file(self, key: str, path: Path) -> None:
        import obstore
        from obstore.exceptions import NotFoundError

        def fetch() -> None:
            try:
                result = obstore.get(self._store, key)
            except (NotFoundError, FileNotFoundError) as exc:
                raise StoreNotFoundError(
                    f"{self.url.child(key)} does not exist"
                ) from exc
            with path.open("wb") as out:
                for chunk in result.stream(min_chunk_size=1024 * 1024):
                    out.write(chunk)

        try:
            await _in_thread(fetch)
        except (StoreError, OSError):
            raise
        except Exception as exc:
            raise StoreError(
                f"cannot read {self.url.child(key)}: {_short(exc)}"
            ) from exc

    async def list(self, prefix: str) -> list[ObjectInfo]:
        import obstore

        def walk() -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            for batch in obstore.list(
                self._store, prefix.rstrip("/") + "/", chunk_size=1000
            ):
                found.extend(ObjectInfo(meta["path"], meta["size"]) for meta in batch)
            return found

        try:
            out = await _in_thread(walk)
        except Exception as exc:
            raise StoreError(
                f"cannot list {self.url.child(prefix)}: {_short(exc)}"
            ) from exc
        out.sort(key=lambda info: info.key)
        return out


_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
#: object-store calls in flight at once (each waits on the network, not the CPU)
_POOL_SIZE = 32


async def _in_thread(fn: Callable[[], T]) -> T:
    """Run one blocking obstore call on the store's own thread pool.

    Why not obstore's async API: it completes each call from a Rust (tokio)
    thread that calls back into Python to wake the event loop; when that
    callback is still returning as the interpreter shuts down, CPython ends the
    thread mid-Rust-frame and the process dies of SIGABRT after a successful
    run (seen about once in 15 short CLI runs; a core dump showed
    pyo3_async_runtimes::set_result in take_gil). With the blocking API, only
    our Python threads touch Python, and they are joined before shutdown.
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(
                _POOL_SIZE, thread_name_prefix="object-store"
            )
        pool = _POOL
    return await asyncio.get_running_loop().run_in_executor(pool, fn)


class FsspecStore:
    """Any other `scheme://` through fsspec, when it and the scheme's package are
    installed. fsspec's sync API runs in a thread so the event loop never waits."""

    def __init__(self, url: RemoteUrl) -> None:
        try:
            import fsspec
        except ImportError:
            raise MissingExtraError(
                f"{url}: {url.scheme}:// needs fsspec and its {url.scheme} package "
                "(s3://, gs:// and az:// need only the s3 extra: "
                f"{EXTRA_HINT})"
            ) from None
        self.url = url
        try:
            self._fs: Any = fsspec.filesystem(url.scheme)
        except (ImportError, ValueError) as exc:
            raise MissingExtraError(
                f"{url}: no usable fsspec file system for {url.scheme}:// ({exc})"
            ) from None
        self._root = f"{url.bucket}/{url.prefix}".rstrip("/")

    def _path(self, key: str) -> str:
        return f"{self._root}/{key}"

    async def put_bytes(self, key: str, data: bytes, *, create: bool = False) -> None:
        def write() -> None:
            path = self._path(key)
            # fsspec has no portable conditional write: check, then write (one
            # writer per run URL is the rule anyway; the run's lock enforces it)
            if create and self._fs.exists(path):
                raise StoreExistsError(f"{self.url.child(key)} already exists")
            self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self._fs.pipe_file(path, data)

        await self._call(write, f"cannot write {self.url.child(key)}")

    async def put_file(self, key: str, path: Path) -> None:
        def upload() -> None:
            target = self._path(key)
            self._fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self._fs.put_file(str(path), target)

        await self._call(upload, f"cannot upload {self.url.child(key)}")

    async def get_bytes(self, key: str) -> bytes:
        def read() -> bytes:
            try:
                data: bytes = self._fs.cat_file(self._path(key))
            except FileNotFoundError as exc:
                raise StoreNotFoundError(
                    f"{self.url.child(key)} does not exist"
                ) from exc
            return data

        return await self._call(read, f"cannot read {self.url.child(key)}")

    async def get_file(self, key: str, path: Path) -> None:
        def fetch() -> None:
            try:
                self._fs.get_file(self._path(key), str(path))
            except FileNotFoundError as exc:
                raise StoreNotFoundError(
                    f"{self.url.child(key)} does not exist"
                ) from exc

        await self._call(fetch, f"cannot read {self.url.child(key)}")

    async def list(self, prefix: str) -> list[ObjectInfo]:
        def walk() -> list[ObjectInfo]:
            base = self._path(prefix.rstrip("/"))
            if not self._fs.exists(base):
                return []
            found: dict[str, Any] = self._fs.find(base, detail=True)
            cut = len(self._root.lstrip("/")) + 1
            return sorted(
                (
                    ObjectInfo(name.lstrip("/")[cut:], int(info.get("size") or 0))
                    for name, info in found.items()
                    if info.get("type") != "directory"
                ),
                key=lambda info: info.key,
            )

        return await self._call(walk, f"cannot list {self.url.child(prefix)}")

    async def _call(self, fn: Callable[[], T], what: str) -> T:
        try:
            return await asyncio.to_thread(fn)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{what}: {_short(exc)}") from exc


def open_store(
    location: str | RemoteUrl,
    env: Mapping[str, str] | None = None,
    *,
    retry_timeout: float | None = None,
) -> Store:
    """The Store for an object-store URL (raises MissingExtraError without the extra).

    `retry_timeout` bounds how long one call keeps retrying (object_store's
    default is minutes of backoff).
    """
    url = location if isinstance(location, RemoteUrl) else parse_url(location)
    if url.scheme in OBSTORE_SCHEMES:
        return ObstoreStore(url, env, retry_timeout=retry_timeout)
    return FsspecStore(url)


_XML_CODE = re.compile(r"<Code>([^<]*)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


def _short(exc: BaseException) -> str:
    """One line from a library's error: object_store's carry the server's XML
    body and a long chain; keep the first line and the S3 error code."""
    text = str(exc).strip() or type(exc).__name__
    first = text.splitlines()[0].split(": <?xml", 1)[0]
    code, message = _XML_CODE.search(text), _XML_MESSAGE.search(text)
    if code:
        first += f" ({code[1]}" + (f": {message[1]})" if message else ")")
    return first[:400]
