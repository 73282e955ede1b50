"""Producer: one published track (audio, or video with one to three simulcast streams).

A producer receives decrypted RTP from its send transport (the router's RTP listener finds
it by SSRC, or by the MID/RID header extensions until the SSRC is known), keeps receive
statistics per stream, and hands each packet to its consumers. It never blocks: consumers
queue into their transports' bounded egress channels.

Per packet it parses what its consumers need once for all of them: for video the payload
offset, whether a keyframe starts, and the VP8 payload descriptor (PictureID, TL0PICIDX,
temporal layer, layer sync); for audio the ssrc-audio-level extension when negotiated.

Upstream repair: every media packet feeds the stream's
:class:`~trio_sfu.rtp.nack.NackGenerator` (when the publisher negotiated ``nack``); the
router collects :meth:`Producer.nack_feedback` a few times per RTT and sends the NACKs.
RTX packets from the publisher are unwrapped (:meth:`Producer.receive_rtx`) and forwarded
like media when they fill a gap; duplicates are dropped.

Keyframe requests upstream are PLI (or FIR when only ``ccm fir`` was negotiated), one
outstanding per stream: a new request goes out when the previous one was answered by a
keyframe or is ``KEYFRAME_REQUEST_INTERVAL`` (1 s) old, or ``KEYFRAME_RETRY_WAITING``
(300 ms) old when a consumer waits for that keyframe to start or to switch streams.

Why two intervals. A publisher may ignore a request: libwebrtc (Chromium, Firefox) drops a
keyframe request that comes within 300 ms of the last one it acted on, across all the
simulcast streams of a track unless it makes per-layer keyframes (Firefox ESR 153 does
not). So a subscriber that resumes (a PLI for r2) and asks for r0 100 ms later gets its r0
PLI dropped; while it waits it keeps forwarding r2, and with a 1 s retry it waited over a
second for r0 (1.1-1.3 s in the Firefox browser test). 300 ms is the shortest retry that
such a publisher never drops because of our own previous request, and close to what
receivers do themselves (a libwebrtc receiver without a decodable keyframe repeats its
request every 200 ms; Jitsi's bridge paces requests per stream at RTT + 10 ms, at most
100 ms; mediasoup retries a pending request after 1 s).
Requests nobody waits on (a subscriber's PLI while it decodes, a NACK list that overflowed)
keep the 1 s interval: a keyframe costs several times a delta frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, final

from trio_sfu.errors import BadPacket
from trio_sfu.ortc.negotiation import RtpMapping
from trio_sfu.ortc.types import MediaKind, RtpParameters
from trio_sfu.rtcp import Fir, GenericNack, Pli, build_rtcp
from trio_sfu.rtp import h264, vp8
from trio_sfu.rtp.egress import HeaderTemplate
from trio_sfu.rtp.extensions import SSRC_AUDIO_LEVEL_URI, TRANSPORT_WIDE_CC_URI
from trio_sfu.rtp.nack import NackGenerator
from trio_sfu.rtp.packet import find_extension_untrusted, rtp_layout_untrusted
from trio_sfu.rtp.rtx import rtx_unwrap_untrusted
from trio_sfu.rtp.stats import ReceiveStats

logger = logging.getLogger(__name__)

#: At most one keyframe request (PLI/FIR) upstream per stream per this many seconds,
#: unless a keyframe answered the previous one.
KEYFRAME_REQUEST_INTERVAL: Final = 1.0
#: ... or per this many while a consumer waits for the keyframe (to start, or to switch
#: simulcast streams): above libwebrtc's 300 ms sender-side throttle (see the module doc).
KEYFRAME_RETRY_WAITING: Final = 0.3
#: The SSRC the router uses as the sender of its RTCP toward publishers.
ROUTER_RTCP_SSRC: Final = 0x5F5F5F5F
#: A stream that sent nothing for this long is inactive (the publisher dropped the layer).
ACTIVE_WINDOW: Final = 1.0
#: When media starts, consumers wait this long for the stream they want before taking a
#: lower one that happens to come first (publishers start all their streams at once).
STARTUP_WAIT: Final = 0.5
#: Distinct consumer extension layouts kept per producer (a handful in practice).
_MAX_TEMPLATES: Final = 64
#: Temporal layers counted separately (VP8's TID is two bits).
MAX_TEMPORAL_LAYERS: Final = 4


@final
class ProducerStream:
    """One RTP stream of a producer: a simulcast layer, or the single stream."""

    __slots__ = (
        "_rate_at",
        "_rate_octets",
        "active",
        "active_at",
        "bitrates",
        "clock_rate",
        "fir_seq",
        "index",
        "keyframe_requested_at",
        "keyframe_requests",
        "last_keyframe_at",
        "last_sr_arrival",
        "last_sr_ntp",
        "last_sr_rtp",
        "mapped_ssrc",
        "nack",
        "octets",
        "packets",
        "retransmitted",
        "rid",
        "rtx_ssrc",
        "ssrc",
        "stats",
        "tid_octets",
    )

    def __init__(
        self,
        *,
        index: int,
        rid: str | None,
        ssrc: int | None,
        mapped_ssrc: int,
        clock_rate: int,
        nack: NackGenerator | None = None,
    ) -> None:
        self.index = index
        self.rid = rid
        self.ssrc = ssrc
        self.rtx_ssrc: int | None = None
        self.mapped_ssrc = mapped_ssrc
        self.clock_rate = clock_rate
        self.stats = ReceiveStats()
        self.nack = nack
        self.packets = 0
        self.octets = 0
        self.retransmitted = 0
        self.active = False
        self.active_at = -1e9
        self.keyframe_requested_at = -1e9
        #: PLI/FIR sent to the publisher for this stream.
        self.keyframe_requests = 0
        self.last_keyframe_at = -1e9
        self.fir_seq = 0
        self.last_sr_ntp = 0
        self.last_sr_rtp = 0
        self.last_sr_arrival = -1.0
        #: Bytes received per temporal layer (TID); everything without a TID counts as 0.
        self.tid_octets = [0] * MAX_TEMPORAL_LAYERS
        #: Bits per second per temporal layer, smoothed (see :meth:`Producer.update_rates`).
        self.bitrates = [0.0] * MAX_TEMPORAL_LAYERS
        self._rate_octets = [0] * MAX_TEMPORAL_LAYERS
        self._rate_at: float | None = None

    @property
    def bitrate(self) -> float:
        return sum(self.bitrates)

    def __repr__(self) -> str:
        return f"<ProducerStream {self.index} rid={self.rid} ssrc={self.ssrc}>"


#: One packet for a consumer: ``(stream, packet, seq, ts, payload_start, vp8_info, keyframe,
#: now)``, parsed once by the producer for all of its consumers.
SendRtp = Callable[[ProducerStream, bytes, int, int, int, "vp8.Vp8Info | None", bool, float], None]


class ProducerSink(Protocol):
    """What a producer hands its packets and its news to: a consumer
    (:class:`~trio_sfu.engine.consumer.Consumer`, which imports this module; this one
    knows consumers only through this protocol)."""

    @property
    def id(self) -> str: ...

    @property
    def transport_id(self) -> str: ...

    @property
    def active(self) -> bool:
        """Neither paused nor closed (its demand counts)."""
        ...

    @property
    def send_rtp(self) -> SendRtp:
        """The packet path: called for every packet of the producer, never blocks."""
        ...

    def set_producer_paused(self, paused: bool, now: float) -> None: ...

    def on_streams_changed(self, now: float) -> None:
        """A stream of the producer started or stopped."""
        ...

    def layer_options_cap(self) -> tuple[int, int] | None:
        """The highest (spatial, temporal) layers it wants, None while it wants none."""
        ...

    @property
    def current_spatial(self) -> int | None:
        """The spatial layer it forwards now (None: none yet)."""
        ...

    def close(self, reason: str = "closed") -> None: ...


def _has_feedback(rtp_parameters: RtpParameters, type_: str, parameter: str = "") -> bool:
    return any(
        fb.type == type_ and fb.parameter == parameter
        for codec in rtp_parameters.codecs
        for fb in codec.rtcp_feedback
    )


@final
class Producer:
    """A published track. Created by the router, which installs ``on_closed`` to forget it;
    :meth:`close` comes from a request or from its transport closing."""

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
        on_audio_level: Callable[[str, int], None] | None = None,
        on_streams_changed: Callable[[Producer, float], None] | None = None,
        on_closed: Callable[[Producer, str], None] | None = None,
    ) -> None:
        self.id = producer_id
        self.transport_id = transport_id
        self.kind = kind
        self.rtp_parameters = rtp_parameters
        self.consumable_rtp_parameters = consumable_rtp_parameters
        self.mapping = mapping
        self.paused = paused
        self.closed = False
        self.consumers: set[ProducerSink] = set()
        self._send_rtcp = send_rtcp
        self._on_audio_level = on_audio_level
        self._on_streams_changed = on_streams_changed
        self._on_closed = on_closed
        media = [c for c in rtp_parameters.codecs if not c.mime_type.lower().endswith("/rtx")]
        self.mime_type = media[0].mime_type.lower()
        clock_rate = media[0].clock_rate
        self.nack_enabled = kind == "video" and _has_feedback(rtp_parameters, "nack")
        self._use_pli = _has_feedback(rtp_parameters, "nack", "pli")
        self._use_fir = _has_feedback(rtp_parameters, "ccm", "fir") and not self._use_pli
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
                nack=NackGenerator() if self.nack_enabled else None,
            )
            if encoding.rtx is not None:
                stream.rtx_ssrc = encoding.rtx.ssrc
            self.streams.append(stream)
        self.streams_by_rid = {s.rid: s for s in self.streams if s.rid is not None}
        #: producer payload type -> router payload type
        self.payload_types = dict(mapping.codecs)
        self._payload_types_to: dict[int, dict[int, int]] = {}
        self.is_simulcast = len(self.streams) > 1
        #: header extension URI -> the publisher's id for it
        self.extension_ids = {uri: ext_id for ext_id, uri in mapping.header_extensions.items()}
        self.rtx_payload_types = frozenset(
            c.payload_type for c in rtp_parameters.codecs if c.mime_type.lower().endswith("/rtx")
        )
        #: RTX payload type -> the media payload type it repairs (``apt``)
        self._rtx_apt: dict[int, int] = {}
        for codec in rtp_parameters.codecs:
            apt = codec.parameters.get("apt")
            if codec.payload_type in self.rtx_payload_types and isinstance(apt, int):
                self._rtx_apt[codec.payload_type] = apt
        self._default_media_pt = media[0].payload_type
        self._is_vp8 = self.mime_type == "video/vp8"
        self._is_h264 = self.mime_type == "video/h264"
        self._audio_level_id = (
            self.extension_ids.get(SSRC_AUDIO_LEVEL_URI)
            if kind == "audio" and on_audio_level is not None
            else None
        )
        #: The publisher's id of the transport-wide sequence number, when it negotiated
        #: transport-cc (the router sends it feedback).
        self.transport_cc_id = (
            self.extension_ids.get(TRANSPORT_WIDE_CC_URI)
            if _has_feedback(rtp_parameters, "transport-cc")
            else None
        )
        self.remb_enabled = _has_feedback(rtp_parameters, "goog-remb")
        self.dropped_bad = 0
        #: When the first packet arrived (None: not yet).
        self.media_started_at: float | None = None
        self._templates: dict[tuple[object, ...], HeaderTemplate] = {}

    # ---- packets ---------------------------------------------------------------------

    def receive_rtp(
        self,
        stream: ProducerStream,
        packet: bytes,
        now: float,
        retransmitted: bool = False,
        *,
        arrival: float | None = None,
    ) -> None:
        """A media packet of ``stream`` (RTX already unwrapped). Never blocks, never raises
        BadPacket: a packet its consumers cannot use is counted and dropped. A consumer
        that raises is closed (see :meth:`_fan_out_failed`), the others go on.

        ``arrival`` is when its datagram reached the host (for the jitter; ``now`` if not
        given), ``now`` when it is forwarded."""
        size = len(packet)
        stream.packets += 1
        stream.octets += size
        if not stream.active:
            stream.active = True
            stream.active_at = now
            if self.media_started_at is None:
                self.media_started_at = now
            if self._on_streams_changed is not None:
                self._on_streams_changed(self, now)
        stream.active_at = now
        seq = (packet[2] << 8) | packet[3]
        ts = int.from_bytes(packet[4:8])
        if retransmitted:
            # Counted as received (it was repaired), left out of the jitter estimate.
            stream.stats.received += 1
            stream.retransmitted += 1
        else:
            stream.stats.update(seq, ts, now if arrival is None else arrival, stream.clock_rate)
            nack = stream.nack
            if nack is not None and nack.on_packet(seq, now):
                self.request_keyframe(stream.index, now)
        if self.kind == "audio":
            stream.tid_octets[0] += size
            if self._audio_level_id is not None and self._on_audio_level is not None:
                try:
                    value = find_extension_untrusted(packet, self._audio_level_id)
                except BadPacket:
                    value = None
                if value:
                    self._on_audio_level(self.id, value[0] & 0x7F)
            if self.paused:
                return
            try:
                for consumer in self.consumers:
                    consumer.send_rtp(stream, packet, seq, ts, 0, None, False, now)
            except Exception:
                self._fan_out_failed(consumer, stream, packet, seq, ts, 0, None, False, now)
            return
        try:
            _, start, end = rtp_layout_untrusted(packet)
            info: vp8.Vp8Info | None = None
            if self._is_vp8:
                info = vp8.summarize_untrusted(memoryview(packet)[start:end])
                keyframe = info.keyframe
                tid = info.tid or 0
            elif self._is_h264:
                keyframe = h264.is_keyframe(memoryview(packet)[start:end])
                tid = 0
            else:
                keyframe = False
                tid = 0
        except BadPacket:
            self.dropped_bad += 1
            return
        stream.tid_octets[tid] += size
        if keyframe:
            stream.last_keyframe_at = now
            stream.keyframe_requested_at = -1e9  # answered: a new request may go out
        if self.paused:
            return
        try:
            for consumer in self.consumers:
                consumer.send_rtp(stream, packet, seq, ts, start, info, keyframe, now)
        except Exception:
            self._fan_out_failed(consumer, stream, packet, seq, ts, start, info, keyframe, now)

    def _fan_out_failed(
        self,
        failed: ProducerSink,
        stream: ProducerStream,
        packet: bytes,
        seq: int,
        ts: int,
        start: int,
        info: vp8.Vp8Info | None,
        keyframe: bool,
        now: float,
    ) -> None:
        """``failed`` raised while forwarding a packet: a bug in that consumer. It closes
        (``internal_error``, logged once: it gets no packet any more); the consumers after
        it in this round still get the packet, and the publisher's transport goes on."""
        order = list(self.consumers)
        rest = order[order.index(failed) + 1 :] if failed in order else []
        self._close_failed(failed)
        for consumer in rest:
            try:
                consumer.send_rtp(stream, packet, seq, ts, start, info, keyframe, now)
            except Exception:
                self._close_failed(consumer)

    def _close_failed(self, consumer: ProducerSink) -> None:
        logger.exception("consumer %s of producer %s failed: closing it", consumer.id, self.id)
        consumer.close("internal_error")

    def payload_types_to(self, router_pt: int) -> Mapping[int, int]:
        """The part of :attr:`payload_types` that maps to ``router_pt`` (the codec a consumer
        negotiated), shared by the consumers of that codec: not to be modified."""
        found = self._payload_types_to.get(router_pt)
        if found is None:
            found = {pt: to for pt, to in self.payload_types.items() if to == router_pt}
            self._payload_types_to[router_pt] = found
        return found

    def header_template(
        self, id_map: dict[int, int], mid_id: int | None, mid_size: int, twcc_id: int | None
    ) -> HeaderTemplate:
        """The header-extension rewrite shared by the consumers with these ids and value
        sizes (see :class:`~trio_sfu.rtp.egress.HeaderTemplate`)."""
        key = (tuple(sorted(id_map.items())), mid_id, mid_size, twcc_id)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= _MAX_TEMPLATES:
                self._templates.clear()  # their consumers keep theirs
            template = self._templates[key] = HeaderTemplate(id_map, mid_id, mid_size, twcc_id)
        return template

    def receive_rtx(self, stream: ProducerStream, packet: bytes, now: float) -> None:
        """An RTX packet of ``stream`` from the publisher: forward the packet it repairs
        if that was missing. Padding-only probes and duplicates are dropped."""
        apt = self._rtx_apt.get(packet[1] & 0x7F, self._default_media_pt)
        if stream.ssrc is None:
            return
        try:
            original = rtx_unwrap_untrusted(packet, payload_type=apt, ssrc=stream.ssrc)
        except BadPacket:
            self.dropped_bad += 1
            return
        if original is None:
            return
        nack = stream.nack
        if nack is None:
            return
        before = nack.recovered
        nack.on_packet((original[2] << 8) | original[3], now, retransmitted=True)
        if nack.recovered == before:
            return  # not missing (any more): a duplicate
        self.receive_rtp(stream, original, now, retransmitted=True)

    def receive_sender_report(self, stream: ProducerStream, ntp: int, rtp: int, now: float) -> None:
        stream.last_sr_ntp = ntp
        stream.last_sr_rtp = rtp
        stream.last_sr_arrival = now

    def request_keyframe(self, stream_index: int, now: float, *, waiting: bool = False) -> bool:
        """Ask the publisher for a keyframe on one stream (throttled); True if one went out.

        ``waiting``: a consumer waits for this keyframe to start or to switch streams, so an
        unanswered request is repeated after ``KEYFRAME_RETRY_WAITING`` instead of
        ``KEYFRAME_REQUEST_INTERVAL``."""
        if self.kind != "video" or stream_index >= len(self.streams):
            return False
        stream = self.streams[stream_index]
        interval = KEYFRAME_RETRY_WAITING if waiting else KEYFRAME_REQUEST_INTERVAL
        if stream.ssrc is None or now - stream.keyframe_requested_at < interval:
            return False
        stream.keyframe_requested_at = now
        stream.keyframe_requests += 1
        if self._use_fir:
            stream.fir_seq = (stream.fir_seq + 1) & 0xFF
            packet = build_rtcp([Fir(ROUTER_RTCP_SSRC, ((stream.ssrc, stream.fir_seq),))])
        else:
            packet = build_rtcp([Pli(sender_ssrc=ROUTER_RTCP_SSRC, media_ssrc=stream.ssrc)])
        self._send_rtcp(packet)
        return True

    def nack_feedback(self, now: float) -> list[GenericNack]:
        """Generic NACKs for what is missing from the publisher now."""
        out: list[GenericNack] = []
        for stream in self.streams:
            nack = stream.nack
            if nack is None or stream.ssrc is None or not len(nack):
                continue
            seqs = nack.get_nacks(now)
            if seqs:
                out.append(GenericNack.from_seqs(ROUTER_RTCP_SSRC, stream.ssrc, seqs))
        return out

    # ---- rates and activity ----------------------------------------------------------

    def update_rates(self, now: float) -> bool:
        """Refresh each stream's bitrate per temporal layer; mark streams that went quiet
        inactive. Returns True when a stream's activity changed."""
        changed = False
        for stream in self.streams:
            last = stream._rate_at
            stream._rate_at = now
            octets = stream.tid_octets
            previous = stream._rate_octets
            if last is not None and now - last > 0:
                span = now - last
                rates = stream.bitrates
                weight = min(1.0, span / 0.5)
                fresh = stream.bitrate == 0.0
                for tid in range(MAX_TEMPORAL_LAYERS):
                    rate = (octets[tid] - previous[tid]) * 8 / span
                    rates[tid] = rate if fresh else rates[tid] + (rate - rates[tid]) * weight
            stream._rate_octets = list(octets)
            if stream.active and now - stream.active_at > ACTIVE_WINDOW:
                stream.active = False
                stream.bitrates = [0.0] * MAX_TEMPORAL_LAYERS
                changed = True
        return changed

    def active_stream_indexes(self, now: float | None = None) -> list[int]:
        return [s.index for s in self.streams if s.active]

    def layer_rates(self) -> list[list[float] | None]:
        """Per stream: its bitrate per temporal layer, or None when inactive."""
        return [list(s.bitrates) if s.active else None for s in self.streams]

    def bitrate(self) -> float:
        return sum(s.bitrate for s in self.streams if s.active)

    # ---- life cycle ------------------------------------------------------------------

    def close(self, reason: str = "closed") -> None:
        """Close the producer: its consumers close (``producer_closed``), then its owner
        forgets it (``on_closed(producer, reason)``). Idempotent."""
        if self.closed:
            return
        self.closed = True
        for consumer in list(self.consumers):
            consumer.close("producer_closed")
        if self._on_closed is not None:
            self._on_closed(self, reason)

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
