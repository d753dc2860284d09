"""Stable job identities: resolution normalisation, job ids, seeds and shards.

Everything here must give the same answer on every platform, process and Python
version, because ids and seeds are how a rerun recognises work it already did:
only sha256 of explicitly encoded bytes is used, never `hash()`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re

#: aspect ratios the API accepts verbatim, instead of explicit pixel sizes
ASPECT_RATIOS: frozenset[str] = frozenset({"9:16", "16:9", "1:1", "3:4", "4:3"})
#: no real image is larger; anything above is a typo or garbage
MAX_SIDE = 16384
MAX_JOB_ID_LENGTH = 128
#: the API's seed is a signed 32-bit integer
MAX_SEED = 2**31 - 1
#: hex digits of sha256 kept in a derived id (64 bits)
DERIVED_ID_HEX_DIGITS = 16

# ASCII digits only: `\d` would also accept other scripts' digits.
_SIZE_RE = re.compile(r"([1-9][0-9]*)\s*[*xX]\s*([1-9][0-9]*)")
_JOB_ID_RE = re.compile(r"[A-Za-z0-9._-]+")
_RESERVED_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)
_ACCEPTED = (
    "expected one of 9:16, 16:9, 1:1, 3:4, 4:3 or a size W*H / WxH "
    f"with whole numbers 1..{MAX_SIDE} (e.g. 1024*1024)"
)

# json.dumps(..., ensure_ascii=False)'s own string encoder; calling it directly
# skips json.dumps' per-call setup, which dominated a million-row manifest.
_json_string = json.encoder.encode_basestring


# Manifests repeat a handful of resolutions a million times, so caching is cheap
# and saves the regex; errors are not cached, which is fine as they end the run.
@functools.lru_cache(maxsize=256)
def normalize_resolution(value: str) -> str:
    """Return `value` as an aspect ratio or `"W*H"`; raise ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError(f"resolution must be a string, {_ACCEPTED}")
    text = value.strip()
    if text in ASPECT_RATIOS:
        return text
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid resolution {value!r}: {_ACCEPTED}")
    width, height = int(match[1]), int(match[2])
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ValueError(f"resolution {value!r} is too large: {_ACCEPTED}")
    return f"{width}*{height}"


def validate_job_id(value: str) -> str:
    """Return `value` if it is usable as a job id (and file name); raise ValueError."""
    if not isinstance(value, str):
        raise ValueError("job id must be a string")
    if not value:
        raise ValueError("job id is empty")
    if len(value) > MAX_JOB_ID_LENGTH:
        raise ValueError(
            f"job id is {len(value)} characters long; "
            f"at most {MAX_JOB_ID_LENGTH} are allowed"
        )
    if _JOB_ID_RE.fullmatch(value) is None:
        bad = next(c for c in value if _JOB_ID_RE.fullmatch(c) is None)
        raise ValueError(
            f"job id {value!r} contains {bad!r}; "
            "only letters A-Z a-z, digits, '.', '_' and '-' are allowed"
        )
    if value in (".", ".."):
        raise ValueError(f"job id {value!r} is not a usable file name")
    # Windows refuses these device names even with an extension (`nul.txt`),
    # and the id becomes `images/<id>.png`.
    if value.split(".", 1)[0].upper() in _RESERVED_NAMES:
        raise ValueError(f"job id {value!r} is a reserved device name on Windows")
    return value


def derive_job_id(
    prompt: str, resolution: str, seed: int | None, prompt_extend: bool | None
) -> str:
    """Return the content id of a job: 16 hex digits of sha256 of its canonical JSON.

    `resolution` must already be normalised, so `1024x1024` and `1024*1024` give
    one id. 64 bits are plenty: by the birthday bound, a collision becomes likely
    (50%) only around 2**32, about 4e9 distinct jobs, and at a million jobs its
    probability is about 3e-8.
    """
    # Exactly json.dumps([prompt, resolution, seed, prompt_extend],
    # ensure_ascii=False, separators=(",", ":")), which the tests pin.
    canonical = "[{},{},{},{}]".format(
        _json_string(prompt),
        _json_string(resolution),
        "null" if seed is None else int(seed),
        "null" if prompt_extend is None else ("true" if prompt_extend else "false"),
    )
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return digest[:DERIVED_ID_HEX_DIGITS]


def _id_digest(job_id: str) -> bytes:
    return hashlib.sha256(job_id.encode("utf-8")).digest()


def derive_base_seed(job_id: str) -> int:
    """Return a deterministic seed in 0..2**31-1 for a job that sets none."""
    return int.from_bytes(_id_digest(job_id)[:4], "big") & MAX_SEED


def expand_repeat(base_id: str, seed: int | None, repeat: int) -> list[tuple[str, int]]:
    """Return `(id, seed)` for each copy of a job with `repeat: k`.

    The ids are `<base_id>-0 .. <base_id>-(k-1)` with seeds `seed .. seed+k-1`;
    without a seed the run starts at `derive_base_seed(base_id)` and wraps around
    at 2**31 (an invisible choice, unlike an explicit seed, which must fit).
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    if seed is None:
        start = derive_base_seed(base_id)
        return [(f"{base_id}-{k}", (start + k) & MAX_SEED) for k in range(repeat)]
    if seed < 0 or seed + repeat - 1 > MAX_SEED:
        raise ValueError(
            f"seeds {seed}..{seed + repeat - 1} do not fit in 0..{MAX_SEED}"
        )
    return [(f"{base_id}-{k}", seed + k) for k in range(repeat)]


def shard_of(job_id: str, shards: int) -> int:
    """Return the shard (0..shards-1) a job belongs to, the same on every machine."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    # Bytes 8..16, not the ones the base seed uses, so shard and seed are unrelated.
    return int.from_bytes(_id_digest(job_id)[8:16], "big") % shards
