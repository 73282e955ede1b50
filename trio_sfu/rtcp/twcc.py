"""Transport-wide congestion control feedback (RTPFB FMT 15).

Wire format from draft-holmer-rmcat-transport-wide-cc-extensions-01, section 3.1::

    common feedback header (RFC 4585): V P FMT=15 PT=205 length, sender SSRC, media SSRC
    base sequence number (16) | packet status count (16)
    reference time (24, signed, 64 ms units) | feedback packet count (8)
    packet chunks (16 bits each) ... then receive deltas ... then zero padding to 32 bits

A packet chunk is either a *run length* chunk ``0 | symbol (2) | run length (13)`` or a
*status vector* chunk ``1 | S | symbols``, with S=0 for fourteen 1-bit symbols (0 = not
received, 1 = received with a small delta) and S=1 for seven 2-bit symbols. Symbols:
0 not received, 1 received with a small delta (1 unsigned byte), 2 received with a large or
negative delta (2 bytes, signed), 3 reserved. Deltas count 250 µs; the first one is relative
to the reference time, each next one to the previous received packet.

This module keeps one value per reported packet (``None`` or the delta) and chooses the
symbols and chunks itself when building, so the object never disagrees with its encoding.
Sans-IO, no clock.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import final

import attrs

from trio_sfu.errors import BadPacket

__all__ = ["DELTA_UNIT_US", "REFERENCE_TIME_UNIT_US", "TransportCcFeedback"]

#: Microseconds in one receive-delta unit.
DELTA_UNIT_US = 250
#: Microseconds in one reference-time unit (64 ms).
REFERENCE_TIME_UNIT_US = 64_000

_FIXED = struct.Struct("!BBHIIHHI")  # header, sender, media, base seq, count, ref|fb count
_CHUNK = struct.Struct("!H")
_LARGE = struct.Struct("!h")
_MAX_RUN = 0x1FFF


@final
@attrs.frozen
class TransportCcFeedback:
    """One transport-wide CC feedback packet.

    ``recv_deltas`` has one entry per packet from ``base_seq`` on (``packet status count``
    of them): ``None`` for a packet not received, else its receive delta in 250 µs units
    (-32768..32767; 0..255 is sent in one byte). ``reference_time`` is the signed 24-bit
    wire value in 64 ms units.
    """

    sender_ssrc: int
    media_ssrc: int
    base_seq: int
    reference_time: int
    fb_pkt_count: int
    recv_deltas: tuple[int | None, ...]

    @classmethod
    def from_arrivals(
        cls,
        sender_ssrc: int,
        media_ssrc: int,
        base_seq: int,
        fb_pkt_count: int,
        arrivals_us: Sequence[int | None],
    ) -> TransportCcFeedback:
        """Build feedback from arrival times in microseconds (``None``: not received).

        ``fb_pkt_count`` may be a running counter: it is taken modulo 256.

        ``arrivals_us[i]`` belongs to transport sequence number ``base_seq + i``. Times may
        start anywhere (any clock, any origin); the reference time is the first received
        arrival rounded down to 64 ms and wrapped to 24 bits signed. Each arrival is rounded
        to 250 µs before differencing, so rounding errors do not add up. Raises ValueError if
        two consecutive received packets are more than 8.19 s apart (the caller must send
        such a gap in two feedback packets).
        """
        reference = 0
        for arrival in arrivals_us:
            if arrival is not None:
                reference = arrival // REFERENCE_TIME_UNIT_US
                break
        previous = reference * (REFERENCE_TIME_UNIT_US // DELTA_UNIT_US)
        deltas: list[int | None] = []
        for arrival in arrivals_us:
            if arrival is None:
                deltas.append(None)
                continue
            units = (arrival + DELTA_UNIT_US // 2) // DELTA_UNIT_US
            delta = units - previous
            if not -0x8000 <= delta <= 0x7FFF:
                raise ValueError("receive delta does not fit in 16 bits")
            deltas.append(delta)
            previous = units
        wire_reference = ((reference + 0x80_0000) & 0xFF_FFFF) - 0x80_0000
        return cls(
            sender_ssrc, media_ssrc, base_seq, wire_reference, fb_pkt_count & 0xFF, tuple(deltas)
        )

    def arrivals_us(self) -> list[tuple[int, int | None]]:
        """``(transport seq, arrival time in µs or None)`` per reported packet.

        Arrival times are on the feedback sender's clock: reference time plus the running
        sum of the deltas.
        """
        result: list[tuple[int, int | None]] = []
        now = self.reference_time * REFERENCE_TIME_UNIT_US
        seq = self.base_seq
        for delta in self.recv_deltas:
            if delta is None:
                result.append((seq, None))
            else:
                now += delta * DELTA_UNIT_US
                result.append((seq, now))
            seq = (seq + 1) & 0xFFFF
        return result

    def _to_bytes(self) -> bytes:
        deltas = self.recv_deltas
        if len(deltas) > 0xFFFF:
            raise ValueError("too many packets for one transport-cc feedback")
        if not -0x80_0000 <= self.reference_time <= 0x7F_FFFF:
            raise ValueError("reference time does not fit in 24 bits signed")
        if not 0 <= self.fb_pkt_count <= 0xFF:
            raise ValueError("feedback packet count does not fit in 8 bits")
        symbols: list[int] = []
        tail = bytearray()
        for delta in deltas:
            if delta is None:
                symbols.append(0)
            elif 0 <= delta <= 0xFF:
                symbols.append(1)
                tail.append(delta)
            else:
                symbols.append(2)
                tail += _LARGE.pack(delta)
        body = _encode_chunks(symbols)
        body += tail
        size = _FIXED.size + len(body)
        padding = -size & 3
        body += bytes(padding)
        size += padding
        fixed = _FIXED.pack(
            0x80 | 15,
            205,
            size // 4 - 1,
            self.sender_ssrc,
            self.media_ssrc,
            self.base_seq,
            len(deltas),
            ((self.reference_time & 0xFF_FFFF) << 8) | self.fb_pkt_count,
        )
        return fixed + body


def _encode_chunks(symbols: list[int]) -> bytearray:
    """Packet chunks for ``symbols``: a run chunk for runs of 14 or more (or 7 or more
    where a 1-bit vector cannot be used), else a 1-bit vector if the next 14 symbols are
    all 0/1, else a 2-bit vector of 7. Vector chunks at the end are padded with 0 symbols,
    which the status count excludes."""
    out = bytearray()
    count = len(symbols)
    i = 0
    while i < count:
        symbol = symbols[i]
        limit = min(count, i + _MAX_RUN)
        run = 1
        while i + run < limit and symbols[i + run] == symbol:
            run += 1
        if run >= 14:
            out += _CHUNK.pack((symbol << 13) | run)
            i += run
            continue
        window = symbols[i : i + 14]
        if max(window) <= 1:
            bits = 0
            for value in window:
                bits = (bits << 1) | value
            bits <<= 14 - len(window)
            out += _CHUNK.pack(0x8000 | bits)
            i += len(window)
        elif run >= 7:
            out += _CHUNK.pack((symbol << 13) | run)
            i += run
        else:
            window = symbols[i : i + 7]
            bits = 0
            for value in window:
                bits = (bits << 2) | value
            bits <<= 2 * (7 - len(window))
            out += _CHUNK.pack(0xC000 | bits)
            i += len(window)
    return out


# Status vector decoding by table: seven 1-bit symbols per 7-bit index, and three or four
# 2-bit symbols per 6- or 8-bit index.
_ONE_BIT_7 = [tuple((i >> shift) & 1 for shift in range(6, -1, -1)) for i in range(128)]
_TWO_BIT_3 = [tuple((i >> shift) & 3 for shift in (4, 2, 0)) for i in range(64)]
_TWO_BIT_4 = [tuple((i >> shift) & 3 for shift in (6, 4, 2, 0)) for i in range(256)]


def parse_twcc_body_untrusted(data: bytes, pos: int, end: int) -> TransportCcFeedback:
    """Parse a transport-cc packet whose common header starts at ``pos - 4``.

    ``end`` is the end of the packet without RTCP padding. Bytes after the last receive
    delta (zero padding) are ignored. Raises only BadPacket.
    """
    if pos + 16 > end:
        raise BadPacket("transport-cc feedback shorter than its fixed part")
    _, _, _, sender, media, base_seq, status_count, ref_and_count = _FIXED.unpack_from(
        data, pos - 4
    )
    pos += 16
    # Pass 1, the chunks: (symbol, count) for a run, (-1, symbols) for a vector.
    runs: list[tuple[int, int]] = []
    vectors: list[tuple[int, ...]] = []
    remaining = status_count
    unpack_chunk = _CHUNK.unpack_from
    while remaining > 0:
        if pos + 2 > end:
            raise BadPacket("transport-cc feedback: packet chunks truncated")
        (chunk,) = unpack_chunk(data, pos)
        pos += 2
        if not chunk & 0x8000:
            count = min(chunk & _MAX_RUN, remaining)
            runs.append(((chunk >> 13) & 3, count))
        else:
            if chunk & 0x4000:
                symbols = _TWO_BIT_3[(chunk >> 8) & 0x3F] + _TWO_BIT_4[chunk & 0xFF]
            else:
                symbols = _ONE_BIT_7[(chunk >> 7) & 0x7F] + _ONE_BIT_7[chunk & 0x7F]
            if len(symbols) > remaining:
                symbols = symbols[:remaining]
            count = len(symbols)
            runs.append((-1, len(vectors)))
            vectors.append(symbols)
        remaining -= count
    # Pass 2, the deltas: runs in bulk, vectors symbol by symbol.
    deltas: list[int | None] = []
    append = deltas.append
    for symbol, count in runs:
        if symbol == 1:
            stop = pos + count
            if stop > end:
                raise BadPacket("transport-cc feedback: receive deltas truncated")
            deltas += data[pos:stop]
            pos = stop
        elif symbol == 0:
            deltas += [None] * count
        elif symbol == 2:
            stop = pos + 2 * count
            if stop > end:
                raise BadPacket("transport-cc feedback: receive deltas truncated")
            deltas += struct.unpack_from(f"!{count}h", data, pos)
            pos = stop
        elif symbol == 3:
            raise BadPacket("transport-cc feedback: reserved status symbol")
        else:
            for item in vectors[count]:
                if item == 1:
                    if pos >= end:
                        raise BadPacket("transport-cc feedback: receive deltas truncated")
                    append(data[pos])
                    pos += 1
                elif item == 0:
                    append(None)
                elif item == 2:
                    if pos + 2 > end:
                        raise BadPacket("transport-cc feedback: receive deltas truncated")
                    append(_LARGE.unpack_from(data, pos)[0])
                    pos += 2
                else:
                    raise BadPacket("transport-cc feedback: reserved status symbol")
    reference = ref_and_count >> 8
    if reference & 0x80_0000:
        reference -= 0x100_0000
    return TransportCcFeedback(
        sender, media, base_seq, reference, ref_and_count & 0xFF, tuple(deltas)
    )
