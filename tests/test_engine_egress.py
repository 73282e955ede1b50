"""The shared egress path: one header-extension rewrite per incoming packet for all the
consumers of a producer (HeaderTemplate), and NACK answers rebuilt from the producer's
packets (ForwardHistory) instead of per-consumer copies."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_engine_consumer import ROUTER_CAPS
from tests.test_engine_media import device_caps
from trio_sfu.client.synthetic import SyntheticStream, vp8_simulcast_rtp_parameters
from trio_sfu.engine.bandwidth import SendSideEstimator
from trio_sfu.engine.consumer import Consumer
from trio_sfu.engine.layers import LEVEL_R0, LEVEL_R2
from trio_sfu.engine.producer import Producer
from trio_sfu.ortc import negotiation
from trio_sfu.ortc.types import RtpParameters
from trio_sfu.rtp import vp8
from trio_sfu.rtp.egress import (
    NO_VP8_IDS,
    ForwardHistory,
    HeaderTemplate,
    pack_vp8_ids,
    unpack_vp8_ids,
)
from trio_sfu.rtp.extensions import MID_URI, RID_URI, TRANSPORT_WIDE_CC_URI
from trio_sfu.rtp.packet import RtpPacket, rewrite_extensions_untrusted
from trio_sfu.rtp.rtx import rtx_unwrap_untrusted

# -- ForwardHistory and the VP8 id packing -------------------------------------------------


@given(
    st.one_of(st.none(), st.integers(0, 0x7FFF)),
    st.one_of(st.none(), st.integers(0, 0xFF)),
)
def test_vp8_ids_pack_and_unpack(picture_id: int | None, tl0picidx: int | None) -> None:
    packed = pack_vp8_ids(picture_id, tl0picidx)
    assert unpack_vp8_ids(packed) == (picture_id, tl0picidx)
    assert (packed == NO_VP8_IDS) == (picture_id is None and tl0picidx is None)


def test_history_finds_the_newest_size_seqs_across_the_wrap() -> None:
    history = ForwardHistory(16)
    originals = [bytes([n]) * 20 for n in range(40)]
    for n, original in enumerate(originals):
        history.store((0xFFF0 + n) & 0xFFFF, original, n * 3000, n)
    for n in range(24, 40):
        entry = history.get((0xFFF0 + n) & 0xFFFF)
        assert entry is not None
        assert entry[0] is originals[n]  # the producer's packet itself, not a copy
        assert entry[1:] == (n * 3000, n)
    assert history.get((0xFFF0 + 23) & 0xFFFF) is None  # pushed out
    assert history.get((0xFFF0 + 40) & 0xFFFF) is None  # never sent


def test_history_keeps_late_stores_and_restarts_on_a_far_jump() -> None:
    history = ForwardHistory(16)
    history.store(100, b"a" * 12, 1, 0)
    history.store(102, b"c" * 12, 3, 0)
    history.store(101, b"b" * 12, 2, 0)  # late, within the window
    assert [history.get(s)[1] for s in (100, 101, 102)] == [1, 2, 3]  # type: ignore[index]
    history.store(5000, b"x" * 12, 9, 0)  # a restarted stream
    assert history.get(5000) is not None
    assert history.get(102) is None
    history.clear()
    assert history.get(5000) is None


@settings(max_examples=300)
@given(
    st.sampled_from([4, 16, 64]),
    st.integers(0, 0xFFFF),
    st.lists(
        st.one_of(
            st.just(1),
            st.integers(2, 80),  # a gap
            st.integers(-80, 0),  # late, or the same again
            st.integers(0, 0xFFFF),  # anywhere (a restart, or far behind)
        ),
        max_size=120,
    ),
)
def test_history_answers_as_a_model_that_keeps_everything(
    size: int, first: int, steps: list[int]
) -> None:
    """Whatever order the numbers come in: a number is found, with what was stored for it
    last, exactly while it is among the ``size`` newest (in unwrapped numbering)."""
    history = ForwardHistory(size)
    stored: dict[int, tuple[bytes, int, int]] = {}  # extended number -> entry
    highest = 0x10000 | first
    seq = first
    for n, step in enumerate([0, *steps]):
        seq = (seq + step) & 0xFFFF
        # The model's unwrapping: ahead by less than half the range moves the newest on,
        # behind by less than ``size`` is late, anything else is a restart.
        delta = (seq - highest) & 0xFFFF
        if n == 0:
            ext = highest
        elif delta < 0x8000:
            ext = highest = highest + delta
        elif 0x10000 - delta < size:
            ext = highest - (0x10000 - delta)
        else:
            ext = highest = highest + delta
        entry = (bytes([n & 0xFF]) * 12, n * 90, n)
        stored[ext] = entry
        history.store(seq, entry[0], entry[1], entry[2])
        for behind in range(-2, 2 * size):
            probe = highest - behind
            expected = stored.get(probe) if 0 <= behind < size else None
            assert history.get(probe & 0xFFFF) == expected


def test_history_size_must_be_a_power_of_two() -> None:
    for size in (0, 3, 0x10000):
        with pytest.raises(ValueError):
            ForwardHistory(size)


# -- HeaderTemplate ------------------------------------------------------------------------


def test_template_equals_the_full_rewrite_with_placeholders() -> None:
    stream = SyntheticStream(
        ssrc=1234,
        payload_type=96,
        clock_rate=90000,
        extensions={1: b"0", 10: b"r2", 4: b"\x01\x02\x03"},
        rng=random.Random(1),
    )
    (packet,) = stream.vp8_frame(keyframe=True, size=500)
    id_map = {4: 12}  # 1 (mid) and 10 (rid) are not forwarded
    template = HeaderTemplate(id_map, mid_id=1, mid_size=2, twcc_id=5)
    built = template.build(packet)
    assert built is not None
    out, mid_at, twcc_at = built
    assert out == rewrite_extensions_untrusted(packet, id_map, {1: b"\0\0", 5: b"\0\0"})
    parsed = RtpPacket.parse_untrusted(out)
    assert parsed.extensions == {12: b"\x01\x02\x03", 1: b"\0\0", 5: b"\0\0"}
    assert mid_at > 0 and twcc_at > 0
    # The same packet again: the same template object, no second rewrite.
    assert template.build(packet) is built
    assert template.build_uncached(packet) == built
    # A malformed extension block: no template, no exception.
    broken = bytearray(packet)
    assert broken[12:14] == b"\xbe\xde"  # one-byte elements; the first one at 16
    broken[16] = 0x4F  # element id 4, length 16: overruns the block
    assert template.build(bytes(broken)) is None


# -- consumers sharing it ------------------------------------------------------------------


def _producer(parameters: RtpParameters, sent_upstream: list[bytes]) -> Producer:
    mapping = negotiation.get_producer_rtp_mapping(parameters, ROUTER_CAPS, kind="video")
    consumable = negotiation.get_consumable_rtp_parameters(
        "video", parameters, ROUTER_CAPS, mapping
    )
    return Producer(
        producer_id="p",
        transport_id="t1",
        kind="video",
        rtp_parameters=parameters,
        consumable_rtp_parameters=consumable,
        mapping=mapping,
        paused=False,
        send_rtcp=lambda data: sent_upstream.append(data) or True,
    )


def _simulcast_producer(*, seed: int, first_ssrc: int) -> tuple[Producer, list[SyntheticStream]]:
    """A three-layer VP8 producer (transport-cc) and a synthetic source per layer, each
    sending its rid, SSRCs from ``first_ssrc`` on."""
    parameters = vp8_simulcast_rtp_parameters(mid="1", transport_cc=True)
    producer = _producer(parameters, [])
    rng = random.Random(seed)
    rid_id = next(e.id for e in parameters.header_extensions if e.uri == RID_URI)
    streams = []
    for index, encoding in enumerate(parameters.encodings):
        streams.append(
            SyntheticStream(
                ssrc=first_ssrc + index,
                payload_type=96,
                clock_rate=90000,
                extensions={rid_id: (encoding.rid or "").encode()},
                rng=rng,
            )
        )
        producer.streams[index].ssrc = first_ssrc + index
    return producer, streams


def _consumer(
    producer: Producer, mid: str, sent: list[bytes | bytearray], seed: int
) -> tuple[Consumer, SendSideEstimator]:
    estimator = SendSideEstimator()
    parameters = negotiation.get_consumer_rtp_parameters(
        producer.consumable_rtp_parameters, device_caps(), mid=mid, rng=random.Random(seed)
    )
    consumer = Consumer(
        consumer_id=f"c{mid}",
        producer=producer,
        transport_id=f"t{mid}",
        rtp_parameters=parameters,
        paused=False,
        send_rtp=lambda data: sent.append(data) or True,
        now=0.0,
        estimator=estimator,
    )
    producer.consumers.add(consumer)
    consumer.start(0.0)
    return consumer, estimator


def _ids(consumer: Consumer) -> dict[str, int]:
    return {e.uri: e.id for e in consumer.rtp_parameters.header_extensions}


def test_consumers_share_the_rewrite_and_each_gets_its_own_mid_and_numbers() -> None:
    producer, streams = _simulcast_producer(seed=3, first_ssrc=5000)
    sent_a: list[bytes | bytearray] = []
    sent_b: list[bytes | bytearray] = []
    sent_c: list[bytes | bytearray] = []
    a, estimator_a = _consumer(producer, "0", sent_a, 1)
    b, _ = _consumer(producer, "12", sent_b, 2)
    c, _ = _consumer(producer, "7", sent_c, 3)
    assert a._template is c._template  # same layout: one rewrite per packet for both
    assert a._template is not b._template  # a two-byte MID is another layout
    assert a._payload_types is b._payload_types  # one codec: one payload type map
    assert dict(a._payload_types) == {96: a.payload_type}
    originals: list[bytes] = []
    now = 0.0
    for n in range(30):
        now = n / 30
        for index in (0, 2):
            frame = streams[index].vp8_frame(keyframe=n % 10 == 0, packets=3, size=900, tid=None)
            for packet in frame:
                producer.receive_rtp(producer.streams[index], packet, now)
                if index == 2:
                    originals.append(packet)
    assert a.current_spatial == 2 and b.current_spatial == 2
    for consumer, sent in ((a, sent_a), (b, sent_b), (c, sent_c)):
        assert len(sent) == len(originals) - consumer.dropped_temporal
        ids = _ids(consumer)
        twcc_seqs = []
        for data in sent:
            out = RtpPacket.parse_untrusted(data)
            assert out.ssrc == consumer.ssrc and out.payload_type == consumer.payload_type
            extensions = out.extensions
            assert extensions[ids[MID_URI]] == consumer.rtp_parameters.mid.encode()  # type: ignore[union-attr]
            assert set(extensions) == {ids[MID_URI], ids[TRANSPORT_WIDE_CC_URI]}
            twcc_seqs.append(int.from_bytes(extensions[ids[TRANSPORT_WIDE_CC_URI]]))
        assert twcc_seqs == [(twcc_seqs[0] + i) & 0xFFFF for i in range(len(sent))]
    # What went out is a copy: the shared template was not written into.
    first = RtpPacket.parse_untrusted(sent_a[-1])
    assert first.extensions[_ids(a)[MID_URI]] == b"0"
    assert estimator_a.bytes_sent == sum(len(p) for p in sent_a)


def test_nack_answers_are_rebuilt_exactly_from_the_producers_packets() -> None:
    producer, streams = _simulcast_producer(seed=4, first_ssrc=6000)
    sent: list[bytes | bytearray] = []
    consumer, _ = _consumer(producer, "3", sent, 9)
    assert consumer.rtx_ssrc is not None and consumer._history is not None
    consumer.set_preferred_layers(2, 1, 0.0)  # TID 2 is dropped: gaps closed up
    now = 0.0
    for n in range(60):
        now = n / 30
        if n == 20:
            consumer.set_network_level(LEVEL_R0, now)  # a spatial switch down...
        if n == 40:
            consumer.set_network_level(LEVEL_R2, now)  # ...and back up
        for index in (0, 2):
            keyframe = n % 10 == 0
            for packet in streams[index].vp8_frame(
                keyframe=keyframe, packets=2, size=700, tid=None
            ):
                producer.receive_rtp(producer.streams[index], packet, now)
    assert consumer.layer_switches >= 3 and consumer.dropped_temporal > 0
    ids = _ids(consumer)
    twcc_id = ids[TRANSPORT_WIDE_CC_URI]
    by_seq = {RtpPacket.parse_untrusted(p).sequence_number: p for p in sent}
    assert len(by_seq) == len(sent)
    wanted = sorted(by_seq)[-150:]
    before = len(sent)
    assert consumer.retransmit(wanted, now) == len(wanted)
    rtx_payload_type = consumer.rtx_payload_type
    assert rtx_payload_type is not None
    for seq, data in zip(wanted, sent[before:], strict=True):
        rtx = RtpPacket.parse_untrusted(data)
        assert rtx.ssrc == consumer.rtx_ssrc and rtx.payload_type == rtx_payload_type
        original = rtx_unwrap_untrusted(
            data, payload_type=consumer.payload_type, ssrc=consumer.ssrc
        )
        assert original is not None
        again = RtpPacket.parse_untrusted(original)
        first = RtpPacket.parse_untrusted(by_seq[seq])
        # Byte for byte what went out the first time, but for the transport-wide number.
        assert again.payload == first.payload
        assert (again.sequence_number, again.timestamp, again.marker) == (
            first.sequence_number,
            first.timestamp,
            first.marker,
        )
        drop_twcc = {k: v for k, v in first.extensions.items() if k != twcc_id}
        assert {k: v for k, v in again.extensions.items() if k != twcc_id} == drop_twcc
        info = vp8.summarize_untrusted(again.payload)
        assert info.picture_id is not None
    # A sequence number never sent, or long gone, is not answered.
    assert consumer.retransmit([(min(by_seq) - 5000) & 0xFFFF], now) == 0
    # The loss policy's sample counts each NACKed number once, then starts again.
    assert consumer.retransmit(wanted[:10], now) == 10
    assert consumer.loss_sample()[3] == len(wanted) + 1
    assert consumer.loss_sample()[3] == 0
