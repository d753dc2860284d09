"""A scripted in-memory Z-Image for FakeApi: the happy path, with hooks to break it."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from batch_runner.wire.fake import FakeAnswer, FakeImage, FakeRequest
from batch_runner.wire.protocol import PollResult, SubmitResult


def png(width: int = 2, height: int = 2) -> bytes:
    """The first bytes of a PNG of that size: enough to sniff and measure."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


Override = Callable[[FakeRequest], FakeAnswer | Awaitable[FakeAnswer] | None]


@dataclass
class Script:
    """Submit creates task `t-<job_id>`; a task is done on its `polls_to_done`-th
    poll with `images` URLs `mem://<taskid>/<k>`; each URL serves a PNG.

    `override(request)` runs first: it may raise (the error the server would
    cause), return an answer, or return None to let the script answer.
    """

    polls_to_done: int = 1
    images: int = 1
    override: Override | None = None
    polls: dict[str, int] = field(default_factory=dict)

    async def __call__(self, request: FakeRequest) -> FakeAnswer:
        if self.override is not None:
            answer = self.override(request)
            if isinstance(answer, Awaitable):
                answer = await answer
            if answer is not None:
                return answer
        if request.kind == "submit":
            assert request.job is not None
            return SubmitResult(f"t-{request.job.job_id}", (), 1000, "ok")
        if request.kind == "poll":
            assert request.taskid is not None
            seen = self.polls[request.taskid] = self.polls.get(request.taskid, 0) + 1
            if seen < self.polls_to_done:
                return PollResult(2, (), "", 1000, "ok")
            urls = tuple(f"mem://{request.taskid}/{k}" for k in range(self.images))
            return PollResult(3, urls, "", 1000, "ok")
        return FakeImage(png())
