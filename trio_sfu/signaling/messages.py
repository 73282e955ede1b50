"""PROTOCOL.md's messages as frozen attrs classes, and the frame codec.

Every request ``data``, answer ``data`` and notification ``data`` of the protocol has a class
here; :mod:`trio_sfu.wire` (the one converter) turns them into camelCase JSON and back. The
mediasoup parameter objects inside them are :mod:`trio_sfu.ortc.types`.

Untrusted input enters through :func:`decode_frame_untrusted` (text -> JSON object),
:func:`parse_envelope_untrusted` (object -> :class:`Envelope`, after
:func:`check_frame_values_untrusted`: every string representable in UTF-8, every number one
any JSON reader holds) and :func:`parse_request_untrusted` (envelope -> typed request data,
whose RTP parameters and capabilities are range-checked here, before any engine or worker
sees them). They raise only :class:`~trio_sfu.errors.SfuError` subclasses whose ``code`` is
the answer's error code. Outgoing frames come from :func:`encode_message`, which never fails.

No trio import: this module is pure.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final, Literal, final

import attrs

from trio_sfu.errors import InvalidMessageError
from trio_sfu.ortc.negotiation import validate_rtp_capabilities, validate_rtp_parameters
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

#: The largest integer (either sign) a frame may hold: what every JSON reader holds
#: exactly, an IEEE 754 double's 53-bit significand (RFC 7493, I-JSON, section 2.2). It
#: also fits the worker channel's 64-bit MessagePack integers.
MAX_SAFE_INTEGER: Final = 2**53 - 1

#: The deepest nesting of objects and arrays in a frame (the envelope counts: ``data`` is
#: at depth 1). A request of the protocol nests some ten deep; ``appData`` is the client's
#: own. ``json.loads`` reads nesting that ``json.dumps`` cannot write back out (Python's
#: recursion limit), and ``appData`` goes out to the other peers.
MAX_DEPTH: Final = 64

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
    """Best-effort ``(requestId, type)`` of a frame, to address an error answer: each
    only if the answer can carry it (a string that UTF-8 can represent)."""
    request_id = obj.get("requestId")
    if not (
        isinstance(request_id, str)
        and 1 <= len(request_id) <= MAX_REQUEST_ID
        and is_representable(request_id)
    ):
        request_id = None
    rtype = obj.get("type")
    return request_id, rtype if isinstance(rtype, str) and is_representable(rtype) else None


#: A UTF-16 surrogate code point. ``json.loads`` makes one of a ``"\ud800"`` escape that
#: is not half of a pair; no UTF-8 text can hold it.
_SURROGATE: Final = re.compile("[\\ud800-\\udfff]")


def is_representable(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (it holds no lone surrogate). O(1) for
    ASCII text (CPython knows a string is ASCII)."""
    return text.isascii() or _SURROGATE.search(text) is None


def _field_name(path: tuple[str | int, ...]) -> str:
    """``("data", "codecs", 0, "mimeType")`` -> ``data.codecs[0].mimeType``."""
    name = ""
    for part in path:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else part
    return name


def check_frame_values_untrusted(obj: Any) -> None:
    """Check every value of a decoded frame against RFC 7493 (I-JSON) 2.1 and 2.2: each
    string, object keys included, can be written as UTF-8, and each number is one that
    any JSON reader holds (an integer within :data:`MAX_SAFE_INTEGER`, a finite float);
    and that it nests at most :data:`MAX_DEPTH` deep.

    ``json.loads`` reads the escape ``"\\ud800"`` as a lone surrogate and ``1e400`` as
    infinity; echoed in an answer or relayed to the other peers (a display name, an
    ``appData``), either would make a frame that cannot be sent, and an integer past 64
    bits cannot go to a worker process. Raises :class:`InvalidMessageError` naming the
    first such field (``data.appData.a[2]``). Costs about what ``json.loads`` of the frame
    cost; nesting costs no recursion.
    """
    if not _values_allowed(obj):
        _raise_for_values(obj)


def _values_allowed(obj: Any) -> bool:
    """The rules of :func:`check_frame_values_untrusted` for a value of ``json.loads``,
    fast: containers are visited once, a leaf costs a type test (an ASCII string, most of
    them, is known to be ASCII in O(1))."""
    search = _SURROGATE.search
    isfinite = math.isfinite
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > MAX_DEPTH:
            return False
        items: Any
        if type(container) is dict:
            for key in container:
                if not key.isascii() and search(key):
                    return False
            items = container.values()
        else:
            items = container
        for value in items:
            kind = type(value)
            if kind is str:
                if not value.isascii() and search(value):
                    return False
            elif kind is int:
                if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                    return False
            elif kind is float:
                if not isfinite(value):
                    return False
            elif kind is dict or kind is list:
                stack.append((value, depth + 1))
    return True


def _raise_for_values(obj: Any) -> None:
    """Find what :func:`_values_allowed` refused, and raise naming its field (slow: it
    carries every value's path)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(obj, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if not is_representable(value):
                raise _unrepresentable(path, "the string holds a lone UTF-16 surrogate")
        elif isinstance(value, dict):
            if len(path) >= MAX_DEPTH:
                raise _too_deep(path)
            for key, item in value.items():
                here = (*path, key)
                if not is_representable(key):
                    raise _unrepresentable(here, "the name holds a lone UTF-16 surrogate")
                stack.append((item, here))
        elif isinstance(value, list):
            if len(path) >= MAX_DEPTH:
                raise _too_deep(path)
            stack.extend((item, (*path, index)) for index, item in enumerate(value))
        elif isinstance(value, bool):
            pass
        elif isinstance(value, int):
            if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                raise InvalidMessageError(
                    f"invalid field {_field_name(path)!r}: an integer beyond "
                    f"+-{MAX_SAFE_INTEGER} (2^53-1), which not every JSON reader holds exactly"
                )
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidMessageError(
                f"invalid field {_field_name(path)!r}: a number too large to hold (infinity)"
            )
    raise InvalidMessageError("invalid frame: a value breaks the I-JSON rules")


def _too_deep(path: tuple[str | int, ...]) -> InvalidMessageError:
    return InvalidMessageError(
        f"invalid field {_field_name(path)!r}: nested deeper than {MAX_DEPTH} levels"
    )


def _unrepresentable(path: tuple[str | int, ...], what: str) -> InvalidMessageError:
    # repr() writes the surrogate as its escape: the message itself can be sent.
    return InvalidMessageError(
        f"invalid field {_field_name(path)!r}: {what}, which UTF-8 cannot represent"
    )


def parse_envelope_untrusted(obj: dict[str, Any]) -> Envelope:
    """Check a frame's values (:func:`check_frame_values_untrusted`), then its envelope.
    ``data`` may be left out (it then means ``{}``).

    Raises :class:`InvalidMessageError` naming the field, or :class:`UnknownTypeError`.
    """
    check_frame_values_untrusted(obj)
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
    """Structure an envelope's ``data`` into its request class, and check the values of
    its RTP parameters (``rtc:produce``) or capabilities (``rtc:consume``): SSRCs of 32
    bits, payload types of 7, clock rates and bitrates positive and bounded, integer codec
    parameters of 32 bits, at most :data:`~trio_sfu.ortc.negotiation.MAX_ENCODINGS`
    encodings (see :mod:`trio_sfu.ortc.negotiation`). Here, not in the engine, so that the
    in-process worker and worker processes answer alike.

    Raises :class:`InvalidMessageError` whose message names the field (``data.kind``).
    """
    cls = REQUESTS[envelope.type][0]
    known = {wire_name(a) for a in attrs.fields(cls)}
    extra = sorted(set(envelope.data) - known)
    if extra:
        raise InvalidMessageError(f"invalid field {'data.' + extra[0]!r}: unknown field")
    try:
        request = structure_untrusted(envelope.data, cls)
    except InvalidMessageError as exc:
        raise InvalidMessageError(_in_data(exc.message)) from None
    if isinstance(request, ProduceRequest):
        validate_rtp_parameters(
            request.rtp_parameters, kind=request.kind, where="data.rtpParameters"
        )
    elif isinstance(request, ConsumeRequest):
        validate_rtp_capabilities(request.rtp_capabilities, where="data.rtpCapabilities")
    return request


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
    """The text frame of an outgoing message. Never fails for JSON-shaped ``message``: a
    float that is not finite goes out as ``null``, and a string that UTF-8 cannot
    represent (a lone surrogate) as its ``\\u`` escape, so the whole frame in ASCII.
    Requests are checked so that neither comes from a client
    (:func:`check_frame_values_untrusted`)."""
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or infinity: JSON has no way to write them
        message = _finite(message)
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if not is_representable(text):
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text


def _finite(value: Any) -> Any:
    """A copy of JSON-shaped ``value`` with every float that is not finite as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
