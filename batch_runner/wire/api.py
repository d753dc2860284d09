"""The seam between the engine and the wire: what a run may ask of an API.

It speaks wire types only (jobs, results, image bytes); where the bytes go is
the store's business. `ZImageClient` implements it over HTTP, `FakeApi` in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from batch_runner.models import JobSpec
from batch_runner.wire.protocol import PollResult, SubmitResult


class ImageBody(Protocol):
    """An image response whose status was fine: its type, then its bytes in chunks.

    Iterating raises ApiError for what goes wrong on the wire (a reset, a body
    over the size cap), never a transport library's own exceptions.
    """

    @property
    def content_type(self) -> str | None: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...


class Api(Protocol):
    """Submit, poll and download; every failure is an ApiError."""

    async def submit(self, job: JobSpec) -> SubmitResult: ...

    async def poll(self, taskid: str) -> PollResult: ...

    def download(self, url: str) -> AbstractAsyncContextManager[ImageBody]: ...
