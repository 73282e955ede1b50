"""Regression tests of issue 17's input defects, each through a real server on 127.0.0.1.

1. A peer whose only transports are plain ones is still served after
   ``peer_idle_timeout``, and its task does not spin.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from tests.signaling_harness import (
    make_config,
    peer,
    running_server,
)
from trio_sfu.engine.api import MediaEngine
from trio_sfu.engine.pool import PoolSettings, open_worker_pool
from trio_sfu.engine.worker import WorkerSettings, open_worker
from trio_sfu.server import SfuServer

M = "m"
#: A number that JSON can write but a float cannot hold: infinity once parsed.
#: Encodings a producer may have (README, docs/protocol-additions.md).


@asynccontextmanager
async def sfu(kind: str = "worker", **config: Any) -> AsyncIterator[tuple[MediaEngine, SfuServer]]:
    """A real server on the in-process worker (``--workers 1``) or on a pool of worker
    processes. Transports are never connected here: they must outlive the test."""
    settings = WorkerSettings(transport_connect_timeout=600)
    server_config = make_config(transport_connect_timeout=600, **config)
    if kind == "worker":
        async with open_worker(settings) as worker, running_server(worker, server_config) as s:
            yield worker, s
    else:
        pool_settings = PoolSettings(workers=1, worker=settings, report_interval=0.2)
        async with (
            open_worker_pool(pool_settings) as pool,
            running_server(pool, server_config) as s,
        ):
            yield pool, s


# ---- 1. a plain-only peer after the idle timeout -------------------------------------------


@attrs.define(eq=False)
class TaskSteps(trio.abc.Instrument):
    """Counts the steps each task takes (by task name) while installed."""

    steps: Counter[str] = attrs.field(factory=Counter)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] += 1


async def test_a_plain_only_peer_is_served_after_the_idle_timeout_and_does_not_spin() -> None:
    idle_timeout = 0.5
    with trio.fail_after(30):
        async with (
            sfu(peer_idle_timeout=idle_timeout) as (_, server),
            peer(server, M, "bot", can_plain_transport=True) as bot,
        ):
            created = await bot.create_plain_transport(comedia=True, direction="send")
            # Well past the idle limit counted from the join (the transport came after).
            await trio.sleep(3 * idle_timeout)
            counter = TaskSteps()
            trio.lowlevel.add_instrument(counter)
            cpu = time.process_time()
            try:
                await trio.sleep(1.0)  # nothing happens in this second
            finally:
                trio.lowlevel.remove_instrument(counter)
            cpu = time.process_time() - cpu
            peer_steps = sum(n for name, n in counter.steps.items() if "Peer.run" in name)
            assert peer_steps == 0, f"the peer's task took {peer_steps} steps in an idle second"
            assert cpu < 0.25, f"the server used {cpu:.2f} s of CPU in an idle second"
            with trio.fail_after(2):  # promptly, not after a timeout
                stats = await bot.get_stats(created["transportId"])
            assert stats[0]["type"] == "plain"
            assert bot.closed is None
            room = server.app.rooms.rooms[M]
            assert [p.peer_id for p in room.peers.values()] == [bot.peer_id]


async def test_a_peer_whose_webrtc_transport_closes_keeps_its_plain_one_and_is_not_reaped() -> None:
    """The other path that moves the idle clock: the engine closes a transport (here the
    WebRTC one, never connected) while a plain transport remains."""
    with trio.fail_after(30):
        async with open_worker(WorkerSettings(transport_connect_timeout=0.3)) as worker:
            config = make_config(transport_connect_timeout=0.3, peer_idle_timeout=0.5)
            async with (
                running_server(worker, config) as server,
                peer(server, M, "bot", can_plain_transport=True) as bot,
            ):
                webrtc = await bot.create_transport("send")
                plain = await bot.create_plain_transport(comedia=True)
                note = await bot.next_notification("rtc:transportClosed")
                assert note.data["transportId"] == webrtc["transportId"]
                await trio.sleep(1.5)
                with trio.fail_after(2):
                    await bot.get_stats(plain["transportId"])
                assert bot.closed is None
