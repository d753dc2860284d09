"""When to try again and how long to wait (pure), and the retry loop itself.

`Retrier.call` tells its hooks about every retry (stamina's habit).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from batch_runner.errors import ApiError, TransientApiError

T = TypeVar("T")

#: polls run at the user's interval for this long, then slow down
POLL_FAST_PHASE = 60.0
POLL_BACKOFF_FACTOR = 1.5
POLL_MAX_INTERVAL = 15.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries for one request: `attempts` tries in all, waits capped."""

    attempts: int = 5
    wait_initial: float = 0.5
    wait_max: float = 30.0
    #: a Retry-After longer than this is cut down so one bad header cannot stall a run
    retry_after_max: float = 120.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter (AWS architecture blog): uniform(0, min(cap, base*2**(n-1)))."""
        ceiling = min(self.wait_max, self.wait_initial * (2 ** max(0, attempt - 1)))
        return rng.uniform(0.0, ceiling)

    def delay_for(self, exc: ApiError, attempt: int, rng: random.Random) -> float:
        """The wait before attempt `attempt + 1`; the server's Retry-After wins."""
        if isinstance(exc, TransientApiError) and exc.retry_after is not None:
            return min(exc.retry_after, self.retry_after_max)
        return self.backoff(attempt, rng)

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Retry transient failures while attempts remain."""
        return isinstance(exc, TransientApiError) and attempt < self.attempts


def next_poll_interval(elapsed: float, previous: float, base: float) -> float:
    """Seconds until the next poll of a task that has been running `elapsed` s.

    The first minute polls every `base` seconds (users watch short tasks), then
    the interval grows x1.5 per poll up to 15 s, so a slow queue costs few requests.
    """
    if elapsed < POLL_FAST_PHASE:
        return base
    return min(max(previous, base) * POLL_BACKOFF_FACTOR, max(POLL_MAX_INTERVAL, base))


def is_pacing(exc: TransientApiError) -> bool:
    """A 429, or a 503 with Retry-After, is the server pacing us; a bare 503 may
    be an outage, which must use up retries and fail."""
    return exc.http_status == 429 or (
        exc.http_status == 503 and exc.retry_after is not None
    )


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """What a retry hook learns: which request failed how, and the wait before
    the next try."""

    #: "submit", "poll" or "download"
    what: str
    job_id: str
    #: attempts used up so far (answers that only paced us are not counted)
    attempt: int
    #: seconds until the next try
    wait: float
    error: TransientApiError
    #: the server was pacing us (429, or 503 with Retry-After)
    throttled: bool
    #: seconds since the first try of this request
    elapsed: float


class RetryHook(Protocol):
    """Called before each wait; must not raise (it runs inside the job)."""

    def __call__(self, details: RetryDetails) -> None: ...


@dataclass(frozen=True, slots=True)
class Retrier:
    """Runs one request until it succeeds, fails for good or runs out of attempts.

    Only TransientApiError is retried. A 429 (or a 503 with Retry-After) waits
    as told and, up to `max_throttled` times per request, does not use up an
    attempt: stamina cannot express that, which is why this loop is our own.
    """

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    max_throttled: int = 100
    on_retry: Sequence[RetryHook] = ()
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def call(
        self, op: Callable[[], Awaitable[T]], *, what: str, job_id: str
    ) -> tuple[T, int]:
        """`op()`'s result and the number of requests it took."""
        attempt = 0
        throttled = 0
        started = time.monotonic()
        while True:
            attempt += 1
            try:
                result = await op()
            except TransientApiError as exc:
                pacing = is_pacing(exc)
                if pacing and throttled < self.max_throttled:
                    throttled += 1
                    attempt -= 1
                if not self.policy.should_retry(exc, attempt):
                    raise
                wait = self.policy.delay_for(exc, max(attempt, 1), self.rng)
                details = RetryDetails(
                    what=what,
                    job_id=job_id,
                    attempt=attempt,
                    wait=wait,
                    error=exc,
                    throttled=pacing,
                    elapsed=time.monotonic() - started,
                )
                for hook in self.on_retry:
                    hook(details)
                await self.sleep(wait)
            else:
                return result, attempt + throttled
