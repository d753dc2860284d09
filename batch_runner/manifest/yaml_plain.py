"""Values straight from "plain" YAML events: the fast path for generated manifests.

Plain means no anchor, alias, explicit tag or `<<` merge key, and only scalars
PyYAML builds without error (strings, numbers, booleans, nulls). Such a job gives
the same values as PyYAML's composer plus SafeConstructor would, at a fraction of
the cost; anything else raises `NotPlain` and goes the node way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

STR_TAG = "tag:yaml.org,2002:str"
INT_TAG = "tag:yaml.org,2002:int"
#: the implicit tags whose SafeConstructor cannot fail on a value that matched
_SAFE_TAGS = frozenset(
    {
        INT_TAG,
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:null",
    }
)
#: nesting the fast path handles by recursion; deeper goes the node way
_MAX_PLAIN_DEPTH = 50


class NotPlain(Exception):
    """The events use a YAML feature the fast path leaves to the composer."""


class PlainValues:
    """Builds Python values from plain events, as SafeConstructor would."""

    __slots__ = ("_constructor", "_first_chars", "_resolve")

    def __init__(self) -> None:
        # untyped in the stubs; (node kind, scalar value, implicit) -> tag
        self._resolve: Callable[[type[ScalarNode], str, Any], str] = Resolver().resolve
        self._constructor = SafeConstructor()
        # Plain scalars starting with any other character resolve to str.
        self._first_chars = frozenset(
            key for key in Resolver.yaml_implicit_resolvers if key
        )

    def scalar_tag(self, event: ScalarEvent) -> str:
        """The tag PyYAML's resolver gives an untagged scalar."""
        value = event.value
        if not event.implicit[0]:
            return STR_TAG  # quoted
        if value and value[0] not in self._first_chars:
            return STR_TAG
        return self._resolve(ScalarNode, value, event.implicit)

    def scalar(self, event: ScalarEvent) -> object:
        if event.anchor is not None or event.tag is not None:
            raise NotPlain
        value = event.value
        if not event.implicit[0]:
            return value  # quoted
        if not value:
            return None  # an empty plain scalar is null
        if value[0] not in self._first_chars:
            return value
        # A decimal without a leading zero is an int in YAML 1.1 and nothing
        # else; it is the commonest non-string (seeds).
        if value.isdigit() and value.isascii() and (value[0] != "0" or value == "0"):
            return int(value)
        tag = self.scalar_tag(event)
        if tag == STR_TAG:
            return value
        if tag not in _SAFE_TAGS:
            raise NotPlain
        build = self._constructor.yaml_constructors[tag]
        return build(self._constructor, ScalarNode(tag, value))

    def value(self, events: list[Any], pos: int, depth: int = 0) -> tuple[object, int]:
        """The value whose first event is `events[pos]`, and the index after it."""
        event = events[pos]
        kind = type(event)
        if kind is ScalarEvent:
            return self.scalar(event), pos + 1
        if depth >= _MAX_PLAIN_DEPTH or kind is AliasEvent:
            raise NotPlain
        if event.anchor is not None or event.tag is not None:
            raise NotPlain
        pos += 1
        if kind is SequenceStartEvent:
            items: list[object] = []
            while type(events[pos]) is not SequenceEndEvent:
                item, pos = self.value(events, pos, depth + 1)
                items.append(item)
            return items, pos + 1
        mapping: dict[object, object] = {}
        while type(key := events[pos]) is not MappingEndEvent:
            if type(key) is not ScalarEvent or self.is_merge_key(key):
                raise NotPlain
            name = self.scalar(key)
            # SafeConstructor lets a repeated key's last value win.
            mapping[name], pos = self.value(events, pos + 1, depth + 1)
        return mapping, pos + 1

    @staticmethod
    def is_merge_key(event: ScalarEvent) -> bool:
        return event.value == "<<" and bool(event.implicit[0])
