"""When to try again and how long to wait: jittered backoff, poll pacing. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass

from batch_runner.errors import ApiError, TransientApiError

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
