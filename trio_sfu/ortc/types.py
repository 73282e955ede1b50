"""mediasoup v3's parameter objects as frozen attrs classes.

Each class unstructures (through :mod:`trio_sfu.wire`) to exactly the JSON shape of the
mediasoup v3 TypeScript type of the same name ("RTP Parameters and Capabilities",
"WebRtcTransport", "SCTP Parameters" in the mediasoup documentation), so that an unmodified
mediasoup-client accepts what we send and we accept what it sends. Attribute names are
snake_case; the wire converter renames them to camelCase (``OS``/``MIS`` are explicit).

These classes check shapes and JSON types only. Value rules (payload types 0-127, header
extension ids, unique rids, ...) are checked by :mod:`trio_sfu.ortc.negotiation`.

Sans-IO: no trio import.
"""

from __future__ import annotations

from typing import Literal, TypeAlias, final

import attrs

__all__ = [
    "CodecParameterValue",
    "DtlsFingerprint",
    "DtlsParameters",
    "DtlsRole",
    "FingerprintAlgorithm",
    "IceCandidate",
    "IceParameters",
    "MediaKind",
    "NativeRtpCapabilities",
    "NativeRtpCodecCapability",
    "NativeRtpHeaderExtensionCapability",
    "NumSctpStreams",
    "Priority",
    "RtcpFeedback",
    "RtcpParameters",
    "RtpCapabilities",
    "RtpCodecCapability",
    "RtpCodecParameters",
    "RtpEncodingParameters",
    "RtpHeaderExtension",
    "RtpHeaderExtensionDirection",
    "RtpHeaderExtensionParameters",
    "RtpParameters",
    "RtxParameters",
    "SctpCapabilities",
    "SctpParameters",
    "SctpStreamParameters",
    "SrtpCryptoSuite",
    "SrtpParameters",
    "TransportTuple",
]

MediaKind: TypeAlias = Literal["audio", "video"]
RtpHeaderExtensionDirection: TypeAlias = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
Priority: TypeAlias = Literal["very-low", "low", "medium", "high"]
DtlsRole: TypeAlias = Literal["auto", "client", "server"]
FingerprintAlgorithm: TypeAlias = Literal["sha-1", "sha-224", "sha-256", "sha-384", "sha-512"]
SrtpCryptoSuite: TypeAlias = Literal[
    "AEAD_AES_256_GCM", "AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"
]
#: Codec ``parameters`` values: fmtp values, numbers when they look like numbers (``apt: 101``).
CodecParameterValue: TypeAlias = str | int | float


# --------------------------------------------------------------------------------------
# RTP capabilities (what a router or an endpoint can send/receive)


@final
@attrs.frozen
class RtcpFeedback:
    """One ``a=rtcp-fb`` entry: ``type`` ("nack", "ccm", ...) and ``parameter`` ("pli")."""

    type: str
    parameter: str = ""


@final
@attrs.frozen
class RtpCodecCapability:
    """A codec a router or endpoint supports (mediasoup ``RtpCodecCapability``)."""

    kind: MediaKind
    mime_type: str
    clock_rate: int
    channels: int | None = None
    parameters: dict[str, CodecParameterValue] = attrs.field(factory=dict)
    rtcp_feedback: list[RtcpFeedback] = attrs.field(factory=list)
    preferred_payload_type: int | None = None


@final
@attrs.frozen
class RtpHeaderExtension:
    """A header extension capability with its preferred id (mediasoup ``RtpHeaderExtension``)."""

    kind: MediaKind
    uri: str
    preferred_id: int
    preferred_encrypt: bool = False
    direction: RtpHeaderExtensionDirection = "sendrecv"


@final
@attrs.frozen
class RtpCapabilities:
    """Codecs and header extensions (``router.rtpCapabilities``, ``device.rtpCapabilities``)."""

    codecs: list[RtpCodecCapability] = attrs.field(factory=list)
    header_extensions: list[RtpHeaderExtension] = attrs.field(factory=list)


# --------------------------------------------------------------------------------------
# RTP parameters (what one producer sends / one consumer receives)


@final
@attrs.frozen
class RtpCodecParameters:
    """A codec in use, with its payload type (mediasoup ``RtpCodecParameters``)."""

    mime_type: str
    payload_type: int
    clock_rate: int
    channels: int | None = None
    parameters: dict[str, CodecParameterValue] = attrs.field(factory=dict)
    rtcp_feedback: list[RtcpFeedback] = attrs.field(factory=list)


@final
@attrs.frozen
class RtpHeaderExtensionParameters:
    """A header extension in use, with its negotiated id."""

    uri: str
    id: int
    encrypt: bool = False
    parameters: dict[str, CodecParameterValue] = attrs.field(factory=dict)


@final
@attrs.frozen
class RtxParameters:
    """The RTX stream of an encoding."""

    ssrc: int


@final
@attrs.frozen
class RtpEncodingParameters:
    """One RTP stream (a simulcast layer, or the single stream).

    mediasoup's fields plus those mediasoup-client passes through from
    ``RTCRtpEncodingParameters`` (``active``, ``priority``, ...).
    """

    ssrc: int | None = None
    rid: str | None = None
    codec_payload_type: int | None = None
    rtx: RtxParameters | None = None
    dtx: bool | None = None
    scalability_mode: str | None = None
    scale_resolution_down_by: float | None = None
    max_bitrate: int | None = None
    max_framerate: float | None = None
    adaptive_ptime: bool | None = None
    priority: Priority | None = None
    network_priority: Priority | None = None
    active: bool | None = None


@final
@attrs.frozen
class RtcpParameters:
    """RTCP settings of a stream: CNAME, reduced-size (RFC 5506), mux."""

    cname: str | None = None
    reduced_size: bool | None = None
    mux: bool | None = None


@final
@attrs.frozen
class RtpParameters:
    """What a producer sends or a consumer receives (mediasoup ``RtpParameters``)."""

    codecs: list[RtpCodecParameters]
    header_extensions: list[RtpHeaderExtensionParameters] = attrs.field(factory=list)
    encodings: list[RtpEncodingParameters] = attrs.field(factory=list)
    rtcp: RtcpParameters = attrs.field(factory=RtcpParameters)
    mid: str | None = None
    msid: str | None = None


# --------------------------------------------------------------------------------------
# WebRtcTransport


@final
@attrs.frozen
class IceParameters:
    """The server's ICE credentials (ICE-lite)."""

    username_fragment: str
    password: str
    ice_lite: bool | None = None


@final
@attrs.frozen
class IceCandidate:
    """A server candidate. mediasoup sends the address both as ``address`` and ``ip``."""

    foundation: str
    priority: int
    address: str
    ip: str
    port: int
    type: Literal["host", "srflx", "prflx", "relay"]
    protocol: Literal["udp", "tcp"]
    tcp_type: Literal["active", "passive", "so"] | None = None


@final
@attrs.frozen
class DtlsFingerprint:
    """A certificate fingerprint, ``value`` as upper-case colon-separated hex."""

    algorithm: FingerprintAlgorithm
    value: str


@final
@attrs.frozen
class DtlsParameters:
    """DTLS role and certificate fingerprints."""

    fingerprints: list[DtlsFingerprint]
    role: DtlsRole | None = None


# --------------------------------------------------------------------------------------
# PlainTransport


@final
@attrs.frozen
class SrtpParameters:
    """SRTP keys exchanged in signaling (a PlainTransport with ``enableSrtp``): the crypto
    suite and the master key followed by the master salt, in base64."""

    crypto_suite: SrtpCryptoSuite
    key_base64: str


@final
@attrs.frozen
class TransportTuple:
    """Where a PlainTransport (or its RTCP) listens, and the remote end once known.
    mediasoup sends the local IP both as ``localAddress`` and (older) ``localIp``."""

    local_address: str
    local_ip: str
    local_port: int
    protocol: Literal["udp", "tcp"] = "udp"
    remote_ip: str | None = None
    remote_port: int | None = None


# --------------------------------------------------------------------------------------
# SCTP (DataChannels)


@final
@attrs.frozen
class NumSctpStreams:
    """Outgoing (``OS``) and maximum incoming (``MIS``) SCTP streams."""

    os: int = attrs.field(metadata={"wire": "OS"})
    mis: int = attrs.field(metadata={"wire": "MIS"})


@final
@attrs.frozen
class SctpCapabilities:
    """``device.sctpCapabilities``."""

    num_streams: NumSctpStreams


@final
@attrs.frozen
class SctpParameters:
    """The server's SCTP association parameters for a transport."""

    port: int
    os: int = attrs.field(metadata={"wire": "OS"})
    mis: int = attrs.field(metadata={"wire": "MIS"})
    max_message_size: int


@final
@attrs.frozen
class SctpStreamParameters:
    """One DataChannel's SCTP stream (``producedata`` / ``consumeData``)."""

    stream_id: int
    ordered: bool | None = None
    max_packet_life_time: int | None = None
    max_retransmits: int | None = None


# --------------------------------------------------------------------------------------
# The browser's own RTCRtpSender/RTCRtpReceiver.getCapabilities() (W3C shape). Not part of
# the signaling protocol; useful for tests and for the Python client.


@final
@attrs.frozen
class NativeRtpCodecCapability:
    """W3C ``RTCRtpCodecCapability`` (no kind, no payload type, fmtp as one string)."""

    mime_type: str
    clock_rate: int
    channels: int | None = None
    sdp_fmtp_line: str | None = None


@final
@attrs.frozen
class NativeRtpHeaderExtensionCapability:
    """W3C ``RTCRtpHeaderExtensionCapability``."""

    uri: str
    direction: RtpHeaderExtensionDirection | None = None


@final
@attrs.frozen
class NativeRtpCapabilities:
    """W3C ``RTCRtpCapabilities`` for one kind."""

    codecs: list[NativeRtpCodecCapability]
    header_extensions: list[NativeRtpHeaderExtensionCapability]
