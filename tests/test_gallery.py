"""The static gallery page: its HTML parsed as data, then the real page in Chromium."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from batch_runner.errors import LedgerError
from batch_runner.models import JobSpec, JobStatus
from batch_runner.outputs.gallery import page as gallery
from batch_runner.outputs.gallery import write_gallery
from batch_runner.store.ledger import encode_record, make_record

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HOSTILE = (
    """<script>alert(1)</script> "double" 'single' & <img src=x onerror=alert(2)>"""
)

# -- a tiny DOM from html.parser ----------------------------------------------

VOID = frozenset(
    [
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    ]
)


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def all(self, tag: str | None = None, **attrs: str) -> Iterator[Node]:
        """This node and its descendants with that tag and those attributes."""
        if (tag is None or self.tag == tag) and all(
            self.attrs.get(k.rstrip("_").replace("_", "-")) == v
            for k, v in attrs.items()
        ):
            yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.all(tag, **attrs)

    def one(self, tag: str | None = None, **attrs: str) -> Node:
        found = list(self.all(tag, **attrs))
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def with_class(self, name: str) -> list[Node]:
        return [n for n in self.all() if name in n.classes()]

    def content(self) -> str:
        """All text inside, as a browser would show it (whitespace collapsed)."""
        parts = [c if isinstance(c, str) else c.content() for c in self.children]
        return re.sub(r"\s+", " ", " ".join(parts)).strip()

    def raw_text(self) -> str:
        return "".join(c for c in self.children if isinstance(c, str))


class TreeBuilder(HTMLParser):
    """Builds a Node tree and fails on any end tag that does not close the open one."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(page: Path) -> Node:
    builder = TreeBuilder()
    builder.feed(page.read_text(encoding="utf-8"))
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root


def totals(doc: Node) -> dict[str, str]:
    return {n.attrs["data-total"]: n.content() for n in doc.all("dd")}


# -- building run directories by hand -----------------------------------------


def job(job_id: str, prompt: str | None = None, **kw: Any) -> JobSpec:
    return JobSpec(job_id=job_id, prompt=prompt or f"prompt of {job_id}", **kw)


def write_ledger(run_dir: Path, records: Sequence[dict[str, Any]]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "ledger.jsonl"
    with path.open("ab") as fh:
        for record in records:
            fh.write(encode_record(record))
    return path


def succeeded(
    run_dir: Path, spec: JobSpec, n: int = 1, *, ts: str | None = None
) -> dict[str, Any]:
    """A succeeded record whose files exist (a few bytes: nothing decodes them)."""
    files = [f"images/{spec.job_id}{'' if n == 1 else f'-{i}'}.png" for i in range(n)]
    for f in files:
        (run_dir / f).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / f).write_bytes(b"\x89PNG fake")
    record = make_record(
        spec, JobStatus.SUCCEEDED, taskid="t", files=files, msg="ok", ts=ts
    )
    record["images"] = [
        {"file": f, "sha256": "0" * 64, "bytes": 9, "width": 96, "height": 168}
        for f in files
    ]
    return record


def failed(spec: JobSpec, msg: str, stage: str = "generate") -> dict[str, Any]:
    return make_record(spec, JobStatus.FAILED, taskid="t", msg=msg, stage=stage)


def submitted(spec: JobSpec, *, ts: str | None = None) -> dict[str, Any]:
    return make_record(spec, JobStatus.SUBMITTED, taskid="t", ts=ts)


@pytest.fixture
def mixed_run(tmp_path: Path) -> Path:
    """Succeeded jobs (one with two images), a retried one, a failure, one in flight."""
    run = tmp_path / "run"
    run.mkdir()
    a = job(
        "a", "A Red Fox in snow", seed=7, resolution="16:9", meta={"client": "Acme"}
    )
    b = job("b", "A lighthouse at dawn")
    c = job("c", "Paper boats", seed=1)
    retried = job("retried", "Retried then fine")
    bad = job("bad", "This one is designed to fail [fail]")
    busy = job("busy", "Still generating")
    write_ledger(
        run,
        [
            submitted(a, ts="2026-01-02T03:04:05.000+00:00"),
            submitted(retried),
            failed(retried, "temporary"),
            succeeded(run, a),
            succeeded(run, b, n=2),
            failed(bad, "simulated generation failure", stage="generate"),
            succeeded(run, retried),
            submitted(busy),
            succeeded(run, c, ts="2099-12-31T23:59:59.999+00:00"),
        ],
    )
    return run


# -- the HTML as data -----------------------------------------------------------


def test_grid_has_one_lazy_relative_img_per_image(mixed_run: Path) -> None:
    """Each image of each job's last succeeded record is one card with a lazy img."""
    page = write_gallery(mixed_run)
    assert page == mixed_run / "index.html"
    doc = parse(page)
    imgs = list(doc.all("img"))
    assert [i.attrs["src"] for i in imgs] == [
        "images/a.png",
        "images/b-0.png",
        "images/b-1.png",
        "images/retried.png",
        "images/c.png",
    ]
    for img in imgs:
        assert img.attrs["loading"] == "lazy"
        assert (mixed_run / img.attrs["src"]).is_file()
    cards = list(doc.all("figure"))
    assert len(cards) == len(imgs)
    fox = cards[0]
    assert fox.one("img").attrs["alt"] == "A Red Fox in snow"
    text = fox.content()
    for shown in ("A Red Fox in snow", "seed 7", "16:9", "a", "client=Acme"):
        assert shown in text
    assert "seed random" in cards[1].content()
    search = fox.attrs["data-search"]
    assert search == search.lower()
    assert "red fox" in search and "client=acme" in search
    assert doc.one("output", id="shown").content() == "5 shown"
    assert doc.one("input", id="filter").attrs["type"] == "search"


def test_header_totals_count_each_jobs_last_record(mixed_run: Path) -> None:
    """A job that failed then succeeded counts once, as succeeded; stamps span all."""
    doc = parse(write_gallery(mixed_run, title="Nightly <batch>"))
    assert doc.one("title").content() == "Nightly <batch>"
    assert doc.one("h1").content() == "Nightly <batch>"
    t = totals(doc)
    assert {
        k: t[k] for k in ("succeeded", "failed", "submitted", "jobs", "images")
    } == {
        "succeeded": "4",
        "failed": "1",
        "submitted": "1",
        "jobs": "6",
        "images": "5",
    }
    assert t["first"] == "2026-01-02 03:04:05 UTC"
    assert t["last"] == "2099-12-31 23:59:59 UTC"


def test_failed_jobs_are_listed_with_reason_and_stage(mixed_run: Path) -> None:
    """Failures get their own section; one that later succeeded is not there."""
    doc = parse(write_gallery(mixed_run))
    section = doc.one("section", id="failed")
    assert "Failed jobs (1)" in section.one("h2").content()
    rows = list(section.one("tbody").all("tr"))
    assert len(rows) == 1
    cells = [td.content() for td in rows[0].all("td")]
    assert cells[:4] == [
        "bad",
        "generate",
        "simulated generation failure",
        "This one is designed to fail [fail]",
    ]
    assert "retried" not in section.content()
    assert doc.one("a", href="#failed")


def test_hostile_text_is_escaped_everywhere(tmp_path: Path) -> None:
    """Markup in prompts, meta, messages and the title stays text, adds no element."""
    run = tmp_path / "run"
    evil = job("evil", HOSTILE, meta={HOSTILE: HOSTILE})
    gone = job("gone", HOSTILE)
    write_ledger(run, [succeeded(run, evil), failed(gone, HOSTILE, stage=HOSTILE)])
    page = write_gallery(run, title=HOSTILE)
    raw = page.read_text(encoding="utf-8")
    assert "<script>alert" not in raw and "<img src=x" not in raw
    doc = parse(page)
    scripts = list(doc.all("script"))
    assert len(scripts) == 1 and "src" not in scripts[0].attrs
    assert len(list(doc.all("img"))) == 1
    for node in doc.all():
        assert not any(name.startswith("on") for name in node.attrs), node
    assert doc.one("img").attrs["alt"] == HOSTILE
    assert doc.one("h1").content() == HOSTILE
    card = doc.one("figure")
    assert HOSTILE.lower() in card.attrs["data-search"]
    assert card.with_class("prompt")[0].content() == HOSTILE
    row = doc.one("section", id="failed").one("tbody").one("tr")
    assert [td.content() for td in row.all("td")][1:4] == [HOSTILE, HOSTILE, HOSTILE]


def test_page_is_self_contained_and_pins_its_own_code(mixed_run: Path) -> None:
    """No external URL anywhere; the CSP allows exactly the inline style and script."""
    doc = parse(write_gallery(mixed_run))
    for node in doc.all():
        for name in ("src", "href"):
            value = node.attrs.get(name)
            if value is not None and name == "href" and node.tag == "link":
                assert value == "data:,"
            elif value is not None:
                assert not re.match(r"^[a-z][a-z0-9+.-]*:|^//|^/", value), value
    assert not [n for n in doc.all("link") if n.attrs.get("rel") != "icon"]
    csp = doc.one("meta", http_equiv="Content-Security-Policy").attrs["content"]

    def pinned(node: Node) -> str:
        digest = hashlib.sha256(node.raw_text().encode()).digest()
        return f"'sha256-{base64.b64encode(digest).decode()}'"

    assert f"style-src {pinned(doc.one('style'))}" in csp
    assert f"script-src {pinned(doc.one('script'))}" in csp
    assert "default-src 'none'" in csp


def test_grid_is_capped_and_the_page_says_so(tmp_path: Path) -> None:
    """Past max_images the grid stops, the totals count all, and a notice says so."""
    run = tmp_path / "run"
    write_ledger(run, [succeeded(run, job(f"j{i}")) for i in range(5)])
    write_ledger(run, [failed(job(f"f{i}"), f"reason {i}") for i in range(4)])
    doc = parse(write_gallery(run, max_images=3, max_failed=2))
    assert [i.attrs["src"] for i in doc.all("img")] == [
        "images/j0.png",
        "images/j1.png",
        "images/j2.png",
    ]
    assert totals(doc)["images"] == "5"
    assert "Showing the first 3 of 5 images" in doc.one(id="capped").content()
    assert doc.one("output", id="shown").content() == "3 shown"
    failed_section = doc.one("section", id="failed")
    assert len(list(failed_section.all("tr"))) == 1 + 2
    assert "2 more failed jobs are not listed" in failed_section.content()


def test_missing_and_unsafe_files_get_a_placeholder_not_a_link(tmp_path: Path) -> None:
    """A deleted image or a path leaving the run directory is named, never linked."""
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    paths = ["images/gone.png", "../outside.png", "/etc/passwd", "javascript:alert(1)"]
    records = [
        make_record(job(f"j{i}"), JobStatus.SUCCEEDED, taskid="t", files=[p])
        for i, p in enumerate(paths)
    ]
    (tmp_path / "outside.png").write_bytes(b"x")
    write_ledger(run, records)
    doc = parse(write_gallery(run))
    assert list(doc.all("img")) == [] and list(doc.all("a", class_="thumb")) == []
    placeholders = doc.with_class("missing")
    assert len(placeholders) == 4
    assert "missing file images/gone.png" in placeholders[0].content()
    for node, path in zip(placeholders[1:], paths[1:], strict=True):
        assert f"unsafe path {path}" in node.content()


def test_records_appended_during_the_write_do_not_tear_the_page(
    mixed_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live run appending between the two passes: the page is the first pass's."""
    real_scan = gallery._scan

    def scan_then_append(path: Path) -> gallery._Scan:
        result = real_scan(path)
        write_ledger(
            mixed_run,
            [
                failed(job("a", "A Red Fox in snow"), "APPENDED-LATE"),
                succeeded(mixed_run, job("new")),
            ],
        )
        return result

    monkeypatch.setattr(gallery, "_scan", scan_then_append)
    doc = parse(write_gallery(mixed_run))
    assert len(list(doc.all("img"))) == 5
    assert "images/a.png" in [i.attrs["src"] for i in doc.all("img")]
    assert "images/new.png" not in [i.attrs["src"] for i in doc.all("img")]
    assert totals(doc)["failed"] == "1"
    assert "APPENDED-LATE" not in doc.one("section", id="failed").content()


def test_a_missing_ledger_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    """A mistyped run directory fails loudly instead of getting an empty page."""
    with pytest.raises(LedgerError, match="no ledger"):
        write_gallery(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_rewrite_is_atomic(mixed_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed render keeps the old page and no temp file; a good one replaces it."""
    page = mixed_run / "index.html"
    page.write_text("old page")

    def boom(*args: object) -> None:
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as m:
        m.setattr(gallery, "_render", boom)
        with pytest.raises(RuntimeError):
            write_gallery(mixed_run)
    assert page.read_text() == "old page"
    assert sorted(p.name for p in mixed_run.iterdir()) == [
        "images",
        "index.html",
        "ledger.jsonl",
    ]
    write_gallery(mixed_run)
    assert page.read_text().startswith("<!doctype html>")
    assert not [p for p in mixed_run.iterdir() if p.name.endswith(".tmp")]


def test_unreadable_lines_and_odd_fields_do_not_break_the_page(tmp_path: Path) -> None:
    """Torn lines are skipped; odd seeds, meta and lone surrogates still render."""
    run = tmp_path / "run"
    odd = succeeded(run, job("odd", "bad \ud800 surrogate"))
    odd.update(seed=True, meta=["not", "a", "dict"], resolution=None, ts="yesterday")
    # json.dumps escapes the lone surrogate, as a hand-made ledger might
    (run / "ledger.jsonl").write_text(json.dumps(odd) + "\n")
    with (run / "ledger.jsonl").open("ab") as fh:
        fh.write(b"not json\n[1, 2]\n" + b'{"job_id": "torn", "status": "succ')
    doc = parse(write_gallery(run))
    card = doc.one("figure")
    assert "bad ? surrogate" in card.content()
    assert "seed random" in card.content()
    t = totals(doc)
    assert (t["jobs"], t["first"], t["last"]) == ("1", "—", "—")


def test_a_big_ledger_gives_a_bounded_page(tmp_path: Path) -> None:
    """50,000 jobs with 100,000 records: 5,000 cards and a page of a few MB."""
    run = tmp_path / "run"
    run.mkdir()
    n = 50_000
    with (run / "ledger.jsonl").open("wb") as fh:
        for i in range(n):
            spec = job(f"job-{i}", f"prompt number {i} " + "x" * 100, seed=i)
            fh.write(encode_record(submitted(spec)))
        for i in range(n):
            spec = job(f"job-{i}", f"prompt number {i} " + "x" * 100, seed=i)
            record = make_record(
                spec, JobStatus.SUCCEEDED, taskid="t", files=[f"images/job-{i}.png"]
            )
            fh.write(encode_record(record))
    page = write_gallery(run)
    doc = parse(page)
    assert len(list(doc.all("figure"))) == gallery.DEFAULT_MAX_IMAGES
    assert totals(doc)["images"] == "50,000"
    assert "Showing the first 5,000 of 50,000 images" in doc.one(id="capped").content()
    assert page.stat().st_size < 5_000_000


# -- the real page in headless Chromium ---------------------------------------

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1200,900",
]

# Installed before any page script: records errors, failed loads, CSP
# violations and alerts instead of letting them pass silently.
WATCH_JS = """
window.__errors = [];
window.__alerts = [];
window.addEventListener("error", function (e) {
  var what = e.message || (e.target && (e.target.src || e.target.tagName)) || e.type;
  window.__errors.push(String(what));
}, true);
document.addEventListener("securitypolicyviolation", function (e) {
  window.__errors.push("CSP blocked " + e.blockedURI + " by " + e.violatedDirective);
});
window.alert = window.confirm = window.prompt = function (m) {
  window.__alerts.push(String(m));
};
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Debian Chromium through its packaged chromedriver; never downloads."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed "
            "(apt-get install -y chromium chromium-driver)"
        )
    # imported here so the HTML tests run without selenium; where Chromium is
    # installed a missing selenium is an error, not a skip
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: Selenium Manager would try to download one
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(15)
        driver.set_script_timeout(10)
        driver.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_JS}
        )
        yield driver
    finally:
        driver.quit()


BROWSER_JOBS = [
    {"prompt": "A red fox asleep in fresh snow"},
    {"prompt": "A red fox hunting mice, telephoto", "seed": 3},
    {"prompt": "Arctic fox portrait", "resolution": "9:16"},
    {"prompt": "Album cover, teal and gold", "meta": {"client": "acme"}},
    {
        "prompt": "Hero banner of green hills",
        "resolution": "16:9",
        "meta": {"client": "ACME"},
    },
    {"prompt": HOSTILE},
    {"prompt": "A lighthouse at dawn"},
    {"prompt": "A bowl of ramen, film photo"},
    {"prompt": "Macro photo of a dew-covered web", "resolution": "3:4"},
    {"prompt": "This one is designed to fail [fail]"},
]


def full_page_png(driver: WebDriver) -> bytes:
    """The whole page, not just the window: what a reviewer of the CI artifact wants."""
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    return base64.b64decode(shot["data"])


def visible_cards(driver: WebDriver) -> int:
    from selenium.webdriver.common.by import By

    return sum(
        1 for c in driver.find_elements(By.CSS_SELECTOR, ".card") if c.is_displayed()
    )


def test_gallery_renders_and_filters_in_chromium(
    tmp_path: Path, browser: WebDriver
) -> None:
    """A real mock run's page loads every image, filters live, runs no injected code."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from batch_runner.cli.main import main

    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(j) + "\n" for j in BROWSER_JOBS))
    run = tmp_path / "run"
    code = main(
        [
            "run",
            str(manifest),
            "--mock",
            "--out",
            str(run),
            "--no-progress",
            "--poll-interval",
            "0.02",
            "--mock-generation-time",
            "0.01",
        ]
    )
    assert code == 1  # the [fail] job
    page = write_gallery(run)

    browser.get(page.as_uri())
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 9
    # lazy images load only near the viewport: bring each one there
    for img in images:
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", img)
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script(
            "return Array.from(document.images)"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
    )
    browser.execute_script("window.scrollTo(0, 0)")

    shown = browser.find_element(By.ID, "shown")
    box = browser.find_element(By.ID, "filter")
    assert shown.text == "9 shown" and visible_cards(browser) == 9
    assert browser.find_element(By.CSS_SELECTOR, "[data-total=failed]").text == "1"
    failed_rows = browser.find_elements(By.CSS_SELECTOR, "#failed tbody tr")
    assert len(failed_rows) == 1
    assert "simulated generation failure" in failed_rows[0].text
    hostile_card = browser.find_elements(By.CSS_SELECTOR, ".card .prompt")
    assert HOSTILE in [c.text for c in hostile_card]

    def filter_for(text: str) -> tuple[str, int]:
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE)
        if text:
            box.send_keys(text)
        return shown.text, visible_cards(browser)

    assert filter_for("FOX") == ("3 shown", 3)
    assert filter_for("red fox") == ("2 shown", 2)
    assert filter_for("acme") == ("2 shown", 2)  # meta, either case
    assert filter_for("<script>") == ("1 shown", 1)
    no_match = browser.find_element(By.ID, "no-match")
    assert not no_match.is_displayed()
    assert filter_for("no such prompt") == ("0 shown", 0)
    assert no_match.is_displayed()
    assert filter_for("") == ("9 shown", 9)

    assert browser.execute_script("return window.__alerts") == []
    assert browser.execute_script("return window.__errors") == []
    log = browser.get_log("browser")  # type: ignore[no-untyped-call]
    severe = [e for e in log if e["level"] == "SEVERE"]
    assert severe == []

    box.send_keys(Keys.ESCAPE)
    browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    shot = run / "gallery-screenshot.png"
    shot.write_bytes(full_page_png(browser))
    assert shot.read_bytes().startswith(b"\x89PNG")


# -- one rule for safe paths, assets as package data -----------------------------


def test_gallery_shows_exactly_the_files_the_dataset_exports(tmp_path: Path) -> None:
    """The gallery and metadata.jsonl agree on every path, odd ones included:
    one function decides which ledger paths are safe."""
    from urllib.parse import unquote

    from batch_runner.outputs.dataset import write_metadata

    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    paths = [
        "images/ok.png",
        "images/./dot.png",
        "images//double.png",
        "C:drive.png",
        "images\\back.png",
        "images/a:b.png",
    ]
    for path in [*paths, "images/back.png", "images/dot.png", "images/double.png"]:
        (run / path).write_bytes(b"\x89PNG fake")
    records = [
        make_record(job(f"j{i}"), JobStatus.SUCCEEDED, taskid="t", files=[p])
        for i, p in enumerate(paths)
    ]
    write_ledger(run, records)
    shown = {unquote(i.attrs["src"]) for i in parse(write_gallery(run)).all("img")}
    write_metadata(run)
    rows = (run / "metadata.jsonl").read_text().splitlines()
    exported = {json.loads(row)["file_name"] for row in rows}
    assert shown == exported == {"images/ok.png", "images/dot.png", "images/double.png"}


def test_css_and_js_are_package_data_used_verbatim(mixed_run: Path) -> None:
    """The page inlines gallery.css and gallery.js, read as package resources."""
    from importlib.resources import files

    assets = files("batch_runner.outputs.gallery")
    css = assets.joinpath("gallery.css").read_text(encoding="utf-8")
    js = assets.joinpath("gallery.js").read_text(encoding="utf-8")
    assert "grid-template-columns" in css and "addEventListener" in js
    doc = parse(write_gallery(mixed_run))
    assert doc.one("style").raw_text() == css
    assert doc.one("script").raw_text() == js


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_built_wheel_ships_the_gallery_assets(tmp_path: Path) -> None:
    """`pip wheel` of the project (a non-editable install's contents) includes
    gallery.css and gallery.js beside the gallery code."""
    import shutil
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parent.parent
    src = tmp_path / "src"
    shutil.copytree(
        root / "batch_runner",
        src / "batch_runner",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("gallery.css", "gallery.js"):
        assert f"batch_runner/outputs/gallery/{asset}" in names
    assert "batch_runner/outputs/gallery/__init__.py" in names
