"""Keep the C heap from holding on to the big tables a large plan frees.

glibc serves allocations above its mmap threshold (128 KiB) with mmap and
gives them back when freed, but each time such a block is freed it raises the
threshold to that block's size (up to 32 MiB). Planning a million jobs frees
and grows tables of 8-32 MiB (the ledger's dict, the manifest's key set,
doubling as they fill), so after the first of them the rest come from the
heap, whose free space is seldom returned: `run --dry-run` on the 1M-row bench
files peaked at 164 MB RSS with the moving threshold, and at 130 MB with it
fixed (`bench/scale.py`, 2026-12-02). Setting the threshold once fixes it.
"""

from __future__ import annotations

import ctypes
import sys

#: mallopt's parameter number for the mmap threshold (glibc's malloc.h)
_M_MMAP_THRESHOLD = -3
#: glibc's own default, which it would otherwise raise as blocks are freed
_THRESHOLD = 128 * 1024


def keep_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at its default, for this process; whether
    it was set (False where there is no glibc malloc, which changes nothing)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD))
