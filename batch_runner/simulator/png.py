"""PNG generation for the Z-Image simulator (stdlib only, no Pillow).

Images only need to be real, small and distinct per (prompt, seed, index), so
that a client which mixes up downloads or writes truncated files is caught.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from typing import Final

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
MIN_SIDE: Final = 8
MAX_SIDE: Final = 1024
# Quantising the vertical gradient bounds the number of distinct rows, so the
# cost of building an image grows with its height only through bytes joins.
_GRADIENT_LEVELS: Final = 64


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """Served image size: requested size times scale, each side clamped."""

    def side(n: int) -> int:
        return max(MIN_SIDE, min(MAX_SIDE, round(n * scale)))

    return side(width), side(height)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _stripes(digest: bytes, width: int) -> list[tuple[tuple[int, int, int], int]]:
    count = 3 + digest[18] % 6
    palette = [tuple(digest[3 * i : 3 * i + 3]) for i in range(6)]
    offset = digest[19] % 6
    base, extra = divmod(width, count)
    stripes: list[tuple[tuple[int, int, int], int]] = []
    for i in range(count):
        r, g, b = palette[(i + offset) % 6]
        stripes.append(((r, g, b), base + (1 if i < extra else 0)))
    return stripes


def _row(stripes: list[tuple[tuple[int, int, int], int]], level: int) -> bytes:
    # Brightness runs from 40% at the top to 100% at the bottom.
    factor = 0.4 + 0.6 * level / (_GRADIENT_LEVELS - 1)
    parts = [b"\x00"]  # filter type "None" for every scanline
    for (r, g, b), run in stripes:
        if run:
            parts.append(
                bytes((int(r * factor), int(g * factor), int(b * factor))) * run
            )
    return b"".join(parts)


def render_png(prompt: str, seed: int, index: int, width: int, height: int) -> bytes:
    """RGB PNG of width x height, colours derived from sha256(prompt, seed, index)."""
    if width < 1 or height < 1:
        raise ValueError(f"bad image size {width}x{height}")
    digest = hashlib.sha256(f"{prompt}\x00{seed}\x00{index}".encode()).digest()
    stripes = _stripes(digest, width)
    rows: dict[int, bytes] = {}
    scanlines: list[bytes] = []
    for y in range(height):
        level = y * (_GRADIENT_LEVELS - 1) // max(1, height - 1)
        row = rows.get(level)
        if row is None:
            row = rows[level] = _row(stripes, level)
        scanlines.append(row)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"".join(scanlines), 6)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )
