"""RTCP packets: parse a compound packet, build one (RFC 3550, RFC 4585, RFC 5104).

Supported packet types and what they become:

=========  =====  ===========================================================
PT         FMT    class
=========  =====  ===========================================================
200 SR            :class:`SenderReport` (with :class:`ReportBlock` entries)
201 RR            :class:`ReceiverReport`
202 SDES          :class:`Sdes` of :class:`SdesChunk`
203 BYE           :class:`Bye`
205 RTPFB  1      :class:`GenericNack` (RFC 4585 section 6.2.1)
205 RTPFB  15     :class:`~trio_sfu.rtcp.twcc.TransportCcFeedback`
206 PSFB   1      :class:`Pli` (RFC 4585 section 6.3.1)
206 PSFB   4      :class:`Fir` (RFC 5104 section 4.3.1)
206 PSFB   15     :class:`Remb` (draft-alvestrand-rmcat-remb), if the FCI starts with "REMB"
=========  =====  ===========================================================

Anything else (APP, XR, other feedback messages, a PSFB FMT 15 that is not REMB) is kept
as :class:`UnknownRtcp` with its raw bytes, in its place in the list, so that a caller can
count or relay it; it is never an error. The first packet of a compound is not required to
be SR or RR (RFC 5506 reduced-size RTCP, which browsers use, sends feedback alone).

:func:`parse_rtcp_untrusted` reads network bytes and raises only
:class:`~trio_sfu.errors.BadPacket`: wrong version, a length that runs past the datagram,
bad padding, truncated fields. :func:`build_rtcp` writes a compound packet, each packet
padded to 32 bits with its length field right; it raises ValueError for values that do not
fit their fields.

Sans-IO: no trio, no clock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import TypeAlias, final

import attrs

from trio_sfu.errors import BadPacket
from trio_sfu.rtcp.twcc import TransportCcFeedback, parse_twcc_body_untrusted

__all__ = [
    "PT_BYE",
    "PT_PSFB",
    "PT_RR",
    "PT_RTPFB",
    "PT_SDES",
    "PT_SR",
    "SDES_CNAME",
    "Bye",
    "Fir",
    "GenericNack",
    "Pli",
    "ReceiverReport",
    "Remb",
    "ReportBlock",
    "RtcpPacket",
    "Sdes",
    "SdesChunk",
    "SenderReport",
    "UnknownRtcp",
    "build_rtcp",
    "nack_pairs_from_seqs",
    "parse_rtcp_untrusted",
    "seqs_from_nack_pairs",
]

PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_BYE = 203
PT_RTPFB = 205
PT_PSFB = 206

FMT_NACK = 1
FMT_TWCC = 15
FMT_PLI = 1
FMT_FIR = 4
FMT_AFB = 15

#: SDES item types (RFC 3550 section 6.5).
SDES_CNAME = 1

_HEADER = struct.Struct("!BBH")
_U32 = struct.Struct("!I")
_SR_FIXED = struct.Struct("!IIIIII")  # sender SSRC, NTP hi, NTP lo, RTP ts, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # SSRC, fraction|cumulative, highest, jitter, LSR, DLSR
_FB_FIXED = struct.Struct("!II")  # sender SSRC, media SSRC
_NACK_ITEM = struct.Struct("!HH")
_FIR_ITEM = struct.Struct("!II")  # SSRC, seq nr (8) | reserved (24)
_REMB_FIXED = struct.Struct("!4sI")  # "REMB", num SSRC (8) | exp (6) | mantissa (18)
_SSRCS = [struct.Struct(f"!{n}I") for n in range(32)]


def _header(first: int, packet_type: int, size: int) -> bytes:
    return _HEADER.pack(first, packet_type, size // 4 - 1)


@final
@attrs.frozen
class ReportBlock:
    """One reception report block (RFC 3550 section 6.4.1).

    ``fraction_lost`` is 8-bit fixed point (lost/expected * 256); ``cumulative_lost`` is
    signed 24 bits (duplicates can make it negative); ``highest_seq`` is the extended
    highest sequence number; ``jitter`` is in RTP timestamp units; ``lsr`` is the compact
    NTP time of the last SR (0: none yet); ``dlsr`` is the delay since that SR in 1/65536 s.
    """

    ssrc: int
    fraction_lost: int
    cumulative_lost: int
    highest_seq: int
    jitter: int
    lsr: int
    dlsr: int

    def _to_bytes(self) -> bytes:
        if not -0x80_0000 <= self.cumulative_lost <= 0x7F_FFFF:
            raise ValueError("cumulative_lost does not fit in 24 bits signed")
        if not 0 <= self.fraction_lost <= 0xFF:
            raise ValueError("fraction_lost does not fit in 8 bits")
        return _BLOCK.pack(
            self.ssrc,
            (self.fraction_lost << 24) | (self.cumulative_lost & 0xFF_FFFF),
            self.highest_seq,
            self.jitter,
            self.lsr,
            self.dlsr,
        )


@final
@attrs.frozen
class SenderReport:
    """SR (PT 200): sender info plus up to 31 report blocks.

    ``ntp_timestamp`` is the full 64-bit NTP time; ``extension`` holds profile-specific
    extension bytes after the report blocks, if any.
    """

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def _to_bytes(self) -> bytes:
        if len(self.reports) > 31:
            raise ValueError("an SR carries at most 31 report blocks")
        body = _SR_FIXED.pack(
            self.ssrc,
            self.ntp_timestamp >> 32,
            self.ntp_timestamp & 0xFFFF_FFFF,
            self.rtp_timestamp,
            self.packet_count,
            self.octet_count,
        )
        body += b"".join(block._to_bytes() for block in self.reports)
        body += _pad4(self.extension)
        return _header(0x80 | len(self.reports), PT_SR, 4 + len(body)) + body


@final
@attrs.frozen
class ReceiverReport:
    """RR (PT 201): the reporter's SSRC and up to 31 report blocks."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def _to_bytes(self) -> bytes:
        if len(self.reports) > 31:
            raise ValueError("an RR carries at most 31 report blocks")
        body = _U32.pack(self.ssrc)
        body += b"".join(block._to_bytes() for block in self.reports)
        body += _pad4(self.extension)
        return _header(0x80 | len(self.reports), PT_RR, 4 + len(body)) + body


@final
@attrs.frozen
class SdesChunk:
    """One SDES chunk: an SSRC/CSRC and its items as ``(item type, value bytes)``."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...] = ()

    @classmethod
    def with_cname(cls, ssrc: int, cname: str) -> SdesChunk:
        return cls(ssrc, ((SDES_CNAME, cname.encode()),))

    @property
    def cname(self) -> str | None:
        """The CNAME item, decoded as UTF-8 (bad bytes replaced), or None."""
        for item_type, value in self.items:
            if item_type == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None

    def _to_bytes(self) -> bytes:
        out = bytearray(_U32.pack(self.ssrc))
        for item_type, value in self.items:
            if not 1 <= item_type <= 0xFF:
                raise ValueError("SDES item type must be 1..255")
            if len(value) > 0xFF:
                raise ValueError("SDES item longer than 255 bytes")
            out.append(item_type)
            out.append(len(value))
            out += value
        # End of list: one null octet, then null octets up to the next 32-bit boundary.
        out += bytes(4 - len(out) % 4)
        return bytes(out)


@final
@attrs.frozen
class Sdes:
    """SDES (PT 202): up to 31 chunks."""

    chunks: tuple[SdesChunk, ...]

    def _to_bytes(self) -> bytes:
        if len(self.chunks) > 31:
            raise ValueError("an SDES packet carries at most 31 chunks")
        body = b"".join(chunk._to_bytes() for chunk in self.chunks)
        return _header(0x80 | len(self.chunks), PT_SDES, 4 + len(body)) + body


@final
@attrs.frozen
class Bye:
    """BYE (PT 203): up to 31 SSRCs and an optional reason (raw bytes, UTF-8 by RFC)."""

    ssrcs: tuple[int, ...]
    reason: bytes | None = None

    def _to_bytes(self) -> bytes:
        if len(self.ssrcs) > 31:
            raise ValueError("a BYE carries at most 31 SSRCs")
        body = _SSRCS[len(self.ssrcs)].pack(*self.ssrcs)
        if self.reason is not None:
            if len(self.reason) > 0xFF:
                raise ValueError("BYE reason longer than 255 bytes")
            body += _pad4(bytes((len(self.reason),)) + self.reason)
        return _header(0x80 | len(self.ssrcs), PT_BYE, 4 + len(body)) + body


@final
@attrs.frozen
class GenericNack:
    """Generic NACK (RTPFB FMT 1): ``items`` are ``(PID, BLP)`` pairs.

    PID is a lost sequence number; bit i of BLP (least significant first) marks PID+i+1 as
    lost too. :meth:`from_seqs` and :meth:`lost_seqs` convert from and to plain lists.
    """

    sender_ssrc: int
    media_ssrc: int
    items: tuple[tuple[int, int], ...]

    @classmethod
    def from_seqs(cls, sender_ssrc: int, media_ssrc: int, seqs: Iterable[int]) -> GenericNack:
        return cls(sender_ssrc, media_ssrc, tuple(nack_pairs_from_seqs(seqs)))

    def lost_seqs(self) -> list[int]:
        return seqs_from_nack_pairs(self.items)

    def _to_bytes(self) -> bytes:
        body = _FB_FIXED.pack(self.sender_ssrc, self.media_ssrc)
        body += b"".join(_NACK_ITEM.pack(pid, blp) for pid, blp in self.items)
        return _header(0x80 | FMT_NACK, PT_RTPFB, 4 + len(body)) + body


@final
@attrs.frozen
class Pli:
    """Picture Loss Indication (PSFB FMT 1): please send a keyframe of ``media_ssrc``."""

    sender_ssrc: int
    media_ssrc: int

    def _to_bytes(self) -> bytes:
        return _header(0x80 | FMT_PLI, PT_PSFB, 12) + _FB_FIXED.pack(
            self.sender_ssrc, self.media_ssrc
        )


@final
@attrs.frozen
class Fir:
    """Full Intra Request (PSFB FMT 4, RFC 5104 section 4.3.1).

    ``entries`` are ``(SSRC, command sequence number)``; the sequence number (8 bits) grows
    by one for each new request to that SSRC. RFC 5104 says the header's media SSRC is 0.
    """

    sender_ssrc: int
    entries: tuple[tuple[int, int], ...]
    media_ssrc: int = 0

    def _to_bytes(self) -> bytes:
        body = _FB_FIXED.pack(self.sender_ssrc, self.media_ssrc)
        for ssrc, seq in self.entries:
            if not 0 <= seq <= 0xFF:
                raise ValueError("FIR sequence number does not fit in 8 bits")
            body += _FIR_ITEM.pack(ssrc, seq << 24)
        return _header(0x80 | FMT_FIR, PT_PSFB, 4 + len(body)) + body


@final
@attrs.frozen
class Remb:
    """Receiver Estimated Maximum Bitrate (PSFB FMT 15, draft-alvestrand-rmcat-remb-03).

    ``bitrate`` is bits per second. On the wire it is ``mantissa (18 bits) << exp (6 bits)``,
    so building rounds it down to 18 significant bits.
    """

    sender_ssrc: int
    bitrate: int
    ssrcs: tuple[int, ...]
    media_ssrc: int = 0

    def _to_bytes(self) -> bytes:
        if self.bitrate < 0:
            raise ValueError("REMB bitrate is negative")
        if len(self.ssrcs) > 0xFF:
            raise ValueError("REMB lists at most 255 SSRCs")
        exp = max(0, self.bitrate.bit_length() - 18)
        if exp > 63:
            raise ValueError("REMB bitrate too large")
        mantissa = self.bitrate >> exp
        body = _FB_FIXED.pack(self.sender_ssrc, self.media_ssrc)
        body += _REMB_FIXED.pack(b"REMB", (len(self.ssrcs) << 24) | (exp << 18) | mantissa)
        body += struct.pack(f"!{len(self.ssrcs)}I", *self.ssrcs)
        return _header(0x80 | FMT_AFB, PT_PSFB, 4 + len(body)) + body


@final
@attrs.frozen
class UnknownRtcp:
    """A packet this module does not decode: ``raw`` is the whole packet, header included.

    ``fmt`` is the header's 5-bit count/FMT field. Building writes ``raw`` back unchanged.
    """

    packet_type: int
    fmt: int
    raw: bytes

    def _to_bytes(self) -> bytes:
        raw = self.raw
        if len(raw) < 4 or len(raw) != 4 * (((raw[2] << 8) | raw[3]) + 1):
            raise ValueError("raw RTCP packet does not match its length field")
        return raw


RtcpPacket: TypeAlias = (
    SenderReport
    | ReceiverReport
    | Sdes
    | Bye
    | GenericNack
    | TransportCcFeedback
    | Pli
    | Fir
    | Remb
    | UnknownRtcp
)


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) & 3)


# -- NACK list helpers ----------------------------------------------------------------------


def nack_pairs_from_seqs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Lost sequence numbers as generic NACK ``(PID, BLP)`` pairs.

    Works across the 16-bit wrap (65535 then 0 share one pair). Give the numbers in send
    order (as :class:`~trio_sfu.rtp.nack.NackGenerator` returns them) for the fewest pairs;
    any order gives a correct, if longer, list.
    """
    pairs: list[tuple[int, int]] = []
    pid = -1
    blp = 0
    for seq in seqs:
        seq &= 0xFFFF
        if pid >= 0:
            distance = (seq - pid) & 0xFFFF
            if distance == 0:
                continue
            if distance <= 16:
                blp |= 1 << (distance - 1)
                continue
            pairs.append((pid, blp))
        pid = seq
        blp = 0
    if pid >= 0:
        pairs.append((pid, blp))
    return pairs


def seqs_from_nack_pairs(pairs: Iterable[tuple[int, int]]) -> list[int]:
    """The sequence numbers that generic NACK ``(PID, BLP)`` pairs mark as lost."""
    seqs: list[int] = []
    for pid, blp in pairs:
        seqs.append(pid)
        bit = 0
        while blp:
            if blp & 1:
                seqs.append((pid + bit + 1) & 0xFFFF)
            blp >>= 1
            bit += 1
    return seqs


# -- parsing --------------------------------------------------------------------------------

_Parser = Callable[[bytes, int, int, int], RtcpPacket | None]


def _report_blocks(data: bytes, pos: int, count: int) -> tuple[ReportBlock, ...]:
    blocks = []
    for _ in range(count):
        ssrc, lost, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, pos)
        cumulative = lost & 0xFF_FFFF
        if cumulative & 0x80_0000:
            cumulative -= 0x100_0000
        blocks.append(ReportBlock(ssrc, lost >> 24, cumulative, highest, jitter, lsr, dlsr))
        pos += 24
    return tuple(blocks)


def _parse_sr(data: bytes, pos: int, end: int, count: int) -> RtcpPacket:
    blocks_at = pos + 24
    extension_at = blocks_at + 24 * count
    if extension_at > end:
        raise BadPacket("SR shorter than its report count")
    ssrc, ntp_hi, ntp_lo, rtp_ts, packets, octets = _SR_FIXED.unpack_from(data, pos)
    return SenderReport(
        ssrc,
        (ntp_hi << 32) | ntp_lo,
        rtp_ts,
        packets,
        octets,
        _report_blocks(data, blocks_at, count),
        data[extension_at:end],
    )


def _parse_rr(data: bytes, pos: int, end: int, count: int) -> RtcpPacket:
    extension_at = pos + 4 + 24 * count
    if extension_at > end:
        raise BadPacket("RR shorter than its report count")
    (ssrc,) = _U32.unpack_from(data, pos)
    return ReceiverReport(ssrc, _report_blocks(data, pos + 4, count), data[extension_at:end])


def _parse_sdes(data: bytes, pos: int, end: int, count: int) -> RtcpPacket:
    chunks = []
    for _ in range(count):
        if pos + 4 > end:
            raise BadPacket("SDES chunk truncated")
        (ssrc,) = _U32.unpack_from(data, pos)
        pos += 4
        items = []
        while True:
            if pos >= end:
                raise BadPacket("SDES chunk without end of list")
            item_type = data[pos]
            if item_type == 0:
                # The null item ends the list; null octets pad to the next 32-bit boundary
                # (packets start on a boundary, so absolute offsets can be used).
                pos = (pos + 4) & ~3
                break
            if pos + 2 > end:
                raise BadPacket("SDES item truncated")
            value_end = pos + 2 + data[pos + 1]
            if value_end > end:
                raise BadPacket("SDES item runs past the packet")
            items.append((item_type, data[pos + 2 : value_end]))
            pos = value_end
        if pos > end:
            raise BadPacket("SDES chunk padding runs past the packet")
        chunks.append(SdesChunk(ssrc, tuple(items)))
    return Sdes(tuple(chunks))


def _parse_bye(data: bytes, pos: int, end: int, count: int) -> RtcpPacket:
    reason_at = pos + 4 * count
    if reason_at > end:
        raise BadPacket("BYE shorter than its SSRC count")
    ssrcs = _SSRCS[count].unpack_from(data, pos)
    reason = None
    if reason_at < end:
        reason_end = reason_at + 1 + data[reason_at]
        if reason_end > end:
            raise BadPacket("BYE reason runs past the packet")
        reason = data[reason_at + 1 : reason_end]
    return Bye(ssrcs, reason)


def _parse_rtpfb(data: bytes, pos: int, end: int, fmt: int) -> RtcpPacket | None:
    if fmt == FMT_NACK:
        if pos + 8 > end or (end - pos) % 4:
            raise BadPacket("generic NACK with a bad length")
        sender, media = _FB_FIXED.unpack_from(data, pos)
        items = tuple(_NACK_ITEM.iter_unpack(data[pos + 8 : end]))
        return GenericNack(sender, media, items)
    if fmt == FMT_TWCC:
        return parse_twcc_body_untrusted(data, pos, end)
    return None


def _parse_psfb(data: bytes, pos: int, end: int, fmt: int) -> RtcpPacket | None:
    if pos + 8 > end:
        raise BadPacket("payload-specific feedback shorter than its header")
    if fmt == FMT_PLI:
        sender, media = _FB_FIXED.unpack_from(data, pos)
        return Pli(sender, media)
    if fmt == FMT_FIR:
        if (end - pos) % 8:
            raise BadPacket("FIR with a bad length")
        sender, media = _FB_FIXED.unpack_from(data, pos)
        entries = tuple(
            (ssrc, word >> 24) for ssrc, word in _FIR_ITEM.iter_unpack(data[pos + 8 : end])
        )
        return Fir(sender, entries, media)
    if fmt == FMT_AFB and pos + 12 <= end and data[pos + 8 : pos + 12] == b"REMB":
        if pos + 16 > end:
            raise BadPacket("REMB truncated")
        sender, media = _FB_FIXED.unpack_from(data, pos)
        _, word = _REMB_FIXED.unpack_from(data, pos + 8)
        count = word >> 24
        ssrcs_at = pos + 16
        if ssrcs_at + 4 * count > end:
            raise BadPacket("REMB shorter than its SSRC count")
        ssrcs = struct.unpack_from(f"!{count}I", data, ssrcs_at) if count else ()
        bitrate = (word & 0x3_FFFF) << ((word >> 18) & 0x3F)
        return Remb(sender, bitrate, ssrcs, media)
    return None


_PARSERS: dict[int, _Parser] = {
    PT_SR: _parse_sr,
    PT_RR: _parse_rr,
    PT_SDES: _parse_sdes,
    PT_BYE: _parse_bye,
    PT_RTPFB: _parse_rtpfb,
    PT_PSFB: _parse_psfb,
}


def parse_rtcp_untrusted(data: bytes | bytearray | memoryview) -> list[RtcpPacket]:
    """Parse a (compound) RTCP packet from the network, after SRTCP unprotect.

    Returns the packets in order; unknown types and feedback formats come back as
    :class:`UnknownRtcp`. Raises only :class:`~trio_sfu.errors.BadPacket`: for an empty
    buffer, a version other than 2, a length that does not fit, bad padding, or a field
    that runs past its packet.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    end = len(data)
    if end < 4:
        raise BadPacket("RTCP packet shorter than its header")
    packets: list[RtcpPacket] = []
    offset = 0
    unpack_header = _HEADER.unpack_from
    parsers = _PARSERS
    try:
        while offset < end:
            if offset + 4 > end:
                raise BadPacket("trailing bytes after the last RTCP packet")
            first, packet_type, length = unpack_header(data, offset)
            if first & 0xC0 != 0x80:
                raise BadPacket("RTCP version is not 2")
            stop = offset + 4 * length + 4
            if stop > end:
                raise BadPacket("RTCP length runs past the datagram")
            body_end = stop
            if first & 0x20:
                padding = data[stop - 1]
                if padding == 0 or padding > stop - offset - 4:
                    raise BadPacket("bad RTCP padding")
                body_end -= padding
            count = first & 0x1F
            parser = parsers.get(packet_type)
            packet = None if parser is None else parser(data, offset + 4, body_end, count)
            if packet is None:
                packet = UnknownRtcp(packet_type, count, data[offset:stop])
            packets.append(packet)
            offset = stop
    except (struct.error, IndexError, ValueError) as exc:
        raise BadPacket(f"malformed RTCP: {exc}") from exc
    return packets


def build_rtcp(packets: Iterable[RtcpPacket]) -> bytes:
    """Serialize packets into one compound RTCP packet.

    Each packet is padded to 32 bits with zeros (never with the padding bit) and gets its
    length field. Raises ValueError for values that do not fit their fields.
    """
    try:
        return b"".join(packet._to_bytes() for packet in packets)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"RTCP field out of range: {exc}") from exc
