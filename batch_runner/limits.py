"""Start-rate limiting without a start-up burst (GCRA). Pure: the caller sleeps."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RateLimiter:
    """Generic cell rate algorithm with no burst allowance.

    Each start is scheduled one period after the previous scheduled start (or
    now, if the line is idle), so starts are evenly spaced from the first one:
    token buckets that begin full burst past the server's limit at start-up
    (see aiolimiter#90). Reserving a slot returns how long the caller must wait.
    """

    rate: float
    _next_start: float = field(default=float("-inf"))

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError("rate must be positive")

    @property
    def period(self) -> float:
        return 1.0 / self.rate

    def reserve(self, now: float) -> float:
        """Claim the next start slot; returns seconds to wait before starting."""
        start = max(now, self._next_start)
        self._next_start = start + self.period
        return start - now
