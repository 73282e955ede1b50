"""VP8 payload descriptor (RFC 7741 section 4.2) parsing, key frames, rewriting, continuity."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.errors import BadPacket
from trio_sfu.rtp import vp8
from trio_sfu.rtp.vp8 import Vp8Continuity, Vp8Descriptor, Vp8Info

# --- hand-checked vectors -----------------------------------------------------------------

# Shortest form: one descriptor octet, then the VP8 payload.
#   10  = 0001 0000: X=0 R=0 N=0 S=1 R=0 PID=000  -> start of partition 0
#   50  = 0101 0000: first octet of the VP8 frame tag: size0=010 H(show)=1 VER=000 P=0
#                    -> P=0: key frame
#   02 00 9d 01 2a: rest of the frame tag and the key frame start code 9d 01 2a
KEYFRAME_SHORT = bytes.fromhex("10 50 02 00 9d 01 2a")
# Same with 51 = ... P=1: an inter frame.
INTERFRAME_SHORT = bytes.fromhex("10 51 02 00")

# What Chromium sends with simulcast / temporal layers (I, L and T present):
#   90 = 1001 0000: X=1 N=0 S=1 PID=0
#   e0 = 1110 0000: I=1 L=1 T=1 K=0
#   d2 9c: M=1, PictureID = 0x529c = 21148 (15 bits)
#   c8: TL0PICIDX = 200
#   60 = 0110 0000: TID=01 (1) Y=1 KEYIDX=00000
#   9d: VP8 payload, P bit (lowest) = 1 -> not a key frame
CHROME_TL1 = bytes.fromhex("90 e0 d2 9c c8 60 9d 01")
# Same layout, TID 0, key frame: 00 = TID 00 Y 0; VP8 octet 50 (P=0).
CHROME_KEY = bytes.fromhex("90 e0 80 05 07 00 50 02 00 9d 01 2a")

# 7-bit PictureID only:
#   80 = X=1 S=0 PID=0; 80 = I=1; 2a = M=0, PictureID 42; 33: VP8 data
SEVEN_BIT = bytes.fromhex("80 80 2a 33")

# K without T: 90 10 = X S, K=1; 1f: TID bits ignored, KEYIDX = 31; 50: P=0.
KEYIDX_ONLY = bytes.fromhex("90 10 1f 50")

# N bit and partition 3, not a frame start: 23 = 0010 0011: N=1 S=0 PID=3
NON_REF_PART3 = bytes.fromhex("23 ff")


def test_short_keyframe() -> None:
    info = vp8.summarize_untrusted(KEYFRAME_SHORT)
    assert info == Vp8Info(
        picture_id=None,
        picture_id_bits=0,
        tl0picidx=None,
        tid=None,
        layer_sync=False,
        keyframe=True,
        start_of_frame=True,
        header_length=1,
    )
    assert vp8.is_keyframe(KEYFRAME_SHORT)
    assert not vp8.is_keyframe(INTERFRAME_SHORT)
    assert vp8.summarize_untrusted(INTERFRAME_SHORT).start_of_frame


def test_chrome_layout() -> None:
    info = vp8.summarize_untrusted(CHROME_TL1)
    assert info.picture_id == 21148
    assert info.picture_id_bits == 15
    assert info.tl0picidx == 200
    assert info.tid == 1
    assert info.layer_sync is True
    assert info.keyframe is False
    assert info.start_of_frame is True
    assert info.header_length == 6

    key = vp8.summarize_untrusted(CHROME_KEY)
    assert (key.picture_id, key.tl0picidx, key.tid, key.layer_sync) == (5, 7, 0, False)
    assert key.keyframe
    assert vp8.is_keyframe(memoryview(CHROME_KEY))

    d = Vp8Descriptor.parse_untrusted(CHROME_TL1)
    assert d == Vp8Descriptor(
        start_of_partition=True,
        partition_index=0,
        non_reference=False,
        extended=True,
        picture_id=21148,
        long_picture_id=True,
        tl0picidx=200,
        tid=1,
        layer_sync=True,
        key_idx=None,
    )
    assert d.header_length == 6
    assert d.to_bytes() == CHROME_TL1[:6]


def test_seven_bit_picture_id() -> None:
    info = vp8.summarize_untrusted(SEVEN_BIT)
    assert (info.picture_id, info.picture_id_bits, info.header_length) == (42, 7, 3)
    assert not info.start_of_frame and not info.keyframe
    d = Vp8Descriptor.parse_untrusted(SEVEN_BIT)
    assert d.picture_id == 42 and not d.long_picture_id
    assert d.to_bytes() == SEVEN_BIT[:3]


def test_keyidx_without_tid() -> None:
    info = vp8.summarize_untrusted(KEYIDX_ONLY)
    assert info.tid is None and not info.layer_sync
    assert info.header_length == 3
    assert info.keyframe
    d = Vp8Descriptor.parse_untrusted(KEYIDX_ONLY)
    assert d.key_idx == 31 and d.tid is None
    # Rebuilt with the ignored TID bits zeroed: 10 = K only, 1f = KEYIDX 31.
    assert d.to_bytes() == bytes.fromhex("90 10 1f")


def test_non_reference_other_partition_is_not_keyframe() -> None:
    info = vp8.summarize_untrusted(NON_REF_PART3)
    assert not info.start_of_frame
    assert not info.keyframe  # P bit of ff is 1 anyway, but PID=3 decides first
    d = Vp8Descriptor.parse_untrusted(NON_REF_PART3)
    assert (d.non_reference, d.start_of_partition, d.partition_index) == (True, False, 3)
    # S=1 but PID=1: a later partition's start, never a key frame start even with P=0.
    assert not vp8.is_keyframe(bytes.fromhex("11 50"))
    # S=0, PID=0, P=0: continuation of partition 0, not the frame's first packet.
    assert not vp8.is_keyframe(bytes.fromhex("00 50"))


def test_extension_octet_with_no_fields() -> None:
    # 90 00: X=1 with I=L=T=K=0 is legal; the payload starts after the two octets.
    info = vp8.summarize_untrusted(bytes.fromhex("90 00 50"))
    assert info.header_length == 2 and info.keyframe
    d = Vp8Descriptor.parse_untrusted(bytes.fromhex("90 00 50"))
    assert d.extended and d.to_bytes() == bytes.fromhex("90 00")


def test_reserved_bits_ignored() -> None:
    # 58 = 0101 1000: R=1 (0x40), S=1, R=1 (0x08), PID=0. 0f: I L T K all 0, RSV=1111.
    info = vp8.summarize_untrusted(bytes.fromhex("58 50"))
    assert info.keyframe and info.header_length == 1
    info = vp8.summarize_untrusted(bytes.fromhex("90 0f 50"))
    assert info.keyframe and info.header_length == 2


@pytest.mark.parametrize(
    "payload",
    [
        "",  # nothing
        "10",  # descriptor only, no VP8 octet
        "90",  # X=1 but no extension octet
        "90 80",  # I=1 but no PictureID
        "90 80 80",  # M=1 but the second PictureID octet is missing
        "90 80 80 01",  # 15-bit PictureID complete, no VP8 octet
        "90 40",  # L=1, no TL0PICIDX
        "90 20",  # T=1, no TID octet
        "90 10",  # K=1, no KEYIDX octet
        "90 f0 80 01 05 20",  # everything present, no VP8 octet
    ],
)
def test_truncated(payload: str) -> None:
    data = bytes.fromhex(payload)
    with pytest.raises(BadPacket):
        vp8.summarize_untrusted(data)
    with pytest.raises(BadPacket):
        vp8.is_keyframe(data)
    with pytest.raises(BadPacket):
        Vp8Descriptor.parse_untrusted(data)
    with pytest.raises(BadPacket):
        vp8.rewrite_picture_id(data, 1, 2)


# --- rewriting ----------------------------------------------------------------------------


def test_rewrite_fifteen_bit() -> None:
    out = vp8.rewrite_picture_id(CHROME_TL1, 0x7FFF, 0)
    # d2 9c -> ff ff (M=1, 0x7fff); c8 -> 00; everything else untouched.
    assert out == bytes.fromhex("90 e0 ff ff 00 60 9d 01")
    out = vp8.rewrite_picture_id(CHROME_TL1, 0x0102, 0x7F)
    assert out == bytes.fromhex("90 e0 81 02 7f 60 9d 01")
    # A value past 15 / 8 bits is reduced to the field's width.
    assert vp8.rewrite_picture_id(CHROME_TL1, 0x8003, 0x1FF) == bytes.fromhex(
        "90 e0 80 03 ff 60 9d 01"
    )


def test_rewrite_keeps_seven_bit_width() -> None:
    # 300 = 0x12c; the 7-bit field gets 0x2c and M stays 0.
    assert vp8.rewrite_picture_id(SEVEN_BIT, 300, 9) == bytes.fromhex("80 80 2c 33")


def test_rewrite_none_and_absent_fields() -> None:
    # None leaves the field alone.
    assert vp8.rewrite_picture_id(CHROME_TL1, None, 1) == bytes.fromhex("90 e0 d2 9c 01 60 9d 01")
    assert vp8.rewrite_picture_id(CHROME_TL1, 7, None) == bytes.fromhex("90 e0 80 07 c8 60 9d 01")
    # No extension: nothing to rewrite, same bytes back.
    assert vp8.rewrite_picture_id(KEYFRAME_SHORT, 5, 6) == KEYFRAME_SHORT


def test_rewrite_copies_and_write_in_place() -> None:
    src = bytearray(CHROME_TL1)
    out = vp8.rewrite_picture_id(src, 1, 2)
    assert src == CHROME_TL1
    assert isinstance(out, bytes)
    vp8.write_picture_id(src, 1, 2)
    assert bytes(src) == out == bytes.fromhex("90 e0 80 01 02 60 9d 01")


@st.composite
def descriptors(draw: st.DrawFn) -> Vp8Descriptor:
    long_pid = draw(st.booleans())
    tid = draw(st.none() | st.integers(0, 3))
    return Vp8Descriptor(
        start_of_partition=draw(st.booleans()),
        partition_index=draw(st.integers(0, 7)),
        non_reference=draw(st.booleans()),
        extended=draw(st.booleans()),
        picture_id=draw(st.none() | st.integers(0, 0x7FFF if long_pid else 0x7F)),
        long_picture_id=long_pid,
        tl0picidx=draw(st.none() | st.integers(0, 255)),
        tid=tid,
        layer_sync=False if tid is None else draw(st.booleans()),
        key_idx=draw(st.none() | st.integers(0, 31)),
    )


@settings(max_examples=200)
@given(descriptors(), st.binary(min_size=1, max_size=8))
def test_descriptor_round_trip(d: Vp8Descriptor, body: bytes) -> None:
    payload = d.to_bytes() + body
    if d.picture_id is None:
        # Without a PictureID the M bit is not on the wire: it reads back as the default.
        d = attrs.evolve(d, long_picture_id=True)
    assert Vp8Descriptor.parse_untrusted(payload) == d
    info = vp8.summarize_untrusted(payload)
    assert info.header_length == d.header_length == len(d.to_bytes())
    assert (info.picture_id, info.tl0picidx, info.tid) == (d.picture_id, d.tl0picidx, d.tid)
    assert info.picture_id_bits == (0 if d.picture_id is None else 15 if d.long_picture_id else 7)
    assert info.start_of_frame == (d.start_of_partition and d.partition_index == 0)
    assert info.keyframe == (info.start_of_frame and body[0] & 1 == 0)


@settings(max_examples=200)
@given(
    descriptors(), st.binary(min_size=1, max_size=8), st.integers(0, 0x7FFF), st.integers(0, 255)
)
def test_rewrite_round_trip(d: Vp8Descriptor, body: bytes, pid: int, tl0: int) -> None:
    payload = d.to_bytes() + body
    out = vp8.rewrite_picture_id(payload, pid, tl0)
    assert len(out) == len(payload)
    assert out[d.header_length :] == body
    info = vp8.summarize_untrusted(out)
    before = vp8.summarize_untrusted(payload)
    expect_pid = None if d.picture_id is None else pid & (0x7FFF if d.long_picture_id else 0x7F)
    assert info.picture_id == expect_pid
    assert info.tl0picidx == (None if d.tl0picidx is None else tl0)
    assert info._replace(picture_id=None, tl0picidx=None) == before._replace(
        picture_id=None, tl0picidx=None
    )


@settings(max_examples=300)
@given(st.binary(max_size=12))
def test_garbage_raises_only_bad_packet(data: bytes) -> None:
    # Every entry point either accepts the bytes consistently or raises BadPacket, and
    # all of them agree on which.
    try:
        info = vp8.summarize_untrusted(data)
    except BadPacket:
        with pytest.raises(BadPacket):
            vp8.is_keyframe(data)
        with pytest.raises(BadPacket):
            Vp8Descriptor.parse_untrusted(data)
        with pytest.raises(BadPacket):
            vp8.rewrite_picture_id(data, 0x1234, 0x56)
        return
    assert info.header_length < len(data)
    assert vp8.is_keyframe(data) == info.keyframe
    assert Vp8Descriptor.parse_untrusted(data).header_length == info.header_length
    out = vp8.rewrite_picture_id(data, 0x1234, 0x56)
    assert len(out) == len(data) and out[info.header_length :] == data[info.header_length :]


def test_descriptor_validation() -> None:
    with pytest.raises(ValueError):
        Vp8Descriptor(picture_id=0x8000)
    with pytest.raises(ValueError):
        Vp8Descriptor(picture_id=200, long_picture_id=False)
    with pytest.raises(ValueError):
        Vp8Descriptor(layer_sync=True)
    with pytest.raises(ValueError):
        Vp8Descriptor(partition_index=8)
    # Any optional field turns X on.
    assert Vp8Descriptor(tl0picidx=3).extended


# --- continuity across spliced streams ----------------------------------------------------


def info(pid: int | None, tl0: int | None, *, bits: int = 15, key: bool = False) -> Vp8Info:
    """A packet summary as summarize_untrusted() would give it."""
    return Vp8Info(pid, 0 if pid is None else bits, tl0, 0, False, key, key, 6)


def test_continuity_switch_and_wrap() -> None:
    c = Vp8Continuity()
    # Stream A keeps its own numbering (no initial values given).
    c.switch_to(info(0x7FFE, 254, key=True))
    assert c.map(info(0x7FFE, 254)) == (0x7FFE, 254)
    assert c.map(info(0x7FFF, 254)) == (0x7FFF, 254)
    assert c.map(info(0, 255)) == (0, 255)  # PictureID wraps at 2**15
    assert c.map(info(1, 0)) == (1, 0)  # TL0PICIDX wraps at 2**8
    # Switch to stream B, numbered far away: its key frame follows A's last picture.
    c.switch_to(info(9000, 77, key=True))
    assert c.map(info(9000, 77, key=True)) == (2, 1)
    assert c.map(info(9000, 77)) == (2, 1)  # second packet of the same picture
    assert c.map(info(9001, 77)) == (3, 1)
    assert c.map(info(9002, 78)) == (4, 2)
    # A late packet of B from before its key frame is refused.
    assert c.map(info(8999, 76)) is None


def test_continuity_initial_values_and_seven_bit_source() -> None:
    c = Vp8Continuity(initial_picture_id=0x7FFF, initial_tl0picidx=255)
    c.switch_to(info(126, 3, bits=7, key=True))
    assert c.map(info(126, 3, bits=7)) == (0x7FFF, 255)
    assert c.map(info(127, 3, bits=7)) == (0, 255)
    # The 7-bit source wraps 127 -> 0; the outgoing 15-bit id goes on.
    assert c.map(info(0, 4, bits=7)) == (1, 0)
    assert c.map(info(1, 4, bits=7)) == (2, 0)


def test_continuity_drop_picture() -> None:
    c = Vp8Continuity(initial_picture_id=10, initial_tl0picidx=0)
    c.switch_to(info(500, 20, key=True))
    assert c.map(info(500, 20)) == (10, 0)
    # Picture 501 (a TID 2 frame, say) is left out: every packet of it.
    assert c.drop_picture(info(501, 20))
    assert c.drop_picture(info(501, 20))
    assert c.map(info(501, 20)) is None
    assert c.map(info(502, 20)) == (11, 0)
    # Too late to close a gap: 502 is out already.
    assert not c.drop_picture(info(500, 20))
    # No PictureID, nothing to drop.
    assert not c.drop_picture(info(None, 20))


def test_continuity_absent_fields() -> None:
    c = Vp8Continuity()
    # A stream without TL0PICIDX: tl0 maps to None (left as is).
    c.switch_to(info(40, None, key=True))
    assert c.map(info(40, None)) == (40, None)
    assert c.map(info(41, 9)) == (41, None)
    # Before any switch nothing maps.
    assert Vp8Continuity().map(info(1, 1)) == (None, None)
