"""How busy a worker is: rates from successive samples of its counters.

Sans-IO: the caller passes the time.
"""

from __future__ import annotations

from typing import final


@final
class LoadMeter:
    """Packets per second and CPU share between the last two samples."""

    __slots__ = ("_cpu", "_packets", "_time", "cpu_percent", "packets_per_second")

    def __init__(self) -> None:
        self.packets_per_second = 0.0
        self.cpu_percent = 0.0
        self._time: float | None = None
        self._packets = 0
        self._cpu = 0.0

    def sample(self, now: float, packets: int, cpu_seconds: float) -> None:
        """``packets``: forwarded and received so far (in + out); ``cpu_seconds``: the
        process's user + system time so far."""
        if self._time is not None and now > self._time:
            elapsed = now - self._time
            self.packets_per_second = max(0, packets - self._packets) / elapsed
            self.cpu_percent = 100.0 * max(0.0, cpu_seconds - self._cpu) / elapsed
        self._time, self._packets, self._cpu = now, packets, cpu_seconds
