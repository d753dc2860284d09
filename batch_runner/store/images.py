"""Images on disk: recognising them (pure), naming them so no two jobs' files can
meet, which recorded paths are safe to read, and writing a download into place
whole, with the facts (sha256, size, dimensions) the ledger keeps."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiofiles

from batch_runner.errors import PermanentApiError
from batch_runner.wire.api import ImageBody

#: enough of the file to recognise it and, for JPEG, usually to find its size
_HEAD_BYTES = 64 * 1024
#: bodies up to this size are written in one go, without a thread
_SMALL_IMAGE = 256 * 1024
#: unique temp names within this process; stale ones from dead runs are removed
#: at the start of a run
_tmp_counter = itertools.count()


def sniff_extension(head: bytes) -> str | None:
    """The extension the magic bytes announce, or None if this is not an image."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if head.startswith(b"BM"):
        return ".bmp"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return ".avif"
    return None


def image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the first bytes of a PNG, GIF, BMP or JPEG, if there.

    JPEG keeps its size in a frame header that can be far in; callers pass
    enough bytes (the first 64 KiB covers real-world files) or accept None.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    if head.startswith(b"BM") and len(head) >= 26:
        return (
            int.from_bytes(head[18:22], "little", signed=True),
            abs(int.from_bytes(head[22:26], "little", signed=True)),
        )
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(head)
    return None


#: JPEG markers that stand alone, with no length after them: TEM, RST0-7, SOI
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the marker segments to the frame header (SOFn), which holds the size."""
    pos = 2
    end = len(data)
    while pos < end:
        if data[pos] != 0xFF:
            return None
        # any number of 0xFF fill bytes may precede a marker (ITU T.81, B.1.1.2)
        while pos < end and data[pos] == 0xFF:
            pos += 1
        if pos >= end:
            return None
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0x00, 0xD9, 0xDA):
            # a stuffed byte outside entropy data, end of image, or start of scan:
            # past here there is no frame header to find
            return None
        if pos + 2 > end:
            return None
        length = int.from_bytes(data[pos : pos + 2], "big")
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the size
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 7 > end:
                return None
            height = int.from_bytes(data[pos + 3 : pos + 5], "big")
            width = int.from_bytes(data[pos + 5 : pos + 7], "big")
            return width, height
        if length < 2:
            return None
        pos += length
    return None


#: between a job id and an image's index; job ids cannot contain it
#: (manifest.identity.validate_job_id), so no two jobs' names can meet
IMAGE_INDEX_SEPARATOR = "~"


def image_stem(
    job_id: str,
    index: int,
    count: int,
    legacy: Mapping[str, str] | None = None,
) -> str:
    """The file name (without extension) of image `index` of a job with `count`.

    `<job_id>` for a single image, `<job_id>~<k>` (k from 0) when several. Run
    dirs from before named several images `<job_id>-<k>`, which is also how a job
    called `<job_id>-<k>` names its single image: `legacy` (old stem -> owning
    job, from `legacy_stem`) keeps such a name with its owner, and the job
    arriving later takes `<its id>~0` instead.
    """
    if count == 1:
        owner = legacy.get(job_id) if legacy else None
        if owner is None or owner == job_id:
            return job_id
    return f"{job_id}{IMAGE_INDEX_SEPARATOR}{index}"


def legacy_stem(job_id: str, file: str) -> str | None:
    """The stem of `file` if it is an old-style name of one of several images of
    `job_id` (`<job_id>-<k>`), which a job called `<job_id>-<k>` would claim."""
    name = file.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    index = stem[len(job_id) + 1 :]
    if stem.startswith(job_id + "-") and index.isascii() and index.isdigit():
        return stem
    return None


def safe_relative(file: object) -> str | None:
    """A recorded image path as a clean relative POSIX path inside the run
    directory, or None when it must not be read: the one rule for every reader
    (gallery, dataset export, merge).

    Refused: anything not a string, absolute paths, `..`, backslashes (a Windows
    separator: the ledger writes "/"), and ":" (a drive, a URL scheme, or an NTFS
    stream; no job id contains one). Hugging Face refuses such a `file_name`,
    and a tar member must not escape the directory it is extracted into.
    """
    # plain string work: pathlib costs more than the stat on a million files
    if not isinstance(file, str) or file.startswith("/"):
        return None
    if "\\" in file or ":" in file or "\x00" in file:
        return None
    parts = [part for part in file.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


@dataclass(frozen=True, slots=True)
class SavedImage:
    """An image that is complete and renamed into place."""

    path: Path
    size: int
    sha256: str = ""
    width: int | None = None
    height: int | None = None


async def save_image(body: ImageBody, images_dir: Path, stem: str) -> SavedImage:
    """Write a downloaded image to `images_dir/<stem>.<ext>`, all or nothing.

    The bytes go to a hidden `.part` file first and are renamed into place only
    once complete and recognised, so a crash mid-download leaves only a `.part`
    file that the next run removes. The extension comes from the magic bytes,
    never from Content-Type, which servers get wrong. Raises PermanentApiError
    for a body that is not an image; OSError if the disk refuses.
    """
    # plain strings: building Path objects costs more than the rename, per image
    where = os.fspath(images_dir)
    tmp = os.path.join(where, f".{stem}.{os.getpid()}-{next(_tmp_counter)}.part")
    try:
        size, head, digest = await _write(body, tmp)
        ext = sniff_extension(head)
        if ext is None:
            raise PermanentApiError(
                f"downloaded file is not an image ({size} bytes, "
                f"Content-Type {body.content_type!r})"
            )
        final = os.path.join(where, stem + ext)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dims = image_size(head)
    return SavedImage(
        path=Path(final),
        size=size,
        sha256=digest,
        width=dims[0] if dims else None,
        height=dims[1] if dims else None,
    )


async def _write(body: ImageBody, tmp: str) -> tuple[int, bytes, str]:
    """Write the body to `tmp`; returns size, the first bytes, and sha256.

    Small bodies are written with one plain write: three thread hops through
    aiofiles cost more than writing a few hundred KiB to the page cache.
    Larger ones stream through aiofiles so the loop never blocks on them.
    """
    digest = hashlib.sha256()
    buffered: list[bytes] = []
    size = 0
    chunks = aiter(body)
    async for chunk in chunks:
        size += len(chunk)
        digest.update(chunk)
        buffered.append(chunk)
        if size > _SMALL_IMAGE:
            break
    else:
        data = b"".join(buffered)
        with open(tmp, "wb") as out:  # noqa: ASYNC230 (a small body, see above)
            out.write(data)
        return size, data[:_HEAD_BYTES], digest.hexdigest()
    head = b"".join(buffered)[:_HEAD_BYTES]
    async with aiofiles.open(tmp, "wb") as out:
        await out.write(b"".join(buffered))
        buffered.clear()
        async for chunk in chunks:
            size += len(chunk)
            digest.update(chunk)
            await out.write(chunk)
    return size, head, digest.hexdigest()
