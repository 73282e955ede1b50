"""DeadlineTimer and TimerQueue: firing, rescheduling, the anti-spin floor, cancellation,
and one queue firing many timers.

Every test runs on trio's autojump clock, so the times below are virtual seconds.
"""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from tests.transport_helpers import task_names
from trio_sfu.timers import FIRE_SLICE, MIN_INTERVAL, DeadlineTimer, TimerQueue


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


@attrs.define(eq=False)
class Runner:
    """Runs a timer on its own task, or in a TimerQueue: the behaviour must be the same."""

    queue: TimerQueue | None

    def make(self, machine: FakeMachine) -> DeadlineTimer:
        if self.queue is None:
            return make_timer(machine)
        return self.queue.timer(machine.next_deadline, machine.on_timer)

    def start(self, nursery: trio.Nursery, timer: DeadlineTimer) -> None:
        if self.queue is None:
            nursery.start_soon(timer.run)
        else:
            nursery.start_soon(self.queue.run)
            timer.reschedule()  # a queued timer is armed by its owner


@pytest.fixture(params=["own_task", "queue"])
def runner(request: pytest.FixtureRequest) -> Runner:
    return Runner(TimerQueue() if request.param == "queue" else None)


async def test_fires_at_the_deadline(
    autojump_clock: trio.testing.MockClock, runner: Runner
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine(deadline=start + 5)
        async with trio.open_nursery() as nursery:
            runner.start(nursery, runner.make(machine))
            await trio.sleep(4.9)
            assert machine.fired == []
            await trio.sleep(20)
            nursery.cancel_scope.cancel()
        assert machine.fired == [pytest.approx(start + 5)]


async def test_no_deadline_sleeps_until_rescheduled(
    autojump_clock: trio.testing.MockClock, runner: Runner
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine()
        timer = runner.make(machine)
        async with trio.open_nursery() as nursery:
            runner.start(nursery, timer)
            await trio.sleep(10)
            assert machine.fired == []
            machine.deadline = start + 12
            timer.reschedule()
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
        assert machine.fired == [pytest.approx(start + 12)]


async def test_reschedule_moves_the_deadline_earlier(
    autojump_clock: trio.testing.MockClock, runner: Runner
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine(deadline=start + 10)
        timer = runner.make(machine)
        async with trio.open_nursery() as nursery:
            runner.start(nursery, timer)
            await trio.sleep(1)
            machine.deadline = start + 3
            timer.reschedule()
            await trio.sleep(20)
            nursery.cancel_scope.cancel()
        assert machine.fired == [pytest.approx(start + 3)]


async def test_reschedule_moves_the_deadline_later(
    autojump_clock: trio.testing.MockClock, runner: Runner
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine(deadline=start + 2)
        timer = runner.make(machine)
        async with trio.open_nursery() as nursery:
            runner.start(nursery, timer)
            await trio.sleep(1)
            machine.deadline = start + 8
            timer.reschedule()
            await trio.sleep(5)
            assert machine.fired == []
            await trio.sleep(20)
            nursery.cancel_scope.cancel()
        assert machine.fired == [pytest.approx(start + 8)]


async def test_a_deadline_in_the_past_fires_at_once(
    autojump_clock: trio.testing.MockClock, runner: Runner
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine()
        timer = runner.make(machine)
        async with trio.open_nursery() as nursery:
            runner.start(nursery, timer)
            await trio.sleep(5)
            machine.deadline = start + 1
            timer.reschedule()
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
        assert machine.fired == [pytest.approx(start + 5)]


async def test_a_deadline_that_does_not_move_fires_once_per_millisecond(
    autojump_clock: trio.testing.MockClock, runner: Runner
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine(deadline=start + 1, clears=False)
        timer = runner.make(machine)
        async with trio.open_nursery() as nursery:
            runner.start(nursery, timer)
            await trio.sleep(1 + 4.5 * MIN_INTERVAL)
            machine.deadline = None
            timer.reschedule()
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
        # At the deadline, then at each floor: the stuck machine never spins.
        expected = [start + 1 + i * MIN_INTERVAL for i in range(5)]
        assert machine.fired == pytest.approx(expected)


async def test_reschedule_respects_the_floor_after_a_firing(
    autojump_clock: trio.testing.MockClock, runner: Runner
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        machine = FakeMachine(deadline=start + 1)
        timer = runner.make(machine)
        async with trio.open_nursery() as nursery:
            runner.start(nursery, timer)
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


# ---- TimerQueue: many timers, one task ---------------------------------------------------


async def test_a_queue_fires_many_timers_in_deadline_order_from_one_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        queue = TimerQueue()
        order: list[int] = []
        machines = []
        for i in range(100):
            machine = FakeMachine(deadline=start + 1 + (37 * i % 100) / 100)
            timer = queue.timer(
                machine.next_deadline,
                lambda now, i=i, m=machine: (order.append(i), m.on_timer(now)),
            )
            timer.reschedule()
            machines.append(machine)
        tasks_before = task_names()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.run)
            await trio.sleep(0.5)
            assert len(task_names()) == len(tasks_before) + 1  # one task for all 100
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
        assert [machines[i].fired[0] for i in order] == sorted(m.fired[0] for m in machines)
        for machine in machines:
            assert machine.fired == [pytest.approx(machine.fired[0])]
            assert machine.fired[0] == pytest.approx(
                start + 1 + (machines.index(machine) * 37 % 100) / 100
            )
        assert len(queue) == 0


async def test_a_cancelled_queued_timer_never_fires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        queue = TimerQueue()
        kept, dropped = FakeMachine(deadline=start + 2), FakeMachine(deadline=start + 1)
        kept_timer = queue.timer(kept.next_deadline, kept.on_timer)
        dropped_timer = queue.timer(dropped.next_deadline, dropped.on_timer)
        kept_timer.reschedule()
        dropped_timer.reschedule()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.run)
            await trio.sleep(0.5)
            dropped_timer.cancel()
            dropped_timer.cancel()  # idempotent
            dropped_timer.reschedule()  # and stays out of the queue
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
        assert dropped.fired == []
        assert kept.fired == [pytest.approx(start + 2)]
        assert len(queue) == 0


async def test_an_error_in_one_queued_timer_goes_to_its_on_error_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    errors: list[Exception] = []

    def boom(now: float) -> None:
        raise RuntimeError("boom")

    with trio.fail_after(60):
        start = trio.current_time()
        queue = TimerQueue()

        def on_error(exc: Exception) -> None:  # what an owner does: record, stop the timer
            errors.append(exc)
            bad.cancel()

        bad = queue.timer(lambda: start + 1, boom, on_error=on_error)
        machine = FakeMachine(deadline=start + 2)
        good = queue.timer(machine.next_deadline, machine.on_timer)
        bad.reschedule()
        good.reschedule()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.run)
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
        assert [str(e) for e in errors] == ["boom"]
        assert machine.fired == [pytest.approx(start + 2)]


async def test_an_error_without_on_error_ends_the_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def boom(now: float) -> None:
        raise RuntimeError("boom")

    with trio.fail_after(60):
        start = trio.current_time()
        queue = TimerQueue()
        queue.timer(lambda: start + 1, boom).reschedule()
        with pytest.raises(RuntimeError, match="boom"):
            await queue.run()
        assert trio.current_time() == pytest.approx(start + 1)


async def test_rescheduling_often_keeps_the_heap_small(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # ICE consent moves a transport's deadline later on every check: the outdated heap
    # entries must not pile up.
    with trio.fail_after(3000):
        queue = TimerQueue()
        machines = [FakeMachine() for _ in range(10)]
        timers = [queue.timer(m.next_deadline, m.on_timer) for m in machines]
        for step in range(1000):
            for machine, timer in zip(machines, timers, strict=True):
                machine.deadline = trio.current_time() + 30 + step
                timer.reschedule()
        assert len(queue) == 10
        assert len(queue._heap) <= 2 * 10 + 64 + 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.run)
            await trio.sleep(2000)
            nursery.cancel_scope.cancel()
        for machine in machines:
            assert len(machine.fired) == 1


async def test_a_queue_checkpoints_between_slices_of_due_timers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        start = trio.current_time()
        queue = TimerQueue()
        fired: list[int] = []
        others: list[int] = []
        for i in range(3 * FIRE_SLICE):
            queue.timer(lambda: start + 1, lambda now, i=i: fired.append(i)).reschedule()

        async def other() -> None:
            await trio.sleep(1)
            while len(fired) < 3 * FIRE_SLICE:
                others.append(len(fired))
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.run)
            nursery.start_soon(other)
            await trio.sleep(3)
            nursery.cancel_scope.cancel()
        assert len(fired) >= 3 * FIRE_SLICE
        # Another task ran while the due timers were being fired.
        assert any(0 < count < 3 * FIRE_SLICE for count in others)
