"""One rescheduling timer for a sans-IO state machine driven by trio.

ICE and DTLS are pure objects: they say when they next want to be woken
(``next_deadline()``) and what to do then (``handle_timeout(now)``), and never sleep. A
transport that owns them runs one :class:`DeadlineTimer` in its nursery and calls
:meth:`DeadlineTimer.reschedule` after anything that may have moved the deadline (a
packet in, a state change); the sleeping task then wakes at the new time without a
restart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final, final

import trio

#: The shortest wait between two firings. A state machine whose deadline does not move
#: after ``on_timer`` (it did nothing, or the deadline is already past) waits this long
#: instead of spinning.
MIN_INTERVAL: Final = 0.001


@final
class DeadlineTimer:
    """Calls ``on_timer(now)`` each time the trio clock reaches ``next_deadline()``.

    ``next_deadline()`` returns a time on trio's clock, or ``None`` (or ``math.inf``) when
    nothing is due; it is asked afresh before every sleep and on every
    :meth:`reschedule`. A deadline is never earlier than :data:`MIN_INTERVAL` after the
    last firing.
    """

    def __init__(
        self,
        next_deadline: Callable[[], float | None],
        on_timer: Callable[[float], None],
    ) -> None:
        self._next_deadline = next_deadline
        self._on_timer = on_timer
        self._scope: trio.CancelScope | None = None
        self._last_fired = -math.inf

    def _deadline(self) -> float:
        deadline = self._next_deadline()
        if deadline is None:
            deadline = math.inf
        return max(deadline, self._last_fired + MIN_INTERVAL)

    def reschedule(self) -> None:
        """Move the running timer's wake-up to the current ``next_deadline()``; never blocks.

        Does nothing when :meth:`run` is not sleeping (not started, ended, or inside
        ``on_timer``, after which the deadline is asked afresh anyway).
        """
        scope = self._scope
        if scope is not None:
            scope.deadline = self._deadline()

    async def run(self) -> None:
        """Fire ``on_timer`` at each deadline, forever; start it in the owner's nursery.

        It ends only by cancellation (the owner's scope) or by an exception from
        ``on_timer``, which propagates. ``on_timer`` is called synchronously, so a
        cancellation never interrupts it.
        """
        while True:
            try:
                with trio.CancelScope(deadline=self._deadline()) as scope:
                    self._scope = scope
                    await trio.sleep_forever()
            finally:
                self._scope = None
            now = trio.current_time()
            self._last_fired = now
            self._on_timer(now)
