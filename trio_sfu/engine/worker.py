"""Worker: the in-process media engine, owner of Routers.

:class:`Worker` implements :class:`~trio_sfu.engine.api.MediaEngine`, the async, id-based
API that signaling uses. Today the worker runs in the signaling process; the API is shaped
so that it can move into a process of its own behind a channel later.

Run it with ``await nursery.start(worker.run)`` (or ``async with open_worker(...)``):
routers are tasks in the worker's nursery, transports tasks in their router's.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import resource
import time
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, final

import attrs
import trio

from trio_sfu.dtls import DtlsCertificate
from trio_sfu.engine import memory
from trio_sfu.engine.api import (
    ConsumerInfo,
    EngineEvent,
    EventCallback,
    Kind,
    PipeConsumerInfo,
    PipeTransportInfo,
    PlainTransportInfo,
    TransportInfo,
)
from trio_sfu.engine.layers import PolicySettings
from trio_sfu.engine.load import LoadMeter
from trio_sfu.engine.pipe import RouterPipes
from trio_sfu.engine.router import (
    Router,
    add_transport_counters,
    new_id,
    new_media_counters,
)
from trio_sfu.engine.webrtc_server import WebRtcServer
from trio_sfu.errors import ENGINE_REFUSALS, InvalidStateError, LimitExceededError, NotFoundError
from trio_sfu.ortc import negotiation
from trio_sfu.ortc.types import (
    DtlsParameters,
    IceParameters,
    RtpCapabilities,
    RtpCodecCapability,
    RtpParameters,
    SrtpParameters,
)
from trio_sfu.ratelog import DEFAULT_INTERVAL, RateLimitedLog

logger = logging.getLogger(__name__)


@attrs.frozen
class WorkerSettings:
    """What the media engine needs to know; the server's configuration maps onto it."""

    listen_ip: str = "127.0.0.1"
    announced_ip: str | None = None
    rtc_min_port: int = 40000
    rtc_max_port: int = 49999
    #: One UDP and one TCP port for every transport of the worker (a WebRtcServer): that
    #: port, or 0 for a free one of the range. None: each transport binds its own pair.
    rtc_port: int | None = 0
    enable_udp: bool = True
    enable_tcp: bool = True
    egress_queue_size: int = 512
    #: ICE consent freshness: disconnected after this long without a valid check, then
    #: closed after ``ice_close_timeout`` (RFC 7675 suggests 30 s).
    ice_consent_timeout: float = 30.0
    ice_close_timeout: float = 40.0
    #: A WebRTC transport whose DTLS is not connected this many seconds after it was
    #: created is closed (reason ``connect_timeout``; its owner gets ``TransportClosed``).
    #: None: no limit.
    transport_connect_timeout: float | None = 30.0
    #: Seconds between Sender/Receiver Report rounds.
    rtcp_interval: float = 1.0
    #: Seconds between two weak-network policy decisions (per video consumer).
    layer_policy_interval: float = 3.0
    #: Good policy intervals in a row before a consumer goes up one layer (from r0 up;
    #: video paused for the network comes back after two, or sooner on a clean probe).
    layer_policy_up_intervals: int = 1
    #: Seconds between NACK / transport-cc feedback rounds and bandwidth re-planning.
    feedback_interval: float = 0.05
    media_codecs: Sequence[RtpCodecCapability] | None = None
    #: Put in front of every id this worker makes (a worker process's tag; see
    #: :func:`~trio_sfu.engine.router.new_id`).
    id_prefix: str = ""


#: How long a taken fixed RTC port is tried again at start-up, and how often.
PORT_RETRY_TIME: Final = 10.0
PORT_RETRY_INTERVAL: Final = 0.25

#: Seconds between two checks whether freed memory should go back to the system (and
#: whether refusals happened that should be logged).
MEMORY_TRIM_INTERVAL: Final = 5.0


@final
class Worker:
    """The media engine: routers by id, and the index of every entity to its router.

    The index only says which router to ask: the router's tables (``transports``,
    ``producers``, ``consumers``) are the truth, and every lookup checks them. Ids enter the
    index when the worker creates them; they leave it when the router tells that the
    entity closed (its ``on_entity_closed``, called as each close cascades, whoever
    started it), and together with their router. So the index holds exactly the live
    entities; lookups cost one dict access, not a scan of every router.

    Pipe producers (:meth:`pipe_produce`) share the id of the producer they copy, so one
    id may name producers in several routers here: the original's router is in the index
    as usual, the routers holding copies are in ``_copies``. Producer calls act on all of
    them (the copies follow the original anyway).
    """

    def __init__(self, settings: WorkerSettings | None = None) -> None:
        self.settings = settings or WorkerSettings()
        self.certificate = DtlsCertificate.generate()
        codecs = self.settings.media_codecs
        self.rtp_capabilities = negotiation.generate_router_rtp_capabilities(
            list(codecs) if codecs is not None else list(negotiation.DEFAULT_MEDIA_CODECS)
        )
        self._routers: dict[str, Router] = {}
        #: Transport, producer and consumer id -> the router that holds it.
        self._index: dict[str, Router] = {}
        #: Pipe producer id -> router id -> the router holding that copy (the original
        #: producer, if in this worker, is in ``_index``).
        self._copies: dict[str, dict[str, Router]] = {}
        #: The ids of ``_index`` and ``_copies``, per router id (a key for every router in
        #: ``_routers``).
        self._indexed: dict[str, set[str]] = {}
        #: Traffic of transports that closed; live ones are added at dump time.
        self._retired_counters = new_media_counters()
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._meter = LoadMeter()
        #: Refusal counts as of the last log check (see _log_refusals), and their log.
        self._refusals_logged = dict.fromkeys(ENGINE_REFUSALS, 0)
        self.refusal_log = RateLimitedLog(logger, DEFAULT_INTERVAL)
        #: The shared RTC sockets (``settings.rtc_port``), while running.
        self.webrtc_server: WebRtcServer | None = None
        #: Pipes between this worker's routers (:meth:`pipe_to_router`), while running.
        self.pipes: RouterPipes | None = None

    # ---- life cycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the routers until cancelled; every router is closed on the way out."""
        try:
            async with trio.open_nursery() as nursery:
                settings = self.settings
                if settings.rtc_port is not None:
                    server = await self._start_webrtc_server(nursery)
                    self.webrtc_server = server
                    logger.info(
                        "WebRTC on %s: UDP port %s, TCP port %s, shared by every transport",
                        server.announced_ip or server.listen_ip,
                        server.udp_port,
                        server.tcp_port,
                    )
                self._nursery = nursery
                self.pipes = RouterPipes(lambda router_id: self, nursery)
                task_status.started()
                while True:
                    await trio.sleep(MEMORY_TRIM_INTERVAL)
                    memory.trim_if_worth()
                    self._log_refusals(trio.current_time())
        finally:
            self.close()

    async def _start_webrtc_server(self, nursery: trio.Nursery) -> WebRtcServer:
        """Bind the shared RTC port. A fixed port that is taken is tried again for up to
        ``PORT_RETRY_TIME``: a server restarted at once after a crash (SIGKILL) finds its
        old workers still on their way out, holding the ports for a moment."""
        settings = self.settings
        give_up = trio.current_time() + PORT_RETRY_TIME
        while True:
            server = WebRtcServer(
                listen_ip=settings.listen_ip,
                announced_ip=settings.announced_ip,
                port=settings.rtc_port or 0,
                port_range=(settings.rtc_min_port, settings.rtc_max_port),
                enable_udp=settings.enable_udp,
                enable_tcp=settings.enable_tcp,
            )
            try:
                await nursery.start(server.run)
            except OSError as exc:
                if (
                    exc.errno != errno.EADDRINUSE
                    or not settings.rtc_port
                    or trio.current_time() >= give_up
                ):
                    raise
                logger.warning(
                    "RTC port %d is in use (by a process on its way out?): trying again",
                    settings.rtc_port,
                )
                await trio.sleep(PORT_RETRY_INTERVAL)
                continue
            return server

    def _log_refusals(self, now: float) -> None:
        """A log line (rate-limited per reason) for each kind of trespass refused since the
        last check: per-packet refusals are counters, never a line each."""
        counters = self.media_counters()
        for reason, before in self._refusals_logged.items():
            count = counters[f"refused_{reason}"]
            if count > before:
                self._refusals_logged[reason] = count
                self.refusal_log.note(
                    reason,
                    now,
                    "%d in the last %.0f s (%d in all)",
                    count - before,
                    MEMORY_TRIM_INTERVAL,
                    count,
                    count=count - before,
                )

    def close(self) -> None:
        """Close every router. Idempotent."""
        self._closed = True
        for router in list(self._routers.values()):
            router.close()
        self._routers.clear()
        self._index.clear()
        self._copies.clear()
        self._indexed.clear()
        self.pipes = None  # its links went with the routers
        if self.webrtc_server is not None:
            self.webrtc_server.close()  # after the routers: their goodbyes use its sockets

    # ---- lookups -----------------------------------------------------------------------

    def _router(self, router_id: str) -> Router:
        router = self._routers.get(router_id)
        if router is None:
            raise NotFoundError(f"router {router_id!r} not found")
        return router

    def _router_of(self, entity_id: str, table: str, what: str) -> Router:
        router = self._index.get(entity_id)
        if router is not None and entity_id in getattr(router, table):
            return router
        raise NotFoundError(f"{what} {entity_id!r} not found")

    # ---- the index ---------------------------------------------------------------------

    def _remember(self, router: Router, entity_id: str, *, copy: bool = False) -> None:
        """Index a new entity of ``router``; ``copy``: a pipe producer (an id that may be
        in other routers too)."""
        ids = self._indexed.get(router.id)
        if ids is not None:  # else the router went while the entity was being created
            ids.add(entity_id)
            if copy:
                self._copies.setdefault(entity_id, {})[router.id] = router
            else:
                self._index[entity_id] = router

    def _unindex(self, router_id: str, entity_id: str) -> None:
        """Drop ``entity_id`` of router ``router_id`` from ``_index`` or ``_copies``."""
        router = self._index.get(entity_id)
        if router is not None and router.id == router_id:
            del self._index[entity_id]
            return
        copies = self._copies.get(entity_id)
        if copies is not None:
            copies.pop(router_id, None)
            if not copies:
                del self._copies[entity_id]

    def _entity_closed(self, router_id: str, entity_id: str) -> None:
        """Router ``router_id`` forgot ``entity_id`` (closed, or closed by a cascade: a
        transport takes its producers and consumers, a producer its consumers)."""
        ids = self._indexed.get(router_id)
        if ids is not None and entity_id in ids:
            ids.discard(entity_id)
            self._unindex(router_id, entity_id)

    def _forget_router(self, router_id: str) -> Router | None:
        for entity_id in self._indexed.pop(router_id, ()):
            self._unindex(router_id, entity_id)
        return self._routers.pop(router_id, None)

    def _producer_routers(self, producer_id: str) -> list[Router]:
        """The routers holding producer ``producer_id``: the original's first, then those
        holding pipe producers of that id."""
        found = []
        router = self._index.get(producer_id)
        if router is not None and producer_id in router.producers:
            found.append(router)
        for router in list(self._copies.get(producer_id, {}).values()):
            if producer_id in router.producers:
                found.append(router)
        return found

    # ---- MediaEngine -------------------------------------------------------------------

    async def create_router(self, on_event: EventCallback, *, avoid: Collection[str] = ()) -> str:
        if self._closed or self._nursery is None:
            raise InvalidStateError("the worker is not running")
        if avoid:
            raise LimitExceededError("one worker holds every router: there is no other")

        def on_router_event(event: EngineEvent) -> None:
            if self.pipes is not None:
                self.pipes.on_event(event)  # pipe follow-ups first: they never block
            on_event(event)

        router_id = new_id(self.settings.id_prefix)
        router = Router(
            router_id=router_id,
            id_prefix=self.settings.id_prefix,
            rtp_capabilities=self.rtp_capabilities,
            certificate=self.certificate,
            on_event=on_router_event,
            rtcp_interval=self.settings.rtcp_interval,
            policy=PolicySettings(
                interval=self.settings.layer_policy_interval,
                up_intervals=self.settings.layer_policy_up_intervals,
            ),
            feedback_interval=self.settings.feedback_interval,
            retired_counters=self._retired_counters,
            on_entity_closed=functools.partial(self._entity_closed, router_id),
            transport_options={
                "listen_ip": self.settings.listen_ip,
                "announced_ip": self.settings.announced_ip,
                "port_range": (self.settings.rtc_min_port, self.settings.rtc_max_port),
                "enable_udp": self.settings.enable_udp,
                "enable_tcp": self.settings.enable_tcp,
                "egress_queue_size": self.settings.egress_queue_size,
                "consent_timeout": self.settings.ice_consent_timeout,
                "close_timeout": self.settings.ice_close_timeout,
                "connect_timeout": self.settings.transport_connect_timeout,
                "server": self.webrtc_server,
            },
        )
        self._routers[router.id] = router
        self._indexed[router.id] = set()
        await self._nursery.start(self._run_router, router)
        return router.id

    async def _run_router(self, router: Router, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            await router.run(task_status=task_status)
        finally:
            self._forget_router(router.id)
            if self.pipes is not None:
                self.pipes.router_closed(router.id)

    async def close_router(self, router_id: str) -> None:
        router = self._forget_router(router_id)
        if router is not None:
            router.close()
            if self.pipes is not None:
                self.pipes.router_closed(router_id)

    def router_rtp_capabilities(self, router_id: str) -> RtpCapabilities:
        return self._router(router_id).rtp_capabilities

    async def create_webrtc_transport(
        self, router_id: str, *, force_tcp: bool = False, app_data: dict[str, Any] | None = None
    ) -> TransportInfo:
        router = self._router(router_id)
        info = await router.create_webrtc_transport(force_tcp=force_tcp, app_data=app_data)
        self._remember(router, info.transport_id)
        return info

    async def connect_transport(self, transport_id: str, dtls_parameters: DtlsParameters) -> None:
        router = self._router_of(transport_id, "transports", "transport")
        router.connect_transport(transport_id, dtls_parameters)

    async def restart_ice(self, transport_id: str) -> IceParameters:
        return self._router_of(transport_id, "transports", "transport").restart_ice(transport_id)

    async def close_transport(self, transport_id: str) -> None:
        router = self._index.get(transport_id)
        if router is not None:
            router.close_transport(transport_id)
            if self.pipes is not None:
                self.pipes.transport_closed(transport_id)  # if a pipe: the other end too

    async def produce(
        self,
        transport_id: str,
        kind: Kind,
        rtp_parameters: RtpParameters,
        *,
        paused: bool = False,
    ) -> str:
        router = self._router_of(transport_id, "transports", "transport")
        producer_id = router.produce(transport_id, kind, rtp_parameters, paused=paused)
        self._remember(router, producer_id)
        return producer_id

    async def close_producer(self, producer_id: str) -> None:
        for router in self._producer_routers(producer_id):
            router.close_producer(producer_id)

    async def pause_producer(self, producer_id: str) -> None:
        for router in self._producer_routers_or_fail(producer_id):
            router.pause_producer(producer_id)

    async def resume_producer(self, producer_id: str) -> None:
        for router in self._producer_routers_or_fail(producer_id):
            router.resume_producer(producer_id)

    def _producer_routers_or_fail(self, producer_id: str) -> list[Router]:
        routers = self._producer_routers(producer_id)
        if not routers:
            raise NotFoundError(f"producer {producer_id!r} not found")
        return routers

    async def can_consume(
        self, router_id: str, producer_id: str, rtp_capabilities: RtpCapabilities
    ) -> bool:
        return self._router(router_id).can_consume(producer_id, rtp_capabilities)

    async def consume(
        self,
        transport_id: str,
        producer_id: str,
        rtp_capabilities: RtpCapabilities,
        *,
        paused: bool = True,
    ) -> ConsumerInfo:
        router = self._router_of(transport_id, "transports", "transport")
        info = router.consume(transport_id, producer_id, rtp_capabilities, paused=paused)
        self._remember(router, info.consumer_id)
        return info

    async def close_consumer(self, consumer_id: str) -> None:
        router = self._index.get(consumer_id)
        if router is not None:
            router.close_consumer(consumer_id)

    async def pause_consumer(self, consumer_id: str) -> None:
        self._router_of(consumer_id, "consumers", "consumer").pause_consumer(consumer_id)

    async def resume_consumer(self, consumer_id: str) -> None:
        self._router_of(consumer_id, "consumers", "consumer").resume_consumer(consumer_id)

    async def set_consumer_preferred_layers(
        self, consumer_id: str, spatial_layer: int, temporal_layer: int | None
    ) -> tuple[int, int]:
        router = self._router_of(consumer_id, "consumers", "consumer")
        return router.set_consumer_preferred_layers(consumer_id, spatial_layer, temporal_layer)

    async def get_stats(self, entity_id: str) -> list[dict[str, Any]]:
        router = self._index.get(entity_id)
        if router is None and entity_id in self._copies:
            routers = self._producer_routers(entity_id)
            router = routers[0] if routers else None
        if router is not None and (
            entity_id in router.transports
            or entity_id in router.producers
            or entity_id in router.consumers
        ):
            return router.get_stats(entity_id)
        raise NotFoundError(f"{entity_id!r} not found")

    # ---- pipes between routers ----------------------------------------------------------
    #
    # mediasoup's PipeTransport and pipeToRouter (see trio_sfu.engine.pipe): the primitives
    # act on this worker's routers; pipe_to_router() pipes between two of them, through
    # self.pipes. A pool of worker processes drives the primitives of two workers instead.

    async def create_pipe_transport(self, router_id: str) -> PipeTransportInfo:
        router = self._router(router_id)
        info = await router.create_pipe_transport()
        self._remember(router, info.transport_id)
        return info

    async def connect_pipe_transport(self, transport_id: str, ip: str, port: int) -> None:
        router = self._router_of(transport_id, "transports", "transport")
        router.connect_pipe_transport(transport_id, ip, port)

    async def pipe_consume(self, transport_id: str, producer_id: str) -> PipeConsumerInfo:
        router = self._router_of(transport_id, "transports", "transport")
        info = router.pipe_consume(transport_id, producer_id)
        self._remember(router, info.consumer_id)
        return info

    async def pipe_produce(
        self,
        transport_id: str,
        producer_id: str,
        kind: Kind,
        rtp_parameters: RtpParameters,
        *,
        paused: bool = False,
    ) -> None:
        router = self._router_of(transport_id, "transports", "transport")
        router.pipe_produce(transport_id, producer_id, kind, rtp_parameters, paused=paused)
        self._remember(router, producer_id, copy=True)

    async def pipe_to_router(self, producer_id: str, *, from_router: str, to_router: str) -> None:
        """Pipe a producer between two routers of this worker (see
        :meth:`RouterPipes.pipe_to_router`)."""
        if self.pipes is None or self._closed:
            raise InvalidStateError("the worker is not running")
        await self.pipes.pipe_to_router(producer_id, from_router=from_router, to_router=to_router)

    # ---- plain transports ----------------------------------------------------------------

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
        router = self._router(router_id)
        info = await router.create_plain_transport(
            rtcp_mux=rtcp_mux,
            comedia=comedia,
            enable_srtp=enable_srtp,
            srtp_crypto_suite=srtp_crypto_suite,
            app_data=app_data,
        )
        self._remember(router, info.transport_id)
        return info

    async def connect_plain_transport(
        self,
        transport_id: str,
        *,
        ip: str | None = None,
        port: int | None = None,
        rtcp_port: int | None = None,
        srtp_parameters: SrtpParameters | None = None,
    ) -> PlainTransportInfo:
        router = self._router_of(transport_id, "transports", "transport")
        return router.connect_plain_transport(
            transport_id, ip=ip, port=port, rtcp_port=rtcp_port, srtp_parameters=srtp_parameters
        )

    def media_counters(self) -> dict[str, int]:
        """Packets and bytes in and out, and drops, of every transport this worker ran."""
        counters = dict(self._retired_counters)
        for router in self._routers.values():
            for entry in router.transports.values():
                add_transport_counters(counters, entry.transport)
        server = self.webrtc_server
        if server is not None:
            # What no transport was even handed: STUN naming none, packets from strangers.
            counters["refused_stun_unauthenticated"] += server.refused_stun
            counters["refused_not_validated"] += server.refused_not_validated
        return counters

    def dump(self) -> dict[str, Any]:
        return {"routers": [router.dump() for router in self._routers.values()]}

    def router_overloaded(self, router_id: str) -> bool:
        return False  # there is no other worker to move to

    def workers_info(self) -> list[dict[str, Any]]:
        """This one in-process worker; rates are since the previous call."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        counters = self.media_counters()
        self._meter.sample(
            time.monotonic(),
            counters["packets_in"] + counters["packets_out"],
            usage.ru_utime + usage.ru_stime,
        )
        return [
            {
                "index": 0,
                "pid": os.getpid(),
                "inProcess": True,
                "alive": True,
                "restarts": 0,
                "udpPort": self.webrtc_server.udp_port if self.webrtc_server else None,
                "tcpPort": self.webrtc_server.tcp_port if self.webrtc_server else None,
                **self.load(),
                "packetsPerSecond": self._meter.packets_per_second,
                "cpuPercent": self._meter.cpu_percent,
                "counters": counters,
            }
        ]

    def load(self) -> dict[str, int]:
        """How much this worker holds: routers, transports, producers, consumers."""
        routers = self._routers.values()
        return {
            "routers": len(routers),
            "transports": sum(len(r.transports) for r in routers),
            "producers": sum(len(r.producers) for r in routers),
            "consumers": sum(len(r.consumers) for r in routers),
        }


@asynccontextmanager
async def open_worker(settings: WorkerSettings | None = None) -> AsyncIterator[Worker]:
    """A running worker for the duration of the block; closed (with all routers) after."""
    worker = Worker(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        try:
            yield worker
        finally:
            worker.close()
            nursery.cancel_scope.cancel()
