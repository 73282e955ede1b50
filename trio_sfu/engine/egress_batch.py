"""What waits in a WebRTC transport's egress queue, and how a batch of it is protected.

A transport sends at once when it can (:meth:`WebRtcTransport.send_rtp_nowait
<trio_sfu.engine.webrtc_transport.WebRtcTransport.send_rtp_nowait>`); only while its
socket would block do packets wait in its queue, as ``(packet, kind)`` entries, for its
egress task to send in batches of at most :data:`EGRESS_BATCH`. Sans-IO.
"""

from __future__ import annotations

from typing import Final

from trio_sfu.errors import BadPacket
from trio_sfu.srtp import SrtpSession

__all__ = ["EGRESS_BATCH", "KIND_PROTECTED", "KIND_RTCP", "KIND_RTP", "protect_batch"]

#: Entries the egress task sends per round.
EGRESS_BATCH: Final = 64
# What an egress queue entry holds: RTP or RTCP to protect, or either protected already
# (KIND_PROTECTED + KIND_RTP or + KIND_RTCP: it waited because the socket would block).
KIND_RTP: Final = 0
KIND_RTCP: Final = 1
KIND_PROTECTED: Final = 2


def protect_batch(
    srtp: SrtpSession, batch: list[tuple[bytes | bytearray, int]]
) -> tuple[list[bytes], int, int]:
    """The datagrams of a batch of queue entries, in order: ``(datagrams, how many of
    them are RTCP, how many entries SRTP refused to protect)``."""
    protect_rtp = srtp.protect_rtp
    protect_rtcp = srtp.protect_rtcp
    out: list[bytes] = []
    rtcp = 0
    refused = 0
    for packet, kind in batch:
        try:
            if kind == KIND_RTP:
                out.append(protect_rtp(packet))
            elif kind == KIND_RTCP:
                out.append(protect_rtcp(packet))
                rtcp += 1
            else:  # protected already (bytes), when the socket would have blocked
                out.append(packet if isinstance(packet, bytes) else bytes(packet))
                rtcp += kind == KIND_PROTECTED + KIND_RTCP
        except BadPacket:
            refused += 1
    return out, rtcp, refused
