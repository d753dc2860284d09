"""An in-memory Api driven by a handler function, for fast exact tests.

httpx's `MockTransport` habit: no sockets, no server; see `FakeApi`.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, TypeVar

from batch_runner.models import JobSpec
from batch_runner.wire.api import ImageBody
from batch_runner.wire.protocol import PollResult, SubmitResult

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FakeRequest:
    """One call the engine made: a submit (with its job), a poll (with its
    taskid) or a download (with its URL)."""

    kind: Literal["submit", "poll", "download"]
    job: JobSpec | None = None
    taskid: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class FakeImage:
    """An image answer with headers: bytes, a Content-Type, the chunk size."""

    data: bytes
    content_type: str | None = "image/png"
    chunk_size: int = 64 * 1024


FakeAnswer = SubmitResult | PollResult | FakeImage | bytes
Handler = Callable[[FakeRequest], FakeAnswer | Awaitable[FakeAnswer]]


class MemoryBody:
    """FakeImage bytes as an ImageBody."""

    def __init__(self, image: FakeImage) -> None:
        self._image = image
        self._offset = 0

    @property
    def content_type(self) -> str | None:
        return self._image.content_type

    def __aiter__(self) -> MemoryBody:
        return self

    async def __anext__(self) -> bytes:
        if self._offset >= len(self._image.data):
            raise StopAsyncIteration
        end = self._offset + self._image.chunk_size
        chunk = self._image.data[self._offset : end]
        self._offset = end
        return chunk


class FakeApi:
    """The Api protocol in memory; `requests` lists every call in order.

    Every call becomes a `FakeRequest` handed to the handler, which returns
    what the server would say (a SubmitResult, a PollResult, image bytes or a
    FakeImage) or raises the ApiError it would cause. The handler may be sync
    or async (an async one can wait on events to stage races):

        def handler(request: FakeRequest) -> FakeAnswer:
            if request.kind == "submit":
                return SubmitResult("t1", (), 1000, "ok")
            if request.kind == "poll":
                return PollResult(3, ("mem://t1.png",), "", 1000, "ok")
            return PNG_BYTES

        runner = Runner(FakeApi(handler), ledger, options, out_dir=tmp)
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[FakeRequest] = []

    def count(self, kind: str) -> int:
        """How many calls of this kind were made."""
        return sum(1 for r in self.requests if r.kind == kind)

    async def _ask(self, request: FakeRequest) -> FakeAnswer:
        self.requests.append(request)
        answer = self.handler(request)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer

    async def submit(self, job: JobSpec) -> SubmitResult:
        answer = await self._ask(FakeRequest("submit", job=job))
        return _expect(answer, SubmitResult, "submit")

    async def poll(self, taskid: str) -> PollResult:
        answer = await self._ask(FakeRequest("poll", taskid=taskid))
        return _expect(answer, PollResult, "poll")

    @asynccontextmanager
    async def download(self, url: str) -> AsyncIterator[ImageBody]:
        answer = await self._ask(FakeRequest("download", url=url))
        if isinstance(answer, bytes):
            answer = FakeImage(answer)
        yield MemoryBody(_expect(answer, FakeImage, "download"))


def _expect(answer: FakeAnswer, expected: type[T], kind: str) -> T:
    if not isinstance(answer, expected):
        raise TypeError(
            f"handler answered a {kind} with {type(answer).__name__}, "
            f"expected {expected.__name__}"
        )
    return answer
