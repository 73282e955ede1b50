"""The media engine's async, id-based API: the only way signaling reaches media.

Signaling (rooms, sessions, auth) never holds a Router, Transport, Producer or Consumer
object: it holds ids and calls :class:`MediaEngine`. The same API is served in this process
(:class:`~trio_sfu.engine.worker.Worker`) and by worker processes behind a channel
(:class:`~trio_sfu.engine.pool.WorkerPool`), and signaling does not know which.

:class:`EngineVerbs` is the table of the requests a worker serves (:data:`VERBS`): a new
verb is a method there, its implementation in the Worker (and Router), and the signaling
handler that calls it; the worker channel derives the rest from the table.

Events flow the other way through the ``on_event`` callback given to
:meth:`MediaEngine.create_router`. The callback is synchronous and must never block (the
signaling side queues the event with ``send_nowait``); it is called from engine tasks.

Every method raises :class:`~trio_sfu.errors.SfuError` subclasses for refusals
(``NotFoundError`` for unknown ids, ``InvalidStateError``, ``UnsupportedError``,
``LimitExceededError``) and nothing else for expected failures.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Final, Literal, Protocol

import attrs

from trio_sfu.engine.verbs import verb, verb_table

# Imported at run time: the verb table structures parameters and results of these types.
from trio_sfu.ortc.types import (
    DtlsParameters,
    IceCandidate,
    IceParameters,
    RtpCapabilities,
    RtpParameters,
    SrtpParameters,
    TransportTuple,
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
    """A consumer closed because its producer or transport closed, or by a bug in its
    own forwarding (``internal_error``)."""

    router_id: str
    consumer_id: str
    producer_id: str
    reason: str  # "producer_closed" | "transport_closed" | "internal_error"


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


@attrs.frozen
class RouterClosed:
    """A router ended without being asked: its worker process died (``worker_died``).
    Everything in it is gone; the owner should close its meeting. ``worker`` and ``pid``:
    the worker slot and the process that died, where the engine knows them."""

    router_id: str
    reason: str
    worker: int | None = None
    pid: int | None = None


EngineEvent = (
    RouterClosed
    | TransportClosed
    | ConsumerClosed
    | ConsumerProducerPaused
    | ConsumerLayersChanged
    | NetworkQuality
    | ActiveSpeaker
)
EventCallback = Callable[[EngineEvent], None]


class EngineVerbs(Protocol):
    """The engine's verbs: the requests about routers, transports, producers and consumers.

    This class is the one table of them: each method's name, parameters with their types
    and defaults, and result type say how the request crosses to a worker process and back
    (:mod:`trio_sfu.engine.verbs`), and ``@verb(param)`` names the parameter whose id says
    which worker serves it. :class:`~trio_sfu.engine.worker.Worker` implements every verb;
    :class:`~trio_sfu.engine.pool.WorkerPool` and
    :class:`~trio_sfu.engine.worker_handle.WorkerHandle` forward them from this table.
    """

    @verb("router_id", idempotent=True)
    async def close_router(self, router_id: str) -> None:
        """Close the router and everything in it. Idempotent."""

    @verb("router_id")
    async def create_webrtc_transport(
        self, router_id: str, *, force_tcp: bool = False, app_data: dict[str, Any] | None = None
    ) -> TransportInfo: ...

    @verb("transport_id")
    async def connect_transport(self, transport_id: str, dtls_parameters: DtlsParameters) -> None:
        """Raises InvalidStateError when connected twice."""

    @verb("transport_id")
    async def restart_ice(self, transport_id: str) -> IceParameters: ...

    @verb("transport_id", idempotent=True)
    async def close_transport(self, transport_id: str) -> None:
        """Closes its producers and consumers (ConsumerClosed events go out). Idempotent."""

    @verb("transport_id")
    async def produce(
        self,
        transport_id: str,
        kind: Kind,
        rtp_parameters: RtpParameters,
        *,
        paused: bool = False,
    ) -> str:
        """Returns the producer id."""

    @verb("producer_id", idempotent=True)
    async def close_producer(self, producer_id: str) -> None: ...

    @verb("producer_id")
    async def pause_producer(self, producer_id: str) -> None: ...

    @verb("producer_id")
    async def resume_producer(self, producer_id: str) -> None: ...

    @verb("router_id")
    async def can_consume(
        self, router_id: str, producer_id: str, rtp_capabilities: RtpCapabilities
    ) -> bool: ...

    @verb("transport_id")
    async def consume(
        self,
        transport_id: str,
        producer_id: str,
        rtp_capabilities: RtpCapabilities,
        *,
        paused: bool = True,
    ) -> ConsumerInfo: ...

    @verb("consumer_id", idempotent=True)
    async def close_consumer(self, consumer_id: str) -> None: ...

    @verb("consumer_id")
    async def pause_consumer(self, consumer_id: str) -> None: ...

    @verb("consumer_id")
    async def resume_consumer(self, consumer_id: str) -> None: ...

    @verb("consumer_id")
    async def set_consumer_preferred_layers(
        self, consumer_id: str, spatial_layer: int, temporal_layer: int | None
    ) -> tuple[int, int]:
        """Returns the preferred (spatial, temporal) layers now in force."""

    @verb("entity_id")
    async def get_stats(self, entity_id: str) -> list[dict[str, Any]]: ...

    # ---- pipes between routers (mediasoup's PipeTransport and pipeToRouter) ----------
    #
    # The primitives work on this engine's routers only; pipe_to_router() uses them on
    # both routers (through whichever engine holds each). close_transport, close_producer,
    # pause_producer, resume_producer, get_stats and dump work on pipe transports, pipe
    # producers and pipe consumers too. A pipe producer has the id of the producer it
    # copies; where one engine holds several producers of that id (the original and its
    # copies in other routers), close/pause/resume_producer act on all of them (the
    # copies follow the original anyway) and get_stats reports the original.

    @verb("router_id")
    async def create_pipe_transport(self, router_id: str) -> PipeTransportInfo:
        """A pipe transport in the router: one UDP socket (RTP and RTCP) on the worker's
        listen IP (loopback when that is 0.0.0.0 / ::), on a free port of its RTC range;
        plain RTP, no ICE/DTLS/SRTP."""

    @verb("transport_id")
    async def connect_pipe_transport(self, transport_id: str, ip: str, port: int) -> None:
        """The other end's address. Raises InvalidStateError when connected twice."""

    @verb("transport_id")
    async def pipe_consume(self, transport_id: str, producer_id: str) -> PipeConsumerInfo:
        """A pipe consumer of a producer of the pipe transport's router: every stream of
        the producer goes over the pipe. Its ``rtp_parameters`` make the pipe producer."""

    @verb("transport_id")
    async def pipe_produce(
        self,
        transport_id: str,
        producer_id: str,
        kind: Kind,
        rtp_parameters: RtpParameters,
        *,
        paused: bool = False,
    ) -> None:
        """A pipe producer with id ``producer_id`` from a pipe consumer's parameters.
        Raises InvalidStateError when the router holds a producer of that id already."""

    # ---- plain transports (mediasoup's PlainTransport) -------------------------------
    #
    # Plain RTP/RTCP (optionally SRTP) for ffmpeg, GStreamer, recorders and bots.
    # produce, consume, close_transport, get_stats and dump work on them as on a
    # WebRtcTransport.

    @verb("router_id")
    async def create_plain_transport(
        self,
        router_id: str,
        *,
        rtcp_mux: bool = True,
        comedia: bool = False,
        enable_srtp: bool = False,
        srtp_crypto_suite: str = "AES_CM_128_HMAC_SHA1_80",
        app_data: dict[str, Any] | None = None,
    ) -> PlainTransportInfo:
        """A plain transport on the worker's listen IP (announced IP in its tuple), on
        free port(s) of its RTC range. UnsupportedError for an unknown crypto suite."""

    @verb("transport_id")
    async def connect_plain_transport(
        self,
        transport_id: str,
        *,
        ip: str | None = None,
        port: int | None = None,
        rtcp_port: int | None = None,
        srtp_parameters: SrtpParameters | None = None,
    ) -> PlainTransportInfo:
        """The other end's address (ignored with comedia) and SRTP key. Raises
        InvalidStateError when connected twice, InvalidMessageError when something
        required is missing. Returns the transport's state after the call."""


class MediaEngine(EngineVerbs, Protocol):
    """What signaling may ask of the media engine: the verbs, and what the engine as a
    whole answers itself. All ids are opaque strings."""

    async def create_router(self, on_event: EventCallback, *, avoid: Collection[str] = ()) -> str:
        """Open a router (its nursery starts now) on the least-loaded worker; returns its
        id. ``avoid``: routers whose workers must not be picked (to spread one meeting over
        several workers); LimitExceededError when every worker holds one of them."""

    def router_overloaded(self, router_id: str) -> bool:
        """Whether the worker of ``router_id`` is past its load threshold while another
        worker is not: new peers of its meeting should go to a router elsewhere."""

    def workers_info(self) -> list[dict[str, Any]]:
        """One entry per worker (process) for the admin API and the metrics: ``index``,
        ``pid``, ``routers``, ``transports``, ``producers``, ``consumers``,
        ``packetsPerSecond``, ``cpuPercent``, ``restarts``, ..."""

    def router_rtp_capabilities(self, router_id: str) -> RtpCapabilities: ...

    def media_counters(self) -> dict[str, int]:
        """Totals since start: ``packets_in``, ``packets_out``, ``bytes_in``, ``bytes_out``
        and ``drops`` over every transport, closed ones included."""

    def dump(self) -> dict[str, Any]:
        """Every router with its transports, producers and consumers (for leak checks)."""

    async def pipe_to_router(self, producer_id: str, *, from_router: str, to_router: str) -> None:
        """Make producer ``producer_id`` of router ``from_router`` consumable on router
        ``to_router`` (same id). Idempotent: a producer is piped once per destination;
        concurrent calls wait for the first. Pause, resume and close of the producer
        follow on the destination; closing either router closes the other's pipe
        producers (their consumers get ``ConsumerClosed``)."""


@attrs.frozen
class PlainTransportInfo:
    """A plain transport: where it listens (``tuple``, and ``rtcp_tuple`` without
    rtcp-mux), the remote end once known, and its SRTP key for the other end."""

    transport_id: str
    tuple: TransportTuple
    rtcp_mux: bool
    comedia: bool
    rtcp_tuple: TransportTuple | None = None
    srtp_parameters: SrtpParameters | None = None


@attrs.frozen
class PipeTransportInfo:
    """Where a pipe transport receives: the other end connects to ``ip`` / ``port``."""

    transport_id: str
    ip: str
    port: int


@attrs.frozen
class PipeConsumerInfo:
    """A pipe consumer, and the parameters the pipe producer on the other end takes."""

    consumer_id: str
    producer_id: str
    kind: Kind
    rtp_parameters: RtpParameters
    producer_paused: bool


#: The verbs by name: what crosses the worker channel, and how (see :mod:`~trio_sfu.engine.verbs`).
VERBS: Final = verb_table(EngineVerbs)
