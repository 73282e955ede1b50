"""Codec negotiation as pure functions, with mediasoup v3's rules (its ``ortc.ts``).

The life of a stream's parameters:

1. The router's capabilities come from its configured media codecs:
   :func:`generate_router_rtp_capabilities` gives each a payload type, adds an RTX codec after
   each video codec and attaches the RTCP feedback and header extensions we support.
2. A producer arrives with the browser's own payload types and header extension ids.
   :func:`get_producer_rtp_mapping` validates those parameters and maps every codec to the
   router's (producer PT -> router PT) and every stream (by rid or by SSRC) to a fresh SSRC.
   :func:`fill_cname` applies the transport-wide CNAME first.
3. :func:`get_consumable_rtp_parameters` rewrites the producer's parameters in the router's
   terms: router PTs, router header extension ids, the mapped SSRCs.
4. For each subscriber, :func:`can_consume` and :func:`get_consumer_rtp_parameters` cut
   those down to what the subscriber's capabilities accept: one stream with a fresh SSRC
   (plus an RTX SSRC), whose ``scalabilityMode`` tells the client how many layers it may see.

Refusals raise :class:`~trio_sfu.errors.InvalidMessageError` (the parameters break a rule;
the message names the field, e.g. ``rtpParameters.codecs[1].parameters.apt``) or
:class:`~trio_sfu.errors.UnsupportedError` (valid, but not something the router can do).
Inputs are never modified; every function returns new objects.

Randomness (SSRCs, CNAMEs) comes from ``rng`` when given (tests pass a seeded
``random.Random``), else from the operating system.

Sans-IO: no trio import, no clocks, no sockets.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from typing import Literal, final

import attrs

from trio_sfu.errors import InvalidMessageError, UnsupportedError
from trio_sfu.ortc.h264 import h264_codecs_match, h264_packetization_mode, h264_profile_level_id
from trio_sfu.ortc.types import (
    MediaKind,
    RtcpFeedback,
    RtcpParameters,
    RtpCapabilities,
    RtpCodecCapability,
    RtpCodecParameters,
    RtpEncodingParameters,
    RtpHeaderExtension,
    RtpHeaderExtensionParameters,
    RtpParameters,
    RtxParameters,
)

__all__ = [
    "DEFAULT_MEDIA_CODECS",
    "MAX_ENCODINGS",
    "SUPPORTED_HEADER_EXTENSIONS",
    "URI_ABS_CAPTURE_TIME",
    "URI_ABS_SEND_TIME",
    "URI_AUDIO_LEVEL",
    "URI_DEPENDENCY_DESCRIPTOR",
    "URI_MID",
    "URI_PLAYOUT_DELAY",
    "URI_REPAIRED_RID",
    "URI_RID",
    "URI_TOFFSET",
    "URI_TRANSPORT_CC",
    "URI_VIDEO_ORIENTATION",
    "RtpMapping",
    "RtpMappingEncoding",
    "ScalabilityMode",
    "can_consume",
    "consumer_type",
    "fill_cname",
    "generate_router_rtp_capabilities",
    "get_consumable_rtp_parameters",
    "get_consumer_rtp_parameters",
    "get_producer_rtp_mapping",
    "is_rtx",
    "parse_scalability_mode",
    "pick_transport_cname",
    "validate_rtp_capabilities",
    "validate_rtp_parameters",
]

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
URI_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
URI_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
URI_DEPENDENCY_DESCRIPTOR = (
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"
)
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
URI_VIDEO_ORIENTATION = "urn:3gpp:video-orientation"
URI_TOFFSET = "urn:ietf:params:rtp-hdrext:toffset"
URI_ABS_CAPTURE_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"
URI_PLAYOUT_DELAY = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"

_SYSTEM_RANDOM = random.SystemRandom()


# --------------------------------------------------------------------------------------
# What the router supports


def _fb(type_: str, parameter: str = "") -> RtcpFeedback:
    return RtcpFeedback(type=type_, parameter=parameter)


_VIDEO_FEEDBACK = (
    _fb("nack"),
    _fb("nack", "pli"),
    _fb("ccm", "fir"),
    _fb("goog-remb"),
    _fb("transport-cc"),
)


@final
@attrs.frozen
class _Supported:
    kind: MediaKind
    mime_type: str
    clock_rate: int
    channels: int | None
    static_payload_type: int | None
    rtcp_feedback: tuple[RtcpFeedback, ...]


# Codecs the forwarding engine handles (it must find keyframes and layers in video).
_SUPPORTED_CODECS: dict[str, _Supported] = {
    s.mime_type.lower(): s
    for s in (
        _Supported("audio", "audio/opus", 48000, 2, None, (_fb("nack"), _fb("transport-cc"))),
        _Supported("audio", "audio/PCMU", 8000, 1, 0, (_fb("transport-cc"),)),
        _Supported("audio", "audio/PCMA", 8000, 1, 8, (_fb("transport-cc"),)),
        _Supported("audio", "audio/G722", 8000, 1, 9, (_fb("transport-cc"),)),
        _Supported("video", "video/VP8", 90000, None, None, _VIDEO_FEEDBACK),
        _Supported("video", "video/H264", 90000, None, None, _VIDEO_FEEDBACK),
    )
}


def _ext(
    kind: MediaKind,
    uri: str,
    preferred_id: int,
    direction: Literal["sendrecv", "recvonly"] = "sendrecv",
) -> RtpHeaderExtension:
    return RtpHeaderExtension(kind=kind, uri=uri, preferred_id=preferred_id, direction=direction)


#: The header extensions in every router's capabilities: mediasoup 3.15's list, ids and
#: directions (direction is the router's point of view: ``recvonly`` ones are read from
#: producers and never forwarded to consumers).
SUPPORTED_HEADER_EXTENSIONS: tuple[RtpHeaderExtension, ...] = (
    _ext("audio", URI_MID, 1),
    _ext("video", URI_MID, 1),
    _ext("video", URI_RID, 2, "recvonly"),
    _ext("video", URI_REPAIRED_RID, 3, "recvonly"),
    _ext("audio", URI_ABS_SEND_TIME, 4),
    _ext("video", URI_ABS_SEND_TIME, 4),
    _ext("audio", URI_TRANSPORT_CC, 5, "recvonly"),
    _ext("video", URI_TRANSPORT_CC, 5),
    _ext("video", URI_DEPENDENCY_DESCRIPTOR, 8, "recvonly"),
    _ext("audio", URI_AUDIO_LEVEL, 10),
    _ext("video", URI_VIDEO_ORIENTATION, 11),
    _ext("video", URI_TOFFSET, 12),
    _ext("audio", URI_ABS_CAPTURE_TIME, 13),
    _ext("video", URI_ABS_CAPTURE_TIME, 13),
    _ext("audio", URI_PLAYOUT_DELAY, 14),
    _ext("video", URI_PLAYOUT_DELAY, 14),
)

#: The router codecs when none are configured: Opus, VP8, H264 Main and Constrained Baseline.
DEFAULT_MEDIA_CODECS: tuple[RtpCodecCapability, ...] = (
    RtpCodecCapability(kind="audio", mime_type="audio/opus", clock_rate=48000, channels=2),
    RtpCodecCapability(kind="video", mime_type="video/VP8", clock_rate=90000),
    RtpCodecCapability(
        kind="video",
        mime_type="video/H264",
        clock_rate=90000,
        parameters={
            "packetization-mode": 1,
            "profile-level-id": "4d0032",
            "level-asymmetry-allowed": 1,
        },
    ),
    RtpCodecCapability(
        kind="video",
        mime_type="video/H264",
        clock_rate=90000,
        parameters={
            "packetization-mode": 1,
            "profile-level-id": "42e01f",
            "level-asymmetry-allowed": 1,
        },
    ),
)

# Dynamic payload types, in the order they are handed out (RFC 3551 section 6: 96-127;
# 64-95 are left alone because they collide with RTCP packet types under rtcp-mux,
# RFC 5761 section 4).
_DYNAMIC_PAYLOAD_TYPES = (*range(100, 128), *range(96, 100), *range(35, 64))


def is_rtx(mime_type: str) -> bool:
    """Whether a MIME type is RTX (RFC 4588), ``audio/rtx`` or ``video/rtx``."""
    return mime_type.lower().endswith("/rtx")


def generate_router_rtp_capabilities(
    media_codecs: Iterable[RtpCodecCapability] = DEFAULT_MEDIA_CODECS,
) -> RtpCapabilities:
    """A router's RTP capabilities for the configured ``media_codecs``.

    Raises UnsupportedError for a codec we do not support (mime type, clock rate, channels,
    H264 parameters) or for a payload type collision.
    """
    media_codecs = list(media_codecs)
    taken: set[int] = set()
    for index, codec in enumerate(media_codecs):
        pt = codec.preferred_payload_type
        if pt is None:
            continue
        if not 0 <= pt <= 127:
            raise UnsupportedError(f"mediaCodecs[{index}].preferredPayloadType {pt} not in 0-127")
        if pt in taken:
            raise UnsupportedError(f"mediaCodecs[{index}].preferredPayloadType {pt} is duplicated")
        taken.add(pt)
    dynamic: Iterator[int] = (pt for pt in _DYNAMIC_PAYLOAD_TYPES if pt not in taken)

    def next_dynamic(where: str) -> int:
        pt = next(dynamic, None)
        if pt is None:
            raise UnsupportedError(f"{where}: no payload type left")
        taken.add(pt)
        return pt

    codecs: list[RtpCodecCapability] = []
    for index, codec in enumerate(media_codecs):
        where = f"mediaCodecs[{index}]"
        if is_rtx(codec.mime_type):
            raise UnsupportedError(f"{where}.mimeType: RTX is added by the router, not configured")
        supported = _SUPPORTED_CODECS.get(codec.mime_type.lower())
        if supported is None:
            raise UnsupportedError(f"{where}.mimeType {codec.mime_type!r} is not supported")
        if codec.kind != supported.kind:
            raise UnsupportedError(f"{where}.kind {codec.kind!r} does not match its mimeType")
        if codec.clock_rate != supported.clock_rate:
            raise UnsupportedError(
                f"{where}.clockRate {codec.clock_rate} is not supported for "
                f"{supported.mime_type} (use {supported.clock_rate})"
            )
        channels = supported.channels
        if supported.kind == "audio":
            if codec.channels is not None and codec.channels != supported.channels:
                raise UnsupportedError(
                    f"{where}.channels {codec.channels} is not supported for {supported.mime_type}"
                )
        elif codec.channels is not None:
            raise UnsupportedError(f"{where}.channels is not allowed for video")
        if supported.mime_type == "video/H264":
            _check_router_h264(codec, where)
        pt = codec.preferred_payload_type
        if pt is None:
            static = supported.static_payload_type
            pt = static if static is not None and static not in taken else next_dynamic(where)
            taken.add(pt)
        codecs.append(
            RtpCodecCapability(
                kind=supported.kind,
                mime_type=supported.mime_type,
                clock_rate=supported.clock_rate,
                channels=channels,
                parameters=dict(codec.parameters),
                rtcp_feedback=list(supported.rtcp_feedback),
                preferred_payload_type=pt,
            )
        )
        if supported.kind == "video":
            codecs.append(
                RtpCodecCapability(
                    kind="video",
                    mime_type="video/rtx",
                    clock_rate=supported.clock_rate,
                    parameters={"apt": pt},
                    preferred_payload_type=next_dynamic(where),
                )
            )
    return RtpCapabilities(codecs=codecs, header_extensions=list(SUPPORTED_HEADER_EXTENSIONS))


def _check_router_h264(codec: RtpCodecCapability, where: str) -> None:
    if h264_packetization_mode(codec.parameters) is None:
        raise UnsupportedError(f"{where}.parameters.packetization-mode must be 0, 1 or 2")
    if h264_profile_level_id(codec.parameters) is None:
        raise UnsupportedError(f"{where}.parameters.profile-level-id is not a valid H264 profile")


# --------------------------------------------------------------------------------------
# Validation of what clients send


_RID = re.compile(r"[A-Za-z0-9_-]{1,255}")
_SCALABILITY_MODE = re.compile(r"[LS]([1-9][0-9]?)T([1-9][0-9]?)(_KEY)?")
_MAX_SSRC = 0xFFFFFFFF

#: Encodings (RTP streams, so also rids) one producer may have. Browsers send at most
#: three simulcast layers (mediasoup-client passes what the application asks for); each
#: encoding costs the worker a stream with its own RTCP, so the bound is what keeps a
#: producer cheap.
MAX_ENCODINGS = 16
#: Clock rates and bitrates are 32-bit unsigned in RTP (timestamps wrap at 2^32) and in
#: WebRTC (``RTCRtpEncodingParameters.maxBitrate`` is an ``unsigned long``).
_MAX_UINT32 = 0xFFFFFFFF
#: Integer codec and header extension parameters (fmtp values): 32-bit signed, as
#: mediasoup's worker holds them.
_MIN_PARAMETER = -(2**31)
_MAX_PARAMETER = 2**31 - 1


def _bad(field: str, problem: str) -> InvalidMessageError:
    return InvalidMessageError(f"invalid field {field!r}: {problem}")


def _check_mime(mime_type: str, field: str) -> MediaKind:
    kind, slash, subtype = mime_type.partition("/")
    if slash and subtype:
        if kind.lower() == "audio":
            return "audio"
        if kind.lower() == "video":
            return "video"
    raise _bad(field, f"{mime_type!r} is not an audio/* or video/* MIME type")


def _check_parameters(parameters: dict[str, str | int | float], field: str) -> None:
    for name, value in parameters.items():
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not _MIN_PARAMETER <= value <= _MAX_PARAMETER
        ):
            raise _bad(f"{field}.parameters.{name}", f"{value} is not a 32-bit integer")


def _check_clock_rate(clock_rate: int, field: str) -> None:
    if not 1 <= clock_rate <= _MAX_UINT32:
        raise _bad(f"{field}.clockRate", f"must be positive and at most {_MAX_UINT32}")


def _apt(parameters: dict[str, str | int | float], field: str) -> int:
    apt = parameters.get("apt")
    if isinstance(apt, str) and apt.isascii() and apt.isdigit():
        apt = int(apt)
    if not isinstance(apt, int) or isinstance(apt, bool) or not 0 <= apt <= 127:
        raise _bad(f"{field}.parameters.apt", "an RTX codec needs apt, a payload type 0-127")
    return apt


def validate_rtp_parameters(
    params: RtpParameters, *, kind: MediaKind | None = None, where: str = "rtpParameters"
) -> MediaKind:
    """Check a producer's ``rtpParameters``; return their kind.

    Payload types in 0-127 (and not 64-95, RFC 5761), unique; at least one media codec; one
    kind for all codecs (``kind`` if given); clock rates 1 to 2^32-1; integer parameters of
    32 bits; each RTX codec's ``apt`` names a media codec; header extension ids 1-255 and
    unique; 1 to :data:`MAX_ENCODINGS` encodings, all with a ``rid`` or all without, and
    those without a ``rid`` with an ``ssrc``; rids and SSRCs (32-bit) unique;
    ``maxBitrate`` 1 to 2^32-1; scalabilityMode well-formed.
    """
    if not params.codecs:
        raise _bad(f"{where}.codecs", "at least one codec is required")
    payload_types: dict[int, RtpCodecParameters] = {}
    codec_kind: MediaKind | None = kind
    for index, codec in enumerate(params.codecs):
        field = f"{where}.codecs[{index}]"
        this_kind = _check_mime(codec.mime_type, f"{field}.mimeType")
        if codec_kind is None:
            codec_kind = this_kind
        elif this_kind != codec_kind:
            raise _bad(f"{field}.mimeType", f"{codec.mime_type!r} is not a {codec_kind} codec")
        pt = codec.payload_type
        if not 0 <= pt <= 127:
            raise _bad(f"{field}.payloadType", f"{pt} is not in 0-127")
        if 64 <= pt <= 95:
            raise _bad(f"{field}.payloadType", f"{pt} collides with RTCP (RFC 5761: avoid 64-95)")
        if pt in payload_types:
            raise _bad(f"{field}.payloadType", f"{pt} is used by two codecs")
        payload_types[pt] = codec
        _check_clock_rate(codec.clock_rate, field)
        if codec.channels is not None and not 1 <= codec.channels <= 255:
            raise _bad(f"{field}.channels", "must be 1-255")
        _check_parameters(codec.parameters, field)
    media = {pt for pt, codec in payload_types.items() if not is_rtx(codec.mime_type)}
    if not media:
        raise _bad(f"{where}.codecs", "no media codec (only RTX)")
    for index, codec in enumerate(params.codecs):
        if is_rtx(codec.mime_type):
            field = f"{where}.codecs[{index}]"
            if _apt(codec.parameters, field) not in media:
                raise _bad(f"{field}.parameters.apt", "names no media codec of these parameters")

    ids: set[int] = set()
    for index, ext in enumerate(params.header_extensions):
        field = f"{where}.headerExtensions[{index}]"
        if not ext.uri:
            raise _bad(f"{field}.uri", "must not be empty")
        if not 1 <= ext.id <= 255:
            raise _bad(f"{field}.id", f"{ext.id} is not in 1-255")
        if ext.id in ids:
            raise _bad(f"{field}.id", f"{ext.id} is used by two header extensions")
        ids.add(ext.id)
        _check_parameters(ext.parameters, field)

    if not params.encodings:
        raise _bad(f"{where}.encodings", "at least one encoding is required")
    if len(params.encodings) > MAX_ENCODINGS:
        raise _bad(
            f"{where}.encodings",
            f"{len(params.encodings)} encodings: at most {MAX_ENCODINGS} are accepted",
        )
    with_rid = sum(1 for e in params.encodings if e.rid is not None)
    if with_rid not in (0, len(params.encodings)):
        raise _bad(f"{where}.encodings", "either every encoding has a rid or none has")
    rids: set[str] = set()
    ssrcs: set[int] = set()
    for index, encoding in enumerate(params.encodings):
        field = f"{where}.encodings[{index}]"
        if encoding.rid is not None:
            if not _RID.fullmatch(encoding.rid):
                raise _bad(f"{field}.rid", "must be 1-255 letters, digits, '-' or '_'")
            if encoding.rid in rids:
                raise _bad(f"{field}.rid", f"{encoding.rid!r} is used by two encodings")
            rids.add(encoding.rid)
        elif encoding.ssrc is None:
            raise _bad(field, "an encoding needs an ssrc or a rid")
        for name, ssrc in (
            ("ssrc", encoding.ssrc),
            ("rtx.ssrc", encoding.rtx.ssrc if encoding.rtx else None),
        ):
            if ssrc is None:
                continue
            if not 0 <= ssrc <= _MAX_SSRC:
                raise _bad(f"{field}.{name}", f"{ssrc} is not a 32-bit SSRC")
            if ssrc in ssrcs:
                raise _bad(f"{field}.{name}", f"SSRC {ssrc} is used twice")
            ssrcs.add(ssrc)
        if encoding.codec_payload_type is not None and encoding.codec_payload_type not in media:
            raise _bad(f"{field}.codecPayloadType", "names no media codec of these parameters")
        if encoding.scalability_mode is not None and not _SCALABILITY_MODE.match(
            encoding.scalability_mode
        ):
            raise _bad(f"{field}.scalabilityMode", f"{encoding.scalability_mode!r} is not L<n>T<n>")
        if encoding.max_bitrate is not None and not 1 <= encoding.max_bitrate <= _MAX_UINT32:
            raise _bad(f"{field}.maxBitrate", f"must be positive and at most {_MAX_UINT32}")
    if params.mid is not None and not params.mid:
        raise _bad(f"{where}.mid", "must not be empty")
    assert codec_kind is not None
    return codec_kind


def validate_rtp_capabilities(caps: RtpCapabilities, *, where: str = "rtpCapabilities") -> None:
    """Check a client's ``rtpCapabilities``: kinds, payload types (0-127), clock rates (1
    to 2^32-1), channels (1-255), integer parameters of 32 bits, apt, extension ids."""
    for index, codec in enumerate(caps.codecs):
        field = f"{where}.codecs[{index}]"
        if _check_mime(codec.mime_type, f"{field}.mimeType") != codec.kind:
            raise _bad(f"{field}.kind", f"{codec.kind!r} does not match {codec.mime_type!r}")
        pt = codec.preferred_payload_type
        if pt is not None and not 0 <= pt <= 127:
            raise _bad(f"{field}.preferredPayloadType", f"{pt} is not in 0-127")
        _check_clock_rate(codec.clock_rate, field)
        if codec.channels is not None and not 1 <= codec.channels <= 255:
            raise _bad(f"{field}.channels", "must be 1-255")
        _check_parameters(codec.parameters, field)
        if is_rtx(codec.mime_type):
            _apt(codec.parameters, field)
    for index, ext in enumerate(caps.header_extensions):
        if not 1 <= ext.preferred_id <= 255:
            raise _bad(
                f"{where}.headerExtensions[{index}].preferredId",
                f"{ext.preferred_id} is not in 1-255",
            )


# --------------------------------------------------------------------------------------
# Codec matching


def _channels(kind: str, channels: int | None) -> int | None:
    if kind == "audio":
        return 1 if channels is None else channels
    return None


def _codecs_match(
    a_mime: str,
    a_clock_rate: int,
    a_channels: int | None,
    a_parameters: dict[str, str | int | float],
    b_mime: str,
    b_clock_rate: int,
    b_channels: int | None,
    b_parameters: dict[str, str | int | float],
) -> bool:
    """mediasoup's strict codec match: mime, clock rate, channels; H264 mode and profile."""
    mime = a_mime.lower()
    if mime != b_mime.lower() or a_clock_rate != b_clock_rate:
        return False
    kind = mime.partition("/")[0]
    if _channels(kind, a_channels) != _channels(kind, b_channels):
        return False
    if mime == "video/h264":
        return h264_codecs_match(a_parameters, b_parameters)
    return True


def _match_params_cap(codec: RtpCodecParameters, cap: RtpCodecCapability) -> bool:
    return _codecs_match(
        codec.mime_type,
        codec.clock_rate,
        codec.channels,
        codec.parameters,
        cap.mime_type,
        cap.clock_rate,
        cap.channels,
        cap.parameters,
    )


# --------------------------------------------------------------------------------------
# Producer side


@final
@attrs.frozen
class RtpMappingEncoding:
    """One producer stream: how it is recognised (rid or ssrc) and the SSRC it gets inside."""

    mapped_ssrc: int
    ssrc: int | None = None
    rid: str | None = None
    rtx_ssrc: int | None = None
    scalability_mode: str | None = None


@final
@attrs.frozen
class RtpMapping:
    """How a producer's RTP is rewritten into the router's terms.

    ``codecs``: producer payload type -> router payload type (RTX included).
    ``encodings``: one per producer encoding, in the producer's order.
    ``header_extensions``: producer (browser) header extension id -> URI.
    """

    codecs: dict[int, int]
    encodings: tuple[RtpMappingEncoding, ...]
    header_extensions: dict[int, str]


def _fresh_ssrcs(count: int, rng: random.Random | None, avoid: Iterable[int] = ()) -> list[int]:
    source = rng or _SYSTEM_RANDOM
    used = set(avoid)
    out: list[int] = []
    while len(out) < count:
        ssrc = source.randrange(1, _MAX_SSRC + 1)
        if ssrc not in used:
            used.add(ssrc)
            out.append(ssrc)
    return out


def get_producer_rtp_mapping(
    rtp_parameters: RtpParameters,
    router_caps: RtpCapabilities,
    *,
    kind: MediaKind | None = None,
    rng: random.Random | None = None,
) -> RtpMapping:
    """Validate a producer's parameters and map them onto the router's capabilities.

    Each media codec maps to the router codec with the same mime type, clock rate and
    channels (for H264 also packetization-mode and profile); each RTX codec to the router's
    RTX codec for that media codec. Each encoding gets a fresh ``mapped_ssrc``.

    Raises InvalidMessageError for malformed parameters and UnsupportedError for a codec
    the router lacks.
    """
    validate_rtp_parameters(rtp_parameters, kind=kind)
    by_pt = {codec.payload_type: codec for codec in rtp_parameters.codecs}
    mapped: dict[int, RtpCodecCapability] = {}
    for index, codec in enumerate(rtp_parameters.codecs):
        if is_rtx(codec.mime_type):
            continue
        cap = next(
            (
                cap
                for cap in router_caps.codecs
                if not is_rtx(cap.mime_type) and _match_params_cap(codec, cap)
            ),
            None,
        )
        if cap is None or cap.preferred_payload_type is None:
            raise UnsupportedError(
                f"rtpParameters.codecs[{index}]: the router does not support "
                f"{codec.mime_type} (payloadType {codec.payload_type}) with these parameters"
            )
        mapped[codec.payload_type] = cap
    for index, codec in enumerate(rtp_parameters.codecs):
        if not is_rtx(codec.mime_type):
            continue
        apt = _apt(codec.parameters, f"rtpParameters.codecs[{index}]")
        media_cap = mapped[by_pt[apt].payload_type]
        rtx_cap = next(
            (
                cap
                for cap in router_caps.codecs
                if is_rtx(cap.mime_type)
                and cap.parameters.get("apt") == media_cap.preferred_payload_type
            ),
            None,
        )
        if rtx_cap is None or rtx_cap.preferred_payload_type is None:
            raise UnsupportedError(
                f"rtpParameters.codecs[{index}]: the router has no RTX for {media_cap.mime_type}"
            )
        mapped[codec.payload_type] = rtx_cap

    ssrcs = _fresh_ssrcs(len(rtp_parameters.encodings), rng)
    encodings = tuple(
        RtpMappingEncoding(
            mapped_ssrc=mapped_ssrc,
            ssrc=encoding.ssrc,
            rid=encoding.rid,
            rtx_ssrc=encoding.rtx.ssrc if encoding.rtx else None,
            scalability_mode=encoding.scalability_mode,
        )
        for encoding, mapped_ssrc in zip(rtp_parameters.encodings, ssrcs, strict=True)
    )
    codecs: dict[int, int] = {}
    for pt, cap in mapped.items():
        assert cap.preferred_payload_type is not None
        codecs[pt] = cap.preferred_payload_type
    return RtpMapping(
        codecs=codecs,
        encodings=encodings,
        header_extensions={ext.id: ext.uri for ext in rtp_parameters.header_extensions},
    )


def pick_transport_cname(
    current: str | None, rtp_parameters: RtpParameters, *, rng: random.Random | None = None
) -> str:
    """The CNAME a transport gives its producers (mediasoup's rule).

    The transport keeps the first non-empty CNAME a producer brought; before there is one,
    a producer without a CNAME (Chromium's simulcast video has ``cname: ""``) makes the
    transport pick a random one.
    """
    if current:
        return current
    if rtp_parameters.rtcp.cname:
        return rtp_parameters.rtcp.cname
    return f"{(rng or _SYSTEM_RANDOM).getrandbits(32):08x}"


def fill_cname(rtp_parameters: RtpParameters, transport_cname: str | None) -> RtpParameters:
    """``rtp_parameters`` with the transport-wide CNAME in ``rtcp.cname``.

    Every producer of one transport comes from one endpoint, so they share a CNAME (lip
    sync groups by CNAME). With no ``transport_cname`` the producer's own is kept.
    """
    if not transport_cname or rtp_parameters.rtcp.cname == transport_cname:
        return rtp_parameters
    return attrs.evolve(
        rtp_parameters, rtcp=attrs.evolve(rtp_parameters.rtcp, cname=transport_cname)
    )


def get_consumable_rtp_parameters(
    kind: MediaKind,
    producer_params: RtpParameters,
    router_caps: RtpCapabilities,
    mapping: RtpMapping,
) -> RtpParameters:
    """The producer's parameters in the router's terms, the base of every consumer's.

    Router payload types (each media codec followed by the router's RTX for it), with the
    producer's codec parameters and the router's RTCP feedback; the router's header
    extensions of this kind that can be sent (``sendrecv``/``sendonly``); one encoding per
    producer stream carrying its mapped SSRC (no rid, no RTX); the producer's CNAME and msid.
    """
    codecs: list[RtpCodecParameters] = []
    for codec in producer_params.codecs:
        if is_rtx(codec.mime_type):
            continue
        router_pt = mapping.codecs.get(codec.payload_type)
        cap = next((c for c in router_caps.codecs if c.preferred_payload_type == router_pt), None)
        if router_pt is None or cap is None:
            raise UnsupportedError(f"no router codec for payload type {codec.payload_type}")
        codecs.append(
            RtpCodecParameters(
                mime_type=cap.mime_type,
                payload_type=router_pt,
                clock_rate=cap.clock_rate,
                channels=cap.channels,
                parameters=dict(codec.parameters),
                rtcp_feedback=list(cap.rtcp_feedback),
            )
        )
        rtx = next(
            (
                c
                for c in router_caps.codecs
                if is_rtx(c.mime_type) and c.parameters.get("apt") == router_pt
            ),
            None,
        )
        if rtx is not None and rtx.preferred_payload_type is not None:
            codecs.append(
                RtpCodecParameters(
                    mime_type=rtx.mime_type,
                    payload_type=rtx.preferred_payload_type,
                    clock_rate=rtx.clock_rate,
                    parameters=dict(rtx.parameters),
                    rtcp_feedback=list(rtx.rtcp_feedback),
                )
            )
    header_extensions = [
        RtpHeaderExtensionParameters(
            uri=ext.uri, id=ext.preferred_id, encrypt=ext.preferred_encrypt
        )
        for ext in router_caps.header_extensions
        if ext.kind == kind and ext.direction in ("sendrecv", "sendonly")
    ]
    if len(mapping.encodings) != len(producer_params.encodings):
        raise UnsupportedError("the RTP mapping does not belong to these parameters")
    encodings = [
        attrs.evolve(encoding, ssrc=mapped.mapped_ssrc, rid=None, rtx=None, codec_payload_type=None)
        for encoding, mapped in zip(producer_params.encodings, mapping.encodings, strict=True)
    ]
    return RtpParameters(
        codecs=codecs,
        header_extensions=header_extensions,
        encodings=encodings,
        rtcp=RtcpParameters(cname=producer_params.rtcp.cname, reduced_size=True),
        msid=producer_params.msid,
    )


# --------------------------------------------------------------------------------------
# Consumer side


@final
@attrs.frozen
class ScalabilityMode:
    """Spatial and temporal layer counts of a ``scalabilityMode`` such as ``L3T3_KEY``."""

    spatial_layers: int = 1
    temporal_layers: int = 1
    ksvc: bool = False


def parse_scalability_mode(mode: str | None) -> ScalabilityMode:
    """Parse ``L<s>T<t>`` / ``S<s>T<t>`` (optional ``_KEY``); anything else means L1T1."""
    match = _SCALABILITY_MODE.match(mode or "")
    if match is None:
        return ScalabilityMode()
    return ScalabilityMode(int(match[1]), int(match[2]), match[3] is not None)


def consumer_type(consumable_params: RtpParameters) -> Literal["simple", "simulcast", "svc"]:
    """mediasoup's consumer ``type``: several streams are simulcast, spatial layers are SVC."""
    if len(consumable_params.encodings) > 1:
        return "simulcast"
    first = consumable_params.encodings[0] if consumable_params.encodings else None
    if first is not None and parse_scalability_mode(first.scalability_mode).spatial_layers > 1:
        return "svc"
    return "simple"


def _matching_cap(codec: RtpCodecParameters, caps: RtpCapabilities) -> RtpCodecCapability | None:
    return next((cap for cap in caps.codecs if _match_params_cap(codec, cap)), None)


def can_consume(consumable_params: RtpParameters, caps: RtpCapabilities) -> bool:
    """Whether an endpoint with ``caps`` can receive these consumable parameters.

    True when at least one media codec matches (the first matching codec must not be RTX).
    Raises InvalidMessageError when ``caps`` itself is malformed.
    """
    validate_rtp_capabilities(caps)
    matching = [c for c in consumable_params.codecs if _matching_cap(c, caps) is not None]
    return bool(matching) and not is_rtx(matching[0].mime_type)


def _feedback_for(codec: RtpCodecParameters, cap: RtpCodecCapability) -> list[RtcpFeedback]:
    ours = {(fb.type, fb.parameter) for fb in codec.rtcp_feedback}
    return [fb for fb in cap.rtcp_feedback if (fb.type, fb.parameter) in ours]


def _reduce_bwe_feedback(
    codecs: list[RtpCodecParameters], header_extensions: list[RtpHeaderExtensionParameters]
) -> list[RtpCodecParameters]:
    """One bandwidth estimation method per stream: transport-cc if its extension is
    there, else REMB if abs-send-time is, else neither (mediasoup's rule)."""
    uris = {ext.uri for ext in header_extensions}
    if URI_TRANSPORT_CC in uris:
        drop = {"goog-remb"}
    elif URI_ABS_SEND_TIME in uris:
        drop = {"transport-cc"}
    else:
        drop = {"transport-cc", "goog-remb"}
    return [
        attrs.evolve(c, rtcp_feedback=[fb for fb in c.rtcp_feedback if fb.type not in drop])
        for c in codecs
    ]


def _consumer_encoding(
    consumable_params: RtpParameters, ssrc: int, rtx_ssrc: int | None
) -> RtpEncodingParameters:
    streams = consumable_params.encodings
    mode = next((e.scalability_mode for e in streams if e.scalability_mode), None)
    if len(streams) > 1:
        temporal = parse_scalability_mode(streams[0].scalability_mode).temporal_layers
        mode = f"L{len(streams)}T{temporal}"
    bitrates = [e.max_bitrate for e in streams if e.max_bitrate]
    return RtpEncodingParameters(
        ssrc=ssrc,
        rtx=RtxParameters(ssrc=rtx_ssrc) if rtx_ssrc is not None else None,
        scalability_mode=mode,
        max_bitrate=max(bitrates) if bitrates else None,
        dtx=True if any(e.dtx for e in streams) else None,
    )


def get_consumer_rtp_parameters(
    consumable_params: RtpParameters,
    remote_caps: RtpCapabilities,
    *,
    pipe: bool = False,
    mid: str | None = None,
    rng: random.Random | None = None,
) -> RtpParameters:
    """The parameters one consumer receives, cut down to ``remote_caps``.

    Codecs: the consumable codecs the endpoint supports (same order, router payload types),
    RTCP feedback both sides support (then one bandwidth estimation method); an RTX codec
    only when its media codec stays. Header extensions: the consumable ones that the
    endpoint lists with the same id and URI (kind is ignored: mediasoup-client merges its
    audio and video entries by id) and can receive. One encoding with a fresh SSRC, an RTX
    SSRC when RTX stays, ``scalabilityMode`` ``L<streams>T<temporal layers>`` for simulcast,
    the highest ``maxBitrate``; ``rtcp.cname`` never empty; ``msid`` passed through.

    ``pipe=True`` (router to router) is :func:`get_pipe_consumer_rtp_parameters` with RTX
    (``mid`` added), and ignores ``remote_caps``.

    Raises UnsupportedError when no media codec matches, InvalidMessageError when
    ``remote_caps`` is malformed.
    """
    if pipe:
        params = get_pipe_consumer_rtp_parameters(consumable_params, enable_rtx=True, rng=rng)
        return attrs.evolve(params, mid=mid)
    validate_rtp_capabilities(remote_caps)
    codecs: list[RtpCodecParameters] = []
    for codec in consumable_params.codecs:
        cap = _matching_cap(codec, remote_caps)
        if cap is None:
            continue
        codecs.append(attrs.evolve(codec, rtcp_feedback=_feedback_for(codec, cap)))
    media_pts = {c.payload_type for c in codecs if not is_rtx(c.mime_type)}
    codecs = [c for c in codecs if not is_rtx(c.mime_type) or c.parameters.get("apt") in media_pts]
    if not codecs or is_rtx(codecs[0].mime_type):
        raise UnsupportedError("no compatible media codecs: the endpoint cannot consume this")
    rtx_kept = any(is_rtx(c.mime_type) for c in codecs)

    receivable = {
        (ext.uri, ext.preferred_id)
        for ext in remote_caps.header_extensions
        if ext.direction in ("sendrecv", "recvonly")
    }
    header_extensions = [
        ext for ext in consumable_params.header_extensions if (ext.uri, ext.id) in receivable
    ]
    codecs = _reduce_bwe_feedback(codecs, header_extensions)

    avoid = [e.ssrc for e in consumable_params.encodings if e.ssrc is not None]
    ssrcs = _fresh_ssrcs(2 if rtx_kept else 1, rng, avoid)
    encoding = _consumer_encoding(consumable_params, ssrcs[0], ssrcs[1] if rtx_kept else None)

    cname = consumable_params.rtcp.cname or f"{(rng or _SYSTEM_RANDOM).getrandbits(32):08x}"
    return RtpParameters(
        codecs=codecs,
        header_extensions=header_extensions,
        encodings=[encoding],
        rtcp=RtcpParameters(cname=cname, reduced_size=True),
        mid=mid,
        msid=consumable_params.msid,
    )


_PIPE_DROPPED_EXTENSIONS = frozenset({URI_MID, URI_ABS_SEND_TIME, URI_TRANSPORT_CC})


def get_pipe_consumer_rtp_parameters(
    consumable_params: RtpParameters,
    *,
    enable_rtx: bool = False,
    rng: random.Random | None = None,
) -> RtpParameters:
    """The parameters of a pipe consumer (router to router), mediasoup's rule.

    Every consumable codec (RTX ones only with ``enable_rtx``), their RTCP feedback cut to
    PLI and FIR (plus generic NACK with ``enable_rtx``); the consumable header extensions
    but MID and the bandwidth-estimation ones (abs-send-time, transport-cc); every stream
    as an encoding with its consumable SSRC (the router's SSRC of that producer stream),
    with ``enable_rtx`` a fresh RTX SSRC each. The pipe producer on the other router is
    created from exactly these parameters, so it knows every SSRC in advance.
    """
    keep_fb = {("nack", "pli"), ("ccm", "fir")}
    if enable_rtx:
        keep_fb.add(("nack", ""))
    codecs = [
        attrs.evolve(
            c, rtcp_feedback=[fb for fb in c.rtcp_feedback if (fb.type, fb.parameter) in keep_fb]
        )
        for c in consumable_params.codecs
        if enable_rtx or not is_rtx(c.mime_type)
    ]
    streams = consumable_params.encodings
    rtx_ssrcs: list[int | None] = [None] * len(streams)
    if enable_rtx:
        avoid = [e.ssrc for e in streams if e.ssrc is not None]
        rtx_ssrcs = list(_fresh_ssrcs(len(streams), rng, avoid))
    encodings = [
        attrs.evolve(encoding, rtx=RtxParameters(ssrc=rtx_ssrc) if rtx_ssrc is not None else None)
        for encoding, rtx_ssrc in zip(streams, rtx_ssrcs, strict=True)
    ]
    return RtpParameters(
        codecs=codecs,
        header_extensions=[
            ext
            for ext in consumable_params.header_extensions
            if ext.uri not in _PIPE_DROPPED_EXTENSIONS
        ],
        encodings=encodings,
        rtcp=consumable_params.rtcp,
        msid=consumable_params.msid,
    )
