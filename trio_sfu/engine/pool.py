"""WorkerPool: the media engine as worker processes (mediasoup's Worker model).

The signaling process keeps WebSockets, auth, rooms and peers; the media runs in ``N``
worker processes, each a trio program hosting Routers with a WebRtcServer of its own
(:mod:`trio_sfu.engine.worker_process`). :class:`WorkerPool` is the same
:class:`~trio_sfu.engine.api.MediaEngine` that the in-process
:class:`~trio_sfu.engine.worker.Worker` is: signaling does not know which it talks to.

Ownership::

    WorkerPool.run                    the pool's nursery
      └─ _supervise(i)                one per slot: starts worker i, restarts it when it dies
           └─ _run_worker             the process, its channel, and its reader task

Routing: every id a worker makes starts with the worker's tag (``w1g3-``: slot 1, third
process in that slot), so any id names the worker that holds it; the pool keeps no index
of entities. The ids of a dead worker's entities name no live worker and are ``not_found``.

A worker's death (crash, SIGKILL, OOM) ends its channel: the reader sees the end of stream
at once, requests waiting on that worker fail, each of its routers' owners gets
:class:`~trio_sfu.engine.api.RouterClosed` (reason ``worker_died``), its counters are kept
as retired totals, and the slot starts a new process (at most once per
``restart_delay``). Closing the pool closes every channel; a worker that sees its channel
end closes its routers and exits, and one that has not exited ``stop_timeout`` later is
killed. A worker whose parent dies exits by itself (its channel ends).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any, Final, final

import attrs
import trio

from trio_sfu.engine.api import (
    ConsumerInfo,
    EngineEvent,
    EventCallback,
    Kind,
    PipeConsumerInfo,
    PipeTransportInfo,
    PlainTransportInfo,
    RouterClosed,
    TransportInfo,
)
from trio_sfu.engine.channel import (
    NOTIFY,
    REQUEST,
    RESPONSE,
    Channel,
    decode_error,
    decode_event,
)
from trio_sfu.engine.load import LoadMeter
from trio_sfu.engine.pipe import RouterPipes
from trio_sfu.engine.router import MEDIA_COUNTERS, new_media_counters
from trio_sfu.engine.worker import WorkerSettings
from trio_sfu.errors import (
    BadPacket,
    InvalidStateError,
    LimitExceededError,
    NotFoundError,
    SfuError,
)
from trio_sfu.ortc.types import (
    DtlsParameters,
    IceParameters,
    RtpCapabilities,
    RtpParameters,
    SrtpParameters,
)
from trio_sfu.wire import converter

logger = logging.getLogger(__name__)

#: rtc:roomClosed reason when a meeting's worker process died.
WORKER_DIED: Final = "worker_died"


@attrs.frozen
class PoolSettings:
    """How many workers, and how each runs."""

    workers: int = 2
    #: Every worker's settings; ``rtc_port`` is the first worker's port (worker ``i`` takes
    #: ``rtc_port + i``; 0 lets each pick a free port of the range) and ``id_prefix`` is
    #: set per worker.
    worker: WorkerSettings = attrs.field(factory=WorkerSettings)
    #: Consumers on a worker past which a meeting on it takes its new peers on a router of
    #: another worker (pipe-to-router).
    pipe_threshold: int = 400
    #: Seconds between two load reports of a worker.
    report_interval: float = 1.0
    #: At least this long between two starts of the same slot.
    restart_delay: float = 1.0
    #: How long a worker may take to start, and to exit once its channel is closed.
    start_timeout: float = 30.0
    stop_timeout: float = 5.0
    log_level: str = "info"


class WorkerDiedError(InvalidStateError):
    """The worker holding the entity died while (or before) the request ran."""


@final
@attrs.define(eq=False)
class _Pending:
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: SfuError | None = None


@final
class WorkerHandle:
    """The signaling side of one worker process: its channel, its routers, its load.

    Its methods are the MediaEngine calls, sent to this worker whatever the ids say (the
    pool picks the worker; pipe-to-router uses a handle directly).
    """

    def __init__(self, index: int, generation: int, settings: WorkerSettings) -> None:
        self.index = index
        self.generation = generation
        self.tag = f"w{index}g{generation}-"
        self.settings = settings
        self.pid: int | None = None
        self.alive = False
        self.died = trio.Event()
        #: Its channel ended by itself (EOF or broken): the process died, it was not
        #: stopped by the pool.
        self.channel_ended = False
        #: Taken out of the pool's books (see WorkerPool._forget_worker).
        self.forgotten = False
        self.channel: Channel | None = None
        self.udp_port: int | None = None
        self.tcp_port: int | None = None
        self.rtp_capabilities: RtpCapabilities | None = None
        #: The routers this worker holds, with their owners' event callbacks.
        self.routers: dict[str, EventCallback] = {}
        #: The last load report, and rates from successive ones.
        self.report: dict[str, Any] = {}
        self.meter = LoadMeter()
        #: Consumers created through the pool since the last report (placement would
        #: otherwise see a burst of joins a report late).
        self.consumers_since_report = 0
        self._pending: dict[int, _Pending] = {}
        self._next_request = 0

    # ---- the channel ---------------------------------------------------------------------

    async def call(self, method: str, *args: Any) -> Any:
        """Send one request and wait for its answer. Raises what the worker refused with,
        or :class:`WorkerDiedError`. Cancelling the caller abandons the answer, not the
        request."""
        channel = self.channel
        if channel is None or self.died.is_set():
            raise WorkerDiedError(f"worker {self.index} is not running")
        self._next_request += 1
        request_id = self._next_request
        pending = _Pending()
        self._pending[request_id] = pending
        try:
            # A cancelled half-written frame would break the channel for everyone.
            with trio.CancelScope(shield=True):
                try:
                    await channel.send([REQUEST, request_id, method, list(args)])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise WorkerDiedError(f"worker {self.index} died") from None
            await pending.done.wait()
        finally:
            del self._pending[request_id]
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def read_loop(
        self,
        on_event: Callable[[WorkerHandle, EngineEvent], None],
        on_death: Callable[[WorkerHandle], None],
    ) -> None:
        """Read answers and notifications until the channel ends; then this worker is
        dead: ``on_death`` runs, and then every waiting call fails (so that the owners of
        its routers hear of the death before any request fails)."""
        channel = self.channel
        assert channel is not None
        try:
            while True:
                try:
                    message = await channel.receive()
                except (BadPacket, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    logger.error("worker %d: broken channel: %s", self.index, exc)
                    self.channel_ended = True
                    return
                if message is None:
                    self.channel_ended = True
                    return
                self._dispatch(message, on_event)
        finally:
            self.alive = False
            self.died.set()
            on_death(self)
            for pending in self._pending.values():
                pending.error = WorkerDiedError(f"worker {self.index} died")
                pending.done.set()

    def _dispatch(
        self, message: Any, on_event: Callable[[WorkerHandle, EngineEvent], None]
    ) -> None:
        kind = message[0]
        if kind == RESPONSE:
            _, request_id, ok, value = message
            pending = self._pending.get(request_id)
            if pending is not None:
                if ok:
                    pending.result = value
                else:
                    pending.error = decode_error(value)
                pending.done.set()
        elif kind == NOTIFY:
            _, name, payload = message
            if name == "event":
                on_event(self, decode_event(payload))
            elif name == "load":
                self.report = payload
                self.consumers_since_report = 0
                counters = payload["counters"]
                self.meter.sample(
                    payload["time"],
                    counters["packets_in"] + counters["packets_out"],
                    payload["cpuSeconds"],
                )

    # ---- load ------------------------------------------------------------------------------

    def consumers(self) -> int:
        return int(self.report.get("consumers", 0)) + self.consumers_since_report

    def info(self) -> dict[str, Any]:
        report = self.report
        return {
            "index": self.index,
            "pid": self.pid,
            "generation": self.generation,
            "alive": self.alive,
            "udpPort": self.udp_port,
            "tcpPort": self.tcp_port,
            "routers": len(self.routers),
            "transports": report.get("transports", 0),
            "producers": report.get("producers", 0),
            "consumers": self.consumers(),
            "packetsPerSecond": self.meter.packets_per_second,
            "cpuPercent": self.meter.cpu_percent,
            "maxRssKib": report.get("maxRssKib", 0),
            "counters": report.get("counters", new_media_counters()),
        }

    # ---- MediaEngine calls, on this worker ----------------------------------------------

    async def create_router(self, on_event: EventCallback) -> str:
        router_id: str = await self.call("create_router")
        self.routers[router_id] = on_event
        return router_id

    async def close_router(self, router_id: str) -> None:
        if self.routers.pop(router_id, None) is not None and not self.died.is_set():
            await self.call("close_router", router_id)

    async def create_webrtc_transport(
        self, router_id: str, *, force_tcp: bool = False, app_data: dict[str, Any] | None = None
    ) -> TransportInfo:
        raw = await self.call("create_webrtc_transport", router_id, force_tcp, app_data)
        return converter.structure(raw, TransportInfo)

    async def connect_transport(self, transport_id: str, dtls_parameters: DtlsParameters) -> None:
        await self.call("connect_transport", transport_id, converter.unstructure(dtls_parameters))

    async def restart_ice(self, transport_id: str) -> IceParameters:
        return converter.structure(await self.call("restart_ice", transport_id), IceParameters)

    async def close_transport(self, transport_id: str) -> None:
        await self.call("close_transport", transport_id)

    async def produce(
        self, transport_id: str, kind: Kind, rtp_parameters: RtpParameters, *, paused: bool
    ) -> str:
        params = converter.unstructure(rtp_parameters)
        producer_id: str = await self.call("produce", transport_id, kind, params, paused)
        return producer_id

    async def close_producer(self, producer_id: str) -> None:
        await self.call("close_producer", producer_id)

    async def pause_producer(self, producer_id: str) -> None:
        await self.call("pause_producer", producer_id)

    async def resume_producer(self, producer_id: str) -> None:
        await self.call("resume_producer", producer_id)

    async def can_consume(
        self, router_id: str, producer_id: str, rtp_capabilities: RtpCapabilities
    ) -> bool:
        caps = converter.unstructure(rtp_capabilities)
        return bool(await self.call("can_consume", router_id, producer_id, caps))

    async def consume(
        self,
        transport_id: str,
        producer_id: str,
        rtp_capabilities: RtpCapabilities,
        *,
        paused: bool,
    ) -> ConsumerInfo:
        caps = converter.unstructure(rtp_capabilities)
        raw = await self.call("consume", transport_id, producer_id, caps, paused)
        self.consumers_since_report += 1
        return converter.structure(raw, ConsumerInfo)

    async def close_consumer(self, consumer_id: str) -> None:
        await self.call("close_consumer", consumer_id)

    async def pause_consumer(self, consumer_id: str) -> None:
        await self.call("pause_consumer", consumer_id)

    async def resume_consumer(self, consumer_id: str) -> None:
        await self.call("resume_consumer", consumer_id)

    async def set_consumer_preferred_layers(
        self, consumer_id: str, spatial_layer: int, temporal_layer: int | None
    ) -> tuple[int, int]:
        spatial, temporal = await self.call(
            "set_consumer_preferred_layers", consumer_id, spatial_layer, temporal_layer
        )
        return int(spatial), int(temporal)

    async def get_stats(self, entity_id: str) -> list[dict[str, Any]]:
        stats: list[dict[str, Any]] = await self.call("get_stats", entity_id)
        return stats

    async def dump(self) -> dict[str, Any]:
        dump: dict[str, Any] = await self.call("dump")
        return dump

    # ---- pipes (trio_sfu.engine.pipe.PipeEndpoint) -------------------------------------------

    async def create_pipe_transport(self, router_id: str) -> PipeTransportInfo:
        raw = await self.call("create_pipe_transport", router_id)
        return converter.structure(raw, PipeTransportInfo)

    async def connect_pipe_transport(self, transport_id: str, ip: str, port: int) -> None:
        await self.call("connect_pipe_transport", transport_id, ip, port)

    async def pipe_consume(self, transport_id: str, producer_id: str) -> PipeConsumerInfo:
        raw = await self.call("pipe_consume", transport_id, producer_id)
        return converter.structure(raw, PipeConsumerInfo)

    async def pipe_produce(
        self,
        transport_id: str,
        producer_id: str,
        kind: Kind,
        rtp_parameters: RtpParameters,
        *,
        paused: bool = False,
    ) -> None:
        params = converter.unstructure(rtp_parameters)
        await self.call("pipe_produce", transport_id, producer_id, kind, params, paused)

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
        raw = await self.call(
            "create_plain_transport",
            router_id,
            rtcp_mux,
            comedia,
            enable_srtp,
            srtp_crypto_suite,
            app_data,
        )
        return converter.structure(raw, PlainTransportInfo)

    async def connect_plain_transport(
        self,
        transport_id: str,
        *,
        ip: str | None = None,
        port: int | None = None,
        rtcp_port: int | None = None,
        srtp_parameters: SrtpParameters | None = None,
    ) -> PlainTransportInfo:
        srtp = None if srtp_parameters is None else converter.unstructure(srtp_parameters)
        raw = await self.call("connect_plain_transport", transport_id, ip, port, rtcp_port, srtp)
        return converter.structure(raw, PlainTransportInfo)


@final
class WorkerPool:
    """The media engine as ``settings.workers`` processes. Run it with
    ``await nursery.start(pool.run)`` or ``async with open_worker_pool(...)``."""

    def __init__(self, settings: PoolSettings | None = None) -> None:
        self.settings = settings or PoolSettings()
        if self.settings.workers < 1:
            raise ValueError("a pool needs at least one worker")
        self._slots: list[WorkerHandle | None] = [None] * self.settings.workers
        self._by_tag: dict[str, WorkerHandle] = {}
        self._restarts = [0] * self.settings.workers
        #: Traffic of workers that died or were replaced.
        self._retired = new_media_counters()
        self._closing = False
        #: Pipes between routers of different workers (pipe-to-router), while running.
        self.pipes: RouterPipes | None = None

    # ---- life cycle ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every worker (returning through ``task_status`` once all run), keep them
        running until cancelled; then close their channels and wait for them to exit."""
        try:
            async with trio.open_nursery() as nursery:
                self.pipes = RouterPipes(self._router_handle, nursery)
                async with trio.open_nursery() as starting:
                    for index in range(self.settings.workers):
                        starting.start_soon(nursery.start, self._supervise, index)
                logger.info("%d media worker processes running", self.settings.workers)
                task_status.started()
        finally:
            self._closing = True
            self.pipes = None

    def close(self) -> None:
        """Stop restarting workers (the owner then cancels :meth:`run`)."""
        self._closing = True

    async def _supervise(self, index: int, *, task_status: trio.TaskStatus[None]) -> None:
        generation = 0
        started: Callable[[], None] | None = task_status.started
        while not self._closing:
            generation += 1
            handle = WorkerHandle(index, generation, self._worker_settings(index, generation))
            began = trio.current_time()
            try:
                await self._run_worker(handle, started)
            except Exception:
                if started is not None:
                    raise  # the first start failed: so does the pool's
                logger.exception("worker %d failed to start", index)
            started = None
            if self._closing:
                return
            self._restarts[index] += 1
            await trio.sleep_until(began + self.settings.restart_delay)
            logger.warning("worker %d: starting a new process", index)

    def _worker_settings(self, index: int, generation: int) -> WorkerSettings:
        base = self.settings.worker
        port = base.rtc_port
        if port:
            port += index
        return attrs.evolve(base, rtc_port=port, id_prefix=f"w{index}g{generation}-")

    async def _run_worker(self, handle: WorkerHandle, started: Callable[[], None] | None) -> None:
        """One process of a slot, from spawn to exit."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            command = [
                sys.executable,
                "-m",
                "trio_sfu.engine.worker_process",
                "--fd",
                str(child_end.fileno()),
                "--parent",
                str(os.getpid()),
                "--name",
                f"worker {handle.index}",
                "--log-level",
                self.settings.log_level,
                "--report-interval",
                str(self.settings.report_interval),
            ]
            process = await trio.lowlevel.open_process(command, pass_fds=(child_end.fileno(),))
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        handle.pid = process.pid
        channel = Channel(trio.SocketStream(trio.socket.from_stdlib_socket(parent_end)))
        handle.channel = channel
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(handle.read_loop, self._on_worker_event, self._forget_worker)
                with trio.fail_after(self.settings.start_timeout):
                    hello = await handle.call("start", converter.unstructure(handle.settings))
                handle.udp_port = hello["udpPort"]
                handle.tcp_port = hello["tcpPort"]
                handle.rtp_capabilities = converter.structure(
                    hello["rtpCapabilities"], RtpCapabilities
                )
                handle.alive = True
                self._slots[handle.index] = handle
                self._by_tag[handle.tag] = handle
                logger.info(
                    "worker %d (pid %d): WebRTC on UDP port %s, TCP port %s",
                    handle.index,
                    process.pid,
                    handle.udp_port,
                    handle.tcp_port,
                )
                if started is not None:
                    started()
                await handle.died.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._forget_worker(handle)
            with trio.CancelScope(shield=True):
                await self._reap(handle, process, channel)

    def _forget_worker(self, handle: WorkerHandle) -> None:
        """Take a dead or stopped worker out of every book; its routers' owners hear of it.
        Idempotent."""
        if handle.forgotten:
            return
        handle.forgotten = True
        handle.alive = False
        self._by_tag.pop(handle.tag, None)
        if self._slots[handle.index] is handle:
            self._slots[handle.index] = None
        counters = handle.report.get("counters")
        if counters is not None:
            for key in MEDIA_COUNTERS:
                self._retired[key] += int(counters.get(key, 0))
        routers, handle.routers = handle.routers, {}
        if self.pipes is not None:
            for router_id in routers:
                self.pipes.router_closed(router_id)
        if self._closing or not handle.channel_ended:
            return  # stopped (the pool closing, or its run cancelled): not a death
        logger.error(
            "worker %d (pid %s) died: closing its %d router(s)",
            handle.index,
            handle.pid,
            len(routers),
        )
        for router_id, on_event in routers.items():
            _deliver(on_event, RouterClosed(router_id, WORKER_DIED, handle.index, handle.pid))

    async def _reap(self, handle: WorkerHandle, process: trio.Process, channel: Channel) -> None:
        """Close the channel (a live worker then exits by itself), wait, kill if need be."""
        await channel.aclose()
        with trio.move_on_after(self.settings.stop_timeout):
            await process.wait()
        if process.returncode is None:
            logger.warning("worker %d (pid %d) did not exit: killing it", handle.index, process.pid)
            process.kill()
            await process.wait()
        if not self._closing or process.returncode:
            logger.info(
                "worker %d (pid %d) exited: %s", handle.index, process.pid, process.returncode
            )

    def _on_worker_event(self, handle: WorkerHandle, event: EngineEvent) -> None:
        if self.pipes is not None:
            self.pipes.on_event(event)  # pipe follow-ups first: they never block
        on_event = handle.routers.get(event.router_id)
        if on_event is not None:
            _deliver(on_event, event)

    # ---- routing ---------------------------------------------------------------------------

    def _handle_of(self, entity_id: str) -> WorkerHandle:
        """The live worker whose tag starts ``entity_id``."""
        cut = entity_id.find("-")
        handle = self._by_tag.get(entity_id[: cut + 1]) if cut > 0 else None
        if handle is None or not handle.alive:
            raise NotFoundError(f"{entity_id!r} not found")
        return handle

    def _router_handle(self, router_id: str) -> WorkerHandle:
        handle = self._handle_of(router_id)
        if router_id not in handle.routers:
            raise NotFoundError(f"router {router_id!r} not found")
        return handle

    def live_workers(self) -> list[WorkerHandle]:
        return [h for h in self._slots if h is not None and h.alive]

    def _least_loaded(self, candidates: Collection[WorkerHandle]) -> WorkerHandle:
        return min(
            candidates,
            key=lambda h: (h.consumers(), h.meter.packets_per_second, len(h.routers), h.index),
        )

    # ---- MediaEngine -------------------------------------------------------------------------

    async def create_router(self, on_event: EventCallback, *, avoid: Collection[str] = ()) -> str:
        live = self.live_workers()
        if not live:
            raise InvalidStateError("no media worker is running")
        taken = {self._handle_of_or_none(router_id) for router_id in avoid}
        candidates = [h for h in live if h not in taken]
        if not candidates:
            raise LimitExceededError("every media worker already holds a router of this meeting")
        return await self._least_loaded(candidates).create_router(on_event)

    def _handle_of_or_none(self, entity_id: str) -> WorkerHandle | None:
        try:
            return self._handle_of(entity_id)
        except NotFoundError:
            return None

    def router_overloaded(self, router_id: str) -> bool:
        handle = self._handle_of_or_none(router_id)
        threshold = self.settings.pipe_threshold
        if handle is None or handle.consumers() < threshold:
            return False
        return any(h is not handle and h.consumers() < threshold for h in self.live_workers())

    async def close_router(self, router_id: str) -> None:
        handle = self._handle_of_or_none(router_id)
        if handle is not None:
            await handle.close_router(router_id)
            if self.pipes is not None:
                self.pipes.router_closed(router_id)

    async def pipe_to_router(self, producer_id: str, *, from_router: str, to_router: str) -> None:
        """Make a producer of ``from_router`` consumable on ``to_router`` (on the same or
        another worker): see :class:`~trio_sfu.engine.pipe.RouterPipes`."""
        if self.pipes is None:
            raise InvalidStateError("the worker pool is not running")
        await self.pipes.pipe_to_router(producer_id, from_router=from_router, to_router=to_router)

    def router_rtp_capabilities(self, router_id: str) -> RtpCapabilities:
        caps = self._router_handle(router_id).rtp_capabilities
        assert caps is not None
        return caps

    async def create_webrtc_transport(
        self, router_id: str, *, force_tcp: bool = False, app_data: dict[str, Any] | None = None
    ) -> TransportInfo:
        return await self._router_handle(router_id).create_webrtc_transport(
            router_id, force_tcp=force_tcp, app_data=app_data
        )

    async def connect_transport(self, transport_id: str, dtls_parameters: DtlsParameters) -> None:
        await self._handle_of(transport_id).connect_transport(transport_id, dtls_parameters)

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
        return await self._router_handle(router_id).create_plain_transport(
            router_id,
            rtcp_mux=rtcp_mux,
            comedia=comedia,
            enable_srtp=enable_srtp,
            srtp_crypto_suite=srtp_crypto_suite,
            app_data=app_data,
        )

    async def connect_plain_transport(
        self,
        transport_id: str,
        *,
        ip: str | None = None,
        port: int | None = None,
        rtcp_port: int | None = None,
        srtp_parameters: SrtpParameters | None = None,
    ) -> PlainTransportInfo:
        return await self._handle_of(transport_id).connect_plain_transport(
            transport_id, ip=ip, port=port, rtcp_port=rtcp_port, srtp_parameters=srtp_parameters
        )

    async def restart_ice(self, transport_id: str) -> IceParameters:
        return await self._handle_of(transport_id).restart_ice(transport_id)

    async def close_transport(self, transport_id: str) -> None:
        handle = self._handle_of_or_none(transport_id)
        if handle is not None:
            await handle.close_transport(transport_id)
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
        return await self._handle_of(transport_id).produce(
            transport_id, kind, rtp_parameters, paused=paused
        )

    async def close_producer(self, producer_id: str) -> None:
        handle = self._handle_of_or_none(producer_id)
        if handle is not None:
            await handle.close_producer(producer_id)

    async def pause_producer(self, producer_id: str) -> None:
        await self._handle_of(producer_id).pause_producer(producer_id)

    async def resume_producer(self, producer_id: str) -> None:
        await self._handle_of(producer_id).resume_producer(producer_id)

    async def can_consume(
        self, router_id: str, producer_id: str, rtp_capabilities: RtpCapabilities
    ) -> bool:
        return await self._router_handle(router_id).can_consume(
            router_id, producer_id, rtp_capabilities
        )

    async def consume(
        self,
        transport_id: str,
        producer_id: str,
        rtp_capabilities: RtpCapabilities,
        *,
        paused: bool = True,
    ) -> ConsumerInfo:
        return await self._handle_of(transport_id).consume(
            transport_id, producer_id, rtp_capabilities, paused=paused
        )

    async def close_consumer(self, consumer_id: str) -> None:
        handle = self._handle_of_or_none(consumer_id)
        if handle is not None:
            await handle.close_consumer(consumer_id)

    async def pause_consumer(self, consumer_id: str) -> None:
        await self._handle_of(consumer_id).pause_consumer(consumer_id)

    async def resume_consumer(self, consumer_id: str) -> None:
        await self._handle_of(consumer_id).resume_consumer(consumer_id)

    async def set_consumer_preferred_layers(
        self, consumer_id: str, spatial_layer: int, temporal_layer: int | None
    ) -> tuple[int, int]:
        return await self._handle_of(consumer_id).set_consumer_preferred_layers(
            consumer_id, spatial_layer, temporal_layer
        )

    async def get_stats(self, entity_id: str) -> list[dict[str, Any]]:
        return await self._handle_of(entity_id).get_stats(entity_id)

    def media_counters(self) -> dict[str, int]:
        """Totals as of each worker's last report (at most ``report_interval`` old), dead
        and replaced workers included."""
        counters = dict(self._retired)
        for handle in self.live_workers():
            reported = handle.report.get("counters", {})
            for key in MEDIA_COUNTERS:
                counters[key] += int(reported.get(key, 0))
        return counters

    def dump(self) -> dict[str, Any]:
        """The routers the pool knows of, by worker (no round trip; see :meth:`dump_workers`
        for what the workers themselves hold)."""
        return {
            "routers": [
                {"id": router_id, "worker": handle.index}
                for handle in self.live_workers()
                for router_id in handle.routers
            ]
        }

    async def dump_workers(self) -> list[dict[str, Any]]:
        """Every live worker's own dump (its routers with their transports, producers and
        consumers), asked now."""
        return [
            {"index": handle.index, "pid": handle.pid, **await handle.dump()}
            for handle in self.live_workers()
        ]

    def workers_info(self) -> list[dict[str, Any]]:
        out = []
        for index, handle in enumerate(self._slots):
            entry = (
                handle.info()
                if handle is not None
                else {"index": index, "pid": None, "alive": False, "routers": 0}
            )
            entry["restarts"] = self._restarts[index]
            out.append(entry)
        return out


def _deliver(on_event: EventCallback, event: EngineEvent) -> None:
    try:
        on_event(event)
    except Exception:
        logger.exception("an engine event callback failed on %r", event)


@asynccontextmanager
async def open_worker_pool(settings: PoolSettings | None = None) -> AsyncIterator[WorkerPool]:
    """A running pool for the duration of the block; every worker has exited after it."""
    pool = WorkerPool(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        try:
            yield pool
        finally:
            pool.close()
            nursery.cancel_scope.cancel()
