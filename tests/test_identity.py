"""Tests for batch_runner.manifest.identity: resolutions, job ids, seeds and shards."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch_runner.manifest.identity import (
    MAX_SEED,
    derive_base_seed,
    derive_job_id,
    expand_repeat,
    normalize_resolution,
    shard_of,
    validate_job_id,
)

prompts = st.text(max_size=200)
resolutions = st.sampled_from(["1024*1024", "16:9", "9:16", "1:1", "768*1344"])
seeds = st.none() | st.integers(min_value=0, max_value=MAX_SEED)
extends = st.none() | st.booleans()
job_ids = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-",
    min_size=1,
    max_size=120,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("9:16", "9:16"),
        ("16:9", "16:9"),
        ("1:1", "1:1"),
        ("3:4", "3:4"),
        ("4:3", "4:3"),
        ("1024*1024", "1024*1024"),
        ("1024x768", "1024*768"),
        ("1024X768", "1024*768"),
        ("  768 x 1344 ", "768*1344"),
        (" 16:9\t", "16:9"),
        ("1*1", "1*1"),
        ("16384*16384", "16384*16384"),
    ],
)
def test_normalize_resolution_accepts(raw: str, expected: str) -> None:
    """Aspect ratios pass unchanged and W*H / WxH / WXH all become `W*H`."""
    assert normalize_resolution(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "2:1",
        "16/9",
        "1024",
        "1024*",
        "*1024",
        "0*1024",
        "1024*0",
        "+1024*1024",
        "-1024*1024",
        "01024*1024",
        "1024.0*1024",
        "16385*1024",
        "1024*99999999999999999999",
        "1024**1024",
        "1024x1024x3",
        "١٠٢٤*١٠٢٤",  # Arabic-Indic digits: int() would take them, the API would not
        "big",
    ],
)
def test_normalize_resolution_rejects(raw: str) -> None:
    """Anything but the five ratios or a sane positive W*H is a helpful ValueError."""
    with pytest.raises(ValueError, match="expected one of 9:16"):
        normalize_resolution(raw)


@pytest.mark.parametrize(
    "good",
    ["a", "job-1", "Job_2.v3", "x" * 128, "...", ".hidden", "con-1", "nulx", "COM10"],
)
def test_validate_job_id_accepts(good: str) -> None:
    """Plain file-name-safe ids up to 128 characters are returned unchanged."""
    assert validate_job_id(good) == good


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "empty"),
        ("x" * 129, "129 characters"),
        (".", "not a usable file name"),
        ("..", "not a usable file name"),
        ("a/b", "'/'"),
        ("a\\b", "'\\\\\\\\'"),
        ("a b", "' '"),
        ("café", "'é'"),
        ("CON", "reserved"),
        ("con", "reserved"),
        ("nul.txt", "reserved"),
        ("Aux.tar.gz", "reserved"),
        ("prn", "reserved"),
        ("com1", "reserved"),
        ("LPT9.png", "reserved"),
    ],
)
def test_validate_job_id_rejects(bad: str, reason: str) -> None:
    """Bad characters, bad lengths, `.`/`..` and Windows device names are refused."""
    with pytest.raises(ValueError, match=reason):
        validate_job_id(bad)


def test_derive_job_id_is_pinned() -> None:
    """A fixed job's id never changes, or existing ledgers would be orphaned."""
    assert derive_job_id("a red fox in the snow", "1024*1024", 42, True) == (
        "7b13a36a2ed1c06b"
    )
    assert derive_job_id('猫 "q" \n', "16:9", None, None) == "cf0d446d6f5d1c54"


def test_derive_job_id_same_for_x_and_star() -> None:
    """`1024x1024` and `1024*1024` are one job once the resolution is normalised."""
    star = derive_job_id("p", normalize_resolution("1024*1024"), None, None)
    ex = derive_job_id("p", normalize_resolution("1024x1024"), None, None)
    assert star == ex


def test_derive_job_id_distinguishes_every_field() -> None:
    """Changing any of prompt, resolution, seed or prompt_extend changes the id."""
    base = derive_job_id("p", "1:1", 1, None)
    others = {
        derive_job_id("p ", "1:1", 1, None),
        derive_job_id("p", "16:9", 1, None),
        derive_job_id("p", "1:1", 2, None),
        derive_job_id("p", "1:1", None, None),
        derive_job_id("p", "1:1", 1, False),
        derive_job_id("p", "1:1", 1, True),
    }
    assert base not in others
    assert len(others) == 6


@given(prompts, resolutions, seeds, extends)
def test_derive_job_id_is_the_documented_hash(
    prompt: str, resolution: str, seed: int | None, extend: bool | None
) -> None:
    """The id is the first 16 hex digits of sha256 of the canonical json.dumps list."""
    try:
        canonical = json.dumps(
            [prompt, resolution, seed, extend],
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates have no UTF-8 form; the manifest rejects them first.
        return
    expected = hashlib.sha256(canonical).hexdigest()[:16]
    assert derive_job_id(prompt, resolution, seed, extend) == expected


@given(prompts, resolutions, seeds, extends)
def test_derive_job_id_deterministic_and_valid(
    prompt: str, resolution: str, seed: int | None, extend: bool | None
) -> None:
    """Derived ids are stable, 16 lowercase hex digits and valid explicit ids."""
    try:
        first = derive_job_id(prompt, resolution, seed, extend)
    except UnicodeEncodeError:
        return
    assert derive_job_id(prompt, resolution, seed, extend) == first
    assert len(first) == 16
    assert set(first) <= set("0123456789abcdef")
    assert validate_job_id(first) == first


def test_expand_repeat_with_seed() -> None:
    """An explicit seed numbers copies seed, seed+1, ... with suffixes -0, -1, ..."""
    assert expand_repeat("cat", 10, 3) == [("cat-0", 10), ("cat-1", 11), ("cat-2", 12)]


def test_expand_repeat_without_seed_uses_base_seed() -> None:
    """Without a seed the copies start at derive_base_seed(base id)."""
    start = derive_base_seed("abc")
    assert start == 980948671
    assert expand_repeat("abc", None, 2) == [("abc-0", start), ("abc-1", start + 1)]


def test_expand_repeat_one_still_suffixes() -> None:
    """`repeat: 1` gives one copy with the `-0` suffix and a concrete seed."""
    assert expand_repeat("x", None, 1) == [("x-0", derive_base_seed("x"))]


def test_expand_repeat_rejects_bad_input() -> None:
    """repeat < 1 and explicit seeds running past the maximum are ValueErrors."""
    with pytest.raises(ValueError, match="at least 1"):
        expand_repeat("x", None, 0)
    with pytest.raises(ValueError, match="do not fit"):
        expand_repeat("x", MAX_SEED, 2)
    assert expand_repeat("x", MAX_SEED, 1) == [("x-0", MAX_SEED)]


@given(job_ids, st.none() | st.integers(0, MAX_SEED - 200), st.integers(1, 200))
def test_expand_repeat_ids_distinct(base: str, seed: int | None, repeat: int) -> None:
    """Expanded ids are all distinct, and so are their seeds, all within range."""
    copies = expand_repeat(base, seed, repeat)
    assert len(copies) == repeat
    assert len({job_id for job_id, _ in copies}) == repeat
    assert len({s for _, s in copies}) == repeat
    assert all(0 <= s <= MAX_SEED for _, s in copies)


@given(st.text(max_size=200))
def test_base_seed_in_range(job_id: str) -> None:
    """Base seeds are deterministic and lie in 0..2**31-1."""
    try:
        seed = derive_base_seed(job_id)
    except UnicodeEncodeError:
        return
    assert 0 <= seed <= MAX_SEED
    assert derive_base_seed(job_id) == seed


@given(job_ids, st.integers(min_value=1, max_value=1000))
def test_shard_of_in_range_and_stable(job_id: str, shards: int) -> None:
    """shard_of lands in 0..shards-1 and gives the same answer every time."""
    shard = shard_of(job_id, shards)
    assert 0 <= shard < shards
    assert shard_of(job_id, shards) == shard
    assert shard_of(job_id, 1) == 0


def test_shard_of_pinned_and_spread() -> None:
    """Shards are pinned across versions and spread ids roughly evenly."""
    assert [shard_of(f"job-{i}", 4) for i in range(8)] == [1, 3, 0, 3, 0, 2, 1, 2]
    assert shard_of("abc", 7) == 0
    counts = [0] * 4
    for i in range(4000):
        counts[shard_of(f"job-{i}", 4)] += 1
    assert min(counts) > 800
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("x", 0)
