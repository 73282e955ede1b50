"""Rescheduling timers for sans-IO state machines driven by trio.

ICE and DTLS are pure objects: they say when they next want to be woken
(``next_deadline()``) and what to do then (``handle_timeout(now)``), and never sleep. A
transport that owns them holds one :class:`DeadlineTimer` and calls
:meth:`DeadlineTimer.reschedule` after anything that may have moved the deadline (a packet
in, a state change); the timer then fires at the new time without a restart.

A timer runs in one of two ways:

- on its own: ``nursery.start_soon(timer.run)``, one sleeping task per timer;
- in a :class:`TimerQueue`: one task (the queue's :meth:`TimerQueue.run`) fires every
  timer of the queue from a heap. A Router keeps one for all its transports, so a
  transport costs no timer task.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Final, final

import trio

#: The shortest wait between two firings. A state machine whose deadline does not move
#: after ``on_timer`` (it did nothing, or the deadline is already past) waits this long
#: instead of spinning.
MIN_INTERVAL: Final = 0.001

#: Timers a queue fires between two checkpoints, so that a round of many due timers does
#: not hold up the packet path.
FIRE_SLICE: Final = 16


@final
class DeadlineTimer:
    """Calls ``on_timer(now)`` each time the trio clock reaches ``next_deadline()``.

    ``next_deadline()`` returns a time on trio's clock, or ``None`` (or ``math.inf``) when
    nothing is due; it is asked afresh after every firing and on every
    :meth:`reschedule`. A deadline is never earlier than :data:`MIN_INTERVAL` after the
    last firing.

    With a ``queue``, the queue's task fires it, and an exception from ``on_timer`` goes to
    ``on_error`` (the queue's other timers are not affected); :meth:`cancel` takes it out
    of the queue for good. Without one, :meth:`run` fires it.
    """

    __slots__ = ("_last_fired", "_next_deadline", "_on_timer", "_queue", "_scope", "on_error")

    def __init__(
        self,
        next_deadline: Callable[[], float | None],
        on_timer: Callable[[float], None],
        *,
        queue: TimerQueue | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self._next_deadline = next_deadline
        self._on_timer = on_timer
        self._queue = queue
        self.on_error = on_error
        self._scope: trio.CancelScope | None = None
        self._last_fired = -math.inf

    @property
    def queued(self) -> bool:
        """Whether a :class:`TimerQueue` fires this timer (else :meth:`run` does)."""
        return self._queue is not None

    def _deadline(self) -> float:
        deadline = self._next_deadline()
        if deadline is None:
            deadline = math.inf
        return max(deadline, self._last_fired + MIN_INTERVAL)

    def reschedule(self) -> None:
        """Move the timer's wake-up to the current ``next_deadline()``; never blocks.

        On its own, this does nothing when :meth:`run` is not sleeping (not started,
        ended, or inside ``on_timer``, after which the deadline is asked afresh anyway).
        """
        queue = self._queue
        if queue is not None:
            queue._schedule(self, self._deadline())
            return
        scope = self._scope
        if scope is not None:
            scope.deadline = self._deadline()

    def cancel(self) -> None:
        """Never fire again (a queued timer leaves its queue). Idempotent."""
        queue = self._queue
        if queue is not None:
            queue._schedule(self, None)
            self._queue = None
        self._next_deadline = _never
        scope = self._scope
        if scope is not None:
            scope.deadline = math.inf

    def _fire(self, now: float) -> None:
        self._last_fired = now
        self._on_timer(now)

    async def run(self) -> None:
        """Fire ``on_timer`` at each deadline, forever; start it in the owner's nursery.

        Only for a timer without a queue. It ends only by cancellation (the owner's scope)
        or by an exception from ``on_timer``, which propagates. ``on_timer`` is called
        synchronously, so a cancellation never interrupts it.
        """
        if self._queue is not None:
            raise RuntimeError("this timer is fired by its TimerQueue")
        while True:
            try:
                with trio.CancelScope(deadline=self._deadline()) as scope:
                    self._scope = scope
                    await trio.sleep_forever()
            finally:
                self._scope = None
            self._fire(trio.current_time())


def _never() -> None:
    return None


@final
class TimerQueue:
    """Fires many :class:`DeadlineTimer` s from one task: ``nursery.start_soon(queue.run)``.

    A heap of (deadline, order, timer) entries; rescheduling pushes a new entry and the
    timer remembers which deadline is current, so an outdated entry is skipped when it
    comes up (and the heap is rebuilt when outdated entries outnumber current ones).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, DeadlineTimer]] = []
        #: Each scheduled timer's current deadline.
        self._due: dict[DeadlineTimer, float] = {}
        self._order = itertools.count()
        self._scope: trio.CancelScope | None = None

    def timer(
        self,
        next_deadline: Callable[[], float | None],
        on_timer: Callable[[float], None],
        *,
        on_error: Callable[[Exception], None] | None = None,
    ) -> DeadlineTimer:
        """A new timer fired by this queue; call its ``reschedule()`` to arm it."""
        return DeadlineTimer(next_deadline, on_timer, queue=self, on_error=on_error)

    def __len__(self) -> int:
        """How many timers have a deadline."""
        return len(self._due)

    def _schedule(self, timer: DeadlineTimer, deadline: float | None) -> None:
        due = self._due
        if deadline is None or deadline == math.inf:
            due.pop(timer, None)
            return
        if due.get(timer) == deadline:
            return
        due[timer] = deadline
        heap = self._heap
        heapq.heappush(heap, (deadline, next(self._order), timer))
        if len(heap) > 2 * len(due) + 64:
            self._compact()
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    def _compact(self) -> None:
        order = self._order
        self._heap = [(deadline, next(order), timer) for timer, deadline in self._due.items()]
        heapq.heapify(self._heap)

    async def run(self) -> None:
        """Fire the due timers, forever; ends only by cancellation.

        Each timer's ``on_timer`` runs synchronously; after it the timer's next deadline is
        asked for. An exception from a timer goes to its ``on_error`` (without one, it
        propagates and ends the queue).
        """
        due = self._due
        while True:
            try:
                with trio.CancelScope(
                    deadline=self._heap[0][0] if self._heap else math.inf
                ) as scope:
                    self._scope = scope
                    await trio.sleep_forever()
            finally:
                self._scope = None
            fired = 0
            while True:
                heap = self._heap
                now = trio.current_time()
                if not heap or heap[0][0] > now:
                    break
                deadline, _, timer = heapq.heappop(heap)
                if due.get(timer) != deadline:
                    continue  # rescheduled or cancelled since
                del due[timer]
                try:
                    timer._fire(now)
                except Exception as exc:
                    if timer.on_error is None:
                        raise
                    timer.on_error(exc)
                if timer._queue is self:
                    self._schedule(timer, timer._deadline())
                fired += 1
                if fired % FIRE_SLICE == 0:
                    await trio.lowlevel.checkpoint()
