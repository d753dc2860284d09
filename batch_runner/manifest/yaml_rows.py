"""The YAML manifest reader: a list of jobs, or a mapping of `jobs` and `defaults`.

Streamed: parser events are composed one job at a time (`yaml_events`), so a
100,000-job file is read in flat memory; only anchored nodes are kept.
"""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import SafeConstructor
from yaml.events import (
    CollectionEndEvent,
    CollectionStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
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
from batch_runner.manifest.textio import (
    _open_binary,
    _open_text,
    _raise_first_bad_line,
)
from batch_runner.manifest.yaml_events import (
    MAX_DEPTH,
    Composer,
    TooDeep,
    as_mark,
    event_source,
)
from batch_runner.manifest.yaml_plain import INT_TAG, NotPlain, PlainValues

_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"
_NULL_TAG = "tag:yaml.org,2002:null"


def _node_line(node: Node) -> int:
    mark = node.start_mark
    return mark.line + 1 if mark is not None else 0


class _WholeDocument(Exception):
    """A shape the streaming reader leaves to the whole-document reader."""


def _yaml_rows(where: str) -> Iterator[_Row]:
    yielded = 0
    try:
        for row in _streamed_rows(where):
            yield row
            yielded += 1
    except _WholeDocument:
        # Same rows, same order: skip the ones the streaming pass already gave.
        yield from itertools.islice(_composed_rows(where), yielded, None)


def _composed_rows(where: str) -> Iterator[_Row]:
    """The whole document composed at once: for the rare shapes streaming skips
    (a top-level `<<` merge, `defaults` after `jobs` using an anchor from a job)
    and for input libyaml refuses but PyYAML's own parser reads."""
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
    text = _whole_text(where)
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError) as err:
        raise _parse_error(err, text, where) from None


def _whole_text(where: str) -> str:
    with _open_binary(where) as stream:
        raw = stream.read().removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ManifestError(
            f"not UTF-8 text (byte 0x{raw[err.start]:02x})", path=where, line=line
        ) from None


def _parse_error(
    err: yaml.YAMLError | RecursionError, text: str, where: str
) -> ManifestError:
    if isinstance(err, yaml.MarkedYAMLError):
        return _yaml_error(err, where)
    if isinstance(err, yaml.reader.ReaderError):
        return ManifestError(
            f"invalid YAML: character {_codepoint(err.character)} is not allowed",
            path=where,
            line=text.count("\n", 0, err.position) + 1,
        )
    if isinstance(err, RecursionError):
        return ManifestError("invalid YAML: nested too deeply", path=where)
    return ManifestError(f"invalid YAML: {err}", path=where)


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
        # `_defaults_from` explains why these three cannot be defaults
        if name not in valid and name not in ("prompt", "id", "matrix"):
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


# --- streaming ------------------------------------------------------------------


def _streamed_rows(where: str) -> Iterator[_Row]:
    with _open_text(where) as stream:
        composer = Composer(event_source(stream))
        try:
            yield from _document_rows(composer, where)
        except UnicodeDecodeError:
            _raise_first_bad_line(where)
        except TooDeep as err:
            raise ManifestError(
                "invalid YAML: nested too deeply", path=where, line=err.line
            ) from None
        except ComposerError as err:
            raise _yaml_error(err, where) from None
        except yaml.YAMLError:
            raise _syntax_error(where) from None


def _syntax_error(where: str) -> ManifestError:
    """Word a parse error the way PyYAML's own parser does, as before streaming.

    libyaml's messages are terser and its marks cannot tell "at the end of the
    file"; errors are rare, so the text is parsed again (events only) in Python.
    """
    text = _whole_text(where)
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    # libyaml scans a flow collection to its end before it
                    # says anything, so this check cannot happen first there
                    line = event.start_mark.line + 1 if event.start_mark else None
                    return ManifestError(
                        "invalid YAML: nested too deeply", path=where, line=line
                    )
            elif isinstance(event, CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError as err:
        return _parse_error(err, text, where)
    # PyYAML's parser reads what libyaml refused: read it whole, as before.
    raise _WholeDocument


def _document_rows(composer: Composer, where: str) -> Iterator[_Row]:
    constructor = SafeConstructor()
    composer.next_event()  # the stream start
    if isinstance(composer.next_event(), StreamEndEvent):
        return  # no document at all: an empty file, or only comments
    first = composer.next_event()
    if isinstance(first, SequenceStartEvent):
        root: Node = composer.open(first)
        yield from _streamed_jobs(composer, {}, where, constructor)
    elif isinstance(first, MappingStartEvent):
        root = composer.open(first)
        yield from _mapping_rows(composer, root, where, constructor)
    else:
        root = composer.compose(first)
        raise ManifestError(
            "a YAML manifest must be a list of jobs, or a mapping with 'jobs' "
            "(and optionally 'defaults')",
            path=where,
            line=_node_line(root),
        )
    composer.next_event()  # the document end
    after = composer.next_event()
    if not isinstance(after, StreamEndEvent):
        raise ComposerError(
            "expected a single document in the stream",
            root.start_mark,
            "but found another document",
            as_mark(after.start_mark),
        )


def _streamed_jobs(
    composer: Composer,
    defaults: Mapping[str, object],
    where: str,
    constructor: SafeConstructor,
) -> Iterator[_Row]:
    """The rows of a job list whose start event was just read."""
    plain = PlainValues()
    while not isinstance(event := composer.next_event(), SequenceEndEvent):
        events = composer.node_events(event)
        try:
            row = _plain_job(events, defaults, where, plain)
        except NotPlain:
            node = composer.compose_events(events)
            row = _streamed_job(node, defaults, where, constructor)
        yield row


def _plain_job(
    events: list[Any],
    defaults: Mapping[str, object],
    where: str,
    plain: PlainValues,
) -> _Row:
    """A job built straight from its events, checked as `_yaml_job` checks it."""
    first = events[0]
    line = first.start_mark.line + 1 if first.start_mark is not None else 0
    if type(first) is ScalarEvent:
        prompt = plain.scalar(first)
        if prompt is None:
            raise NotPlain  # the node way words this error
        return _row_from({"prompt": (prompt, line)}, line, defaults, where)
    if type(first) is not MappingStartEvent or first.anchor or first.tag:
        raise NotPlain
    fields: dict[str, tuple[object, int]] = {}
    pos = 1
    while type(key := events[pos]) is not MappingEndEvent:
        if (
            type(key) is not ScalarEvent
            or key.anchor is not None
            or key.tag is not None
            or plain.is_merge_key(key)
        ):
            raise NotPlain
        name = key.value
        key_line = key.start_mark.line + 1 if key.start_mark is not None else 0
        if name in fields:
            raise ManifestError("duplicate key", path=where, line=key_line, field=name)
        item = events[pos + 1]
        if (
            name == "resolution"
            and type(item) is ScalarEvent
            and ":" in item.value
            and item.tag is None
            and plain.scalar_tag(item) == INT_TAG
        ):
            # YAML 1.1 reads an unquoted 16:9 as the base-60 integer 969.
            value: object = item.value
            pos += 2
        else:
            value, pos = plain.value(events, pos + 1)
        fields[name] = (value, key_line)
    for name, (_, key_line) in fields.items():
        if name not in JOB_KEYS:
            raise _unknown_key(name, JOB_KEYS, where, key_line)
    return _row_from(fields, line, defaults, where)


def _streamed_job(
    node: Node, defaults: Mapping[str, object], where: str, constructor: SafeConstructor
) -> _Row:
    try:
        return _yaml_job(node, defaults, where, constructor)
    finally:
        # The constructor caches every object it built, keyed by node: forget
        # them, or the whole file would stay in memory after all.
        constructor.constructed_objects = {}
        constructor.recursive_objects = {}


def _mapping_rows(
    composer: Composer, root: Node, where: str, constructor: SafeConstructor
) -> Iterator[_Row]:
    """The rows of a top-level `defaults`/`jobs` mapping whose start was just read."""
    names: set[str] = set()
    defaults: dict[str, object] | None = None
    while not isinstance(event := composer.next_event(), MappingEndEvent):
        name, line = _top_key(composer.compose(event), names, where)
        value = composer.next_event()
        if name == "defaults":
            defaults = _yaml_defaults(composer.compose(value), line, where, constructor)
            continue
        if defaults is None:
            # `defaults` may still come after the jobs: look ahead for it.
            defaults = _defaults_after_jobs(where, constructor)
        if isinstance(value, SequenceStartEvent):
            composer.open(value)
            yield from _streamed_jobs(composer, defaults, where, constructor)
            continue
        jobs = composer.compose(value)
        if isinstance(jobs, SequenceNode):  # an alias of a list
            for item in jobs.value:
                yield _streamed_job(item, defaults, where, constructor)
        elif not _is_null(jobs):
            raise ManifestError(
                "must be a list of jobs", path=where, line=line, field="jobs"
            )
    if "jobs" not in names:
        raise ManifestError(
            "missing the list of jobs", path=where, line=_node_line(root), field="jobs"
        )


def _top_key(key: Node, seen: set[str], where: str) -> tuple[str, int]:
    line = _node_line(key)
    if not isinstance(key, ScalarNode):
        raise ManifestError(
            "keys must be plain names, not lists or mappings", path=where, line=line
        )
    if key.tag == _MERGE_TAG:
        raise _WholeDocument
    name = str(key.value)
    if name in seen:
        raise ManifestError("duplicate key", path=where, line=line, field=name)
    seen.add(name)
    if name not in ("defaults", "jobs"):
        raise _unknown_key(name, ("defaults", "jobs"), where, line, what="key")
    return name, line


def _defaults_after_jobs(where: str, constructor: SafeConstructor) -> dict[str, object]:
    """`defaults` from a second reader that skips the job list; {} if absent."""
    with _open_text(where) as stream:
        composer = Composer(event_source(stream))
        for _ in range(3):  # stream start, document start, mapping start
            composer.next_event()
        while not isinstance(event := composer.next_event(), MappingEndEvent):
            key = composer.compose(event)
            value = composer.next_event()
            if not (isinstance(key, ScalarNode) and key.value == "defaults"):
                _skip(composer, value)
                continue
            try:
                node = composer.compose(value)
            except ComposerError:
                # An alias of an anchor inside the skipped jobs.
                raise _WholeDocument from None
            return _yaml_defaults(node, _node_line(key), where, constructor)
    return {}


def _skip(composer: Composer, event: Event) -> None:
    """Read past the node that starts with `event`, building nothing."""
    depth = 0
    while True:
        if isinstance(event, CollectionStartEvent):
            depth += 1
        elif isinstance(event, CollectionEndEvent):
            depth -= 1
        if depth == 0:
            return
        event = composer.next_event()
