"""Consumer: one subscription of one peer to one Producer.

A consumer turns the producer's packets into one outgoing stream: its own SSRC, the router's
payload type, the router's header extension ids, and sequence numbers and timestamps that
run on without gaps across pauses and simulcast switches. It keeps what it sent for NACK
repair (as RTX where negotiated) and counts what it needs for Sender Reports.

``paused`` (the subscriber's wish) and ``producer_paused`` (the publisher's) are kept apart,
as in mediasoup. A video consumer starts forwarding only at a keyframe, and asks for one
whenever it needs one (resume, first packet, simulcast switch).

Layer choice here is the simple one: forward the highest simulcast stream that is active
(capped by the preferred layer). Network-driven layer policy is built on top of this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, final

from trio_sfu.errors import BadPacket
from trio_sfu.ortc.negotiation import is_rtx, parse_scalability_mode
from trio_sfu.ortc.types import MediaKind, RtpParameters
from trio_sfu.rtp import h264, vp8
from trio_sfu.rtp.extensions import MID_URI, REPAIRED_RID_URI, RID_URI, TRANSPORT_WIDE_CC_URI
from trio_sfu.rtp.nack import RetransmissionBuffer
from trio_sfu.rtp.packet import rewrite_extensions_untrusted, rewrite_in_place, rtp_layout_untrusted
from trio_sfu.rtp.rewriter import SeqTsRewriter
from trio_sfu.rtp.rtx import rtx_wrap

if TYPE_CHECKING:
    from trio_sfu.engine.producer import Producer, ProducerStream

#: Header extensions never forwarded as they came: they describe the publisher's leg.
_NOT_FORWARDED = frozenset({MID_URI, RID_URI, REPAIRED_RID_URI, TRANSPORT_WIDE_CC_URI})


def _keyframe_detector(mime_type: str) -> Callable[[memoryview], bool] | None:
    name = mime_type.lower()
    if name == "video/vp8":
        return vp8.is_keyframe
    if name == "video/h264":
        return h264.is_keyframe
    return None


@final
class Consumer:
    """Forwards one producer to one receiving transport."""

    def __init__(
        self,
        *,
        consumer_id: str,
        producer: Producer,
        transport_id: str,
        rtp_parameters: RtpParameters,
        paused: bool,
        send_rtp: Callable[[bytes], bool],
        now: float,
    ) -> None:
        self.id = consumer_id
        self.producer = producer
        self.producer_id = producer.id
        self.transport_id = transport_id
        self.kind: MediaKind = producer.kind
        self.rtp_parameters = rtp_parameters
        self.type: Literal["simple", "simulcast"] = (
            "simulcast" if producer.is_simulcast else "simple"
        )
        self.paused = paused
        self.producer_paused = producer.paused
        self.closed = False
        self._send_rtp = send_rtp

        encoding = rtp_parameters.encodings[0]
        assert encoding.ssrc is not None
        self.ssrc = encoding.ssrc
        self.rtx_ssrc = encoding.rtx.ssrc if encoding.rtx is not None else None
        media = [c for c in rtp_parameters.codecs if not is_rtx(c.mime_type)]
        self.clock_rate = media[0].clock_rate
        self.payload_type = media[0].payload_type
        rtx = [c for c in rtp_parameters.codecs if is_rtx(c.mime_type)]
        self.rtx_payload_type = rtx[0].payload_type if rtx and self.rtx_ssrc else None
        self.cname = rtp_parameters.rtcp.cname or ""
        #: producer payload type -> our payload type (only the codec we negotiated)
        self._payload_types = {
            producer_pt: router_pt
            for producer_pt, router_pt in producer.payload_types.items()
            if router_pt == self.payload_type
        }
        # Producer (browser) extension ids -> our (router) ids, for what we may forward.
        ours = {e.uri: e.id for e in rtp_parameters.header_extensions}
        self._extension_ids = {
            their_id: ours[uri]
            for their_id, uri in producer.mapping.header_extensions.items()
            if uri in ours and uri not in _NOT_FORWARDED
        }
        self._extension_values: dict[int, bytes] = {}
        if rtp_parameters.mid is not None and MID_URI in ours:
            self._extension_values[ours[MID_URI]] = rtp_parameters.mid.encode()
        self._is_keyframe = _keyframe_detector(media[0].mime_type)

        scalability = parse_scalability_mode(encoding.scalability_mode)
        self.spatial_layers = scalability.spatial_layers
        self.temporal_layers = scalability.temporal_layers
        self.preferred_spatial_layer = self.spatial_layers - 1
        self.preferred_temporal_layer = self.temporal_layers - 1
        #: The simulcast stream being forwarded (None until the first keyframe).
        self.current_stream: int | None = None
        #: The stream we want to forward; switches happen at its next keyframe.
        self.target_stream: int | None = None

        self._rewriter = SeqTsRewriter()
        self._sync_required = True
        self._buffer = RetransmissionBuffer(1024 if self.kind == "video" else 256)
        self._rtx_seq = 0
        self.packets_sent = 0
        self.octets_sent = 0
        self.retransmitted = 0
        self.last_sent_at: float | None = None
        self.last_sent_ts = 0
        self.created_at = now
        # From the subscriber's receiver reports about this stream.
        self.fraction_lost = 0
        self.cumulative_lost = 0
        self.rtt: float | None = None

    # ---- the packet path -------------------------------------------------------------

    @property
    def active(self) -> bool:
        return not (self.paused or self.producer_paused or self.closed)

    def send_rtp(self, stream: ProducerStream, packet: bytes, now: float) -> None:
        """Forward one producer packet if this consumer wants it. Never blocks."""
        if self.paused or self.producer_paused:
            return
        rewriter = self._rewriter
        if (stream.index != self.current_stream or self._sync_required) and not self._try_switch(
            stream, packet, now
        ):
            return
        try:
            mapped = rewriter.rewrite(_seq(packet), _ts(packet))
            if mapped is None:
                return
            payload_type = self._payload_types.get(packet[1] & 0x7F)
            if payload_type is None:
                return
            out = rewrite_extensions_untrusted(packet, self._extension_ids, self._extension_values)
        except BadPacket:
            return
        seq, ts = mapped
        rewrite_in_place(
            out, ssrc=self.ssrc, payload_type=payload_type, sequence_number=seq, timestamp=ts
        )
        data = bytes(out)
        self._buffer.store(seq, data, now)
        self.packets_sent += 1
        self.octets_sent += len(data) - 12
        self.last_sent_at = now
        self.last_sent_ts = ts
        self._send_rtp(data)

    def _try_switch(self, stream: ProducerStream, packet: bytes, now: float) -> bool:
        """Decide whether ``packet`` of ``stream`` starts what we forward from now on."""
        if stream.ssrc is None:
            return False
        target = self._choose_target(now)
        if stream.index != target:
            return False
        if self.kind == "video" and self._is_keyframe is not None:
            try:
                _, start, end = rtp_layout_untrusted(packet)
                keyframe = self._is_keyframe(memoryview(packet)[start:end])
            except BadPacket:
                return False
            if not keyframe:
                self.producer.request_keyframe(stream.index, now)
                return False
        ts_delta = 0
        if self.last_sent_at is not None:
            ts_delta = max(1, int((now - self.last_sent_at) * self.clock_rate))
        self._rewriter.switch_to(stream.ssrc, _seq(packet), _ts(packet), ts_delta)
        self.current_stream = stream.index
        self._sync_required = False
        return True

    def _choose_target(self, now: float) -> int:
        if not self.producer.is_simulcast:
            self.target_stream = 0
            return 0
        active = [
            i for i in self.producer.active_stream_indexes(now) if i <= self.preferred_spatial_layer
        ]
        target = (
            max(active)
            if active
            else min(self.preferred_spatial_layer, len(self.producer.streams) - 1)
        )
        self.target_stream = target
        return target

    def update_target(self, now: float) -> None:
        """Periodic: follow the highest active stream; ask for a keyframe to switch to it."""
        if not self.active or self.kind != "video":
            return
        target = self._choose_target(now)
        if target != self.current_stream:
            self._sync_required = True
            self.producer.request_keyframe(target, now)

    # ---- RTCP from the subscriber ----------------------------------------------------

    def request_keyframe(self, now: float) -> None:
        """The subscriber sent PLI/FIR for our stream."""
        if self.current_stream is not None:
            self.producer.request_keyframe(self.current_stream, now)

    def retransmit(self, seqs: list[int], now: float) -> int:
        """Answer a NACK from what we sent; returns how many packets went out again."""
        sent = 0
        for seq in seqs:
            packet = self._buffer.get(seq, now)
            if packet is None:
                continue
            if self.rtx_payload_type is not None and self.rtx_ssrc is not None:
                packet = rtx_wrap(
                    packet,
                    rtx_ssrc=self.rtx_ssrc,
                    rtx_payload_type=self.rtx_payload_type,
                    rtx_sequence_number=self._rtx_seq,
                )
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            self._send_rtp(packet)
            sent += 1
        self.retransmitted += sent
        return sent

    def receive_report(self, fraction_lost: int, cumulative_lost: int, rtt: float | None) -> None:
        self.fraction_lost = fraction_lost
        self.cumulative_lost = cumulative_lost
        if rtt is not None:
            self.rtt = rtt

    # ---- control ---------------------------------------------------------------------

    def pause(self) -> None:
        self.paused = True

    def resume(self, now: float) -> None:
        if not self.paused:
            return
        self.paused = False
        self._sync_required = True
        self._request_sync(now)

    def set_producer_paused(self, paused: bool, now: float) -> None:
        self.producer_paused = paused
        if not paused:
            self._sync_required = True
            self._request_sync(now)

    def _request_sync(self, now: float) -> None:
        if self.active and self.kind == "video":
            self.producer.request_keyframe(self._choose_target(now), now)

    def set_preferred_layers(
        self, spatial: int, temporal: int | None, now: float
    ) -> tuple[int, int]:
        self.preferred_spatial_layer = max(0, min(spatial, self.spatial_layers - 1))
        if temporal is not None:
            self.preferred_temporal_layer = max(0, min(temporal, self.temporal_layers - 1))
        self.update_target(now)
        return self.preferred_spatial_layer, self.preferred_temporal_layer

    def sender_report_timestamp(self, now: float) -> int:
        """The RTP timestamp that corresponds to ``now`` on our outgoing stream."""
        if self.last_sent_at is None:
            return 0
        return (self.last_sent_ts + int((now - self.last_sent_at) * self.clock_rate)) & 0xFFFFFFFF

    def stats(self) -> dict[str, Any]:
        return {
            "type": "outbound-rtp",
            "kind": self.kind,
            "ssrc": self.ssrc,
            "rtxSsrc": self.rtx_ssrc,
            "packetCount": self.packets_sent,
            "byteCount": self.octets_sent,
            "packetsRetransmitted": self.retransmitted,
            "fractionLost": self.fraction_lost / 256,
            "packetsLost": self.cumulative_lost,
            "roundTripTime": self.rtt,
            "currentLayer": self.current_stream,
        }

    def dump(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "producerId": self.producer_id,
            "kind": self.kind,
            "type": self.type,
            "paused": self.paused,
            "producerPaused": self.producer_paused,
            "ssrc": self.ssrc,
        }


def _seq(packet: bytes) -> int:
    return (packet[2] << 8) | packet[3]


def _ts(packet: bytes) -> int:
    return int.from_bytes(packet[4:8], "big")
