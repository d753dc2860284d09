"""YAML parser events, composed one subtree at a time into PyYAML nodes.

libyaml's event parser (PyYAML's pure-Python one where libyaml is missing) reads
the file in chunks; `Composer` builds exactly the nodes PyYAML's own composer
would (same tags, anchors, marks and errors), but only for the part asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TextIO, cast

import yaml
from yaml.composer import ComposerError
from yaml.error import Mark
from yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

#: deeper than any manifest needs; PyYAML's recursive composer gave up at
#: about a third of this (RecursionError), this iterative one could go on
MAX_DEPTH = 1000


class EventSource(Protocol):
    def get_event(self) -> Event | None: ...


def event_source(stream: TextIO) -> EventSource:
    """libyaml's parser when PyYAML was built with it, else the pure-Python one."""
    if yaml.__with_libyaml__:
        from yaml._yaml import CParser

        return CParser(stream)
    return yaml.SafeLoader(stream)


def as_mark(mark: Any) -> Mark | None:
    """libyaml's marks have the fields of PyYAML's that nodes and errors use."""
    return cast("Mark | None", mark)


def _line(event: Event) -> int:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 0


class TooDeep(Exception):
    """Collections nested deeper than MAX_DEPTH; carries the 1-based line."""

    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class Composer:
    """Turns events into nodes; keeps only the anchored nodes between calls.

    `compose(first)` takes the first event of a node, already read, and reads
    the rest of that node from `next_event`.
    """

    __slots__ = ("_anchors", "_next", "_resolve")

    def __init__(self, source: EventSource) -> None:
        self._next = source.get_event
        # untyped in the stubs; (node kind, scalar value, implicit) -> tag
        self._resolve: Callable[[type[Node], str | None, Any], str] = Resolver().resolve
        self._anchors: dict[str, Node] = {}

    def next_event(self) -> Event:
        event = self._next()
        if event is None:
            # A parser yields StreamEndEvent, then None; nothing reads past the end.
            raise yaml.YAMLError("unexpected end of the event stream")
        return event

    def open(self, event: CollectionStartEvent) -> CollectionNode:
        """The node a collection start opens, its anchor registered; no children."""
        self._check_anchor(event)
        node: CollectionNode
        if isinstance(event, SequenceStartEvent):
            tag = event.tag
            if tag is None or tag == "!":
                tag = self._resolve(SequenceNode, None, event.implicit)
            node = SequenceNode(
                tag, [], as_mark(event.start_mark), None, flow_style=event.flow_style
            )
        else:
            tag = event.tag
            if tag is None or tag == "!":
                tag = self._resolve(MappingNode, None, event.implicit)
            node = MappingNode(
                tag, [], as_mark(event.start_mark), None, flow_style=event.flow_style
            )
        if event.anchor is not None:
            self._anchors[event.anchor] = node
        return node

    def node_events(self, first: Event) -> list[Event]:
        """The events of the node that starts with `first`, unbuilt."""
        events = [first]
        kind: type[Any] = type(first)
        if kind is SequenceStartEvent or kind is MappingStartEvent:
            # The hot loop of a large manifest: locals, no method calls. The
            # parser cannot end the stream inside a node, so no None check.
            get, append = self._next, events.append
            depth = 1
            while depth:
                event: Any = get()
                kind = type(event)
                if kind is SequenceStartEvent or kind is MappingStartEvent:
                    depth += 1
                    if depth > MAX_DEPTH:
                        raise TooDeep(_line(event))
                elif kind is SequenceEndEvent or kind is MappingEndEvent:
                    depth -= 1
                append(event)
        return events

    def compose_events(self, events: list[Event]) -> Node:
        """The node made of `events` (as `node_events` returned them)."""
        rest = iter(events[1:])
        return self.compose(events[0], lambda: next(rest))

    def compose(
        self, event: Event, next_event: Callable[[], Event] | None = None
    ) -> Node:
        """The whole node starting at `event`; iterative, so depth costs no stack."""
        next_event = next_event or self.next_event
        open_nodes: list[tuple[CollectionNode, list[Node]]] = []
        while True:
            kind: type[Any] = type(event)
            node: Node
            if kind is ScalarEvent:
                node = self._scalar(event)  # type: ignore[arg-type]
            elif kind is AliasEvent:
                node = self._alias(event)  # type: ignore[arg-type]
            elif kind is SequenceStartEvent or kind is MappingStartEvent:
                if len(open_nodes) >= MAX_DEPTH:
                    raise TooDeep(_line(event))
                open_nodes.append((self.open(event), []))  # type: ignore[arg-type]
                event = next_event()
                continue
            elif kind is SequenceEndEvent or kind is MappingEndEvent:
                collection, items = open_nodes.pop()
                if isinstance(collection, MappingNode):
                    collection.value = list(zip(items[::2], items[1::2], strict=True))
                else:
                    collection.value = items
                collection.end_mark = as_mark(event.end_mark)
                node = collection
            else:
                # A parser never puts stream or document events inside a node.
                raise ComposerError(
                    None, None, f"unexpected {kind.__name__}", as_mark(event.start_mark)
                )
            if not open_nodes:
                return node
            open_nodes[-1][1].append(node)
            event = next_event()

    def _scalar(self, event: ScalarEvent) -> ScalarNode:
        self._check_anchor(event)
        tag = event.tag
        if tag is None or tag == "!":
            tag = self._resolve(ScalarNode, event.value, event.implicit)
        node = ScalarNode(
            tag,
            event.value,
            as_mark(event.start_mark),
            as_mark(event.end_mark),
            style=event.style,
        )
        if event.anchor is not None:
            self._anchors[event.anchor] = node
        return node

    def _alias(self, event: AliasEvent) -> Node:
        node = self._anchors.get(event.anchor or "")
        if node is None:
            raise ComposerError(
                None,
                None,
                f"found undefined alias {event.anchor!r}",
                as_mark(event.start_mark),
            )
        return node

    def _check_anchor(self, event: ScalarEvent | CollectionStartEvent) -> None:
        anchor = event.anchor
        if anchor is not None and anchor in self._anchors:
            raise ComposerError(
                f"found duplicate anchor {anchor!r}; first occurrence",
                self._anchors[anchor].start_mark,
                "second occurrence",
                as_mark(event.start_mark),
            )
