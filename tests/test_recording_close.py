"""A recording closes its plain transports even while cancelled (its room is closing), and
for a bounded time only: an engine that never answers cannot hold the room's cleanup."""

from __future__ import annotations

from typing import Any, cast

import trio

from trio_sfu.engine.api import MediaEngine
from trio_sfu.signaling.recording import _close_transport


class _Engine:
    def __init__(self, *, wedged: bool) -> None:
        self.wedged = wedged
        self.closed: list[str] = []

    async def close_transport(self, transport_id: str) -> None:
        if self.wedged:
            await trio.sleep_forever()
        await trio.sleep(0.05)  # one round trip to a worker
        self.closed.append(transport_id)


def _as_engine(engine: Any) -> MediaEngine:
    return cast(MediaEngine, engine)


async def test_close_runs_to_the_end_while_cancelled() -> None:
    engine = _Engine(wedged=False)
    with trio.CancelScope() as scope:
        scope.cancel()
        await _close_transport(_as_engine(engine), "t1", 5.0)
    assert engine.closed == ["t1"]


async def test_a_wedged_engine_holds_the_close_for_the_bound_only() -> None:
    engine = _Engine(wedged=True)
    start = trio.current_time()
    with trio.CancelScope() as scope:
        scope.cancel()
        await _close_transport(_as_engine(engine), "t1", 0.2)
    assert engine.closed == []
    assert 0.2 <= trio.current_time() - start < 2.0
