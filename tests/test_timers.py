"""DeadlineTimer: firing, rescheduling, the anti-spin floor and cancellation.

Every test runs on trio's autojump clock, so the times below are virtual seconds.
"""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from tests.transport_helpers import task_names
from trio_sfu.timers import MIN_INTERVAL, DeadlineTimer


@attrs.define(eq=False)
class FakeMachine:
    """A sans-IO state machine with one optional deadline; records when it was woken."""

    deadline: float | None = None
    #: When True, on_timer clears the deadline (the machine did its work); when False the
    #: deadline stays in the past, as with a machine that has nothing to do yet.
    clears: bool = True
    fired: list[float] = attrs.Factory(list)

    def next_deadline(self) -> float | None:
        return self.deadline

    def on_timer(self, now: float) -> None:
        self.fired.append(now)
        # A timer without the floor would spin here without the clock moving: fail instead.
        assert len(self.fired) < 100, "the timer spins"
        if self.clears and self.deadline is not None and self.deadline <= now:
            self.deadline = None


def make_timer(machine: FakeMachine) -> DeadlineTimer:
    return DeadlineTimer(machine.next_deadline, machine.on_timer)


async def test_fires_at_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine(deadline=start + 5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(make_timer(machine).run)
            await trio.sleep(4.9)
            assert machine.fired == []
            await trio.sleep(20)
            nursery.cancel_scope.cancel()
        assert machine.fired == [pytest.approx(start + 5)]


async def test_no_deadline_sleeps_until_rescheduled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine()
        timer = make_timer(machine)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer.run)
            await trio.sleep(10)
            assert machine.fired == []
            machine.deadline = start + 12
            timer.reschedule()
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
        assert machine.fired == [pytest.approx(start + 12)]


async def test_reschedule_moves_the_deadline_earlier(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine(deadline=start + 10)
        timer = make_timer(machine)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer.run)
            await trio.sleep(1)
            machine.deadline = start + 3
            timer.reschedule()
            await trio.sleep(20)
            nursery.cancel_scope.cancel()
        assert machine.fired == [pytest.approx(start + 3)]


async def test_reschedule_moves_the_deadline_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine(deadline=start + 2)
        timer = make_timer(machine)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer.run)
            await trio.sleep(1)
            machine.deadline = start + 8
            timer.reschedule()
            await trio.sleep(5)
            assert machine.fired == []
            await trio.sleep(20)
            nursery.cancel_scope.cancel()
        assert machine.fired == [pytest.approx(start + 8)]


async def test_a_deadline_in_the_past_fires_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine()
        timer = make_timer(machine)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer.run)
            await trio.sleep(5)
            machine.deadline = start + 1
            timer.reschedule()
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
        assert machine.fired == [pytest.approx(start + 5)]


async def test_a_deadline_that_does_not_move_fires_once_per_millisecond(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine(deadline=start + 1, clears=False)
        timer = make_timer(machine)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer.run)
            await trio.sleep(1 + 4.5 * MIN_INTERVAL)
            machine.deadline = None
            timer.reschedule()
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
        # At the deadline, then at each floor: the stuck machine never spins.
        expected = [start + 1 + i * MIN_INTERVAL for i in range(5)]
        assert machine.fired == pytest.approx(expected)


async def test_reschedule_respects_the_floor_after_a_firing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine(deadline=start + 1)
        timer = make_timer(machine)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer.run)
            await trio.sleep(1 + MIN_INTERVAL / 2)
            assert machine.fired == [pytest.approx(start + 1)]
            machine.deadline = start  # already past, and before the last firing
            timer.reschedule()
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
        assert machine.fired == pytest.approx([start + 1, start + 1 + MIN_INTERVAL])


async def test_reschedule_before_run_and_after_cancellation_does_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine(deadline=start + 1)
        timer = make_timer(machine)
        timer.reschedule()
        tasks_before = task_names()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer.run)
            await trio.sleep(0.5)
            assert len(task_names()) == len(tasks_before) + 1
            nursery.cancel_scope.cancel()
        assert task_names() == tasks_before
        timer.reschedule()
        await trio.sleep(10)
        assert machine.fired == []


async def test_cancellation_while_sleeping_does_not_fire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine(deadline=start + 5)
        with trio.move_on_after(2) as scope:
            await make_timer(machine).run()
        assert scope.cancelled_caught
        assert trio.current_time() == pytest.approx(start + 2)
        assert machine.fired == []


async def test_an_error_in_on_timer_ends_run(autojump_clock: trio.testing.MockClock) -> None:
    def on_timer(now: float) -> None:
        raise RuntimeError("boom")

    with trio.fail_after(60):
        start = trio.current_time()
        timer = DeadlineTimer(lambda: start + 1, on_timer)
        with pytest.raises(RuntimeError, match="boom"):
            await timer.run()
        assert trio.current_time() == pytest.approx(start + 1)
