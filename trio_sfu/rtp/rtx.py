"""RTP retransmission payload format (RFC 4588), SSRC-multiplexed as WebRTC uses it. Sans-IO.

An RTX packet is the original packet with its own SSRC, payload type and sequence number,
and the original sequence number (OSN) in front of the payload::

    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |   RTP header: rtx PT, rtx seq, original timestamp, rtx SSRC,  |
    |   original marker, CSRCs and header extensions                |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |            OSN                |                               |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               |
    |          original payload (its padding removed)               |
    |                               | RTX's own padding, if any     |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Both functions raise :class:`~trio_sfu.errors.BadPacket` and nothing else for malformed
input (the packets come from the network, or from a NACK buffer filled from it).
"""

from __future__ import annotations

from trio_sfu.errors import BadPacket
from trio_sfu.rtp.packet import Buffer, rtp_layout_untrusted

__all__ = ["rtx_unwrap_untrusted", "rtx_wrap"]


def _header_with(
    data: Buffer, payload_start: int, payload_type: int, sequence: Buffer, ssrc: int
) -> bytearray:
    # The header up to the payload, with P cleared (padding is never carried over),
    # payload type (marker kept), sequence number and SSRC replaced.
    header = bytearray(data[:payload_start])
    header[0] &= 0xDF
    header[1] = (header[1] & 0x80) | (payload_type & 0x7F)
    header[2:4] = sequence
    header[8:12] = (ssrc & 0xFFFFFFFF).to_bytes(4, "big")
    return header


def rtx_wrap(
    packet: Buffer, *, rtx_ssrc: int, rtx_payload_type: int, rtx_sequence_number: int
) -> bytes:
    """The RTX packet retransmitting ``packet`` (an RTP packet) on the RTX stream.

    Timestamp, marker, CSRCs and header extensions are kept; the original padding is dropped.
    ``rtx_sequence_number`` is taken modulo 2**16. Raises ``BadPacket`` if ``packet`` is not a
    well-formed RTP packet.
    """
    _, payload_start, payload_end = rtp_layout_untrusted(packet)
    header = _header_with(
        packet,
        payload_start,
        rtx_payload_type,
        (rtx_sequence_number & 0xFFFF).to_bytes(2, "big"),
        rtx_ssrc,
    )
    return b"".join((header, packet[2:4], packet[payload_start:payload_end]))


def rtx_unwrap_untrusted(data: Buffer, *, payload_type: int, ssrc: int) -> bytes | None:
    """The original packet inside RTX packet ``data``, with the original ``payload_type`` and
    ``ssrc`` (the media stream's, known from negotiation) and the sequence number from the OSN.

    ``None`` for an RTX packet with no payload at all: Chromium sends such padding-only
    packets on the RTX stream to probe bandwidth; they retransmit nothing. A payload too
    short for the OSN (1 byte) is a ``BadPacket``. The RTX packet's padding is dropped.
    """
    _, payload_start, payload_end = rtp_layout_untrusted(data)
    if payload_end - payload_start < 2:
        if payload_end == payload_start:
            return None
        raise BadPacket("RTX payload of 1 byte: too short for the original sequence number")
    header = _header_with(
        data, payload_start, payload_type, data[payload_start : payload_start + 2], ssrc
    )
    return b"".join((header, data[payload_start + 2 : payload_end]))
