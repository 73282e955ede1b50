"""RTP retransmission (RFC 4588): trio_sfu.rtp.rtx."""

from __future__ import annotations

import contextlib

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_rtp_packet import FULL, MINIMAL, garbage, h, rtp_packets
from trio_sfu.errors import BadPacket
from trio_sfu.rtp.packet import RtpPacket, padding_bytes
from trio_sfu.rtp.rtx import rtx_unwrap_untrusted, rtx_wrap

# FULL (tests/test_rtp_packet.py) is PT 8, seq 1, ts 2, SSRC 3, two CSRCs, a one-byte
# extension block, payload aabbcc and 3 bytes of padding.
FULL_AS_RTX = h(
    "92"  # V=2, P=0 (the original padding is dropped), X=1, CC=2
    "61"  # M=0 (kept), PT=97 (rtx)
    "1000"  # the RTX stream's sequence number
    "00000002"  # timestamp, kept
    "0a0b0c0d"  # the RTX SSRC
    "00000011 00000022"  # CSRCs, kept
    "bede0002 4031 00 a17230 0000"  # header extensions, kept
    "0001"  # OSN: the original sequence number
    "aabbcc"  # the original payload
)
FULL_WITHOUT_PADDING = h(
    "92 08 0001 00000002 00000003"  # P cleared, everything else as it was
    "00000011 00000022 bede0002 4031 00 a17230 0000"
    "aabbcc"
)


def test_wrap_vector() -> None:
    rtx = rtx_wrap(FULL, rtx_ssrc=0x0A0B0C0D, rtx_payload_type=97, rtx_sequence_number=0x1000)
    assert rtx == FULL_AS_RTX


def test_unwrap_vector() -> None:
    original = rtx_unwrap_untrusted(FULL_AS_RTX, payload_type=8, ssrc=3)
    assert original == FULL_WITHOUT_PADDING


def test_wrap_keeps_the_marker_and_wraps_the_sequence_number() -> None:
    rtx = RtpPacket.parse_untrusted(
        rtx_wrap(MINIMAL, rtx_ssrc=7, rtx_payload_type=97, rtx_sequence_number=65536 + 5)
    )
    assert (rtx.marker, rtx.sequence_number, rtx.payload) == (True, 5, h("fffe cafe"))


def test_unwrap_drops_the_rtx_padding() -> None:
    rtx = RtpPacket.parse_untrusted(FULL_AS_RTX)
    padded = attrs.evolve(rtx, padding=padding_bytes(7)).serialize()
    assert rtx_unwrap_untrusted(padded, payload_type=8, ssrc=3) == FULL_WITHOUT_PADDING


def test_padding_only_rtx_carries_nothing() -> None:
    # Chromium's bandwidth probes on the RTX stream: no OSN, no payload, just padding.
    probe = h("a0 61 0001 00000000 0a0b0c0d") + padding_bytes(224)
    assert rtx_unwrap_untrusted(probe, payload_type=96, ssrc=1) is None
    empty = h("80 61 0001 00000000 0a0b0c0d")  # header only: nothing either
    assert rtx_unwrap_untrusted(empty, payload_type=96, ssrc=1) is None


def test_one_byte_payload_is_bad() -> None:
    with pytest.raises(BadPacket):
        rtx_unwrap_untrusted(h("80 61 0001 00000000 0a0b0c0d 00"), payload_type=96, ssrc=1)


@pytest.mark.parametrize(
    "data", [b"", MINIMAL[:11], b"\x40" + MINIMAL[1:], h("a0e0 0001 00000000 00000000 aa03")]
)
def test_malformed_packets(data: bytes) -> None:
    with pytest.raises(BadPacket):
        rtx_wrap(data, rtx_ssrc=1, rtx_payload_type=97, rtx_sequence_number=1)
    with pytest.raises(BadPacket):
        rtx_unwrap_untrusted(data, payload_type=96, ssrc=1)


@given(rtp_packets(), st.integers(0, 2**32 - 1), st.integers(0, 127), st.integers(0, 65535))
def test_round_trip(packet: RtpPacket, rtx_ssrc: int, rtx_pt: int, rtx_seq: int) -> None:
    rtx = rtx_wrap(
        packet.serialize(), rtx_ssrc=rtx_ssrc, rtx_payload_type=rtx_pt, rtx_sequence_number=rtx_seq
    )
    parsed = RtpPacket.parse_untrusted(rtx)
    assert (parsed.ssrc, parsed.payload_type, parsed.sequence_number) == (rtx_ssrc, rtx_pt, rtx_seq)
    assert parsed.payload[:2] == packet.sequence_number.to_bytes(2, "big")
    assert parsed.padding == b""
    original = rtx_unwrap_untrusted(rtx, payload_type=packet.payload_type, ssrc=packet.ssrc)
    assert original == attrs.evolve(packet, padding=b"").serialize()


@given(garbage)
def test_garbage_raises_only_bad_packet(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        rtx_wrap(data, rtx_ssrc=1, rtx_payload_type=97, rtx_sequence_number=1)
    with contextlib.suppress(BadPacket):
        rtx_unwrap_untrusted(data, payload_type=96, ssrc=1)
