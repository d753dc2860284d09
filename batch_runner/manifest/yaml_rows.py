"""The YAML manifest reader: a list of jobs, or a mapping of `jobs` and `defaults`.

Composed whole rather than streamed: YAML is meant for hand-written manifests.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator, Mapping

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from batch_runner.errors import ManifestError
from batch_runner.manifest.fields import (
    DEFAULT_KEYS,
    JOB_KEYS,
    _defaults_from,
    _Row,
    _row_from,
    _unknown_key,
)
from batch_runner.manifest.textio import _open_binary

_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"
_NULL_TAG = "tag:yaml.org,2002:null"


def _node_line(node: Node) -> int:
    mark = node.start_mark
    return mark.line + 1 if mark is not None else 0


def _yaml_rows(where: str) -> Iterator[_Row]:
    root = _compose(where)
    if root is None:
        return
    constructor = SafeConstructor()
    jobs, defaults = _yaml_top(root, where, constructor)
    if jobs is None:
        return
    for item in jobs.value:
        yield _yaml_job(item, defaults, where, constructor)


def _compose(where: str) -> Node | None:
    with _open_binary(where) as stream:
        raw = stream.read().removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ManifestError(
            f"not UTF-8 text (byte 0x{raw[err.start]:02x})", path=where, line=line
        ) from None
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        raise _yaml_error(err, where) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        raise ManifestError(
            f"invalid YAML: character {_codepoint(err.character)} is not allowed",
            path=where,
            line=line,
        ) from None
    except yaml.YAMLError as err:
        raise ManifestError(f"invalid YAML: {err}", path=where) from None
    except RecursionError:
        raise ManifestError("invalid YAML: nested too deeply", path=where) from None


def _codepoint(character: object) -> str:
    # PyYAML reports the character as its code point for text input.
    if isinstance(character, str) and len(character) == 1:
        character = ord(character)
    return f"U+{character:04X}" if isinstance(character, int) else repr(character)


def _yaml_error(
    err: yaml.MarkedYAMLError, where: str, field: str | None = None
) -> ManifestError:
    mark = err.problem_mark
    message = ", ".join(part for part in (err.context, err.problem) if part)
    # An error found at the end of the file (an unclosed bracket or quote) is
    # better placed where the unfinished construct began.
    if err.context_mark is not None and (
        mark is None or (mark.buffer is not None and mark.index >= len(mark.buffer) - 1)
    ):
        mark = err.context_mark
        message += " (reached the end of the file)"
    return ManifestError(
        f"invalid YAML: {message or 'cannot be read'}",
        path=where,
        line=mark.line + 1 if mark is not None else None,
        field=field,
    )


def _yaml_items(
    node: MappingNode, where: str, constructor: SafeConstructor
) -> dict[str, tuple[Node, int]]:
    """Return a mapping's `key: (value node, key line)`, with `<<` merges applied."""
    explicit = sum(1 for key, _ in node.value if key.tag != _MERGE_TAG)
    if explicit != len(node.value):
        try:
            constructor.flatten_mapping(node)
        except yaml.MarkedYAMLError as err:
            raise _yaml_error(err, where) from None
    # flatten_mapping puts merged pairs first, so explicit keys override them;
    # only explicit keys can be duplicates.
    pairs: list[tuple[Node, Node]] = node.value
    merged_count = len(pairs) - explicit
    items: dict[str, tuple[Node, int]] = {}
    explicit_names: set[str] = set()
    for position, (key, value) in enumerate(pairs):
        line = _node_line(key)
        if not isinstance(key, ScalarNode):
            raise ManifestError(
                "keys must be plain names, not lists or mappings",
                path=where,
                line=line,
            )
        name = str(key.value)
        if position >= merged_count:
            if name in explicit_names:
                raise ManifestError("duplicate key", path=where, line=line, field=name)
            explicit_names.add(name)
        items[name] = (value, line)
    return items


def _yaml_value(
    key: str, node: Node, where: str, line: int, constructor: SafeConstructor
) -> object:
    if (
        key == "resolution"
        and isinstance(node, ScalarNode)
        and node.tag == _INT_TAG
        and ":" in node.value
    ):
        # YAML 1.1 reads an unquoted 16:9 as the base-60 integer 969.
        return str(node.value)
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as err:
        raise _yaml_error(err, where, field=key) from None
    except RecursionError:
        raise ManifestError(
            "nested too deeply", path=where, line=line, field=key
        ) from None


def _yaml_fields(
    node: MappingNode, valid: Iterable[str], where: str, constructor: SafeConstructor
) -> dict[str, tuple[object, int]]:
    items = _yaml_items(node, where, constructor)
    valid = tuple(valid)
    for name, (_, line) in items.items():
        if name not in valid and name not in ("prompt", "id"):
            raise _unknown_key(name, valid, where, line)
    return {
        name: (_yaml_value(name, value, where, line, constructor), line)
        for name, (value, line) in items.items()
    }


def _yaml_top(
    root: Node, where: str, constructor: SafeConstructor
) -> tuple[SequenceNode | None, dict[str, object]]:
    if isinstance(root, SequenceNode):
        return root, {}
    if not isinstance(root, MappingNode):
        raise ManifestError(
            "a YAML manifest must be a list of jobs, or a mapping with 'jobs' "
            "(and optionally 'defaults')",
            path=where,
            line=_node_line(root),
        )
    items = _yaml_items(root, where, constructor)
    for name, (_, line) in items.items():
        if name not in ("defaults", "jobs"):
            raise _unknown_key(name, ("defaults", "jobs"), where, line, what="key")
    if "jobs" not in items:
        raise ManifestError(
            "missing the list of jobs", path=where, line=_node_line(root), field="jobs"
        )
    jobs, jobs_line = items["jobs"]
    defaults: dict[str, object] = {}
    if "defaults" in items:
        defaults = _yaml_defaults(*items["defaults"], where, constructor)
    if _is_null(jobs):
        return None, defaults
    if not isinstance(jobs, SequenceNode):
        raise ManifestError(
            "must be a list of jobs", path=where, line=jobs_line, field="jobs"
        )
    return jobs, defaults


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def _yaml_defaults(
    node: Node, line: int, where: str, constructor: SafeConstructor
) -> dict[str, object]:
    if _is_null(node):
        return {}
    if not isinstance(node, MappingNode):
        raise ManifestError(
            "must be a mapping", path=where, line=line, field="defaults"
        )
    return _defaults_from(_yaml_fields(node, DEFAULT_KEYS, where, constructor), where)


def _yaml_job(
    node: Node, defaults: Mapping[str, object], where: str, constructor: SafeConstructor
) -> _Row:
    line = _node_line(node)
    if isinstance(node, MappingNode):
        fields = _yaml_fields(node, JOB_KEYS, where, constructor)
        return _row_from(fields, line, defaults, where)
    if isinstance(node, ScalarNode) and not _is_null(node):
        prompt = _yaml_value("prompt", node, where, line, constructor)
        return _row_from({"prompt": (prompt, line)}, line, defaults, where)
    raise ManifestError(
        "a job must be a prompt string or a mapping with 'prompt'",
        path=where,
        line=line,
    )
