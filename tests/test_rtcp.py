"""RTCP packets against hand-written byte vectors (RFC 3550, RFC 4585, RFC 5104, REMB).

Every vector is written field by field with the RFC's layout in mind, not produced by the
code under test. Transport-cc is in test_rtcp_twcc.py, hypothesis in test_rtcp_fuzz.py.
"""

from __future__ import annotations

import pytest

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
    UnknownRtcp,
    build_rtcp,
    compact_to_seconds,
    nack_pairs_from_seqs,
    ntp_to_compact,
    ntp_to_unix,
    parse_rtcp_untrusted,
    seconds_to_compact,
    seqs_from_nack_pairs,
    unix_to_ntp,
)


def h(text: str) -> bytes:
    """Hex with comments: everything after '#' on a line is ignored."""
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


BLOCK_HEX = """
    55 66 77 88   # SSRC of source
    40            # fraction lost 64/256 = 25 %
    ff ff fe      # cumulative lost: 24-bit two's complement -2
    00 01 00 05   # extended highest seq: 1 cycle, seq 5
    00 00 00 20   # interarrival jitter 32
    6f 80 80 00   # LSR
    00 01 80 00   # DLSR 1.5 s (0x18000 / 65536)
"""
BLOCK = ReportBlock(
    ssrc=0x55667788,
    fraction_lost=64,
    cumulative_lost=-2,
    highest_seq=0x10005,
    jitter=32,
    lsr=0x6F808000,
    dlsr=0x18000,
)

SR_HEX = (
    """
    81            # V=2 P=0 RC=1
    c8            # PT=200 SR
    00 0c         # length 12: (4 + 24 + 24) / 4 - 1
    11 22 33 44   # SSRC of sender
    e8 fe 6f 80   # NTP seconds
    80 00 00 00   # NTP fraction: 0.5 s
    00 01 5f 90   # RTP timestamp 90000
    00 00 00 64   # sender's packet count 100
    00 00 27 10   # sender's octet count 10000
"""
    + BLOCK_HEX
)
SR = SenderReport(
    ssrc=0x11223344,
    ntp_timestamp=0xE8FE6F80_80000000,
    rtp_timestamp=90000,
    packet_count=100,
    octet_count=10000,
    reports=(BLOCK,),
)

RR_HEX = (
    """
    81 c9 00 07   # V=2 RC=1, PT=201 RR, length 7: (4 + 4 + 24) / 4 - 1
    11 22 33 44   # SSRC of packet sender
"""
    + BLOCK_HEX
)
RR = ReceiverReport(ssrc=0x11223344, reports=(BLOCK,))

SDES_HEX = """
    81 ca 00 06   # V=2 SC=1, PT=202 SDES, length 6 (28 bytes)
    11 22 33 44   # chunk 1: SSRC
    01 10         # item CNAME, 16 octets
    76 56 30 6e 4c 50 61 55 6f 55 73 56 70 6d 42 44   # "vV0nLPaUoUsVpmBD"
    00 00         # end of list + pad to the 32-bit boundary (4 + 2 + 16 = 22 -> 24)
"""
SDES = Sdes((SdesChunk.with_cname(0x11223344, "vV0nLPaUoUsVpmBD"),))

BYE_HEX = """
    81 cb 00 03   # V=2 SC=1, PT=203 BYE, length 3 (16 bytes)
    11 22 33 44   # SSRC
    06 62 79 65 62 79 65 00   # reason: length 6, "byebye", one octet of padding
"""
BYE = Bye((0x11223344,), b"byebye")

NACK_HEX = """
    81 cd 00 03   # V=2 FMT=1, PT=205 RTPFB, length 3
    00 00 00 01   # SSRC of packet sender
    11 22 33 44   # SSRC of media source
    ff fe         # PID 65534
    00 05         # BLP 0b101: PID+1 = 65535 and PID+3 = 1 (across the wrap)
"""
NACK = GenericNack(1, 0x11223344, ((65534, 0b101),))

PLI_HEX = """
    81 ce 00 02   # V=2 FMT=1, PT=206 PSFB, length 2
    00 00 00 01   # SSRC of packet sender
    11 22 33 44   # SSRC of media source
"""
PLI = Pli(1, 0x11223344)

FIR_HEX = """
    84 ce 00 04   # V=2 FMT=4, PT=206 PSFB, length 4
    00 00 00 01   # SSRC of packet sender
    00 00 00 00   # SSRC of media source: unused, 0 (RFC 5104 4.3.1.2)
    11 22 33 44   # FCI: SSRC of the stream to refresh
    07 00 00 00   # command sequence number 7, reserved
"""
FIR = Fir(1, ((0x11223344, 7),))

REMB_HEX = """
    8f ce 00 05   # V=2 FMT=15, PT=206 PSFB, length 5
    00 00 00 01   # SSRC of packet sender
    00 00 00 00   # SSRC of media source: always 0
    52 45 4d 42   # "REMB"
    01            # num SSRC 1
    0e            # BR exp 3 (000011) and the mantissa's top 2 bits (10)
    dc 6c         # the mantissa's low 16 bits: mantissa = 0x2dc6c = 187500
    11 22 33 44   # SSRC feedback
"""
# 187500 << 3 = 1 500 000 bps: 1.5 Mbit/s needs 21 bits, so exp = 21 - 18 = 3.
REMB = Remb(1, 1_500_000, (0x11223344,))


@pytest.mark.parametrize(
    ("hex_text", "packet"),
    [
        (SR_HEX, SR),
        (RR_HEX, RR),
        (SDES_HEX, SDES),
        (BYE_HEX, BYE),
        (NACK_HEX, NACK),
        (PLI_HEX, PLI),
        (FIR_HEX, FIR),
        (REMB_HEX, REMB),
    ],
    ids=["sr", "rr", "sdes", "bye", "nack", "pli", "fir", "remb"],
)
def test_vector_parses_and_builds(hex_text: str, packet: RtcpPacket) -> None:
    data = h(hex_text)
    assert parse_rtcp_untrusted(data) == [packet]
    assert build_rtcp([packet]) == data


def test_sdes_cname_and_item_padding() -> None:
    assert SDES.chunks[0].cname == "vV0nLPaUoUsVpmBD"
    # 4 + 2 + 2 = 8 bytes of chunk: a whole null word must follow (RFC 3550 6.5).
    data = h(
        """
        81 ca 00 03   # SC=1, length 3 (16 bytes)
        00 00 00 09   # SSRC
        01 02 61 62   # CNAME "ab"
        00 00 00 00   # end of list, padded to the next boundary
        """
    )
    packet = Sdes((SdesChunk.with_cname(9, "ab"),))
    assert build_rtcp([packet]) == data
    assert parse_rtcp_untrusted(data) == [packet]


def test_sdes_two_chunks_several_items_and_an_empty_chunk() -> None:
    data = h(
        """
        82 ca 00 06      # SC=2, length 6 (28 bytes)
        00 00 00 01      # chunk 1 SSRC                  (offset 4)
        01 01 61         # CNAME "a"                     (offset 8)
        06 03 78 79 7a   # TOOL "xyz"                    (offset 11)
        00 00 00 00      # end of list at offset 16 is on a boundary: a whole null word
        00 00 00 02      # chunk 2 SSRC                  (offset 20)
        00 00 00 00      # no items: end of list + padding
        """
    )
    packet = Sdes((SdesChunk(1, ((1, b"a"), (6, b"xyz"))), SdesChunk(2, ())))
    assert parse_rtcp_untrusted(data) == [packet]
    assert build_rtcp([packet]) == data
    assert packet.chunks[0].cname == "a"
    assert packet.chunks[1].cname is None


def test_bye_without_reason_and_with_two_ssrcs() -> None:
    data = h(
        """
        82 cb 00 02   # SC=2, PT=203, length 2
        00 00 00 01   # SSRC 1
        00 00 00 02   # SSRC 2
        """
    )
    assert parse_rtcp_untrusted(data) == [Bye((1, 2))]
    assert build_rtcp([Bye((1, 2))]) == data


def test_nack_with_several_pairs() -> None:
    data = h(
        """
        81 cd 00 04   # FMT=1 PT=205, length 4
        00 00 00 01   # sender
        00 00 00 02   # media
        00 0a 80 00   # PID 10, BLP bit 15: 26
        00 1b 00 00   # PID 27 alone
        """
    )
    [nack] = parse_rtcp_untrusted(data)
    assert isinstance(nack, GenericNack)
    assert nack.lost_seqs() == [10, 26, 27]
    assert GenericNack.from_seqs(1, 2, [10, 26, 27]) == nack
    assert build_rtcp([nack]) == data


def test_remb_rounds_the_bitrate_down_to_18_significant_bits() -> None:
    # 1 000 001 needs 20 bits: exp 2, mantissa 1000001 >> 2 = 250000 -> 1 000 000 bps.
    data = build_rtcp([Remb(7, 1_000_001, ())])
    assert data == h(
        """
        8f ce 00 04   # FMT=15 PT=206, length 4
        00 00 00 07   # sender
        00 00 00 00   # media 0
        52 45 4d 42   # "REMB"
        00            # num SSRC 0
        0b            # exp 2 (000010), mantissa top bits 11 (250000 = 0x3d090)
        d0 90         # mantissa low 16 bits
        """
    )
    assert parse_rtcp_untrusted(data) == [Remb(7, 1_000_000, ())]


def test_remb_small_and_large_bitrates() -> None:
    for bitrate in (0, 1, 0x3FFFF, 0x3FFFF << 40, 0x3FFFF << 63):
        assert parse_rtcp_untrusted(build_rtcp([Remb(1, bitrate, (5, 6))])) == [
            Remb(1, bitrate, (5, 6))
        ]
    with pytest.raises(ValueError):
        build_rtcp([Remb(1, 0x3FFFF << 64, ())])


def test_psfb_fmt15_that_is_not_remb_is_unknown() -> None:
    data = h(
        """
        8f ce 00 03   # FMT=15 PT=206 (application layer feedback)
        00 00 00 01   # sender
        00 00 00 00   # media
        41 42 43 44   # "ABCD": not REMB
        """
    )
    assert parse_rtcp_untrusted(data) == [UnknownRtcp(206, 15, data)]


def test_real_looking_compound_sr_sdes() -> None:
    # What a sending browser puts in one SRTCP packet: SR without blocks, then SDES CNAME.
    data = h(
        """
        80 c8 00 06   # V=2 RC=0, PT=200 SR, length 6
        5e 1f 0c 2a   # SSRC
        ec 9b 4a 10   # NTP seconds
        1a 2b 3c 4d   # NTP fraction
        7b 2c 11 00   # RTP timestamp
        00 00 0b b8   # 3000 packets
        00 2d c6 c0   # 3 000 000 octets
        81 ca 00 06   # SDES SC=1, length 6
        5e 1f 0c 2a   # SSRC
        01 10 76 56 30 6e 4c 50 61 55 6f 55 73 56 70 6d 42 44   # CNAME (16 octets)
        00 00         # end + padding
        """
    )
    assert parse_rtcp_untrusted(data) == [
        SenderReport(0x5E1F0C2A, 0xEC9B4A10_1A2B3C4D, 0x7B2C1100, 3000, 3_000_000),
        Sdes((SdesChunk.with_cname(0x5E1F0C2A, "vV0nLPaUoUsVpmBD"),)),
    ]
    assert build_rtcp(parse_rtcp_untrusted(data)) == data


def test_real_looking_compound_rr_remb() -> None:
    # A receiving browser's RR about one stream followed by REMB for two SSRCs.
    data = h(
        """
        81 c9 00 07   # RR RC=1, length 7
        00 00 00 01   # SSRC of the receiver (browsers use 1 when they send nothing)
        2a 2a 2a 2a   # block: source SSRC
        05 00 00 11   # fraction 5/256, cumulative lost 17
        00 00 9c 40   # highest seq 40000
        00 00 01 2c   # jitter 300
        ab cd 12 34   # LSR
        00 00 40 00   # DLSR 0.25 s
        8f ce 00 06   # REMB, length 6
        00 00 00 01   # sender
        00 00 00 00   # media
        52 45 4d 42   # "REMB"
        02 0a 7d 8c   # 2 SSRCs, exp 2, mantissa 0x27d8c = 163212 -> 652848 bps
        2a 2a 2a 2a
        2b 2b 2b 2b
        """
    )
    rr, remb = parse_rtcp_untrusted(data)
    assert rr == ReceiverReport(
        1, (ReportBlock(0x2A2A2A2A, 5, 17, 40000, 300, 0xABCD1234, 0x4000),)
    )
    assert remb == Remb(1, 163212 << 2, (0x2A2A2A2A, 0x2B2B2B2B))
    assert build_rtcp([rr, remb]) == data


def test_unknown_packets_are_kept_in_place() -> None:
    app = h(
        """
        80 cc 00 02   # APP (PT 204), subtype 0, length 2
        00 00 00 09   # SSRC
        54 45 53 54   # name "TEST"
        """
    )
    tmmbr = h(
        """
        83 cd 00 04   # RTPFB FMT=3 (TMMBR): not decoded here
        00 00 00 01 00 00 00 00 00 00 00 02 04 00 00 28
        """
    )
    xr = h(
        """
        80 cf 00 01   # XR (PT 207), length 1
        00 00 00 09
        """
    )
    data = h(RR_HEX) + app + tmmbr + xr + h(PLI_HEX)
    assert parse_rtcp_untrusted(data) == [
        RR,
        UnknownRtcp(204, 0, app),
        UnknownRtcp(205, 3, tmmbr),
        UnknownRtcp(207, 0, xr),
        PLI,
    ]
    assert build_rtcp(parse_rtcp_untrusted(data)) == data


def test_padding_bit_is_honoured() -> None:
    data = h(
        """
        a0 c9 00 02   # V=2 P=1 RC=0, PT=201 RR, length 2
        00 00 00 05   # SSRC
        00 00 00 04   # 4 octets of padding, the last one counts them
        """
    )
    assert parse_rtcp_untrusted(data) == [ReceiverReport(5)]


def test_sr_profile_extension_is_kept() -> None:
    data = h(
        """
        80 c8 00 07   # SR RC=0, length 7: one extra word after the sender info
        00 00 00 01 00 00 00 02 00 00 00 03 00 00 00 04 00 00 00 05 00 00 00 06
        de ad be ef   # profile-specific extension
        """
    )
    [sr] = parse_rtcp_untrusted(data)
    assert sr == SenderReport(1, (2 << 32) | 3, 4, 5, 6, (), b"\xde\xad\xbe\xef")
    assert build_rtcp([sr]) == data


@pytest.mark.parametrize(
    "hex_text",
    [
        "",  # empty
        "81c9",  # shorter than a header
        "41c9 0001 00000001",  # version 1
        "c1c9 0001 00000001",  # version 3
        "80c9 0002 00000001",  # length runs past the datagram
        "80c9 0001 00000001 00",  # trailing byte after the last packet
        "81c9 0001 00000001",  # RC=1 but no room for the block
        "a0c9 0001 00000000",  # padding count 0
        "a0c9 0001 00000009",  # padding larger than the packet
        "81c8 0006" + "00" * 24,  # SR RC=1 without its block
        "81ca 0002 00000001 010a6162",  # SDES item longer than the packet
        "81ca 0001 00000001",  # SDES chunk without end of list
        "82ca 0002 00000001 00000000",  # SDES SC=2 with one chunk
        "82cb 0001 00000001",  # BYE SC=2 with one SSRC
        "81cb 0002 00000001 05616200",  # BYE reason longer than the packet
        "81cd 0001 00000001",  # NACK without the media SSRC
        "81ce 0001 00000001",  # PLI without the media SSRC
        "84ce 0003 00000001 00000000 00000002",  # FIR entry cut in half
        "8fce 0003 00000001 00000000 52454d42",  # REMB without its bitrate word
        "8fce 0004 00000001 00000000 52454d42 02000001",  # REMB with 2 SSRCs, 0 given
    ],
)
def test_malformed_raises_bad_packet(hex_text: str) -> None:
    with pytest.raises(BadPacket):
        parse_rtcp_untrusted(bytes.fromhex(hex_text.replace(" ", "")))


def test_memoryview_and_bytearray_inputs() -> None:
    data = h(SR_HEX) + h(SDES_HEX)
    assert parse_rtcp_untrusted(memoryview(data)) == [SR, SDES]
    assert parse_rtcp_untrusted(bytearray(data)) == [SR, SDES]


def test_build_rejects_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError):
        build_rtcp([ReceiverReport(1, (ReportBlock(1, 0, 0x80_0000, 0, 0, 0, 0),))])
    with pytest.raises(ValueError):
        build_rtcp([ReceiverReport(1 << 32)])
    with pytest.raises(ValueError):
        build_rtcp([Bye(tuple(range(32)))])
    with pytest.raises(ValueError):
        build_rtcp([Sdes((SdesChunk(1, ((1, b"x" * 256),)),))])
    with pytest.raises(ValueError):
        build_rtcp([Fir(1, ((2, 256),))])


# -- NACK list helpers ---------------------------------------------------------------------


def test_nack_pairs_across_the_wrap() -> None:
    assert nack_pairs_from_seqs([65534, 65535, 0, 1]) == [(65534, 0b111)]
    # PID + 16 is the last one a BLP can hold; PID + 17 starts a new pair.
    assert nack_pairs_from_seqs([65530, 65530 + 16 - 65536]) == [(65530, 0x8000)]
    assert nack_pairs_from_seqs([65530, 65530 + 17 - 65536]) == [(65530, 0), (11, 0)]
    assert nack_pairs_from_seqs([]) == []
    assert nack_pairs_from_seqs([5, 5, 6]) == [(5, 0b1)]
    assert seqs_from_nack_pairs([(65535, 0b11)]) == [65535, 0, 1]
    assert seqs_from_nack_pairs([(100, 0)]) == [100]


# -- NTP helpers ---------------------------------------------------------------------------


def test_ntp_conversions() -> None:
    # 1970-01-01 is 2 208 988 800 s after 1900-01-01.
    assert unix_to_ntp(0.0) == 2_208_988_800 << 32
    assert unix_to_ntp(1.5) == ((2_208_988_801 << 32) | 0x8000_0000)
    assert ntp_to_unix((2_208_988_801 << 32) | 0x4000_0000) == 1.25
    # 2036-02-07 06:28:16 UTC: NTP seconds wrap to 0 (era 1) and are read back as such.
    wrap = (1 << 32) - 2_208_988_800
    assert unix_to_ntp(float(wrap)) == 0
    assert ntp_to_unix(0) == float(wrap)
    assert ntp_to_unix(unix_to_ntp(wrap + 10.75)) == wrap + 10.75


def test_compact_ntp() -> None:
    # The middle 32 bits: low 16 bits of the seconds, high 16 bits of the fraction.
    assert ntp_to_compact(0xAABB_CCDD_EEFF_0011) == 0xCCDD_EEFF
    assert ntp_to_compact(0x0001_B705_2000_0001) == 0xB705_2000
    # RFC 3550 6.4.1's example: LSR 0xb705:2000 is 46853.125 s, DLSR 0x0005:4000 5.25 s.
    assert compact_to_seconds(0xB705_2000) == 46853.125
    assert seconds_to_compact(5.25) == 0x0005_4000
    assert seconds_to_compact(-1.0) == 0


def test_unknown_packet_must_match_its_length_field() -> None:
    with pytest.raises(ValueError):
        build_rtcp([UnknownRtcp(204, 0, bytes.fromhex("80cc0002 00000009"))])
