"""Images on disk: recognising them (pure), naming them, and writing a download
into place whole, with the facts (sha256, size, dimensions) the ledger keeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
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


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 9 < len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the size
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return width, height
        pos += 2 + length
    return None


def image_stem(job_id: str, index: int, count: int) -> str:
    """`<job_id>` for a single image, `<job_id>-<k>` (k from 0) when several."""
    return job_id if count == 1 else f"{job_id}-{index}"


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
    tmp = images_dir / f".{stem}.{os.getpid()}-{next(_tmp_counter)}.part"
    try:
        size, head, digest = await _write(body, tmp)
        ext = sniff_extension(head)
        if ext is None:
            raise PermanentApiError(
                f"downloaded file is not an image ({size} bytes, "
                f"Content-Type {body.content_type!r})"
            )
        final = images_dir / (stem + ext)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    dims = image_size(head)
    return SavedImage(
        path=final,
        size=size,
        sha256=digest,
        width=dims[0] if dims else None,
        height=dims[1] if dims else None,
    )


async def _write(body: ImageBody, tmp: Path) -> tuple[int, bytes, str]:
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
        with tmp.open("wb") as out:
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
