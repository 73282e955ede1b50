"""Peers that stop reading their WebSocket leave nothing behind once they are gone (issue 17,
defect 7): no session, no connection (hypercorn's task, its socket, its buffers), whether
the peer kept sending requests while it read nothing, left and dropped its connection, or
was left to the server's reap timeouts.

The clients are raw WebSockets over TCP with a small receive buffer (FrozenClient): after
joining and creating a transport they read nothing more, so the server's sends to them
block; then they drop the TCP connection with unread data in it (a reset).
"""

from __future__ import annotations

import gc
import os
import weakref
from collections import Counter

import trio
import trio.testing

from tests.signaling_harness import live_tasks, make_config, running_server, token
from trio_sfu.engine.worker import WorkerSettings, open_worker
from trio_sfu.server import SfuServer
from trio_sfu.signaling.session import Session
from trio_sfu.testing.soak import FrozenClient

MEETING = "frozen"
#: Peers of each kind, and how many of them are at it at once.
PEERS = 40
AT_ONCE = 20
#: Requests a chatty frozen peer sends, at most (it stops when the server stops reading it).
BURST = 400


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def connections() -> int:
    """Connections hypercorn still serves (a task per accepted TCP connection)."""
    return len(live_tasks("_run_handler"))


async def frozen_peer(
    server: SfuServer,
    number: int,
    kind: str,
    sessions: list[weakref.ref[Session]],
    ended: Counter[str],
) -> None:
    client = await FrozenClient.connect("127.0.0.1", server.port)
    try:
        joined = await client.request(
            "rtc:join", {"meetingId": MEETING, "token": token(MEETING, f"{kind}{number}")}
        )
        assert joined["type"] == "rtc:joined", joined
        member = server.app.rooms.rooms[MEETING].peers[joined["data"]["peerId"]]
        sessions.extend(weakref.ref(s) for s in server.app.sessions if s.peer is member)
        created = await client.request(
            "rtc:createTransport", {"meetingId": MEETING, "direction": "recv"}
        )
        assert created["type"] == "rtc:transportCreated", created
        client.freeze()
        if kind == "chatty":
            # Its timers still send while it reads nothing: the answers fill its socket
            # and its outgoing queue, and the server ends it as too slow.
            for _ in range(BURST):
                if member.ending:
                    break
                with trio.move_on_after(2) as blocked:
                    await client.send_frozen("rtc:getRouterRtpCapabilities", {"meetingId": MEETING})
                if blocked.cancelled_caught:
                    break
            with trio.fail_after(10):
                await member.finished.wait()
            ended[member.end_reason] += 1
        if kind in ("chatty", "leaving"):
            await trio.sleep(0.2)  # the others' notifications to it pile up meanwhile
            with trio.move_on_after(0.5):
                await client.send_frozen("rtc:leave", {"meetingId": MEETING})
        else:  # left to the reap timeouts: its transport closes, then the idle peer ends
            with trio.fail_after(10):
                await member.finished.wait()
            assert member.end_reason == "idle_timeout"
            ended["reaped"] += 1
        await trio.sleep(0.1)
    finally:
        client.drop()


async def test_peers_that_stop_reading_leave_no_session_or_connection_behind() -> None:
    config = make_config(outgoing_queue=32, transport_connect_timeout=2.0, peer_idle_timeout=2.0)
    settings = WorkerSettings(transport_connect_timeout=2.0)
    with trio.fail_after(90):
        async with open_worker(settings) as worker, running_server(worker, config) as server:
            await trio.testing.wait_all_tasks_blocked()
            fds_before, connections_before = open_fds(), connections()
            sessions: list[weakref.ref[Session]] = []
            ended: Counter[str] = Counter()
            limiter = trio.CapacityLimiter(AT_ONCE)

            async def one(number: int, kind: str) -> None:
                async with limiter:
                    await frozen_peer(server, number, kind, sessions, ended)

            async with trio.open_nursery() as nursery:
                for number in range(PEERS):
                    for kind in ("chatty", "leaving", "reaped"):
                        nursery.start_soon(one, number, kind)
            assert len(sessions) == 3 * PEERS
            # Most chatty ones overflowed their queue (the others were reaped first).
            assert ended["too_slow"] >= PEERS // 2, ended

            # Every connection is served to its end, promptly (a session's drain lasts at
            # most CLOSE_TIMEOUT after it).
            for _ in range(100):
                if (
                    connections() == connections_before
                    and not server.app.sessions
                    and not live_tasks("Session._drain")
                ):
                    break
                await trio.sleep(0.1)
            gc.collect()
            alive = [ref() for ref in sessions if ref() is not None]
            assert connections() == connections_before, (
                f"{connections() - connections_before} connection(s) of frozen peers "
                "still served after they dropped"
            )
            assert alive == [], f"{len(alive)} session(s) of frozen peers left"
            assert open_fds() == fds_before
            assert server.app.rooms.counts().peers == 0
