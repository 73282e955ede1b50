"""WorkerHandle: the signaling process's side of one worker process.

A handle owns the parent's end of the worker's channel (:mod:`trio_sfu.engine.channel`):
it numbers requests, matches answers to them, reads notifications (engine events, load
reports) and keeps the worker's books (its routers with their owners' callbacks, its load).
:class:`~trio_sfu.engine.pool.WorkerPool` starts the process, runs :meth:`read_loop` and
picks the handle that serves each request; pipe-to-router calls a handle directly.

Every verb of :data:`~trio_sfu.engine.api.VERBS` is a method of a handle
(``handle.consume(...)``, through :meth:`WorkerHandle.__getattr__`), sent to this worker
whatever its ids say; the arguments are unstructured on send and the result structured on
receipt, as the table says.

Time bounds: a request is answered within ``request_timeout`` seconds or its worker is
taken for wedged (:meth:`WorkerHandle.fail`): the caller gets :class:`WorkerTimeoutError`,
the process is killed, and its death takes the usual way (its routers' owners hear
``worker_died``, the pool starts a new process in the slot). Requests are served one at a
time in arrival order, so a worker that leaves one unanswered that long has every later
request waiting behind it, and its media run on the same event loop: it is of no use to
its meetings any more, and a restart lets them start again elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, final

import attrs
import trio

from trio_sfu.engine.api import VERBS, EngineEvent, EventCallback
from trio_sfu.engine.channel import (
    NOTIFY,
    REQUEST,
    RESPONSE,
    Channel,
    decode_error,
    decode_event,
)
from trio_sfu.engine.load import LoadMeter
from trio_sfu.engine.router import new_media_counters
from trio_sfu.engine.verbs import Verb, forwarder
from trio_sfu.engine.worker import WorkerSettings
from trio_sfu.errors import BadPacket, InvalidStateError, SfuError
from trio_sfu.ortc.types import RtpCapabilities

logger = logging.getLogger(__name__)


class WorkerDiedError(InvalidStateError):
    """The worker holding the entity died while (or before) the request ran."""


class WorkerTimeoutError(WorkerDiedError):
    """The worker did not answer in time: it was taken for wedged and is being replaced."""


@final
@attrs.define(eq=False)
class _Pending:
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: SfuError | None = None


@final
class WorkerHandle:
    """The signaling side of one worker process: its channel, its routers, its load.

    Its verbs are sent to this worker whatever the ids say (the pool picks the worker;
    pipe-to-router uses a handle directly).
    """

    def __init__(
        self, index: int, generation: int, settings: WorkerSettings, request_timeout: float
    ) -> None:
        self.index = index
        self.generation = generation
        self.tag = f"w{index}g{generation}-"
        self.settings = settings
        #: Seconds a request may take, from the call to the answer.
        self.request_timeout = request_timeout
        self.pid: int | None = None
        #: The process, once started (the pool owns it; :meth:`fail` kills it).
        self.process: trio.Process | None = None
        self.alive = False
        self.died = trio.Event()
        #: Its channel ended by itself (EOF or broken): the process died, it was not
        #: stopped by the pool.
        self.channel_ended = False
        #: Why it was taken for wedged (:meth:`fail`), if it was.
        self.failure: str | None = None
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

    async def call(
        self, method: str, args: list[Any], *, answer_within: float | None = None
    ) -> Any:
        """Send one request and wait for its answer, ``answer_within`` seconds at most in
        all (``request_timeout`` by default; a caller's own cancel scope cannot do this: a
        worker that misses it is killed). Raises what the worker refused with,
        :class:`WorkerDiedError`, or :class:`WorkerTimeoutError` (the worker is then
        killed: see :meth:`fail`). Cancelling the caller abandons the answer, not the
        request."""
        channel = self.channel
        if channel is None or self.died.is_set() or self.failure is not None:
            raise self._death_error("is not running")
        timeout = self.request_timeout if answer_within is None else answer_within
        deadline = trio.current_time() + timeout
        self._next_request += 1
        request_id = self._next_request
        pending = _Pending()
        self._pending[request_id] = pending
        try:
            # A cancelled half-written frame would break the channel for everyone: the
            # write is shielded from the caller's cancellation, though not from its time
            # bound (a wedged worker that reads nothing fills the socket, and every writer
            # queues behind the blocked one). When that runs out, the worker is killed.
            with trio.CancelScope(shield=True, deadline=deadline) as writing:
                try:
                    await channel.send([REQUEST, request_id, method, args])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise self._death_error("died") from None
            if not writing.cancelled_caught:
                with trio.move_on_at(deadline):
                    await pending.done.wait()
            if not pending.done.is_set():
                self.fail(f"did not answer {method} within {timeout:g} s")
                raise self._death_error("died")
        finally:
            del self._pending[request_id]
        if pending.error is not None:
            raise pending.error
        return pending.result

    def fail(self, reason: str) -> None:
        """Take the worker for wedged: no request goes to it any more, and its process is
        killed. Its death then takes the usual way (:meth:`read_loop` sees the channel
        end). Idempotent."""
        if self.failure is not None or self.died.is_set():
            return
        self.failure = reason
        self.alive = False
        logger.error("worker %d (pid %s) %s: killing it", self.index, self.pid, reason)
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    def _death_error(self, what: str) -> WorkerDiedError:
        if self.failure is not None:
            return WorkerTimeoutError(f"media worker {self.index} {self.failure}: restarting it")
        return WorkerDiedError(f"worker {self.index} {what}")

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
                pending.error = self._death_error("died")
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

    # ---- requests on this worker ---------------------------------------------------------

    async def request(self, verb: Verb, values: list[Any]) -> Any:
        """Send ``verb`` with its bound arguments (:meth:`Verb.bind`); its result."""
        result = verb.decode_result(await self.call(verb.name, verb.encode_args(values)))
        if verb.name == "consume":
            self.consumers_since_report += 1
        return result

    def __getattr__(self, name: str) -> Callable[..., Any]:
        """The verbs: ``await handle.consume(transport_id, ...)`` sends ``consume`` to this
        worker. AttributeError for any other name."""
        return forwarder(VERBS, self, name, self.request)

    async def create_router(self, on_event: EventCallback) -> str:
        router_id: str = await self.call("create_router", [])
        self.routers[router_id] = on_event
        return router_id

    async def close_router(self, router_id: str) -> None:
        known = self.routers.pop(router_id, None) is not None
        if known and not self.died.is_set() and self.failure is None:
            await self.request(VERBS["close_router"], [router_id])

    async def dump(self) -> dict[str, Any]:
        """What the worker holds: its routers with their transports, producers and
        consumers."""
        dump: dict[str, Any] = await self.call("dump", [])
        return dump
