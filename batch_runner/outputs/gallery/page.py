"""A static HTML contact sheet of a run directory: `DIR/index.html`.

The page opens straight from disk (file://): CSS and JS (gallery.css and
gallery.js, package data beside this module) are inlined, images are
linked by relative paths, and a Content-Security-Policy pinned to the hashes of
our own style and script means that even a prompt which slipped past escaping
could not run code.

The ledger is read twice instead of held in memory: the first pass keeps one
small tuple per job (where its last record is, its status, its image count)
and the totals; the second renders only those last records, and stops as soon
as the capped grid and failure list are full. A million-job ledger therefore
costs a few hundred MB at most and the page stays a few MB.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import quote

from batch_runner.errors import LedgerError
from batch_runner.store.images import safe_relative
from batch_runner.store.ledger import iter_records, utc_now_iso
from batch_runner.store.rundir import RunDir, atomic_write

DEFAULT_MAX_IMAGES: Final = 5_000
DEFAULT_MAX_FAILED: Final = 1_000
# alt text is for screen readers and broken images; past this it only bloats
_MAX_ALT_CHARS: Final = 500

_SUCCEEDED: Final = "succeeded"
_FAILED: Final = "failed"
_SUBMITTED: Final = "submitted"
_GENERATED: Final = "generated"


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


@dataclass(frozen=True, slots=True)
class _Assets:
    """The page's own style and script, and the policy that admits only them."""

    css: str
    js: str
    csp: str


@functools.cache
def _assets() -> _Assets:
    # package data (gallery.css, gallery.js beside this module), so they can be
    # edited and linted as CSS and JS; the script reads data attributes and never
    # writes HTML, so user text only reaches the page through escaped markup
    here = resources.files("batch_runner.outputs.gallery")
    css = here.joinpath("gallery.css").read_text(encoding="utf-8")
    js = here.joinpath("gallery.js").read_text(encoding="utf-8")
    # `file:` because Chromium does not count a file:// page's siblings as 'self';
    # data: only for the empty favicon that stops a browser from asking for one
    csp = "; ".join(
        [
            "default-src 'none'",
            "img-src 'self' file: data:",
            f"style-src {_csp_hash(css)}",
            f"script-src {_csp_hash(js)}",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )
    return _Assets(css, js, csp)


@dataclass(slots=True)
class _Scan:
    """Pass one: each job's last record, by its position among the records."""

    # job_id -> (index of its last record, its status, images it has)
    last: dict[str, tuple[int, str, int]] = field(default_factory=dict)
    first_ts: tuple[datetime, str] | None = None
    last_ts: tuple[datetime, str] | None = None

    def count(self, status: str) -> int:
        return sum(1 for _, s, _ in self.last.values() if s == status)

    @property
    def images(self) -> int:
        return sum(n for _, s, n in self.last.values() if s == _SUCCEEDED)


def _parse_ts(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    # the ledger writes UTC; a hand-written naive stamp is taken to mean UTC too,
    # since naive and aware datetimes cannot be compared
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _image_files(record: Mapping[str, Any]) -> list[str]:
    files = record.get("files")
    if isinstance(files, list):
        return [f for f in files if isinstance(f, str)]
    images = record.get("images")
    if isinstance(images, list):
        return [
            i["file"]
            for i in images
            if isinstance(i, dict) and isinstance(i.get("file"), str)
        ]
    return []


def _scan(ledger_path: Path) -> _Scan:
    scan = _Scan()
    for index, record in enumerate(iter_records(ledger_path)):
        status = record["status"]
        n_images = len(_image_files(record)) if status == _SUCCEEDED else 0
        scan.last[record["job_id"]] = (index, status, n_images)
        ts = _parse_ts(record.get("ts"))
        if ts is not None:
            if scan.first_ts is None or ts < scan.first_ts[0]:
                scan.first_ts = (ts, record["ts"])
            if scan.last_ts is None or ts > scan.last_ts[0]:
                scan.last_ts = (ts, record["ts"])
    return scan


def _last_records(ledger_path: Path, scan: _Scan) -> Iterator[dict[str, Any]]:
    """Pass two: each job's last record as of pass one, in ledger order.

    Positions are stable because the ledger is append-only: records a live run
    appends meanwhile come after them and are ignored.
    """
    for index, record in enumerate(iter_records(ledger_path)):
        known = scan.last.get(record["job_id"])
        if known is not None and known[0] == index:
            yield record


# -- rendering ---------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _meta_text(meta: object) -> str:
    if not isinstance(meta, dict) or not meta:
        return ""
    parts = []
    for key, value in meta.items():
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        parts.append(f"{key}={shown}")
    return " ".join(parts)


def _search_text(record: Mapping[str, Any], *extra: str) -> str:
    parts = [
        _text(record.get("prompt")),
        record["job_id"],
        _meta_text(record.get("meta")),
        *extra,
    ]
    return "\n".join(p for p in parts if p).lower()


def _seed_text(seed: object) -> str:
    # bool is an int subclass; a hand-edited `true` is not a seed
    if isinstance(seed, int) and not isinstance(seed, bool):
        return str(seed)
    return "random"


def _when(stamp: tuple[datetime, str] | None) -> str:
    if stamp is None:
        return "—"
    moment, raw = stamp
    shown = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f'<time datetime="{_e(raw)}">{_e(shown)}</time>'


def _card(
    exists: Callable[[str], bool],
    record: Mapping[str, Any],
    file: str,
    dims: Mapping[str, tuple[int, int]],
) -> str:
    prompt = _text(record.get("prompt"))
    resolution = _text(record.get("resolution")) or "—"
    seed = _seed_text(record.get("seed"))
    meta = _meta_text(record.get("meta"))
    rel = safe_relative(file)
    if rel is None:
        thumb = f'<div class="thumb missing">not shown: unsafe path {_e(file)}</div>'
    elif not exists(rel):
        thumb = f'<div class="thumb missing">missing file {_e(file)}</div>'
    else:
        src = quote(rel, safe="/")
        alt = prompt if len(prompt) <= _MAX_ALT_CHARS else prompt[:_MAX_ALT_CHARS] + "…"
        size = ""
        if file in dims:
            size = ' width="{}" height="{}"'.format(*dims[file])
        thumb = (
            f'<a class="thumb" href="{_e(src)}">'
            f'<img src="{_e(src)}" loading="lazy" decoding="async" alt="{_e(alt)}"'
            f"{size}></a>"
        )
    meta_html = f'<p class="meta">{_e(meta)}</p>' if meta else ""
    return (
        f'<figure class="card" data-search="{_e(_search_text(record, file))}">'
        f"{thumb}<figcaption>"
        f'<p class="prompt">{_e(prompt)}</p>'
        f'<p class="facts">seed <b>{_e(seed)}</b> · <b>{_e(resolution)}</b></p>'
        f'<p class="id">{_e(record["job_id"])}</p>'
        f"{meta_html}</figcaption></figure>\n"
    )


def _failed_row(record: Mapping[str, Any]) -> str:
    stage = _text(record.get("stage")) or "—"
    msg = str(record.get("msg") or "") or "(no message)"
    ts = _parse_ts(record.get("ts"))
    when = _when((ts, record["ts"])) if ts is not None else "—"
    return (
        f'<tr data-search="{_e(_search_text(record, msg))}">'
        f"<td><code>{_e(record['job_id'])}</code></td>"
        f"<td>{_e(stage)}</td>"
        f'<td class="msg">{_e(msg)}</td>'
        f"<td>{_e(_text(record.get('prompt')))}</td>"
        f"<td>{when}</td></tr>\n"
    )


def _dims(record: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    images = record.get("images")
    if not isinstance(images, list):
        return out
    for image in images:
        if not isinstance(image, dict):
            continue
        file, w, h = image.get("file"), image.get("width"), image.get("height")
        if isinstance(file, str) and isinstance(w, int) and isinstance(h, int):
            out[file] = (w, h)
    return out


def _head(title: str) -> str:
    assets = _assets()
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(assets.csp)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{_e(title)}</title>\n"
        f"<style>{assets.css}</style>\n"
        "</head><body>\n"
    )


def _header(title: str, scan: _Scan, planned_cards: int) -> str:
    def total(key: str, label: str, value: str, css: str = "") -> str:
        cls = f' class="{css}"' if css else ""
        return f'<div{cls}><dt>{label}</dt><dd data-total="{key}">{value}</dd></div>'

    failed = scan.count(_FAILED)
    in_flight = scan.count(_SUBMITTED)
    generated = scan.count(_GENERATED)
    failed_label = '<a href="#failed">failed</a>' if failed else "failed"
    return (
        f"<header><h1>{_e(title)}</h1>\n"
        '<dl class="totals">'
        + total("succeeded", "succeeded", f"{scan.count(_SUCCEEDED):,}", "ok")
        + total("failed", failed_label, f"{failed:,}", "bad" if failed else "")
        + total("submitted", "in flight", f"{in_flight:,}", "busy" if in_flight else "")
        + (
            total("generated", "not downloaded", f"{generated:,}", "busy")
            if generated
            else ""
        )
        + total("jobs", "jobs", f"{len(scan.last):,}")
        + total("images", "images", f"{scan.images:,}")
        + total("first", "first record", _when(scan.first_ts), "when")
        + total("last", "last record", _when(scan.last_ts), "when")
        + "</dl></header>\n"
        '<div class="toolbar">'
        '<input type="search" id="filter" autocomplete="off" spellcheck="false" '
        'placeholder="Filter by prompt, job id or meta  ( / )" '
        'aria-label="Filter images by prompt, job id or meta">'
        f'<output id="shown" for="filter" aria-live="polite">'
        f"{planned_cards:,} shown</output></div>\n"
    )


def _on_disk(run_dir: Path) -> Callable[[str], bool]:
    return lambda rel: (run_dir / rel).is_file()


def _render(
    out: TextIO,
    exists: Callable[[str], bool],
    ledger_path: Path,
    title: str,
    max_images: int,
    max_failed: int,
) -> None:
    scan = _scan(ledger_path)
    total_images = scan.images
    planned_cards = min(max_images, total_images)
    n_failed = scan.count(_FAILED)
    planned_failed = min(max_failed, n_failed)

    out.write(_head(title))
    out.write(_header(title, scan, planned_cards))
    out.write("<main>\n")
    if planned_cards < total_images:
        out.write(
            f'<p class="notice" id="capped">Showing the first {planned_cards:,} of '
            f"{total_images:,} images, in the order their jobs finished; the "
            "filter searches only these. Every image is in <code>images/</code> "
            f"and listed in <code>{_e(ledger_path.name)}</code>.</p>\n"
        )
    if total_images == 0:
        out.write('<p class="empty">No images yet.</p>\n')
    out.write('<p class="empty" id="no-match" hidden>No image matches the filter.</p>')
    out.write('<section class="grid" id="grid" aria-label="Images">\n')

    cards = 0
    failed_rows: list[str] = []
    for record in _last_records(ledger_path, scan):
        if cards >= planned_cards and len(failed_rows) >= planned_failed:
            break  # both lists are full: the rest of the ledger cannot change them
        status = record["status"]
        if status == _SUCCEEDED and cards < planned_cards:
            dims = _dims(record)
            for file in _image_files(record)[: planned_cards - cards]:
                out.write(_card(exists, record, file, dims))
                cards += 1
        elif status == _FAILED and len(failed_rows) < planned_failed:
            failed_rows.append(_failed_row(record))
    out.write("</section>\n")

    if n_failed:
        out.write(
            f'<section id="failed"><h2>Failed jobs ({n_failed:,})</h2>\n'
            "<table><thead><tr><th>job</th><th>stage</th><th>reason</th>"
            "<th>prompt</th><th>when</th></tr></thead><tbody>\n"
        )
        out.writelines(failed_rows)
        out.write("</tbody></table>\n")
        if n_failed > len(failed_rows):
            out.write(
                f'<p class="notice">{n_failed - len(failed_rows):,} more failed '
                f"jobs are not listed; see <code>{_e(ledger_path.name)}</code>.</p>\n"
            )
        out.write("</section>\n")

    out.write(
        f"</main>\n<footer>Generated {_e(utc_now_iso())} from "
        f"<code>{_e(ledger_path.name)}</code>.</footer>\n"
        f"<script>{_assets().js}</script>\n</body></html>\n"
    )


def write_gallery(
    run_dir: Path,
    ledger_path: Path | None = None,
    *,
    title: str | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
    max_failed: int = DEFAULT_MAX_FAILED,
    exists: Callable[[str], bool] | None = None,
) -> Path:
    """Write `run_dir/index.html`, a self-contained contact sheet of the run.

    The grid shows the first `max_images` images (in the order their jobs
    finished) and the failure list the first `max_failed` failed jobs; the
    totals always count the whole ledger. Raises LedgerError if the ledger is
    missing, so a mistyped directory does not get an empty page. `exists` says
    which image files are there when they are not on this disk (a bucket).
    """
    if exists is None:
        exists = _on_disk(run_dir)
    if max_images < 0 or max_failed < 0:
        raise ValueError("max_images and max_failed must be >= 0")
    run = RunDir(run_dir, ledger=ledger_path)
    if not run.ledger.is_file():
        raise LedgerError(f"no ledger at {run.ledger}")
    if title is None:
        title = f"{run_dir.resolve().name or run_dir} — gallery"

    target = run.gallery
    # a lone surrogate from a JSON escape cannot be UTF-8: it becomes a '?'
    with atomic_write(target, "w", errors="replace", newline="\n") as out:
        _render(out, exists, run.ledger, title, max_images, max_failed)
    return target
