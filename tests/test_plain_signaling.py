"""rtc:createPlainTransport / rtc:connectPlainTransport through a real server.

A "bot" peer whose token carries ``canPlainTransport`` publishes VP8 over a plain
transport (comedia, RTCP on its own port, SRTP AES-GCM with keys exchanged in signaling);
a WebRTC peer (real ICE/DTLS/SRTP) consumes it. The bot consumes the WebRTC peer's audio
on a second plain transport (explicit connect, rtcp-mux, no SRTP). On the in-process
Worker and on a pool of worker processes. Who may create one, and the refusals.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from tests.signaling_harness import make_config, peer, running_server, token
from trio_sfu.client.peer import open_peer
from trio_sfu.client.plain import open_plain_endpoint
from trio_sfu.client.signaling import SignalingError
from trio_sfu.client.synthetic import SyntheticStream, audio_rtp_parameters
from trio_sfu.engine.api import MediaEngine
from trio_sfu.engine.pool import PoolSettings, open_worker_pool
from trio_sfu.engine.worker import WorkerSettings, open_worker
from trio_sfu.ortc.plain import plain_rtp_capabilities, vp8_plain_rtp_parameters
from trio_sfu.ortc.types import RtpCapabilities
from trio_sfu.rtp.packet import RtpPacket
from trio_sfu.server import SfuServer
from trio_sfu.wire import structure_untrusted, unstructure

MEETING = "plain"


@asynccontextmanager
async def sfu(kind: str) -> AsyncIterator[tuple[MediaEngine, SfuServer]]:
    settings = WorkerSettings(rtcp_interval=0.1)
    if kind == "worker":
        async with open_worker(settings) as worker, running_server(worker, make_config()) as s:
            yield worker, s
    else:
        pool_settings = PoolSettings(workers=2, worker=settings, report_interval=0.2)
        async with (
            open_worker_pool(pool_settings) as pool,
            running_server(pool, make_config()) as s,
        ):
            yield pool, s


@pytest.mark.parametrize("kind", ["worker", "pool"])
async def test_a_bot_publishes_and_subscribes_over_plain_transports(kind: str) -> None:
    with trio.fail_after(30):
        async with sfu(kind) as (engine, server):
            bot_token = token(MEETING, "bot", can_plain_transport=True)
            async with (
                open_peer(server.ws_url, MEETING, token=bot_token, display_name="bot") as bot,
                open_peer(server.ws_url, MEETING, token=token(MEETING, "ann")) as ann,
                open_plain_endpoint(rtcp_mux=False, srtp_crypto_suite="AEAD_AES_128_GCM") as out,
                open_plain_endpoint() as into,
            ):
                sig = bot.signaling
                # Publish: comedia, RTCP on its own port, SRTP with keys from signaling.
                created = await sig.create_plain_transport(
                    rtcp_mux=False,
                    comedia=True,
                    enable_srtp=True,
                    srtp_crypto_suite="AEAD_AES_128_GCM",
                    direction="send",
                )
                assert created["rtcpMux"] is False and created["comedia"] is True
                assert created["tuple"]["localIp"] == "127.0.0.1"
                assert created["tuple"]["protocol"] == "udp"
                assert "remoteIp" not in created["tuple"]
                assert created["srtpParameters"]["cryptoSuite"] == "AEAD_AES_128_GCM"
                out.connect(created["tuple"], created["rtcpTuple"], created["srtpParameters"])
                connected = await sig.connect_plain_transport(
                    created["transportId"], srtp_parameters=out.srtp_parameters
                )
                assert connected["transportId"] == created["transportId"]
                producer_id = await sig.produce(
                    created["transportId"],
                    "video",
                    unstructure(vp8_plain_rtp_parameters(ssrc=1234)),
                )
                note = await ann.signaling.next_notification("rtc:newProducer")
                assert note.data["producerId"] == producer_id
                consumer = await ann.consume(producer_id)
                stream = SyntheticStream(ssrc=1234, payload_type=101, clock_rate=90000)
                assert ann.recv_transport is not None
                got: list[RtpPacket] = []
                for index in range(10):
                    for packet in stream.vp8_frame(keyframe=index == 0, tag=b"F%d" % index):
                        out.send_rtp(packet)
                for _ in range(10):
                    got.append(RtpPacket.parse_untrusted(await ann.recv_transport.receive_rtp()))
                assert {p.ssrc for p in got} == {consumer.ssrc}
                assert [b"F%d" % i in p.payload for i, p in enumerate(got)] == [True] * 10

                # Subscribe: ann's audio to a second plain transport, explicit connect.
                audio_id, audio = await ann.publish("audio", audio_rtp_parameters(ssrc=77))
                recv = await sig.create_plain_transport(direction="recv")
                assert "rtcpTuple" not in recv and "srtpParameters" not in recv
                into.connect(recv["tuple"])
                connected = await sig.connect_plain_transport(
                    recv["transportId"], ip=into.ip, port=into.port
                )
                assert (connected["tuple"]["remoteIp"], connected["tuple"]["remotePort"]) == (
                    into.ip,
                    into.port,
                )
                router_caps = structure_untrusted(
                    await sig.get_router_rtp_capabilities(), RtpCapabilities
                )
                answer = await sig.consume(
                    audio_id,
                    unstructure(plain_rtp_capabilities(router_caps)),
                    transport_id=recv["transportId"],
                    paused=False,
                )
                assert ann.send_transport is not None
                for _ in range(5):
                    ann.send_transport.send_rtp(audio.streams[0].opus_frame())
                received = [RtpPacket.parse_untrusted(await into.receive_rtp()) for _ in range(5)]
                ssrc = answer["rtpParameters"]["encodings"][0]["ssrc"]
                assert {p.ssrc for p in received} == {ssrc}

                # A plain transport cannot produce where it said recv, and the reverse.
                with pytest.raises(SignalingError) as refused:
                    await sig.produce(
                        recv["transportId"],
                        "video",
                        unstructure(vp8_plain_rtp_parameters(ssrc=99)),
                    )
                assert refused.value.code == "invalid_state"
                # The admin view names the transports' kinds.
                room = server.app.rooms.rooms[MEETING]
                (bot_peer,) = [p for p in room.peers.values() if p.grant.user_id == "bot"]
                kinds = {t["type"] for t in bot_peer.describe()["transports"]}
                assert kinds == {"plain"}
            # Everyone left: nothing stays in the engine.
            await server.app.rooms.wait_all_closed()
            if kind == "worker":
                assert engine.dump() == {"routers": []}


async def test_who_may_create_one_and_the_refusals() -> None:
    with trio.fail_after(20):
        async with sfu("worker") as (_, server):
            async with peer(server, MEETING, "ann") as ann:
                with pytest.raises(SignalingError) as refused:
                    await ann.create_plain_transport()
                assert refused.value.code == "forbidden"
                assert "canPlainTransport" in str(refused.value)
            async with peer(server, MEETING, "bot", can_plain_transport=True) as bot:
                with pytest.raises(SignalingError) as refused:
                    await bot.request(
                        "rtc:createPlainTransport",
                        {"meetingId": MEETING, "enableSrtp": True, "srtpCryptoSuite": "NULL"},
                    )
                assert refused.value.code == "invalid_message"
                assert "srtpCryptoSuite" in str(refused.value)
                plain = await bot.create_plain_transport(enable_srtp=True)
                assert plain["srtpParameters"]["cryptoSuite"] == "AES_CM_128_HMAC_SHA1_80"
                tid = plain["transportId"]
                for data, code in [
                    ({}, "invalid_message"),  # comedia off: ip and port needed
                    ({"ip": "127.0.0.1", "port": 5000}, "invalid_message"),  # no SRTP key
                    ({"ip": "not an ip", "port": 5000}, "invalid_message"),
                ]:
                    with pytest.raises(SignalingError) as refused:
                        await bot.request(
                            "rtc:connectPlainTransport",
                            {"meetingId": MEETING, "transportId": tid, **data},
                        )
                    assert refused.value.code == code, data
                key: dict[str, Any] = plain["srtpParameters"]
                await bot.connect_plain_transport(
                    tid, ip="127.0.0.1", port=5000, srtp_parameters=key
                )
                with pytest.raises(SignalingError) as refused:
                    await bot.connect_plain_transport(
                        tid, ip="127.0.0.1", port=5000, srtp_parameters=key
                    )
                assert refused.value.code == "invalid_state"
                # DTLS on a plain transport, plain on a WebRTC one: unsupported.
                webrtc = await bot.create_transport("send")
                with pytest.raises(SignalingError) as refused:
                    await bot.connect_plain_transport(webrtc["transportId"], ip="127.0.0.1")
                assert refused.value.code == "unsupported"
                with pytest.raises(SignalingError) as refused:
                    await bot.restart_ice(tid)
                assert refused.value.code == "unsupported"
                # Another meeting's or unknown ids are not found.
                with pytest.raises(SignalingError) as refused:
                    await bot.connect_plain_transport("nope", ip="127.0.0.1", port=1)
                assert refused.value.code == "not_found"
