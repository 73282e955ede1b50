"""Producer: one published track (audio, or video with one to three simulcast streams).

A producer receives decrypted RTP from its send transport (the router's RTP listener finds
it by SSRC, or by the MID/RID header extensions until the SSRC is known), keeps receive
statistics per stream, and hands each packet to its consumers. It never blocks: consumers
queue into their transports' bounded egress channels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, final

from trio_sfu.ortc.negotiation import RtpMapping
from trio_sfu.ortc.types import MediaKind, RtpParameters
from trio_sfu.rtcp import Pli, build_rtcp
from trio_sfu.rtp.stats import ReceiveStats

if TYPE_CHECKING:
    from trio_sfu.engine.consumer import Consumer

#: At most one keyframe request (PLI/FIR) upstream per stream per this many seconds.
KEYFRAME_REQUEST_INTERVAL = 1.0
#: The SSRC the router uses as the sender of its RTCP toward publishers.
ROUTER_RTCP_SSRC = 0x5F5F5F5F


@final
class ProducerStream:
    """One RTP stream of a producer: a simulcast layer, or the single stream."""

    __slots__ = (
        "active_at",
        "clock_rate",
        "index",
        "keyframe_requested_at",
        "last_sr_arrival",
        "last_sr_ntp",
        "last_sr_rtp",
        "mapped_ssrc",
        "packets",
        "rid",
        "rtx_ssrc",
        "ssrc",
        "stats",
    )

    def __init__(
        self, *, index: int, rid: str | None, ssrc: int | None, mapped_ssrc: int, clock_rate: int
    ) -> None:
        self.index = index
        self.rid = rid
        self.ssrc = ssrc
        self.rtx_ssrc: int | None = None
        self.mapped_ssrc = mapped_ssrc
        self.clock_rate = clock_rate
        self.stats = ReceiveStats()
        self.packets = 0
        self.active_at = -1e9
        self.keyframe_requested_at = -1e9
        self.last_sr_ntp = 0
        self.last_sr_rtp = 0
        self.last_sr_arrival = -1.0

    def __repr__(self) -> str:
        return f"<ProducerStream {self.index} rid={self.rid} ssrc={self.ssrc}>"


@final
class Producer:
    """A published track. Created by the router; closed by it, its transport or a request."""

    def __init__(
        self,
        *,
        producer_id: str,
        transport_id: str,
        kind: MediaKind,
        rtp_parameters: RtpParameters,
        consumable_rtp_parameters: RtpParameters,
        mapping: RtpMapping,
        paused: bool,
        send_rtcp: Callable[[bytes], bool],
    ) -> None:
        self.id = producer_id
        self.transport_id = transport_id
        self.kind = kind
        self.rtp_parameters = rtp_parameters
        self.consumable_rtp_parameters = consumable_rtp_parameters
        self.mapping = mapping
        self.paused = paused
        self.closed = False
        self.consumers: set[Consumer] = set()
        self._send_rtcp = send_rtcp
        media = [c for c in rtp_parameters.codecs if not c.mime_type.lower().endswith("/rtx")]
        clock_rate = media[0].clock_rate
        self.streams: list[ProducerStream] = []
        for index, (encoding, mapped) in enumerate(
            zip(rtp_parameters.encodings, mapping.encodings, strict=True)
        ):
            stream = ProducerStream(
                index=index,
                rid=encoding.rid,
                ssrc=encoding.ssrc,
                mapped_ssrc=mapped.mapped_ssrc,
                clock_rate=clock_rate,
            )
            if encoding.rtx is not None:
                stream.rtx_ssrc = encoding.rtx.ssrc
            self.streams.append(stream)
        self.streams_by_rid = {s.rid: s for s in self.streams if s.rid is not None}
        #: producer payload type -> router payload type
        self.payload_types = dict(mapping.codecs)
        self.is_simulcast = len(self.streams) > 1
        #: header extension URI -> the publisher's id for it
        self.extension_ids = {uri: ext_id for ext_id, uri in mapping.header_extensions.items()}
        self.rtx_payload_types = frozenset(
            c.payload_type for c in rtp_parameters.codecs if c.mime_type.lower().endswith("/rtx")
        )

    # ---- packets ---------------------------------------------------------------------

    def receive_rtp(self, stream: ProducerStream, packet: bytes, now: float) -> None:
        """A media packet of ``stream`` (not RTX). Never blocks, never raises BadPacket."""
        stream.packets += 1
        stream.active_at = now
        stream.stats.update(
            (packet[2] << 8) | packet[3],
            int.from_bytes(packet[4:8], "big"),
            now,
            stream.clock_rate,
        )
        if self.paused:
            return
        for consumer in self.consumers:
            consumer.send_rtp(stream, packet, now)

    def receive_sender_report(self, stream: ProducerStream, ntp: int, rtp: int, now: float) -> None:
        stream.last_sr_ntp = ntp
        stream.last_sr_rtp = rtp
        stream.last_sr_arrival = now

    def request_keyframe(self, stream_index: int, now: float) -> None:
        """Ask the publisher for a keyframe on one stream, throttled per stream."""
        if self.kind != "video" or stream_index >= len(self.streams):
            return
        stream = self.streams[stream_index]
        if stream.ssrc is None or now - stream.keyframe_requested_at < KEYFRAME_REQUEST_INTERVAL:
            return
        stream.keyframe_requested_at = now
        self._send_rtcp(build_rtcp([Pli(sender_ssrc=ROUTER_RTCP_SSRC, media_ssrc=stream.ssrc)]))

    # ---- state -----------------------------------------------------------------------

    def active_stream_indexes(self, now: float, window: float = 2.0) -> list[int]:
        return [s.index for s in self.streams if now - s.active_at <= window]

    def dump(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "paused": self.paused,
            "streams": [
                {"index": s.index, "rid": s.rid, "ssrc": s.ssrc, "rtxSsrc": s.rtx_ssrc}
                for s in self.streams
            ],
            "consumerIds": sorted(c.id for c in self.consumers),
        }
