"""Redaction of secrets (the API key) as whole tokens: pure, no I/O.

A whole token, so that a short key (`k`, `cat`) does not mangle ordinary words
("peak", "category") while a real key is caught wherever it stands alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

MASK = "***"


def _token_pattern(secret: str) -> str:
    # a side that begins (ends) with a word character must not continue a word;
    # a side made of punctuation (a key like "-abc") has no word to continue
    head = r"(?<!\w)" if re.match(r"\w", secret[0]) else ""
    tail = r"(?!\w)" if re.match(r"\w", secret[-1]) else ""
    return head + re.escape(secret) + tail


class Redactor:
    """Replaces every whole-token occurrence of the given secrets with `***`.

    Blank secrets are ignored. The JSON-escaped form of each secret is covered
    too, so text that was JSON-encoded (a JSON log line) is caught as well.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            secret = secret.strip()
            if secret:
                forms.add(secret)
                forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
        # longest first, so a secret that contains another is masked whole
        ordered = sorted(forms, key=len, reverse=True)
        self._forms = tuple(ordered)
        self._pattern = (
            re.compile("|".join(_token_pattern(s) for s in ordered))
            if ordered
            else None
        )

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        # a substring test first: most texts hold no secret, and `in` is far
        # cheaper than the regex's word-boundary search
        for form in self._forms:
            if form in text:
                return self._pattern.sub(MASK, text)
        return text
