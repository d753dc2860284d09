"""Which form of the key a server wants, decided once per run. Pure.

`Bearer <key>` first, the bare key (the docs' curl sample) once if refused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from batch_runner.errors import AuthError


class Verdict(enum.Enum):
    """What to do after the server rejected a request's key form."""

    #: send the request again with the form now current
    RESEND = "resend"
    #: the key is rejected: raise
    REJECTED = "rejected"


@dataclass(slots=True)
class KeyForms:
    """The state of the choice: the forms in order, which one is current, and
    whether it is settled (a success) or the key is rejected.

    Every known client sends `Authorization: Bearer <key>`, the API docs' curl
    sample the bare key. A server that rejects the first form gets the other
    once. The first success settles the form for the rest of the run; a
    rejection of the last form (or of a settled one) rejects the key, and every
    later request fails without being sent. The client sends trial requests
    one at a time, so a wrong key costs the requests already in flight plus one.
    """

    forms: tuple[str, ...]
    index: int = 0
    settled: bool = False
    rejection: AuthError | None = field(default=None)

    @classmethod
    def for_key(cls, key: str) -> KeyForms:
        return cls(forms=(f"Bearer {key}", key))

    @property
    def current(self) -> tuple[int, str]:
        """(index, header value) to send now."""
        return self.index, self.forms[self.index]

    @property
    def on_trial(self) -> bool:
        """A fallback form is being tried: send one request at a time."""
        return self.index > 0 and not self.settled and self.rejection is None

    def accepted(self, index: int) -> None:
        """A request sent with form `index` succeeded."""
        if index == self.index and self.rejection is None:
            self.settled = True

    def rejected(self, index: int, error: AuthError) -> Verdict:
        """A request sent with form `index` was refused for its key."""
        if self.rejection is not None:
            return Verdict.REJECTED
        if index != self.index:
            # another request already moved on: this one tries the current form
            return Verdict.RESEND
        if self.settled or index + 1 >= len(self.forms):
            # a settled form refused (the key was revoked), or no form is left
            self.rejection = error
            return Verdict.REJECTED
        self.index += 1
        return Verdict.RESEND
