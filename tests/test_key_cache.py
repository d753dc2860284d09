"""The manifest key cache: a plan of the same CSV bytes reads its keys from the
cache, gives exactly what a parse gives, and anything else is a miss."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_runner.cli.main import main
from batch_runner.errors import ManifestError
from batch_runner.manifest import key_cache
from batch_runner.manifest.csv_keys import KeyBlock, csv_keyed_rows
from batch_runner.manifest.key_cache import (
    KEY_CACHE_NAME,
    cached_keyed_rows,
    key_cache_path,
)

from .test_job_keys import _cell, _layouts, csv_lines


def _items(rows: object) -> list[object]:
    """Items as comparable values: (first_line, keys) for a block."""
    return [
        ("block", item.first_line, list(item.keys))
        if isinstance(item, KeyBlock)
        else item
        for item in rows  # type: ignore[attr-defined]
    ]


def _read(path: Path, cache: Path | None, *, write: bool = True) -> object:
    try:
        return _items(cached_keyed_rows(str(path), cache, write=write))
    except ManifestError as err:
        return str(err)


def _plain(path: Path) -> object:
    try:
        return _items(csv_keyed_rows(str(path)))
    except ManifestError as err:
        return str(err)


def _write_csv(path: Path, rows: int, start: int = 0) -> Path:
    lines = [f"prompt {i},{i},v{i % 3}" for i in range(start, start + rows)]
    path.write_text("prompt,seed,meta.k\n" + "\n".join(lines) + "\n")
    return path


def _hits(caplog: pytest.LogCaptureFixture) -> int:
    return sum("job keys from" in r.getMessage() for r in caplog.records)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=_layouts,
    rows=st.lists(st.lists(_cell, min_size=0, max_size=5), max_size=12),
    data=st.data(),
)
def test_a_cached_read_equals_a_parse_whatever_the_rows(
    layout: tuple[str, ...],
    rows: list[list[str]],
    data: st.DataObject,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """First read (a miss that may write the cache) and second read (a hit if
    it was written) both give exactly the parse's items, or its error."""
    lines = csv_lines(layout, rows, data)
    where = tmp_path_factory.mktemp("kc")
    path = where / "m.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cache = where / KEY_CACHE_NAME
    expected = _plain(path)
    assert _read(path, cache) == expected
    if cache.exists():
        assert all(isinstance(i, tuple) and i[0] == "block" for i in expected)  # type: ignore[index]
    assert _read(path, cache) == expected


def test_the_same_bytes_are_read_from_the_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="batch_runner")
    path = _write_csv(tmp_path / "m.csv", 5000)
    cache = tmp_path / KEY_CACHE_NAME
    parsed = _read(path, cache)
    assert cache.exists() and _hits(caplog) == 0
    assert _read(path, cache) == parsed
    assert _hits(caplog) == 1
    # a copy of the bytes under another name and time is the same manifest
    copy = tmp_path / "copy.csv"
    copy.write_bytes(path.read_bytes())
    os.utime(copy, (1, 1))
    assert _read(copy, cache) == parsed
    assert _hits(caplog) == 2


def test_any_change_to_the_bytes_is_a_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One character changed, same size, same mtime: the keys are parsed again."""
    caplog.set_level(logging.DEBUG, logger="batch_runner")
    path = _write_csv(tmp_path / "m.csv", 300)
    cache = tmp_path / KEY_CACHE_NAME
    _read(path, cache)
    st_before = path.stat()
    data = path.read_bytes().replace(b"prompt 7,", b"prompt 8,", 1)
    path.write_bytes(data)
    os.utime(path, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))
    assert _read(path, cache) == _plain(path)
    assert _hits(caplog) == 0
    assert _read(path, cache) == _plain(path)
    assert _hits(caplog) == 1


@pytest.mark.parametrize(
    "damage",
    ["truncate", "no-end", "version", "garbage", "extra"],
)
def test_a_damaged_cache_is_a_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="batch_runner")
    path = _write_csv(tmp_path / "m.csv", 3000)
    cache = tmp_path / KEY_CACHE_NAME
    expected = _read(path, cache)
    blob = cache.read_bytes()
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "no-end":
        blob = blob[:-16]
    elif damage == "version":
        header_end = blob.index(b"\n", len(key_cache.MAGIC))
        header = json.loads(blob[len(key_cache.MAGIC) : header_end])
        header["version"] = "0.0.0"
        new = json.dumps(header, sort_keys=True).encode()
        blob = blob[: len(key_cache.MAGIC)] + new + blob[header_end:]
    elif damage == "garbage":
        blob = b"not a cache\n" + blob
    else:
        blob = blob + b"\x00" * 16
    cache.write_bytes(blob)
    assert _read(path, cache) == expected
    assert _hits(caplog) == 0


@pytest.mark.parametrize(
    "header, row",
    [("id,prompt", "a1,a cat"), ("prompt,repeat", "a cat,3"), ("prompt", '"a, cat"')],
)
def test_only_manifests_read_as_key_blocks_are_cached(
    tmp_path: Path, header: str, row: str
) -> None:
    """Explicit ids and repeat copies are read row by row: nothing is cached."""
    path = tmp_path / "m.csv"
    path.write_text(f"{header}\n{row}\n")
    cache = tmp_path / KEY_CACHE_NAME
    expected = _plain(path)
    assert _read(path, cache) == expected
    if not all(isinstance(i, tuple) and i[0] == "block" for i in expected):  # type: ignore[union-attr, index]
        assert not cache.exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_without_write_a_miss_leaves_no_cache(tmp_path: Path) -> None:
    """What status and --dry-run do: read a cache, never write one."""
    path = _write_csv(tmp_path / "m.csv", 100)
    cache = tmp_path / KEY_CACHE_NAME
    assert _read(path, cache, write=False) == _plain(path)
    assert not cache.exists()


def test_a_bad_manifest_leaves_no_cache(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "m.csv", 10)
    with path.open("a") as fh:
        fh.write(",5,v\n")  # an empty prompt
    cache = tmp_path / KEY_CACHE_NAME
    with pytest.raises(ManifestError):
        list(cached_keyed_rows(str(path), cache))
    assert not cache.exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_the_cache_lives_beside_the_ledger(tmp_path: Path) -> None:
    assert key_cache_path(tmp_path / "ledger.jsonl") == tmp_path / KEY_CACHE_NAME
    assert key_cache_path(tmp_path / "mine.jsonl") == tmp_path / (
        ".mine.jsonl" + KEY_CACHE_NAME
    )


def _status(manifest: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> object:
    capsys.readouterr()
    assert main(["status", str(manifest), "--out", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.integration
def test_status_and_dry_run_plan_the_same_with_the_cache_and_see_edits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the CLI: a mock run leaves the cache; `status` with it equals
    `status` without it (and writes none); an edited manifest is planned as
    edited."""
    manifest = _write_csv(tmp_path / "m.csv", 6)
    out = tmp_path / "run"
    assert (
        main(["run", str(manifest), "--out", str(out), "--mock", "--no-progress"]) == 0
    )
    assert (out / KEY_CACHE_NAME).exists()
    with_cache = _status(manifest, out, capsys)
    (out / KEY_CACHE_NAME).unlink()
    assert _status(manifest, out, capsys) == with_cache
    assert not (out / KEY_CACHE_NAME).exists()  # reading commands write nothing
    assert main(["run", str(manifest), "--out", str(out), "--mock"]) == 0
    assert (out / KEY_CACHE_NAME).exists()
    _write_csv(manifest, 8, start=4)  # jobs 4 and 5 done, 6 new ones
    edited = _status(manifest, out, capsys)
    assert isinstance(edited, dict) and isinstance(with_cache, dict)
    assert (edited["succeeded"], edited["pending"]) == (2, 6)
    assert main(["run", str(manifest), "--dry-run", "--out", str(out)]) == 0
    assert "6 to submit" in capsys.readouterr().out


def test_a_dry_run_on_a_new_out_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _write_csv(tmp_path / "m.csv", 6)
    out = tmp_path / "new-run"
    assert main(["run", str(manifest), "--dry-run", "--out", str(out)]) == 0
    assert not out.exists()
