"""Tests for the streaming YAML reader: same rows and errors as whole-document
composing, in flat memory, for every YAML shape the manifest format allows."""

from __future__ import annotations

import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_runner.errors import ManifestError
from batch_runner.manifest.fields import _Row
from batch_runner.manifest.reader import iter_jobs, validate_manifest
from batch_runner.manifest.yaml_rows import _composed_rows, _yaml_rows


def write(directory: Path, text: str, name: str = "m.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def outcome(rows: Any) -> tuple[str, object]:
    """The rows a reader gives, or where and why it failed."""
    try:
        return "rows", list(rows)
    except ManifestError as err:
        return "error", (err.line, err.field, err.message)


def assert_same_as_composed(path: Path) -> tuple[str, object]:
    """The streaming reader agrees with composing the whole document."""
    streamed = outcome(_yaml_rows(str(path)))
    composed = outcome(_composed_rows(str(path)))
    assert streamed == composed
    return streamed


SHAPES = {
    "anchors and merge keys": """\
        - &base {prompt: a cat, seed: 1, meta: {set: one}}
        - <<: *base
          prompt: a dog
        - {<<: *base, resolution: 16:9}
        - *base
        """,
    "an anchored meta shared by later jobs": """\
        - prompt: a
          meta: &m {team: x, tags: [a, b]}
        - prompt: b
          meta: *m
        """,
    "defaults after jobs": """\
        jobs:
          - a
          - prompt: b
            seed: 3
        defaults:
          resolution: '16:9'
          meta: {k: v}
        """,
    "defaults after jobs with an alias into the jobs": """\
        jobs:
          - prompt: a
            meta: &m {k: v}
        defaults:
          meta: *m
        """,
    "a top-level merge key": """\
        <<: {defaults: {seed: 4}}
        jobs: [a, b]
        """,
    "jobs given as an alias": """\
        defaults: &d {seed: 1}
        jobs: &j [a, b]
        """,
    "explicit tags and quoting": """\
        - !!str 5
        - prompt: !!str 12
          id: "007"
          seed: !!int "3"
        - {"prompt": 'quoted key', 'seed': 0}
        """,
    "block scalars and flow styles": """\
        - prompt: |
            two
            lines
        - [not a job]
        """,
    "a null job": "- a\n- ~\n",
    "a timestamp in meta": "- prompt: a\n  meta: {when: 2024-01-01}\n",
    "a non-string meta key": "- prompt: a\n  meta: {1: x, null: y}\n",
    "a yaml 1.3 directive libyaml refuses": "%YAML 1.3\n---\n- a\n- b\n",
    "a duplicate anchor": "- &a x\n- &a y\n",
    "an undefined alias": "- a\n- *nope\n",
    "a merge into a job from a later anchor": "- <<: *later\n- &later {prompt: a}\n",
    "unknown key before a duplicate": "- {promt: a, seed: 1, seed: 2}\n",
    "a key that is a list": "- {[a]: 1, prompt: b}\n",
    "an empty jobs key": "defaults: {seed: 1}\njobs:\n",
    "an empty document marker": "---\n...\n",
    "a mapping value for jobs": "jobs: {prompt: a}\n",
    "a second document": "- a\n---\n- b\n",
    "booleans and special floats in meta": """\
        - prompt: a
          meta: {a: yes, b: No, c: .inf, d: -.inf, e: 017, f: 0x1F, g: 0b11}
        - prompt: b
          meta: {sexagesimal: 1:30, float: 1_000.5, empty: , tilde: ~, zero: 0}
        """,
    "an unquoted ratio": "- {prompt: a, resolution: 16:9}\n- {prompt: b, seed: 0}\n",
}


@pytest.mark.parametrize("text", SHAPES.values(), ids=SHAPES.keys())
def test_shapes_read_as_when_composed_whole(tmp_path: Path, text: str) -> None:
    """Each YAML feature gives the rows (or error) whole-document composing gave."""
    assert_same_as_composed(write(tmp_path, text))


def test_defaults_after_jobs_apply(tmp_path: Path) -> None:
    """`defaults` written after the job list still apply to every job."""
    kind, rows = assert_same_as_composed(write(tmp_path, SHAPES["defaults after jobs"]))
    assert kind == "rows"
    assert isinstance(rows, list)
    assert [(r.prompt, r.resolution, r.meta) for r in rows] == [
        ("a", "16:9", {"k": "v"}),
        ("b", "16:9", {"k": "v"}),
    ]


def test_rows_come_before_the_end_is_read(tmp_path: Path) -> None:
    """The first job is produced before the parser reaches a broken last line."""
    jobs = "".join(f"- prompt: job {i}\n  seed: {i}\n" for i in range(2000))
    path = write(tmp_path, jobs + "- prompt: [never closed\n")
    rows = _yaml_rows(str(path))
    first = next(rows)
    assert (first.prompt, first.seed, first.line) == ("job 0", 0, 1)
    with pytest.raises(ManifestError) as err:
        list(rows)
    assert err.value.line == 4001
    assert "end of the file" in err.value.message


def _peak_bytes(path: Path) -> int:
    tracemalloc.start()
    try:
        for _ in _yaml_rows(str(path)):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_memory_does_not_grow_with_the_job_count(tmp_path: Path) -> None:
    """Reading 20,000 jobs peaks at about the memory of reading 1,000."""

    def manifest(n: int) -> Path:
        body = "".join(
            f"- prompt: a lighthouse number {i}\n  seed: {i}\n  meta: {{k: v{i}}}\n"
            for i in range(n)
        )
        return write(
            tmp_path, "defaults: {resolution: '1:1'}\njobs:\n" + body, f"{n}.yaml"
        )

    small, large = _peak_bytes(manifest(1000)), _peak_bytes(manifest(20_000))
    # composing the whole document took about 3 KB per job
    assert large < 2 * small + 200_000, (small, large)


def test_validate_and_iter_jobs_agree_on_a_streamed_file(tmp_path: Path) -> None:
    """Both passes read a streamed mapping manifest to the same jobs."""
    path = write(tmp_path, SHAPES["defaults after jobs"])
    summary = validate_manifest(path)
    jobs = list(iter_jobs(path))
    assert summary.jobs == len(jobs) == 2


# --- property: any document PyYAML can dump reads the same both ways ------------

_scalars = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
)
_meta = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_job = st.one_of(
    st.text(min_size=1, max_size=20),
    st.fixed_dictionaries(
        {"prompt": st.one_of(st.text(max_size=20), st.integers(), st.booleans())},
        optional={
            "seed": st.one_of(
                st.integers(min_value=-5, max_value=2**31), st.text(max_size=3)
            ),
            "id": st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True),
            "resolution": st.sampled_from(["1:1", "16:9", "512x512", "9:16", "huge"]),
            "prompt_extend": st.one_of(st.booleans(), st.integers(0, 2)),
            "repeat": st.integers(min_value=0, max_value=3),
            "meta": _meta,
            "promt": st.just("typo"),
        },
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    jobs=st.lists(_job, max_size=6),
    defaults=st.none()
    | st.fixed_dictionaries({}, optional={"seed": st.integers(0, 9), "meta": _meta}),
    defaults_last=st.booleans(),
    flow=st.sampled_from([False, True, None]),
)
def test_any_dumped_manifest_reads_the_same(
    tmp_path_factory: pytest.TempPathFactory,
    jobs: list[Any],
    defaults: dict[str, Any] | None,
    defaults_last: bool,
    flow: bool | None,
) -> None:
    """Streaming and whole-document composing agree on rows or on the error."""
    document: Any = jobs
    if defaults is not None:
        pairs = [("jobs", jobs), ("defaults", defaults)]
        document = dict(pairs if defaults_last else pairs[::-1])
    text = yaml.safe_dump(document, default_flow_style=flow, sort_keys=False)
    path = tmp_path_factory.mktemp("m") / "m.yaml"
    path.write_text(text, encoding="utf-8")
    assert_same_as_composed(path)


def test_row_type_is_the_shared_row(tmp_path: Path) -> None:
    """The streaming reader yields the same row type the other formats do."""
    (row,) = _yaml_rows(str(write(tmp_path, "- a\n")))
    assert isinstance(row, _Row)
