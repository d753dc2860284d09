"""Argument types for the command line: each turns text into a checked value or
raises ArgumentTypeError in plain words (argparse prefixes the option's name).

Pure functions, no I/O. Every number must be finite: an infinite poll interval
or timeout would make a run that never ends.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from batch_runner.engine.sharding import parse_shard
from batch_runner.errors import StoreError
from batch_runner.store.remote import RemoteUrl, is_remote, parse_url
from batch_runner.wire.urls import check_base_url

N = TypeVar("N", int, float)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number, got {text!r}"
        ) from None


def number_at_least(low: float, *, strict: bool = False) -> Callable[[str], float]:
    """A finite number >= low (> low when `strict`)."""

    def parse(text: str) -> float:
        value = _number(text)
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(
                f"must be {'>' if strict else '>='} {low:g}, got {text!r}"
            )
        return value

    return parse


def whole_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """A whole number >= low (and <= high, when given)."""

    def parse(text: str) -> int:
        value = whole(text)
        if value < low or (high is not None and value > high):
            span = f">= {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {text!r}")
        return value

    return parse


positive_float = number_at_least(0, strict=True)
non_negative_float = number_at_least(0)
positive_int = whole_at_least(1)
non_negative_int = whole_at_least(0)
#: faster polling would only hammer the API
poll_interval = number_at_least(0.01)


def fraction(text: str) -> float:
    """A number between 0 and 1."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def concurrency(text: str) -> int | None:
    """A whole number >= 1, or None for 'auto'."""
    if text.strip().lower() == "auto":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number >= 1 or 'auto', got {text!r}"
        ) from None


def optional(parse: Callable[[str], N]) -> Callable[[str], N | None]:
    """`parse`, or None for 'none'/'unlimited'/empty."""

    def parse_optional(text: str) -> N | None:
        if text.strip().lower() in ("", "none", "unlimited"):
            return None
        return parse(text)

    return parse_optional


def shard_spec(text: str) -> str:
    """`I/N` with 0 <= I < N; returned as given (the shard is chosen later,
    together with --shards and the scheduler's environment)."""
    try:
        parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def base_url(text: str) -> str:
    """An http(s) URL; its path, if any, is kept as a prefix."""
    try:
        check_base_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def port(text: str) -> int:
    """A TCP port; 0 picks a free one."""
    return whole_at_least(0, 65535)(text)


def location(text: str) -> Path | RemoteUrl:
    """A run directory: a local path, or an object-store URL (s3://bucket/prefix)."""
    if is_remote(text):
        try:
            return parse_url(text)
        except StoreError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return Path(text)


def local_dir(text: str) -> Path:
    """An output folder that must be local (merge and export write files)."""
    if is_remote(text):
        raise argparse.ArgumentTypeError(
            f"{text}: must be a local directory (the inputs may be bucket URLs)"
        )
    return Path(text)
