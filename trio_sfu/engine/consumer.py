"""Consumer: one subscription of one peer to one Producer.

A consumer turns the producer's packets into one outgoing stream: its own SSRC, the router's
payload type, the router's header extension ids, and sequence numbers and timestamps that
run on without gaps across pauses, simulcast switches and dropped temporal layers. It keeps
what it sent for NACK repair (as RTX where negotiated) and counts what it needs for Sender
Reports.

``paused`` (the subscriber's wish) and ``producer_paused`` (the publisher's) are kept apart,
as in mediasoup.

Layers (video). Three pairs of (spatial, temporal) layers:

* *preferred*: what the subscriber asked for (``rtc:setPreferredLayers``; the highest by
  default);
* *target*: what it should get now: the preferred layers, lowered by the weak-network
  policy (:attr:`network_level`, set by the router from the subscriber's loss) and by the
  transport's bandwidth (:attr:`allocated_layers`), on a stream that is being received;
  no target at all while the policy pauses video;
* *current*: what is being forwarded.

A spatial switch happens only at a keyframe of the target stream: the consumer asks for one
upstream (throttled) and keeps forwarding the current stream until it starts. The streams
are spliced: sequence numbers continue by one, timestamps are carried over through each
stream's Sender Reports (NTP <-> RTP) so that the new stream's frames play at their capture
time, and VP8 PictureID / TL0PICIDX continue without a jump. Temporal layers (VP8 TID)
above the current one are dropped without leaving a sequence or PictureID gap; the current
temporal layer goes down at the next frame and up at a layer-sync frame (Y bit). H264 has
no temporal filtering. Every change of the current layers is reported through
``on_layers_changed`` (``None`` layers when nothing is forwarded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal, Protocol

from trio_sfu.engine.layers import LEVEL_R2, spatial_cap
from trio_sfu.engine.producer import (
    KEYFRAME_RETRY_WAITING,
    STARTUP_WAIT,
    Producer,
    ProducerStream,
)
from trio_sfu.errors import BadPacket
from trio_sfu.ortc.negotiation import is_rtx, parse_scalability_mode
from trio_sfu.ortc.types import MediaKind, RtpParameters
from trio_sfu.rtp import vp8
from trio_sfu.rtp.egress import (
    NO_VP8_IDS,
    ForwardHistory,
    pack_vp8_ids,
    unpack_vp8_ids,
    write_header,
)
from trio_sfu.rtp.extensions import MID_URI, REPAIRED_RID_URI, RID_URI, TRANSPORT_WIDE_CC_URI
from trio_sfu.rtp.packet import (
    find_extension_span_untrusted,
    padding_bytes,
    rtp_layout_untrusted,
)
from trio_sfu.rtp.rewriter import SeqTsRewriter
from trio_sfu.rtp.rtx import rtx_wrap

#: Header extensions never forwarded as they came: they describe the publisher's leg.
_NOT_FORWARDED = frozenset({MID_URI, RID_URI, REPAIRED_RID_URI, TRANSPORT_WIDE_CC_URI})
#: How often the packet path may ask the producer for a keyframe it waits for (the
#: producer's own throttle for a waiting consumer).
_KEYFRAME_RETRY: Final = KEYFRAME_RETRY_WAITING
_TS_MASK: Final = 0xFFFFFFFF
#: Packets a consumer can retransmit: 256 is 1.7 s of 720p at 1.4 Mbps (1 s at 2.5 Mbps),
#: longer than a repair is worth making in a call; audio is rarely NACKed at all. The
#: producer's packets they refer to stay in memory that long (shared by its consumers).
_HISTORY_VIDEO: Final = 256
_HISTORY_AUDIO: Final = 64
_TWO_POW_32: Final = float(1 << 32)


class SendMeter(Protocol):
    """Where a consumer counts what it sends on its transport: the send-side estimator of
    the transport's control (:attr:`TransportControl.estimator
    <trio_sfu.engine.control.TransportControl.estimator>`), handed to the consumer when
    the router makes it."""

    def on_sent(self, size: int, now: float) -> int:
        """A packet of ``size`` bytes goes out now: its transport-wide sequence number."""
        ...

    def allow_retransmission(self, size: int, now: float) -> bool:
        """Whether a retransmission of ``size`` bytes fits the budget now."""
        ...


def _ntp_seconds(ntp: int) -> float:
    return ntp / _TWO_POW_32


class Consumer:
    """Forwards one producer to one receiving transport (subclassed only by
    :class:`~trio_sfu.engine.pipe_consumer.PipeConsumer`)."""

    # Slots, not an instance dict: with this many attributes CPython gives up sharing the
    # dict's keys, and each consumer's dict took 1.5 KiB.
    __slots__ = (
        "_current",
        "_estimator",
        "_forwarding",
        "_history",
        "_keyframe_retry_at",
        "_mid",
        "_on_closed",
        "_on_layers_changed",
        "_payload_types",
        "_probe_cursor",
        "_reported_layers",
        "_rewriter",
        "_rtx_seq",
        "_sample_highest",
        "_sample_lost",
        "_sample_sent",
        "_send",
        "_template",
        "_twcc_id",
        "_vp8",
        "allocated_layers",
        "bandwidth_feedback",
        "clock_rate",
        "closed",
        "cname",
        "created_at",
        "cumulative_lost",
        "current_spatial",
        "current_temporal",
        "dropped_temporal",
        "first_sent_at",
        "fraction_lost",
        "highest_seq",
        "id",
        "kind",
        "last_sent_at",
        "last_sent_ts",
        "layer_switches",
        "mime_type",
        "nacked",
        "nacks_total",
        "network_level",
        "octets_sent",
        "packets_sent",
        "paused",
        "payload_type",
        "preferred_spatial_layer",
        "preferred_temporal_layer",
        "producer",
        "producer_id",
        "producer_paused",
        "reports",
        "retransmitted",
        "rtp_parameters",
        "rtt",
        "rtx_payload_type",
        "rtx_ssrc",
        "send_rtp",
        "spatial_layers",
        "ssrc",
        "target_spatial",
        "target_temporal",
        "temporal_filtering",
        "temporal_layers",
        "transport_id",
        "type",
    )

    def __init__(
        self,
        *,
        consumer_id: str,
        producer: Producer,
        transport_id: str,
        rtp_parameters: RtpParameters,
        paused: bool,
        send_rtp: Callable[[bytes | bytearray], bool],
        now: float,
        on_layers_changed: Callable[[Consumer], None] | None = None,
        on_closed: Callable[[Consumer, str], None] | None = None,
        estimator: SendMeter | None = None,
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
        self._send = send_rtp
        self._on_layers_changed = on_layers_changed
        self._on_closed = on_closed

        encoding = rtp_parameters.encodings[0]
        assert encoding.ssrc is not None
        self.ssrc = encoding.ssrc
        self.rtx_ssrc = encoding.rtx.ssrc if encoding.rtx is not None else None
        media = [c for c in rtp_parameters.codecs if not is_rtx(c.mime_type)]
        self.clock_rate = media[0].clock_rate
        self.payload_type = media[0].payload_type
        self.mime_type = media[0].mime_type.lower()
        rtx = [c for c in rtp_parameters.codecs if is_rtx(c.mime_type)]
        self.rtx_payload_type = rtx[0].payload_type if rtx and self.rtx_ssrc else None
        self.cname = rtp_parameters.rtcp.cname or ""
        #: producer payload type -> our payload type (only the codec we negotiated)
        self._payload_types = producer.payload_types_to(self.payload_type)
        # Producer (browser) extension ids -> our (router) ids, for what we may forward.
        ours = {e.uri: e.id for e in rtp_parameters.header_extensions}
        extension_ids = {
            their_id: ours[uri]
            for their_id, uri in producer.mapping.header_extensions.items()
            if uri in ours and uri not in _NOT_FORWARDED
        }
        mid_id: int | None = None
        self._mid = b""
        if rtp_parameters.mid is not None and MID_URI in ours:
            mid_id = ours[MID_URI]
            self._mid = rtp_parameters.mid.encode()
        #: Our transport-wide sequence number extension id (the estimator numbers packets).
        self._twcc_id: int | None = None
        self._estimator = estimator
        feedback = {fb.type for fb in media[0].rtcp_feedback}
        if estimator is not None and TRANSPORT_WIDE_CC_URI in ours and "transport-cc" in feedback:
            self._twcc_id = ours[TRANSPORT_WIDE_CC_URI]
        #: The extension rewrite, shared with every consumer of the producer alike.
        self._template = producer.header_template(
            extension_ids, mid_id, len(self._mid), self._twcc_id
        )
        #: The subscriber negotiated a bandwidth feedback (transport-cc or REMB).
        self.bandwidth_feedback = "transport-cc" in feedback or "goog-remb" in feedback

        scalability = parse_scalability_mode(encoding.scalability_mode)
        self.spatial_layers = scalability.spatial_layers if producer.is_simulcast else 1
        self.spatial_layers = max(self.spatial_layers, 1)
        self.temporal_layers = scalability.temporal_layers
        is_vp8 = self.mime_type == "video/vp8"
        #: Temporal layers can be dropped (VP8 that announced more than one).
        self.temporal_filtering = is_vp8 and self.temporal_layers > 1
        self.preferred_spatial_layer = self.spatial_layers - 1
        self.preferred_temporal_layer = self.temporal_layers - 1
        #: The weak-network policy's level (layers.LEVEL_*), set by the router.
        self.network_level = LEVEL_R2
        #: (spatial, temporal) the bandwidth allocation allows; None: no limit.
        self.allocated_layers: tuple[int, int] | None = None
        self.target_spatial: int | None = None
        self.target_temporal: int | None = None
        self.current_spatial: int | None = None
        self.current_temporal: int | None = None
        self._reported_layers: tuple[int | None, int | None] = (None, None)
        self._current: ProducerStream | None = None
        self._keyframe_retry_at = -1e9

        self._rewriter = SeqTsRewriter()
        #: PictureID / TL0PICIDX continuity (VP8 only: only VP8 packets come with a Vp8Info).
        self._vp8 = vp8.Vp8Continuity() if is_vp8 else None
        #: How recent packets were made, to answer NACKs (None: NACK was not negotiated).
        self._history: ForwardHistory | None = None
        if any(fb.type == "nack" and not fb.parameter for fb in media[0].rtcp_feedback):
            self._history = ForwardHistory(
                _HISTORY_VIDEO if self.kind == "video" else _HISTORY_AUDIO
            )
        self._rtx_seq = 0
        self._probe_cursor = 0
        self.packets_sent = 0
        self.octets_sent = 0
        self.retransmitted = 0
        self.dropped_temporal = 0
        self.layer_switches = 0
        self.last_sent_at: float | None = None
        #: When the consumer first forwarded a packet (the loss policy waits an interval).
        self.first_sent_at: float | None = None
        self.last_sent_ts = 0
        self.created_at = now
        # From the subscriber's receiver reports about this stream.
        self.fraction_lost = 0
        self.cumulative_lost = 0
        self.highest_seq: int | None = None
        self.rtt: float | None = None
        self.reports = 0
        # Sampled by the router once per policy interval (loss_sample()).
        self._sample_highest: int | None = None
        self._sample_lost = 0
        self._sample_sent = 0
        #: Distinct sequence numbers NACKed since the last loss_sample() (None: none).
        self.nacked: set[int] | None = None
        #: Those summed over every loss_sample() interval so far.
        self.nacks_total = 0

        self.send_rtp: Callable[
            [ProducerStream, bytes, int, int, int, vp8.Vp8Info | None, bool, float], None
        ] = self._send_audio if self.kind == "audio" else self._send_video
        self._forwarding = False
        self._update_forwarding()

    # ---- state -----------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return not (self.paused or self.producer_paused or self.closed)

    @property
    def current_stream(self) -> int | None:
        return self.current_spatial

    def _update_forwarding(self) -> None:
        forwarding = self.active and (self.kind == "audio" or self.network_level > 0)
        self._forwarding = forwarding
        if not forwarding and self._current is not None:
            self._current = None
            self._set_current(None, None)

    def _set_current(self, spatial: int | None, temporal: int | None) -> None:
        self.current_spatial = spatial
        self.current_temporal = temporal
        if self.kind != "video":
            return
        layers = (spatial, temporal)
        if layers != self._reported_layers:
            self._reported_layers = layers
            if self._on_layers_changed is not None:
                self._on_layers_changed(self)

    # ---- the packet path -------------------------------------------------------------

    def _send_audio(
        self,
        stream: ProducerStream,
        packet: bytes,
        seq: int,
        ts: int,
        payload_start: int,
        info: vp8.Vp8Info | None,
        keyframe: bool,
        now: float,
    ) -> None:
        if not self._forwarding:
            return
        if self._current is not stream:
            if stream.ssrc is None:
                return
            self._splice(stream, seq, ts, now)
            self._current = stream
            self.current_spatial = 0
            self.current_temporal = 0
        self._forward(packet, seq, ts, payload_start, None, now)

    def _send_video(
        self,
        stream: ProducerStream,
        packet: bytes,
        seq: int,
        ts: int,
        payload_start: int,
        info: vp8.Vp8Info | None,
        keyframe: bool,
        now: float,
    ) -> None:
        if not self._forwarding:
            return
        if stream is not self._current:
            if stream.index != self.target_spatial or stream.ssrc is None:
                return
            if not keyframe:
                if now >= self._keyframe_retry_at:
                    self._keyframe_retry_at = now + _KEYFRAME_RETRY
                    self.producer.request_keyframe(stream.index, now, waiting=True)
                return
            self._splice(stream, seq, ts, now)
            if info is not None and self._vp8 is not None:
                self._vp8.switch_to(info)
            self._current = stream
            self.layer_switches += 1
            temporal = self.target_temporal
            if temporal is None or not self.temporal_filtering:
                temporal = self.temporal_layers - 1
            self._set_current(stream.index, temporal)
        if info is not None:
            tid = info.tid
            if tid is not None and self.temporal_filtering:
                current = self.current_temporal
                assert current is not None
                if info.start_of_frame:
                    target = self.target_temporal
                    if target is not None:
                        if target < current:
                            current = target
                            self._set_current(self.current_spatial, current)
                        elif current < tid <= target and info.layer_sync:
                            current = tid
                            self._set_current(self.current_spatial, current)
                if tid > current:
                    self._rewriter.drop(seq)
                    if self._vp8 is not None:
                        self._vp8.drop_picture(info)
                    self.dropped_temporal += 1
                    return
        self._forward(packet, seq, ts, payload_start, info, now)

    def _forward(
        self,
        packet: bytes,
        seq: int,
        ts: int,
        payload_start: int,
        info: vp8.Vp8Info | None,
        now: float,
    ) -> None:
        mapped = self._rewriter.rewrite(seq, ts)
        if mapped is None:
            return
        payload_type = self._payload_types.get(packet[1] & 0x7F)
        if payload_type is None:
            return
        built = self._template.build(packet)
        if built is None:
            return
        ids = None
        if info is not None:
            continuity = self._vp8
            if continuity is not None:
                ids = continuity.map(info)
                if ids is None:
                    return
        out_seq, out_ts = mapped
        size = len(packet) - payload_start
        out = self._finish(built, size, info, ids, payload_type, out_seq, out_ts)
        twcc_at = built[2]
        if twcc_at >= 0:
            estimator = self._estimator
            if estimator is not None:
                twcc_seq = estimator.on_sent(len(out), now)
                out[twcc_at] = twcc_seq >> 8
                out[twcc_at + 1] = twcc_seq & 0xFF
        history = self._history
        if history is not None:
            packed = NO_VP8_IDS if ids is None else pack_vp8_ids(ids[0], ids[1])
            history.store(out_seq, packet, out_ts, packed)
        self.packets_sent += 1
        self.octets_sent += len(out) - 12
        if self.first_sent_at is None:
            self.first_sent_at = now
        self.last_sent_at = now
        self.last_sent_ts = out_ts
        self._send(out)

    def _finish(
        self,
        built: tuple[bytearray, int, int],
        payload_size: int,
        info: vp8.Vp8Info | None,
        ids: tuple[int | None, int | None] | None,
        payload_type: int,
        seq: int,
        ts: int,
    ) -> bytearray:
        """Our packet from the shared template: MID, VP8 ids and the RTP header fields
        written (the transport-wide sequence number is left to the caller)."""
        template, mid_at, _ = built
        out = template[:]
        if mid_at >= 0:
            mid = self._mid
            out[mid_at : mid_at + len(mid)] = mid
        if info is not None and ids is not None:
            # The descriptor was parsed already (info): write the fields in place. The
            # PictureID follows the two first octets, TL0PICIDX the PictureID.
            picture_id, tl0picidx = ids
            at = len(out) - payload_size + 2
            bits = info.picture_id_bits
            if picture_id is not None:
                if bits == 15:
                    out[at] = 0x80 | (picture_id >> 8) & 0x7F
                    out[at + 1] = picture_id & 0xFF
                else:
                    out[at] = picture_id & 0x7F
            if tl0picidx is not None:
                out[at + (bits == 15) + (bits != 0)] = tl0picidx
        write_header(out, payload_type, seq, ts, self.ssrc)
        return out

    def _stamp(self, out: bytearray, now: float) -> None:
        """Write the next transport-wide sequence number into ``out`` (found by a walk)."""
        estimator = self._estimator
        twcc_id = self._twcc_id
        if estimator is None or twcc_id is None:
            return
        try:
            span = find_extension_span_untrusted(out, twcc_id)
        except BadPacket:
            span = None
        if span is None or span[1] - span[0] != 2:
            return
        seq = estimator.on_sent(len(out), now)
        out[span[0]] = seq >> 8
        out[span[0] + 1] = seq & 0xFF

    def _splice(self, stream: ProducerStream, seq: int, ts: int, now: float) -> None:
        """Make packet ``seq`` / ``ts`` of ``stream`` the next one out, at the right time."""
        assert stream.ssrc is not None
        self._rewriter.switch_to(stream.ssrc, seq, ts, self._ts_delta(stream, ts, now))

    def _ts_delta(self, stream: ProducerStream, ts: int, now: float) -> int:
        """How far after the last timestamp sent the first packet of ``stream`` goes.

        With Sender Reports from both streams: the new packet's capture time on the old
        stream's RTP clock, so that playback goes on at the right moment. Otherwise the
        wall-clock time since the last packet sent.
        """
        if self.last_sent_at is None:
            return 0
        clock = self.clock_rate
        old = self._current if self._current is not None else self._last_stream
        if (
            old is not None
            and old.last_sr_ntp
            and stream.last_sr_ntp
            and old.last_sr_arrival >= 0
            and stream.last_sr_arrival >= 0
        ):
            since_sr = ((ts - stream.last_sr_rtp + 0x80000000) & _TS_MASK) - 0x80000000
            capture = _ntp_seconds(stream.last_sr_ntp) + since_sr / clock
            on_old = old.last_sr_rtp + round((capture - _ntp_seconds(old.last_sr_ntp)) * clock)
            out = (on_old + self._rewriter.ts_offset) & _TS_MASK
            delta = ((out - self._rewriter.last_ts + 0x80000000) & _TS_MASK) - 0x80000000
            if 0 < delta < 10 * clock:
                return delta
            if -clock < delta <= 0:
                return 1
        return max(1, int((now - self.last_sent_at) * clock))

    @property
    def _last_stream(self) -> ProducerStream | None:
        ssrc = self._rewriter.ssrc
        if ssrc is None:
            return None
        for stream in self.producer.streams:
            if stream.ssrc == ssrc:
                return stream
        return None

    # ---- layers ----------------------------------------------------------------------

    def update_layers(self, now: float) -> None:
        """Recompute the target layers; ask for a keyframe when the target stream changed."""
        if self.kind != "video":
            return
        self._update_forwarding()
        cap = spatial_cap(self.network_level, self.spatial_layers)
        if cap is None:
            self.target_spatial = None
            self.target_temporal = None
            return
        spatial = min(self.preferred_spatial_layer, cap)
        temporal = self.preferred_temporal_layer
        if self.allocated_layers is not None:
            spatial = min(spatial, self.allocated_layers[0])
            temporal = min(temporal, self.allocated_layers[1])
        producer = self.producer
        if not producer.is_simulcast:
            spatial = 0
        else:
            active = producer.active_stream_indexes()
            started = producer.media_started_at
            if (
                active
                and spatial not in active
                and started is not None
                and now - started >= STARTUP_WAIT
            ):
                below = [i for i in active if i <= spatial]
                spatial = max(below) if below else min(active)
        if not self.temporal_filtering:
            temporal = self.temporal_layers - 1
        changed = spatial != self.target_spatial
        self.target_spatial = spatial
        self.target_temporal = temporal
        if (
            changed
            and self._forwarding
            and (self._current is None or self._current.index != spatial)
        ):
            self.producer.request_keyframe(spatial, now, waiting=True)
            self._keyframe_retry_at = now + _KEYFRAME_RETRY

    def layer_options_cap(self) -> tuple[int, int] | None:
        """The highest (spatial, temporal) the preference and the network allow, or None
        when video is paused for the network (for the bandwidth allocation)."""
        cap = spatial_cap(self.network_level, self.spatial_layers)
        if cap is None or not self._forwarding:
            return None
        return min(self.preferred_spatial_layer, cap), self.preferred_temporal_layer

    def set_network_level(self, level: int, now: float) -> None:
        if level == self.network_level:
            return
        self.network_level = level
        self.update_layers(now)

    # ---- RTCP from the subscriber ----------------------------------------------------

    def request_keyframe(self, now: float, ssrc: int | None = None) -> None:
        """The subscriber sent PLI/FIR for our stream (``ssrc``, the one it names)."""
        if self._current is not None:
            self.producer.request_keyframe(self._current.index, now)

    def retransmit(self, seqs: list[int], now: float) -> int:
        """Answer a NACK from what we sent; returns how many packets went out again."""
        sent = 0
        nacked = self.nacked
        if nacked is None:
            nacked = self.nacked = set()
        before = len(nacked)
        estimator = self._estimator
        for seq in seqs:
            nacked.add(seq)
            packet = self._rebuild(seq)
            if packet is None:
                continue
            if estimator is not None and not estimator.allow_retransmission(len(packet), now):
                continue
            self._send(self._rtx_copy(packet, now))
            sent += 1
        self.nacks_total += len(nacked) - before
        self.retransmitted += sent
        return sent

    def _rebuild(self, seq: int) -> bytearray | None:
        """Outgoing packet ``seq`` as it went out (but for its transport-wide sequence
        number), made again from the producer's packet; None when it is not kept."""
        history = self._history
        if history is None:
            return None
        entry = history.get(seq)
        if entry is None:
            return None
        original, ts, packed_ids = entry
        payload_type = self._payload_types.get(original[1] & 0x7F)
        built = self._template.build_uncached(original)
        if payload_type is None or built is None:
            return None
        info = None
        try:
            _, start, end = rtp_layout_untrusted(original)
            if packed_ids != NO_VP8_IDS:
                info = vp8.summarize_untrusted(memoryview(original)[start:end])
        except BadPacket:
            return None
        ids = unpack_vp8_ids(packed_ids)
        return self._finish(built, len(original) - start, info, ids, payload_type, seq, ts)

    def _rtx_copy(self, packet: bytearray, now: float) -> bytearray:
        if self.rtx_payload_type is not None and self.rtx_ssrc is not None:
            out = bytearray(
                rtx_wrap(
                    packet,
                    rtx_ssrc=self.rtx_ssrc,
                    rtx_payload_type=self.rtx_payload_type,
                    rtx_sequence_number=self._rtx_seq,
                )
            )
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        else:
            out = packet
        self._stamp(out, now)
        return out

    def probe_packet(self, now: float) -> bytearray | None:
        """An RTX copy of a recent packet, to probe the path's bandwidth (None: nothing to
        send, or no RTX)."""
        if self.rtx_ssrc is None or self.packets_sent == 0 or self.last_sent_at is None:
            return None
        last = self._rewriter.next_seq
        if last is None:
            return None
        self._probe_cursor = (self._probe_cursor + 1) % 32
        packet = self._rebuild((last - 1 - self._probe_cursor) & 0xFFFF)
        if packet is None:
            packet = self._rebuild((last - 1) & 0xFFFF)
            if packet is None:
                return None
        return self._rtx_copy(packet, now)

    def padding_packet(self, now: float, size: int = 255) -> bytearray | None:
        """A padding-only packet of ``size`` bytes of padding (1-255) on the RTX stream,
        numbered for transport-cc, to probe the path while nothing else is sent: the
        receiver counts it in its feedback and drops it (an RTX packet without a payload
        retransmits nothing). ``None`` without RTX or before anything was sent."""
        rtx_ssrc = self.rtx_ssrc
        rtx_payload_type = self.rtx_payload_type
        last = self._rewriter.next_seq
        if rtx_ssrc is None or rtx_payload_type is None or last is None:
            return None
        packet = self._rebuild((last - 1) & 0xFFFF)
        if packet is None:
            return None
        try:
            _, start, _ = rtp_layout_untrusted(packet)
        except BadPacket:
            return None
        # Our last packet's header (its extensions: MID, the transport-wide number) with
        # P set, the marker cleared, and the RTX payload type, sequence number and SSRC.
        out = packet[:start]
        out[0] |= 0x20
        out[1] = rtx_payload_type & 0x7F
        out[2] = self._rtx_seq >> 8
        out[3] = self._rtx_seq & 0xFF
        out[8:12] = rtx_ssrc.to_bytes(4, "big")
        out += padding_bytes(size)
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        self._stamp(out, now)
        return out

    def receive_report(
        self,
        fraction_lost: int,
        cumulative_lost: int,
        rtt: float | None,
        highest_seq: int | None = None,
    ) -> None:
        self.fraction_lost = fraction_lost
        self.cumulative_lost = cumulative_lost
        self.reports += 1
        if highest_seq is not None:
            self.highest_seq = highest_seq
        if rtt is not None:
            self.rtt = rtt

    def loss_sample(self) -> tuple[int, int, int, int]:
        """``(expected, lost, sent, nacked)`` since the previous call: packets the receiver
        reports expected and lost (from its RRs' extended highest sequence number and
        cumulative loss), packets sent, and distinct sequence numbers NACKed."""
        highest = self.highest_seq
        expected = lost = 0
        if highest is not None:
            if self._sample_highest is not None:
                expected = max(0, highest - self._sample_highest)
                lost = max(0, min(expected, self.cumulative_lost - self._sample_lost))
            self._sample_highest = highest
            self._sample_lost = self.cumulative_lost
        sent = self.packets_sent - self._sample_sent
        self._sample_sent = self.packets_sent
        nacked = 0 if self.nacked is None else len(self.nacked)
        self.nacked = None
        return expected, lost, sent, nacked

    # ---- control ---------------------------------------------------------------------

    def close(self, reason: str = "closed") -> None:
        """Close the consumer: nothing more goes out, and its owner forgets it
        (``on_closed(consumer, reason)``). Idempotent. ``reason``: ``"closed"`` (asked
        for), ``"producer_closed"``, ``"transport_closed"``, or ``"internal_error"`` (a bug
        in its packet path, see :meth:`Producer.receive_rtp
        <trio_sfu.engine.producer.Producer.receive_rtp>`)."""
        if self.closed:
            return
        self.closed = True
        if self._on_closed is not None:
            self._on_closed(self, reason)

    def pause(self) -> None:
        self.paused = True
        self._update_forwarding()

    def resume(self, now: float) -> None:
        if not self.paused:
            return
        self.paused = False
        self._update_forwarding()
        self._request_sync(now)

    def set_producer_paused(self, paused: bool, now: float) -> None:
        self.producer_paused = paused
        self._update_forwarding()
        if not paused:
            self._request_sync(now)

    def start(self, now: float) -> None:
        """A consumer created unpaused: ask for what it needs to start (a keyframe)."""
        self._request_sync(now)

    def _request_sync(self, now: float) -> None:
        self.target_spatial = None  # recomputed: a keyframe request goes out
        self.update_layers(now)

    def on_streams_changed(self, now: float) -> None:
        """A producer stream started or stopped: the target may change."""
        self.update_layers(now)

    def set_preferred_layers(
        self, spatial: int, temporal: int | None, now: float
    ) -> tuple[int, int]:
        self.preferred_spatial_layer = max(0, min(spatial, self.spatial_layers - 1))
        if temporal is not None:
            self.preferred_temporal_layer = max(0, min(temporal, self.temporal_layers - 1))
        else:
            self.preferred_temporal_layer = self.temporal_layers - 1
        self.update_layers(now)
        return self.preferred_spatial_layer, self.preferred_temporal_layer

    def sender_report_timestamp(self, now: float) -> int:
        """The RTP timestamp that corresponds to ``now`` on our outgoing stream: from the
        forwarded stream's last Sender Report where there is one (so that audio and video
        of a publisher stay in sync), else from the last packet sent."""
        stream = self._current if self._current is not None else self._last_stream
        if stream is not None and stream.last_sr_arrival >= 0 and stream.last_sr_ntp:
            source = stream.last_sr_rtp + round((now - stream.last_sr_arrival) * self.clock_rate)
            return (source + self._rewriter.ts_offset) & _TS_MASK
        if self.last_sent_at is None:
            return 0
        return (self.last_sent_ts + int((now - self.last_sent_at) * self.clock_rate)) & _TS_MASK

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
            "currentLayer": self.current_spatial,
            "currentLayers": _layers(self.current_spatial, self.current_temporal),
            "targetLayers": _layers(self.target_spatial, self.target_temporal),
            "preferredLayers": _layers(self.preferred_spatial_layer, self.preferred_temporal_layer),
            "networkLevel": self.network_level,
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


def _layers(spatial: int | None, temporal: int | None) -> dict[str, int] | None:
    if spatial is None or temporal is None:
        return None
    return {"spatialLayer": spatial, "temporalLayer": temporal}
