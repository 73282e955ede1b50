"""Per-connection request rate limiting: a token bucket.

Pure: time is a parameter (the session passes ``trio.current_time()``).
"""

from __future__ import annotations

from typing import final


@final
class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; each request takes one."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> bool:
        """Take a token if one is there; False means: refuse this request."""
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
