"""Plain records shared by every layer: a job, its lifecycle states, a ledger record."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class JobStatus(enum.StrEnum):
    """What the ledger says about a job; its last record wins."""

    #: the API returned a taskid; the next run polls it instead of resubmitting
    SUBMITTED = "submitted"
    #: the task finished and its image URLs are recorded, but the images are not
    #: on disk yet (--no-download, or the image host was unreachable); a later
    #: run without --no-download fetches them, never paying for a new task
    GENERATED = "generated"
    #: every image is on disk
    SUCCEEDED = "succeeded"
    #: permanently failed; skipped on resume unless --retry-failed
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One request to send: a manifest row after defaults, validation and `repeat`.

    `resolution` is normalised (`W*H` or one of the aspect ratios); `seed` and
    `prompt_extend` are None when neither the job nor the defaults set them, in
    which case they are not sent.
    """

    job_id: str
    prompt: str
    resolution: str = "1024*1024"
    seed: int | None = None
    prompt_extend: bool | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: "file:line" of the manifest row, for messages
    source: str = ""
