"""Piping producers between routers: mediasoup's ``router.pipeToRouter()``, by ids.

A meeting too big for one worker gets a second router, maybe in another worker process.
For a producer of router A to be consumable on router B, :class:`RouterPipes` makes:

* one pair of pipe transports per (A, B), connected to each other (each end's IP and
  port given to the other), reused by every producer piped from A to B;
* per producer, a pipe consumer on A's end (every stream of the producer, as it is) and
  on B's end a pipe producer with the same id, made from the pipe consumer's parameters.
  B's own consumers then consume it like any producer; layer selection happens on B.

Everything is done through the engine's id-based primitives (``create_pipe_transport``,
``connect_pipe_transport``, ``pipe_consume``, ``pipe_produce``, ``close_*``,
``pause_producer`` / ``resume_producer``) on whichever engine holds each router:
``endpoint_for(router_id)`` says which (any :class:`~trio_sfu.engine.api.EngineVerbs`). In
one process that is the Worker for both; in a pool of worker processes, the handle of each
router's worker.

What follows a pipe is driven by the events the routers emit, handed to :meth:`on_event`
before anyone else sees them:

* the producer paused / resumed (``ConsumerProducerPaused`` of the pipe consumer): the
  pipe producer is paused / resumed;
* the producer closed (``ConsumerClosed`` of the pipe consumer, ``producer_closed``): the
  pipe producer is closed, and with it B's consumers (``ConsumerClosed`` on B);
* a pipe transport closed (``TransportClosed``, a pipe consumer's ``transport_closed``,
  or :meth:`transport_closed` for a close someone asked for): the link is forgotten and
  its other end closed, which closes the pipe producers on it;
* a router closed (:meth:`router_closed`): likewise for every link touching it.

Ownership: :class:`RouterPipes` holds ids only, never an engine object. The follow-up
work (the calls on the other router) runs as tasks in the nursery it is given; they end
when done, and with that nursery. :meth:`on_event` never blocks. Once every pipe and
router closed, its maps are empty.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import final

import attrs
import trio

from trio_sfu.engine.api import (
    ConsumerClosed,
    ConsumerProducerPaused,
    EngineEvent,
    EngineVerbs,
    RouterClosed,
    TransportClosed,
)
from trio_sfu.errors import InvalidStateError, SfuError

logger = logging.getLogger(__name__)


#: router id -> the engine that holds it.
EndpointResolver = Callable[[str], EngineVerbs]


@attrs.define(eq=False)
class _Link:
    """A pair of pipe transports from one router to another, connected to each other."""

    from_router: str
    to_router: str
    #: Set once made (or failed): callers that found it being made wait for this.
    ready: trio.Event = attrs.field(factory=trio.Event)
    #: The pipe transport in ``from_router`` (pipe consumers) and in ``to_router`` (pipe
    #: producers), as soon as each exists.
    local_id: str | None = None
    remote_id: str | None = None
    #: Made and connected.
    usable: bool = False
    #: Forgotten (a transport or router closed, or making it failed).
    gone: bool = False


@attrs.define(eq=False)
class _Pipe:
    """One producer piped to one router."""

    producer_id: str
    from_router: str
    to_router: str
    #: Set once piped (or failed): concurrent callers wait for this.
    done: trio.Event = attrs.field(factory=trio.Event)
    link: _Link | None = None
    consumer_id: str | None = None
    ok: bool = False
    #: The pipe producer exists on ``to_router`` (follow-ups may act on it).
    produced: bool = False
    #: The producer's paused state, as last reported and as last applied to the pipe
    #: producer.
    paused: bool = False
    applied_paused: bool = False
    #: The producer closed: the pipe producer is to be closed.
    close_wanted: bool = False
    #: A follow-up task is running for this pipe.
    syncing: bool = False


@final
class RouterPipes:
    """The pipes between routers: which exist, making them, and following their producers.

    ``endpoint_for(router_id)`` gives the engine holding a router (its verbs act on that
    router's worker whatever the ids say); ``nursery`` owns the follow-up tasks (closes and
    pauses on the other router), which never outlive it.
    """

    def __init__(self, endpoint_for: EndpointResolver, nursery: trio.Nursery) -> None:
        self._endpoint_for = endpoint_for
        self._nursery = nursery
        #: (from router, to router) -> the link, while it is made and while it lives.
        self.links: dict[tuple[str, str], _Link] = {}
        #: (producer id, to router) -> the pipe, while it is made and while it lives.
        self.pipes: dict[tuple[str, str], _Pipe] = {}
        #: Each end's pipe transport id -> its link.
        self._link_of_transport: dict[str, _Link] = {}
        #: Pipe consumer id -> its pipe.
        self._pipe_of_consumer: dict[str, _Pipe] = {}

    # ---- piping ------------------------------------------------------------------------

    async def pipe_to_router(self, producer_id: str, *, from_router: str, to_router: str) -> None:
        """Make producer ``producer_id`` of ``from_router`` consumable on ``to_router``
        (a pipe producer with the same id). Returns at once if it is piped there already;
        while another call pipes it, waits for that call (and tries again if it failed).

        Raises what the engines raise (NotFoundError for an unknown router or producer,
        UnsupportedError when ``to_router`` lacks a codec), InvalidStateError for
        ``from_router == to_router``. Cancellation: a cancelled call leaves nothing behind
        (what it made is closed by tasks in the nursery); the pipe may be made by the
        next call.
        """
        if from_router == to_router:
            raise InvalidStateError("a producer cannot be piped to its own router")
        key = (producer_id, to_router)
        while (pipe := self.pipes.get(key)) is not None:
            await pipe.done.wait()
            if pipe.ok:
                return
        pipe = _Pipe(producer_id, from_router, to_router)
        self.pipes[key] = pipe
        try:
            await self._make_pipe(pipe)
            pipe.ok = True
        finally:
            if not pipe.ok:
                self._forget_pipe(pipe)
                if pipe.consumer_id is not None:
                    self._spawn(self._close_consumer, from_router, pipe.consumer_id)
            pipe.done.set()

    async def _make_pipe(self, pipe: _Pipe) -> None:
        link = pipe.link = await self._link(pipe.from_router, pipe.to_router)
        assert link.local_id is not None and link.remote_id is not None
        info = await self._endpoint_for(pipe.from_router).pipe_consume(
            link.local_id, pipe.producer_id
        )
        pipe.consumer_id = info.consumer_id
        pipe.paused = pipe.applied_paused = info.producer_paused
        if link.gone:
            raise InvalidStateError(f"the pipe from router {pipe.from_router} closed")
        self._pipe_of_consumer[info.consumer_id] = pipe
        try:
            await self._endpoint_for(pipe.to_router).pipe_produce(
                link.remote_id,
                pipe.producer_id,
                info.kind,
                info.rtp_parameters,
                paused=info.producer_paused,
            )
        except SfuError:
            raise  # refused: nothing was made
        except BaseException:
            # Cancelled (or the engine failed) during the call: it may have been made.
            self._spawn(self._close_producer, pipe.to_router, pipe.producer_id)
            raise
        pipe.produced = True
        self._follow(pipe)  # what happened meanwhile: a pause, a resume, a close

    async def _link(self, from_router: str, to_router: str) -> _Link:
        """The connected pair of pipe transports from ``from_router`` to ``to_router``:
        the one there is, or a new one."""
        key = (from_router, to_router)
        while (link := self.links.get(key)) is not None:
            await link.ready.wait()
            if link.usable and not link.gone:
                return link
        link = _Link(from_router, to_router)
        self.links[key] = link
        try:
            source = self._endpoint_for(from_router)
            destination = self._endpoint_for(to_router)
            local = await source.create_pipe_transport(from_router)
            link.local_id = local.transport_id
            self._link_of_transport[local.transport_id] = link
            remote = await destination.create_pipe_transport(to_router)
            link.remote_id = remote.transport_id
            self._link_of_transport[remote.transport_id] = link
            if link.gone:
                raise InvalidStateError(f"router {from_router} or {to_router} closed")
            await source.connect_pipe_transport(local.transport_id, remote.ip, remote.port)
            await destination.connect_pipe_transport(remote.transport_id, local.ip, local.port)
            if link.gone:
                raise InvalidStateError(f"router {from_router} or {to_router} closed")
            link.usable = True
        finally:
            if not link.usable:
                self._drop_link(link)
            link.ready.set()
        return link

    # ---- events ------------------------------------------------------------------------

    def on_event(self, event: EngineEvent) -> None:
        """Follow what a router reports about our pipe consumers and pipe transports.
        Synchronous, never blocks: the calls on the other router run as tasks."""
        if isinstance(event, ConsumerProducerPaused):
            pipe = self._pipe_of_consumer.get(event.consumer_id)
            if pipe is not None:
                pipe.paused = event.producer_paused
                self._follow(pipe)
        elif isinstance(event, ConsumerClosed):
            pipe = self._pipe_of_consumer.get(event.consumer_id)
            if pipe is None:
                return
            self._forget_pipe(pipe)
            if event.reason == "producer_closed":
                pipe.close_wanted = True
                self._follow(pipe)
            elif pipe.link is not None:
                # Its pipe transport closed: the whole link goes (the other end's close
                # closes the pipe producers on it).
                self._drop_link(pipe.link)
        elif isinstance(event, TransportClosed):
            self.transport_closed(event.transport_id)
        elif isinstance(event, RouterClosed):
            self.router_closed(event.router_id)

    def transport_closed(self, transport_id: str) -> None:
        """A transport closed (by itself or on request): if it is one end of a link, the
        link is forgotten and the other end closed."""
        link = self._link_of_transport.get(transport_id)
        if link is not None:
            self._drop_link(link)

    def router_closed(self, router_id: str) -> None:
        """A router closed: forget every link touching it and close the pipe transports
        at the other ends (so that pipe producers from it close, with their consumers)."""
        for link in list(self.links.values()):
            if router_id in (link.from_router, link.to_router):
                self._drop_link(link, closed_router=router_id)

    # ---- bookkeeping -------------------------------------------------------------------

    def _forget_pipe(self, pipe: _Pipe) -> None:
        key = (pipe.producer_id, pipe.to_router)
        if self.pipes.get(key) is pipe:
            del self.pipes[key]
        if pipe.consumer_id is not None and self._pipe_of_consumer.get(pipe.consumer_id) is pipe:
            del self._pipe_of_consumer[pipe.consumer_id]

    def _drop_link(self, link: _Link, *, closed_router: str | None = None) -> None:
        """Forget ``link`` and its pipes; close both its transports (but those of
        ``closed_router``, gone with it). Closing is idempotent: a transport that closed
        already is not found, which is fine."""
        key = (link.from_router, link.to_router)
        if self.links.get(key) is link:
            del self.links[key]
        link.gone = True
        for pipe in [p for p in self.pipes.values() if p.link is link]:
            self._forget_pipe(pipe)
        for router_id, transport_id in (
            (link.from_router, link.local_id),
            (link.to_router, link.remote_id),
        ):
            if transport_id is None:
                continue
            if self._link_of_transport.get(transport_id) is link:
                del self._link_of_transport[transport_id]
            if router_id != closed_router:
                self._spawn(self._close_transport, router_id, transport_id)

    # ---- follow-up tasks ---------------------------------------------------------------

    def _spawn(
        self, fn: Callable[[str, str], Awaitable[None]], router_id: str, entity_id: str
    ) -> None:
        try:
            self._nursery.start_soon(fn, router_id, entity_id)
        except RuntimeError:  # the nursery is closing: its engine is going away
            logger.debug("no follow-up for %s in router %s: shutting down", entity_id, router_id)

    def _follow(self, pipe: _Pipe) -> None:
        """Bring the pipe producer in line with its producer (a task, one per pipe at a
        time, so that a pause and a resume are applied in order)."""
        if pipe.syncing or not pipe.produced:
            return
        if not pipe.close_wanted and pipe.paused == pipe.applied_paused:
            return
        pipe.syncing = True
        try:
            self._nursery.start_soon(self._sync, pipe)
        except RuntimeError:
            pipe.syncing = False
            logger.debug("pipe of %s not followed: shutting down", pipe.producer_id)

    async def _sync(self, pipe: _Pipe) -> None:
        try:
            endpoint = self._endpoint_for(pipe.to_router)
            while True:
                if pipe.close_wanted:
                    await endpoint.close_producer(pipe.producer_id)
                    return
                paused = pipe.paused
                if paused == pipe.applied_paused:
                    return
                if paused:
                    await endpoint.pause_producer(pipe.producer_id)
                else:
                    await endpoint.resume_producer(pipe.producer_id)
                pipe.applied_paused = paused
        except SfuError as exc:  # e.g. the pipe producer closed meanwhile
            logger.debug("pipe producer %s not updated: %s", pipe.producer_id, exc)
        except Exception:
            logger.exception(
                "pipe producer %s in %s: update failed", pipe.producer_id, pipe.to_router
            )
        finally:
            pipe.syncing = False

    async def _close_transport(self, router_id: str, transport_id: str) -> None:
        try:
            await self._endpoint_for(router_id).close_transport(transport_id)
        except Exception:
            logger.exception(
                "closing pipe transport %s of router %s failed", transport_id, router_id
            )

    async def _close_consumer(self, router_id: str, consumer_id: str) -> None:
        try:
            await self._endpoint_for(router_id).close_consumer(consumer_id)
        except Exception:
            logger.exception("closing pipe consumer %s of router %s failed", consumer_id, router_id)

    async def _close_producer(self, router_id: str, producer_id: str) -> None:
        try:
            await self._endpoint_for(router_id).close_producer(producer_id)
        except Exception:
            logger.exception("closing pipe producer %s of router %s failed", producer_id, router_id)
