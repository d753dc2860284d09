"""Recognising image files and naming them on disk. Pure."""

from __future__ import annotations

_CONTENT_TYPES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/avif": ".avif",
}


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


def extension_for(content_type: str | None, head: bytes) -> str:
    """Extension from Content-Type, then from the magic bytes, else `.png`."""
    if content_type:
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime in _CONTENT_TYPES:
            return _CONTENT_TYPES[mime]
    return sniff_extension(head) or ".png"


def image_stem(job_id: str, index: int, count: int) -> str:
    """`<job_id>` for a single image, `<job_id>-<k>` (k from 0) when several."""
    return job_id if count == 1 else f"{job_id}-{index}"
