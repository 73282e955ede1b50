"""RTCP: compound packet parsing and building, and NTP time helpers (sans-IO).

Everything public lives in :mod:`trio_sfu.rtcp.packets`, :mod:`trio_sfu.rtcp.twcc` and
:mod:`trio_sfu.rtcp.ntp`; this package re-exports it. Unknown packet types and feedback
formats are kept as :class:`UnknownRtcp` (raw bytes), never dropped silently and never an
error.
"""

from __future__ import annotations

from trio_sfu.rtcp.ntp import (
    NTP_UNIX_OFFSET,
    compact_to_seconds,
    ntp_to_compact,
    ntp_to_unix,
    seconds_to_compact,
    unix_to_ntp,
)
from trio_sfu.rtcp.packets import (
    PT_BYE,
    PT_PSFB,
    PT_RR,
    PT_RTPFB,
    PT_SDES,
    PT_SR,
    SDES_CNAME,
    Bye,
    Fir,
    GenericNack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    RtcpPacket,
    Sdes,
    SdesChunk,
    SenderReport,
    UnknownRtcp,
    build_rtcp,
    nack_pairs_from_seqs,
    parse_rtcp_untrusted,
    seqs_from_nack_pairs,
)
from trio_sfu.rtcp.twcc import DELTA_UNIT_US, REFERENCE_TIME_UNIT_US, TransportCcFeedback

__all__ = [
    "DELTA_UNIT_US",
    "NTP_UNIX_OFFSET",
    "PT_BYE",
    "PT_PSFB",
    "PT_RR",
    "PT_RTPFB",
    "PT_SDES",
    "PT_SR",
    "REFERENCE_TIME_UNIT_US",
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
    "TransportCcFeedback",
    "UnknownRtcp",
    "build_rtcp",
    "compact_to_seconds",
    "nack_pairs_from_seqs",
    "ntp_to_compact",
    "ntp_to_unix",
    "parse_rtcp_untrusted",
    "seconds_to_compact",
    "seqs_from_nack_pairs",
    "unix_to_ntp",
]
