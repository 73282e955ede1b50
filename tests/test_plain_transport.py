"""PlainTransport in the engine: plain RTP/RTCP (optionally SRTP) to and from a UDP peer.

Real sockets on 127.0.0.1 throughout: a publisher's endpoint sends VP8 to one plain
transport, a subscriber's endpoint gets it from another (a consumer on it), with RTCP both
ways (SR/RR, PLI, NACK). Every combination of comedia / explicit connect, rtcp-mux on and
off, SRTP off / AES-CM / AES-GCM runs on the in-process Worker; the pool of worker
processes runs a few of them (the same calls cross the channel).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from trio_sfu.client.plain import PlainEndpoint, open_plain_endpoint
from trio_sfu.client.synthetic import SyntheticStream
from trio_sfu.engine.api import EngineEvent, MediaEngine, PlainTransportInfo
from trio_sfu.engine.pool import PoolSettings, open_worker_pool
from trio_sfu.engine.worker import WorkerSettings, open_worker
from trio_sfu.errors import InvalidMessageError, InvalidStateError, UnsupportedError
from trio_sfu.ortc.plain import plain_rtp_capabilities, vp8_plain_rtp_parameters
from trio_sfu.ortc.types import SrtpParameters
from trio_sfu.rtcp import (
    Bye,
    GenericNack,
    Pli,
    ReceiverReport,
    SenderReport,
    build_rtcp,
    parse_rtcp_untrusted,
    unix_to_ntp,
)
from trio_sfu.rtp.packet import RtpPacket
from trio_sfu.wire import converter

PUB_SSRC = 0x11223344
SETTINGS = WorkerSettings(rtcp_interval=0.05)


@asynccontextmanager
async def engine_of(kind: str) -> AsyncIterator[tuple[MediaEngine, str]]:
    """An engine (the in-process Worker, or a pool of one worker process) and a router."""
    events: list[EngineEvent] = []
    if kind == "worker":
        async with open_worker(SETTINGS) as worker:
            yield worker, await worker.create_router(events.append)
    else:
        settings = PoolSettings(workers=1, worker=SETTINGS, report_interval=0.2)
        async with open_worker_pool(settings) as pool:
            yield pool, await pool.create_router(events.append)


def wire(info: PlainTransportInfo) -> dict[str, Any]:
    data: dict[str, Any] = converter.unstructure(info)
    return data


async def connect_endpoint(
    engine: MediaEngine, info: PlainTransportInfo, end: PlainEndpoint, *, comedia: bool
) -> PlainTransportInfo:
    """Both sides learn of each other; with comedia the transport is given only the key."""
    data = wire(info)
    end.connect(data["tuple"], data.get("rtcpTuple"), data.get("srtpParameters"))
    srtp = end.srtp_parameters
    return await engine.connect_plain_transport(
        info.transport_id,
        ip=None if comedia else end.ip,
        port=None if comedia else end.port,
        rtcp_port=None if comedia or info.rtcp_mux else end.rtcp_port,
        srtp_parameters=None if srtp is None else converter.structure(srtp, SrtpParameters),
    )


async def rtcp_until(end: PlainEndpoint, predicate: Callable[[Any], bool]) -> Any:
    with trio.fail_after(3):
        while True:
            for packet in parse_rtcp_untrusted(await end.receive_rtcp()):
                if predicate(packet):
                    return packet


async def stats_until(engine: MediaEngine, entity_id: str, key: str, value: int) -> Any:
    """The entity's stats once ``key`` reached ``value`` (polled: the engine may be in
    another process)."""
    with trio.fail_after(3):
        while True:
            stats = (await engine.get_stats(entity_id))[0]
            if stats[key] >= value:
                return stats
            await trio.sleep(0.01)


async def media_both_ways(
    engine: MediaEngine, router_id: str, *, rtcp_mux: bool, comedia: bool, suite: str | None
) -> None:
    options = {
        "rtcp_mux": rtcp_mux,
        "enable_srtp": suite is not None,
        "srtp_crypto_suite": suite or "AES_CM_128_HMAC_SHA1_80",
    }
    pub_info = await engine.create_plain_transport(router_id, comedia=comedia, **options)
    sub_info = await engine.create_plain_transport(router_id, **options)
    assert pub_info.tuple.local_ip == "127.0.0.1" and pub_info.tuple.local_port > 0
    assert (pub_info.rtcp_tuple is None) == rtcp_mux
    if not rtcp_mux:
        assert pub_info.rtcp_tuple is not None
        assert pub_info.rtcp_tuple.local_port != pub_info.tuple.local_port
    assert (pub_info.srtp_parameters is None) == (suite is None)
    if pub_info.srtp_parameters is not None:
        assert pub_info.srtp_parameters.crypto_suite == suite
    async with (
        open_plain_endpoint(rtcp_mux=rtcp_mux, srtp_crypto_suite=suite) as pub,
        open_plain_endpoint(rtcp_mux=rtcp_mux, srtp_crypto_suite=suite) as sub,
    ):
        connected = await connect_endpoint(engine, pub_info, pub, comedia=comedia)
        # With comedia nothing is known of the remote until its first packet.
        assert connected.tuple.remote_port == (None if comedia else pub.port)
        await connect_endpoint(engine, sub_info, sub, comedia=False)
        producer_id = await engine.produce(
            pub_info.transport_id, "video", vp8_plain_rtp_parameters(ssrc=PUB_SSRC)
        )
        caps = plain_rtp_capabilities(engine.router_rtp_capabilities(router_id))
        consumer = await engine.consume(sub_info.transport_id, producer_id, caps, paused=False)
        assert consumer.rtp_parameters.codecs[0].mime_type.lower() == "video/vp8"
        assert consumer.rtp_parameters.encodings[0].ssrc is not None
        out_ssrc = consumer.rtp_parameters.encodings[0].ssrc

        stream = SyntheticStream(ssrc=PUB_SSRC, payload_type=101, clock_rate=90000)
        tags = [b"FRAME%03d" % i for i in range(20)]
        received: list[RtpPacket] = []
        with trio.fail_after(5):
            for index, tag in enumerate(tags):
                for packet in stream.vp8_frame(keyframe=index == 0, size=300, tag=tag):
                    pub.send_rtp(packet)
                if index % 5 == 0:
                    report = stream.sender_report(unix_to_ntp(1.7e9 + index / 30), index / 30)
                    pub.send_rtcp(build_rtcp([report]))
                await trio.sleep(0.005)
            while len(received) < len(tags):
                received.append(RtpPacket.parse_untrusted(await sub.receive_rtp()))
        assert {p.ssrc for p in received} == {out_ssrc}
        assert [tag in p.payload for p, tag in zip(received, tags, strict=True)] == [True] * 20
        seqs = [p.sequence_number for p in received]
        assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(20)]
        assert sub.rtp_sources == {(sub_info.tuple.local_ip, sub_info.tuple.local_port)}

        # The comedia transport learned the publisher's address from its first packet.
        stats = (await engine.get_stats(pub_info.transport_id))[0]
        assert stats["type"] == "plain"
        assert (stats["remote_ip"], stats["remote_port"]) == (pub.ip, pub.port)
        if not rtcp_mux:
            assert stats["remote_rtcp_port"] == pub.rtcp_port
        assert stats["rtp_packets_in"] == 20 and stats["rtcp_packets_in"] >= 4

        # RTCP both ways: a Receiver Report about the publisher's stream, a Sender Report
        # for the subscriber's; on the RTCP port when rtcp-mux is off.
        last_seq = (stream.seq - 1) & 0xFFFF
        report = await rtcp_until(
            pub,
            lambda p: (
                isinstance(p, ReceiverReport)
                and any(
                    b.ssrc == PUB_SSRC and b.highest_seq & 0xFFFF == last_seq for b in p.reports
                )
            ),
        )
        assert report.reports[0].lsr != 0  # the publisher's Sender Reports arrived
        await rtcp_until(sub, lambda p: isinstance(p, SenderReport) and p.ssrc == out_ssrc)
        expected_rtcp_port = (
            pub_info.tuple.local_port if rtcp_mux else pub_info.rtcp_tuple.local_port
        )  # type: ignore[union-attr]
        assert pub.rtcp_sources == {("127.0.0.1", expected_rtcp_port)}

        # The subscriber's PLI reaches the publisher (as a PLI on its SSRC) ...
        sub.send_rtcp(build_rtcp([Pli(sender_ssrc=1, media_ssrc=out_ssrc)]))
        await rtcp_until(pub, lambda p: isinstance(p, Pli) and p.media_ssrc == PUB_SSRC)
        # ... and its NACK is answered from what the consumer sent (no RTX negotiated:
        # the packet again, under its own sequence number; with SRTP the endpoint's replay
        # check drops that copy, as it should: a real receiver NACKs what it never got).
        lost = received[7]
        sub.send_rtcp(build_rtcp([GenericNack.from_seqs(1, out_ssrc, [lost.sequence_number])]))
        with trio.fail_after(3):
            if suite is None:
                while True:
                    again = RtpPacket.parse_untrusted(await sub.receive_rtp())
                    if again.sequence_number == lost.sequence_number:
                        break
                assert again.payload == lost.payload and again.ssrc == out_ssrc
            await stats_until(engine, consumer.consumer_id, "packetsRetransmitted", 1)
        if suite is not None:
            assert sub.bad >= 1

        # The publisher's transport closes, its producer with it: the consumer's receiver
        # hears that its source left (an RTCP BYE for the stream it received).
        await engine.close_transport(pub_info.transport_id)
        bye = await rtcp_until(sub, lambda p: isinstance(p, Bye))
        assert bye.ssrcs == (out_ssrc,)
        await engine.close_transport(sub_info.transport_id)
        with pytest.raises(Exception, match="not found"):
            await engine.get_stats(pub_info.transport_id)


SUITES = [None, "AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM"]


@pytest.mark.parametrize("suite", SUITES, ids=["plain", "srtp_aes_cm", "srtp_aes_gcm"])
@pytest.mark.parametrize("rtcp_mux", [True, False], ids=["rtcp_mux", "rtcp_port"])
@pytest.mark.parametrize("comedia", [True, False], ids=["comedia", "connect"])
async def test_media_and_rtcp_both_ways(comedia: bool, rtcp_mux: bool, suite: str | None) -> None:
    with trio.fail_after(20):
        async with engine_of("worker") as (engine, router_id):
            await media_both_ways(
                engine, router_id, rtcp_mux=rtcp_mux, comedia=comedia, suite=suite
            )


@pytest.mark.parametrize(
    ("comedia", "rtcp_mux", "suite"),
    [(True, False, None), (False, True, "AEAD_AES_128_GCM")],
    ids=["comedia_rtcp_port_plain", "connect_rtcp_mux_gcm"],
)
async def test_media_through_a_worker_process(
    comedia: bool, rtcp_mux: bool, suite: str | None
) -> None:
    with trio.fail_after(40):
        async with engine_of("pool") as (engine, router_id):
            await media_both_ways(
                engine, router_id, rtcp_mux=rtcp_mux, comedia=comedia, suite=suite
            )


async def test_connect_refusals() -> None:
    with trio.fail_after(10):
        async with engine_of("worker") as (engine, router_id):
            srtp = await engine.create_plain_transport(
                router_id, rtcp_mux=False, enable_srtp=True, srtp_crypto_suite="AEAD_AES_128_GCM"
            )
            tid = srtp.transport_id
            with pytest.raises(InvalidMessageError, match="ip and port"):
                await engine.connect_plain_transport(tid, ip="127.0.0.1")
            with pytest.raises(InvalidMessageError, match="rtcpPort"):
                await engine.connect_plain_transport(tid, ip="127.0.0.1", port=5000)
            with pytest.raises(InvalidMessageError, match="srtpParameters"):
                await engine.connect_plain_transport(tid, ip="127.0.0.1", port=5000, rtcp_port=5001)
            wrong_suite = SrtpParameters("AES_CM_128_HMAC_SHA1_80", "A" * 40)
            with pytest.raises(UnsupportedError, match="cryptoSuite"):
                await engine.connect_plain_transport(
                    tid, ip="127.0.0.1", port=5000, rtcp_port=5001, srtp_parameters=wrong_suite
                )
            short_key = SrtpParameters("AEAD_AES_128_GCM", "AAAA")
            with pytest.raises(InvalidMessageError, match="keyBase64"):
                await engine.connect_plain_transport(
                    tid, ip="127.0.0.1", port=5000, rtcp_port=5001, srtp_parameters=short_key
                )
            with pytest.raises(UnsupportedError, match="family"):
                await engine.connect_plain_transport(tid, ip="::1", port=5000, rtcp_port=5001)
            # Refusals change nothing: a good connect still works, a second one does not.
            assert srtp.srtp_parameters is not None
            good = SrtpParameters("AEAD_AES_128_GCM", srtp.srtp_parameters.key_base64)
            info = await engine.connect_plain_transport(
                tid, ip="127.0.0.1", port=5000, rtcp_port=5001, srtp_parameters=good
            )
            assert (info.tuple.remote_ip, info.tuple.remote_port) == ("127.0.0.1", 5000)
            assert info.rtcp_tuple is not None and info.rtcp_tuple.remote_port == 5001
            with pytest.raises(InvalidStateError, match="already connected"):
                await engine.connect_plain_transport(
                    tid, ip="127.0.0.1", port=5000, rtcp_port=5001, srtp_parameters=good
                )
            plain = await engine.create_plain_transport(router_id)
            with pytest.raises(InvalidMessageError, match="SRTP is not enabled"):
                await engine.connect_plain_transport(
                    plain.transport_id, ip="127.0.0.1", port=5000, srtp_parameters=good
                )
            with pytest.raises(UnsupportedError, match="srtpCryptoSuite"):
                await engine.create_plain_transport(
                    router_id, enable_srtp=True, srtp_crypto_suite="NULL"
                )
            # A WebRTC call on a plain transport is refused, and the reverse.
            with pytest.raises(UnsupportedError, match="plain transport"):
                await engine.restart_ice(plain.transport_id)
            webrtc = await engine.create_webrtc_transport(router_id)
            with pytest.raises(UnsupportedError, match="not a plain transport"):
                await engine.connect_plain_transport(webrtc.transport_id, ip="127.0.0.1", port=1)


async def test_only_the_known_remote_is_heard() -> None:
    """Once the remote is known (learned by comedia), datagrams from anywhere else are
    dropped and counted; they never reach the producer."""
    with trio.fail_after(10):
        async with engine_of("worker") as (engine, router_id):
            info = await engine.create_plain_transport(router_id, comedia=True)
            async with open_plain_endpoint() as pub, open_plain_endpoint() as intruder:
                await connect_endpoint(engine, info, pub, comedia=True)
                intruder.connect(wire(info)["tuple"])
                producer_id = await engine.produce(
                    info.transport_id, "video", vp8_plain_rtp_parameters(ssrc=PUB_SSRC)
                )
                stream = SyntheticStream(ssrc=PUB_SSRC, payload_type=101, clock_rate=90000)
                for packet in stream.vp8_frame(keyframe=True, size=200):
                    pub.send_rtp(packet)
                for _ in range(3):
                    for packet in stream.vp8_frame(keyframe=False, size=200):
                        intruder.send_rtp(packet)
                garbage = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                with garbage:
                    garbage.sendto(
                        b"\x00\x01 not rtp", (info.tuple.local_ip, info.tuple.local_port)
                    )
                stats = await stats_until(engine, info.transport_id, "packets_in", 5)
                assert stats["rtp_packets_in"] == 1
                assert stats["dropped"]["not_connected"] == 4
                assert (stats["remote_ip"], stats["remote_port"]) == (pub.ip, pub.port)
                (inbound,) = await engine.get_stats(producer_id)
                assert inbound["packetCount"] == 1
