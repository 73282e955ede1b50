"""The media engine end to end, without signaling: a Worker, real client transports over
127.0.0.1 (UDP, DTLS, SRTP), synthetic publishers and subscribers."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from trio_sfu.client.synthetic import SyntheticPublisher, audio_rtp_parameters
from trio_sfu.client.transport import ClientTransport, open_client_transport
from trio_sfu.engine.api import ConsumerClosed, EngineEvent
from trio_sfu.engine.worker import Worker, WorkerSettings, open_worker
from trio_sfu.ortc.types import RtpCapabilities, RtpParameters
from trio_sfu.rtcp import (
    GenericNack,
    Pli,
    ReceiverReport,
    SenderReport,
    build_rtcp,
    parse_rtcp_untrusted,
)
from trio_sfu.rtp import vp8
from trio_sfu.rtp.packet import RtpPacket
from trio_sfu.wire import structure_untrusted

FIXTURES = Path(__file__).parent / "fixtures" / "mediasoup-client"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def device_caps(*, bandwidth_feedback: bool = True) -> RtpCapabilities:
    """Chromium's receive capabilities; without ``bandwidth_feedback`` the subscriber
    negotiates neither transport-cc nor REMB (the router then plans no bandwidth limit)."""
    caps = structure_untrusted(fixture("device-rtp-capabilities.chromium.json"), RtpCapabilities)
    if bandwidth_feedback:
        return caps
    codecs = [
        attrs.evolve(
            codec,
            rtcp_feedback=[
                fb for fb in codec.rtcp_feedback if fb.type not in ("transport-cc", "goog-remb")
            ],
        )
        for codec in caps.codecs
    ]
    return attrs.evolve(caps, codecs=codecs)


def vp8_simulcast() -> RtpParameters:
    data = fixture("produce-video-vp8-simulcast.json")["rtpParameters"]
    return structure_untrusted(data, RtpParameters)


@asynccontextmanager
async def connected_client(
    worker: Worker, router_id: str
) -> AsyncIterator[tuple[str, ClientTransport]]:
    info = await worker.create_webrtc_transport(router_id)
    async with open_client_transport(
        info.ice_parameters, info.ice_candidates, info.dtls_parameters
    ) as client:
        await worker.connect_transport(info.transport_id, client.dtls_parameters)
        await client.wait_connected()
        yield info.transport_id, client


async def test_simulcast_and_audio_forwarding() -> None:
    events: list[EngineEvent] = []
    with trio.fail_after(20):
        async with open_worker(WorkerSettings(rtcp_interval=0.05)) as worker:
            router_id = await worker.create_router(events.append)
            async with (
                connected_client(worker, router_id) as (pub_id, pub),
                connected_client(worker, router_id) as (sub_id, sub),
            ):
                video_params = vp8_simulcast()
                video_id = await worker.produce(pub_id, "video", video_params)
                audio_params = audio_rtp_parameters(ssrc=1111, mid="0")
                audio_id = await worker.produce(pub_id, "audio", audio_params)
                # This subscriber sends no bandwidth feedback: nothing limits the layers.
                caps = device_caps(bandwidth_feedback=False)
                video = await worker.consume(sub_id, video_id, caps, paused=False)
                audio = await worker.consume(sub_id, audio_id, caps, paused=False)
                assert video.type == "simulcast" and audio.type == "simple"
                v_ssrc = video.rtp_parameters.encodings[0].ssrc
                a_ssrc = audio.rtp_parameters.encodings[0].ssrc
                v_pt = video.rtp_parameters.codecs[0].payload_type
                assert v_pt == 101  # the router's VP8 payload type, not Chromium's 96

                publisher = SyntheticPublisher(video_params)
                audio_pub = SyntheticPublisher(audio_params).streams[0]
                now = trio.current_time()
                # All three layers send a keyframe, then 20 delta frames each.
                sent_r2 = []
                for frame in range(21):
                    for index, stream in enumerate(publisher.streams):
                        for packet in stream.vp8_frame(keyframe=frame == 0, size=300, now=now):
                            pub.send_rtp(packet)
                            if index == 2:
                                sent_r2.append(packet)
                    pub.send_rtp(audio_pub.opus_frame(now=now))
                    await trio.sleep(0.005)

                # The SFU rewrites the VP8 PictureID and TL0PICIDX (continuity across
                # layer switches): compare what follows the 6-byte payload descriptor.
                r2_payloads = [RtpPacket.parse_untrusted(p).payload[6:] for p in sent_r2]
                got_video: list[RtpPacket] = []
                got_audio: list[RtpPacket] = []
                while (
                    len(got_audio) < 21 or [p.payload[6:] for p in got_video[-21:]] != r2_payloads
                ):
                    packet = RtpPacket.parse_untrusted(await sub.receive_rtp())
                    assert packet.ssrc in (v_ssrc, a_ssrc)
                    (got_video if packet.ssrc == v_ssrc else got_audio).append(packet)
                # The highest layer (r2) is forwarded, from its keyframe on. Lower layers'
                # keyframes may go first while r2 is not active yet; only keyframes do.
                assert len(got_video) <= 23
                assert all(vp8.is_keyframe(p.payload) for p in got_video[: len(got_video) - 20])
                assert all(p.payload_type == v_pt for p in got_video)
                assert vp8.is_keyframe(got_video[0].payload)
                pictures = [vp8.summarize_untrusted(p.payload).picture_id for p in got_video]
                assert all(pid is not None for pid in pictures)
                assert pictures == [(pictures[0] + i) & 0x7FFF for i in range(len(pictures))]
                seqs = [p.sequence_number for p in got_video]
                assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]

                # A NACK from the subscriber is answered with an RTX retransmission.
                rtx = video.rtp_parameters.encodings[0].rtx
                assert rtx is not None
                lost = got_video[5].sequence_number
                sub.send_rtcp(build_rtcp([GenericNack.from_seqs(1, v_ssrc, [lost])]))
                with trio.fail_after(2):
                    while True:
                        repaired = RtpPacket.parse_untrusted(await sub.receive_rtp())
                        if repaired.ssrc == rtx.ssrc:
                            break
                assert repaired.payload[:2] == lost.to_bytes(2, "big")
                assert repaired.payload[2:] == got_video[5].payload

                # Sender Reports reach the subscriber for each consumer stream, Receiver
                # Reports the publisher for each of its streams.
                sender_reports = {v_ssrc: 0, a_ssrc: 0}
                with trio.fail_after(2):
                    while not all(sender_reports.values()):
                        for report in parse_rtcp_untrusted(await sub.receive_rtcp()):
                            if isinstance(report, SenderReport):
                                sender_reports[report.ssrc] += 1
                                assert report.packet_count > 0
                publisher_ssrcs = {s.ssrc for s in publisher.streams} | {audio_pub.ssrc}
                reported: set[int] = set()
                with trio.fail_after(2):
                    while reported != publisher_ssrcs:
                        for report in parse_rtcp_untrusted(await pub.receive_rtcp()):
                            if isinstance(report, ReceiverReport):
                                reported |= {block.ssrc for block in report.reports}
                                assert all(b.fraction_lost == 0 for b in report.reports)

                # A PLI from the subscriber reaches the publisher as a PLI on r2's SSRC,
                # at most once a second per stream.
                for _ in range(3):
                    sub.send_rtcp(build_rtcp([Pli(1, v_ssrc)]))
                plis: list[Pli] = []
                with trio.move_on_after(0.5):
                    while True:
                        feedback = parse_rtcp_untrusted(await pub.receive_rtcp())
                        plis += [p for p in feedback if isinstance(p, Pli)]
                assert [p.media_ssrc for p in plis] == [publisher.streams[2].ssrc]

                # Closing the producer closes the consumer, with an event.
                await worker.close_producer(video_id)
                closed = [e for e in events if isinstance(e, ConsumerClosed)]
                assert [(e.consumer_id, e.reason) for e in closed] == [
                    (video.consumer_id, "producer_closed")
                ]
            await worker.close_transport(pub_id)
            await worker.close_transport(sub_id)
            dump = worker.dump()["routers"][0]
            assert dump["transportIds"] == [] and dump["producerIds"] == []
            assert dump["consumerIds"] == []
            await worker.close_router(router_id)
            assert worker.dump() == {"routers": []}


async def test_a_consumer_that_raises_is_closed_and_the_others_keep_flowing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in one consumer's forwarding closes that consumer (``internal_error``,
    logged once), not the publisher's transport: the publisher and the other consumers
    of the same packets go on."""
    events: list[EngineEvent] = []
    with trio.fail_after(20):
        async with open_worker(WorkerSettings()) as worker:
            router_id = await worker.create_router(events.append)
            async with (
                connected_client(worker, router_id) as (pub_id, pub),
                connected_client(worker, router_id) as (broken_id, _broken_sub),
                connected_client(worker, router_id) as (sub_id, sub),
            ):
                params = audio_rtp_parameters(ssrc=1111, mid="0")
                audio_id = await worker.produce(pub_id, "audio", params)
                caps = device_caps()
                broken = await worker.consume(broken_id, audio_id, caps, paused=False)
                good = await worker.consume(sub_id, audio_id, caps, paused=False)
                router = worker._routers[router_id]

                def bug(*args: object) -> None:
                    raise RuntimeError("a bug in the consumer's packet path")

                router.consumers[broken.consumer_id].send_rtp = bug
                stream = SyntheticPublisher(params).streams[0]
                good_ssrc = good.rtp_parameters.encodings[0].ssrc
                for round_ in range(2):
                    for _ in range(10):
                        pub.send_rtp(stream.opus_frame(now=trio.current_time()))
                    with trio.fail_after(5):  # all of them, the first round too
                        for _ in range(10):
                            packet = RtpPacket.parse_untrusted(await sub.receive_rtp())
                            assert packet.ssrc == good_ssrc
                    if round_ == 0:
                        await trio.sleep(0.1)

                closed = [e for e in events if isinstance(e, ConsumerClosed)]
                assert [(e.consumer_id, e.reason) for e in closed] == [
                    (broken.consumer_id, "internal_error")
                ]
                failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
                assert len(failures) == 1
                assert broken.consumer_id in failures[0].getMessage()
                dump = worker.dump()["routers"][0]
                assert pub_id in dump["transportIds"]
                assert dump["consumerIds"] == [good.consumer_id]
                assert [t["dtlsState"] for t in dump["transports"]] == ["connected"] * 3
                assert audio_id in dump["producerIds"]
            await worker.close_router(router_id)
