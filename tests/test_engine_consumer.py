"""Producer and Consumer without sockets: packets in through ``Producer.receive_rtp``, what
the consumer sends and the RTCP the producer sends upstream captured in lists."""

from __future__ import annotations

import itertools
import random
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_engine_media import device_caps, fixture
from trio_sfu.client.synthetic import (
    SyntheticStream,
    audio_rtp_parameters,
    vp8_simulcast_rtp_parameters,
)
from trio_sfu.engine.consumer import Consumer
from trio_sfu.engine.layers import LEVEL_PAUSED, LEVEL_R0, LEVEL_R2
from trio_sfu.engine.producer import KEYFRAME_REQUEST_INTERVAL, KEYFRAME_RETRY_WAITING, Producer
from trio_sfu.ortc import negotiation
from trio_sfu.ortc.types import (
    RtpCodecParameters,
    RtpEncodingParameters,
    RtpParameters,
    RtxParameters,
)
from trio_sfu.rtcp import Fir, GenericNack, Pli, parse_rtcp_untrusted
from trio_sfu.rtp import h264, vp8
from trio_sfu.rtp.packet import RtpPacket
from trio_sfu.rtp.rtx import rtx_unwrap_untrusted
from trio_sfu.wire import structure_untrusted

ROUTER_CAPS = negotiation.generate_router_rtp_capabilities(list(negotiation.DEFAULT_MEDIA_CODECS))


@attrs.define
class Pair:
    producer: Producer
    consumer: Consumer
    streams: list[SyntheticStream]
    sent: list[bytes]
    upstream: list[Any]
    layer_events: list[tuple[int | None, int | None]]

    def feed(self, index: int, packets: list[bytes], now: float) -> None:
        for packet in packets:
            self.producer.receive_rtp(self.producer.streams[index], packet, now)

    def out(self) -> list[RtpPacket]:
        return [RtpPacket.parse_untrusted(p) for p in self.sent]

    def keyframe_requests(self) -> list[int]:
        ssrcs: list[int] = []
        for packet in self.upstream:
            if isinstance(packet, Pli):
                ssrcs.append(packet.media_ssrc)
            elif isinstance(packet, Fir):
                ssrcs += [ssrc for ssrc, _ in packet.entries]
        return ssrcs


def make_pair(
    parameters: RtpParameters, kind: str = "video", *, paused: bool = False, now: float = 0.0
) -> Pair:
    mapping = negotiation.get_producer_rtp_mapping(parameters, ROUTER_CAPS, kind=kind)  # type: ignore[arg-type]
    consumable = negotiation.get_consumable_rtp_parameters(
        kind,  # type: ignore[arg-type]
        parameters,
        ROUTER_CAPS,
        mapping,
    )
    upstream: list[Any] = []
    producer = Producer(
        producer_id="p",
        transport_id="t1",
        kind=kind,  # type: ignore[arg-type]
        rtp_parameters=parameters,
        consumable_rtp_parameters=consumable,
        mapping=mapping,
        paused=False,
        send_rtcp=lambda data: upstream.extend(parse_rtcp_untrusted(data)) or True,
    )
    rng = random.Random(5)
    codec = next(c for c in parameters.codecs if not negotiation.is_rtx(c.mime_type))
    streams = []
    for index, encoding in enumerate(parameters.encodings):
        stream = SyntheticStream(
            ssrc=encoding.ssrc or 1000 + index,
            payload_type=codec.payload_type,
            clock_rate=codec.clock_rate,
            rng=rng,
        )
        producer.streams[index].ssrc = stream.ssrc
        streams.append(stream)
    consumer_parameters = negotiation.get_consumer_rtp_parameters(
        consumable, device_caps(bandwidth_feedback=False), mid="0", rng=rng
    )
    sent: list[bytes] = []
    events: list[tuple[int | None, int | None]] = []
    consumer = Consumer(
        consumer_id="c",
        producer=producer,
        transport_id="t2",
        rtp_parameters=consumer_parameters,
        paused=paused,
        send_rtp=lambda data: sent.append(data) or True,
        now=now,
        on_layers_changed=lambda c: events.append((c.current_spatial, c.current_temporal)),
    )
    producer.consumers.add(consumer)
    if not paused:
        consumer.start(now)
    return Pair(producer, consumer, streams, sent, upstream, events)


def test_vp8_temporal_layers_drop_without_gaps_and_go_up_at_layer_sync() -> None:
    parameters = vp8_simulcast_rtp_parameters(layers=1)  # one stream, L1T3
    pair = make_pair(parameters)
    stream = pair.streams[0]
    now = 0.0
    frames = []
    for n in range(24):
        frames.append(stream.vp8_frame(keyframe=n == 0, tid=None, packets=2, size=300))
    for n in range(8):
        pair.feed(0, frames[n], now + n / 30)
    assert pair.layer_events == [(0, 2)]
    pair.consumer.set_preferred_layers(0, 0, now)
    for n in range(8, 16):
        pair.feed(0, frames[n], now + n / 30)
    assert pair.layer_events[-1] == (0, 0)
    pair.consumer.set_preferred_layers(0, 2, now)
    for n in range(16, 24):
        pair.feed(0, frames[n], now + n / 30)
    out = pair.out()
    seqs = [p.sequence_number for p in out]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]
    infos = [vp8.summarize_untrusted(p.payload) for p in out]
    starts = [i for i in infos if i.start_of_frame]
    pids = [i.picture_id for i in starts]
    assert pids == [(pids[0] + i) & 0x7FFF for i in range(len(pids))]  # type: ignore[operator]
    tids = [i.tid for i in starts]
    # Frames 0-7 all; 8-15 only TID 0 (frames 8 and 12); from 16 on: up at the first
    # layer-sync frame (17, TID 2 with Y), then everything.
    assert tids == [0, 2, 1, 2, 0, 2, 1, 2, 0, 0, 0, 2, 1, 2, 0, 2, 1, 2]
    assert pair.layer_events == [(0, 2), (0, 0), (0, 2)]
    assert pair.consumer.dropped_temporal == 12  # six frames of two packets


def h264_simulcast() -> RtpParameters:
    return structure_untrusted(
        fixture("produce-video-h264-simulcast.json")["rtpParameters"], RtpParameters
    )


def h264_frame(stream: SyntheticStream, keyframe: bool) -> list[bytes]:
    if keyframe:
        sps = bytes([0x67, 0x42, 0xE0, 0x1F])  # NAL type 7
        pps = bytes([0x68, 0xCE, 0x3C, 0x80])  # NAL type 8
        idr = bytes([0x65]) + bytes(500)  # NAL type 5
        packets = [stream.packet(h264.build_stap_a([sps, pps]), marker=False)]
        packets += [
            stream.packet(p, marker=i == 2) for i, p in enumerate(h264.build_fu_a(idr, 200))
        ]
    else:
        packets = [stream.packet(bytes([0x41]) + bytes(300))]  # NAL type 1
    stream.advance(1 / 30)
    return packets


def test_h264_simulcast_switches_spatially_at_idr_and_never_filters_temporally() -> None:
    pair = make_pair(h264_simulcast())
    consumer = pair.consumer
    assert not consumer.temporal_filtering
    now = 0.0
    for index in range(3):
        pair.feed(index, h264_frame(pair.streams[index], True), now)
    assert pair.layer_events == [(2, 2)]
    consumer.set_preferred_layers(0, None, now + 0.1)
    # One request when the consumer started (for r2), one now for r0.
    assert pair.keyframe_requests() == [pair.streams[2].ssrc, pair.streams[0].ssrc]
    # r2 goes on until r0's keyframe comes; r0's delta frames are not forwarded.
    for index in range(3):
        pair.feed(index, h264_frame(pair.streams[index], False), now + 0.1)
    assert consumer.current_spatial == 2
    pair.feed(0, h264_frame(pair.streams[0], True), now + 0.2)
    pair.feed(2, h264_frame(pair.streams[2], False), now + 0.2)
    pair.feed(0, h264_frame(pair.streams[0], False), now + 0.2)
    assert pair.layer_events == [(2, 2), (0, 2)]
    out = pair.out()
    seqs = [p.sequence_number for p in out]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]
    ssrc_of = [p.payload for p in out]
    # 4 packets (r2 keyframe) + 1 (r2 delta) + 4 (r0 keyframe: STAP-A first) + 1 (r0 delta)
    assert len(out) == 10
    assert h264.is_keyframe(ssrc_of[5]) and ssrc_of[5][0] & 0x1F == h264.STAP_A


def test_network_pause_stops_video_and_keyframe_resumes_it() -> None:
    pair = make_pair(vp8_simulcast_rtp_parameters())
    consumer = pair.consumer
    for index in range(3):
        pair.feed(index, pair.streams[index].vp8_frame(keyframe=True), 0.0)
    # A keyframe starts every temporal layer: the target (the highest) at once.
    assert pair.layer_events == [(2, 2)]
    sent = len(pair.sent)
    consumer.set_network_level(LEVEL_PAUSED, 0.1)
    assert pair.layer_events[-1] == (None, None)
    assert consumer.target_spatial is None
    for index in range(3):
        pair.feed(index, pair.streams[index].vp8_frame(keyframe=True), 0.2)
    assert len(pair.sent) == sent
    requests = len(pair.keyframe_requests())
    consumer.set_network_level(LEVEL_R0, 0.3)
    assert pair.keyframe_requests()[requests:] == [pair.streams[0].ssrc]
    pair.feed(0, pair.streams[0].vp8_frame(keyframe=False), 0.35)  # not a keyframe: waits
    assert len(pair.sent) == sent
    pair.feed(0, pair.streams[0].vp8_frame(keyframe=True), 0.4)
    assert pair.layer_events[-1] == (0, 2)
    consumer.set_network_level(LEVEL_R2, 0.5)
    out = pair.out()
    seqs = [p.sequence_number for p in out]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]


def test_audio_pause_and_resume_keep_the_sequence() -> None:
    pair = make_pair(audio_rtp_parameters(ssrc=4242), kind="audio")
    stream = pair.streams[0]
    for i in range(5):
        pair.feed(0, [stream.opus_frame()], i * 0.02)
    pair.consumer.pause()
    for i in range(5, 10):
        pair.feed(0, [stream.opus_frame()], i * 0.02)
    pair.consumer.resume(0.2)
    for i in range(10, 15):
        pair.feed(0, [stream.opus_frame()], i * 0.02)
    out = pair.out()
    assert len(out) == 10
    seqs = [p.sequence_number for p in out]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(10)]
    # The timestamps jump over the pause (five frames of 960), no more.
    assert (out[5].timestamp - out[4].timestamp) & 0xFFFFFFFF == 6 * 960
    assert pair.layer_events == []  # audio has no layers


def rtx_vp8() -> RtpParameters:
    base = vp8_simulcast_rtp_parameters(layers=1)
    return attrs.evolve(
        base,
        encodings=[
            RtpEncodingParameters(ssrc=7000, rtx=RtxParameters(ssrc=7001), scalability_mode="L1T3")
        ],
        header_extensions=[],
    )


def test_upstream_gaps_are_nacked_and_rtx_repairs_are_forwarded_once() -> None:
    pair = make_pair(rtx_vp8())
    producer, stream = pair.producer, pair.streams[0]
    stream.rtx = (7001, 97)
    frames = [stream.vp8_frame(keyframe=n == 0, size=200) for n in range(6)]
    lost = frames[2][0]
    for n, frame in enumerate(frames):
        if n != 2:
            pair.feed(0, frame, n * 0.033)
    (nack,) = producer.nack_feedback(0.2)
    assert isinstance(nack, GenericNack)
    assert nack.media_ssrc == 7000 and nack.lost_seqs() == [(lost[2] << 8) | lost[3]]
    repaired = stream.retransmit((lost[2] << 8) | lost[3])
    assert repaired is not None and repaired[8:12] == (7001).to_bytes(4, "big")
    producer.receive_rtx(producer.streams[0], repaired, 0.25)
    producer.receive_rtx(producer.streams[0], repaired, 0.26)  # a duplicate: dropped
    assert producer.streams[0].retransmitted == 1
    out = pair.out()
    assert len(out) == 6
    # The repaired packet went out late, under the sequence number of its place.
    seqs = [p.sequence_number for p in out]
    assert sorted(seqs) == [(min(seqs) + i) & 0xFFFF for i in range(6)]
    assert seqs[-1] == (seqs[1] + 1) & 0xFFFF
    assert producer.nack_feedback(0.5) == []


def test_keyframe_requests_are_throttled_until_answered() -> None:
    pair = make_pair(rtx_vp8())
    producer = pair.producer
    assert producer.request_keyframe(0, 1.0)
    assert not producer.request_keyframe(0, 1.5)
    assert producer.request_keyframe(0, 1.0 + KEYFRAME_REQUEST_INTERVAL)
    # A keyframe answers the request: the next one may go out at once.
    pair.feed(0, pair.streams[0].vp8_frame(keyframe=True), 2.1)
    assert producer.request_keyframe(0, 2.2)
    assert all(isinstance(p, Pli) for p in pair.upstream)


def test_a_switch_waiting_for_its_keyframe_asks_again_every_300_ms() -> None:
    """A publisher may drop a keyframe request (libwebrtc drops one that comes within
    300 ms of the last it acted on, across the streams of a track): while the consumer
    waits to switch down it keeps forwarding r2 and asks for r0 again every
    KEYFRAME_RETRY_WAITING, not every KEYFRAME_REQUEST_INTERVAL. Once nobody waits, a
    subscriber's PLIs reach the publisher at most once per KEYFRAME_REQUEST_INTERVAL."""
    assert 0.3 <= KEYFRAME_RETRY_WAITING < KEYFRAME_REQUEST_INTERVAL
    pair = make_pair(vp8_simulcast_rtp_parameters())
    consumer, streams = pair.consumer, pair.streams
    for index in range(3):
        pair.feed(index, streams[index].vp8_frame(keyframe=True), 0.0)
    assert pair.layer_events == [(2, 2)]
    r0 = streams[0].ssrc

    def requests_for_r0() -> int:
        return pair.keyframe_requests().count(r0)

    consumer.set_preferred_layers(0, None, 1.0)
    assert requests_for_r0() == 1
    asked = [1.0]
    now = 1.0
    for frame in range(1, 46):  # 1.5 s at 30 fps, no keyframe on any stream
        now = 1.0 + frame / 30
        before = requests_for_r0()
        for index in range(3):
            pair.feed(index, streams[index].vp8_frame(keyframe=False), now)
        if requests_for_r0() > before:
            asked.append(now)
    assert consumer.current_spatial == 2  # still forwarding r2 while it waits
    assert len(asked) >= 5, asked
    for earlier, later in itertools.pairwise(asked):
        # At the first r0 packet at least KEYFRAME_RETRY_WAITING after the last request.
        assert -1e-9 <= later - earlier - KEYFRAME_RETRY_WAITING <= 1 / 30
    pair.feed(0, streams[0].vp8_frame(keyframe=True), now + 0.01)
    assert pair.layer_events[-1] == (0, 2)

    asked = []
    start = now + 0.02
    for tick in range(70):  # a subscriber's PLI every 50 ms for 3.5 s; nobody waits
        at = start + tick * 0.05
        before = requests_for_r0()
        consumer.request_keyframe(at)
        if requests_for_r0() > before:
            asked.append(at)
    assert len(asked) == 4, asked
    for earlier, later in itertools.pairwise(asked):
        assert 0 <= later - earlier - KEYFRAME_REQUEST_INTERVAL <= 0.05 + 1e-9


def test_fir_when_the_publisher_negotiated_only_fir() -> None:
    parameters = rtx_vp8()
    codecs = [
        attrs.evolve(c, rtcp_feedback=[fb for fb in c.rtcp_feedback if fb.parameter != "pli"])
        if isinstance(c, RtpCodecParameters)
        else c
        for c in parameters.codecs
    ]
    pair = make_pair(attrs.evolve(parameters, codecs=codecs), paused=True)
    assert pair.producer.request_keyframe(0, 5.0)
    assert pair.producer.request_keyframe(0, 7.0)
    firs = [p for p in pair.upstream if isinstance(p, Fir)]
    # The command sequence number counts up per request (RFC 5104 section 4.3.1).
    assert [f.entries for f in firs] == [((7000, 1),), ((7000, 2),)]


def test_sender_report_timestamp_follows_the_publishers_sender_report() -> None:
    pair = make_pair(rtx_vp8())
    stream = pair.streams[0]
    frame = stream.vp8_frame(keyframe=True, capture_time=10.0)
    pair.feed(0, frame, 100.0)
    out = pair.out()[0]
    # The publisher said: RTP time ts_base + 10 s is now (router time 100.5).
    report = stream.sender_report(ntp=0x1234_5678_0000_0000, capture_time=10.5)
    pair.producer.receive_sender_report(
        pair.producer.streams[0], report.ntp_timestamp, report.rtp_timestamp, 100.5
    )
    # At 101.0 the stream is at capture 11.0: half a second after the frame sent.
    assert pair.consumer.sender_report_timestamp(101.0) == (out.timestamp + 90000) & 0xFFFFFFFF


@pytest.mark.parametrize("level", [LEVEL_PAUSED, LEVEL_R0])
def test_audio_ignores_the_network_level(level: int) -> None:
    pair = make_pair(audio_rtp_parameters(ssrc=4242), kind="audio")
    pair.consumer.set_network_level(level, 0.0)
    pair.feed(0, [pair.streams[0].opus_frame()], 0.0)
    assert len(pair.sent) == 1


@settings(max_examples=200, deadline=None)
@given(
    header=st.binary(min_size=12, max_size=12),
    body=st.binary(max_size=64),
    rtx=st.booleans(),
    codec=st.sampled_from(["vp8", "h264"]),
)
def test_any_bytes_from_a_publisher_are_dropped_or_forwarded_never_raise(
    header: bytes, body: bytes, rtx: bool, codec: str
) -> None:
    parameters = rtx_vp8() if codec == "vp8" else h264_simulcast()
    pair = make_pair(parameters)
    stream = pair.producer.streams[0]
    # Keep the version and this stream's SSRC (the router routes by them); the rest is
    # whatever the network made of it.
    packet = bytes([0x80 | (header[0] & 0x3F)]) + header[1:8] + stream.ssrc.to_bytes(4, "big")
    packet += body
    if rtx:
        pair.producer.receive_rtx(stream, packet, 1.0)
    else:
        pair.producer.receive_rtp(stream, packet, 1.0)
    for data in pair.sent:
        RtpPacket.parse_untrusted(data)  # whatever went out is a well-formed packet


def test_padding_on_the_rtx_stream_probes_without_retransmitting_anything() -> None:
    pair = make_pair(vp8_simulcast_rtp_parameters())
    consumer = pair.consumer
    assert consumer.rtx_ssrc is not None and consumer.rtx_payload_type is not None
    assert consumer.padding_packet(0.0, 100) is None  # nothing sent yet: no header to use
    pair.feed(2, pair.streams[2].vp8_frame(keyframe=True), 0.0)
    last = pair.out()[-1]
    consumer.set_network_level(LEVEL_PAUSED, 0.1)
    first, second = consumer.padding_packet(0.2, 100), consumer.padding_packet(0.2, 100)
    assert first is not None and second is not None
    for raw in (first, second):
        packet = RtpPacket.parse_untrusted(bytes(raw))
        assert (packet.ssrc, packet.payload_type) == (consumer.rtx_ssrc, consumer.rtx_payload_type)
        assert packet.payload == b"" and len(packet.padding) == 100
        assert not packet.marker and packet.timestamp == last.timestamp
        # An RTX packet without a payload retransmits nothing: a receiver drops it.
        assert rtx_unwrap_untrusted(raw, payload_type=last.payload_type, ssrc=consumer.ssrc) is None
    numbers = [RtpPacket.parse_untrusted(bytes(p)).sequence_number for p in (first, second)]
    assert numbers[1] == (numbers[0] + 1) & 0xFFFF
    assert len(pair.sent) == len(pair.out())  # nothing went out on the media stream


def test_nacks_are_counted_once_per_sequence_number_and_interval() -> None:
    pair = make_pair(vp8_simulcast_rtp_parameters())
    consumer = pair.consumer
    pair.feed(2, pair.streams[2].vp8_frame(keyframe=True), 0.0)
    seq = pair.out()[-1].sequence_number
    consumer.retransmit([seq, seq], 0.1)
    consumer.retransmit([seq, (seq - 1) & 0xFFFF], 0.2)
    assert consumer.nacks_total == 2
    assert consumer.loss_sample()[3] == 2
    consumer.retransmit([seq], 0.3)  # asked again in the next interval: counted again
    assert consumer.nacks_total == 3
