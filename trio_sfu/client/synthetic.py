"""Synthetic media: RTP packets shaped like a browser's, without an encoder.

Used by the tests, bots and the load generator to publish through a real transport:
valid RTP headers, the producer's own header extension ids (mid, rid, abs-send-time),
Opus-sized audio and VP8 simulcast with real payload descriptors (PictureID, TL0PICIDX,
TID, keyframes that our VP8 parser and a browser's depacketizer recognise).

Nothing here reads a clock: the caller passes ``now`` (seconds) where it matters.
"""

from __future__ import annotations

import random
import struct
from typing import final

from trio_sfu.ortc.negotiation import is_rtx
from trio_sfu.ortc.types import (
    RtcpFeedback,
    RtcpParameters,
    RtpCodecParameters,
    RtpEncodingParameters,
    RtpHeaderExtensionParameters,
    RtpParameters,
)
from trio_sfu.rtp.extensions import ABS_SEND_TIME_URI, MID_URI, RID_URI, encode_abs_send_time
from trio_sfu.rtp.packet import build_extensions

_FIXED = struct.Struct("!BBHII")
#: A VP8 keyframe's payload header: frame tag (P=0, show_frame), start code, 1280x720.
_VP8_KEY_HEADER = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]) + struct.pack("<HH", 1280, 720)
#: An interframe's first payload byte: P=1.
_VP8_DELTA_HEADER = bytes([0x11, 0x02, 0x00])


@final
class SyntheticStream:
    """One outgoing RTP stream: its SSRC, sequence numbers, timestamps and extensions."""

    def __init__(
        self,
        *,
        ssrc: int,
        payload_type: int,
        clock_rate: int,
        extensions: dict[int, bytes] | None = None,
        abs_send_time_id: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        rng = rng or random.Random()
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.seq = rng.randrange(0, 0x10000)
        self.timestamp = rng.randrange(0, 0x1_0000_0000)
        self.extensions = dict(extensions or {})
        self.abs_send_time_id = abs_send_time_id
        self.picture_id = rng.randrange(0, 0x8000)
        self.tl0picidx = rng.randrange(0, 0x100)
        self.packets_sent = 0

    def packet(self, payload: bytes, *, marker: bool = True, now: float | None = None) -> bytes:
        """The next packet of this stream carrying ``payload``."""
        elements = dict(self.extensions)
        if self.abs_send_time_id is not None and now is not None:
            elements[self.abs_send_time_id] = encode_abs_send_time(now)
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
        self.seq = (self.seq + 1) & 0xFFFF
        self.packets_sent += 1
        return header + block + payload

    def advance(self, seconds: float) -> None:
        """Move the RTP clock on (one audio frame, one video frame)."""
        self.timestamp = (self.timestamp + round(seconds * self.clock_rate)) & 0xFFFFFFFF

    def opus_frame(self, *, size: int = 100, now: float | None = None) -> bytes:
        """One 20 ms Opus packet."""
        packet = self.packet(b"\xfc" + bytes(size - 1), marker=False, now=now)
        self.advance(0.02)
        return packet

    def vp8_frame(
        self,
        *,
        keyframe: bool,
        size: int = 1100,
        packets: int = 1,
        tid: int = 0,
        layer_sync: bool = False,
        now: float | None = None,
        fps: float = 30.0,
    ) -> list[bytes]:
        """The packets of one VP8 frame, with a payload descriptor in each."""
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
            head = (_VP8_KEY_HEADER if keyframe else _VP8_DELTA_HEADER) if start else b""
            body = bytes(max(0, size - len(descriptor) - len(head)))
            out.append(self.packet(descriptor + head + body, marker=index == packets - 1, now=now))
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
    the mid and rid extensions; an encoding with an ssrc uses it.
    """

    def __init__(self, rtp_parameters: RtpParameters, *, rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        self.rtp_parameters = rtp_parameters
        codec = next(c for c in rtp_parameters.codecs if not is_rtx(c.mime_type))
        mid_id = _extension_id(rtp_parameters, MID_URI)
        rid_id = _extension_id(rtp_parameters, RID_URI)
        abs_id = _extension_id(rtp_parameters, ABS_SEND_TIME_URI)
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
                    rng=rng,
                )
            )


def audio_rtp_parameters(
    *, ssrc: int, mid: str = "0", payload_type: int = 111, cname: str = "synthetic"
) -> RtpParameters:
    """Opus producer parameters shaped like Chromium's (for bots and load peers)."""
    return RtpParameters(
        mid=mid,
        codecs=[
            RtpCodecParameters(
                mime_type="audio/opus",
                payload_type=payload_type,
                clock_rate=48000,
                channels=2,
                parameters={"minptime": 10, "useinbandfec": 1},
                rtcp_feedback=[RtcpFeedback(type="transport-cc")],
            )
        ],
        header_extensions=[
            RtpHeaderExtensionParameters(uri=MID_URI, id=4),
            RtpHeaderExtensionParameters(uri=ABS_SEND_TIME_URI, id=2),
        ],
        encodings=[RtpEncodingParameters(ssrc=ssrc)],
        rtcp=RtcpParameters(cname=cname, reduced_size=True),
    )


def vp8_simulcast_rtp_parameters(
    *, mid: str = "1", payload_type: int = 96, rtx_payload_type: int = 97, layers: int = 3
) -> RtpParameters:
    """VP8 simulcast producer parameters shaped like Chromium's: rids, no SSRCs."""
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
    "SyntheticPublisher",
    "SyntheticStream",
    "audio_rtp_parameters",
    "vp8_simulcast_rtp_parameters",
]
