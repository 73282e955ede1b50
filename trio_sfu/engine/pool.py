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
Each verb of :data:`~trio_sfu.engine.api.VERBS` names the parameter that routes it: the
pool's ``__getattr__`` serves them all from that table, and only what the pool does
besides sending (the books of routers, the pipes) is written here.

A worker's death (crash, SIGKILL, OOM) ends its channel: the reader sees the end of stream
at once, requests waiting on that worker fail, each of its routers' owners gets
:class:`~trio_sfu.engine.api.RouterClosed` (reason ``worker_died``), its counters are kept
as retired totals, and the slot starts a new process (at most once per
``restart_delay``). Closing the pool closes every channel; a worker that sees its channel
end closes its routers and exits, and one that has not exited ``stop_timeout`` later is
killed. A worker whose parent dies exits by itself (its channel ends). A worker that
leaves a request unanswered for ``request_timeout`` seconds is taken for wedged: its caller
gets :class:`~trio_sfu.engine.worker_handle.WorkerTimeoutError` (``invalid_state`` to a
client) and the worker is killed, which is then a death like any other. A wedged worker
costs only its own callers: each worker has a channel of its own.
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

from trio_sfu.engine.api import VERBS, EngineEvent, EventCallback, RouterClosed
from trio_sfu.engine.channel import Channel
from trio_sfu.engine.pipe import RouterPipes
from trio_sfu.engine.router import MEDIA_COUNTERS, new_media_counters
from trio_sfu.engine.verbs import Verb, forwarder
from trio_sfu.engine.worker import WorkerSettings
from trio_sfu.engine.worker_handle import WorkerDiedError, WorkerHandle, WorkerTimeoutError
from trio_sfu.errors import InvalidStateError, LimitExceededError, NotFoundError
from trio_sfu.ortc.types import RtpCapabilities
from trio_sfu.wire import converter

__all__ = [
    "WORKER_DIED",
    "PoolSettings",
    "WorkerDiedError",
    "WorkerHandle",
    "WorkerPool",
    "WorkerTimeoutError",
    "open_worker_pool",
]

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
    #: How long a request may take, from the call to the answer; a worker that takes
    #: longer is taken for wedged and replaced (see :mod:`~trio_sfu.engine.worker_handle`).
    request_timeout: float = 15.0
    log_level: str = "info"


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
            handle = WorkerHandle(
                index,
                generation,
                self._worker_settings(index, generation),
                self.settings.request_timeout,
            )
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
        handle.process = process
        channel = Channel(trio.SocketStream(trio.socket.from_stdlib_socket(parent_end)))
        handle.channel = channel
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(handle.read_loop, self._on_worker_event, self._forget_worker)
                with trio.fail_after(self.settings.start_timeout):
                    hello = await handle.call(
                        "start",
                        [converter.unstructure(handle.settings)],
                        answer_within=self.settings.start_timeout,
                    )
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
            with trio.CancelScope(shield=True):  # bounded: two stop_timeouts at most
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
            with trio.move_on_after(self.settings.stop_timeout):
                await process.wait()
            if process.returncode is None:
                logger.error("worker %d (pid %d) outlived SIGKILL", handle.index, process.pid)
                return
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

    async def close_transport(self, transport_id: str) -> None:
        await self._route(VERBS["close_transport"], [transport_id])
        if self.pipes is not None:
            self.pipes.transport_closed(transport_id)  # if a pipe: the other end too

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

    # ---- the verbs -----------------------------------------------------------------------

    def __getattr__(self, name: str) -> Callable[..., Any]:
        """The verbs of :data:`~trio_sfu.engine.api.VERBS` but those above:
        ``await pool.consume(transport_id, ...)`` goes to the worker that :meth:`_route`
        picks. AttributeError for any other name."""
        return forwarder(VERBS, self, name, self._route)

    async def _route(self, verb: Verb, values: list[Any]) -> Any:
        """Send ``verb`` (its bound arguments: :meth:`Verb.bind`) to the worker named by
        its routing id: the worker the pool placed the router on (``router_id``), else the
        one whose tag starts the id. NotFoundError where no live worker has it, but for a
        close (an idempotent verb), which has nothing to do then."""
        entity_id = values[verb.route_index]
        if verb.idempotent:
            handle = self._handle_of_or_none(entity_id)
            if handle is None:
                return None
        elif verb.route == "router_id":
            handle = self._router_handle(entity_id)
        else:
            handle = self._handle_of(entity_id)
        return await handle.request(verb, values)


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
