"""H.264 RTP payloads (RFC 6184): NAL types, STAP-A, FU-A and key frame detection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.errors import BadPacket
from trio_sfu.rtp import h264
from trio_sfu.rtp.h264 import H264Info

# NAL unit header octet: |F|NRI(2)|Type(5)|

# 65 = 0110 0101: F=0 NRI=11 Type=5 (IDR slice); then slice data.
IDR = bytes.fromhex("65 88 84 00 21")
# 67 = 0110 0111: Type=7 (SPS); 42 e0 1f = profile_idc 66 (baseline), constraints, level 3.1.
SPS = bytes.fromhex("67 42 e0 1f")
# 68 = 0110 1000: Type=8 (PPS).
PPS = bytes.fromhex("68 ce 3c 80")
# 41 = 0100 0001: NRI=10 Type=1 (non-IDR slice).
SLICE = bytes.fromhex("41 9a 00 04")
# 06 = 0000 0110: NRI=00 Type=6 (SEI).
SEI = bytes.fromhex("06 05 01 ff")
# 09 = Type 9 (access unit delimiter) with its one-octet payload f0.
AUD = bytes.fromhex("09 f0")

# STAP-A: 78 = 0111 1000: F=0 NRI=11 Type=24, then (16-bit size, NAL unit) pairs:
#   00 04 | 67 42 e0 1f   SPS
#   00 04 | 68 ce 3c 80   PPS
#   00 05 | 65 88 84 00 21   IDR
STAP_SPS_PPS_IDR = bytes.fromhex("78 0004 6742e01f 0004 68ce3c80 0005 6588840021")
# STAP-A 58 (NRI=10) of a non-IDR slice and an AUD: 00 04 | 41 9a 00 04, 00 02 | 09 f0
STAP_SLICE_AUD = bytes.fromhex("58 0004 419a0004 0002 09f0")
# STAP-A with only a PPS: 78 | 00 04 68 ce 3c 80
STAP_PPS = bytes.fromhex("78 0004 68ce3c80")

# FU-A: FU indicator 7c = 0111 1100: NRI=11 Type=28; FU header |S|E|R|Type|:
#   85 = 1000 0101: S=1 E=0 R=0 Type=5 -> first fragment of an IDR slice
#   05 = 0000 0101: middle fragment;  45 = 0100 0101: E=1, last fragment
FU_IDR_START = bytes.fromhex("7c 85 88 84")
FU_IDR_MIDDLE = bytes.fromhex("7c 05 00 21")
FU_IDR_END = bytes.fromhex("7c 45 99")
# 5c = NRI 10 Type 28; 81 = S=1 Type=1: first fragment of a non-IDR slice.
FU_SLICE_START = bytes.fromhex("5c 81 9a")
# 7c 87: S=1 Type=7: an SPS fragmented (unusual but legal).
FU_SPS_START = bytes.fromhex("7c 87 42 e0")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (IDR, H264Info(5, (5,), True, True, True)),
        (SPS, H264Info(7, (7,), True, True, True)),
        (PPS, H264Info(8, (8,), True, True, True)),
        (SLICE, H264Info(1, (1,), False, True, True)),
        (SEI, H264Info(6, (6,), False, True, True)),
        (AUD, H264Info(9, (9,), False, True, True)),
        (STAP_SPS_PPS_IDR, H264Info(24, (7, 8, 5), True, True, True)),
        (STAP_SLICE_AUD, H264Info(24, (1, 9), False, True, True)),
        (STAP_PPS, H264Info(24, (8,), False, True, True)),
        (FU_IDR_START, H264Info(28, (5,), True, True, False)),
        (FU_IDR_MIDDLE, H264Info(28, (5,), False, False, False)),
        (FU_IDR_END, H264Info(28, (5,), False, False, True)),
        (FU_SLICE_START, H264Info(28, (1,), False, True, False)),
        (FU_SPS_START, H264Info(28, (7,), True, True, False)),
        # 79 = STAP-B (type 25, interleaved mode): reported, not opened.
        (bytes.fromhex("79 0001 0002 4100"), H264Info(25, (), False, True, True)),
        # 1e = type 30 (undefined in RFC 6184): reported by type, not opened.
        (bytes.fromhex("1e 00"), H264Info(30, (), False, True, True)),
    ],
)
def test_vectors(payload: bytes, expected: H264Info) -> None:
    assert h264.parse_payload_untrusted(payload) == expected
    assert h264.is_keyframe(payload) is expected.keyframe
    assert h264.parse_payload_untrusted(memoryview(payload)) == expected


def test_nal_type_ignores_f_and_nri() -> None:
    # e5 = 1110 0101: F=1 NRI=11 Type=5: still an IDR by type.
    assert h264.parse_payload_untrusted(bytes.fromhex("e5 00")).nal_types == (5,)
    # 05 = NRI=00 Type=5.
    assert h264.is_keyframe(bytes.fromhex("05 00"))


@pytest.mark.parametrize(
    "payload",
    [
        "",  # empty
        "78",  # STAP-A with no units
        "78 00",  # STAP-A: half a size field
        "78 0005 6742e0",  # size 5, only 3 octets left
        "78 0000",  # a zero-length unit
        "78 0002 4100 00",  # one good unit, then one octet of a size field
        "7c",  # FU-A without FU header
        "7c c5 00",  # FU-A with S=1 and E=1
    ],
)
def test_malformed(payload: str) -> None:
    data = bytes.fromhex(payload)
    with pytest.raises(BadPacket):
        h264.parse_payload_untrusted(data)
    with pytest.raises(BadPacket):
        h264.is_keyframe(data)


def test_build_stap_a_vector() -> None:
    # F = OR of the units' F bits, NRI = the highest: 67/68/65 all NRI=11 -> 78.
    assert h264.build_stap_a([SPS, PPS, IDR]) == STAP_SPS_PPS_IDR
    # 41 (NRI 10) and 09 (NRI 00) -> 58.
    assert h264.build_stap_a([SLICE, AUD]) == STAP_SLICE_AUD
    with pytest.raises(ValueError):
        h264.build_stap_a([])
    with pytest.raises(ValueError):
        h264.build_stap_a([b""])


def test_build_fu_a_vector() -> None:
    # A 7-octet IDR unit in payloads of at most 4: indicator 7c, then 2 body octets each.
    unit = bytes.fromhex("65 01 02 03 04 05 06")
    assert h264.build_fu_a(unit, 4) == [
        bytes.fromhex("7c 85 01 02"),  # S=1, Type 5
        bytes.fromhex("7c 05 03 04"),
        bytes.fromhex("7c 45 05 06"),  # E=1
    ]
    # Fits: sent whole as a single NAL unit packet.
    assert h264.build_fu_a(unit, 7) == [unit]
    with pytest.raises(ValueError):
        h264.build_fu_a(unit, 2)


nal_units = st.builds(
    lambda header, body: bytes((header,)) + body,
    st.integers(0, 0xFF).filter(lambda b: 1 <= b & 0x1F <= 23),
    st.binary(max_size=40),
)


@settings(max_examples=150)
@given(st.lists(nal_units, min_size=1, max_size=6))
def test_stap_a_round_trip(units: list[bytes]) -> None:
    info = h264.parse_payload_untrusted(h264.build_stap_a(units))
    types = tuple(u[0] & 0x1F for u in units)
    assert info.packet_type == 24
    assert info.nal_types == types
    assert info.keyframe == any(t in (5, 7) for t in types)


@settings(max_examples=150)
@given(nal_units, st.integers(3, 20))
def test_fu_a_round_trip(unit: bytes, max_payload: int) -> None:
    parts = h264.build_fu_a(unit, max_payload)
    assert all(len(p) <= max_payload for p in parts)
    if len(parts) == 1:
        assert parts == [unit]
        return
    infos = [h264.parse_payload_untrusted(p) for p in parts]
    assert [i.start for i in infos] == [True] + [False] * (len(parts) - 1)
    assert [i.end for i in infos] == [False] * (len(parts) - 1) + [True]
    assert all(i.nal_types == (unit[0] & 0x1F,) for i in infos)
    assert infos[0].keyframe == (unit[0] & 0x1F in (5, 7))
    assert not any(i.keyframe for i in infos[1:])
    # Reassembly per RFC 6184 5.8: F/NRI from the indicator, type from the FU header.
    header = parts[0][0] & 0xE0 | parts[0][1] & 0x1F
    assert bytes((header,)) + b"".join(p[2:] for p in parts) == unit


@settings(max_examples=300)
@given(st.binary(max_size=16))
def test_garbage_raises_only_bad_packet(data: bytes) -> None:
    try:
        info = h264.parse_payload_untrusted(data)
    except BadPacket:
        with pytest.raises(BadPacket):
            h264.is_keyframe(data)
        return
    assert info.packet_type == data[0] & 0x1F
    assert h264.is_keyframe(data) is info.keyframe
    assert all(0 <= t <= 31 for t in info.nal_types)
