"""Job keys: each job id as one Python int, for the in-memory sets and maps
that plan a resume of millions of jobs. Pure; never stored (see `identity`).

A key costs one int object (40-48 bytes) instead of an id string and the
structures around it. What a collision would do decides the design: two ids
with one key would share one ledger state, so a job could be taken as done and
never generated, silently. So:

- A derived id is 16 hex digits of sha256 (`identity.derive_job_id`), or that
  followed by `-k` for the copies of `repeat`. Its key *is* its value: the 64
  bits, and for `-k` the 64 bits and k (< 2**14) above 2**64. That is a
  bijection on ids of those forms, which cannot collide, and it costs no
  hashing: the manifest reader takes the key straight from the sha256 digest.
- Any other id (an explicit one) gets 128 bits from two independent keyed
  hashes (the interpreter's SipHash of the id and of the id followed by NUL;
  blake2b where `hash()` is narrower or not SipHash), tagged with 2**128 so it
  cannot equal a derived key. With n distinct ids in memory the chance that
  any two share a key is at most n**2 / 2**129: about 1.5e-27 for the two
  million ids of a million-row manifest and a million-job ledger, far below
  the odds of the hardware flipping a bit of a string-keyed dict. Where a
  collision would only cost a re-read (a manifest's duplicate ids, see
  `manifest.reader`), the reader checks the real ids instead of trusting
  the key.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable

#: keys below this are derived ids without a `-k` suffix: the id's 64 bits
DERIVED_LIMIT = 1 << 64
#: derived ids with a `-k` suffix (0 <= k < 2**14) sit in [2**64, 2**64 + 2**78)
_COPY_BITS = 14
_MAX_COPY = 1 << _COPY_BITS
#: tag of the 128-bit keys of every other id
WIDE_TAG = 1 << 128
_HEX = "0123456789abcdef"
_M64 = (1 << 64) - 1


def _sip_pair(job_id: str) -> int:
    # hash(s) and hash(s + NUL): the same keyed PRF on two distinct inputs
    return (hash(job_id) & _M64) << 64 | (hash(job_id + "\x00") & _M64)


def _blake2b_128(job_id: str) -> int:
    digest = hashlib.blake2b(
        job_id.encode("utf-8", "surrogatepass"), digest_size=16
    ).digest()
    return int.from_bytes(digest, "big")


_SIPHASH = sys.hash_info.width >= 64 and sys.hash_info.algorithm.startswith("siphash")
#: 128 bits of an id that has no derived form; replaceable in tests to force
#: collisions
wide_hash: Callable[[str], int] = _sip_pair if _SIPHASH else _blake2b_128


def job_key(job_id: str) -> int:
    """The key of a job id (see the module docstring)."""
    if len(job_id) == 16:
        if not job_id.strip(_HEX):
            return int(job_id, 16)
    elif 18 <= len(job_id) <= 21 and job_id[16] == "-":
        key = _copy_key(job_id)
        if key is not None:
            return key
    return WIDE_TAG | wide_hash(job_id)


def _copy_key(job_id: str) -> int | None:
    """The key of `<16 hex>-<k>` (k in canonical decimal, < 2**14), else None."""
    base, copy = job_id[:16], job_id[17:]
    if base.strip(_HEX) or not (copy.isascii() and copy.isdigit()):
        return None
    if len(copy) > 1 and copy[0] == "0":
        return None
    k = int(copy)
    if k >= _MAX_COPY:
        return None
    return DERIVED_LIMIT + (int(base, 16) << _COPY_BITS | k)


def key_id(key: int, job_id: str | None) -> str:
    """The id of a job known by `key`: `job_id` if given; None stands for the
    derived id (with or without `-k`) whose key is `key`."""
    if job_id is not None:
        return job_id
    if 0 <= key < DERIVED_LIMIT:
        return f"{key:016x}"
    copy = key - DERIVED_LIMIT
    if 0 <= copy < DERIVED_LIMIT << _COPY_BITS:
        return f"{copy >> _COPY_BITS:016x}-{copy & (_MAX_COPY - 1)}"
    raise ValueError(f"key {key} is not that of a derived id")


def is_derived_key(key: int) -> bool:
    """Whether `key` is that of an id of derived form (exact, see above)."""
    return 0 <= key < DERIVED_LIMIT + (DERIVED_LIMIT << _COPY_BITS)
