"""The HTTP side (admin API, /healthz, /metrics), engine events forwarded to peers, and a
client too slow to read its notifications."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
import trio

from tests.fake_engine import FakeEngine
from tests.signaling_harness import (
    ADMIN_TOKEN,
    DEVICE_CAPS,
    VIDEO,
    http,
    make_config,
    peer,
    publish_audio,
    running_server,
    token,
)
from trio_sfu.client.signaling import SignalingError, open_signaling
from trio_sfu.config import IceServerConfig, TurnConfig
from trio_sfu.engine.api import (
    ActiveSpeaker,
    ConsumerLayersChanged,
    ConsumerProducerPaused,
    MediaEngine,
    NetworkQuality,
)
from trio_sfu.server import SfuServer
from trio_sfu.signaling.app import SignalingApp

# ---- /healthz, /metrics --------------------------------------------------------------------


async def test_healthz(server: SfuServer) -> None:
    with trio.fail_after(10):
        answer = await http(server, "GET", "/healthz")
        assert answer.status == 200
        assert answer.json() == {"status": "ok"}
        assert (await http(server, "GET", "/nothing-here")).status == 404


def metric(text: str, name: str) -> float:
    """The value of one sample line ``name value`` in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {name!r}")


async def test_metrics(server: SfuServer) -> None:
    with trio.fail_after(10):
        text = (await http(server, "GET", "/metrics")).body.decode()
        assert metric(text, "trio_sfu_rooms") == 0
        for name in ("packets_in", "packets_out", "bytes_in", "bytes_out", "drops"):
            assert metric(text, f"trio_sfu_{name}_total") == 0
        async with peer(server, "m", "alice") as a, peer(server, "m", "bob") as b:
            _, producer_id = await publish_audio(a)
            await b.create_transport("recv")
            await b.consume(producer_id, DEVICE_CAPS)
            with pytest.raises(SignalingError):
                await a.request("rtc:closeProducer", {"meetingId": "m", "producerId": "nope"})
        answer = await http(server, "GET", "/metrics")
        assert answer.status == 200
        assert answer.headers["content-type"].startswith("text/plain")
        text = answer.body.decode()
        assert metric(text, 'trio_sfu_signaling_errors_total{code="not_found"}') == 1
        assert metric(text, 'trio_sfu_signaling_requests_total{type="rtc:join"}') == 2
        assert metric(text, 'trio_sfu_signaling_requests_total{type="rtc:consume"}') == 1
        async with peer(server, "m", "carol") as c:
            send = await c.create_transport("send")
            await c.produce(send["transportId"], "video", VIDEO["rtpParameters"])
            text = (await http(server, "GET", "/metrics")).body.decode()
            assert metric(text, "trio_sfu_rooms") == 1
            assert metric(text, "trio_sfu_peers") == 1
            assert metric(text, "trio_sfu_transports") == 1
            assert metric(text, "trio_sfu_producers") == 1
            assert metric(text, "trio_sfu_consumers") == 0
            assert metric(text, "trio_sfu_connections") == 1


# ---- admin API ----------------------------------------------------------------------------


async def test_admin_requires_the_bearer_token(server: SfuServer) -> None:
    with trio.fail_after(10):
        for bearer in (None, "wrong", ADMIN_TOKEN + "x"):
            answer = await http(server, "GET", "/v1/rooms", bearer=bearer)
            assert answer.status == 401
            assert answer.headers["www-authenticate"] == "Bearer"
        answer = await http(server, "GET", "/v1/rooms", bearer=ADMIN_TOKEN)
        assert answer.status == 200
        assert answer.json() == {"rooms": []}
        answer = await http(server, "GET", "/v1/rooms/none", bearer=ADMIN_TOKEN)
        assert answer.status == 404
        answer = await http(server, "PUT", "/v1/rooms", bearer=ADMIN_TOKEN)
        assert answer.status == 405


async def test_admin_is_off_without_a_configured_token(engine: MediaEngine) -> None:
    with trio.fail_after(10):
        async with running_server(engine, make_config(admin_token=None)) as server:
            answer = await http(server, "GET", "/v1/rooms")
            assert answer.status == 403
            answer = await http(server, "GET", "/v1/rooms", bearer="anything")
            assert answer.status == 403


async def test_admin_lists_and_describes_rooms(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with peer(server, "m 1", "alice") as a, peer(server, "m 1", "bob") as b:
            send_id, producer_id = await publish_audio(a)
            recv = await b.create_transport("recv")
            consumed = await b.consume(producer_id, DEVICE_CAPS)
            rooms = (await http(server, "GET", "/v1/rooms", bearer=ADMIN_TOKEN)).json()["rooms"]
            assert [(r["meetingId"], r["peerCount"], r["producerCount"]) for r in rooms] == [
                ("m 1", 2, 1)
            ]
            room = (await http(server, "GET", "/v1/rooms/m%201", bearer=ADMIN_TOKEN)).json()
            assert room["meetingId"] == "m 1"
            peers = {p["userId"]: p for p in room["peers"]}
            assert peers["alice"]["peerId"] == a.peer_id
            assert peers["alice"]["transports"] == [
                {"transportId": send_id, "type": "webrtc", "direction": "send", "connected": False}
            ]
            assert peers["alice"]["producers"] == [
                {
                    "producerId": producer_id,
                    "transportId": send_id,
                    "kind": "audio",
                    "paused": False,
                    "appData": {"label": "mic"},
                }
            ]
            assert peers["bob"]["consumers"] == [
                {
                    "consumerId": consumed["consumerId"],
                    "producerId": producer_id,
                    "transportId": recv["transportId"],
                    "kind": "audio",
                    "paused": True,
                }
            ]


async def test_admin_close_sends_room_closed_first(engine: MediaEngine, server: SfuServer) -> None:
    with trio.fail_after(10):
        async with peer(server, "m", "alice") as a, peer(server, "m", "bob") as b:
            await publish_audio(a)
            answer = await http(
                server,
                "POST",
                "/v1/rooms/m/close",
                bearer=ADMIN_TOKEN,
                body=json.dumps({"reason": "meeting over"}).encode(),
            )
            assert answer.status == 200
            assert answer.json() == {"meetingId": "m", "closed": True, "reason": "meeting over"}
            for client in (a, b):
                closed = await client.wait_closed()
                assert closed.code == 1000
                # rtc:roomClosed arrived before the close, and nothing after it
                notes = client.pending_notifications()
                assert notes[-1].type == "rtc:roomClosed"
                assert notes[-1].data == {"meetingId": "m", "reason": "meeting over"}
            assert engine.dump()["routers"] == []
            answer = await http(server, "POST", "/v1/rooms/m/close", bearer=ADMIN_TOKEN)
            assert answer.status == 404


async def test_admin_kick(engine: MediaEngine, server: SfuServer) -> None:
    with trio.fail_after(10):
        async with peer(server, "m", "alice") as a, peer(server, "m", "bob") as b:
            _, producer_id = await publish_audio(a)
            path = f"/v1/rooms/m/peers/{a.peer_id}"
            assert (await http(server, "DELETE", path)).status == 401
            answer = await http(server, "DELETE", path, bearer=ADMIN_TOKEN)
            assert answer.status == 200
            assert answer.json() == {"meetingId": "m", "peerId": a.peer_id, "kicked": True}
            closed = await a.wait_closed()
            assert (closed.code, closed.reason) == (4001, "kicked")
            note = await b.next_notification("rtc:producerClosed")
            assert note.data["producerId"] == producer_id
            note = await b.next_notification("rtc:peerLeft")
            assert note.data == {"peerId": a.peer_id}
            assert producer_id not in str(engine.dump())
            assert (await http(server, "DELETE", path, bearer=ADMIN_TOKEN)).status == 404


# ---- engine events (these need the fake engine's controls) -----------------------------


async def test_consent_timeout_ends_the_peer() -> None:
    engine = FakeEngine()
    with trio.fail_after(10):
        async with (
            running_server(engine, make_config()) as server,
            peer(server, "m", "alice") as a,
            peer(server, "m", "bob") as b,
        ):
            send_id, producer_id = await publish_audio(a)
            engine.close_transport_by_itself(send_id, "consent_timeout")
            closed = await a.wait_closed()
            assert (closed.code, closed.reason) == (4002, "consent_timeout")
            note = await b.next_notification("rtc:producerClosed")
            assert note.data == {"producerId": producer_id, "peerId": a.peer_id}
            note = await b.next_notification("rtc:peerLeft")
            assert note.data == {"peerId": a.peer_id}
            assert server.app.rooms.counts().peers == 1
            assert engine.transports == {}


async def test_transport_failure_closes_its_producers_and_consumers() -> None:
    engine = FakeEngine()
    with trio.fail_after(10):
        async with (
            running_server(engine, make_config()) as server,
            peer(server, "m", "alice") as a,
            peer(server, "m", "bob") as b,
        ):
            send_id, producer_id = await publish_audio(a)
            recv_id = (await a.create_transport("recv"))["transportId"]
            own = await a.consume(producer_id, DEVICE_CAPS)
            engine.close_transport_by_itself(recv_id, "dtls_failed: bad certificate")
            note = await a.next_notification("rtc:consumerClosed")
            assert note.data == {
                "consumerId": own["consumerId"],
                "producerId": producer_id,
                "reason": "transport_closed",
            }
            engine.close_transport_by_itself(send_id, "dtls_failed: bad certificate")
            note = await b.next_notification("rtc:producerClosed")
            assert note.data == {"producerId": producer_id, "peerId": a.peer_id}
            # alice is still in the meeting and can start over
            await publish_audio(a)
            await b.next_notification("rtc:newProducer")


async def test_engine_events_reach_their_owners() -> None:
    engine = FakeEngine()
    with trio.fail_after(10):
        async with (
            running_server(engine, make_config()) as server,
            peer(server, "m", "alice") as a,
            peer(server, "m", "bob") as b,
        ):
            _, producer_id = await publish_audio(a)
            recv_id = (await b.create_transport("recv"))["transportId"]
            consumer_id = (await b.consume(producer_id, DEVICE_CAPS))["consumerId"]
            (router_id,) = engine.routers
            engine.emit(ConsumerLayersChanged(router_id, consumer_id, None, None))
            engine.emit(NetworkQuality(router_id, recv_id, 0.25, 80.0, "poor"))
            engine.emit(ActiveSpeaker(router_id, producer_id, -30.0))
            engine.emit(ConsumerProducerPaused(router_id, consumer_id, True))  # not forwarded
            engine.emit(ActiveSpeaker("another-router", producer_id, -1.0))  # not ours
            note = await b.next_notification("rtc:consumerLayersChanged")
            assert note.data == {
                "consumerId": consumer_id,
                "spatialLayer": None,
                "temporalLayer": None,
            }
            note = await b.next_notification("rtc:networkQuality")
            assert note.data == {
                "transportId": recv_id,
                "packetLoss": 0.25,
                "rttMs": 80.0,
                "quality": "poor",
            }
            speaker = {"peerId": a.peer_id, "producerId": producer_id, "volume": -30.0}
            for client in (a, b):
                note = await client.next_notification("rtc:activeSpeaker")
                assert note.data == speaker
            # the owner-only events went to bob alone, the other router's to nobody
            await a.leave()
            assert [n.type for n in a.pending_notifications()] == ["rtc:peerJoined"]
            await b.next_notification("rtc:peerLeft")  # per-socket order: the rest came first
            assert "rtc:activeSpeaker" not in [n.type for n in b.pending_notifications()]


async def test_ice_servers_with_turn_credentials(engine: MediaEngine) -> None:
    turn = TurnConfig(urls=("turn:turn.example.org:3478",), secret="north", ttl=600)
    stun = IceServerConfig(urls=("stun:stun.example.org:3478",))
    config = make_config(turn=turn, ice_servers=(stun,))
    with trio.fail_after(10):
        async with running_server(engine, config) as server:
            async with open_signaling(server.ws_url) as client:
                joined = await client.join("m", token=token("m", "alice"))
            stun_entry, turn_entry = joined["iceServers"]
            assert stun_entry == {"urls": ["stun:stun.example.org:3478"]}
            assert turn_entry["urls"] == ["turn:turn.example.org:3478"]
            expiry, _, user = turn_entry["username"].partition(":")
            assert user == "alice"
            assert abs(int(expiry) - (time.time() + 600)) < 5
            digest = hmac.new(b"north", turn_entry["username"].encode(), hashlib.sha1).digest()
            assert turn_entry["credential"] == base64.b64encode(digest).decode()


# ---- a client that does not read -----------------------------------------------------------------


async def test_a_client_too_slow_is_disconnected_without_blocking_the_room() -> None:
    """ASGI level: the connection's send never completes, so its outgoing queue fills."""
    engine = FakeEngine()
    config = make_config(outgoing_queue=4)
    sent: list[dict[str, Any]] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            app = SignalingApp(config, engine, nursery)
            to_app, from_test = trio.open_memory_channel[dict[str, Any]](100)
            stuck = trio.Event()

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)
                if message["type"] == "websocket.send":
                    stuck.set()
                    await trio.sleep_forever()  # the client never reads

            scope = {"type": "websocket", "path": "/ws", "query_string": b"", "client": None}
            await to_app.send({"type": "websocket.connect"})
            join = {"type": "rtc:join", "data": {"meetingId": "m", "token": token("m", "slow")}}
            await to_app.send({"type": "websocket.receive", "text": json.dumps(join)})
            for _ in range(10):
                frame = {"type": "rtc:getRouterRtpCapabilities", "data": {"meetingId": "m"}}
                await to_app.send({"type": "websocket.receive", "text": json.dumps(frame)})
            await app(scope, from_test.receive, send)  # returns: the session gave up
            assert stuck.is_set()
            assert sent[-1] == {
                "type": "websocket.close",
                "code": 1008,
                "reason": "outgoing queue full",
            }
            assert app.metrics.slow_disconnects._value.get() == 1
            await app.rooms.wait_all_closed()
            assert engine.is_empty()
            nursery.cancel_scope.cancel()
