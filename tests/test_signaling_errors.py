"""One test per PROTOCOL.md error code, plus the frame rules (binary, non-object, oversize,
the 1008 close after more than 10 bad frames in a row) and rate limiting.

Every error answer is checked whole: ``type``, ``requestId`` (when the frame had a valid
one), ``request``, ``code`` and an ``error`` text that names the problem.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from tests.fake_engine import FakeEngine
from tests.signaling_harness import (
    AUDIO,
    DEVICE_CAPS,
    DTLS_CLIENT,
    SECRET,
    RawWebSocket,
    make_config,
    peer,
    publish_audio,
    running_server,
    token,
)
from trio_sfu.client.signaling import SignalingClient, SignalingError
from trio_sfu.engine.api import MediaEngine
from trio_sfu.server import SfuServer
from trio_sfu.signaling.auth import issue_token

OTHER_SECRET = "another-secret-of-enough-length-000"


async def refused(client: SignalingClient, rtype: str, **data: Any) -> SignalingError:
    with pytest.raises(SignalingError) as info:
        await client.request(rtype, data)
    assert info.value.request == rtype
    return info.value


async def joined_raw(raw: RawWebSocket, meeting: str = "m", user: str = "u") -> dict[str, Any]:
    answer = await raw.request("rtc:join", {"meetingId": meeting, "token": token(meeting, user)})
    assert answer["type"] == "rtc:joined"
    return answer


# ---- invalid_json, invalid_message, unknown_type ---------------------------------------------


async def test_invalid_json(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with RawWebSocket.connect(server) as raw:
            for text in ('{"type": "rtc:join", ', "NaN", "{'a': 1}"):
                await raw.send_text(text)
                answer = await raw.receive_json()
                assert answer["type"] == "rtc:error"
                assert answer["code"] == "invalid_json"
                assert "requestId" not in answer
                assert "request" not in answer
            # the connection stays open and usable
            await joined_raw(raw)


@pytest.mark.parametrize(
    ("frame", "names"),
    [
        # envelope
        ({"type": 5, "requestId": "1", "data": {}}, "'type'"),
        ({"requestId": "1", "data": {}}, "'type'"),
        ({"type": "rtc:join", "requestId": "", "data": {}}, "'requestId'"),
        ({"type": "rtc:join", "requestId": "x" * 65, "data": {}}, "'requestId'"),
        ({"type": "rtc:join", "requestId": 7, "data": {}}, "'requestId'"),
        ({"type": "rtc:join", "requestId": "1", "data": []}, "'data'"),
        ({"type": "rtc:join", "requestId": "1", "data": {}, "extra": 1}, "'extra'"),
        # data
        ({"type": "rtc:join", "requestId": "1", "data": {}}, "'data.meetingId'"),
        ({"type": "rtc:join", "requestId": "1", "data": {"meetingId": 5}}, "'data.meetingId'"),
        (
            {"type": "rtc:join", "requestId": "1", "data": {"meetingId": "m", "tokn": "x"}},
            "'data.tokn'",
        ),
    ],
)
async def test_invalid_message_names_the_field(
    server: SfuServer, frame: dict[str, Any], names: str
) -> None:
    with trio.fail_after(10):
        async with RawWebSocket.connect(server) as raw:
            await raw.send_json(frame)
            answer = await raw.receive_json()
            assert answer["type"] == "rtc:error"
            assert answer["code"] == "invalid_message"
            assert names in answer["error"]
            valid_id = isinstance(frame.get("requestId"), str) and 0 < len(frame["requestId"]) < 65
            assert answer.get("requestId") == (frame["requestId"] if valid_id else None)
            await joined_raw(raw)  # still open


async def test_invalid_message_deep_in_rtp_parameters(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with peer(server, "m", "alice") as a:
            send = await a.create_transport("send")
            bad = json.loads(json.dumps(AUDIO["rtpParameters"]))
            bad["codecs"][0]["clockRate"] = "48000"
            error = await refused(
                a,
                "rtc:produce",
                meetingId="m",
                transportId=send["transportId"],
                kind="audio",
                rtpParameters=bad,
            )
            assert error.code == "invalid_message"
            assert "data.rtpParameters.codecs[0].clockRate" in error.message
            error = await refused(
                a,
                "rtc:produce",
                meetingId="m",
                transportId=send["transportId"],
                kind="sound",
                rtpParameters=AUDIO["rtpParameters"],
            )
            assert error.code == "invalid_message"
            assert "data.kind" in error.message


async def test_unknown_type(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with RawWebSocket.connect(server) as raw:
            answer = await raw.request("rtc:teleport", {}, "9")
            assert answer == {
                "type": "rtc:error",
                "requestId": "9",
                "request": "rtc:teleport",
                "code": "unknown_type",
                "error": "unknown message type 'rtc:teleport'",
            }
            # answers are requests too: a client may not send them
            answer = await raw.request("rtc:joined", {}, "10")
            assert answer["code"] == "unknown_type"


# ---- frames ------------------------------------------------------------------------------------


async def test_binary_non_object_and_oversize_frames(engine: MediaEngine) -> None:
    config = make_config(max_frame_bytes=1024)
    with trio.fail_after(10):
        async with running_server(engine, config) as server, RawWebSocket.connect(server) as raw:
            await raw.send_bytes(b'{"type": "rtc:join"}')
            answer = await raw.receive_json()
            assert (answer["code"], "binary" in answer["error"]) == ("invalid_message", True)
            for text in ("[1, 2]", '"rtc:join"', "17", "null"):
                await raw.send_text(text)
                answer = await raw.receive_json()
                assert answer["code"] == "invalid_message"
                assert "object" in answer["error"]
            big = json.dumps(
                {"type": "rtc:join", "requestId": "1", "data": {"x": "é" * 600}},
                ensure_ascii=False,
            )
            assert len(big) < 1024 < len(big.encode())  # the limit counts UTF-8 bytes
            await raw.send_text(big)
            answer = await raw.receive_json()
            assert answer["code"] == "invalid_message"
            assert "over the 1024-byte limit" in answer["error"]
            assert "requestId" not in answer  # an oversize frame is not even parsed
            await joined_raw(raw)


async def test_the_default_frame_limit_is_256_kib(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with RawWebSocket.connect(server) as raw:
            padding = "x" * (256 * 1024)
            await raw.send_text(json.dumps({"type": "rtc:join", "data": {"pad": padding}}))
            answer = await raw.receive_json()
            assert answer["code"] == "invalid_message"
            assert "262144-byte limit" in answer["error"]


async def test_more_than_ten_bad_frames_in_a_row_close_with_1008(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with RawWebSocket.connect(server) as raw:
            # nine bad, one good: the count starts over
            for _ in range(9):
                await raw.send_bytes(b"\x00")
                assert (await raw.receive_json())["code"] == "invalid_message"
            await raw.send_json({"type": "rtc:nope"})
            assert (await raw.receive_json())["code"] == "unknown_type"
            # ten in a row: still open
            for index in range(10):
                await raw.send_bytes(b"\x00") if index % 2 else await raw.send_text("[]")
                assert (await raw.receive_json())["code"] == "invalid_message"
            await raw.send_json({"type": "rtc:nope"})
            assert (await raw.receive_json())["code"] == "unknown_type"
            for _ in range(10):
                await raw.send_text("not json")
                assert (await raw.receive_json())["code"] == "invalid_json"
            # the eleventh: answered, then closed with 1008
            await raw.send_bytes(b"\x00")
            assert (await raw.receive_json())["code"] == "invalid_message"
            assert await raw.wait_closed() == 1008


# ---- auth: unauthorized, forbidden -------------------------------------------------------------


async def test_unauthorized(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with RawWebSocket.connect(server) as raw:
            cases = {
                "no token": None,
                "garbage": "not.a.jwt",
                "expired": issue_token(SECRET, meeting_id="m", user_id="u", ttl=60, now=0),
                "wrong key": issue_token(OTHER_SECRET, meeting_id="m", user_id="u"),
            }
            for label, bad in cases.items():
                data = {"meetingId": "m"} | ({"token": bad} if bad else {})
                answer = await raw.request("rtc:join", data, label.replace(" ", "-"))
                assert answer["code"] == "unauthorized", label
                assert answer["request"] == "rtc:join"
            answer = await raw.request(
                "rtc:join", {"meetingId": "m", "token": cases["expired"]}, "x"
            )
            assert "expired" in answer["error"]
            # unauthorized joins leave no trace
            assert server.app.rooms.counts().rooms == 0
            await joined_raw(raw)


async def test_forbidden(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with (
            peer(server, "m", "alice") as a,
            peer(server, "m", "viewer", can_publish=False) as viewer,
            peer(server, "m", "speaker", can_subscribe=False) as speaker,
            RawWebSocket.connect(server) as raw,
        ):
            # a token for another meeting
            answer = await raw.request("rtc:join", {"meetingId": "m", "token": token("x", "u")})
            assert answer["code"] == "forbidden"
            # produce without canPublish
            send = await viewer.create_transport("send")
            error = await refused(
                viewer,
                "rtc:produce",
                meetingId="m",
                transportId=send["transportId"],
                kind="audio",
                rtpParameters=AUDIO["rtpParameters"],
            )
            assert error.code == "forbidden"
            assert "canPublish" in error.message
            # consume without canSubscribe
            _, producer_id = await publish_audio(a)
            await speaker.create_transport("recv")
            error = await refused(
                speaker,
                "rtc:consume",
                meetingId="m",
                producerId=producer_id,
                rtpCapabilities=DEVICE_CAPS,
            )
            assert error.code == "forbidden"
            # but each may do what its token allows
            await publish_audio(speaker)
            await viewer.create_transport("recv")
            await viewer.consume(producer_id, DEVICE_CAPS)


# ---- membership: not_joined, already_joined ----------------------------------------------------


async def test_not_joined(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with RawWebSocket.connect(server) as raw:
            answer = await raw.request(
                "rtc:createTransport", {"meetingId": "m", "direction": "send"}, "1"
            )
            assert answer == {
                "type": "rtc:error",
                "requestId": "1",
                "request": "rtc:createTransport",
                "code": "not_joined",
                "error": answer["error"],
            }
            answer = await raw.request("rtc:leave", {"meetingId": "m"}, "2")
            assert answer["code"] == "not_joined"
            await joined_raw(raw, "m")
            # another meeting id than the joined one
            answer = await raw.request("rtc:getRouterRtpCapabilities", {"meetingId": "n"}, "3")
            assert answer["code"] == "not_joined"
            assert "'n'" in answer["error"]


async def test_already_joined(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with peer(server, "m", "alice") as a:
            for meeting in ("m", "n"):
                error = await refused(
                    a, "rtc:join", meetingId=meeting, token=token(meeting, "alice")
                )
                assert error.code == "already_joined"
            assert server.app.rooms.counts().rooms == 1  # "n" was never opened


# ---- not_found, invalid_state, unsupported -----------------------------------------------------


async def test_not_found(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with peer(server, "m", "alice") as a:
            error = await refused(
                a,
                "rtc:connectTransport",
                meetingId="m",
                transportId="no-such-transport",
                dtlsParameters=DTLS_CLIENT,
            )
            assert error.code == "not_found"
            assert "'no-such-transport'" in error.message
            await a.create_transport("recv")
            for rtype, data in [
                ("rtc:closeProducer", {"producerId": "p"}),
                ("rtc:resumeConsumer", {"consumerId": "c"}),
                ("rtc:getStats", {"id": "x"}),
                ("rtc:consume", {"producerId": "p", "rtpCapabilities": DEVICE_CAPS}),
            ]:
                error = await refused(a, rtype, meetingId="m", **data)
                assert error.code == "not_found", rtype


async def test_invalid_state(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with peer(server, "m", "alice") as a, peer(server, "m", "bob") as b:
            send_id, producer_id = await publish_audio(a)
            # consume before a recv transport exists
            error = await refused(
                b, "rtc:consume", meetingId="m", producerId=producer_id, rtpCapabilities=DEVICE_CAPS
            )
            assert error.code == "invalid_state"
            assert "recv transport" in error.message
            # connect twice
            await a.connect_transport(send_id, DTLS_CLIENT)
            error = await refused(
                a,
                "rtc:connectTransport",
                meetingId="m",
                transportId=send_id,
                dtlsParameters=DTLS_CLIENT,
            )
            assert error.code == "invalid_state"
            # produce on a recv transport, consume on a send transport
            recv = await b.create_transport("recv")
            send_b = await b.create_transport("send")
            error = await refused(
                b,
                "rtc:produce",
                meetingId="m",
                transportId=recv["transportId"],
                kind="audio",
                rtpParameters=AUDIO["rtpParameters"],
            )
            assert error.code == "invalid_state"
            error = await refused(
                b,
                "rtc:consume",
                meetingId="m",
                producerId=producer_id,
                rtpCapabilities=DEVICE_CAPS,
                transportId=send_b["transportId"],
            )
            assert error.code == "invalid_state"


async def test_unsupported(server: SfuServer) -> None:
    with trio.fail_after(10):
        async with peer(server, "m", "alice") as a, peer(server, "m", "bob") as b:
            _, producer_id = await publish_audio(a)
            await b.create_transport("recv")
            video_only = {
                "codecs": [c for c in DEVICE_CAPS["codecs"] if c["kind"] == "video"],
                "headerExtensions": DEVICE_CAPS["headerExtensions"],
            }
            error = await refused(
                b, "rtc:consume", meetingId="m", producerId=producer_id, rtpCapabilities=video_only
            )
            assert error.code == "unsupported"
            # a codec the router does not have
            send = await b.create_transport("send")
            params = json.loads(json.dumps(AUDIO["rtpParameters"]))
            params["codecs"][0]["mimeType"] = "audio/x-unheard-of"
            error = await refused(
                b,
                "rtc:produce",
                meetingId="m",
                transportId=send["transportId"],
                kind="audio",
                rtpParameters=params,
            )
            assert error.code == "unsupported"


# ---- limit_exceeded, rate_limited --------------------------------------------------------------


async def test_limit_exceeded(engine: MediaEngine) -> None:
    config = make_config(peers_per_meeting=2, transports_per_peer=2, producers_per_peer=1,
                         consumers_per_peer=1)  # fmt: skip
    with trio.fail_after(10):
        async with (
            running_server(engine, config) as server,
            peer(server, "m", "alice") as a,
            peer(server, "m", "bob") as b,
            RawWebSocket.connect(server) as raw,
        ):
            answer = await raw.request("rtc:join", {"meetingId": "m", "token": token("m", "c")})
            assert answer["code"] == "limit_exceeded"
            await joined_raw(raw, "another-meeting")  # the limit is per meeting
            send_id, producer_id = await publish_audio(a)
            await a.create_transport("recv")
            error = await refused(a, "rtc:createTransport", meetingId="m", direction="recv")
            assert error.code == "limit_exceeded"
            error = await refused(
                a,
                "rtc:produce",
                meetingId="m",
                transportId=send_id,
                kind="audio",
                rtpParameters=AUDIO["rtpParameters"],
            )
            assert error.code == "limit_exceeded"
            await b.create_transport("recv")
            await b.consume(producer_id, DEVICE_CAPS)
            error = await refused(
                b, "rtc:consume", meetingId="m", producerId=producer_id, rtpCapabilities=DEVICE_CAPS
            )
            assert error.code == "limit_exceeded"


async def test_rate_limited(engine: MediaEngine) -> None:
    config = make_config(requests_per_second=0.001, request_burst=3)
    with trio.fail_after(10):
        async with running_server(engine, config) as server, RawWebSocket.connect(server) as raw:
            await joined_raw(raw)
            for request_id in ("2", "3"):
                answer = await raw.request(
                    "rtc:getRouterRtpCapabilities", {"meetingId": "m"}, request_id
                )
                assert answer["type"] == "rtc:routerRtpCapabilities"
            answer = await raw.request("rtc:getRouterRtpCapabilities", {"meetingId": "m"}, "4")
            assert answer == {
                "type": "rtc:error",
                "requestId": "4",
                "request": "rtc:getRouterRtpCapabilities",
                "code": "rate_limited",
                "error": answer["error"],
            }
            # not a bad frame: the connection stays open
            await raw.send_json({"type": "rtc:leave", "data": {"meetingId": "m"}})
            assert (await raw.receive_json())["code"] == "rate_limited"


# ---- internal ------------------------------------------------------------------------------------


class BuggyEngine(FakeEngine):
    """A fake engine with a bug in get_stats (this test needs the fake's internals)."""

    async def get_stats(self, entity_id: str) -> list[dict[str, Any]]:
        raise RuntimeError("a bug in the engine")


async def test_internal_error_keeps_connection_and_room(caplog: pytest.LogCaptureFixture) -> None:
    engine = BuggyEngine()
    with trio.fail_after(10):
        async with (
            running_server(engine, make_config()) as server,
            peer(server, "m", "alice") as a,
            peer(server, "m", "bob") as b,
        ):
            send_id, _ = await publish_audio(a)
            error = await refused(a, "rtc:getStats", meetingId="m", id=send_id)
            assert error.code == "internal"
            assert "a bug in the engine" not in error.message  # details stay in the log
            assert any(
                "a bug in the engine" in (r.exc_text or str(r.exc_info)) for r in caplog.records
            )
            # the connection and the room are still up
            await a.create_transport("recv")
            await b.next_notification("rtc:newProducer")
            assert server.app.rooms.counts().peers == 2


class StuckEngine(FakeEngine):
    """A fake engine whose restart_ice never returns (this test needs the fake)."""

    async def restart_ice(self, transport_id: str) -> Any:
        await trio.sleep_forever()


async def test_a_dropped_socket_ends_the_peer_even_mid_request() -> None:
    engine = StuckEngine()
    with trio.fail_after(10):
        async with (
            running_server(engine, make_config()) as server,
            peer(server, "m", "bob") as b,
        ):
            async with RawWebSocket.connect(server) as raw:
                alice = (await joined_raw(raw, "m", "alice"))["data"]["peerId"]
                send = await raw.request(
                    "rtc:createTransport", {"meetingId": "m", "direction": "send"}
                )
                await raw.send_json(
                    {
                        "type": "rtc:restartIce",
                        "requestId": "stuck",
                        "data": {"meetingId": "m", "transportId": send["data"]["transportId"]},
                    }
                )
                await trio.testing.wait_all_tasks_blocked()  # the request is in the engine
                await raw.abort()
            note = await b.next_notification("rtc:peerLeft")
            assert note.data == {"peerId": alice}
            assert engine.transports == {}  # her transport was closed all the same
