"""Re-encoding images: option checks, the size rule, and Pillow round trips."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from batch_runner.engine.transcoder import WORK_DIR_NAME, Transcoder
from batch_runner.errors import TranscodeError
from batch_runner.store.transcode import (
    ImageFormat,
    ImageOptions,
    fit_within,
    transcode_bytes,
    transcode_file,
)


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A picture with detail, so lossy encoders have something to lose."""
    image = Image.linear_gradient("L").resize((width, height))
    if mode == "L":
        return image
    rgb = Image.merge("RGB", (image, image.rotate(90), image.transpose(0)))
    return rgb if mode == "RGB" else rgb.convert(mode)


# -- the size rule ---------------------------------------------------------------


@given(
    width=st.integers(1, 20_000),
    height=st.integers(1, 20_000),
    max_side=st.none() | st.integers(1, 20_000),
)
def test_fit_within_keeps_aspect_and_never_upscales(
    width: int, height: int, max_side: int | None
) -> None:
    """The longer side ends at min(original, max_side), the shorter side is the
    nearest pixel to the same aspect ratio, and no side ever grows."""
    new_w, new_h = fit_within(width, height, max_side)
    assert 1 <= new_w <= width and 1 <= new_h <= height
    longer, new_longer = max(width, height), max(new_w, new_h)
    if max_side is None or longer <= max_side:
        assert (new_w, new_h) == (width, height)
        return
    assert new_longer == max_side
    # the longer side stays the longer one (ties allowed after rounding)
    assert (new_w >= new_h) == (width >= height) or new_w == new_h
    # rounded to the nearest pixel: off the exact ratio by at most half a pixel
    if width >= height:
        exact = height * max_side / width
        assert abs(new_h - exact) <= 0.5 or new_h == 1
    else:
        exact = width * max_side / height
        assert abs(new_w - exact) <= 0.5 or new_w == 1


def test_fit_within_examples() -> None:
    """Landscape, portrait, square, already small, and a 1-pixel-thin strip."""
    assert fit_within(1344, 768, 512) == (512, 293)
    assert fit_within(768, 1344, 512) == (293, 512)
    assert fit_within(1024, 1024, 1000) == (1000, 1000)
    assert fit_within(300, 200, 512) == (300, 200)
    assert fit_within(10_000, 1, 100) == (100, 1)
    with pytest.raises(ValueError):
        fit_within(0, 5, 10)


# -- option checks ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "gif"}, "--image-format must be one of original|png|jpeg|webp"),
        ({"format": "jpeg", "quality": 0}, "--quality must be between 1 and 100"),
        ({"format": "jpeg", "quality": 101}, "--quality must be between 1 and 100"),
        ({"format": "webp", "quality": True}, "--quality must be an integer"),
        ({"max_side": 0}, "--max-side must be >= 1"),
        ({"max_side": 2.5}, "--max-side must be an integer"),
        ({"format": "png", "quality": 80}, "--quality applies to jpeg and webp"),
        ({"quality": 80}, "--quality needs --image-format jpeg or webp"),
    ],
)
def test_bad_image_options_are_refused(kwargs: dict[str, object], message: str) -> None:
    """Each invalid combination is refused with a message naming the option."""
    with pytest.raises(ValueError, match=message):
        ImageOptions(**kwargs)  # type: ignore[arg-type]


def test_options_accept_strings_and_say_when_pillow_is_needed() -> None:
    """A format given as a string becomes the enum; only `original` without
    --max-side leaves images untouched."""
    assert ImageOptions(format="webp").format is ImageFormat.WEBP  # type: ignore[arg-type]
    assert not ImageOptions().transcodes
    assert ImageOptions(max_side=64).transcodes
    assert ImageOptions(format=ImageFormat.PNG).transcodes
    assert ImageOptions(quality=70, max_side=64).effective_quality == 70
    assert ImageOptions(format=ImageFormat.JPEG).effective_quality == 90
    assert (
        ImageOptions(ImageFormat.JPEG, 80, 512).describe()
        == "--image-format jpeg --quality 80 --max-side 512"
    )


# -- Pillow round trips ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "pillow", "ext"),
    [
        (ImageFormat.PNG, "PNG", ".png"),
        (ImageFormat.JPEG, "JPEG", ".jpg"),
        (ImageFormat.WEBP, "WEBP", ".webp"),
    ],
)
def test_each_format_decodes_back_at_the_fitted_size(
    fmt: ImageFormat, pillow: str, ext: str
) -> None:
    """A 300x200 PNG stored as each format with --max-side 120 decodes back as
    that format at 120x80; the source facts describe the PNG."""
    source = encode(gradient(300, 200), "PNG")
    data, got_ext, width, height, facts = transcode_bytes(
        source, ImageOptions(fmt, max_side=120)
    )
    assert data is not None and got_ext == ext and (width, height) == (120, 80)
    image = decode(data)
    assert image.format == pillow and image.size == (120, 80)
    assert (facts.format, facts.width, facts.height, facts.bytes) == (
        "png",
        300,
        200,
        len(source),
    )


def test_quality_changes_the_encoding() -> None:
    """Lower JPEG and WebP quality gives smaller files of the same size."""
    source = encode(gradient(256, 256), "PNG")
    for fmt in (ImageFormat.JPEG, ImageFormat.WEBP):
        high, *_ = transcode_bytes(source, ImageOptions(fmt, quality=95))
        low, *_ = transcode_bytes(source, ImageOptions(fmt, quality=20))
        assert high is not None and low is not None
        assert len(low) < len(high)
        assert decode(low).size == decode(high).size == (256, 256)


def test_small_images_are_never_upscaled() -> None:
    """--max-side above the image's longer side leaves its size alone."""
    source = encode(gradient(64, 48), "PNG")
    data, _, width, height, _ = transcode_bytes(
        source, ImageOptions(ImageFormat.JPEG, max_side=4096)
    )
    assert (width, height) == (64, 48)
    assert data is not None and decode(data).size == (64, 48)


def test_transparency_is_flattened_on_white_for_jpeg_and_kept_for_webp_png() -> None:
    """JPEG has no alpha: transparent pixels turn white; WebP and PNG keep alpha."""
    rgba = Image.new("RGBA", (40, 20), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (20, 0, 40, 20))  # right half fully transparent
    source = encode(rgba, "PNG")
    jpeg, *_ = transcode_bytes(source, ImageOptions(ImageFormat.JPEG))
    assert jpeg is not None
    flat = decode(jpeg).convert("RGB")
    assert flat.getpixel((30, 10)) == pytest.approx((255, 255, 255), abs=3)
    assert flat.getpixel((5, 10)) == pytest.approx((255, 0, 0), abs=8)
    for fmt in (ImageFormat.WEBP, ImageFormat.PNG):
        data, *_ = transcode_bytes(
            source, ImageOptions(fmt, max_side=20)
        )  # resized too
        assert data is not None
        image = decode(data)
        assert image.mode == "RGBA" and image.size == (20, 10)
        alpha = image.getchannel("A")
        assert alpha.getpixel((18, 5)) == 0 and alpha.getpixel((2, 5)) == 255


def test_palette_images_keep_their_palette_as_png_and_resize_smoothly() -> None:
    """A palette PNG stays a palette PNG when only re-encoded; when resized it is
    converted first, so LANCZOS (not nearest neighbour) does the scaling."""
    palette = gradient(64, 64).quantize(16)
    source = encode(palette, "PNG")
    kept, *_ = transcode_bytes(source, ImageOptions(ImageFormat.ORIGINAL, max_side=64))
    assert kept is None  # already PNG, already small enough: stored as served
    as_webp, *_ = transcode_bytes(source, ImageOptions(ImageFormat.WEBP))
    assert as_webp is not None and decode(as_webp).mode == "RGB"
    resized, *_ = transcode_bytes(source, ImageOptions(ImageFormat.PNG, max_side=32))
    assert resized is not None and decode(resized).mode == "RGB"


def test_original_with_max_side_reencodes_in_the_served_format() -> None:
    """`original` keeps each image's format: a JPEG stays a JPEG when downscaled."""
    source = encode(gradient(200, 100), "JPEG", quality=95)
    data, ext, width, height, facts = transcode_bytes(source, ImageOptions(max_side=50))
    assert data is not None and ext == ".jpg" and (width, height) == (50, 25)
    assert decode(data).format == "JPEG" and facts.format == "jpg"


def test_a_multi_frame_jpeg_is_written_back_as_jpeg() -> None:
    """Pillow reads a JPEG with extra frames as MPO; `original --max-side` still
    writes it as a plain JPEG, and its source format is jpg."""
    source = encode(
        gradient(200, 100), "MPO", save_all=True, append_images=[gradient(200, 100)]
    )
    assert decode(source).format == "MPO"
    data, ext, width, height, facts = transcode_bytes(
        source, ImageOptions(max_side=100)
    )
    assert data is not None and ext == ".jpg" and (width, height) == (100, 50)
    assert decode(data).format == "JPEG" and facts.format == "jpg"


def test_files_already_as_asked_are_kept_byte_for_byte() -> None:
    """Same format and small enough: stored as served (a lossy re-encode would
    only lose quality), unless a --quality was asked for explicitly."""
    source = encode(gradient(64, 64), "JPEG", quality=95)
    same, ext, *_ = transcode_bytes(source, ImageOptions(ImageFormat.JPEG))
    assert same is None and ext == ".jpg"
    again, *_ = transcode_bytes(source, ImageOptions(ImageFormat.JPEG, quality=50))
    assert again is not None and len(again) < len(source)


def test_an_image_kept_as_served_is_never_decoded() -> None:
    """Keeping a served PNG reads only its header: a PNG whose pixel data is cut
    short is still stored as served (PNG's getexif() would decode it all)."""
    whole = encode(Image.effect_noise((256, 256), 50).convert("RGB"), "PNG")
    cut = whole[: len(whole) // 2]
    kept, ext, width, height, facts = transcode_bytes(
        cut, ImageOptions(ImageFormat.PNG, max_side=256)
    )
    assert kept is None and ext == ".png" and (width, height) == (256, 256)
    assert facts.bytes == len(cut)
    with pytest.raises(TranscodeError):
        transcode_bytes(cut, ImageOptions(ImageFormat.JPEG))


def test_exif_orientation_is_applied_before_the_tag_is_lost() -> None:
    """A JPEG tagged "rotate 90" is stored upright: width and height swap."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    source = encode(gradient(80, 40), "JPEG", exif=exif.tobytes())
    data, _, width, height, facts = transcode_bytes(
        source, ImageOptions(ImageFormat.PNG)
    )
    assert (width, height) == (40, 80) and (facts.width, facts.height) == (80, 40)
    assert data is not None and decode(data).size == (40, 80)


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,  # PNG magic, garbage after
        encode(Image.effect_noise((64, 64), 50), "PNG")[:200],  # truncated
        b"not an image at all",
    ],
)
def test_undecodable_images_raise_transcode_error(data: bytes) -> None:
    """Anything Pillow cannot read becomes one TranscodeError, never a crash."""
    with pytest.raises(TranscodeError, match="cannot re-encode image"):
        transcode_bytes(data, ImageOptions(ImageFormat.JPEG))


def test_transcode_file_writes_the_temp_or_keeps_the_source(tmp_path: Path) -> None:
    """A re-encoding lands in the temp path with its own sha256; an image already
    as asked is reported as the source file itself, with no source facts."""
    src = tmp_path / "a.png"
    src.write_bytes(encode(gradient(100, 50), "PNG"))
    out = transcode_file(src, tmp_path / "a.tmp", ImageOptions(ImageFormat.WEBP))
    assert out.path == tmp_path / "a.tmp" and out.ext == ".webp"
    assert out.bytes == out.path.stat().st_size and out.source is not None
    kept = transcode_file(src, tmp_path / "b.tmp", ImageOptions(ImageFormat.PNG))
    assert kept.path == src and kept.source is None
    assert not (tmp_path / "b.tmp").exists()


# -- the pool --------------------------------------------------------------------


@pytest.mark.parametrize(
    "pool", ["thread", pytest.param("process", marks=pytest.mark.subprocess)]
)
async def test_transcoder_stores_through_either_pool(tmp_path: Path, pool: str) -> None:
    """Thread and process pools both put the re-encoded file in images/ and
    leave no work folder behind."""
    images = tmp_path / "images"
    async with Transcoder(
        ImageOptions(ImageFormat.JPEG, max_side=32),
        images,
        pool=pool,
        workers=2,  # type: ignore[arg-type]
    ) as transcoder:
        src = transcoder.work_dir / "x.png"
        src.write_bytes(encode(gradient(64, 32), "PNG"))
        stored = await transcoder.store(src, "x")
        assert stored.path == images / "x.jpg" and not src.exists()
        assert decode(stored.path.read_bytes()).size == (32, 16)
    assert not (images / WORK_DIR_NAME).exists()


async def test_cancelled_store_leaves_no_final_file(tmp_path: Path) -> None:
    """Cancelling a job mid-encode never renames a file into images/, and closing
    the pool clears the work folder, whatever the worker was doing."""
    images = tmp_path / "images"
    transcoder = Transcoder(ImageOptions(ImageFormat.PNG, max_side=1000), images)
    async with transcoder:
        src = transcoder.work_dir / "big.png"
        src.write_bytes(encode(gradient(3000, 3000), "PNG"))
        task = asyncio.create_task(transcoder.store(src, "big"))
        await asyncio.sleep(0)  # let it reach the pool
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert list(images.iterdir()) == []


async def test_store_outside_async_with_is_an_error(tmp_path: Path) -> None:
    """A transcoder whose pool is not running refuses work instead of hanging."""
    transcoder = Transcoder(ImageOptions(ImageFormat.PNG), tmp_path)
    with pytest.raises(RuntimeError, match="async with"):
        await transcoder.store(tmp_path / "x.png", "x")
