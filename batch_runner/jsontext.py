"""JSON text in and out, fast: msgspec, with the standard library behind it for
what msgspec refuses. Shared by the ledger and the API client, which both parse
text written by others."""

from __future__ import annotations

import json
from typing import Any

import msgspec

_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()


def loads(raw: bytes | str) -> Any:
    """One JSON text, parsed whole, integers of any size kept exact: msgspec, then
    the stdlib for the few texts it refuses that json accepts (NaN, Infinity, lone
    surrogate escapes, UTF-16 bytes), so nothing readable before becomes
    unreadable. Raises ValueError (json's) for text neither accepts."""
    try:
        return _DECODER.decode(raw)
    except msgspec.DecodeError:
        return json.loads(raw)


def dumps(value: Any) -> bytes:
    """Compact JSON of plain data (str, int, dict, list ...), as UTF-8 bytes."""
    return _ENCODER.encode(value)
