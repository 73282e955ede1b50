"""The media engine's async, id-based API: the only way signaling reaches media.

Signaling (rooms, sessions, auth) never holds a Router, Transport, Producer or Consumer
object: it holds ids and calls :class:`MediaEngine`. That keeps the door open to running
workers in other processes behind a channel without touching signaling.

Events flow the other way through the ``on_event`` callback given to
:meth:`MediaEngine.create_router`. The callback is synchronous and must never block (the
signaling side queues the event with ``send_nowait``); it is called from engine tasks.

Every method raises :class:`~trio_sfu.errors.SfuError` subclasses for refusals
(``NotFoundError`` for unknown ids, ``InvalidStateError``, ``UnsupportedError``,
``LimitExceededError``) and nothing else for expected failures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import attrs

if TYPE_CHECKING:
    from trio_sfu.ortc.types import (
        DtlsParameters,
        IceCandidate,
        IceParameters,
        RtpCapabilities,
        RtpParameters,
    )

Kind = Literal["audio", "video"]
ConsumerType = Literal["simple", "simulcast"]


@attrs.frozen
class TransportInfo:
    transport_id: str
    ice_parameters: IceParameters
    ice_candidates: list[IceCandidate]
    dtls_parameters: DtlsParameters


@attrs.frozen
class ConsumerInfo:
    consumer_id: str
    producer_id: str
    kind: Kind
    rtp_parameters: RtpParameters
    type: ConsumerType
    producer_paused: bool


# ---- events, engine -> signaling -------------------------------------------------------


@attrs.frozen
class TransportClosed:
    """A transport closed by itself (ICE consent timeout, DTLS failure)."""

    router_id: str
    transport_id: str
    reason: str


@attrs.frozen
class ConsumerClosed:
    """A consumer closed because its producer or transport closed."""

    router_id: str
    consumer_id: str
    producer_id: str
    reason: str  # "producer_closed" | "transport_closed"


@attrs.frozen
class ConsumerProducerPaused:
    router_id: str
    consumer_id: str
    producer_paused: bool


@attrs.frozen
class ConsumerLayersChanged:
    router_id: str
    consumer_id: str
    spatial_layer: int | None
    temporal_layer: int | None


@attrs.frozen
class NetworkQuality:
    router_id: str
    transport_id: str
    packet_loss: float
    rtt_ms: float
    quality: Literal["good", "fair", "poor", "bad"]


@attrs.frozen
class ActiveSpeaker:
    router_id: str
    producer_id: str
    volume: float


EngineEvent = (
    TransportClosed
    | ConsumerClosed
    | ConsumerProducerPaused
    | ConsumerLayersChanged
    | NetworkQuality
    | ActiveSpeaker
)
EventCallback = Callable[[EngineEvent], None]


class MediaEngine(Protocol):
    """What signaling may ask of the media engine. All ids are opaque strings."""

    async def create_router(self, on_event: EventCallback) -> str:
        """Open a router (its nursery starts now); returns its id."""

    async def close_router(self, router_id: str) -> None:
        """Close the router and everything in it. Idempotent."""

    def router_rtp_capabilities(self, router_id: str) -> RtpCapabilities: ...

    async def create_webrtc_transport(
        self, router_id: str, *, force_tcp: bool = False, app_data: dict[str, Any] | None = None
    ) -> TransportInfo: ...

    async def connect_transport(self, transport_id: str, dtls_parameters: DtlsParameters) -> None:
        """Raises InvalidStateError when connected twice."""

    async def restart_ice(self, transport_id: str) -> IceParameters: ...

    async def close_transport(self, transport_id: str) -> None:
        """Closes its producers and consumers (ConsumerClosed events go out). Idempotent."""

    async def produce(
        self,
        transport_id: str,
        kind: Kind,
        rtp_parameters: RtpParameters,
        *,
        paused: bool = False,
    ) -> str:
        """Returns the producer id."""

    async def close_producer(self, producer_id: str) -> None: ...
    async def pause_producer(self, producer_id: str) -> None: ...
    async def resume_producer(self, producer_id: str) -> None: ...

    def can_consume(
        self, router_id: str, producer_id: str, rtp_capabilities: RtpCapabilities
    ) -> bool: ...

    async def consume(
        self,
        transport_id: str,
        producer_id: str,
        rtp_capabilities: RtpCapabilities,
        *,
        paused: bool = True,
    ) -> ConsumerInfo: ...

    async def close_consumer(self, consumer_id: str) -> None: ...
    async def pause_consumer(self, consumer_id: str) -> None: ...
    async def resume_consumer(self, consumer_id: str) -> None: ...

    async def set_consumer_preferred_layers(
        self, consumer_id: str, spatial_layer: int, temporal_layer: int | None
    ) -> tuple[int, int]:
        """Returns the preferred (spatial, temporal) layers now in force."""

    async def get_stats(self, entity_id: str) -> list[dict[str, Any]]: ...

    def media_counters(self) -> dict[str, int]:
        """Totals since start: ``packets_in``, ``packets_out``, ``bytes_in``, ``bytes_out``
        and ``drops`` over every transport, closed ones included."""

    def dump(self) -> dict[str, Any]:
        """Every router with its transports, producers and consumers (for leak checks)."""
