"""Tests for the manifest reader: the three formats, every error, duplicates."""

from __future__ import annotations

import codecs
import csv
import json
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from batch_runner.errors import ManifestError
from batch_runner.manifest.identity import MAX_SEED, derive_base_seed, derive_job_id
from batch_runner.manifest.reader import (
    MAX_PROMPT_CHARS,
    ManifestSummary,
    iter_jobs,
    validate_manifest,
)
from batch_runner.models import JobSpec

DEFAULT = "1024*1024"


def write(directory: Path, name: str, content: str | bytes) -> Path:
    """Write a manifest; text is dedented and written as UTF-8 with LF endings."""
    path = directory / name
    if isinstance(content, str):
        path.write_bytes(textwrap.dedent(content).encode("utf-8"))
    else:
        path.write_bytes(content)
    return path


def load(path: Path) -> tuple[ManifestSummary, list[JobSpec]]:
    """Run both passes the way the runner does."""
    summary = validate_manifest(path)
    return summary, list(iter_jobs(path))


def error_of(path: Path) -> ManifestError:
    """Return the error of both passes, checking they agree on where it is."""
    with pytest.raises(ManifestError) as first:
        validate_manifest(path)
    with pytest.raises(ManifestError) as second:
        list(iter_jobs(path))
    err = first.value
    assert (second.value.path, second.value.line, second.value.field) == (
        err.path,
        err.line,
        err.field,
    )
    return err


def assert_error(
    path: Path, line: int | None, field: str | None, match: str = ""
) -> ManifestError:
    """Assert that the manifest fails at exactly `path:line`, naming `field`."""
    err = error_of(path)
    assert (err.path, err.line, err.field) == (str(path), line, field), str(err)
    assert match in err.message, str(err)
    return err


def derived(
    prompt: str,
    resolution: str = DEFAULT,
    seed: int | None = None,
    extend: bool | None = None,
) -> str:
    return derive_job_id(prompt, resolution, seed, extend)


# --- YAML ----------------------------------------------------------------------


def test_yaml_list_of_jobs(tmp_path: Path) -> None:
    """A YAML list of bare prompts and mappings gives the expected JobSpecs."""
    path = write(
        tmp_path,
        "m.yaml",
        """\
        - a cat
        - prompt: a dog
          id: dog
          resolution: 16:9
          seed: 7
          prompt_extend: true
        - prompt: "  spaced  "
          resolution: 1024x768
          prompt_extend: 0
        """,
    )
    summary, jobs = load(path)
    assert summary == ManifestSummary(str(path), 3, 0, ())
    assert jobs == [
        JobSpec(derived("a cat"), "a cat", DEFAULT, None, None, {}, f"{path}:1"),
        JobSpec("dog", "a dog", "16:9", 7, True, {}, f"{path}:2"),
        JobSpec(
            derived("  spaced  ", "1024*768", None, False),
            "  spaced  ",
            "1024*768",
            None,
            False,
            {},
            f"{path}:7",
        ),
    ]


def test_yaml_defaults_and_jobs(tmp_path: Path) -> None:
    """Defaults fill absent fields and job meta is merged over default meta."""
    path = write(
        tmp_path,
        "m.yml",
        """\
        defaults:
          resolution: 768x1344
          seed: 3
          prompt_extend: 0
          meta: {project: zoo, tier: 1}
        jobs:
          - a cat
          - prompt: a dog
            meta: {tier: 2, tags: [x, y]}
          - prompt: a cow
            seed: 9
            resolution: "1:1"
        """,
    )
    _, jobs = load(path)
    assert [
        (j.prompt, j.resolution, j.seed, j.prompt_extend, j.meta) for j in jobs
    ] == [
        ("a cat", "768*1344", 3, False, {"project": "zoo", "tier": 1}),
        (
            "a dog",
            "768*1344",
            3,
            False,
            {"project": "zoo", "tier": 2, "tags": ["x", "y"]},
        ),
        ("a cow", "1:1", 9, False, {"project": "zoo", "tier": 1}),
    ]
    assert [j.source for j in jobs] == [f"{path}:7", f"{path}:8", f"{path}:10"]
    assert jobs[0].job_id == derived("a cat", "768*1344", 3, False)
    assert jobs[0].meta is not jobs[2].meta


def test_yaml_bare_strings_get_default_repeat(tmp_path: Path) -> None:
    """A default `repeat` expands bare prompts into -k ids with consecutive seeds."""
    path = write(
        tmp_path,
        "m.yaml",
        """\
        defaults: {repeat: 3}
        jobs:
          - a cat
          - prompt: a dog
            seed: 100
            id: dog
        """,
    )
    summary, jobs = load(path)
    base = derived("a cat")
    start = derive_base_seed(base)
    assert summary.jobs == 6
    assert [(j.job_id, j.seed) for j in jobs] == [
        (f"{base}-0", start),
        (f"{base}-1", start + 1),
        (f"{base}-2", start + 2),
        ("dog-0", 100),
        ("dog-1", 101),
        ("dog-2", 102),
    ]
    assert all(j.source == f"{path}:3" for j in jobs[:3])


def test_yaml_meta_passthrough(tmp_path: Path) -> None:
    """Meta of any JSON-able shape is carried unchanged."""
    meta = {
        "client": "acme",
        "n": 3,
        "ratio": 0.5,
        "ok": True,
        "none": None,
        "tags": ["a", 1, {"deep": [True, None]}],
        "nested": {"x": {"y": "z"}},
    }
    path = write(tmp_path, "m.yaml", yaml.safe_dump([{"prompt": "p", "meta": meta}]))
    _, jobs = load(path)
    assert jobs[0].meta == meta
    assert json.loads(json.dumps(jobs[0].meta)) == meta


def test_yaml_unquoted_aspect_ratio(tmp_path: Path) -> None:
    """An unquoted 16:9 is read as the ratio, not as YAML 1.1's base-60 integer 969."""
    path = write(tmp_path, "m.yaml", "- prompt: p\n  resolution: 16:9\n")
    _, jobs = load(path)
    assert jobs[0].resolution == "16:9"


def test_yaml_merge_keys(tmp_path: Path) -> None:
    """`<<: *anchor` merges are applied, explicit keys winning over merged ones."""
    path = write(
        tmp_path,
        "m.yaml",
        """\
        - &base
          prompt: a bird
          seed: 1
        - <<: *base
          seed: 2
        """,
    )
    _, jobs = load(path)
    assert [(j.prompt, j.seed) for j in jobs] == [("a bird", 1), ("a bird", 2)]


def test_yaml_bom_and_crlf(tmp_path: Path) -> None:
    """A UTF-8 BOM and CRLF line endings are accepted."""
    path = write(tmp_path, "m.yaml", codecs.BOM_UTF8 + b"- a\r\n- b\r\n")
    _, jobs = load(path)
    assert [j.prompt for j in jobs] == ["a", "b"]


# --- CSV -----------------------------------------------------------------------


def test_csv_full(tmp_path: Path) -> None:
    """CSV with a BOM, all columns, meta.*, a multi-line quoted cell, a blank line."""
    content = (
        "\ufeffprompt,id,seed,resolution,prompt_extend,repeat,meta.tag,meta.owner\n"
        "a cat,,1,1024x1024,yes,,t1,\n"
        '"two\nlines, quoted",two,,,,,,bob\n'
        "\n"
        "a cow,, 5 ,,NO,2,,\n"
    )
    path = write(tmp_path, "m.csv", content)
    summary, jobs = load(path)
    assert summary.jobs == 4
    cow = derived("a cow", DEFAULT, 5, False)
    assert jobs == [
        JobSpec(
            derived("a cat", DEFAULT, 1, True),
            "a cat",
            DEFAULT,
            1,
            True,
            {"tag": "t1"},
            f"{path}:2",
        ),
        JobSpec(
            "two",
            "two\nlines, quoted",
            DEFAULT,
            None,
            None,
            {"owner": "bob"},
            f"{path}:3",
        ),
        JobSpec(f"{cow}-0", "a cow", DEFAULT, 5, False, {}, f"{path}:6"),
        JobSpec(f"{cow}-1", "a cow", DEFAULT, 6, False, {}, f"{path}:6"),
    ]


def test_csv_bom_does_not_corrupt_header(tmp_path: Path) -> None:
    """With a BOM, the first column is still recognised as `prompt`."""
    path = write(tmp_path, "m.csv", codecs.BOM_UTF8 + b"prompt\r\nhello\r\n")
    _, jobs = load(path)
    assert [j.prompt for j in jobs] == ["hello"]


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("1", True),
        ("TRUE", True),
        ("Yes", True),
        ("0", False),
        ("false", False),
        ("no", False),
    ],
)
def test_csv_prompt_extend_words(tmp_path: Path, word: str, value: bool) -> None:
    """prompt_extend accepts 0/1/true/false/yes/no in any case."""
    path = write(tmp_path, "m.csv", f"prompt,prompt_extend\np,{word}\n")
    _, jobs = load(path)
    assert jobs[0].prompt_extend is value


# --- JSONL ---------------------------------------------------------------------


def test_jsonl(tmp_path: Path) -> None:
    """JSONL objects and bare prompt strings, with blank lines skipped."""
    path = write(
        tmp_path,
        "m.jsonl",
        '{"prompt": "a cat", "seed": 1, "meta": {"k": [1, 2], "d": {"e": null}}}\n'
        "\n"
        '"a dog"\n'
        '{"prompt": "a cow", "id": "cow", "resolution": "9:16", "prompt_extend": 1}\n',
    )
    _, jobs = load(path)
    assert jobs == [
        JobSpec(
            derived("a cat", DEFAULT, 1),
            "a cat",
            DEFAULT,
            1,
            None,
            {"k": [1, 2], "d": {"e": None}},
            f"{path}:1",
        ),
        JobSpec(derived("a dog"), "a dog", DEFAULT, None, None, {}, f"{path}:3"),
        JobSpec("cow", "a cow", "9:16", None, True, {}, f"{path}:4"),
    ]


def test_ndjson_extension(tmp_path: Path) -> None:
    """`.ndjson` is read as JSONL and the extension's case does not matter."""
    path = write(tmp_path, "m.NDJSON", '"a"\n')
    assert load(path)[0].jobs == 1


def test_formats_agree(tmp_path: Path) -> None:
    """The same jobs written as YAML, CSV and JSONL give identical ids and fields."""
    yaml_path = write(
        tmp_path,
        "m.yaml",
        """\
        - prompt: a cat
          seed: 4
          resolution: 512x512
        - a dog
        """,
    )
    csv_path = write(
        tmp_path, "m.csv", "prompt,seed,resolution\na cat,4,512*512\na dog,,\n"
    )
    jsonl_path = write(
        tmp_path,
        "m.jsonl",
        '{"prompt": "a cat", "seed": 4, "resolution": "512X512"}\n"a dog"\n',
    )
    results = [
        [replace(j, source="") for j in load(p)[1]]
        for p in (yaml_path, csv_path, jsonl_path)
    ]
    assert results[0] == results[1] == results[2]


# --- errors ----------------------------------------------------------------------


def test_malformed_yaml(tmp_path: Path) -> None:
    """Broken YAML is reported at the line the parser gave up on."""
    path = write(
        tmp_path, "m.yaml", "- a cat\n- prompt: a dog\n  seed: 1\n seed: 2\n- c\n"
    )
    assert_error(path, 4, None, "invalid YAML")


def test_yaml_unclosed_bracket(tmp_path: Path) -> None:
    """A bracket left open to the end of the file is reported where it opened."""
    path = write(tmp_path, "m.yaml", "- a cat\n- prompt: [unclosed\n- b\n")
    assert_error(path, 2, None, "end of the file")


def test_yaml_two_documents(tmp_path: Path) -> None:
    """A second YAML document is an error at its `---`."""
    path = write(tmp_path, "m.yaml", "- a\n---\n- b\n")
    assert_error(path, 2, None, "single document")


def test_csv_unterminated_quote(tmp_path: Path) -> None:
    """An unterminated quote is reported at the line where the record starts."""
    path = write(tmp_path, "m.csv", 'prompt,seed\na,1\n"abc,2\nx,3\n')
    assert_error(path, 3, None, "unterminated quoted field")


def test_csv_stray_quote(tmp_path: Path) -> None:
    """Strict parsing rejects text after a closing quote."""
    path = write(tmp_path, "m.csv", 'prompt,seed\na,1\n"ab"c,1\n')
    assert_error(path, 3, None, "malformed CSV")


@pytest.mark.parametrize("row", ["b,2,3", "b"])
def test_csv_wrong_field_count(tmp_path: Path, row: str) -> None:
    """A row with more or fewer fields than the header is an error at its line."""
    path = write(tmp_path, "m.csv", f"prompt,seed\na,1\n{row}\n")
    assert_error(path, 3, None, "expected 2 fields")


def test_csv_line_numbers_after_multiline_cell(tmp_path: Path) -> None:
    """Line numbers after a multi-line quoted cell are physical file lines."""
    path = write(tmp_path, "m.csv", 'prompt,seed\n"a\nb\nc",1\nd,x\n')
    assert_error(path, 5, "seed", "whole number")


def test_bad_jsonl(tmp_path: Path) -> None:
    """Invalid JSON is reported with its line number."""
    path = write(tmp_path, "m.jsonl", '{"prompt": "a"}\n\n{"prompt": }\n')
    assert_error(path, 3, None, "invalid JSON")


@pytest.mark.parametrize(
    ("line", "match"),
    [("NaN", "not a JSON number"), ("[1, 2]", "JSON object"), ("42", "JSON object")],
)
def test_jsonl_non_jobs(tmp_path: Path, line: str, match: str) -> None:
    """Non-standard numbers and non-object lines are refused."""
    path = write(tmp_path, "m.jsonl", f'"a"\n{line}\n')
    assert_error(path, 2, None, match)


def test_jsonl_duplicate_key(tmp_path: Path) -> None:
    """A key given twice in one JSON object is an error, not a silent override."""
    path = write(tmp_path, "m.jsonl", '{"prompt": "a", "seed": 1, "seed": 2}\n')
    assert_error(path, 1, "seed", "duplicate key")


def test_yaml_duplicate_key(tmp_path: Path) -> None:
    """A key given twice in one YAML job is an error at the second one."""
    path = write(tmp_path, "m.yaml", "- prompt: a\n  seed: 1\n  seed: 2\n")
    assert_error(path, 3, "seed", "duplicate key")


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("m.yaml", "- a\n- seed: 1\n  id: x\n", 2),
        ("m.jsonl", '"a"\n{"seed": 1}\n', 2),
        ("m.csv", "id,seed\nx,1\n", 1),
    ],
)
def test_missing_prompt(tmp_path: Path, name: str, content: str, line: int) -> None:
    """A job (or CSV header) without prompt names the `prompt` field."""
    assert_error(write(tmp_path, name, content), line, "prompt", "missing required")


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("m.yaml", "- a\n- prompt: '   '\n", 2),
        ("m.yaml", "- a\n- ''\n", 2),
        ("m.jsonl", '{"prompt": "\\t\\n "}\n', 1),
        ("m.csv", "prompt,seed\na,1\n,2\n", 3),
        ("m.csv", "prompt,seed\n   ,2\n", 2),
    ],
)
def test_empty_prompt(tmp_path: Path, name: str, content: str, line: int) -> None:
    """A prompt that is empty or only whitespace is refused."""
    assert_error(write(tmp_path, name, content), line, "prompt", "prompt is empty")


@pytest.mark.parametrize(
    ("name", "content", "line", "match"),
    [
        ("m.csv", "prompt,seed\na,1.5\n", 2, "whole number"),
        ("m.csv", "prompt,seed\na,+5\n", 2, "whole number"),
        ("m.csv", "prompt,seed\na,seven\n", 2, "whole number"),
        ("m.csv", "prompt,seed\na,-1\n", 2, "between 0 and"),
        ("m.csv", "prompt,seed\na,99999999999999999999999\n", 2, "between 0 and"),
        ("m.yaml", "- prompt: a\n  seed: 1.5\n", 2, "not a number"),
        ("m.yaml", "- prompt: a\n\n  seed: '7'\n", 3, "not a string"),
        ("m.yaml", "- prompt: a\n  seed: -3\n", 2, "between 0 and"),
        ("m.jsonl", '{"prompt": "a", "seed": 2147483648}\n', 1, "between 0 and"),
        ("m.jsonl", '{"prompt": "a", "seed": null}\n', 1, "not null"),
    ],
)
def test_bad_seed(
    tmp_path: Path, name: str, content: str, line: int, match: str
) -> None:
    """Seeds must be whole numbers in 0..2**31-1 in every format."""
    assert_error(write(tmp_path, name, content), line, "seed", match)


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("m.yaml", "- prompt: a\n  seed: true\n", 2),
        ("m.yaml", "- prompt: a\n  seed: yes\n", 2),
        ("m.jsonl", '{"prompt": "a", "seed": false}\n', 1),
    ],
)
def test_bool_seed(tmp_path: Path, name: str, content: str, line: int) -> None:
    """A boolean is not accepted as a seed even though bool is an int in Python."""
    assert_error(write(tmp_path, name, content), line, "seed", "not a boolean")


@pytest.mark.parametrize(
    ("name", "content", "line", "match"),
    [
        ("m.csv", "prompt,resolution\na,2:1\n", 2, "invalid resolution"),
        ("m.yaml", "- prompt: a\n  resolution: 1024\n", 2, "not an integer"),
        ("m.yaml", "- prompt: a\n  resolution: 99999x2\n", 2, "too large"),
        ("m.jsonl", '{"prompt": "a", "resolution": [1024, 1024]}\n', 1, "not a list"),
    ],
)
def test_bad_resolution(
    tmp_path: Path, name: str, content: str, line: int, match: str
) -> None:
    """Unknown ratios, bare integers and silly sizes are refused."""
    assert_error(write(tmp_path, name, content), line, "resolution", match)


@pytest.mark.parametrize(
    ("job_id", "match"),
    [("../x", "'/'"), ("nul", "reserved"), ("..", "not a usable"), ("x" * 129, "129")],
)
def test_bad_id(tmp_path: Path, job_id: str, match: str) -> None:
    """Ids that cannot be file names are refused."""
    path = write(
        tmp_path, "m.jsonl", '"a"\n' + json.dumps({"prompt": "b", "id": job_id}) + "\n"
    )
    assert_error(path, 2, "id", match)


def test_yaml_integer_id(tmp_path: Path) -> None:
    """An unquoted numeric id is refused rather than silently turned into text."""
    path = write(tmp_path, "m.yaml", "- prompt: a\n  id: 0042\n")
    assert_error(path, 2, "id", "quote it")


@pytest.mark.parametrize(
    ("name", "content", "line", "match"),
    [
        ("m.yaml", "- prompt: a\n  repeat: 0\n", 2, "between 1 and 10000"),
        ("m.yaml", "defaults:\n  repeat: 10001\njobs: [a]\n", 2, "between 1 and 10000"),
        ("m.csv", "prompt,repeat\na,0\n", 2, "between 1 and 10000"),
        ("m.jsonl", '{"prompt": "a", "repeat": true}\n', 1, "not a boolean"),
    ],
)
def test_bad_repeat(
    tmp_path: Path, name: str, content: str, line: int, match: str
) -> None:
    """repeat must be a whole number from 1 to 10000."""
    assert_error(write(tmp_path, name, content), line, "repeat", match)


def test_repeat_seed_overflow(tmp_path: Path) -> None:
    """An explicit seed whose repeats run past 2**31-1 is refused."""
    path = write(tmp_path, "m.yaml", f"- prompt: a\n  seed: {MAX_SEED}\n  repeat: 2\n")
    assert_error(path, 1, "repeat", "do not fit")


def test_repeat_makes_id_too_long(tmp_path: Path) -> None:
    """An explicit id that the -k suffix pushes past 128 characters is refused."""
    ok = {"prompt": "a", "id": "y" * 126, "repeat": 10}
    assert load(write(tmp_path, "ok.jsonl", json.dumps(ok) + "\n"))[0].jobs == 10
    job = {"prompt": "a", "id": "x" * 126, "repeat": 11}
    path = write(tmp_path, "m.jsonl", json.dumps(job) + "\n")
    assert_error(path, 1, "id", "129 characters")


@pytest.mark.parametrize(
    ("name", "content", "line", "match"),
    [
        ("m.jsonl", '{"prompt": "a", "prompt_extend": "maybe"}\n', 1, "not a string"),
        ("m.jsonl", '{"prompt": "a", "prompt_extend": 2}\n', 1, "not an integer"),
        ("m.csv", "prompt,prompt_extend\na,maybe\n", 2, "got 'maybe'"),
    ],
)
def test_bad_prompt_extend(
    tmp_path: Path, name: str, content: str, line: int, match: str
) -> None:
    """prompt_extend must be a boolean or 0/1."""
    assert_error(write(tmp_path, name, content), line, "prompt_extend", match)


@pytest.mark.parametrize(
    ("content", "line", "match"),
    [
        ("- prompt: a\n  meta: [1, 2]\n", 2, "must be a mapping"),
        ("- prompt: a\n  meta:\n    when: 2024-01-01\n", 2, "meta.when is a date"),
        ("- prompt: a\n  meta: {1: x}\n", 2, "must be a string"),
        ("- prompt: a\n  meta: !!python/name:os.system x\n", 2, "invalid YAML"),
    ],
)
def test_bad_meta(tmp_path: Path, content: str, line: int, match: str) -> None:
    """meta must be a mapping with string keys and values JSON can hold."""
    assert_error(write(tmp_path, "m.yaml", content), line, "meta", match)


def test_meta_alias_bomb(tmp_path: Path) -> None:
    """YAML aliases that multiply into millions of values are refused, quickly."""
    levels = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 7):
        prev = chr(ord("a") + i - 1)
        levels.append(
            f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} ["
            + ", ".join([f"*{prev}"] * 10)
            + "]"
        )
    content = "- prompt: p\n  meta:\n" + "".join(f"    {lv}\n" for lv in levels)
    assert_error(write(tmp_path, "m.yaml", content), 2, "meta", "more than")


@pytest.mark.parametrize(
    ("name", "content", "line", "field", "suggestion"),
    [
        ("m.yaml", "- prompt: a\n  promt: b\n", 2, "promt", "prompt"),
        ("m.yaml", "- prompt: a\n  seeds: 4\n", 2, "seeds", "seed"),
        (
            "m.jsonl",
            '{"prompt": "a", "resolutoin": "1:1"}\n',
            1,
            "resolutoin",
            "resolution",
        ),
        ("m.yaml", "defaults:\n  sed: 1\njobs: [a]\n", 2, "sed", "seed"),
        ("m.yaml", "job:\n  - a\n", 1, "job", "jobs"),
    ],
)
def test_unknown_key_with_suggestion(
    tmp_path: Path, name: str, content: str, line: int, field: str, suggestion: str
) -> None:
    """Unknown keys are errors naming the key and the closest valid one."""
    err = assert_error(write(tmp_path, name, content), line, field)
    assert f"did you mean '{suggestion}'?" in err.message


def test_unknown_key_without_close_match(tmp_path: Path) -> None:
    """A key nothing like a valid one is still named, with no wild guess."""
    err = assert_error(write(tmp_path, "m.yaml", "- prompt: a\n  zzzz: 1\n"), 2, "zzzz")
    assert err.message == "unknown field 'zzzz'"


@pytest.mark.parametrize(
    ("header", "field", "suggestion"),
    [
        ("prompt,seeds", "seeds", "seed"),
        ("promt", "promt", "prompt"),
        ("prompt,tag", "tag", None),
    ],
)
def test_unknown_csv_column(
    tmp_path: Path, header: str, field: str, suggestion: str | None
) -> None:
    """Unknown CSV columns are errors at the header line, with a suggestion if close."""
    err = assert_error(
        write(tmp_path, "m.csv", f"{header}\na,1\n"), 1, field, "unknown column"
    )
    if suggestion:
        assert f"did you mean '{suggestion}'?" in err.message
    assert str(err).startswith(
        f"{tmp_path / 'm.csv'}:1: field '{field}': unknown column"
    )


def test_duplicate_csv_column(tmp_path: Path) -> None:
    """A column named twice is an error."""
    assert_error(
        write(tmp_path, "m.csv", "prompt,seed,seed\na,1,2\n"), 1, "seed", "duplicate"
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("m.yaml", ""),
        ("m.csv", ""),
        ("m.jsonl", ""),
        ("m.jsonl", "\n\n  \n"),
        ("m.yaml", "# only a comment\n"),
        ("m.yaml", "[]\n"),
        ("m.yaml", "jobs: []\n"),
        ("m.yaml", "defaults: {seed: 1}\njobs:\n"),
        ("m.csv", "prompt,seed\n"),
        ("m.csv", "\ufeffprompt\n\n\n"),
    ],
)
def test_no_jobs(tmp_path: Path, name: str, content: str) -> None:
    """Manifests that parse to zero jobs are an error, not a silent no-op."""
    assert_error(write(tmp_path, name, content), None, None, "manifest has no jobs")


@pytest.mark.parametrize(
    ("name", "line"), [("m.csv", 2), ("m.jsonl", 2), ("m.yaml", 2)]
)
def test_binary_junk(tmp_path: Path, name: str, line: int) -> None:
    """Non-UTF-8 bytes are a ManifestError at their line, not a UnicodeDecodeError."""
    first = (
        b"prompt\n"
        if name.endswith(".csv")
        else b'"a"\n'
        if name.endswith("l")
        else b"- a\n"
    )
    path = write(tmp_path, name, first + b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 50)
    assert_error(path, line, None, "not UTF-8")


def test_yaml_control_character(tmp_path: Path) -> None:
    """Characters YAML forbids are reported with their line."""
    assert_error(write(tmp_path, "m.yaml", "- a\n- b\x07\n"), 2, None, "U+0007")


def test_huge_prompt(tmp_path: Path) -> None:
    """Prompts over 8192 characters are refused; exactly 8192 is fine."""
    ok = "x" * MAX_PROMPT_CHARS
    path = write(tmp_path, "m.csv", f"prompt\n{ok}\n{ok}y\n")
    assert_error(path, 3, "prompt", "huge prompt")
    assert load(write(tmp_path, "ok.csv", f"prompt\n{ok}\n"))[0].jobs == 1


def test_lone_surrogate_prompt(tmp_path: Path) -> None:
    """A JSON escape that yields an unpaired surrogate is refused, not a crash."""
    path = write(tmp_path, "m.jsonl", '{"prompt": "bad \\ud800 escape"}\n')
    assert_error(path, 1, "prompt", "surrogate")


def test_yaml_prompt_not_a_string(tmp_path: Path) -> None:
    """A bare YAML job that is not a string (e.g. `yes`) is refused with a hint."""
    assert_error(write(tmp_path, "m.yaml", "- a\n- yes\n"), 2, "prompt", "quote it")


@pytest.mark.parametrize(
    ("content", "line", "field", "match"),
    [
        ("a scalar\n", 1, None, "must be a list of jobs"),
        ("jobs: {prompt: a}\n", 1, "jobs", "must be a list"),
        ("- [a, b]\n", 1, None, "prompt string or a mapping"),
        ("- a\n- \n", 2, None, "prompt string or a mapping"),
        ("defaults: [1]\njobs: [a]\n", 1, "defaults", "must be a mapping"),
        ("defaults: {}\n", 1, "jobs", "missing"),
        ("- prompt: a\n  [x]: 1\n", 2, None, "plain names"),
    ],
)
def test_yaml_structure_errors(
    tmp_path: Path, content: str, line: int, field: str | None, match: str
) -> None:
    """A YAML manifest of the wrong shape is refused at the offending line."""
    assert_error(write(tmp_path, "m.yaml", content), line, field, match)


@pytest.mark.parametrize("key", ["prompt", "id"])
def test_defaults_with_prompt_or_id(tmp_path: Path, key: str) -> None:
    """prompt and id cannot have defaults."""
    content = f"defaults:\n  seed: 1\n  {key}: x\njobs: [a]\n"
    assert_error(write(tmp_path, "m.yaml", content), 3, key, "cannot have a default")


def test_deep_nesting(tmp_path: Path) -> None:
    """Absurdly deep nesting is a ManifestError, not a RecursionError."""
    assert_error(
        write(tmp_path, "m.jsonl", "[" * 5000 + "\n"), 1, None, "nested too deeply"
    )
    err = error_of(write(tmp_path, "m.yaml", "[" * 5000 + "\n"))
    assert "nested too deeply" in err.message


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    """An unsupported extension or a missing file is a ManifestError naming the file."""
    assert_error(
        write(tmp_path, "m.txt", "prompt\na\n"), None, None, "unknown manifest format"
    )
    assert_error(tmp_path / "absent.csv", None, None, "cannot open")


def test_error_string_names_everything(tmp_path: Path) -> None:
    """The error's text is `path:line: field 'f': message`."""
    path = write(tmp_path, "m.csv", "prompt,seed\na,x\n")
    assert (
        str(error_of(path))
        == f"{path}:2: field 'seed': must be a whole number, got 'x'"
    )


def test_pathlike_and_str_paths(tmp_path: Path) -> None:
    """The path is reported as given, whether str or PathLike."""
    path = write(tmp_path, "m.csv", "prompt\na\n")
    assert validate_manifest(str(path)).path == str(path)
    assert validate_manifest(path).path == str(path)


# --- duplicates ----------------------------------------------------------------


def test_duplicate_explicit_ids(tmp_path: Path) -> None:
    """Two jobs with the same explicit id are an error naming both lines."""
    path = write(
        tmp_path, "m.yaml", "- {prompt: a, id: x}\n- b\n- {prompt: c, id: x}\n"
    )
    assert_error(path, 3, "id", "already used by the job on line 1")


def test_duplicate_id_after_repeat(tmp_path: Path) -> None:
    """An explicit id equal to another job's repeat copy is a clash."""
    path = write(
        tmp_path,
        "m.jsonl",
        '{"prompt": "a", "id": "x-1"}\n{"prompt": "b", "id": "x", "repeat": 3}\n',
    )
    assert_error(path, 2, "id", "line 1")


@pytest.mark.parametrize("explicit_first", [True, False])
def test_explicit_id_equal_to_derived(tmp_path: Path, explicit_first: bool) -> None:
    """An explicit id equal to another job's derived id is a clash, either way round."""
    rows = [f"b,{derived('a')}", "a,"]
    if not explicit_first:
        rows.reverse()
    path = write(tmp_path, "m.csv", "prompt,id\n" + "\n".join(rows) + "\n")
    assert_error(path, 3, "id", "line 2")


def test_duplicate_derived_jobs_run_once(tmp_path: Path) -> None:
    """Identical jobs without ids run once, with a warning naming both lines."""
    path = write(tmp_path, "m.csv", "prompt,seed\na cat,1\nb,\na cat,1\na cat,2\n")
    summary, jobs = load(path)
    assert summary.jobs == 3
    assert summary.duplicates_skipped == 1
    assert len(summary.warnings) == 1
    assert summary.warnings[0].startswith(f"{path}:4: ")
    assert "line 2" in summary.warnings[0]
    assert [(j.prompt, j.seed, j.source) for j in jobs] == [
        ("a cat", 1, f"{path}:2"),
        ("b", None, f"{path}:3"),
        ("a cat", 2, f"{path}:5"),
    ]


def test_duplicate_derived_meta_differs(tmp_path: Path) -> None:
    """Meta is not part of a job's identity: the first row's meta wins."""
    path = write(tmp_path, "m.csv", "prompt,meta.k\na,1\na,2\n")
    summary, jobs = load(path)
    assert (summary.jobs, summary.duplicates_skipped) == (1, 1)
    assert jobs[0].meta == {"k": "1"}


def test_duplicate_derived_repeat_warns_once(tmp_path: Path) -> None:
    """A repeated duplicate row skips every copy but warns once for the row."""
    path = write(
        tmp_path, "m.yaml", "- {prompt: a, repeat: 3}\n- {prompt: a, repeat: 4}\n"
    )
    summary, jobs = load(path)
    assert (summary.jobs, summary.duplicates_skipped, len(summary.warnings)) == (
        4,
        3,
        1,
    )
    assert [j.job_id for j in jobs] == [f"{derived('a')}-{k}" for k in range(4)]


def test_many_duplicate_warnings_are_capped(tmp_path: Path) -> None:
    """Hundreds of duplicate rows give a bounded list of warnings plus a summary."""
    path = write(tmp_path, "m.csv", "prompt\n" + "same\n" * 300)
    summary = validate_manifest(path)
    assert (summary.jobs, summary.duplicates_skipped) == (1, 299)
    assert len(summary.warnings) == 101
    assert "199 more rows" in summary.warnings[-1]


def test_reordering_keeps_ids(tmp_path: Path) -> None:
    """Derived ids depend on content only, so reordering rows keeps each job's id."""
    rows = ["a cat,1", "a dog,", "a cow,7"]
    forward = load(write(tmp_path, "f.csv", "prompt,seed\n" + "\n".join(rows) + "\n"))[
        1
    ]
    backward = load(
        write(tmp_path, "b.csv", "prompt,seed\n" + "\n".join(rows[::-1]) + "\n")
    )[1]
    assert {j.prompt: j.job_id for j in forward} == {
        j.prompt: j.job_id for j in backward
    }
    assert [j.job_id for j in forward] == [j.job_id for j in backward][::-1]


# --- properties ----------------------------------------------------------------

prompt_text = st.text(min_size=1, max_size=200).filter(lambda s: not s.isspace())
rows = st.lists(
    st.tuples(
        prompt_text,
        st.none() | st.integers(0, MAX_SEED),
        st.none() | st.booleans(),
        st.sampled_from([None, "16:9", "512x512", "640*480"]),
    ),
    min_size=1,
    max_size=15,
)


@settings(max_examples=60, deadline=None)
@given(rows)
def test_csv_and_yaml_round_trip(
    tmp_path_factory: pytest.TempPathFactory,
    jobs: list[tuple[str, int | None, bool | None, str | None]],
) -> None:
    """Random prompts and seeds written as CSV and as YAML give identical JobSpecs."""
    directory = tmp_path_factory.mktemp("rt")
    documents = []
    for prompt, seed, extend, resolution in jobs:
        doc: dict[str, object] = {"prompt": prompt}
        if seed is not None:
            doc["seed"] = seed
        if extend is not None:
            doc["prompt_extend"] = extend
        if resolution is not None:
            doc["resolution"] = resolution
        documents.append(doc)
    dumped = yaml.safe_dump(documents)
    assume(yaml.safe_load(dumped) == documents)  # PyYAML's own round trip holds
    yaml_path = write(directory, "m.yaml", dumped.encode("utf-8"))

    csv_path = directory / "m.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["prompt", "seed", "prompt_extend", "resolution"])
        for prompt, seed, extend, resolution in jobs:
            writer.writerow(
                [
                    prompt,
                    "" if seed is None else seed,
                    "" if extend is None else int(extend),
                    resolution or "",
                ]
            )

    from_yaml = [replace(j, source="") for j in load(yaml_path)[1]]
    from_csv = [replace(j, source="") for j in load(csv_path)[1]]
    assert from_yaml == from_csv
    expected_ids = {
        derived(p, (r or DEFAULT).replace("x", "*"), s, e) for p, s, e, r in jobs
    }
    assert {j.job_id for j in from_csv} == expected_ids


junk = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.lists(
        st.sampled_from(
            [
                "prompt",
                "seed",
                "id",
                ",",
                '"',
                "\n",
                "\r\n",
                "-",
                ":",
                "{",
                "}",
                "[",
                "]",
                "1",
                "a",
                " ",
                "\x00",
                "\ufeff",
                "meta.x",
                "repeat",
                "&a",
                "*a",
                "<<",
                "'",
            ]
        ),
        max_size=60,
    ).map(lambda parts: "".join(parts).encode("utf-8")),
)


@settings(max_examples=150, deadline=None)
@given(junk)
def test_arbitrary_bytes_never_crash(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    """Any bytes, read as CSV, YAML or JSONL, either parse or raise ManifestError."""
    directory = tmp_path_factory.mktemp("junk")
    for name in ("m.csv", "m.yaml", "m.jsonl"):
        path = write(directory, name, content)
        try:
            summary = validate_manifest(path)
        except ManifestError as err:
            assert err.path == str(path)
            continue
        jobs = list(iter_jobs(path))
        assert len(jobs) == summary.jobs
        assert len({j.job_id for j in jobs}) == len(jobs)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a cat", "a dog", "a fox"]),
            st.sampled_from(["", "1", "2"]),
            st.sampled_from(["", "2"]),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_iter_jobs_trusting_validation_yields_the_same_jobs(
    rows: list[tuple[str, str, str]],
) -> None:
    """With the summary's `repeated` ids, iter_jobs (which then remembers only
    those) yields exactly the jobs of the self-checking pass, duplicates dropped."""
    import csv
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["prompt", "seed", "repeat"])
            writer.writerows(rows)
        summary = validate_manifest(path)
        checked = list(iter_jobs(path))
        trusted = list(iter_jobs(path, repeated=summary.repeated))
    assert trusted == checked
    assert len(trusted) == summary.jobs
    assert len({j.job_id for j in trusted}) == len(trusted)


# --- ids that differ only in case ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "line", "other", "other_line"),
    [
        ("m.yaml", "- {prompt: a, id: cat}\n- b\n- {prompt: c, id: Cat}\n", 3,
         "cat", 1),
        ("m.yaml", "- {prompt: a, id: CAT}\n- {prompt: c, id: Cat}\n", 2, "CAT", 1),
        ("m.csv", "id,prompt\nDog,a\nb-dog,b\ndog,c\n", 4, "Dog", 2),
        ("m.jsonl", '{"prompt": "a", "id": "x", "repeat": 2}\n'
         '{"prompt": "b", "id": "X-1"}\n', 2, "x-1", 1),
    ],
)  # fmt: skip
def test_ids_differing_only_in_case_are_refused(
    tmp_path: Path, name: str, content: str, line: int, other: str, other_line: int
) -> None:
    """`Cat` and `cat` would share a file on macOS/Windows: refused, naming both."""
    err = assert_error(
        write(tmp_path, name, content), line, "id", "only in letter case"
    )
    assert f"{other!r} on line {other_line}" in err.message


def test_explicit_id_differing_from_a_derived_one_only_in_case(tmp_path: Path) -> None:
    """An explicit id that is a derived id in capitals is refused too."""
    upper = derived("a").upper()
    path = write(tmp_path, "m.csv", f"id,prompt\n,a\n{upper},b\n")
    assert_error(path, 3, "id", "only in letter case")


def test_ids_with_capitals_that_differ_otherwise_are_fine(tmp_path: Path) -> None:
    """Capitals alone are fine: only a case-only difference is refused."""
    path = write(tmp_path, "m.csv", "id,prompt\nCat,a\nCats,b\ncat-2,c\nDOG,d\n")
    assert load(path)[0].jobs == 4
