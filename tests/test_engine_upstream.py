"""What the router does for publishers: NACKs for what their uplink lost (repaired by their
RTX), transport-cc feedback and REMB for their estimators, and the dominant speaker from
their audio levels. Real client transports over 127.0.0.1, the publisher's uplink
through the impairment relay."""

from __future__ import annotations

import attrs
import trio

from tests.test_engine_media import device_caps
from tests.test_simulcast import connected
from trio_sfu.client.synthetic import (
    SyntheticPublisher,
    SyntheticReceiver,
    TransportWideCounter,
    audio_rtp_parameters,
    vp8_simulcast_rtp_parameters,
)
from trio_sfu.engine.api import ActiveSpeaker, EngineEvent
from trio_sfu.engine.worker import WorkerSettings, open_worker
from trio_sfu.ortc.types import RtpEncodingParameters, RtpParameters, RtxParameters
from trio_sfu.rtcp import GenericNack, Remb, TransportCcFeedback, parse_rtcp_untrusted
from trio_sfu.rtp import vp8
from trio_sfu.rtp.packet import RtpPacket
from trio_sfu.testing.impairment import Impairment


def vp8_with_rtx() -> RtpParameters:
    """One VP8 stream with its SSRC and RTX SSRC signalled, transport-cc and REMB."""
    base = vp8_simulcast_rtp_parameters(layers=1, transport_cc=True)
    return attrs.evolve(
        base,
        encodings=[
            RtpEncodingParameters(ssrc=7000, rtx=RtxParameters(ssrc=7001), scalability_mode="L1T3")
        ],
    )


async def test_uplink_loss_is_repaired_and_publishers_get_feedback() -> None:
    with trio.fail_after(30):
        async with open_worker(WorkerSettings(rtcp_interval=0.2)) as worker:
            router_id = await worker.create_router(lambda event: None)
            async with (
                connected(
                    worker,
                    router_id,
                    relay=True,
                    uplink=Impairment(loss=0.1, loss_model="spread"),
                ) as (pub_id, pub, relay),
                connected(worker, router_id) as (sub_id, sub, _),
            ):
                assert relay is not None
                counter = TransportWideCounter()
                parameters = vp8_with_rtx()
                publisher = SyntheticPublisher(parameters, transport_counter=counter)
                stream = publisher.streams[0]
                video_id = await worker.produce(pub_id, "video", parameters)
                caps = device_caps(bandwidth_feedback=False)
                consumer = await worker.consume(sub_id, video_id, caps, paused=False)
                receiver = SyntheticReceiver(nack=False)
                receiver.add_consumer(consumer.rtp_parameters)

                feedback: list[object] = []
                repaired = 0

                async def serve_publisher_feedback() -> None:
                    nonlocal repaired
                    while True:
                        for packet in parse_rtcp_untrusted(await pub.receive_rtcp()):
                            if isinstance(packet, GenericNack) and packet.media_ssrc == 7000:
                                for seq in packet.lost_seqs():
                                    rtx = stream.retransmit(seq)
                                    if rtx is not None:
                                        repaired += 1
                                        pub.send_rtp(rtx)
                            feedback.append(packet)

                frames = 60
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(serve_publisher_feedback)
                    for n in range(frames):
                        for packet in stream.vp8_frame(keyframe=n == 0, packets=2, size=400):
                            pub.send_rtp(packet)
                        await trio.sleep(1 / 30)
                    sent_transport_seqs = counter.value
                    got: dict[int, bytes] = {}
                    with trio.move_on_after(1.0):
                        while len(got) < 2 * frames:
                            data = await sub.receive_rtp()
                            media = receiver.receive_rtp(data, trio.current_time())
                            if media is not None:
                                got[RtpPacket.parse_untrusted(media).sequence_number] = media
                    await trio.sleep(0.3)  # the last feedback
                    nursery.cancel_scope.cancel()

                # Every packet arrived at the subscriber: the lost ones NACKed and repaired.
                assert relay.uplink_stats.dropped_loss >= 10
                assert repaired >= relay.uplink_stats.dropped_loss * 0.8
                assert len(got) == 2 * frames
                first = next(
                    seq
                    for seq, media in got.items()
                    if vp8.is_keyframe(RtpPacket.parse_untrusted(media).payload)
                )
                assert sorted((seq - first) & 0xFFFF for seq in got) == list(range(2 * frames))
                stats = (await worker.get_stats(video_id))[0]
                assert stats["packetsRetransmitted"] >= 10

                # Transport-cc feedback reported the transport-wide numbers the publisher
                # used, the ones the relay dropped as lost.
                reported: dict[int, bool] = {}
                for packet in feedback:
                    if isinstance(packet, TransportCcFeedback):
                        for seq, arrival in packet.arrivals_us():
                            reported[seq] = reported.get(seq, False) or arrival is not None
                assert len(reported) >= 0.9 * sent_transport_seqs
                lost = sum(1 for received in reported.values() if not received)
                assert 0.05 * len(reported) < lost < 0.2 * len(reported)
                # REMB: what the consumers can take, for the publisher's SSRC.
                rembs = [p for p in feedback if isinstance(p, Remb)]
                assert rembs and 7000 in rembs[-1].ssrcs
                assert 100_000 <= rembs[-1].bitrate <= 5_000_000


async def test_the_dominant_speaker_is_announced_with_hysteresis() -> None:
    events: list[EngineEvent] = []
    with trio.fail_after(30):
        async with open_worker(WorkerSettings(rtcp_interval=0.2)) as worker:
            router_id = await worker.create_router(events.append)
            async with (
                connected(worker, router_id) as (ann_id, ann, _),
                connected(worker, router_id) as (bob_id, bob, _),
            ):
                ann_params = audio_rtp_parameters(ssrc=111, audio_level=True)
                bob_params = audio_rtp_parameters(ssrc=222, audio_level=True)
                ann_producer = await worker.produce(ann_id, "audio", ann_params)
                bob_producer = await worker.produce(bob_id, "audio", bob_params)
                ann_stream = SyntheticPublisher(ann_params).streams[0]
                bob_stream = SyntheticPublisher(bob_params).streams[0]

                async def talk(seconds: float, ann_level: int | None, bob_level: int) -> None:
                    for _ in range(int(seconds / 0.02)):
                        if ann_level is not None:
                            ann.send_rtp(ann_stream.opus_frame(level=ann_level))
                        bob.send_rtp(bob_stream.opus_frame(level=bob_level))
                        await trio.sleep(0.02)

                def speakers() -> list[str]:
                    return [e.producer_id for e in events if isinstance(e, ActiveSpeaker)]

                await talk(1.5, 25, 90)  # Ann talks (-25 dBov), Bob is quiet (-90)
                assert speakers() == [ann_producer]
                await talk(0.5, 25, 20)  # Bob louder, but not for long enough
                assert speakers() == [ann_producer]
                await talk(2.5, None, 20)  # Ann stops sending (DTX), Bob goes on
                assert speakers() == [ann_producer, bob_producer]
                last = [e for e in events if isinstance(e, ActiveSpeaker)][-1]
                assert -30 < last.volume < -15
