"""Synthetic media: RTP packets shaped like a browser's, without an encoder.

Used by the tests, bots and the load generator to publish through a real transport:
valid RTP headers, the producer's own header extension ids (mid, rid, abs-send-time),
Opus-sized audio and VP8 simulcast with real payload descriptors (PictureID, TL0PICIDX,
TID, keyframes that our VP8 parser and a browser's depacketizer recognise).

:class:`SyntheticReceiver` is the other end: what a subscriber sends back to the SFU
(receiver reports with LSR/DLSR, generic NACKs, transport-cc feedback) computed from the
packets it gets, with RTX repair unwrapped.

Nothing here reads a clock: the caller passes ``now`` (seconds) where it matters.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable
from typing import final

from trio_sfu.engine.bandwidth import TwccRecorder
from trio_sfu.errors import BadPacket
from trio_sfu.ortc.negotiation import is_rtx
from trio_sfu.ortc.types import (
    RtcpFeedback,
    RtcpParameters,
    RtpCodecParameters,
    RtpEncodingParameters,
    RtpHeaderExtensionParameters,
    RtpParameters,
)
from trio_sfu.rtcp import (
    GenericNack,
    ReceiverReport,
    RtcpPacket,
    SenderReport,
    build_rtcp,
    ntp_to_compact,
    parse_rtcp_untrusted,
)
from trio_sfu.rtp.extensions import (
    ABS_SEND_TIME_URI,
    MID_URI,
    RID_URI,
    SSRC_AUDIO_LEVEL_URI,
    TRANSPORT_WIDE_CC_URI,
    encode_abs_send_time,
    encode_transport_wide_seq,
)
from trio_sfu.rtp.nack import NackGenerator
from trio_sfu.rtp.packet import build_extensions, find_extension_untrusted
from trio_sfu.rtp.rtx import rtx_unwrap_untrusted, rtx_wrap
from trio_sfu.rtp.stats import ReceiveStats

_FIXED = struct.Struct("!BBHII")
#: An interframe's first payload byte: P=1.
_VP8_DELTA_HEADER = bytes([0x11, 0x02, 0x00])
#: The temporal layer of frame ``n`` in a three-layer (L1T3) pattern, and its Y bit.
L1T3_PATTERN: tuple[tuple[int, bool], ...] = ((0, False), (2, True), (1, True), (2, False))


def vp8_key_header(width: int = 1280, height: int = 720) -> bytes:
    """A VP8 keyframe's first payload bytes (RFC 6386 section 9.1): the frame tag (P=0,
    version 0, show_frame), the start code 9d 01 2a, then width and height (14 bits each,
    little-endian, scale 0)."""
    return bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]) + struct.pack("<HH", width, height)


_VP8_KEY_HEADER = vp8_key_header()


@final
class TransportWideCounter:
    """The transport-wide sequence numbers of one transport (shared by its streams)."""

    __slots__ = ("value",)

    def __init__(self, start: int = 0) -> None:
        self.value = start & 0xFFFF

    def next(self) -> int:
        value = self.value
        self.value = (value + 1) & 0xFFFF
        return value


@final
class SyntheticStream:
    """One outgoing RTP stream: its SSRC, sequence numbers, timestamps and extensions.

    Timestamps either advance by a frame per packet (the default), or follow a capture
    clock: pass ``capture_time`` (seconds) and the timestamp is ``ts_base + capture_time *
    clock_rate``, the mapping :meth:`sender_report` announces, as a real sender's does.
    """

    def __init__(
        self,
        *,
        ssrc: int,
        payload_type: int,
        clock_rate: int,
        extensions: dict[int, bytes] | None = None,
        abs_send_time_id: int | None = None,
        audio_level_id: int | None = None,
        transport_cc: tuple[int, TransportWideCounter] | None = None,
        rtx: tuple[int, int] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        rng = rng or random.Random()
        self.ssrc = ssrc
        #: (RTX SSRC, RTX payload type) for :meth:`retransmit`.
        self.rtx = rtx
        self._rtx_seq = rng.randrange(0, 0x10000)
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.seq = rng.randrange(0, 0x10000)
        self.timestamp = rng.randrange(0, 0x1_0000_0000)
        #: The RTP timestamp of capture time 0.
        self.ts_base = self.timestamp
        self.extensions = dict(extensions or {})
        self.abs_send_time_id = abs_send_time_id
        self.audio_level_id = audio_level_id
        #: (extension id, the transport's counter): stamp transport-wide sequence numbers.
        self.transport_cc = transport_cc
        self.picture_id = rng.randrange(0, 0x8000)
        self.tl0picidx = rng.randrange(0, 0x100)
        self.packets_sent = 0
        self.octets_sent = 0
        #: Frames made by :meth:`vp8_frame` (for the temporal pattern).
        self.frames = 0
        #: Packets made, by sequence number, for answering NACKs (the last 512).
        self.history: dict[int, bytes] = {}

    def packet(
        self,
        payload: bytes,
        *,
        marker: bool = True,
        now: float | None = None,
        extra: dict[int, bytes] | None = None,
    ) -> bytes:
        """The next packet of this stream carrying ``payload``."""
        elements = dict(self.extensions)
        if self.abs_send_time_id is not None and now is not None:
            elements[self.abs_send_time_id] = encode_abs_send_time(now)
        if extra:
            elements.update(extra)
        if self.transport_cc is not None:
            ext_id, counter = self.transport_cc
            elements[ext_id] = encode_transport_wide_seq(counter.next())
        first = 0x80
        block = b""
        if elements:
            profile, ext = build_extensions(elements)
            block = struct.pack("!HH", profile, len(ext) // 4) + ext
            first |= 0x10
        header = _FIXED.pack(
            first,
            (0x80 if marker else 0) | self.payload_type,
            self.seq,
            self.timestamp,
            self.ssrc,
        )
        packet = header + block + payload
        self.history[self.seq] = packet
        self.history.pop((self.seq - 512) & 0xFFFF, None)
        self.seq = (self.seq + 1) & 0xFFFF
        self.packets_sent += 1
        self.octets_sent += len(payload)
        return packet

    def retransmit(self, seq: int) -> bytes | None:
        """Packet ``seq`` again: as RTX if the stream has an RTX SSRC, else as it was."""
        packet = self.history.get(seq & 0xFFFF)
        if packet is None:
            return None
        if self.rtx is None:
            return packet
        rtx_ssrc, rtx_pt = self.rtx
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        return rtx_wrap(
            packet, rtx_ssrc=rtx_ssrc, rtx_payload_type=rtx_pt, rtx_sequence_number=self._rtx_seq
        )

    def advance(self, seconds: float) -> None:
        """Move the RTP clock on (one audio frame, one video frame)."""
        self.timestamp = (self.timestamp + round(seconds * self.clock_rate)) & 0xFFFFFFFF

    def capture_at(self, capture_time: float) -> None:
        """Stamp the next packets with the RTP time of ``capture_time`` (seconds)."""
        self.timestamp = (self.ts_base + round(capture_time * self.clock_rate)) & 0xFFFFFFFF

    def sender_report(self, ntp: int, capture_time: float) -> SenderReport:
        """A Sender Report saying that NTP time ``ntp`` is RTP time ``capture_time``."""
        return SenderReport(
            ssrc=self.ssrc,
            ntp_timestamp=ntp,
            rtp_timestamp=(self.ts_base + round(capture_time * self.clock_rate)) & 0xFFFFFFFF,
            packet_count=self.packets_sent & 0xFFFFFFFF,
            octet_count=self.octets_sent & 0xFFFFFFFF,
        )

    def opus_frame(
        self,
        *,
        size: int = 100,
        now: float | None = None,
        capture_time: float | None = None,
        level: int | None = None,
    ) -> bytes:
        """One 20 ms Opus packet; ``level`` (0-127, -dBov) goes in the audio-level extension
        if the stream has one."""
        if capture_time is not None:
            self.capture_at(capture_time)
        extra = None
        if level is not None and self.audio_level_id is not None:
            extra = {self.audio_level_id: bytes([0x80 | (level & 0x7F)])}
        packet = self.packet(b"\xfc" + bytes(size - 1), marker=False, now=now, extra=extra)
        self.advance(0.02)
        return packet

    def vp8_frame(
        self,
        *,
        keyframe: bool,
        size: int = 1100,
        packets: int = 1,
        tid: int | None = 0,
        layer_sync: bool = False,
        now: float | None = None,
        fps: float = 30.0,
        capture_time: float | None = None,
        width: int = 1280,
        height: int = 720,
        tag: bytes = b"",
    ) -> list[bytes]:
        """The packets of one VP8 frame, with a payload descriptor in each.

        ``tid=None`` follows :data:`L1T3_PATTERN` (keyframes are always TID 0). ``tag``
        goes right after the VP8 header of the first packet (a test's marker).
        """
        if tid is None:
            tid, layer_sync = L1T3_PATTERN[self.frames % 4]
            if keyframe:
                tid, layer_sync = 0, False
        self.frames += 1
        if capture_time is not None:
            self.capture_at(capture_time)
        if tid == 0:
            self.tl0picidx = (self.tl0picidx + 1) & 0xFF
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        out = []
        for index in range(packets):
            start = index == 0
            descriptor = bytes(
                [
                    0x80 | (0x10 if start else 0),  # X, S, PID 0
                    0xE0,  # I, L, T present
                    0x80 | (self.picture_id >> 8),  # M: 15-bit PictureID
                    self.picture_id & 0xFF,
                    self.tl0picidx,
                    (tid << 6) | (0x20 if layer_sync else 0),
                ]
            )
            head = b""
            if start:
                head = (
                    (
                        _VP8_KEY_HEADER
                        if (width, height) == (1280, 720)
                        else vp8_key_header(width, height)
                    )
                    if keyframe
                    else _VP8_DELTA_HEADER
                ) + tag
            body = bytes(max(0, size - len(descriptor) - len(head)))
            out.append(self.packet(descriptor + head + body, marker=index == packets - 1, now=now))
        if capture_time is None:
            self.advance(1 / fps)
        return out


def _extension_id(rtp_parameters: RtpParameters, uri: str) -> int | None:
    for ext in rtp_parameters.header_extensions:
        if ext.uri == uri:
            return ext.id
    return None


@final
class SyntheticPublisher:
    """The streams one producer sends, built from its ``rtpParameters``.

    For simulcast by rid (as Chromium does) each encoding gets a random SSRC and carries
    the mid and rid extensions; an encoding with an ssrc uses it. With a
    ``transport_counter`` (one per send transport) and a transport-cc extension in the
    parameters, every packet carries a transport-wide sequence number.
    """

    def __init__(
        self,
        rtp_parameters: RtpParameters,
        *,
        rng: random.Random | None = None,
        transport_counter: TransportWideCounter | None = None,
    ) -> None:
        rng = rng or random.Random()
        self.rtp_parameters = rtp_parameters
        codec = next(c for c in rtp_parameters.codecs if not is_rtx(c.mime_type))
        mid_id = _extension_id(rtp_parameters, MID_URI)
        rid_id = _extension_id(rtp_parameters, RID_URI)
        abs_id = _extension_id(rtp_parameters, ABS_SEND_TIME_URI)
        level_id = _extension_id(rtp_parameters, SSRC_AUDIO_LEVEL_URI)
        twcc_id = _extension_id(rtp_parameters, TRANSPORT_WIDE_CC_URI)
        twcc = (
            (twcc_id, transport_counter)
            if twcc_id is not None and transport_counter is not None
            else None
        )
        rtx_pt = next((c.payload_type for c in rtp_parameters.codecs if is_rtx(c.mime_type)), None)
        self.streams: list[SyntheticStream] = []
        for encoding in rtp_parameters.encodings:
            extensions: dict[int, bytes] = {}
            if mid_id is not None and rtp_parameters.mid is not None:
                extensions[mid_id] = rtp_parameters.mid.encode()
            if rid_id is not None and encoding.rid is not None:
                extensions[rid_id] = encoding.rid.encode()
            self.streams.append(
                SyntheticStream(
                    ssrc=encoding.ssrc or rng.randrange(1, 0x1_0000_0000),
                    payload_type=codec.payload_type,
                    clock_rate=codec.clock_rate,
                    extensions=extensions,
                    abs_send_time_id=abs_id,
                    audio_level_id=level_id,
                    transport_cc=twcc,
                    rtx=(
                        (encoding.rtx.ssrc, rtx_pt)
                        if encoding.rtx is not None and rtx_pt is not None
                        else None
                    ),
                    rng=rng,
                )
            )


@final
class _ReceivedStream:
    __slots__ = ("clock_rate", "last_sr_arrival", "last_sr_compact", "nack", "ssrc", "stats")

    def __init__(self, ssrc: int, clock_rate: int, nack: NackGenerator | None) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.stats = ReceiveStats()
        self.nack = nack
        self.last_sr_compact = 0
        self.last_sr_arrival: float | None = None


@final
class SyntheticReceiver:
    """The feedback a subscriber sends for the consumers it receives.

    Register each consumer's ``rtpParameters`` with :meth:`add_consumer`, pass every
    received RTP packet to :meth:`receive_rtp` and RTCP to :meth:`receive_rtcp`, and send
    what :meth:`reports`, :meth:`nacks` and :meth:`transport_feedback` return now and
    then. RTX packets are unwrapped: :meth:`receive_rtp` returns the repaired media packet
    when it fills a gap, ``None`` for duplicates, padding and probes. Receiver reports
    count only packets that arrived as themselves (the loss the link caused, not what NACK
    repaired), as the SFU's weak-network policy wants to see it.
    """

    def __init__(
        self, *, sender_ssrc: int = 0x5EC0_0001, nack: bool = True, transport_cc: bool = True
    ) -> None:
        self.sender_ssrc = sender_ssrc
        self.use_nack = nack
        self.use_transport_cc = transport_cc
        self.streams: dict[int, _ReceivedStream] = {}
        #: RTX SSRC -> (media stream, media payload type)
        self._rtx: dict[int, tuple[_ReceivedStream, int]] = {}
        self._twcc_id: int | None = None
        self.twcc = TwccRecorder()
        self.recovered = 0
        self.duplicates = 0
        self.padding = 0

    def add_consumer(self, rtp_parameters: RtpParameters) -> None:
        encoding = rtp_parameters.encodings[0]
        assert encoding.ssrc is not None
        media = next(c for c in rtp_parameters.codecs if not is_rtx(c.mime_type))
        stream = _ReceivedStream(
            encoding.ssrc, media.clock_rate, NackGenerator() if self.use_nack else None
        )
        self.streams[encoding.ssrc] = stream
        if encoding.rtx is not None:
            self._rtx[encoding.rtx.ssrc] = (stream, media.payload_type)
        if self.use_transport_cc:
            twcc_id = _extension_id(rtp_parameters, TRANSPORT_WIDE_CC_URI)
            if twcc_id is not None:
                self._twcc_id = twcc_id

    def receive_rtp(self, packet: bytes, now: float) -> bytes | None:
        """Account for one received RTP packet; the media packet it carries, or ``None``."""
        if len(packet) < 12:
            return None
        if self._twcc_id is not None:
            try:
                value = find_extension_untrusted(packet, self._twcc_id)
            except BadPacket:
                value = None
            if value is not None and len(value) == 2:
                self.twcc.record(int.from_bytes(value, "big"), now)
        ssrc = int.from_bytes(packet[8:12], "big")
        stream = self.streams.get(ssrc)
        if stream is not None:
            seq = (packet[2] << 8) | packet[3]
            stream.stats.update(seq, int.from_bytes(packet[4:8], "big"), now, stream.clock_rate)
            if stream.nack is not None:
                stream.nack.on_packet(seq, now)
            return packet
        rtx = self._rtx.get(ssrc)
        if rtx is None:
            return None
        stream, payload_type = rtx
        try:
            original = rtx_unwrap_untrusted(packet, payload_type=payload_type, ssrc=stream.ssrc)
        except BadPacket:
            return None
        if original is None:
            self.padding += 1
            return None
        seq = (original[2] << 8) | original[3]
        if stream.nack is None:
            return original
        before = stream.nack.recovered
        stream.nack.on_packet(seq, now, retransmitted=True)
        if stream.nack.recovered == before:
            self.duplicates += 1
            return None
        self.recovered += 1
        return original

    def receive_rtcp(self, data: bytes, now: float) -> list[RtcpPacket]:
        """Note Sender Reports (for LSR/DLSR); returns the parsed packets."""
        try:
            packets = parse_rtcp_untrusted(data)
        except BadPacket:
            return []
        for packet in packets:
            if isinstance(packet, SenderReport):
                stream = self.streams.get(packet.ssrc)
                if stream is not None:
                    stream.last_sr_compact = ntp_to_compact(packet.ntp_timestamp)
                    stream.last_sr_arrival = now
        return packets

    def reports(self, now: float, ssrcs: Iterable[int] | None = None) -> bytes | None:
        """A Receiver Report with a block per stream that got packets, of the streams
        ``ssrcs`` (default: all); ``None`` when none."""
        wanted = None if ssrcs is None else set(ssrcs)
        blocks = [
            stream.stats.make_report_block(
                stream.ssrc, now, stream.last_sr_compact, stream.last_sr_arrival
            )
            for stream in self.streams.values()
            if stream.stats.received and (wanted is None or stream.ssrc in wanted)
        ]
        if not blocks:
            return None
        return build_rtcp([ReceiverReport(self.sender_ssrc, tuple(blocks[:31]))])

    def nacks(self, now: float) -> bytes | None:
        """Generic NACKs for what is missing now (``None``: nothing to ask for)."""
        packets: list[RtcpPacket] = []
        for stream in self.streams.values():
            if stream.nack is None:
                continue
            seqs = stream.nack.get_nacks(now)
            if seqs:
                packets.append(GenericNack.from_seqs(self.sender_ssrc, stream.ssrc, seqs))
        return build_rtcp(packets) if packets else None

    def transport_feedback(self) -> bytes | None:
        """Transport-cc feedback for what arrived since the last call."""
        if not self.streams:
            return None
        media_ssrc = next(iter(self.streams))
        feedback = self.twcc.feedback(self.sender_ssrc, media_ssrc)
        return build_rtcp(feedback) if feedback else None


def audio_rtp_parameters(
    *,
    ssrc: int,
    mid: str = "0",
    payload_type: int = 111,
    cname: str = "synthetic",
    audio_level: bool = False,
    transport_cc: bool = False,
    dtx: bool = False,
    stereo: bool = False,
) -> RtpParameters:
    """Opus producer parameters shaped like Chromium's (for bots and load peers).

    ``audio_level`` adds the ssrc-audio-level extension (id 1), ``transport_cc`` the
    transport-wide sequence number (id 3), ``dtx`` and ``stereo`` the Opus ``usedtx`` and
    ``stereo`` / ``sprop-stereo`` parameters (RFC 7587).
    """
    parameters: dict[str, str | int | float] = {"minptime": 10, "useinbandfec": 1}
    if dtx:
        parameters["usedtx"] = 1
    if stereo:
        parameters["stereo"] = 1
        parameters["sprop-stereo"] = 1
    extensions = [
        RtpHeaderExtensionParameters(uri=MID_URI, id=4),
        RtpHeaderExtensionParameters(uri=ABS_SEND_TIME_URI, id=2),
    ]
    if audio_level:
        extensions.append(RtpHeaderExtensionParameters(uri=SSRC_AUDIO_LEVEL_URI, id=1))
    if transport_cc:
        extensions.append(RtpHeaderExtensionParameters(uri=TRANSPORT_WIDE_CC_URI, id=3))
    return RtpParameters(
        mid=mid,
        codecs=[
            RtpCodecParameters(
                mime_type="audio/opus",
                payload_type=payload_type,
                clock_rate=48000,
                channels=2,
                parameters=parameters,
                rtcp_feedback=[RtcpFeedback(type="transport-cc")],
            )
        ],
        header_extensions=extensions,
        encodings=[RtpEncodingParameters(ssrc=ssrc, dtx=True if dtx else None)],
        rtcp=RtcpParameters(cname=cname, reduced_size=True),
    )


def vp8_simulcast_rtp_parameters(
    *,
    mid: str = "1",
    payload_type: int = 96,
    rtx_payload_type: int = 97,
    layers: int = 3,
    transport_cc: bool = False,
) -> RtpParameters:
    """VP8 simulcast producer parameters shaped like Chromium's: rids, no SSRCs
    (``transport_cc``: with the transport-wide sequence number extension, id 3)."""
    feedback = [
        RtcpFeedback(type="goog-remb"),
        RtcpFeedback(type="transport-cc"),
        RtcpFeedback(type="ccm", parameter="fir"),
        RtcpFeedback(type="nack"),
        RtcpFeedback(type="nack", parameter="pli"),
    ]
    bitrates = [100_000, 300_000, 1_500_000]
    return RtpParameters(
        mid=mid,
        codecs=[
            RtpCodecParameters(
                mime_type="video/VP8",
                payload_type=payload_type,
                clock_rate=90000,
                rtcp_feedback=feedback,
            ),
            RtpCodecParameters(
                mime_type="video/rtx",
                payload_type=rtx_payload_type,
                clock_rate=90000,
                parameters={"apt": payload_type},
            ),
        ],
        header_extensions=[
            RtpHeaderExtensionParameters(uri=MID_URI, id=4),
            RtpHeaderExtensionParameters(uri=RID_URI, id=10),
            RtpHeaderExtensionParameters(
                uri="urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id", id=11
            ),
            RtpHeaderExtensionParameters(uri=ABS_SEND_TIME_URI, id=2),
            *(
                [RtpHeaderExtensionParameters(uri=TRANSPORT_WIDE_CC_URI, id=3)]
                if transport_cc
                else []
            ),
        ],
        encodings=[
            RtpEncodingParameters(
                rid=f"r{i}", active=True, scalability_mode="L1T3", max_bitrate=bitrates[i]
            )
            for i in range(layers)
        ],
        rtcp=RtcpParameters(cname="", reduced_size=True),
    )


__all__ = [
    "L1T3_PATTERN",
    "SyntheticPublisher",
    "SyntheticReceiver",
    "SyntheticStream",
    "TransportWideCounter",
    "audio_rtp_parameters",
    "vp8_key_header",
    "vp8_simulcast_rtp_parameters",
]
