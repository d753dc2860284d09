"""Recognising images and reading their size from the first bytes."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import pytest

from batch_runner.errors import PermanentApiError
from batch_runner.store.images import (
    image_size,
    image_stem,
    save_image,
    sniff_extension,
)
from batch_runner.wire.fake import FakeImage, MemoryBody


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def test_sizes_from_headers() -> None:
    """PNG, JPEG and GIF sizes are read from their headers; junk gives None."""
    assert image_size(png(640, 480)) == (640, 480)
    assert image_size(jpeg(300, 200)) == (300, 200)
    assert image_size(b"GIF89a" + struct.pack("<HH", 5, 7)) == (5, 7)
    assert image_size(b"<html>") is None


def test_sniff_extension() -> None:
    """The magic bytes name the type; anything else is not an image."""
    assert sniff_extension(png(1, 1)) == ".png"
    assert sniff_extension(jpeg(1, 1)) == ".jpg"
    assert sniff_extension(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == ".webp"
    assert sniff_extension(b"hello") is None


@pytest.mark.parametrize("content_type", ["image/jpeg", None, "text/html"])
async def test_saved_image_is_named_after_its_bytes(
    tmp_path: Path, content_type: str | None
) -> None:
    """Whatever Content-Type says, a PNG is saved as .png with its facts."""
    data = png(7, 5)
    body = MemoryBody(FakeImage(data, content_type=content_type, chunk_size=4))
    saved = await save_image(body, tmp_path, "x")
    assert saved.path == tmp_path / "x.png"
    assert saved.path.read_bytes() == data
    assert (saved.size, saved.width, saved.height) == (len(data), 7, 5)
    assert saved.sha256 == hashlib.sha256(data).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


async def test_large_image_streams_and_junk_leaves_nothing(tmp_path: Path) -> None:
    """A body past the small-image size streams whole to disk; a body that is not
    an image is refused and leaves no file, not even a .part."""
    big = jpeg(640, 480) + bytes(range(256)) * 4096  # 1 MiB after the header
    saved = await save_image(
        MemoryBody(FakeImage(big, content_type="image/png")), tmp_path, "big"
    )
    assert saved.path.name == "big.jpg" and saved.path.read_bytes() == big
    assert (saved.width, saved.height) == (640, 480)
    with pytest.raises(PermanentApiError, match="not an image"):
        await save_image(MemoryBody(FakeImage(b"<html>")), tmp_path, "junk")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jpg"]


def test_image_stems() -> None:
    """One image is named after the job; several are numbered from 0."""
    assert image_stem("a", 0, 1) == "a"
    assert [image_stem("a", k, 3) for k in range(3)] == ["a-0", "a-1", "a-2"]
