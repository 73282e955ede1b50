"""RTP packets (RFC 3550) and RFC 8285 header extension blocks: trio_sfu.rtp.packet."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from trio_sfu.errors import BadPacket
from trio_sfu.rtp.packet import (
    ONE_BYTE_PROFILE,
    TWO_BYTE_PROFILE,
    RtpPacket,
    build_extensions,
    find_extension_span_untrusted,
    find_extension_untrusted,
    is_rtcp,
    padding_bytes,
    parse_extensions_untrusted,
    rewrite_extensions_untrusted,
    rewrite_in_place,
    rewrite_untrusted,
    rtp_header_untrusted,
    rtp_layout_untrusted,
    rtp_marker,
    rtp_payload_type,
    rtp_seq,
    rtp_ssrc,
    rtp_timestamp,
)


def h(text: str) -> bytes:
    """Hex with spaces and line breaks allowed."""
    return bytes.fromhex("".join(text.split()))


# -- Hand-checked vectors ----------------------------------------------------------------------

MINIMAL = h(
    "80"  # V=2, P=0, X=0, CC=0
    "e0"  # M=1, PT=96
    "fffe"  # sequence number 65534
    "00010000"  # timestamp 65536
    "deadbeef"  # SSRC 0xDEADBEEF
    "cafe"  # payload
)

FULL = h(
    "b2"  # V=2, P=1, X=1, CC=2
    "08"  # M=0, PT=8
    "0001"  # sequence number 1
    "00000002"  # timestamp 2
    "00000003"  # SSRC 3
    "00000011"  # CSRC 17
    "00000022"  # CSRC 34
    "bede 0002"  # one-byte form (0xBEDE), 2 words follow
    "40 31"  # id 4, L=0 (1 byte): mid "1"
    "00"  # padding byte between elements
    "a1 7230"  # id 10, L=1 (2 bytes): rid "r0"
    "00 00"  # padding to the word
    "aabbcc"  # payload
    "000003"  # 3 bytes of padding, the last one its count
)

TWO_BYTE = h(
    "90"  # V=2, P=0, X=1, CC=0
    "6f"  # M=0, PT=111
    "1234"  # sequence number
    "00000000"  # timestamp
    "00000001"  # SSRC
    "1003 0002"  # two-byte form with appbits 3 (0x1003), 2 words follow
    "14 00"  # id 20, length 0
    "00"  # padding byte between elements
    "01 02 abcd"  # id 1, length 2
    "00"  # padding to the word
    "ff"  # payload
)


def test_minimal_vector() -> None:
    packet = RtpPacket.parse_untrusted(MINIMAL)
    assert packet == RtpPacket(
        payload_type=96,
        sequence_number=65534,
        timestamp=65536,
        ssrc=0xDEADBEEF,
        marker=True,
        payload=b"\xca\xfe",
    )
    assert packet.serialize() == MINIMAL
    assert packet.extensions == {}


def test_full_vector() -> None:
    packet = RtpPacket.parse_untrusted(FULL)
    assert packet == RtpPacket(
        payload_type=8,
        sequence_number=1,
        timestamp=2,
        ssrc=3,
        marker=False,
        csrcs=(17, 34),
        extension_profile=ONE_BYTE_PROFILE,
        extension=h("4031 00 a17230 0000"),
        payload=h("aabbcc"),
        padding=h("000003"),
    )
    assert packet.extensions == {4: b"1", 10: b"r0"}
    assert packet.serialize() == FULL
    assert rtp_layout_untrusted(FULL) == (20, 32, 35)


def test_two_byte_vector() -> None:
    packet = RtpPacket.parse_untrusted(TWO_BYTE)
    assert packet.extension_profile == 0x1003
    assert packet.extensions == {20: b"", 1: h("abcd")}
    assert packet.serialize() == TWO_BYTE
    assert find_extension_untrusted(TWO_BYTE, 20) == b""
    assert find_extension_untrusted(TWO_BYTE, 1) == h("abcd")
    assert find_extension_untrusted(TWO_BYTE, 2) is None


def test_one_byte_id_15_ends_the_block() -> None:
    # RFC 8285 section 4.2: elements before id 15 count, the rest is ignored unread.
    block = h("10 aa  f0  20 bb  ff ff")  # id 1 = aa; id 15; then junk that would overrun
    assert parse_extensions_untrusted(ONE_BYTE_PROFILE, block) == {1: b"\xaa"}


def test_unknown_profile_has_no_elements() -> None:
    packet = RtpPacket.parse_untrusted(h("90 60 0000 00000000 00000001  1234 0001 41424344"))
    assert packet.extension_profile == 0x1234
    assert packet.extension == b"ABCD"
    assert packet.extensions == {}
    assert find_extension_untrusted(packet.serialize(), 4) is None


def test_first_of_duplicate_ids_counts() -> None:
    block = h("10 aa 10 bb")
    assert parse_extensions_untrusted(ONE_BYTE_PROFILE, block) == {1: b"\xaa"}
    packet = RtpPacket(
        payload_type=0,
        sequence_number=0,
        timestamp=0,
        ssrc=0,
        extension_profile=ONE_BYTE_PROFILE,
        extension=block,
    )
    assert find_extension_untrusted(packet.serialize(), 1) == b"\xaa"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (h("80e0 0001 00000000 000000"), "shorter than 12 bytes"),
        (h("40e0 0001 00000000 00000000"), "version 1"),
        (h("c0e0 0001 00000000 00000000"), "version 3"),
        (h("82e0 0001 00000000 00000000 00000001"), "CSRC list truncated"),
        (h("90e0 0001 00000000 00000000 bede"), "extension header truncated"),
        (h("90e0 0001 00000000 00000000 bede0002 10aa0000"), "extension block truncated"),
        (h("a0e0 0001 00000000 00000000"), "padding flag, nothing after the header"),
        (h("a0e0 0001 00000000 00000000 aa00"), "padding count 0"),
        (h("a0e0 0001 00000000 00000000 aa03"), "padding count beyond the payload"),
        (h("90e0 0001 00000000 00000000 bede0001 13aa0000"), "one-byte element overruns"),
        (h("90e0 0001 00000000 00000000 bede0001 0300 0000"), "one-byte id 0 with a length"),
        (h("90e0 0001 00000000 00000000 10000001 0005aa00"), "two-byte element overruns"),
        (h("90e0 0001 00000000 00000000 10000001 000000 07"), "two-byte id without length"),
    ],
)
def test_parse_rejects(data: bytes, why: str) -> None:
    with pytest.raises(BadPacket):
        RtpPacket.parse_untrusted(data)


def test_padding_only_packet() -> None:
    # Chromium's bandwidth probes: no payload, 255 bytes of padding.
    data = h("a0 60 0001 00000000 00000001") + padding_bytes(255)
    packet = RtpPacket.parse_untrusted(data)
    assert packet.payload == b""
    assert len(packet.padding) == 255
    assert packet.serialize() == data
    assert rtp_layout_untrusted(data) == (12, 12, 12)


def test_padding_content_survives_the_round_trip() -> None:
    data = h(
        "a0 60 0001 00000000 00000001"  # P=1
        "cafe"  # payload
        "010203 04"  # 4 bytes of (non-zero) padding, the last one its count
    )
    packet = RtpPacket.parse_untrusted(data)
    assert (packet.payload, packet.padding) == (h("cafe"), h("01020304"))
    assert packet.serialize() == data


# -- Field accessors -------------------------------------------------------------------------


def test_accessors() -> None:
    assert rtp_ssrc(MINIMAL) == 0xDEADBEEF
    assert rtp_seq(MINIMAL) == 65534
    assert rtp_timestamp(MINIMAL) == 65536
    assert rtp_payload_type(MINIMAL) == 96
    assert rtp_marker(MINIMAL) is True
    assert rtp_marker(FULL) is False
    assert rtp_header_untrusted(MINIMAL) == (True, 96, 65534, 65536, 0xDEADBEEF)
    view = memoryview(FULL)
    assert (rtp_ssrc(view), rtp_seq(view), rtp_payload_type(view)) == (3, 1, 8)
    assert rtp_header_untrusted(bytearray(FULL)) == (False, 8, 1, 2, 3)


@pytest.mark.parametrize(
    "accessor", [rtp_ssrc, rtp_seq, rtp_timestamp, rtp_payload_type, rtp_marker, is_rtcp]
)
def test_accessors_on_short_buffers_raise_bad_packet(accessor: Callable[[bytes], Any]) -> None:
    with pytest.raises(BadPacket):
        accessor(b"\x80")
    for size in range(12):
        with contextlib.suppress(BadPacket):
            accessor(MINIMAL[:size])


def test_rtp_header_untrusted_checks_version_and_length() -> None:
    with pytest.raises(BadPacket):
        rtp_header_untrusted(MINIMAL[:11])
    with pytest.raises(BadPacket):
        rtp_header_untrusted(b"\x40" + MINIMAL[1:])


@pytest.mark.parametrize(
    ("second_byte", "rtcp"),
    [
        (0xC8, True),  # SR, 200
        (0xC9, True),  # RR, 201
        (0xCD, True),  # RTPFB (NACK), 205
        (0xC0, True),  # 192: first of RFC 5761's range
        (0xDF, True),  # 223: last
        (0xBF, False),  # M=1, PT=63
        (0xE0, False),  # M=1, PT=96
        (0x60, False),  # M=0, PT=96
        (0x48, False),  # M=0, PT=72: in the conflicting range, but no marker: RTP
    ],
)
def test_is_rtcp(second_byte: int, rtcp: bool) -> None:
    assert is_rtcp(bytes((0x80, second_byte, 0, 1))) is rtcp


# -- Building --------------------------------------------------------------------------------


def test_build_extensions_one_byte_vector() -> None:
    profile, block = build_extensions({4: b"1", 10: b"r0", 2: h("123456")})
    assert profile == ONE_BYTE_PROFILE
    assert block == h(
        "40 31"  # id 4, L=0: "1"
        "a1 7230"  # id 10, L=1: "r0"
        "22 123456"  # id 2, L=2
        "00 00 00"  # zero padding to 12 bytes
    )


def test_build_extensions_switches_to_two_byte_form() -> None:
    assert build_extensions({15: b"x"}) == (TWO_BYTE_PROFILE, h("0f 01 78 00"))
    assert build_extensions({1: b""}) == (TWO_BYTE_PROFILE, h("01 00 0000"))
    assert build_extensions({1: bytes(17)})[0] == TWO_BYTE_PROFILE
    assert build_extensions({1: b"x"}, two_byte=True) == (TWO_BYTE_PROFILE, h("01 01 78 00"))
    assert build_extensions({}) == (ONE_BYTE_PROFILE, b"")


@pytest.mark.parametrize(
    ("elements", "two_byte"),
    [
        ({15: b"x"}, False),
        ({0: b"x"}, False),
        ({1: b""}, False),
        ({1: bytes(17)}, False),
        ({0: b"x"}, True),
        ({256: b"x"}, True),
        ({1: bytes(256)}, True),
    ],
)
def test_build_extensions_refuses(elements: dict[int, bytes], two_byte: bool) -> None:
    with pytest.raises(ValueError):
        build_extensions(elements, two_byte=two_byte)


def test_with_extensions() -> None:
    packet = RtpPacket.parse_untrusted(MINIMAL).with_extensions({1: b"0", 3: h("0007")})
    data = packet.serialize()
    assert data[0] & 0x10
    assert RtpPacket.parse_untrusted(data).extensions == {1: b"0", 3: h("0007")}
    cleared = packet.with_extensions({})
    assert cleared.serialize() == MINIMAL


@pytest.mark.parametrize(
    "changes",
    [
        {"payload_type": 128},
        {"payload_type": -1},
        {"sequence_number": 65536},
        {"timestamp": 2**32},
        {"ssrc": -1},
        {"csrcs": tuple(range(16))},
        {"csrcs": (2**32,)},
        {"padding": b"\x00\x02\x00"},
        {"extension": b"\x00"},
        {"extension_profile": ONE_BYTE_PROFILE, "extension": b"\x10\x01\x00"},
        {"extension_profile": 0x10000},
    ],
)
def test_serialize_refuses_out_of_range(changes: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "payload_type": 96,
        "sequence_number": 1,
        "timestamp": 2,
        "ssrc": 3,
    }
    fields.update(changes)
    with pytest.raises(ValueError):
        RtpPacket(**fields).serialize()


def test_padding_bytes() -> None:
    assert padding_bytes(1) == b"\x01"
    assert padding_bytes(4) == h("00000004")
    for bad in (0, 256):
        with pytest.raises(ValueError):
            padding_bytes(bad)


# -- Rewriting -------------------------------------------------------------------------------


def test_rewrite_vector() -> None:
    out = rewrite_untrusted(
        FULL, ssrc=0x01020304, payload_type=101, sequence_number=0x0A0B, timestamp=0x11223344
    )
    assert isinstance(out, bytearray)
    assert (
        bytes(out)
        == h(
            "b2"  # unchanged: V=2, P=1, X=1, CC=2
            "65"  # M=0 kept, PT=101
            "0a0b"  # new sequence number
            "11223344"  # new timestamp
            "01020304"  # new SSRC
        )
        + FULL[12:]
    )
    assert rtp_marker(
        rewrite_untrusted(MINIMAL, ssrc=1, payload_type=0, sequence_number=0, timestamp=0)
    )


def test_rewrite_wraps_sequence_number_and_timestamp() -> None:
    out = rewrite_untrusted(
        MINIMAL,
        ssrc=2**32 + 7,
        payload_type=100,
        sequence_number=65534 + 3,  # past 65535: 1
        timestamp=2**32 - 1 + 11,  # past 2**32 - 1: 10
    )
    assert rtp_header_untrusted(out) == (True, 100, 1, 10, 7)
    out = rewrite_untrusted(MINIMAL, ssrc=1, payload_type=100, sequence_number=-1, timestamp=-2)
    assert rtp_header_untrusted(out) == (True, 100, 65535, 2**32 - 2, 1)


def test_rewrite_does_not_touch_its_input() -> None:
    data = bytearray(FULL)
    out = rewrite_untrusted(data, ssrc=9, payload_type=9, sequence_number=9, timestamp=9)
    assert data == FULL
    assert out is not data
    rewrite_in_place(out, ssrc=5, payload_type=127, sequence_number=70000, timestamp=6)
    assert rtp_header_untrusted(out) == (False, 127, 70000 - 65536, 6, 5)


@pytest.mark.parametrize("data", [MINIMAL[:11], b"\x40" + MINIMAL[1:], b""])
def test_rewrite_rejects(data: bytes) -> None:
    with pytest.raises(BadPacket):
        rewrite_untrusted(data, ssrc=1, payload_type=1, sequence_number=1, timestamp=1)


def test_find_extension_span() -> None:
    assert find_extension_span_untrusted(FULL, 4) == (25, 26)
    assert find_extension_span_untrusted(FULL, 10) == (28, 30)
    assert find_extension_span_untrusted(FULL, 3) is None
    assert find_extension_span_untrusted(MINIMAL, 4) is None
    with pytest.raises(BadPacket):
        find_extension_span_untrusted(MINIMAL[:8], 4)


def test_rewrite_extensions_renumbers_filters_and_sets() -> None:
    out = rewrite_extensions_untrusted(FULL, {4: 1, 10: 2}, {3: h("0007")})
    assert bytes(out) == h(
        "b2 08 0001 00000002 00000003 00000011 00000022"  # header and CSRCs as they were
        "bede 0003"  # one-byte form, now 3 words: edited in place, one element added
        "10 31"  # id 1 (was 4): "1"
        "00"  # the padding byte between elements, kept
        "21 7230"  # id 2 (was 10): "r0"
        "31 0007"  # id 3, added (after the old padding at the end was trimmed)
        "000000"  # padding to the word
        "aabbcc 000003"  # payload and padding as they were
    )
    only_mid = rewrite_extensions_untrusted(FULL, {4: 1})
    assert RtpPacket.parse_untrusted(only_mid).extensions == {1: b"1"}
    replaced = rewrite_extensions_untrusted(FULL, {4: 1}, {1: b"10"})
    assert RtpPacket.parse_untrusted(replaced).extensions == {1: b"10"}


def test_rewrite_extensions_in_place_edits() -> None:
    header = h("b2 08 0001 00000002 00000003 00000011 00000022")
    tail = h("aabbcc 000003")
    # A dropped element becomes padding.
    assert (
        rewrite_extensions_untrusted(FULL, {10: 2})
        == header
        + h(
            "bede 0002"  # 2 words
            "00 00"  # was mid: dropped
            "00"  # padding, as it was
            "21 7230"  # id 2 (was 10): "r0"
            "0000"  # padding to the word
        )
        + tail
    )
    # A value of the same length is written over the old one; one of another length is
    # appended and the old one dropped; elements dropped at the end are trimmed.
    assert (
        rewrite_extensions_untrusted(FULL, {4: 1}, {1: b"0"})
        == header
        + h(
            "bede 0001 1030 0000"  # id 1: "0"
        )
        + tail
    )
    assert (
        rewrite_extensions_untrusted(FULL, {4: 1}, {1: b"10"})
        == header
        + h(
            "bede 0001 113130 00"  # old mid and the rest dropped, id 1: "10" appended
        )
        + tail
    )
    # Elements after id 15 are dropped, as a reader ignores them.
    data = h("90 60 0001 00000002 00000003  bede0002 10aa f0 20bb 30cc 00  ff")
    assert rewrite_extensions_untrusted(data, {1: 5, 2: 6, 3: 7}) == h(
        "90 60 0001 00000002 00000003  bede0001 50aa 0000  ff"
    )


def test_rewrite_extensions_clears_x_when_nothing_is_left() -> None:
    out = rewrite_extensions_untrusted(FULL, {})
    assert bytes(out) == h("a2 08 0001 00000002 00000003 00000011 00000022 aabbcc 000003")
    assert rewrite_extensions_untrusted(MINIMAL, {1: 1}) == MINIMAL


def test_rewrite_extensions_uses_two_byte_form_when_needed() -> None:
    out = rewrite_extensions_untrusted(FULL, {4: 20, 10: 2})
    packet = RtpPacket.parse_untrusted(out)
    assert packet.extension_profile == TWO_BYTE_PROFILE
    assert packet.extensions == {20: b"1", 2: b"r0"}
    back = rewrite_extensions_untrusted(out, {20: 4, 2: 10})
    assert RtpPacket.parse_untrusted(back).extensions == {4: b"1", 10: b"r0"}


def test_rewrite_extensions_rejects_malformed_blocks() -> None:
    with pytest.raises(BadPacket):
        rewrite_extensions_untrusted(h("90e0 0001 00000000 00000000 bede0001 13aa0000"), {1: 1})


# -- Chromium-shaped packets, with the extension ids from the fixtures -------------------------
#
# From /work/shared/fixtures/mediasoup-client (tests/test_rtp_extensions.py checks these ids
# against the files when they are there). Chromium sends the one-byte form.
#   produce-video-vp8-simulcast.json: abs-send-time 2, transport-cc 3, mid 4, rid 10,
#     repaired-rid 11, video-orientation 13, toffset 14, playout-delay 5; mid "1".
#   consume-video-vp8.json (router ids): mid 1, abs-send-time 4, transport-cc 5,
#     video-orientation 11, toffset 12, playout-delay 14; mid "0".
#   produce-audio-opus.json: audio-level 1, abs-send-time 2, transport-cc 3, mid 4; mid "0".

CHROMIUM_VP8_R2 = h(
    "90"  # V=2, P=0, X=1, CC=0
    "e0"  # M=1 (last packet of the frame), PT=96 (Chromium's VP8)
    "3039"  # sequence number 12345
    "5f3759df"  # timestamp
    "a1b2c3d4"  # SSRC, learnt from the rid below
    "bede 0004"  # one-byte form, 4 words
    "22 123456"  # id 2 (abs-send-time), 3 bytes
    "31 0007"  # id 3 (transport-wide seq), 2 bytes: 7
    "40 31"  # id 4 (mid), 1 byte: "1"
    "a1 7232"  # id 10 (rid), 2 bytes: "r2"
    "d0 00"  # id 13 (video-orientation), 1 byte: front camera, no flip, 0 degrees
    "00 00"  # padding to the word
    "9000 0000 0000"  # VP8 payload descriptor and data (a stand-in)
)

CHROMIUM_OPUS = h(
    "90"  # V=2, P=0, X=1, CC=0
    "6f"  # M=0, PT=111 (opus)
    "0100"  # sequence number 256
    "0000f000"  # timestamp
    "f955cadd"  # SSRC 4183149277, from the audio encoding
    "bede 0003"  # one-byte form, 3 words
    "10 aa"  # id 1 (ssrc-audio-level), 1 byte: V=1, level 42
    "22 abcdef"  # id 2 (abs-send-time)
    "31 0100"  # id 3 (transport-wide seq)
    "40 30"  # id 4 (mid): "0"
    "00"  # padding to the word
    "fc ff fe"  # an opus TOC byte and frame (a stand-in)
)


def test_chromium_video_packet() -> None:
    packet = RtpPacket.parse_untrusted(CHROMIUM_VP8_R2)
    assert packet.serialize() == CHROMIUM_VP8_R2
    assert packet.extensions == {2: h("123456"), 3: h("0007"), 4: b"1", 10: b"r2", 13: b"\x00"}
    assert find_extension_untrusted(CHROMIUM_VP8_R2, 4) == b"1"
    assert find_extension_untrusted(CHROMIUM_VP8_R2, 10) == b"r2"
    assert find_extension_untrusted(CHROMIUM_VP8_R2, 11) is None  # no repaired-rid on media
    producer_to_consumer = {4: 1, 2: 4, 3: 5, 13: 11, 14: 12, 5: 14}  # rid/rrid dropped
    out = rewrite_extensions_untrusted(CHROMIUM_VP8_R2, producer_to_consumer, {1: b"0"})
    out = rewrite_untrusted(out, ssrc=111111, payload_type=101, sequence_number=1, timestamp=90)
    forwarded = RtpPacket.parse_untrusted(out)
    assert forwarded.extensions == {1: b"0", 4: h("123456"), 5: h("0007"), 11: b"\x00"}
    assert forwarded.extension_profile == ONE_BYTE_PROFILE
    assert (forwarded.ssrc, forwarded.payload_type, forwarded.marker) == (111111, 101, True)
    assert forwarded.payload == packet.payload


def test_chromium_audio_packet() -> None:
    packet = RtpPacket.parse_untrusted(CHROMIUM_OPUS)
    assert packet.serialize() == CHROMIUM_OPUS
    assert packet.ssrc == 4183149277
    assert packet.extensions == {1: b"\xaa", 2: h("abcdef"), 3: h("0100"), 4: b"0"}
    assert find_extension_untrusted(CHROMIUM_OPUS, 4) == b"0"


# -- Hypothesis: round trips -------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)


@st.composite
def extension_blocks(draw: st.DrawFn) -> tuple[int, bytes, dict[int, bytes]]:
    """(profile, block, expected elements): RFC 8285 blocks with zero padding anywhere,
    or an unknown profile's opaque words."""
    form = draw(st.sampled_from(["one", "two", "other"]))
    if form == "other":
        profile = draw(st.integers(0, 0xFFFF).filter(lambda p: p != 0xBEDE and p >> 4 != 0x100))
        return profile, draw(st.binary(max_size=16).map(lambda b: b + bytes(-len(b) % 4))), {}
    one = form == "one"
    ids = st.integers(1, 14) if one else st.integers(1, 255)
    values = st.binary(min_size=1 if one else 0, max_size=16 if one else 40)
    elements = draw(st.dictionaries(ids, values, max_size=6))
    block = bytearray()
    for ext_id, value in elements.items():
        block += bytes(draw(st.integers(0, 3)))  # padding bytes between elements
        block += bytes(((ext_id << 4) | (len(value) - 1),) if one else (ext_id, len(value)))
        block += value
    block += bytes(-len(block) % 4 + 4 * draw(st.integers(0, 1)))
    profile = ONE_BYTE_PROFILE if one else TWO_BYTE_PROFILE | draw(st.integers(0, 15))
    return profile, bytes(block), elements


@st.composite
def rtp_packets(draw: st.DrawFn) -> RtpPacket:
    profile: int | None = None
    block = b""
    if draw(st.booleans()):
        profile, block, _ = draw(extension_blocks())
    pad = draw(st.integers(0, 255))
    padding = draw(st.binary(min_size=pad - 1, max_size=pad - 1)) + bytes((pad,)) if pad else b""
    return RtpPacket(
        payload_type=draw(st.integers(0, 127)),
        sequence_number=draw(st.integers(0, 65535)),
        timestamp=draw(u32),
        ssrc=draw(u32),
        marker=draw(st.booleans()),
        csrcs=tuple(draw(st.lists(u32, max_size=15))),
        extension_profile=profile,
        extension=block,
        payload=draw(st.binary(max_size=64)),
        padding=padding,
    )


@given(rtp_packets())
def test_round_trip(packet: RtpPacket) -> None:
    data = packet.serialize()
    assert RtpPacket.parse_untrusted(data) == packet
    assert RtpPacket.parse_untrusted(memoryview(data)).serialize() == data
    marker, payload_type, seq, timestamp, ssrc = rtp_header_untrusted(data)
    assert (marker, payload_type, seq, timestamp, ssrc) == (
        packet.marker,
        packet.payload_type,
        packet.sequence_number,
        packet.timestamp,
        packet.ssrc,
    )
    assert (rtp_ssrc(data), rtp_seq(data), rtp_timestamp(data)) == (ssrc, seq, timestamp)
    assert (rtp_payload_type(data), rtp_marker(data)) == (payload_type, marker)
    assert not is_rtcp(data) or 64 <= payload_type <= 95
    _, start, end = rtp_layout_untrusted(data)
    assert data[start:end] == packet.payload


@given(extension_blocks())
def test_extension_blocks_parse(case: tuple[int, bytes, dict[int, bytes]]) -> None:
    profile, block, elements = case
    assert parse_extensions_untrusted(profile, block) == elements


@given(
    st.dictionaries(st.integers(1, 255), st.binary(max_size=255), max_size=8),
    st.sampled_from([None, True]),
)
def test_built_extensions_parse_back(elements: dict[int, bytes], two_byte: bool | None) -> None:
    profile, block = build_extensions(elements, two_byte=two_byte)
    assert len(block) % 4 == 0
    assert parse_extensions_untrusted(profile, block) == elements
    packet = RtpPacket(payload_type=96, sequence_number=1, timestamp=2, ssrc=3)
    data = packet.with_extensions(elements, two_byte=two_byte).serialize()
    for ext_id in (*elements, 77):
        assert find_extension_untrusted(data, ext_id) == elements.get(ext_id)


@given(rtp_packets(), st.integers(0, 127), st.integers(-(2**20), 2**20), u32, u32)
def test_rewrite_wraps_like_modular_arithmetic(
    packet: RtpPacket, payload_type: int, seq_offset: int, ts_offset: int, ssrc: int
) -> None:
    data = packet.serialize()
    out = rewrite_untrusted(
        data,
        ssrc=ssrc,
        payload_type=payload_type,
        sequence_number=packet.sequence_number + seq_offset,
        timestamp=packet.timestamp + ts_offset,
    )
    assert RtpPacket.parse_untrusted(out) == RtpPacket(
        payload_type=payload_type,
        sequence_number=(packet.sequence_number + seq_offset) % 65536,
        timestamp=(packet.timestamp + ts_offset) % 2**32,
        ssrc=ssrc,
        marker=packet.marker,
        csrcs=packet.csrcs,
        extension_profile=packet.extension_profile,
        extension=packet.extension,
        payload=packet.payload,
        padding=packet.padding,
    )


@given(rtp_packets(), st.dictionaries(st.integers(1, 255), st.integers(1, 255)))
def test_rewrite_extensions_matches_the_parsed_view(
    packet: RtpPacket, id_map: dict[int, int]
) -> None:
    data = packet.serialize()
    expected: dict[int, bytes] = {}
    for ext_id, value in packet.extensions.items():
        if ext_id in id_map and id_map[ext_id] not in expected:
            expected[id_map[ext_id]] = value
    out = RtpPacket.parse_untrusted(rewrite_extensions_untrusted(data, id_map))
    assert out.extensions == expected
    assert (out.extension_profile is None) == (not expected)
    assert (out.csrcs, out.payload, out.padding) == (packet.csrcs, packet.payload, packet.padding)
    assert rtp_header_untrusted(out.serialize()) == rtp_header_untrusted(data)


small_ids = st.integers(1, 14)


@given(
    rtp_packets(),
    st.dictionaries(small_ids, small_ids),
    st.dictionaries(small_ids, st.binary(min_size=1, max_size=16), max_size=3),
)
def test_rewrite_extensions_one_byte_edits_match_the_parsed_view(
    packet: RtpPacket, id_map: dict[int, int], values: dict[int, bytes]
) -> None:
    expected: dict[int, bytes] = {}
    for ext_id, value in packet.extensions.items():
        if ext_id in id_map and id_map[ext_id] not in expected:
            expected[id_map[ext_id]] = value
    expected.update(values)
    out = rewrite_extensions_untrusted(packet.serialize(), id_map, values)
    parsed = RtpPacket.parse_untrusted(out)
    assert parsed.extensions == expected
    if expected and all(len(v) <= 16 and len(v) > 0 for v in expected.values()):
        assert parsed.extension_profile == ONE_BYTE_PROFILE
    assert (parsed.csrcs, parsed.payload, parsed.padding) == (
        packet.csrcs,
        packet.payload,
        packet.padding,
    )


@given(rtp_packets())
def test_rewrite_extensions_identity_is_exact_for_built_blocks(packet: RtpPacket) -> None:
    elements = packet.extensions
    assume(all(1 <= i <= 14 and 1 <= len(v) <= 16 for i, v in elements.items()))
    built = packet.with_extensions(elements).serialize()
    assert rewrite_extensions_untrusted(built, {i: i for i in range(1, 15)}) == built


# -- Hypothesis: garbage never raises anything but BadPacket -----------------------------------


@st.composite
def mangled_packets(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(rtp_packets()).serialize())
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "truncate", "first", "extend"]))
        if action == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif action == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif action == "first" and data:
            data[0] = draw(st.integers(0x80, 0xBF))
        elif action == "extend":
            data += draw(st.binary(max_size=8))
    return bytes(data)


garbage = st.one_of(st.binary(max_size=80), mangled_packets())


def only_bad_packet(function: Callable[..., object], *args: Any, **kwargs: Any) -> object:
    """``function(*args, **kwargs)``, or ``BadPacket`` if it raised that; anything else fails
    the test."""
    try:
        return function(*args, **kwargs)
    except BadPacket:
        return BadPacket


@given(garbage)
def test_garbage_raises_only_bad_packet(data: bytes) -> None:
    parsed = only_bad_packet(RtpPacket.parse_untrusted, data)
    layout = only_bad_packet(rtp_layout_untrusted, data)
    for accessor in (rtp_ssrc, rtp_seq, rtp_timestamp, rtp_payload_type, rtp_marker, is_rtcp):
        only_bad_packet(accessor, data)
    only_bad_packet(rtp_header_untrusted, data)
    only_bad_packet(rewrite_untrusted, data, ssrc=1, payload_type=2, sequence_number=3, timestamp=4)
    rewritten = only_bad_packet(rewrite_extensions_untrusted, data, {1: 2, 4: 20})
    edited = only_bad_packet(rewrite_extensions_untrusted, data, {4: 1, 10: 2}, {1: b"0"})
    for ext_id in (1, 4, 10, 15, 20):
        found = only_bad_packet(find_extension_untrusted, data, ext_id)
        only_bad_packet(find_extension_span_untrusted, data, ext_id)
        if isinstance(parsed, RtpPacket):
            assert found == parsed.extensions.get(ext_id)
    if isinstance(parsed, RtpPacket):
        # A packet that parses is whole: everything else accepts it too.
        assert parsed.serialize() == data
        assert layout is not BadPacket
        assert rewritten is not BadPacket
        assert edited is not BadPacket


@given(st.integers(0, 0xFFFF), st.binary(max_size=40))
def test_extension_block_garbage_raises_only_bad_packet(profile: int, block: bytes) -> None:
    for form in (profile, ONE_BYTE_PROFILE, TWO_BYTE_PROFILE):
        only_bad_packet(parse_extensions_untrusted, form, block)
