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


@dataclass(slots=True)
class AimdConcurrency:
    """Additive-increase / multiplicative-decrease on how many jobs may be in flight.

    TCP's congestion control, applied to an API whose real limit is unknown:
    it starts low and, like TCP's slow start, adds 1 per success (doubling per
    round) until the first sign of back-pressure; from then on each success
    adds 1/limit (about +1 per round of `limit` submits). Back-pressure (429,
    503, or submit latency rising well above the best seen) multiplies it by
    `decrease`, at most once per `cooldown` seconds so that a burst of 429s from
    one overshoot counts as one signal. Pure: callers pass the clock.
    """

    maximum: int
    minimum: int = 1
    start: int = 4
    decrease: float = 0.75
    cooldown: float = 1.0
    #: latency this many times the best seen counts as back-pressure
    latency_factor: float = 3.0
    _current: float = 0.0
    _slow_start: bool = True
    _last_decrease: float = float("-inf")
    _best_latency: float = float("inf")
    _smoothed_latency: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        self._current = float(min(max(self.start, self.minimum), self.maximum))

    @property
    def limit(self) -> int:
        return int(self._current)

    def on_success(self, now: float, latency: float | None = None) -> None:
        if latency is not None and self._latency_rising(latency):
            self._back_off(now, factor=0.9)
            return
        step = 1.0 if self._slow_start else 1.0 / self._current
        self._current = min(float(self.maximum), self._current + step)

    def on_backpressure(self, now: float) -> None:
        self._back_off(now, factor=self.decrease)

    def _back_off(self, now: float, factor: float) -> None:
        if now - self._last_decrease < self.cooldown:
            return
        self._slow_start = False
        self._last_decrease = now
        self._current = max(float(self.minimum), self._current * factor)

    def _latency_rising(self, latency: float) -> bool:
        self._best_latency = min(self._best_latency, latency)
        previous = self._smoothed_latency
        self._smoothed_latency = (
            latency if previous is None else 0.8 * previous + 0.2 * latency
        )
        # below a few ms a loopback's jitter is all noise, not queueing
        floor = max(self._best_latency, 0.005)
        return self._smoothed_latency > self.latency_factor * floor
