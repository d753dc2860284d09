"""How manifest errors name a value's type: the way a manifest author thinks of it."""

from __future__ import annotations


def kind(value: object) -> str:
    """'a string', 'an integer', 'a list', 'null', ... for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"
