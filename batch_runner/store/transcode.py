"""Re-encoding downloaded images with Pillow (the `images` extra): format, size.

Synchronous and free of asyncio: `transcode_file` runs in a worker thread or
process (see engine/transcoder.py). `fit_within` and option checks are pure.
"""

from __future__ import annotations

import enum
import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from batch_runner.errors import MissingExtraError, TranscodeError, UsageError

if TYPE_CHECKING:
    from PIL.Image import Image

EXTRA_HINT = "pip install 'zimage-batch-runner[images]'"
DEFAULT_QUALITY = 90


#: the `image_format` values, for type checkers of library callers
ImageFormatName = Literal["original", "png", "jpeg", "webp"]


class ImageFormat(enum.StrEnum):
    """How downloaded images are stored."""

    #: the bytes as served (re-encoded in the served format only to downscale)
    ORIGINAL = "original"
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"


#: Pillow's format name -> the extension stored files get (as store/images.py)
_EXTENSIONS: Mapping[str, str] = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "AVIF": ".avif",
    # a JPEG with extra frames (camera previews); Pillow opens it as MPO
    "MPO": ".jpg",
}
#: formats Pillow reads under their own name but that are written as another
_WRITTEN_AS: Mapping[str, str] = {"MPO": "JPEG"}
_PILLOW_NAMES: Mapping[ImageFormat, str] = {
    ImageFormat.PNG: "PNG",
    ImageFormat.JPEG: "JPEG",
    ImageFormat.WEBP: "WEBP",
}
#: modes the PNG encoder writes as they are (16-bit grey included)
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})
_ORIENTATION = 0x0112  # the EXIF tag
#: formats whose encoder takes a quality
_LOSSY = frozenset({"JPEG", "WEBP", "AVIF"})


@dataclass(frozen=True, slots=True)
class ImageOptions:
    """What to do with each downloaded image; the default keeps it as served.

    `quality` None means DEFAULT_QUALITY where a quality applies; given
    explicitly, it also re-encodes a file already in the asked format. Invalid
    values raise UsageError naming the option.
    """

    format: ImageFormat = ImageFormat.ORIGINAL
    quality: int | None = None
    max_side: int | None = None

    def __post_init__(self) -> None:
        try:
            fmt = ImageFormat(self.format)
        except ValueError:
            choices = "|".join(f.value for f in ImageFormat)
            raise UsageError(
                f"--image-format must be one of {choices}, got {self.format!r}"
            ) from None
        object.__setattr__(self, "format", fmt)
        for problem in image_option_problems(fmt, self.quality, self.max_side):
            raise UsageError(problem)

    @property
    def transcodes(self) -> bool:
        """Whether images go through Pillow at all (and so need the extra)."""
        return self.format is not ImageFormat.ORIGINAL or self.max_side is not None

    @property
    def effective_quality(self) -> int:
        return DEFAULT_QUALITY if self.quality is None else self.quality

    def describe(self) -> str:
        """The options as command-line flags, for messages."""
        parts = (
            []
            if self.format is ImageFormat.ORIGINAL
            else [f"--image-format {self.format.value}"]
        )
        if self.quality is not None:
            parts.append(f"--quality {self.quality}")
        if self.max_side is not None:
            parts.append(f"--max-side {self.max_side}")
        return " ".join(parts) or "--image-format original"


def image_options(
    image_format: ImageFormatName | ImageFormat = "original",
    quality: int | None = None,
    max_side: int | None = None,
    *,
    download: bool = True,
) -> ImageOptions:
    """The checked options of one run: UsageError for a bad value or combination,
    MissingExtraError when Pillow is needed and missing. Sends nothing."""
    options = ImageOptions(image_format, quality, max_side)  # type: ignore[arg-type]
    if options.transcodes and not download:
        raise UsageError(
            f"{options.describe()} re-encodes downloaded images: "
            "it cannot be combined with --no-download"
        )
    require_pillow(options)
    return options


def image_option_problems(
    fmt: ImageFormat, quality: object, max_side: object
) -> list[str]:
    """Every reason these options are invalid (empty when they are fine)."""
    problems: list[str] = []
    if quality is not None and (
        not isinstance(quality, int) or isinstance(quality, bool)
    ):
        problems.append(f"--quality must be an integer, got {quality!r}")
    elif isinstance(quality, int) and not 1 <= quality <= 100:
        problems.append(f"--quality must be between 1 and 100, got {quality}")
    if max_side is not None and (
        not isinstance(max_side, int) or isinstance(max_side, bool)
    ):
        problems.append(f"--max-side must be an integer, got {max_side!r}")
    elif isinstance(max_side, int) and max_side < 1:
        problems.append(f"--max-side must be >= 1, got {max_side}")
    if quality is not None:
        if fmt is ImageFormat.PNG:
            problems.append("--quality applies to jpeg and webp, not to png")
        elif fmt is ImageFormat.ORIGINAL and max_side is None:
            # nothing would be re-encoded, so the quality would silently do nothing
            problems.append(
                "--quality needs --image-format jpeg or webp "
                "(or --max-side, which re-encodes in the served format)"
            )
    return problems


def fit_within(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The size that fits `max_side` on the longer side, keeping the aspect ratio.

    Never upscales; the shorter side is rounded to the nearest pixel (at least 1).

    >>> fit_within(1024, 768, 512)
    (512, 384)
    >>> fit_within(100, 50, 512)
    (100, 50)
    """
    if width < 1 or height < 1:
        raise ValueError(f"bad image size {width}x{height}")
    longer = max(width, height)
    if max_side is None or longer <= max_side:
        return width, height
    shorter = min(width, height)
    # integer round-half-up of shorter * max_side / longer: no float error
    scaled = max(1, (2 * shorter * max_side + longer) // (2 * longer))
    return (max_side, scaled) if width >= height else (scaled, max_side)


def require_pillow(options: ImageOptions) -> None:
    """Raise MissingExtraError unless Pillow can do what `options` ask."""
    if not options.transcodes:
        return
    try:
        from PIL import features
    except ImportError:
        raise MissingExtraError(
            f"{options.describe()} needs Pillow: {EXTRA_HINT}"
        ) from None
    if options.format is ImageFormat.WEBP and not features.check("webp"):
        raise MissingExtraError(
            f"{options.describe()}: this Pillow was built without WebP support"
        )


@dataclass(frozen=True, slots=True)
class SourceFacts:
    """The image as served, before re-encoding."""

    format: str
    bytes: int
    sha256: str
    width: int
    height: int

    def to_json(self) -> dict[str, object]:
        return {
            "format": self.format,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "width": self.width,
            "height": self.height,
        }


@dataclass(frozen=True, slots=True)
class Transcoded:
    """What `transcode_file` stored: the file to keep and its facts.

    `path` is the re-encoded temporary file, or the source itself when it was
    already what was asked for (then `source` is None: the file is as served).
    """

    path: Path
    ext: str
    bytes: int
    sha256: str
    width: int
    height: int
    source: SourceFacts | None


def transcode_bytes(
    data: bytes, options: ImageOptions
) -> tuple[bytes | None, str, int, int, SourceFacts]:
    """Re-encode one image: (new bytes or None to keep `data`, ext, width, height,
    facts of the source).

    Raises TranscodeError when Pillow cannot decode `data` or write the format.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as opened:
            # format, size and EXIF come from the header: an image kept as
            # served is never decoded
            source_format = opened.format or ""
            source = SourceFacts(
                format=_EXTENSIONS.get(source_format, "." + source_format.lower())[1:],
                bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                width=opened.width,
                height=opened.height,
            )
            served = _WRITTEN_AS.get(source_format, source_format)
            target = _PILLOW_NAMES.get(options.format, served)
            if target not in _EXTENSIONS:
                raise TranscodeError(
                    f"cannot write {source_format or 'unknown'} images"
                )
            # a camera-style orientation tag (2-8) would be lost in re-encoding,
            # so the pixels are turned upright first; 5-8 swap width and height
            # (only when the header had EXIF: PNG's getexif() decodes the
            # whole image looking for a chunk after the pixels)
            orientation = (
                opened.getexif().get(_ORIENTATION, 1) if "exif" in opened.info else 1
            )
            rotated = orientation in range(2, 9)
            upright = (
                (opened.height, opened.width)
                if orientation in range(5, 9)
                else opened.size
            )
            size = fit_within(upright[0], upright[1], options.max_side)
            unchanged = target == served and size == opened.size and not rotated
            if unchanged and (target not in _LOSSY or options.quality is None):
                # nothing to change: a lossy re-encode would only lose quality
                return None, _EXTENSIONS[target], size[0], size[1], source
            opened.load()
            image: Image.Image = opened
            if rotated:
                image = ImageOps.exif_transpose(image)
            icc = image.info.get("icc_profile")
            if size != image.size:
                image = _resize(image, size)
            image = _convert_for(image, target)
            out = io.BytesIO()
            image.save(out, format=target, **_save_options(target, options, icc))
    except TranscodeError:
        raise
    except Exception as exc:
        # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise TranscodeError(
            f"cannot re-encode image: {type(exc).__name__}: {exc}"
        ) from None
    return out.getvalue(), _EXTENSIONS[target], size[0], size[1], source


def transcode_file(src: Path, tmp: Path, options: ImageOptions) -> Transcoded:
    """Re-encode `src` into `tmp` (or keep `src`); the worker-side entry point.

    Module-level and taking only picklable values, so a process pool can run it.
    """
    data = src.read_bytes()
    new, ext, width, height, source = transcode_bytes(data, options)
    if new is None:
        return Transcoded(
            path=src,
            ext=ext,
            bytes=source.bytes,
            sha256=source.sha256,
            width=width,
            height=height,
            source=None,
        )
    with tmp.open("wb") as out:
        out.write(new)
    return Transcoded(
        path=tmp,
        ext=ext,
        bytes=len(new),
        sha256=hashlib.sha256(new).hexdigest(),
        width=width,
        height=height,
        source=source,
    )


def _has_alpha(image: Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        "transparency" in image.info
    )


def _resize(image: Image, size: tuple[int, int]) -> Image:
    from PIL import Image as PILImage

    if image.mode in ("P", "1"):
        # palette and bilevel images resize only by nearest neighbour
        image = image.convert(
            "RGBA" if _has_alpha(image) else "L" if image.mode == "1" else "RGB"
        )
    return image.resize(size, PILImage.Resampling.LANCZOS)


def _convert_for(image: Image, target: str) -> Image:
    """A mode the target encoder accepts; JPEG gets alpha flattened onto white."""
    if target == "JPEG":
        if _has_alpha(image):
            from PIL import Image as PILImage

            rgba = image.convert("RGBA")
            flat = PILImage.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return image if image.mode in ("L", "RGB", "CMYK") else image.convert("RGB")
    if target == "WEBP":
        wanted = "RGBA" if _has_alpha(image) else "RGB"
        return image if image.mode == wanted else image.convert(wanted)
    if target == "PNG" and image.mode not in _PNG_MODES:
        return image.convert("RGBA" if _has_alpha(image) else "RGB")
    return image


def _save_options(target: str, options: ImageOptions, icc: object) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if target in _LOSSY:
        kwargs["quality"] = options.effective_quality
    if isinstance(icc, bytes) and target in ("JPEG", "PNG", "WEBP"):
        kwargs["icc_profile"] = icc
    return kwargs
