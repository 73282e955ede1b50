"""Signaling end to end: a real server on 127.0.0.1, real WebSocket clients.

Join, notifications among three peers, leave, abrupt socket close, graceful shutdown, and
the ownership rule (a peer can never act on another peer's or another meeting's ids).
The engine comes from :func:`tests.fake_engine.make_test_engine`; the assertions about it
use only ``MediaEngine.dump()`` unless a test says it needs the fake's controls.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from tests.fake_engine import FakeEngine
from tests.signaling_harness import (
    AUDIO,
    DEVICE_CAPS,
    DTLS_CLIENT,
    VIDEO,
    RawWebSocket,
    assert_no_room_tasks,
    live_tasks,
    make_config,
    peer,
    publish_audio,
    token,
)
from trio_sfu.client.signaling import SignalingClosed, SignalingError, open_signaling
from trio_sfu.engine.api import MediaEngine
from trio_sfu.server import SfuServer, serve_sfu
from trio_sfu.signaling.metrics import Counts


def routers(engine: MediaEngine) -> list[Any]:
    found: list[Any] = engine.dump()["routers"]
    return found


async def test_three_peers_join_publish_consume_and_leave(
    engine: MediaEngine, server: SfuServer
) -> None:
    with trio.fail_after(10):
        async with (
            peer(server, "m1", "alice") as a,
            peer(server, "m1", "bob") as b,
            open_signaling(server.ws_url) as c,
        ):
            note = await a.next_notification("rtc:peerJoined")
            assert note.data == {
                "peerId": b.peer_id,
                "userId": "bob",
                "displayName": "bob",
                "producers": [],
            }
            joined = await c.join("m1", token=token("m1", "carol", name="Carol"))
            assert joined["userId"] == "carol"
            assert joined["iceServers"] == []
            assert {p["peerId"] for p in joined["peers"]} == {a.peer_id, b.peer_id}
            for other in (a, b):
                note = await other.next_notification("rtc:peerJoined")
                assert note.data["peerId"] == c.peer_id
                assert note.data["displayName"] == "Carol"  # the token's name claim

            # alice publishes; bob and carol hear about it
            send_id, producer_id = await publish_audio(a)
            for other in (b, c):
                note = await other.next_notification("rtc:newProducer")
                assert note.data == {
                    "producerId": producer_id,
                    "peerId": a.peer_id,
                    "kind": "audio",
                    "appData": {"label": "mic"},
                }

            # bob consumes it: paused by default, resumed on request
            recv = await b.create_transport("recv")
            assert recv["direction"] == "recv"
            await b.connect_transport(recv["transportId"], DTLS_CLIENT)
            consumed = await b.consume(producer_id, DEVICE_CAPS)
            assert consumed["producerId"] == producer_id
            assert consumed["kind"] == "audio"
            assert consumed["type"] == "simple"
            assert consumed["producerPaused"] is False
            assert consumed["rtpParameters"]["codecs"][0]["mimeType"] == "audio/opus"
            await b.resume_consumer(consumed["consumerId"])

            # a newcomer's peers list carries the producer
            async with open_signaling(server.ws_url) as d:
                joined = await d.join("m1", token=token("m1", "dave"))
                of_alice = next(p for p in joined["peers"] if p["peerId"] == a.peer_id)
                assert of_alice["producers"] == [
                    {
                        "producerId": producer_id,
                        "kind": "audio",
                        "appData": {"label": "mic"},
                        "paused": False,
                    }
                ]
                dave = d.peer_id
                await d.leave()
            for other in (a, b, c):
                note = await other.next_notification("rtc:peerLeft")
                assert note.data == {"peerId": dave}

            # pause and resume reach the others
            await a.pause_producer(producer_id)
            for other in (b, c):
                note = await other.next_notification("rtc:producerPaused")
                assert note.data == {"producerId": producer_id, "peerId": a.peer_id}
            await a.resume_producer(producer_id)
            note = await c.next_notification("rtc:producerResumed")
            assert note.data == {"producerId": producer_id, "peerId": a.peer_id}

            # alice leaves: answered after her cleanup; the others are told
            alice = a.peer_id
            await a.leave()
            (router,) = routers(engine)  # nothing of alice's is left in the router
            for entity in (send_id, producer_id, consumed["consumerId"]):
                assert entity not in str(router)
            note = await b.next_notification("rtc:consumerClosed")
            assert note.data == {
                "consumerId": consumed["consumerId"],
                "producerId": producer_id,
                "reason": "producer_closed",
            }
            for other in (b, c):
                note = await other.next_notification("rtc:producerClosed")
                assert note.data == {"producerId": producer_id, "peerId": alice}
                note = await other.next_notification("rtc:peerLeft")
                assert note.data == {"peerId": alice}
        # everybody gone: the room, its tasks and its router are closed
        await assert_no_room_tasks(server)
        assert routers(engine) == []
        assert server.app.rooms.counts() == Counts()


async def test_joined_answer_comes_before_any_notification(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with RawWebSocket.connect(server) as raw, peer(server, "m", "alice") as a:
            _, producer_id = await publish_audio(a)
            answer = await raw.request(
                "rtc:join", {"meetingId": "m", "token": token("m", "bob")}, "j1"
            )
            assert answer["type"] == "rtc:joined"
            assert answer["requestId"] == "j1"
            (alice,) = answer["data"]["peers"]
            assert alice["userId"] == "alice"
            assert [p["producerId"] for p in alice["producers"]] == [producer_id]
            await a.pause_producer(producer_id)
            note = await raw.receive_json()
            assert note == {
                "type": "rtc:producerPaused",
                "data": {"producerId": producer_id, "peerId": a.peer_id},
            }


def frame(rtype: str, request_id: str | None, **data: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": rtype, "data": data}
    if request_id is not None:
        out["requestId"] = request_id
    return out


async def test_answers_keep_request_order_and_echo_request_ids(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with RawWebSocket.connect(server) as raw:
            frames = [
                frame("rtc:join", "a", meetingId="m", token=token("m", "u")),
                frame("rtc:createTransport", "b", meetingId="m", direction="send"),
                frame("rtc:nope", "c"),
                frame("rtc:getRouterRtpCapabilities", None, meetingId="m"),
                frame("rtc:createTransport", "e", meetingId="m", direction="recv"),
            ]
            for sent in frames:
                await raw.send_json(sent)
            answers = [await raw.receive_json() for _ in frames]
            assert [(x["type"], x.get("requestId")) for x in answers] == [
                ("rtc:joined", "a"),
                ("rtc:transportCreated", "b"),
                ("rtc:error", "c"),
                ("rtc:routerRtpCapabilities", None),
                ("rtc:transportCreated", "e"),
            ]
            assert "requestId" not in answers[3]
            caps = answers[3]["data"]["rtpCapabilities"]
            assert {c["mimeType"] for c in caps["codecs"]} >= {"audio/opus", "video/VP8"}
            assert set(answers[1]["data"]) == {
                "transportId",
                "direction",
                "iceParameters",
                "iceCandidates",
                "dtlsParameters",
            }
            assert answers[1]["data"]["direction"] == "send"
            # Answered and quiet: the processor and the writer (and their queues) are gone
            # until the next frame or message; the receiver waits alone.
            await trio.testing.wait_all_tasks_blocked()
            assert live_tasks("Session._processor", "Session._writer") == []
            (session,) = server.app.sessions
            assert session._frames_tx is None and session._out_tx is None
            await raw.send_json(frame("rtc:getRouterRtpCapabilities", "f", meetingId="m"))
            assert (await raw.receive_json())["requestId"] == "f"


async def test_token_on_the_url_and_a_simulcast_consumer(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with (
            open_signaling(server.ws_url, token=token("m", "alice")) as a,
            peer(server, "m", "bob") as b,
        ):
            await a.join("m")  # the token came on the URL
            send = await a.create_transport("send")
            video_id = await a.produce(send["transportId"], "video", VIDEO["rtpParameters"])
            await b.create_transport("recv")
            consumed = await b.consume(video_id, DEVICE_CAPS, paused=False)
            assert consumed["type"] == "simulcast"
            layers = await b.set_preferred_layers(consumed["consumerId"], 1, 0)
            assert layers == {"spatialLayer": 1, "temporalLayer": 0}
            stats = await b.get_stats(consumed["consumerId"])
            assert isinstance(stats, list)
            await b.pause_consumer(consumed["consumerId"])
            await b.close_consumer(consumed["consumerId"])
            await a.close_producer(video_id)
            note = await b.next_notification("rtc:producerClosed")
            assert note.data == {"producerId": video_id, "peerId": a.peer_id}
            # bob closed his consumer himself: no rtc:consumerClosed for it
            assert all(n.type != "rtc:consumerClosed" for n in b.pending_notifications())
            ice = await a.restart_ice(send["transportId"])
            assert set(ice) >= {"usernameFragment", "password"}


async def test_abrupt_socket_close_cleans_up(engine: MediaEngine, server: SfuServer) -> None:
    with trio.fail_after(10):
        async with peer(server, "m", "bob") as b:
            recv = await b.create_transport("recv")
            async with RawWebSocket.connect(server) as raw:
                joined = await raw.request(
                    "rtc:join", {"meetingId": "m", "token": token("m", "alice")}
                )
                alice = joined["data"]["peerId"]
                send = await raw.request(
                    "rtc:createTransport", {"meetingId": "m", "direction": "send"}
                )
                send_id = send["data"]["transportId"]
                produced = await raw.request(
                    "rtc:produce",
                    {
                        "meetingId": "m",
                        "transportId": send_id,
                        "kind": "audio",
                        "rtpParameters": AUDIO["rtpParameters"],
                    },
                )
                producer_id = produced["data"]["producerId"]
                consumed = await b.consume(
                    producer_id, DEVICE_CAPS, transport_id=recv["transportId"]
                )
                await raw.abort()  # TCP gone: no close frame, no rtc:leave
            note = await b.next_notification("rtc:consumerClosed")
            assert note.data == {
                "consumerId": consumed["consumerId"],
                "producerId": producer_id,
                "reason": "producer_closed",
            }
            note = await b.next_notification("rtc:producerClosed")
            assert note.data == {"producerId": producer_id, "peerId": alice}
            note = await b.next_notification("rtc:peerLeft")
            assert note.data == {"peerId": alice}
            (router,) = routers(engine)
            assert send_id not in str(router)
            assert producer_id not in str(router)
        # bob's socket closed too: the room is empty and closes, the engine is empty
        await assert_no_room_tasks(server)
        assert routers(engine) == []
        assert server.app.rooms.counts() == Counts()


async def test_graceful_shutdown_notifies_peers(engine: MediaEngine) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server: SfuServer = await nursery.start(serve_sfu, make_config(), engine)
            async with (
                peer(server, "m1", "alice") as a,
                peer(server, "m2", "bob") as b,
                RawWebSocket.connect(server) as idle,
            ):
                await publish_audio(a)
                assert len(live_tasks("Room.run")) == 2
                assert len(live_tasks("Peer.run")) == 2
                server.shutdown()
                for client, meeting in ((a, "m1"), (b, "m2")):
                    note = await client.next_notification("rtc:roomClosed")
                    assert note.data == {"meetingId": meeting, "reason": "server_shutdown"}
                    closed = await client.wait_closed()
                    assert closed.code == 1001
                assert await idle.wait_closed() == 1001  # not in a meeting: closed too
                with pytest.raises(SignalingClosed):
                    await a.request("rtc:leave", {"meetingId": "m1"})
            await server.finished.wait()
        assert routers(engine) == []


async def test_leave_then_join_again_on_the_same_connection(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with peer(server, "m1", "alice") as a, peer(server, "m1", "bob") as b:
            first = a.peer_id
            await a.leave()
            note = await b.next_notification("rtc:peerLeft")
            assert note.data == {"peerId": first}
            await a.join("m1", token=token("m1", "alice"))
            assert a.peer_id != first
            note = await b.next_notification("rtc:peerJoined")
            assert note.data["peerId"] == a.peer_id


# ---- ownership -----------------------------------------------------------------------------


async def test_a_peer_never_acts_on_another_peers_or_meetings_ids(
    engine: MediaEngine, server: SfuServer
) -> None:
    with trio.fail_after(10):
        async with (
            peer(server, "m", "alice") as a,
            peer(server, "m", "mallory") as m,
            peer(server, "other", "oscar") as o,
        ):
            send_id, producer_id = await publish_audio(a)
            recv_id = (await a.create_transport("recv"))["transportId"]
            consumer_id = (await a.consume(producer_id, DEVICE_CAPS))["consumerId"]  # her own
            await m.create_transport("recv")  # mallory has transports too, just not these
            before = engine.dump()
            calls_before = len(engine.calls) if isinstance(engine, FakeEngine) else 0

            audio, caps = AUDIO["rtpParameters"], DEVICE_CAPS
            on_recv = {"transportId": recv_id}  # alice's
            attempts: list[tuple[str, dict[str, Any]]] = [
                ("rtc:connectTransport", {"transportId": send_id, "dtlsParameters": DTLS_CLIENT}),
                ("rtc:restartIce", {"transportId": recv_id}),
                ("rtc:produce", {"transportId": send_id, "kind": "audio", "rtpParameters": audio}),
                ("rtc:closeProducer", {"producerId": producer_id}),
                ("rtc:pauseProducer", {"producerId": producer_id}),
                ("rtc:resumeProducer", {"producerId": producer_id}),
                ("rtc:resumeConsumer", {"consumerId": consumer_id}),
                ("rtc:pauseConsumer", {"consumerId": consumer_id}),
                ("rtc:closeConsumer", {"consumerId": consumer_id}),
                ("rtc:setPreferredLayers", {"consumerId": consumer_id, "spatialLayer": 0}),
                ("rtc:getStats", {"id": send_id}),
                ("rtc:getStats", {"id": producer_id}),
                ("rtc:getStats", {"id": consumer_id}),
                ("rtc:consume", {"producerId": producer_id, "rtpCapabilities": caps} | on_recv),
            ]
            for client, meeting in ((m, "m"), (o, "other")):
                for rtype, data in attempts:
                    with pytest.raises(SignalingError) as info:
                        await client.request(rtype, {"meetingId": meeting, **data})
                    assert info.value.code == "not_found", (rtype, meeting)
            # oscar cannot consume alice's producer, even with a recv transport of his own
            await o.create_transport("recv")
            with pytest.raises(SignalingError) as info:
                await o.consume(producer_id, DEVICE_CAPS)
            assert info.value.code == "not_found"
            # nor name alice's meeting
            with pytest.raises(SignalingError) as info:
                await o.request("rtc:closeProducer", {"meetingId": "m", "producerId": producer_id})
            assert info.value.code == "not_joined"

            if isinstance(engine, FakeEngine):  # the fake records calls: only oscar's transport
                assert [name for name, _ in engine.calls[calls_before:]] == [
                    "create_webrtc_transport"
                ]
            mine = [r for r in engine.dump()["routers"] if producer_id in str(r)]
            assert mine == [r for r in before["routers"] if producer_id in str(r)]
            # alice still owns all of it
            await a.pause_consumer(consumer_id)
            await a.connect_transport(send_id, DTLS_CLIENT)
            await a.close_producer(producer_id)
            note = await a.next_notification("rtc:consumerClosed")
            assert note.data["reason"] == "producer_closed"
