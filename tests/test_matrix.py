"""Tests for prompt matrices: expansion, templates, errors, ids, and laziness."""

from __future__ import annotations

import itertools
import json
import math
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_runner.cli.main import main
from batch_runner.errors import ManifestError
from batch_runner.manifest.identity import derive_job_id
from batch_runner.manifest.reader import iter_jobs, validate_manifest
from batch_runner.models import JobSpec

ISSUE_EXAMPLE = {
    "prompt": "a {animal} in {style} style",
    "matrix": {"animal": ["cat", "dog", "owl"], "style": ["watercolor", "pixel art"]},
    "repeat": 2,
}


def write(directory: Path, name: str, content: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(content), encoding="utf-8")
    return path


def jobs_of(path: Path) -> list[JobSpec]:
    summary = validate_manifest(path)
    jobs = list(iter_jobs(path, repeated=summary.repeated))
    assert summary.jobs == len(jobs)
    return jobs


def error_of(path: Path) -> ManifestError:
    with pytest.raises(ManifestError) as err:
        validate_manifest(path)
    with pytest.raises(ManifestError) as again:
        list(iter_jobs(path))
    assert (again.value.line, again.value.field) == (err.value.line, err.value.field)
    return err.value


@pytest.mark.parametrize("name", ["m.yaml", "m.jsonl"])
def test_issue_example_is_twelve_jobs(tmp_path: Path, name: str) -> None:
    """3 animals x 2 styles x repeat 2 is 12 jobs with filled prompts and meta."""
    text = (
        yaml.safe_dump([ISSUE_EXAMPLE])
        if name.endswith("yaml")
        else json.dumps(ISSUE_EXAMPLE) + "\n"
    )
    jobs = jobs_of(write(tmp_path, name, text))
    assert len(jobs) == 12
    prompts = [j.prompt for j in jobs]
    assert prompts[:4] == [
        "a cat in watercolor style",
        "a cat in watercolor style",
        "a cat in pixel art style",
        "a cat in pixel art style",
    ]
    assert {(j.meta["animal"], j.meta["style"]) for j in jobs} == set(
        itertools.product(["cat", "dog", "owl"], ["watercolor", "pixel art"])
    )
    # an expanded job's id is derived like any other job's, then `repeat`ed
    base = derive_job_id("a cat in watercolor style", "1024*1024", None, None)
    assert [j.job_id for j in jobs[:2]] == [f"{base}-0", f"{base}-1"]
    assert len({j.job_id for j in jobs}) == 12
    assert all(j.source == f"{tmp_path / name}:1" for j in jobs)


def test_meta_merges_job_defaults_and_variables(tmp_path: Path) -> None:
    """Variables' values are merged over the job's meta, which is over the defaults'."""
    path = write(
        tmp_path,
        "m.yaml",
        """\
        defaults: {meta: {set: s, animal: default}}
        jobs:
          - prompt: "{animal} {n}"
            meta: {kind: k, n: from-meta}
            matrix: {animal: [cat], n: [1, 2.5]}
        """,
    )
    jobs = jobs_of(path)
    assert [j.prompt for j in jobs] == ["cat 1", "cat 2.5"]
    assert [dict(j.meta) for j in jobs] == [
        {"set": "s", "animal": "cat", "kind": "k", "n": 1},
        {"set": "s", "animal": "cat", "kind": "k", "n": 2.5},
    ]
    assert jobs[0].meta is not jobs[1].meta


def test_id_template_is_filled(tmp_path: Path) -> None:
    """An explicit id is a template too, and `repeat` suffixes each filled id."""
    path = write(
        tmp_path,
        "m.yaml",
        """\
        - id: "{animal}_{size}"
          prompt: "a {size} {animal}"
          matrix: {animal: [cat, dog], size: [S, L]}
          seed: 7
          repeat: 2
        """,
    )
    jobs = jobs_of(path)
    assert [(j.job_id, j.prompt, j.seed) for j in jobs[:3]] == [
        ("cat_S-0", "a S cat", 7),
        ("cat_S-1", "a S cat", 8),
        ("cat_L-0", "a L cat", 7),
    ]
    assert len(jobs) == 8


def test_braces(tmp_path: Path) -> None:
    """`{{`/`}}` are literal braces with a matrix; without one, prompts are verbatim."""
    path = write(
        tmp_path,
        "m.yaml",
        """\
        - prompt: "{{literal}} {x} }}{{ {{{x}}}"
          matrix: {x: [a]}
        - "no matrix: {x} {{y}} } {"
        """,
    )
    jobs = jobs_of(path)
    assert [j.prompt for j in jobs] == [
        "{literal} a }{ {a}",
        "no matrix: {x} {{y}} } {",
    ]


@pytest.mark.parametrize(
    ("content", "line", "field", "match"),
    [
        # a placeholder with no variable
        ('- prompt: "a {animal} {colour}"\n  matrix: {animal: [cat]}\n', 1, "prompt",
         "{colour} has no variable"),
        # a variable no placeholder uses
        ('- prompt: "a {animal}"\n  matrix:\n    animal: [cat]\n    style: [x]\n', 2,
         "matrix", "'style' is not used"),
        # an empty list
        ('- prompt: "a {animal}"\n  matrix: {animal: []}\n', 2, "matrix",
         "non-empty list"),
        ('- prompt: "a {animal}"\n  matrix: {animal: cat}\n', 2, "matrix",
         "non-empty list"),
        ('- prompt: "a {animal}"\n  matrix: [cat]\n', 2, "matrix", "mapping"),
        ('- prompt: "a {animal}"\n  matrix: {}\n', 2, "matrix", "mapping"),
        ('- prompt: "a {x}"\n  matrix: {x: [yes, b]}\n', 2, "matrix", "quote it"),
        ('- prompt: "a {x}"\n  matrix: {x: [[1], b]}\n', 2, "matrix", "not a list"),
        ('- prompt: "a {x}"\n  matrix: {x: [a, b, a]}\n', 2, "matrix", "twice"),
        ('- prompt: "a {1}"\n  matrix: {1: [a]}\n', 2, "matrix", "not a name"),
        ('- prompt: "a {x} {"\n  matrix: {x: [a]}\n', 1, "prompt", "single '{'"),
        ('- prompt: "a {x} }"\n  matrix: {x: [a]}\n', 1, "prompt", "single '}'"),
        ('- prompt: "a {x.y}"\n  matrix: {x: [a]}\n', 1, "prompt", "not a variable"),
        ('- prompt: "a {}"\n  matrix: {x: [a]}\n', 1, "prompt", "not a variable"),
        # duplicate ids after expansion: the id leaves out a variable...
        ('- prompt: "{a} {b}"\n  id: "j-{a}"\n  matrix: {a: [x, y], b: [1, 2]}\n', 2,
         "id", "leaves out {b}"),
        # ... or the filled ids repeat anyway
        ('- prompt: "{a} {b}"\n  id: "{a}{b}"\n  matrix: {a: [x, xy], b: [yz, z]}\n',
         1, "id", "duplicate job id 'xyz'"),
        # a filled id that is not a usable id
        ('- prompt: "{a}"\n  id: "j {a}"\n  matrix: {a: [x]}\n', 1, "id",
         "contains ' '"),
        ('- prompt: "{a}"\n  matrix: {a: ["", " "]}\n', 1, "prompt",
         "prompt is empty (matrix a='')"),
        ("defaults:\n  matrix: {a: [x]}\njobs: [a]\n", 2, "matrix",
         "cannot have a default"),
    ],
)  # fmt: skip
def test_bad_matrices(
    tmp_path: Path, content: str, line: int, field: str, match: str
) -> None:
    """Every matrix mistake is one error naming file, line and field."""
    path = write(tmp_path, "m.yaml", content)
    err = error_of(path)
    assert (err.path, err.line, err.field) == (str(path), line, field), str(err)
    assert match in err.message, str(err)


def test_matrix_is_not_a_csv_column(tmp_path: Path) -> None:
    """CSV has no matrices: the column is unknown, not silently ignored."""
    err = error_of(write(tmp_path, "m.csv", "prompt,matrix\na,b\n"))
    assert (err.line, err.field) == (1, "matrix")


def test_a_bad_matrix_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A matrix error exits 2 before the simulator sees a single request."""
    good = "".join(f'- "job {i}"\n' for i in range(3))
    bad = '- prompt: "a {animal}"\n  matrix: {animal: [cat], unused: [x]}\n'
    path = write(tmp_path, "m.yaml", good + bad)
    out = tmp_path / "run"
    assert main(["run", str(path), "--mock", "--out", str(out), "--no-progress"]) == 2
    assert "'unused' is not used" in capsys.readouterr().err
    assert not (out / "ledger.jsonl").exists()


def test_dry_run_shows_the_expanded_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run counts the expanded jobs and says how many came from matrices."""
    path = write(tmp_path, "m.yaml", yaml.safe_dump([ISSUE_EXAMPLE, "plain"]))
    assert main(["run", str(path), "--dry-run", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "plan: 13 jobs: 13 to submit" in out
    assert "matrices:        1 row(s) expanded into 12 jobs" in out


def test_a_million_job_matrix_is_never_materialised(tmp_path: Path) -> None:
    """The first jobs of a 1000 x 1000 matrix come in a few kilobytes."""
    job = {
        "prompt": "{a} and {b}",
        "matrix": {"a": list(range(1000)), "b": [f"v{i}" for i in range(1000)]},
    }
    path = write(tmp_path, "m.jsonl", json.dumps(job) + "\n")
    tracemalloc.start()
    try:
        first = list(itertools.islice(iter_jobs(path), 5000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [j.prompt for j in first[:2]] == ["0 and v0", "0 and v1"]
    assert first[-1].prompt == "4 and v999"
    # a million prompts alone would be over 60 MB
    assert peak < 8_000_000, peak


# --- properties ------------------------------------------------------------------

_names = st.lists(
    st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True),
    min_size=1,
    max_size=3,
    unique=True,
)
_value = st.one_of(
    st.text(
        alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1,
        max_size=8,
    ),
    st.integers(min_value=-1000, max_value=1000),
)  # fmt: skip


@st.composite
def matrices(draw: st.DrawFn) -> tuple[dict[str, list[Any]], str, int | None]:
    names = draw(_names)
    matrix = {
        name: draw(st.lists(_value, min_size=1, max_size=4, unique_by=lambda v: str(v)))
        for name in names
    }
    # literal text, with braces escaped, around every placeholder
    literal = st.text(alphabet="ab {}", max_size=4).map(
        lambda t: t.replace("{", "{{").replace("}", "}}")
    )
    parts = [draw(literal)]
    for name in draw(st.permutations(names)):
        parts += [f"{{{name}}}", draw(literal)]
    repeat = draw(st.none() | st.integers(min_value=1, max_value=3))
    return matrix, "x" + "".join(parts), repeat


def _write_job(
    path: Path, matrix: dict[str, list[Any]], prompt: str, repeat: int | None
) -> None:
    job: dict[str, Any] = {"prompt": prompt, "matrix": matrix}
    if repeat is not None:
        job["repeat"] = repeat
    path.write_text(json.dumps(job) + "\n", encoding="utf-8")


@settings(max_examples=120, deadline=None)
@given(case=matrices())
def test_expansion_properties(
    tmp_path_factory: pytest.TempPathFactory,
    case: tuple[dict[str, list[Any]], str, int | None],
) -> None:
    """Count is product x repeat; placeholders are filled; ids are unique, stable."""
    matrix, prompt, repeat = case
    path = tmp_path_factory.mktemp("m") / "m.jsonl"
    _write_job(path, matrix, prompt, repeat)
    summary = validate_manifest(path)
    jobs = list(iter_jobs(path))
    size = math.prod(len(v) for v in matrix.values())
    distinct_prompts = {j.prompt for j in jobs}
    # distinct combinations can fill to the same prompt ("a"+"bc" = "ab"+"c"):
    # then the derived id is the same job, which runs once
    assert len(jobs) == summary.jobs == len(distinct_prompts) * (repeat or 1)
    assert len(distinct_prompts) <= size
    assert len({j.job_id for j in jobs}) == len(jobs)
    for job in jobs:
        values = {name: job.meta[name] for name in matrix}
        assert job.prompt == prompt.format(**{k: str(v) for k, v in values.items()})
    expected = {
        prompt.format(**{n: str(v) for n, v in zip(matrix, combo, strict=True)})
        for combo in itertools.product(*matrix.values())
    }
    assert distinct_prompts == expected
    # stable: the values in another order give the same jobs, ids and all
    shuffled = {name: list(reversed(values)) for name, values in matrix.items()}
    _write_job(path, shuffled, prompt, repeat)
    again = {(j.job_id, j.prompt, j.seed) for j in iter_jobs(path)}
    assert again == {(j.job_id, j.prompt, j.seed) for j in jobs}


@settings(max_examples=60, deadline=None)
@given(
    names=_names,
    sizes=st.lists(st.integers(min_value=1, max_value=5), min_size=3, max_size=3),
    repeat=st.integers(min_value=1, max_value=4),
)
def test_count_is_product_times_repeat(
    tmp_path_factory: pytest.TempPathFactory,
    names: list[str],
    sizes: list[int],
    repeat: int,
) -> None:
    """With space-separated placeholders, jobs = product(sizes) x repeat."""
    matrix = {
        name: [f"{name}{i}" for i in range(size)]
        for name, size in zip(names, sizes, strict=False)
    }
    prompt = " ".join(f"{{{name}}}" for name in names)
    path = tmp_path_factory.mktemp("m") / "m.jsonl"
    _write_job(path, matrix, prompt, repeat)
    expected = math.prod(len(v) for v in matrix.values()) * repeat
    assert validate_manifest(path).jobs == expected
    assert validate_manifest(path).matrix_jobs == expected
    assert len(list(iter_jobs(path))) == expected


def test_jobs_given_as_values_expand_too(tmp_path: Path) -> None:
    """A matrix in jobs handed to plan() expands like one in a manifest file."""
    import batch_runner

    the_plan = batch_runner.plan([ISSUE_EXAMPLE, "plain"], out=tmp_path / "run")
    assert (the_plan.total, the_plan.matrix_rows, the_plan.matrix_jobs) == (13, 1, 12)
