"""H.264 RTP payloads, RFC 6184: NAL unit types and key frame detection (sans-IO).

Every RTP payload starts with a one-octet NAL unit header (RFC 6184 section 1.3)::

        +---------------+
        |0|1|2|3|4|5|6|7|
        +-+-+-+-+-+-+-+-+
        |F|NRI|  Type   |    F: forbidden zero bit, NRI: reference importance
        +---------------+

Type 1-23 is a single NAL unit packet. Packetization modes 0 and 1 (the ones WebRTC
negotiates) add two more:

* STAP-A (24): aggregation; after the header, NAL units each preceded by a 16-bit size.
* FU-A (28): one fragment of a NAL unit; the FU indicator (type 28) is followed by the FU
  header ``|S|E|R| Type |``: S start of the NAL unit, E end, Type the fragmented unit's.

The interleaved-mode types (STAP-B 25, MTAP16 26, MTAP24 27, FU-B 29) are not opened:
they are reported by type and never flagged as key frames.

Key frame means here: a packet from which a decoder can start. It is flagged for a single
NAL unit of type 5 (IDR slice), 7 (SPS) or 8 (PPS) - an encoder sends parameter sets just
before an IDR picture, so they mark its start -, for a STAP-A holding an IDR slice or an
SPS, and for the first fragment (S=1) of an IDR slice or SPS in an FU-A.

Functions that take payload bytes treat them as untrusted network input and raise only
:class:`~trio_sfu.errors.BadPacket`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from trio_sfu.errors import BadPacket

Buffer = bytes | bytearray | memoryview

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
STAP_A = 24
STAP_B = 25
MTAP16 = 26
MTAP24 = 27
FU_A = 28
FU_B = 29

_TYPE = 0x1F
_FU_S = 0x80
_FU_E = 0x40

#: Single NAL unit packets of these types are flagged as key frames.
SINGLE_KEYFRAME_TYPES = frozenset((NAL_IDR, NAL_SPS, NAL_PPS))
#: A STAP-A holding one of these, or an FU-A starting one of these, is a key frame.
AGGREGATED_KEYFRAME_TYPES = frozenset((NAL_IDR, NAL_SPS))

_new_tuple = tuple.__new__


class H264Info(NamedTuple):
    """What one H.264 RTP payload carries."""

    #: The payload's own NAL header type: 1-23 single NAL unit, 24 STAP-A, 28 FU-A, ...
    packet_type: int
    #: Types of the NAL units carried: the single unit's, each aggregated unit's, or the
    #: fragmented unit's (FU-A). Empty for the interleaved-mode types.
    nal_types: tuple[int, ...]
    #: A decoder can start from this packet (see the module docstring).
    keyframe: bool
    #: FU-A only: this fragment starts / ends its NAL unit. True for whole units.
    start: bool
    end: bool


def _stap_a_types(payload: Buffer) -> tuple[int, ...]:
    size_total = len(payload)
    pos = 1
    types = []
    while pos < size_total:
        if pos + 2 > size_total:
            raise BadPacket("STAP-A: truncated NAL unit size")
        size = payload[pos] << 8 | payload[pos + 1]
        pos += 2
        if size == 0:
            raise BadPacket("STAP-A: empty NAL unit")
        if pos + size > size_total:
            raise BadPacket("STAP-A: NAL unit size past the end of the payload")
        types.append(payload[pos] & _TYPE)
        pos += size
    if not types:
        raise BadPacket("STAP-A without NAL units")
    return tuple(types)


def parse_payload_untrusted(payload: Buffer) -> H264Info:
    """Parse the NAL structure of an H.264 RTP payload (untrusted: raises only BadPacket)."""
    if not payload:
        raise BadPacket("empty H264 payload")
    packet_type = payload[0] & _TYPE
    if packet_type < STAP_A:
        return _new_tuple(
            H264Info,
            (packet_type, (packet_type,), packet_type in SINGLE_KEYFRAME_TYPES, True, True),
        )
    if packet_type == FU_A:
        if len(payload) < 2:
            raise BadPacket("FU-A without FU header")
        fu = payload[1]
        start = bool(fu & _FU_S)
        end = bool(fu & _FU_E)
        if start and end:
            raise BadPacket("FU-A with both start and end bits set")
        nal_type = fu & _TYPE
        keyframe = start and nal_type in AGGREGATED_KEYFRAME_TYPES
        return _new_tuple(H264Info, (packet_type, (nal_type,), keyframe, start, end))
    if packet_type == STAP_A:
        types = _stap_a_types(payload)
        keyframe = any(t in AGGREGATED_KEYFRAME_TYPES for t in types)
        return _new_tuple(H264Info, (packet_type, types, keyframe, True, True))
    return _new_tuple(H264Info, (packet_type, (), False, True, True))


def is_keyframe(payload: Buffer) -> bool:
    """Whether a decoder can start from this RTP payload (untrusted: raises only BadPacket)."""
    return parse_payload_untrusted(payload).keyframe


def build_stap_a(nal_units: Iterable[bytes]) -> bytes:
    """A STAP-A payload aggregating ``nal_units`` (each a whole NAL unit, header included).

    Its F bit is the OR of the units' F bits and its NRI their maximum (RFC 6184 5.7.1).
    """
    units = list(nal_units)
    if not units:
        raise ValueError("a STAP-A needs at least one NAL unit")
    f = 0
    nri = 0
    out = bytearray(1)
    for unit in units:
        if not 0 < len(unit) <= 0xFFFF:
            raise ValueError("each NAL unit must be 1..65535 bytes")
        f |= unit[0] & 0x80
        nri = max(nri, unit[0] & 0x60)
        out += len(unit).to_bytes(2, "big")
        out += unit
    out[0] = f | nri | STAP_A
    return bytes(out)


def build_fu_a(nal_unit: bytes, max_payload: int) -> list[bytes]:
    """Split one NAL unit into FU-A payloads of at most ``max_payload`` bytes each.

    A unit that fits in ``max_payload`` is returned whole (a single NAL unit packet).
    """
    if not nal_unit:
        raise ValueError("empty NAL unit")
    if len(nal_unit) <= max_payload:
        return [bytes(nal_unit)]
    chunk = max_payload - 2
    if chunk < 1:
        raise ValueError("max_payload must be at least 3 to fragment")
    header = nal_unit[0]
    indicator = header & 0xE0 | FU_A
    nal_type = header & _TYPE
    body = nal_unit[1:]
    parts = []
    for pos in range(0, len(body), chunk):
        fu = nal_type
        if pos == 0:
            fu |= _FU_S
        if pos + chunk >= len(body):
            fu |= _FU_E
        parts.append(bytes((indicator, fu)) + body[pos : pos + chunk])
    return parts
