"""Recognising images and reading their size from the first bytes."""

from __future__ import annotations

import struct
import zlib

from batch_runner.store.images import (
    extension_for,
    image_size,
    image_stem,
    sniff_extension,
)


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


def test_sniff_and_extension() -> None:
    """Content-Type decides the extension, magic bytes back it up, .png last."""
    assert sniff_extension(png(1, 1)) == ".png"
    assert sniff_extension(jpeg(1, 1)) == ".jpg"
    assert sniff_extension(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == ".webp"
    assert sniff_extension(b"hello") is None
    assert extension_for("image/jpeg; charset=binary", png(1, 1)) == ".jpg"
    assert extension_for("application/octet-stream", jpeg(1, 1)) == ".jpg"
    assert extension_for(None, b"????") == ".png"


def test_image_stems() -> None:
    """One image is named after the job; several are numbered from 0."""
    assert image_stem("a", 0, 1) == "a"
    assert [image_stem("a", k, 3) for k in range(3)] == ["a-0", "a-1", "a-2"]
