"""Log lines for refusals (and other repeated troubles), at most one per reason per interval.

A server on the internet refuses things all day (bad STUN, forged tokens, strangers'
packets); every refusal is counted in ``/metrics``, but a log line per refusal would let
anyone fill the disk. :class:`RateLimitedLog` writes the first refusal of a reason at once,
then at most one line per ``interval`` for that reason, saying how many were not logged in
between. The same holds for webhook events dropped while a receiver is down (``verb``
``"dropped"``).

Pure: time is a parameter (callers pass ``trio.current_time()``).
"""

from __future__ import annotations

import logging
from typing import Any, Final, final

__all__ = ["DEFAULT_INTERVAL", "RateLimitedLog"]

#: Seconds between two lines of one reason.
DEFAULT_INTERVAL: Final = 60.0


@final
class RateLimitedLog:
    """One warning per reason per ``interval``; the ones left out are counted in the next."""

    __slots__ = ("_logger", "_state", "interval", "verb")

    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        interval: float,
        *,
        verb: str = "refused",
    ) -> None:
        self._logger = logger
        self.interval = interval
        #: What happened, in the lines: "refused (reason): ...".
        self.verb = verb
        #: reason -> [time the next line may be written, refusals not logged since the last]
        self._state: dict[str, list[float]] = {}

    def note(
        self,
        reason: str,
        now: float,
        message: str,
        *args: Any,
        count: int = 1,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> bool:
        """``count`` refusals of ``reason`` happened; log ``message % args`` (with the
        number left out since the last line) unless a line of this reason was written less
        than ``interval`` ago. Returns whether a line was written. ``logger`` (an adapter
        with the meeting and peer, say) replaces the default one for this line."""
        state = self._state.get(reason)
        if state is not None and now < state[0]:
            state[1] += count
            return False
        skipped = int(state[1]) if state is not None else 0
        if skipped:
            message += f" (%d more {self.verb} since the last line of this reason)"
            args = (*args, skipped)
        (logger or self._logger).warning(f"{self.verb} (%s): " + message, reason, *args)
        self._state[reason] = [now + self.interval, 0.0]
        return True
