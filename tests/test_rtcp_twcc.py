"""Transport-wide CC feedback (RTPFB FMT 15) against hand-encoded vectors.

Chunk encodings were worked out by hand from draft-holmer-rmcat-transport-wide-cc-
extensions-01 section 3.1: run length chunk ``0 SS LLLLLLLLLLLLL``, status vector chunk
``1 0 <14 one-bit symbols>`` or ``1 1 <7 two-bit symbols>``.
"""

from __future__ import annotations

import pytest

from trio_sfu.errors import BadPacket
from trio_sfu.rtcp import TransportCcFeedback, build_rtcp, parse_rtcp_untrusted


def h(text: str) -> bytes:
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


# 36 packets from base seq 65534 (so the wrap to 0 is inside):
#   idx 0-14   received, small delta 4 (1 ms) each           -> run length chunk
#   idx 15-28  0 1 0 1 1 0 0 0 0 0 0 0 0 1                     -> 1-bit status vector
#   idx 29-35  2 1 0 2 1 1 1 (large 256, small 3, lost,
#              negative -4, small 1, 2, 3)                     -> 2-bit status vector
TWCC_HEX = """
    8f cd 00 0d   # V=2 FMT=15, PT=205 RTPFB, length 13 (56 bytes)
    00 00 00 01   # SSRC of packet sender
    11 22 33 44   # SSRC of media source
    ff fe         # base sequence number 65534
    00 24         # packet status count 36
    01 23 45      # reference time 0x012345 * 64 ms
    07            # feedback packet count 7
    20 0f         # 0|01|0000000001111: run of 15 "received, small delta"
    96 01         # 1|0|01011000000001: 14 one-bit symbols
    e4 95         # 1|1|10 01 00 10 01 01 01: 7 two-bit symbols
    04 04 04 04 04 04 04 04 04 04 04 04 04 04 04   # idx 0-14: 1 ms each
    08            # idx 16: 2 ms
    00            # idx 18: 0
    ff            # idx 19: 63.75 ms, the largest small delta
    01            # idx 28
    01 00         # idx 29: large delta 256 (64 ms)
    03            # idx 30
    ff fc         # idx 32: -4 (-1 ms), large because negative
    01 02 03      # idx 33-35
    00 00 00      # zero padding to 32 bits
"""
DELTAS: tuple[int | None, ...] = (
    (4,) * 15
    + (None, 8, None, 0, 255, None, None, None, None, None, None, None, None, 1)
    + (256, 3, None, -4, 1, 2, 3)
)
TWCC = TransportCcFeedback(
    sender_ssrc=1,
    media_ssrc=0x11223344,
    base_seq=65534,
    reference_time=0x012345,
    fb_pkt_count=7,
    recv_deltas=DELTAS,
)


def test_vector_parses_and_builds() -> None:
    data = h(TWCC_HEX)
    assert parse_rtcp_untrusted(data) == [TWCC]
    assert build_rtcp([TWCC]) == data


def test_padding_bit_variant_parses_too() -> None:
    # libwebrtc pads with the RTCP padding bit instead: last octet = padding length.
    data = bytearray(h(TWCC_HEX))
    data[0] |= 0x20
    data[-1] = 3
    assert parse_rtcp_untrusted(bytes(data)) == [TWCC]


def test_arrival_times() -> None:
    arrivals = TWCC.arrivals_us()
    base = 0x012345 * 64_000
    assert arrivals[0] == (65534, base + 1_000)
    assert arrivals[1] == (65535, base + 2_000)
    assert arrivals[2] == (0, base + 3_000)
    assert arrivals[14] == (12, base + 15_000)
    assert arrivals[15] == (13, None)
    assert arrivals[16] == (14, base + 17_000)
    assert arrivals[19] == (17, base + 17_000 + 63_750)
    assert arrivals[29] == (27, base + 17_000 + 63_750 + 250 + 64_000)
    assert arrivals[32] == (30, base + 17_000 + 63_750 + 250 + 64_000 + 750 - 1_000)


def test_two_bit_vector_at_the_end_is_padded() -> None:
    packet = TransportCcFeedback(2, 3, 100, 0, 0, (300, 1, None))
    data = h(
        """
        8f cd 00 06   # length 6 (28 bytes)
        00 00 00 02 00 00 00 03
        00 64 00 03   # base seq 100, 3 packets
        00 00 00 00   # reference time 0, fb count 0
        e4 00         # 1|1|10 01 00 00 00 00 00: three symbols, four padding symbols
        01 2c         # large delta 300
        01            # small delta 1
        00 00 00      # zero padding: 25 bytes -> 28
        """
    )
    assert build_rtcp([packet]) == data
    assert parse_rtcp_untrusted(data) == [packet]


def test_long_runs_and_negative_reference_time() -> None:
    # 20 lost then 30 received with delta 0: two run length chunks.
    packet = TransportCcFeedback(2, 3, 7, -2, 255, (None,) * 20 + (0,) * 30)
    data = h(
        """
        8f cd 00 0d   # length 13 (56 bytes)
        00 00 00 02 00 00 00 03
        00 07 00 32   # base seq 7, 50 packets
        ff ff fe ff   # reference time -2 (24-bit two's complement), fb count 255
        00 14         # 0|00|0000000010100: 20 not received
        20 1e         # 0|01|0000000011110: 30 received, small delta
        """
        + "00" * 30  # the 30 deltas
        + "00 00"  # padding: 20 + 4 + 30 = 54 -> 56
    )
    assert build_rtcp([packet]) == data
    assert parse_rtcp_untrusted(data) == [packet]
    assert packet.arrivals_us()[20] == (27, -2 * 64_000)


def test_run_longer_than_the_status_count_is_cut() -> None:
    data = h(
        """
        8f cd 00 05
        00 00 00 02 00 00 00 03
        00 00 00 02   # base seq 0, 2 packets
        00 00 00 00
        00 05         # run of 5 "not received": only 2 count
        00 00         # padding
        """
    )
    assert parse_rtcp_untrusted(data) == [TransportCcFeedback(2, 3, 0, 0, 0, (None, None))]


def test_from_arrivals_rounds_without_drift() -> None:
    # Arrivals 1.1 ms apart round to 4 or 5 units; the sum stays within 125 µs.
    arrivals: list[int | None] = [1_000_000 + 1_100 * i for i in range(20)]
    arrivals[3] = None
    packet = TransportCcFeedback.from_arrivals(9, 10, 500, 1, arrivals)
    assert packet.reference_time == 1_000_000 // 64_000
    assert packet.recv_deltas[3] is None
    for (_seq, got), want in zip(packet.arrivals_us(), arrivals, strict=True):
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            assert abs(got - want) <= 125
    assert parse_rtcp_untrusted(build_rtcp([packet])) == [packet]


def test_from_arrivals_wraps_the_reference_time_and_rejects_long_gaps() -> None:
    far = (1 << 23) * 64_000  # reference 2^23: wraps to -2^23 on the wire
    packet = TransportCcFeedback.from_arrivals(1, 2, 0, 0, [far + 250])
    assert packet.reference_time == -(1 << 23)
    assert packet.recv_deltas == (1,)
    with pytest.raises(ValueError):
        TransportCcFeedback.from_arrivals(1, 2, 0, 0, [0, 9_000_000])
    with pytest.raises(ValueError):
        build_rtcp([TransportCcFeedback(1, 2, 0, 1 << 23, 0, ())])
    with pytest.raises(ValueError):
        build_rtcp([TransportCcFeedback(1, 2, 0, 0, 0, (40_000,))])


@pytest.mark.parametrize(
    "hex_text",
    [
        "8fcd0003 00000001 00000002 00000001",  # fixed part cut short
        "8fcd0004 00000001 00000002 00000001 00000000",  # 1 packet but no chunk
        # With P=1 the last octet counts padding, so the body ends before the deltas:
        "afcd0005 00000001 00000002 00000001 00000000 20010002",  # small delta missing
        "afcd0005 00000001 00000002 00000001 00000000 40010101",  # large delta cut short
        "8fcd0005 00000001 00000002 00000001 00000000 60010000",  # reserved symbol 3
        "8fcd0005 00000001 00000002 00000001 00000000 f0000000",  # 2-bit vector: symbol 3
    ],
)
def test_malformed(hex_text: str) -> None:
    with pytest.raises(BadPacket):
        parse_rtcp_untrusted(bytes.fromhex(hex_text.replace(" ", "")))


def test_feedback_packet_count_is_8_bits() -> None:
    assert TransportCcFeedback.from_arrivals(1, 2, 0, 257, [0]).fb_pkt_count == 1
    with pytest.raises(ValueError):
        build_rtcp([TransportCcFeedback(1, 2, 0, 0, 256, ())])
