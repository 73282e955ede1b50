"""PROTOCOL.md's messages as frozen attrs classes, and the frame codec.

Every request ``data``, answer ``data`` and notification ``data`` of the protocol has a class
here; :mod:`trio_sfu.wire` (the one converter) turns them into camelCase JSON and back. The
mediasoup parameter objects inside them are :mod:`trio_sfu.ortc.types`.

Untrusted input enters through :func:`decode_frame_untrusted` (text -> JSON object),
:func:`parse_envelope_untrusted` (object -> :class:`Envelope`) and
:func:`parse_request_untrusted` (envelope -> typed request data). They raise only
:class:`~trio_sfu.errors.SfuError` subclasses whose ``code`` is the answer's error code.

No trio import: this module is pure.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, Literal, final

import attrs

from trio_sfu.errors import InvalidMessageError
from trio_sfu.ortc.types import (
    DtlsParameters,
    IceCandidate,
    IceParameters,
    RtpCapabilities,
    RtpParameters,
    SctpCapabilities,
    SctpParameters,
    SrtpCryptoSuite,
    SrtpParameters,
    TransportTuple,
)
from trio_sfu.signaling.errors import InvalidJsonError, UnknownTypeError
from trio_sfu.wire import structure_untrusted, unstructure, wire_name

Kind = Literal["audio", "video"]
Direction = Literal["send", "recv"]

#: Longest accepted ``requestId`` (PROTOCOL.md: a string of 1-64 characters).
MAX_REQUEST_ID: Final = 64

# ---- requests (client -> server), the ``data`` of each request type -------------------


@final
@attrs.frozen
class JoinRequest:
    meeting_id: str
    token: str | None = None
    display_name: str | None = None


@final
@attrs.frozen
class MeetingRequest:
    """``rtc:getRouterRtpCapabilities`` and ``rtc:leave``."""

    meeting_id: str


@final
@attrs.frozen
class CreateTransportRequest:
    meeting_id: str
    direction: Direction
    sctp_capabilities: SctpCapabilities | None = None
    force_tcp: bool | None = None


@final
@attrs.frozen
class ConnectTransportRequest:
    meeting_id: str
    transport_id: str
    dtls_parameters: DtlsParameters


@final
@attrs.frozen
class CreatePlainTransportRequest:
    """``rtc:createPlainTransport``: mediasoup's PlainTransport options (the listen IP is
    the server's). Without ``direction`` the transport may both produce and consume."""

    meeting_id: str
    rtcp_mux: bool | None = None
    comedia: bool | None = None
    enable_srtp: bool | None = None
    srtp_crypto_suite: SrtpCryptoSuite | None = None
    direction: Direction | None = None
    app_data: dict[str, Any] | None = None


@final
@attrs.frozen
class ConnectPlainTransportRequest:
    """``rtc:connectPlainTransport``: the remote address (ignored with comedia) and, with
    SRTP, the remote key."""

    meeting_id: str
    transport_id: str
    ip: str | None = None
    port: int | None = None
    rtcp_port: int | None = None
    srtp_parameters: SrtpParameters | None = None


@final
@attrs.frozen
class TransportRequest:
    """``rtc:restartIce``."""

    meeting_id: str
    transport_id: str


@final
@attrs.frozen
class ProduceRequest:
    meeting_id: str
    transport_id: str
    kind: Kind
    rtp_parameters: RtpParameters
    app_data: dict[str, Any] | None = None
    paused: bool | None = None


@final
@attrs.frozen
class ProducerRequest:
    """``rtc:closeProducer``, ``rtc:pauseProducer``, ``rtc:resumeProducer``."""

    meeting_id: str
    producer_id: str


@final
@attrs.frozen
class ConsumeRequest:
    meeting_id: str
    producer_id: str
    rtp_capabilities: RtpCapabilities
    transport_id: str | None = None
    paused: bool | None = None


@final
@attrs.frozen
class ConsumerRequest:
    """``rtc:resumeConsumer``, ``rtc:pauseConsumer``, ``rtc:closeConsumer``."""

    meeting_id: str
    consumer_id: str


@final
@attrs.frozen
class SetPreferredLayersRequest:
    meeting_id: str
    consumer_id: str
    spatial_layer: int
    temporal_layer: int | None = None


@final
@attrs.frozen
class GetStatsRequest:
    meeting_id: str
    id: str


Request = (
    JoinRequest
    | MeetingRequest
    | CreateTransportRequest
    | ConnectTransportRequest
    | CreatePlainTransportRequest
    | ConnectPlainTransportRequest
    | TransportRequest
    | ProduceRequest
    | ProducerRequest
    | ConsumeRequest
    | ConsumerRequest
    | SetPreferredLayersRequest
    | GetStatsRequest
)

#: Request type -> (class of its ``data``, type of its success answer).
REQUESTS: Final[dict[str, tuple[type[Request], str]]] = {
    "rtc:join": (JoinRequest, "rtc:joined"),
    "rtc:getRouterRtpCapabilities": (MeetingRequest, "rtc:routerRtpCapabilities"),
    "rtc:createTransport": (CreateTransportRequest, "rtc:transportCreated"),
    "rtc:connectTransport": (ConnectTransportRequest, "rtc:transportConnected"),
    "rtc:restartIce": (TransportRequest, "rtc:iceRestarted"),
    "rtc:produce": (ProduceRequest, "rtc:produced"),
    "rtc:closeProducer": (ProducerRequest, "rtc:producerClosed"),
    "rtc:pauseProducer": (ProducerRequest, "rtc:producerPaused"),
    "rtc:resumeProducer": (ProducerRequest, "rtc:producerResumed"),
    "rtc:consume": (ConsumeRequest, "rtc:consumed"),
    "rtc:resumeConsumer": (ConsumerRequest, "rtc:consumerResumed"),
    "rtc:pauseConsumer": (ConsumerRequest, "rtc:consumerPaused"),
    "rtc:closeConsumer": (ConsumerRequest, "rtc:consumerClosed"),
    "rtc:setPreferredLayers": (SetPreferredLayersRequest, "rtc:preferredLayersSet"),
    "rtc:getStats": (GetStatsRequest, "rtc:stats"),
    "rtc:leave": (MeetingRequest, "rtc:left"),
    # Additions (docs/protocol-additions.md).
    "rtc:createPlainTransport": (CreatePlainTransportRequest, "rtc:plainTransportCreated"),
    "rtc:connectPlainTransport": (ConnectPlainTransportRequest, "rtc:plainTransportConnected"),
}

# ---- answers (server -> client), the ``data`` of each success answer ------------------


@final
@attrs.frozen
class ProducerInfo:
    producer_id: str
    kind: Kind
    app_data: dict[str, Any]
    paused: bool


@final
@attrs.frozen
class PeerInfo:
    """A peer as others see it (``rtc:joined`` ``peers`` and ``rtc:peerJoined``)."""

    peer_id: str
    user_id: str
    display_name: str
    producers: list[ProducerInfo]


@final
@attrs.frozen
class IceServer:
    """W3C ``RTCIceServer``."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


@final
@attrs.frozen
class JoinedAnswer:
    peer_id: str
    user_id: str
    peers: list[PeerInfo]
    ice_servers: list[IceServer]


@final
@attrs.frozen
class RouterRtpCapabilitiesAnswer:
    rtp_capabilities: RtpCapabilities


@final
@attrs.frozen
class TransportCreatedAnswer:
    transport_id: str
    direction: Direction
    ice_parameters: IceParameters
    ice_candidates: list[IceCandidate]
    dtls_parameters: DtlsParameters
    sctp_parameters: SctpParameters | None = None


@final
@attrs.frozen
class PlainTransportAnswer:
    """``rtc:plainTransportCreated`` and ``rtc:plainTransportConnected``."""

    transport_id: str
    tuple: TransportTuple
    rtcp_mux: bool
    comedia: bool
    rtcp_tuple: TransportTuple | None = None
    srtp_parameters: SrtpParameters | None = None
    direction: Direction | None = None


@final
@attrs.frozen
class TransportIdAnswer:
    """``rtc:transportConnected``."""

    transport_id: str


@final
@attrs.frozen
class IceRestartedAnswer:
    transport_id: str
    ice_parameters: IceParameters


@final
@attrs.frozen
class ProducerIdAnswer:
    """``rtc:produced``, ``rtc:producerClosed``, ``rtc:producerPaused``/``Resumed``."""

    producer_id: str


@final
@attrs.frozen
class ConsumedAnswer:
    consumer_id: str
    producer_id: str
    kind: Kind
    rtp_parameters: RtpParameters
    type: Literal["simple", "simulcast"]
    producer_paused: bool


@final
@attrs.frozen
class ConsumerIdAnswer:
    """``rtc:consumerResumed``, ``rtc:consumerPaused``, ``rtc:consumerClosed``."""

    consumer_id: str


@final
@attrs.frozen
class PreferredLayers:
    spatial_layer: int
    temporal_layer: int


@final
@attrs.frozen
class PreferredLayersSetAnswer:
    consumer_id: str
    preferred_layers: PreferredLayers


@final
@attrs.frozen
class StatsAnswer:
    id: str
    stats: list[dict[str, Any]]


@final
@attrs.frozen
class LeftAnswer:
    """``rtc:left``: an empty object."""


# ---- notifications (server -> client) ----------------------------------------------------


@final
@attrs.frozen
class PeerLeftNotice:
    peer_id: str


@final
@attrs.frozen
class NewProducerNotice:
    producer_id: str
    peer_id: str
    kind: Kind
    app_data: dict[str, Any]


@final
@attrs.frozen
class ProducerNotice:
    """``rtc:producerClosed``, ``rtc:producerPaused``, ``rtc:producerResumed``."""

    producer_id: str
    peer_id: str


@final
@attrs.frozen
class ConsumerClosedNotice:
    consumer_id: str
    producer_id: str
    reason: str


@final
@attrs.frozen
class ConsumerLayersChangedNotice:
    consumer_id: str
    # No defaults: both go out as ``null`` while video is paused for the network.
    spatial_layer: int | None
    temporal_layer: int | None


@final
@attrs.frozen
class NetworkQualityNotice:
    transport_id: str
    packet_loss: float
    rtt_ms: float
    quality: Literal["good", "fair", "poor", "bad"]


@final
@attrs.frozen
class ActiveSpeakerNotice:
    peer_id: str
    producer_id: str
    volume: float


@final
@attrs.frozen
class RoomClosedNotice:
    meeting_id: str
    reason: str


@final
@attrs.frozen
class TransportClosedNotice:
    """``rtc:transportClosed`` (a protocol addition, docs/protocol-additions.md): the
    server closed one of the peer's transports by itself (``connect_timeout``,
    ``dtls_failed: ...``, ``consent_timeout``)."""

    transport_id: str
    reason: str


# ---- frames ----------------------------------------------------------------------------


@final
@attrs.frozen
class Envelope:
    """A request frame whose envelope passed the schema; ``data`` is not checked yet."""

    type: str
    request_id: str | None
    data: dict[str, Any]


_ENVELOPE_KEYS: Final = frozenset({"type", "requestId", "data"})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_frame_untrusted(text: str) -> dict[str, Any]:
    """Decode one text frame into a JSON object.

    Raises :class:`InvalidJsonError` for text that is not JSON (``NaN`` and ``Infinity``
    included), :class:`InvalidMessageError` for JSON that is not an object.
    """
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidJsonError(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidMessageError(f"a frame must be a JSON object, not {type(value).__name__}")
    return value


def frame_context(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    """Best-effort ``(requestId, type)`` of a frame, to address an error answer."""
    request_id = obj.get("requestId")
    if not (isinstance(request_id, str) and 1 <= len(request_id) <= MAX_REQUEST_ID):
        request_id = None
    rtype = obj.get("type")
    return request_id, rtype if isinstance(rtype, str) else None


def parse_envelope_untrusted(obj: dict[str, Any]) -> Envelope:
    """Check a frame's envelope. ``data`` may be left out (it then means ``{}``).

    Raises :class:`InvalidMessageError` naming the field, or :class:`UnknownTypeError`.
    """
    extra = sorted(set(obj) - _ENVELOPE_KEYS)
    if extra:
        raise InvalidMessageError(f"invalid field {extra[0]!r}: unknown envelope field")
    rtype = obj.get("type")
    if not isinstance(rtype, str):
        raise InvalidMessageError("invalid field 'type': a string is required")
    request_id = obj.get("requestId")
    if request_id is not None and not (
        isinstance(request_id, str) and 1 <= len(request_id) <= MAX_REQUEST_ID
    ):
        raise InvalidMessageError(
            f"invalid field 'requestId': a string of 1-{MAX_REQUEST_ID} characters is required"
        )
    data = obj.get("data", {})
    if not isinstance(data, dict):
        raise InvalidMessageError("invalid field 'data': a JSON object is required")
    if rtype not in REQUESTS:
        raise UnknownTypeError(f"unknown message type {rtype!r}")
    return Envelope(type=rtype, request_id=request_id, data=data)


def parse_request_untrusted(envelope: Envelope) -> Request:
    """Structure an envelope's ``data`` into its request class.

    Raises :class:`InvalidMessageError` whose message names the field (``data.kind``).
    """
    cls = REQUESTS[envelope.type][0]
    known = {wire_name(a) for a in attrs.fields(cls)}
    extra = sorted(set(envelope.data) - known)
    if extra:
        raise InvalidMessageError(f"invalid field {'data.' + extra[0]!r}: unknown field")
    try:
        return structure_untrusted(envelope.data, cls)
    except InvalidMessageError as exc:
        raise InvalidMessageError(_in_data(exc.message)) from None


_FIELD_MESSAGE: Final = re.compile(r"invalid field (['\"])(.*)\1: (.*)", re.DOTALL)


def _in_data(message: str) -> str:
    match = _FIELD_MESSAGE.fullmatch(message)
    if match is None:
        return message
    return f"invalid field {'data.' + match.group(2)!r}: {match.group(3)}"


def answer_type(request_type: str) -> str:
    """The success answer type of a request type."""
    return REQUESTS[request_type][1]


def answer_message(rtype: str, request_id: str | None, data: Any) -> dict[str, Any]:
    """A success answer to a ``rtype`` request (``data`` is an attrs answer object)."""
    message: dict[str, Any] = {"type": answer_type(rtype)}
    if request_id is not None:
        message["requestId"] = request_id
    message["data"] = unstructure(data)
    return message


def error_message(
    code: str, text: str, *, request_id: str | None, request: str | None
) -> dict[str, Any]:
    """An ``rtc:error`` answer."""
    message: dict[str, Any] = {"type": "rtc:error"}
    if request_id is not None:
        message["requestId"] = request_id
    if request is not None:
        message["request"] = request
    message["code"] = code
    message["error"] = text
    return message


def notification_message(ntype: str, data: Any) -> dict[str, Any]:
    """A notification (never carries ``requestId``)."""
    return {"type": ntype, "data": unstructure(data)}


def encode_message(message: dict[str, Any]) -> str:
    """The text frame of an outgoing message."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
