"""Hypothesis: every packet type survives build -> parse, and garbage raises only BadPacket."""

from __future__ import annotations

import contextlib
import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.errors import BadPacket
from trio_sfu.rtcp import (
    Bye,
    Fir,
    GenericNack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    RtcpPacket,
    Sdes,
    SdesChunk,
    SenderReport,
    TransportCcFeedback,
    UnknownRtcp,
    build_rtcp,
    nack_pairs_from_seqs,
    parse_rtcp_untrusted,
    seqs_from_nack_pairs,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
words = st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4])

blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=u8,
    cumulative_lost=st.integers(-0x80_0000, 0x7F_FFFF),
    highest_seq=u32,
    jitter=u32,
    lsr=u32,
    dlsr=u32,
)
block_lists = st.lists(blocks, max_size=31).map(tuple)
sdes_items = st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=255)), max_size=4).map(
    tuple
)

packets: st.SearchStrategy[RtcpPacket] = st.one_of(
    st.builds(
        SenderReport,
        ssrc=u32,
        ntp_timestamp=st.integers(0, (1 << 64) - 1),
        rtp_timestamp=u32,
        packet_count=u32,
        octet_count=u32,
        reports=block_lists,
        extension=words,
    ),
    st.builds(ReceiverReport, ssrc=u32, reports=block_lists, extension=words),
    st.builds(
        Sdes, st.lists(st.builds(SdesChunk, ssrc=u32, items=sdes_items), max_size=31).map(tuple)
    ),
    st.builds(
        Bye,
        st.lists(u32, max_size=31).map(tuple),
        st.none() | st.binary(max_size=255),
    ),
    st.builds(GenericNack, u32, u32, st.lists(st.tuples(u16, u16), max_size=20).map(tuple)),
    st.builds(
        TransportCcFeedback,
        sender_ssrc=u32,
        media_ssrc=u32,
        base_seq=u16,
        reference_time=st.integers(-0x80_0000, 0x7F_FFFF),
        fb_pkt_count=u8,
        recv_deltas=st.lists(
            st.none() | st.integers(0, 255) | st.integers(-0x8000, 0x7FFF), max_size=300
        ).map(tuple),
    ),
    st.builds(Pli, u32, u32),
    st.builds(Fir, u32, st.lists(st.tuples(u32, u8), max_size=5).map(tuple), u32),
    st.builds(
        Remb,
        u32,
        st.builds(lambda m, e: m << e, st.integers(0, 0x3_FFFF), st.integers(0, 63)),
        st.lists(u32, max_size=255).map(tuple),
        u32,
    ),
    st.builds(
        lambda pt, fmt, body: UnknownRtcp(
            pt, fmt, struct.pack("!BBH", 0x80 | fmt, pt, len(body) // 4) + body
        ),
        st.sampled_from([204, 207, 192, 210]),
        st.integers(0, 31),
        words,
    ),
)


@settings(max_examples=300)
@given(st.lists(packets, min_size=1, max_size=5))
def test_build_parse_round_trip(compound: list[RtcpPacket]) -> None:
    data = build_rtcp(compound)
    assert len(data) % 4 == 0
    assert parse_rtcp_untrusted(data) == compound
    assert build_rtcp(parse_rtcp_untrusted(data)) == data


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_bad_packet(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        parse_rtcp_untrusted(data)


@st.composite
def plausible_packets(draw: st.DrawFn) -> bytes:
    """A header that mostly makes sense over a random body: reaches the body parsers."""
    first = draw(st.integers(0x80, 0xBF))
    packet_type = draw(st.sampled_from([200, 201, 202, 203, 204, 205, 206, 207]))
    body = draw(st.binary(max_size=120))
    length = draw(st.just(len(body) // 4) | st.integers(0, 40))
    return struct.pack("!BBH", first, packet_type, length) + body


@settings(max_examples=500)
@given(st.lists(plausible_packets(), min_size=1, max_size=3).map(b"".join))
def test_plausible_garbage_raises_only_bad_packet(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        parse_rtcp_untrusted(data)


@settings(max_examples=300)
@given(u16, st.lists(st.integers(0, 200), max_size=60))
def test_nack_pairs_round_trip_across_the_wrap(start: int, offsets: list[int]) -> None:
    seqs = [(start + offset) & 0xFFFF for offset in sorted(set(offsets))]
    pairs = nack_pairs_from_seqs(seqs)
    assert seqs_from_nack_pairs(pairs) == seqs
    assert all(0 <= pid <= 0xFFFF and 0 <= blp <= 0xFFFF for pid, blp in pairs)
    # In order, no pair could have been merged into its predecessor.
    for (pid, _), (next_pid, _) in itertools.pairwise(pairs):
        assert (next_pid - pid) & 0xFFFF > 16
