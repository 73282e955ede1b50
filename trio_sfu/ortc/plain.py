"""ORTC parameters for tools that are not browsers, on either side of a PlainTransport:
ffmpeg's RTP muxer as a producer (:func:`vp8_plain_rtp_parameters`,
:func:`opus_plain_rtp_parameters`) and a plain receiver, such as a recorder, as a consumer
(:func:`plain_rtp_capabilities`). Pure functions, like the rest of :mod:`trio_sfu.ortc`.
"""

from __future__ import annotations

import attrs

from trio_sfu.ortc.types import (
    RtcpFeedback,
    RtcpParameters,
    RtpCapabilities,
    RtpCodecParameters,
    RtpEncodingParameters,
    RtpParameters,
)

__all__ = [
    "PLAIN_FEEDBACK",
    "opus_plain_rtp_parameters",
    "plain_rtp_capabilities",
    "vp8_plain_rtp_parameters",
]

#: Feedback a plain endpoint may use: NACK, PLI and FIR (ffmpeg uses none of them).
PLAIN_FEEDBACK = (
    RtcpFeedback(type="nack"),
    RtcpFeedback(type="nack", parameter="pli"),
    RtcpFeedback(type="ccm", parameter="fir"),
)


def vp8_plain_rtp_parameters(
    *, ssrc: int, payload_type: int = 101, cname: str = "plain"
) -> RtpParameters:
    """A VP8 producer as ffmpeg's RTP muxer sends it: one stream of a known SSRC, no
    header extensions, no MID, no RTX."""
    return RtpParameters(
        codecs=[
            RtpCodecParameters(
                mime_type="video/VP8",
                payload_type=payload_type,
                clock_rate=90000,
                rtcp_feedback=list(PLAIN_FEEDBACK),
            )
        ],
        encodings=[RtpEncodingParameters(ssrc=ssrc)],
        rtcp=RtcpParameters(cname=cname, reduced_size=False),
    )


def opus_plain_rtp_parameters(
    *, ssrc: int, payload_type: int = 100, cname: str = "plain"
) -> RtpParameters:
    """An Opus producer as ffmpeg's RTP muxer sends it (stereo signalled, 48 kHz)."""
    return RtpParameters(
        codecs=[
            RtpCodecParameters(
                mime_type="audio/opus",
                payload_type=payload_type,
                clock_rate=48000,
                channels=2,
                parameters={"sprop-stereo": 1},
            )
        ],
        encodings=[RtpEncodingParameters(ssrc=ssrc)],
        rtcp=RtcpParameters(cname=cname, reduced_size=False),
    )


def plain_rtp_capabilities(router: RtpCapabilities, *, feedback: bool = True) -> RtpCapabilities:
    """What a plain receiver (a recorder, ffmpeg) takes of a router's capabilities: its
    media codecs without RTX, no header extensions; NACK/PLI/FIR only with ``feedback``."""
    codecs = [
        attrs.evolve(
            codec,
            rtcp_feedback=[
                fb
                for fb in codec.rtcp_feedback
                if feedback
                and (fb.type, fb.parameter) in {(f.type, f.parameter) for f in PLAIN_FEEDBACK}
            ],
        )
        for codec in router.codecs
        if not codec.mime_type.lower().endswith("/rtx")
    ]
    return RtpCapabilities(codecs=codecs, header_extensions=[])
