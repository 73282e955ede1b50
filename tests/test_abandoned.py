"""Abandoned state is reaped: a transport never connected, a peer without transports, a
peer whose network vanished (ICE consent). Each is closed by the server, its peer told, and
nothing is left in the engine or the rooms.

Short timeouts (a fraction of a second instead of 30 s and 60 s), real sockets: the
plugin's ``sfu_server``, set up by the ``sfu`` marker, as an app would.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing

from tests.signaling_harness import peer
from trio_sfu.client.peer import open_peer
from trio_sfu.client.synthetic import audio_rtp_parameters
from trio_sfu.config import ServerConfig
from trio_sfu.engine.api import MediaEngine
from trio_sfu.engine.worker import WorkerSettings
from trio_sfu.rtp.packet import RtpPacket
from trio_sfu.testing import SfuTestServer


def transports_of(worker: MediaEngine) -> list[str]:
    return [t for r in worker.dump()["routers"] for t in r["transportIds"]]


async def gauges(server: SfuTestServer) -> dict[str, float]:
    metrics = await server.metrics()
    return {
        name: metrics[f"trio_sfu_{name}"]
        for name in ("rooms", "peers", "transports", "producers", "consumers")
    }


@pytest.mark.sfu(transport_connect_timeout=0.5, peer_idle_timeout=1.0)
async def test_a_transport_never_connected_is_closed_then_its_idle_peer_reaped(
    sfu_server: SfuTestServer,
) -> None:
    server, worker = sfu_server, sfu_server.engine
    with trio.fail_after(20):
        async with peer(server, "m", "ann") as ann, peer(server, "m", "bob") as bob:
            created = await ann.create_transport("send")
            transport_id = created["transportId"]
            start = trio.current_time()
            note = await ann.next_notification("rtc:transportClosed")
            waited = trio.current_time() - start
            assert note.data == {"transportId": transport_id, "reason": "connect_timeout"}
            assert 0.4 <= waited < 2.0
            assert transport_id not in transports_of(worker)
            # The peer is still in the meeting (and may create another transport) ...
            assert (await gauges(server))["peers"] == 2
            # ... until it has gone without any transport for the idle time. Bob never
            # had one: he goes first (1 s after joining), then ann (1 s after hers closed).
            closed = await bob.wait_closed()
            assert (closed.code, closed.reason) == (4003, "idle_timeout")
            left = await ann.next_notification("rtc:peerLeft")
            assert left.data["peerId"] == bob.peer_id
            closed = await ann.wait_closed()
            assert (closed.code, closed.reason) == (4003, "idle_timeout")
            assert trio.current_time() - start >= 1.4
        await server.server.app.rooms.wait_all_closed()
        assert worker.dump() == {"routers": []}
        assert await gauges(server) == dict.fromkeys(
            ("rooms", "peers", "transports", "producers", "consumers"), 0.0
        )


@pytest.mark.sfu(transport_connect_timeout=0.5, peer_idle_timeout=0.5)
async def test_connected_transports_and_their_peers_are_left_alone(
    sfu_server: SfuTestServer,
) -> None:
    server, worker = sfu_server, sfu_server.engine
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            ann = await stack.enter_async_context(
                open_peer(server.ws_url, "m", token=server.token("m", "ann"))
            )
            bob = await stack.enter_async_context(
                open_peer(server.ws_url, "m", token=server.token("m", "bob"))
            )
            audio_id, source = await ann.publish("audio", audio_rtp_parameters(ssrc=31))
            consumer = await bob.consume(audio_id)
            await trio.sleep(1.5)  # three times both timeouts
            assert len(transports_of(worker)) == 2
            assert ann.send_transport and bob.recv_transport
            ann.send_transport.send_rtp(source.streams[0].opus_frame(now=trio.current_time()))
            packet = RtpPacket.parse_untrusted(await bob.recv_transport.receive_rtp())
            assert packet.ssrc == consumer.ssrc
            pending = [
                n.type
                for client in (ann, bob)
                for n in client.signaling.pending_notifications()
                if n.type == "rtc:transportClosed"
            ]
            assert pending == []
            assert (await gauges(server))["peers"] == 2


@pytest.mark.sfu(transport_connect_timeout=30.0, peer_idle_timeout=0.5)
async def test_a_peer_that_joined_and_did_nothing_is_reaped_alone(
    sfu_server: SfuTestServer,
) -> None:
    server, worker = sfu_server, sfu_server.engine
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            ann = await stack.enter_async_context(
                open_peer(server.ws_url, "m", token=server.token("m", "ann"))
            )
            await ann.open_transport("recv")
            async with peer(server, "m", "lurker") as lurker:
                joined = await ann.signaling.next_notification("rtc:peerJoined")
                closed = await lurker.wait_closed()
                assert (closed.code, closed.reason) == (4003, "idle_timeout")
            left = await ann.signaling.next_notification("rtc:peerLeft")
            assert left.data["peerId"] == joined.data["peerId"]
            assert (await gauges(server))["peers"] == 1
            assert len(transports_of(worker)) == 1


def test_the_timeouts_are_settings() -> None:
    assert ServerConfig().transport_connect_timeout == 30.0
    assert ServerConfig().peer_idle_timeout == 60.0
    assert WorkerSettings().transport_connect_timeout == 30.0
    problems = ServerConfig(dev=True, transport_connect_timeout=0, peer_idle_timeout=-1).check()
    assert problems == [
        "transport_connect_timeout must be positive",
        "peer_idle_timeout must be positive",
    ]
