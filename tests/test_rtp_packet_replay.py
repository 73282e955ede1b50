"""The planned (replayed) header extension rewrite and span lookup agree with the walk.

:func:`rewrite_extensions_untrusted` and :func:`find_extension_span_untrusted` remember the
layout of the extension blocks they saw and replay it on packets with the same layout.
Whatever packet comes next (same layout with other values, a changed header byte, a
shorter packet, garbage), the answer must be exactly the walk's: the same bytes, or
BadPacket.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.errors import BadPacket
from trio_sfu.rtp import packet as rtp_packet
from trio_sfu.rtp.packet import (
    ExtensionRewriter,
    find_extension_span_untrusted,
    rewrite_extensions_untrusted,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# V=2 X=1 (0x90), PT 96, seq 1, ts 2, SSRC 0x11223344; one-byte block 0xBEDE of 2 words:
# id 4 length 1 "1" (mid: 40 31), id 2 length 3 (abs-send-time: 22 aabbcc), two padding
# bytes (00 00); then a 2-byte payload (dead). Offsets: block at 16, abs-send-time's value
# at 19-21, padding at 22-23, payload at 24.
PACKET = h("90 60 0001 00000002 11223344  bede 0002  40 31  22 aabbcc  00 00  dead")


def test_replay_of_a_known_layout_gives_the_walks_bytes() -> None:
    rewriter = ExtensionRewriter({2: 5}, {1: b"7"})
    first = rewriter.rewrite_untrusted(PACKET)
    # mid (4) dropped: its two bytes become padding; abs-send-time renumbered 2 -> 5
    # (0x22 -> 0x52); the trailing padding goes, mid value "7" as id 1 is appended (10 37):
    # still two words.
    assert first == h("90 60 0001 00000002 11223344  bede 0002  0000 52 aabbcc 10 37  dead")
    # Another packet of the stream: new seq, new abs-send-time; replayed, same layout.
    second = bytearray(PACKET)
    second[2:4] = b"\x00\x02"
    second[19:22] = h("010203")
    out = rewriter.rewrite_untrusted(bytes(second))
    assert out == h("90 60 0002 00000002 11223344  bede 0002  0000 52 010203 10 37  dead")
    assert len(rewriter._plans) == 1


def test_replay_of_a_block_whose_elements_all_go() -> None:
    # A pipe's packets: nothing of the publisher's leg is forwarded, the block goes.
    rewriter = ExtensionRewriter({7: 7}, None)
    first = rewriter.rewrite_untrusted(PACKET)
    assert first == h("80 60 0001 00000002 11223344  dead")
    second = bytearray(PACKET)
    second[2:4] = b"\x00\x02"
    second[17] = 0x32  # mid's value
    second[19:22] = h("010203")
    assert rewriter.rewrite_untrusted(bytes(second)) == h("80 60 0002 00000002 11223344  dead")
    assert len(rewriter._plans) == 1
    # Another layout (mid is id 5 now) is walked, and planned too.
    second[16] = 0x50
    assert rewriter.rewrite_untrusted(bytes(second)) == h("80 60 0002 00000002 11223344  dead")
    assert len(rewriter._plans) == 2


def test_replay_refuses_what_the_walk_refuses() -> None:
    rewriter = ExtensionRewriter({2: 5}, None)
    rewriter.rewrite_untrusted(PACKET)
    # A padding byte turned into an element header with id 0 and a length: malformed.
    bad = bytearray(PACKET)
    bad[22] = 0x01
    with pytest.raises(BadPacket):
        rewriter.rewrite_untrusted(bytes(bad))
    # Cut inside the block: the block overruns the packet.
    with pytest.raises(BadPacket):
        rewriter.rewrite_untrusted(PACKET[:20])


def test_changed_maps_are_noticed() -> None:
    id_map = {2: 5}
    values = {1: b"7"}
    assert rewrite_extensions_untrusted(PACKET, id_map, values)[18] == 0x52
    id_map[2] = 6
    values[1] = b"8"
    out = rewrite_extensions_untrusted(PACKET, id_map, values)
    assert out[18] == 0x62 and out[22:24] == h("10 38")


def test_span_lookup_replayed() -> None:
    assert find_extension_span_untrusted(PACKET, 2) == (19, 22)
    other = bytearray(PACKET)
    other[17] = 0x32  # mid's value: same layout
    other[20] = 0xFF  # abs-send-time's value: same layout
    assert find_extension_span_untrusted(bytes(other), 2) == (19, 22)
    other[18] = 0x32  # the element is id 3 now: the walk finds no id 2
    assert find_extension_span_untrusted(bytes(other), 2) is None


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    elements = draw(
        st.lists(st.tuples(st.integers(1, 14), st.integers(1, 16), st.integers(0, 2)), max_size=5)
    )
    block = bytearray()
    for ext_id, size, padding in elements:
        block.append((ext_id << 4) | (size - 1))
        block += draw(st.binary(min_size=size, max_size=size))
        block += bytes(padding)
    block += bytes(-len(block) % 4)
    first = 0x80 | (0x10 if elements or draw(st.booleans()) else 0)
    header = struct.pack("!BBHII", first, 96, 1, 2, 3)
    if first & 0x10:
        header += struct.pack("!HH", 0xBEDE, len(block) // 4) + block
    return header + draw(st.binary(max_size=8))


@st.composite
def variants(draw: st.DrawFn, packet: bytes) -> bytes:
    data = bytearray(packet)
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


def _outcome(call: object) -> bytes | str:
    try:
        result = call()  # type: ignore[operator]
    except BadPacket:
        return "BadPacket"
    except ValueError:
        return "ValueError"
    return bytes(result) if result is not None else "None"


@settings(max_examples=300, deadline=None)
@given(
    st.data(),
    packets(),
    st.dictionaries(st.integers(1, 14), st.integers(1, 16), max_size=4),
    st.dictionaries(st.integers(1, 14), st.binary(min_size=1, max_size=3), max_size=2),
)
def test_replay_matches_the_walk(
    data: st.DataObject, first: bytes, id_map: dict[int, int], values: dict[int, bytes]
) -> None:
    rewriter = ExtensionRewriter(id_map, values)
    _outcome(lambda: rewriter.rewrite_untrusted(first))  # plans first's layout, if it can
    second = data.draw(variants(first))
    replayed = _outcome(lambda: rewriter.rewrite_untrusted(second))
    walked = _outcome(
        lambda: rtp_packet._rewrite_extensions_slow_untrusted(second, id_map, values)[0]
    )
    assert replayed == walked


@settings(max_examples=300, deadline=None)
@given(st.data(), packets(), st.integers(1, 14))
def test_span_replay_matches_the_walk(data: st.DataObject, first: bytes, ext_id: int) -> None:
    rtp_packet._SPAN_PLANS.clear()
    _outcome(lambda: find_extension_span_untrusted(first, ext_id))
    second = data.draw(variants(first))
    replayed = _outcome(lambda: find_extension_span_untrusted(second, ext_id))
    rtp_packet._SPAN_PLANS.clear()
    walked = _outcome(lambda: find_extension_span_untrusted(second, ext_id))
    assert replayed == walked
