"""Recognising images and reading their size from the first bytes."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch_runner.errors import PermanentApiError
from batch_runner.manifest.identity import validate_job_id
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
    """One image is named after the job; several are numbered from 0 after a "~",
    which no job id contains."""
    assert image_stem("a", 0, 1) == "a"
    assert [image_stem("a", k, 3) for k in range(3)] == ["a~0", "a~1", "a~2"]


_IDS = st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)


@given(
    a=st.tuples(_IDS, st.integers(0, 3), st.integers(1, 4)),
    b=st.tuples(_IDS, st.integers(0, 3), st.integers(1, 4)),
)
def test_image_stems_of_different_jobs_never_collide(
    a: tuple[str, int, int], b: tuple[str, int, int]
) -> None:
    """Two different jobs (any valid ids, any image counts) never share a file name,
    whatever the image: job "x" with two images and job "x-0" included."""
    (id_a, k_a, n_a), (id_b, k_b, n_b) = a, b
    validate_job_id(id_a)
    validate_job_id(id_b)
    k_a, k_b = k_a % n_a, k_b % n_b
    if id_a != id_b:
        assert image_stem(id_a, k_a, n_a) != image_stem(id_b, k_b, n_b)
    assert image_stem("x", 0, 2) != image_stem("x-0", 0, 1)


def test_a_name_an_old_run_dir_gave_another_job_is_not_reused() -> None:
    """In a run dir from before "~" names, job "x" may own `x-0.png`: job "x-0"
    then gets a name of its own instead of replacing that file."""
    legacy = {"x-0": "x", "x-1": "x"}
    assert image_stem("x-0", 0, 1, legacy) == "x-0~0"
    assert image_stem("x-0", 0, 1, {"x-0": "x-0"}) == "x-0"
    assert image_stem("x-2", 0, 1, legacy) == "x-2"
    assert image_stem("x", 1, 2, legacy) == "x~1"


def test_jpeg_size_skips_fill_bytes_before_a_marker() -> None:
    """Any number of 0xFF fill bytes may precede a JPEG marker (T.81 B.1.1.2)."""
    plain = jpeg(300, 200)
    filled = plain[:2] + b"\xff\xff\xff" + plain[2:20] + b"\xff\xff" + plain[20:]
    assert image_size(filled) == (300, 200)


def test_jpeg_size_steps_over_standalone_markers() -> None:
    """RSTn and TEM markers carry no length; the frame header after them is found."""
    plain = jpeg(64, 48)
    assert image_size(plain[:2] + b"\xff\xd0\xff\x01" + plain[2:]) == (64, 48)


def test_jpeg_size_of_truncated_or_junk_data_is_none() -> None:
    """A JPEG cut before its frame header, or junk after the SOI, gives None."""
    assert image_size(jpeg(10, 10)[:20]) is None
    assert image_size(b"\xff\xd8" + b"\x00" * 40) is None
    assert image_size(b"\xff\xd8" + b"\xff" * 40) is None
