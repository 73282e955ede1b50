"""What every consumer of one producer shares on the way out, and what each one keeps (sans-IO).

A producer's packet goes to many consumers, and most of what changes on the way is the same
for all of them: the header extensions are renumbered to the router's ids, the publisher's
MID/RID and transport-wide sequence number are dropped, and our own MID and transport-wide
sequence number are put in. :class:`HeaderTemplate` does that once per incoming packet for
every consumer with the same extension ids and leaves placeholders where the per-consumer
values go (their offsets are found once per packet too); a consumer copies the template and
patches a few bytes: SSRC, payload type, sequence number, timestamp, its MID, the
transport-wide sequence number and, for VP8, PictureID / TL0PICIDX.

What a consumer sent is not kept as bytes: :class:`ForwardHistory` keeps, per outgoing
sequence number, a reference to the producer's original packet (shared by every consumer
that forwarded it) and the few numbers that made the outgoing one out of it (timestamp,
VP8 ids). A NACK rebuilds the packet from those. That is 16 bytes per slot instead of a
1,200-byte copy.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Mapping
from typing import Final, final

from trio_sfu.errors import BadPacket
from trio_sfu.rtp.packet import Buffer, ExtensionRewriter, find_extension_span_untrusted

__all__ = [
    "NO_VP8_IDS",
    "ForwardHistory",
    "HeaderTemplate",
    "pack_vp8_ids",
    "unpack_vp8_ids",
    "write_header",
]

_PT_SEQ_TS_SSRC: Final = struct.Struct("!BHII")

#: :func:`pack_vp8_ids` of ``(None, None)``.
NO_VP8_IDS: Final = 0


def pack_vp8_ids(picture_id: int | None, tl0picidx: int | None) -> int:
    """One int for a VP8 (PictureID, TL0PICIDX) pair, either may be None (for an array)."""
    packed = 0 if picture_id is None else (picture_id & 0x7FFF) + 1
    if tl0picidx is not None:
        packed |= ((tl0picidx & 0xFF) + 1) << 16
    return packed


def unpack_vp8_ids(packed: int) -> tuple[int | None, int | None]:
    """The pair :func:`pack_vp8_ids` packed."""
    low = packed & 0xFFFF
    high = packed >> 16
    return (low - 1 if low else None, high - 1 if high else None)


@final
class HeaderTemplate:
    """The header-extension rewrite of one producer's packets for the consumers that share
    ``id_map`` (the publisher's id -> ours, for what is forwarded as it came) and the
    layout of their own values: a MID of ``mid_size`` bytes as ``mid_id`` and a two-byte
    transport-wide sequence number as ``twcc_id`` (either may be None).

    :meth:`build` returns ``(template, mid_at, twcc_at)``: the packet with the extensions
    rewritten and zeros for the MID and the transport-wide sequence number, and where those
    values start (-1: not in it). The last packet's result is kept, so the consumers of a
    packet after the first one get it for the cost of an identity check. The template must
    not be modified: copy it.
    """

    __slots__ = ("_last_packet", "_last_result", "_mid_id", "_rewrite", "_twcc_id")

    def __init__(
        self, id_map: Mapping[int, int], mid_id: int | None, mid_size: int, twcc_id: int | None
    ) -> None:
        values: dict[int, bytes] = {}
        if mid_id is not None:
            values[mid_id] = bytes(mid_size)
        if twcc_id is not None:
            values[twcc_id] = b"\x00\x00"
        self._mid_id = mid_id
        self._twcc_id = twcc_id
        self._rewrite = ExtensionRewriter(id_map, values).rewrite_untrusted
        self._last_packet: Buffer | None = None
        self._last_result: tuple[bytearray, int, int] | None = None

    def build(self, packet: Buffer) -> tuple[bytearray, int, int] | None:
        """The template for ``packet`` (None: the packet's extension block is malformed)."""
        if packet is self._last_packet:
            return self._last_result
        result = self.build_uncached(packet)
        self._last_packet = packet
        self._last_result = result
        return result

    def build_uncached(self, packet: Buffer) -> tuple[bytearray, int, int] | None:
        """As :meth:`build`, leaving the kept result alone (for a retransmission)."""
        try:
            out = self._rewrite(packet)
            mid_at = twcc_at = -1
            if self._mid_id is not None:
                span = find_extension_span_untrusted(out, self._mid_id)
                if span is not None:
                    mid_at = span[0]
            if self._twcc_id is not None:
                span = find_extension_span_untrusted(out, self._twcc_id)
                if span is not None and span[1] - span[0] == 2:
                    twcc_at = span[0]
        except BadPacket:
            return None
        return out, mid_at, twcc_at


def write_header(
    out: bytearray, payload_type: int, sequence_number: int, timestamp: int, ssrc: int
) -> None:
    """Payload type (the marker bit is kept), sequence number, timestamp and SSRC of
    ``out``, in one call; the values must be in range."""
    _PT_SEQ_TS_SSRC.pack_into(
        out, 1, (out[1] & 0x80) | payload_type, sequence_number, timestamp, ssrc
    )


@final
class ForwardHistory:
    """What a consumer forwarded lately, by outgoing sequence number: the producer's
    original packet and the outgoing timestamp and VP8 ids (:func:`pack_vp8_ids`).

    ``size`` (a power of two, at most 32768) slots: a sequence number is found while it is
    among the ``size`` newest. A backward jump of ``size`` or more is taken as a restarted
    stream.

    A slot holds the entry of the one sequence number of the window that maps to it, or
    nothing: when the newest number jumps ahead, the slots of the numbers it skipped are
    emptied (in order, a stream skips none).
    """

    __slots__ = ("_highest", "_ids", "_mask", "_packets", "_timestamps", "size")

    def __init__(self, size: int) -> None:
        if size <= 0 or size & (size - 1) or size > 0x8000:
            raise ValueError("size must be a power of two, at most 32768")
        self.size = size
        self._mask = size - 1
        self._packets: list[bytes | None] = [None] * size
        self._timestamps = array("I", [0]) * size
        self._ids = array("i", [0]) * size
        self._highest = -1

    def store(self, seq: int, original: bytes, timestamp: int, vp8_ids: int) -> None:
        """Keep how outgoing ``seq`` was made: from ``original``, with ``timestamp``."""
        highest = self._highest
        if highest < 0:
            ext = 0x10000 | seq  # one wrap up, so that late packets stay >= 0
            self._highest = ext
        else:
            delta = (seq - highest) & 0xFFFF
            if delta < 0x8000:
                ext = highest + delta
                self._highest = ext
                if delta > 1:
                    self._forget(highest + 1, ext)
            elif 0x10000 - delta < self.size:
                ext = highest - (0x10000 - delta)
            else:  # far behind: a restarted stream, move past everything stored
                ext = highest + delta
                self._highest = ext
                self._forget(highest + 1, ext)
        index = ext & self._mask
        self._packets[index] = original
        self._timestamps[index] = timestamp
        self._ids[index] = vp8_ids

    def get(self, seq: int) -> tuple[bytes, int, int] | None:
        """``(original, timestamp, vp8_ids)`` of outgoing ``seq``, or None if gone or never
        sent."""
        highest = self._highest
        behind = (highest - seq) & 0xFFFF
        if highest < 0 or behind >= self.size:
            return None
        index = (highest - behind) & self._mask
        original = self._packets[index]
        if original is None:
            return None
        return original, self._timestamps[index], self._ids[index]

    def _forget(self, start: int, stop: int) -> None:
        """Empty the slots of extended numbers ``start`` to ``stop - 1`` (skipped ones)."""
        packets = self._packets
        mask = self._mask
        for ext in range(start, min(stop, start + self.size)):
            packets[ext & mask] = None

    def clear(self) -> None:
        """Forget everything (and let the originals go)."""
        self._packets = [None] * self.size
        self._highest = -1
