"""RTP packets (RFC 3550) and their header extensions (RFC 8285). Sans-IO.

The layout, for reference::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                           timestamp                           |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                             SSRC                              |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                 CSRC list (CC entries of 32 bits)             |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |   profile (0xBEDE or 0x100X)  |   length in 32-bit words      |  if X
    |          extension elements, zero padding up to a word        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                          payload ...                          |
    |                               |  padding ...  | padding count |  if P
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Three levels of cost, for three kinds of caller:

* The hot path reads fields straight from the datagram (:func:`rtp_ssrc`,
  :func:`rtp_header_untrusted`, :func:`find_extension_untrusted`, ...) and builds each
  consumer's copy with :func:`rewrite_untrusted` (and :func:`rewrite_extensions_untrusted`
  where the extension ids differ). None of them builds an object per packet.
* :func:`rtp_layout_untrusted` validates the framing (CSRCs, extension block, padding) and
  says where the payload is, for payload parsers and RTX.
* :meth:`RtpPacket.parse_untrusted` / :meth:`RtpPacket.serialize` is the full, exact
  round trip, for tests, tools and the rare packet the server makes itself.

Errors: everything that reads network bytes (the ``*_untrusted`` functions and the field
accessors) raises :class:`~trio_sfu.errors.BadPacket` and nothing else, whatever the bytes.
Functions that build packets from values raise ``ValueError`` for values out of range: that
is a bug in the caller, not bad input. Returned buffers are always new; input buffers are
never modified, except by :func:`rewrite_in_place`, which says so.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Collection, Mapping
from typing import Final, TypeAlias, final

import attrs

from trio_sfu.errors import BadPacket

__all__ = [
    "ONE_BYTE_PROFILE",
    "RTP_HEADER_SIZE",
    "TWO_BYTE_PROFILE",
    "Buffer",
    "ExtensionRewriter",
    "RtpPacket",
    "build_extensions",
    "find_extension_span_untrusted",
    "find_extension_untrusted",
    "is_rtcp",
    "padding_bytes",
    "parse_extensions_untrusted",
    "rewrite_extensions_untrusted",
    "rewrite_in_place",
    "rewrite_untrusted",
    "rtp_header_untrusted",
    "rtp_layout_untrusted",
    "rtp_marker",
    "rtp_payload_type",
    "rtp_seq",
    "rtp_ssrc",
    "rtp_timestamp",
]

Buffer: TypeAlias = bytes | bytearray | memoryview
"""Anything the readers accept: a datagram as received, or a slice of one."""
_Check: TypeAlias = Callable[[Buffer], tuple[int, ...]]

RTP_HEADER_SIZE: Final = 12
ONE_BYTE_PROFILE: Final = 0xBEDE
"""RFC 8285 one-byte header form: ids 1-14, values of 1-16 bytes."""
TWO_BYTE_PROFILE: Final = 0x1000
"""RFC 8285 two-byte header form (0x100X; the low 4 "appbits" are kept, not interpreted):
ids 1-255, values of 0-255 bytes."""

_FIXED = struct.Struct("!BBHII")  # first byte, second byte, seq, timestamp, ssrc
_PT_SEQ_TS_SSRC = struct.Struct("!BHII")  # the same from offset 1
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_EXT_HEADER = struct.Struct("!HH")  # profile, length in words
_CSRCS = tuple(struct.Struct(f"!{n}I") for n in range(16))


# -- Field accessors -------------------------------------------------------------------------
#
# Each reads only its own field and raises BadPacket if the buffer is too short to hold it;
# none looks at the version or the rest of the packet. They are meant for a datagram already
# demultiplexed as RTP (first byte 128-191, RFC 7983) and known to hold the 12-byte fixed
# header, which is what rtp_header_untrusted() and every other *_untrusted reader check.


def rtp_ssrc(buf: Buffer) -> int:
    """The SSRC (bytes 8-11)."""
    try:
        ssrc: int = _U32.unpack_from(buf, 8)[0]
    except struct.error:
        raise BadPacket("RTP packet shorter than 12 bytes") from None
    return ssrc


def rtp_seq(buf: Buffer) -> int:
    """The sequence number (bytes 2-3)."""
    try:
        seq: int = _U16.unpack_from(buf, 2)[0]
    except struct.error:
        raise BadPacket("RTP packet shorter than 4 bytes") from None
    return seq


def rtp_timestamp(buf: Buffer) -> int:
    """The RTP timestamp (bytes 4-7)."""
    try:
        timestamp: int = _U32.unpack_from(buf, 4)[0]
    except struct.error:
        raise BadPacket("RTP packet shorter than 8 bytes") from None
    return timestamp


def rtp_payload_type(buf: Buffer) -> int:
    """The payload type, 0-127 (byte 1 without the marker bit)."""
    try:
        return buf[1] & 0x7F
    except IndexError:
        raise BadPacket("RTP packet shorter than 2 bytes") from None


def rtp_marker(buf: Buffer) -> bool:
    """The marker bit (top bit of byte 1)."""
    try:
        return buf[1] >= 0x80
    except IndexError:
        raise BadPacket("RTP packet shorter than 2 bytes") from None


def is_rtcp(buf: Buffer) -> bool:
    """Whether an RTP/RTCP datagram (first byte 128-191) is RTCP, by RFC 5761 section 4.

    RTCP packet types 192-223 occupy the second byte where RTP has the marker bit and
    payload types 64-95, which is why RTP sessions that mux RTCP never use those types.
    """
    try:
        return 192 <= buf[1] <= 223
    except IndexError:
        raise BadPacket("datagram shorter than 2 bytes") from None


def rtp_header_untrusted(buf: Buffer) -> tuple[bool, int, int, int, int]:
    """``(marker, payload_type, sequence_number, timestamp, ssrc)`` in one unpack.

    Checks the length (12 bytes at least) and the version (2), nothing beyond the fixed
    header. The cheapest way to get more than one field.
    """
    try:
        first, second, seq, timestamp, ssrc = _FIXED.unpack_from(buf)
    except struct.error:
        raise BadPacket("RTP packet shorter than 12 bytes") from None
    if first >> 6 != 2:
        raise BadPacket(f"RTP version {first >> 6}, expected 2")
    return second >= 0x80, second & 0x7F, seq, timestamp, ssrc


def rtp_layout_untrusted(data: Buffer) -> tuple[int, int, int]:
    """Check an RTP packet's framing; return ``(csrc_end, payload_start, payload_end)``.

    ``csrc_end`` is where the extension block's 4-byte header starts (if X is set);
    ``data[payload_start:payload_end]`` is the payload without padding. Checks the version,
    that the CSRC list and the extension block fit, and that a padding count is between 1
    and the bytes left after the header. Does not look inside the extension block.
    """
    size = len(data)
    if size < RTP_HEADER_SIZE:
        raise BadPacket("RTP packet shorter than 12 bytes")
    first = data[0]
    if first >> 6 != 2:
        raise BadPacket(f"RTP version {first >> 6}, expected 2")
    csrc_end = pos = RTP_HEADER_SIZE + ((first & 0x0F) << 2)
    if first & 0x10:
        if pos + 4 > size:
            raise BadPacket("RTP header extension header truncated")
        pos += 4 + (_U16.unpack_from(data, pos + 2)[0] << 2)
    if pos > size:
        raise BadPacket("RTP header (CSRC list or extension block) truncated")
    end = size
    if first & 0x20:
        if pos == size:
            raise BadPacket("RTP padding flag set but no byte left for the padding count")
        pad = data[size - 1]
        if pad == 0 or pad > size - pos:
            raise BadPacket(f"RTP padding count {pad} outside 1..{size - pos}")
        end = size - pad
    return csrc_end, pos, end


# -- Header extensions (RFC 8285) --------------------------------------------------------------


def _walk_untrusted(
    data: Buffer, pos: int, end: int, profile: int, want: int = 0
) -> list[tuple[int, int, int]]:
    """``(id, value_start, value_end)`` of the elements in ``data[pos:end]``, in order.

    With ``want`` (an id), stop at the first element with that id and return only it;
    without a match the list holds every element walked (callers check the id).
    A profile that is not RFC 8285's has no elements we understand: ``[]``.

    One-byte form: a zero byte is padding; id 15 ends the block (RFC 8285 section 4.2: the
    elements before it count, the rest is ignored); id 0 with a length is not padding and
    not allowed. Two-byte form: a zero id byte is padding. An element running past the
    block is an error in both forms.
    """
    found: list[tuple[int, int, int]] = []
    if profile == ONE_BYTE_PROFILE:
        while pos < end:
            byte = data[pos]
            if byte == 0:
                pos += 1
                continue
            ext_id = byte >> 4
            if ext_id == 15:
                break
            if ext_id == 0:
                raise BadPacket("one-byte header extension element with id 0")
            start = pos + 1
            pos = start + (byte & 0x0F) + 1
            if pos > end:
                raise BadPacket(f"header extension element {ext_id} overruns its block")
            if ext_id == want:
                return [(ext_id, start, pos)]
            found.append((ext_id, start, pos))
    elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
        while pos < end:
            ext_id = data[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 2 > end:
                raise BadPacket(f"header extension element {ext_id} has no length byte")
            start = pos + 2
            pos = start + data[pos + 1]
            if pos > end:
                raise BadPacket(f"header extension element {ext_id} overruns its block")
            if ext_id == want:
                return [(ext_id, start, pos)]
            found.append((ext_id, start, pos))
    return found


def parse_extensions_untrusted(profile: int, block: Buffer) -> dict[int, bytes]:
    """The elements of an extension block (without its 4-byte header) as ``{id: value}``.

    ``profile`` 0xBEDE is the one-byte form and 0x1000-0x100F the two-byte form; any other
    profile yields ``{}``. If an id occurs twice, the first element counts (as in
    :func:`find_extension_untrusted`).
    """
    elements: dict[int, bytes] = {}
    for ext_id, start, stop in _walk_untrusted(block, 0, len(block), profile):
        if ext_id not in elements:
            elements[ext_id] = bytes(block[start:stop])
    return elements


def _encode_extensions(
    items: Collection[tuple[int, Buffer]], two_byte: bool | None
) -> tuple[int, bytearray]:
    """``(profile, block)``; ``two_byte=None`` tries the one-byte form first."""
    block = bytearray()
    if not two_byte:
        for ext_id, value in items:
            size = len(value)
            if 0 < ext_id < 15 and 0 < size <= 16:
                block.append((ext_id << 4) | (size - 1))
                block += value
            elif two_byte is None:
                return _encode_extensions(items, True)
            else:
                raise ValueError(
                    f"one-byte header extension {ext_id} with {size} bytes: "
                    "ids are 1-14 and values 1-16 bytes"
                )
        block += bytes(-len(block) % 4)
        return ONE_BYTE_PROFILE, block
    for ext_id, value in items:
        size = len(value)
        if not 0 < ext_id < 256 or size > 255:
            raise ValueError(
                f"two-byte header extension {ext_id} with {size} bytes: "
                "ids are 1-255 and values 0-255 bytes"
            )
        block.append(ext_id)
        block.append(size)
        block += value
    block += bytes(-len(block) % 4)
    return TWO_BYTE_PROFILE, block


def build_extensions(
    elements: Mapping[int, Buffer], *, two_byte: bool | None = None
) -> tuple[int, bytes]:
    """``(profile, block)`` holding ``elements`` in their order, zero-padded to a word.

    ``two_byte=None`` picks the one-byte form whenever every id is 1-14 and every value
    1-16 bytes long (what every browser accepts), else the two-byte form (which needs
    ``a=extmap-allow-mixed``). Raises ``ValueError`` if an element does not fit the form.
    """
    profile, block = _encode_extensions(elements.items(), two_byte)
    return profile, bytes(block)


def find_extension_span_untrusted(data: Buffer, ext_id: int) -> tuple[int, int] | None:
    """Where the value of header extension ``ext_id`` lies in ``data``: ``(start, end)``.

    ``None`` if the packet has no such element. For patching a value in place (a
    transport-wide sequence number, abs-send-time) without rebuilding the packet.

    Cheap, not thorough: checks the fixed header, the extension block's bounds and the
    elements up to the one found, not the padding or the elements after it. The last few
    layouts in which an id was found are remembered: a packet whose bytes that the walk
    reads (first byte, block header, element headers and padding up to the element) equal
    one of them gets its span without a walk.
    """
    plans = _SPAN_PLANS.get(ext_id)
    if plans is not None:
        size = len(data)
        for known_check, expected, need, known_span in plans:
            if size >= need and known_check(data) == expected:
                return known_span
    size = len(data)
    if size < RTP_HEADER_SIZE:
        raise BadPacket("RTP packet shorter than 12 bytes")
    first = data[0]
    if first >> 6 != 2:
        raise BadPacket(f"RTP version {first >> 6}, expected 2")
    if not first & 0x10:
        return None
    header = RTP_HEADER_SIZE + ((first & 0x0F) << 2)
    try:
        profile, words = _EXT_HEADER.unpack_from(data, header)
    except struct.error:
        raise BadPacket("RTP header extension header truncated") from None
    pos = header + 4
    end = pos + (words << 2)
    if end > size:
        raise BadPacket("RTP header extension block truncated")
    found = _walk_untrusted(data, pos, end, profile, ext_id)
    if not found or found[-1][0] != ext_id:
        return None
    span = found[-1][1], found[-1][2]
    if profile == ONE_BYTE_PROFILE:
        # Remember the layout: the bytes up to the element's header, values excluded.
        walked = _walk_untrusted(data, pos, span[0] - 1, profile) if span[0] - 1 > pos else []
        skip: set[int] = set()
        for _, start, stop in walked:
            skip.update(range(start, stop))
        positions = [0, header, header + 1, header + 2, header + 3]
        positions += [i for i in range(pos, span[0]) if i not in skip]
        check: _Check = operator.itemgetter(*positions)
        plans = _SPAN_PLANS.setdefault(ext_id, [])
        plans.insert(0, (check, check(data), max(end, RTP_HEADER_SIZE), span))
        del plans[_MAX_SPAN_PLANS:]
    return span


_MAX_SPAN_PLANS: Final = 8
_SPAN_PLANS: dict[int, list[tuple[_Check, tuple[int, ...], int, tuple[int, int]]]] = {}


def find_extension_untrusted(data: Buffer, ext_id: int) -> bytes | None:
    """The value of header extension ``ext_id`` (a mid or rid, say), or ``None``.

    No dict, no packet object: walks the elements until it finds the id. Checks as much as
    :func:`find_extension_span_untrusted`.
    """
    span = find_extension_span_untrusted(data, ext_id)
    if span is None:
        return None
    return bytes(data[span[0] : span[1]])


# -- Rewriting ---------------------------------------------------------------------------------


def rewrite_in_place(
    buf: bytearray, *, ssrc: int, payload_type: int, sequence_number: int, timestamp: int
) -> None:
    """Replace the four fields of a buffer the caller built and owns; keep the marker.

    ``buf`` must hold at least the 12-byte fixed header. Values are taken modulo their field
    size (2**16 for the sequence number, 2**32 for timestamp and SSRC, 2**7 for the payload
    type), so ``sequence_number=seq + offset`` needs no wrap-around of its own.
    """
    _PT_SEQ_TS_SSRC.pack_into(
        buf,
        1,
        (buf[1] & 0x80) | (payload_type & 0x7F),
        sequence_number & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc & 0xFFFFFFFF,
    )


def rewrite_untrusted(
    data: Buffer, *, ssrc: int, payload_type: int, sequence_number: int, timestamp: int
) -> bytearray:
    """A copy of an RTP packet with SSRC, payload type, sequence number and timestamp replaced.

    Everything else (marker, CSRCs, extensions, payload, padding) is copied as is. Checks only
    the length (12 bytes) and the version; the rest of the packet is not parsed. Values wrap
    as in :func:`rewrite_in_place`. The result is a new ``bytearray``, which the caller may
    modify further (a VP8 picture id, say).
    """
    if len(data) < RTP_HEADER_SIZE or data[0] >> 6 != 2:
        raise BadPacket("not an RTP packet: shorter than 12 bytes or version is not 2")
    out = bytearray(data)
    # rewrite_in_place() inlined: a nested keyword call costs a quarter of this function.
    _PT_SEQ_TS_SSRC.pack_into(
        out,
        1,
        (out[1] & 0x80) | (payload_type & 0x7F),
        sequence_number & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc & 0xFFFFFFFF,
    )
    return out


def rewrite_extensions_untrusted(
    data: Buffer, id_map: Mapping[int, int], values: Mapping[int, Buffer] | None = None
) -> bytearray:
    """A copy of an RTP packet whose header extensions are renumbered, filtered and set.

    Each element whose id is a key of ``id_map`` is kept under the id ``id_map`` gives (the
    producer's negotiated id to the router's, say); all others are dropped. ``values`` then
    sets elements by their new id, replacing or adding (a consumer's own mid). If no element
    is left, the X bit is cleared. The fixed header, CSRCs, payload and padding are copied.

    The common case, a one-byte block that stays one-byte, is edited in place: ids are
    renumbered, dropped elements become zero padding bytes (RFC 8285 allows them between
    elements), values of the same length are overwritten, others are appended. Otherwise
    the block is rebuilt, one-byte form when everything fits it, else two-byte. Either way
    the elements are the same; only the bytes between them differ.

    Packets of one stream share their block's layout, so the edit is planned once per
    layout and replayed (see :class:`ExtensionRewriter`, which a caller rewriting many
    packets with the same maps can hold itself; this function keeps one per ``(id_map,
    values)`` pair it sees, checked against copies of both, so mutating them is safe).

    Raises ``BadPacket`` for a malformed packet or extension block, ``ValueError`` for a
    ``values`` entry that fits neither form.
    """
    key = (id(id_map), id(values))
    rewriter = _REWRITERS.get(key)
    if (
        rewriter is None
        or rewriter.id_map is not id_map
        or rewriter.values is not values
        or not rewriter.unchanged()
    ):
        if len(_REWRITERS) >= _MAX_REWRITERS:
            _REWRITERS.clear()
        rewriter = _REWRITERS[key] = ExtensionRewriter(id_map, values)
    return rewriter.rewrite_untrusted(data)


def _rewrite_extensions_slow_untrusted(
    data: Buffer, id_map: Mapping[int, int], values: Mapping[int, Buffer] | None
) -> tuple[bytearray, _ExtensionPlan | _StripPlan | None]:
    """The rewrite, and the plan to replay it on packets of the same layout (or None)."""
    csrc_end, payload_start, _ = rtp_layout_untrusted(data)
    if data[0] & 0x10 and data[csrc_end] == 0xBE and data[csrc_end + 1] == 0xDE:
        origin = list(range(payload_start))
        out = _edit_one_byte_untrusted(data, csrc_end, payload_start, id_map, values, origin)
        if out is not None:
            plan: _ExtensionPlan | _StripPlan | None = None
            if not data[0] & 0x20:  # a padded packet's count is checked every time
                plan = _ExtensionPlan(data, out, origin, csrc_end, payload_start)
            return out, plan
        out = _rebuild_extensions_untrusted(data, csrc_end, payload_start, id_map, values)
        if not out[0] & 0x30:  # every element dropped (and no padding): the block goes
            return out, _StripPlan(data, csrc_end, payload_start)
        return out, None
    return _rebuild_extensions_untrusted(data, csrc_end, payload_start, id_map, values), None


def _layout_check(data: Buffer, csrc_end: int, payload_start: int) -> tuple[_Check, object]:
    """What decides a one-byte extension block's layout, to compare a later packet with:
    every byte of the block but the elements' values, the first byte and the block header;
    and those bytes in ``data``."""
    values: set[int] = set()
    for _, start, stop in _walk_untrusted(data, csrc_end + 4, payload_start, ONE_BYTE_PROFILE):
        values.update(range(start, stop))
    positions = [0, csrc_end, csrc_end + 1, csrc_end + 2, csrc_end + 3]
    positions += [i for i in range(csrc_end + 4, payload_start) if i not in values]
    check: _Check = operator.itemgetter(*positions)
    return check, check(data)


@final
class _ExtensionPlan:
    """How one extension block layout is rewritten: which input bytes must be as they were
    (first byte, block header, element headers, padding), the output block with constants
    in place, and which input ranges (values of kept elements) are copied into it."""

    __slots__ = ("check", "csrc_end", "expected", "payload_start", "segments", "tail")

    def __init__(
        self, data: Buffer, out: bytearray, origin: list[int], csrc_end: int, payload_start: int
    ) -> None:
        # origin[i]: the input index output byte i came from, -1 for a byte written anew;
        # len(origin) is where the output block ends. Every input byte of the block outside
        # an element's value is checked on replay: those bytes decide the layout.
        self.check, self.expected = _layout_check(data, csrc_end, payload_start)
        values: set[int] = set()
        for _, start, stop in _walk_untrusted(data, csrc_end + 4, payload_start, ONE_BYTE_PROFILE):
            values.update(range(start, stop))
        self.csrc_end = csrc_end
        self.payload_start = payload_start
        new_end = len(origin)
        # The output block as constants between the input ranges copied into it.
        segments: list[tuple[bytes, int, int]] = []
        constant_start = index = csrc_end
        while index < new_end:
            src = origin[index]
            if src not in values:  # written anew, or a checked byte: a constant
                index += 1
                continue
            run = 1
            while index + run < new_end and origin[index + run] == src + run:
                run += 1
            segments.append((bytes(out[constant_start:index]), src, src + run))
            index += run
            constant_start = index
        self.segments = tuple(segments)
        self.tail = bytes(out[constant_start:new_end])

    def apply(self, data: Buffer) -> bytearray | None:
        """The rewritten packet, or None when ``data`` does not have this layout."""
        if len(data) < self.payload_start or self.check(data) != self.expected:
            return None
        parts = [data[: self.csrc_end]]
        for constant, start, stop in self.segments:
            parts.append(constant)
            parts.append(data[start:stop])
        parts.append(self.tail)
        parts.append(data[self.payload_start :])
        return bytearray().join(parts)


@final
class _StripPlan:
    """How a one-byte extension block layout whose every element is dropped is rewritten:
    the block goes and the X bit is cleared (the walk's result, without the walk). A
    pipe's packets often carry only extensions of the publisher's leg (transport-wide
    sequence number, abs-send-time, MID, RID)."""

    __slots__ = ("check", "csrc_end", "expected", "payload_start")

    def __init__(self, data: Buffer, csrc_end: int, payload_start: int) -> None:
        self.check, self.expected = _layout_check(data, csrc_end, payload_start)
        self.csrc_end = csrc_end
        self.payload_start = payload_start

    def apply(self, data: Buffer) -> bytearray | None:
        """The rewritten packet, or None when ``data`` does not have this layout."""
        if len(data) < self.payload_start or self.check(data) != self.expected:
            return None
        out = bytearray().join((data[: self.csrc_end], data[self.payload_start :]))
        out[0] &= 0xEF
        return out


_MAX_REWRITERS: Final = 4096
_MAX_PLANS: Final = 4
_REWRITERS: dict[tuple[int, int], ExtensionRewriter] = {}


@final
class ExtensionRewriter:
    """:func:`rewrite_extensions_untrusted` with fixed ``id_map`` and ``values``, planned
    once per extension block layout (a stream's packets share theirs) and replayed: the
    replay checks every byte the walk would have looked at, so it accepts exactly the
    packets the walk accepts and returns the same bytes.

    The maps are copied at construction; :meth:`unchanged` says whether the originals
    still equal the copies.
    """

    __slots__ = ("_map_copy", "_plans", "_values_copy", "id_map", "values")

    def __init__(self, id_map: Mapping[int, int], values: Mapping[int, Buffer] | None) -> None:
        self.id_map = id_map
        self.values = values
        self._map_copy = dict(id_map)
        self._values_copy = {k: bytes(v) for k, v in values.items()} if values is not None else None
        self._plans: list[_ExtensionPlan | _StripPlan] = []

    def unchanged(self) -> bool:
        return self.id_map == self._map_copy and (
            self.values == self._values_copy
            if self.values is not None
            else self._values_copy is None
        )

    def rewrite_untrusted(self, data: Buffer) -> bytearray:
        """As :func:`rewrite_extensions_untrusted` with this rewriter's maps."""
        for known in self._plans:
            replayed = known.apply(data)
            if replayed is not None:
                return replayed
        out, plan = _rewrite_extensions_slow_untrusted(data, self._map_copy, self._values_copy)
        if plan is not None:
            self._plans.insert(0, plan)
            del self._plans[_MAX_PLANS:]
        return out


def _edit_one_byte_untrusted(
    data: Buffer,
    csrc_end: int,
    payload_start: int,
    id_map: Mapping[int, int],
    values: Mapping[int, Buffer] | None,
    origin: list[int],
) -> bytearray | None:
    # The in-place edit of rewrite_extensions_untrusted(); None when the result would need
    # the two-byte form or would have no element (the rebuild handles both). ``origin``
    # (list(range(payload_start)) on entry) follows each output byte of the header to the
    # input byte it came from, -1 for one written here: the replay plan is made from it.
    out = bytearray(data[:payload_start])
    kept = 0  # bit n: new id n is in the block
    placed = 0  # bit n: values[n] is in the block
    pos = tail = csrc_end + 4  # tail: the end of the last element kept
    end = payload_start
    while pos < end:
        byte = out[pos]
        if byte == 0:
            pos += 1
            continue
        ext_id = byte >> 4
        if ext_id == 15:  # the end, by RFC 8285; what follows is dropped
            out[pos:end] = bytes(end - pos)
            origin[pos:end] = [-1] * (end - pos)
            break
        if ext_id == 0:
            raise BadPacket("one-byte header extension element with id 0")
        start = pos + 1
        stop = start + (byte & 0x0F) + 1
        if stop > end:
            raise BadPacket(f"header extension element {ext_id} overruns its block")
        new_id = id_map.get(ext_id)
        if new_id is None or (0 < new_id < 15 and kept >> new_id & 1):
            out[pos:stop] = bytes(stop - pos)  # dropped, or a later duplicate
            origin[pos:stop] = [-1] * (stop - pos)
        elif not 0 < new_id < 15:
            return None
        else:
            kept |= 1 << new_id
            value = values.get(new_id) if values else None
            out[pos] = (new_id << 4) | (byte & 0x0F)
            origin[pos] = -1
            if value is None:
                tail = stop
            elif len(value) == stop - start:
                out[start:stop] = value
                origin[start:stop] = [-1] * (stop - start)
                placed |= 1 << new_id
                tail = stop
            else:
                out[pos:stop] = bytes(stop - pos)  # appended below with its new length
                origin[pos:stop] = [-1] * (stop - pos)
        pos = stop
    del out[tail:]  # padding and dropped elements after the last element kept
    del origin[tail:]
    if values:
        for new_id, value in values.items():
            if not 0 < new_id < 15 or not 0 < len(value) <= 16:
                return None
            if not placed >> new_id & 1:
                out.append((new_id << 4) | (len(value) - 1))
                out += value
                origin += [-1] * (1 + len(value))
                kept |= 1 << new_id
    if not kept:
        return None
    padding = -len(out) % 4  # csrc_end is a multiple of 4
    out += bytes(padding)
    origin += [-1] * padding
    _U16.pack_into(out, csrc_end + 2, (len(out) - csrc_end - 4) >> 2)
    origin[csrc_end + 2] = origin[csrc_end + 3] = -1
    out += data[payload_start:]
    return out


def _rebuild_extensions_untrusted(
    data: Buffer,
    csrc_end: int,
    payload_start: int,
    id_map: Mapping[int, int],
    values: Mapping[int, Buffer] | None,
) -> bytearray:
    first = data[0]
    elements: dict[int, Buffer] = {}
    if first & 0x10:
        profile = _U16.unpack_from(data, csrc_end)[0]
        for ext_id, start, stop in _walk_untrusted(data, csrc_end + 4, payload_start, profile):
            new_id = id_map.get(ext_id)
            if new_id is not None and new_id not in elements:
                elements[new_id] = data[start:stop]
    if values:
        elements.update(values)
    out = bytearray(data[:csrc_end])
    if elements:
        profile, block = _encode_extensions(elements.items(), None)
        out[0] = first | 0x10
        out += _EXT_HEADER.pack(profile, len(block) >> 2)
        out += block
    else:
        out[0] = first & 0xEF
    out += data[payload_start:]
    return out


# -- The full packet ---------------------------------------------------------------------------


def padding_bytes(size: int) -> bytes:
    """RTP padding of ``size`` bytes (1-255): zeros, then the count."""
    if not 1 <= size <= 255:
        raise ValueError(f"RTP padding of {size} bytes: must be 1-255")
    return bytes(size - 1) + bytes((size,))


@attrs.frozen(kw_only=True)
class RtpPacket:
    """One RTP packet, every bit of it: ``parse_untrusted(x).serialize() == x``.

    ``extension_profile`` is ``None`` when the X bit is clear; ``extension`` is the raw
    extension block after its 4-byte header (a multiple of 4 bytes, padding included), so
    that unusual blocks survive the round trip. :attr:`extensions` reads it as
    ``{id: value}`` and :meth:`with_extensions` replaces it. ``padding`` is the raw padding
    (empty when P is clear; otherwise its last byte is its length).
    """

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes = b""
    payload: bytes = b""
    padding: bytes = b""

    @classmethod
    def parse_untrusted(cls, data: Buffer) -> RtpPacket:
        """Parse and check a whole packet, RFC 8285 extension elements included."""
        csrc_end, payload_start, payload_end = rtp_layout_untrusted(data)
        first, second, seq, timestamp, ssrc = _FIXED.unpack_from(data)
        profile: int | None = None
        extension = b""
        if first & 0x10:
            profile = _U16.unpack_from(data, csrc_end)[0]
            extension = bytes(data[csrc_end + 4 : payload_start])
            _walk_untrusted(extension, 0, len(extension), profile)
        return cls(
            payload_type=second & 0x7F,
            sequence_number=seq,
            timestamp=timestamp,
            ssrc=ssrc,
            marker=second >= 0x80,
            csrcs=_CSRCS[first & 0x0F].unpack_from(data, RTP_HEADER_SIZE),
            extension_profile=profile,
            extension=extension,
            payload=bytes(data[payload_start:payload_end]),
            padding=bytes(data[payload_end:]),
        )

    def serialize(self) -> bytes:
        """The packet's bytes. Raises ``ValueError`` if a field is out of range."""
        if not 0 <= self.payload_type <= 127:
            raise ValueError(f"payload type {self.payload_type}: must be 0-127")
        count = len(self.csrcs)
        if count > 15:
            raise ValueError(f"{count} CSRCs: at most 15")
        padding = self.padding
        if padding and padding[-1] != len(padding):
            raise ValueError(f"padding of {len(padding)} bytes ends in count {padding[-1]}")
        first = 0x80 | count | (0x20 if padding else 0)
        extension = b""
        if self.extension_profile is not None:
            if len(self.extension) % 4:
                raise ValueError(f"extension block of {len(self.extension)} bytes: words only")
            first |= 0x10
            try:
                extension = (
                    _EXT_HEADER.pack(self.extension_profile, len(self.extension) >> 2)
                    + self.extension
                )
            except struct.error as exc:
                raise ValueError(f"extension profile or length out of range: {exc}") from None
        elif self.extension:
            raise ValueError("extension block given without an extension profile")
        try:
            header = _FIXED.pack(
                first,
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence_number,
                self.timestamp,
                self.ssrc,
            ) + _CSRCS[count].pack(*self.csrcs)
        except struct.error as exc:
            raise ValueError(f"RTP header field out of range: {exc}") from None
        return b"".join((header, extension, self.payload, padding))

    @property
    def extensions(self) -> dict[int, bytes]:
        """The header extension elements as ``{id: value}`` (see
        :func:`parse_extensions_untrusted`); ``{}`` without an extension block."""
        if self.extension_profile is None:
            return {}
        return parse_extensions_untrusted(self.extension_profile, self.extension)

    def with_extensions(
        self, elements: Mapping[int, Buffer], *, two_byte: bool | None = None
    ) -> RtpPacket:
        """A copy carrying ``elements`` (see :func:`build_extensions`); none clears X."""
        if not elements:
            return attrs.evolve(self, extension_profile=None, extension=b"")
        profile, block = build_extensions(elements, two_byte=two_byte)
        return attrs.evolve(self, extension_profile=profile, extension=block)
