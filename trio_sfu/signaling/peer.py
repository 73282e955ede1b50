"""A peer: one connection's membership in a meeting, its ids, its task and its requests.

Ownership (ARCHITECTURE.md): a peer's task runs in its room's nursery, under a cancel scope
of its own (see :mod:`trio_sfu.signaling.room`). A peer ends on ``rtc:leave``, a closed
WebSocket, a transport closed by ICE consent timeout, an admin kick, a room close, or
``peer_idle_timeout`` seconds without any transport (joined and never created one, or all
of them were closed: its socket closes with 4003): each cancels its scope, and its
``finally`` closes its transports through the engine (bounded, shielded), after which the
others hear ``rtc:producerClosed`` and ``rtc:peerLeft``. Cleanup never waits for a client.
A transport the engine closes by itself (never connected within the engine's connect
timeout, DTLS failure, ICE consent) is reported to its peer as ``rtc:transportClosed``.

A peer's requests run inside its own task, one at a time in arrival order, so a kick or a
room close also cancels the request in flight. Each answer is queued on the connection in
the same step that updates the books, so no notification about an object can overtake the
answer that created it.

A peer acts only on ids in its own maps; any other id (another peer's, another meeting's)
is ``not_found`` before the engine is called (counted and logged as the refusal
``foreign_id`` when it does belong to someone else: :meth:`PeerServices.owned_by_another`).

What a peer needs of its room and of the server is :class:`PeerHost` and
:class:`PeerServices`; :class:`~trio_sfu.signaling.room.Room` and
:class:`~trio_sfu.signaling.room.RoomManager` provide them.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Protocol, final

import attrs
import trio

from trio_sfu.config import ServerConfig
from trio_sfu.engine.api import (
    MediaEngine,
)
from trio_sfu.errors import (
    InvalidStateError,
    LimitExceededError,
    NotFoundError,
    SfuError,
    UnsupportedError,
)
from trio_sfu.signaling.auth import Grant
from trio_sfu.signaling.errors import ForbiddenError, NotJoinedError
from trio_sfu.signaling.messages import (
    ConnectPlainTransportRequest,
    ConnectTransportRequest,
    ConsumedAnswer,
    ConsumerClosedNotice,
    ConsumeRequest,
    ConsumerIdAnswer,
    ConsumerRequest,
    CreatePlainTransportRequest,
    CreateTransportRequest,
    Direction,
    GetStatsRequest,
    IceRestartedAnswer,
    Kind,
    LeftAnswer,
    NewProducerNotice,
    PeerInfo,
    PeerLeftNotice,
    PlainTransportAnswer,
    PreferredLayers,
    PreferredLayersSetAnswer,
    ProduceRequest,
    ProducerIdAnswer,
    ProducerInfo,
    ProducerNotice,
    ProducerRequest,
    Request,
    RouterRtpCapabilitiesAnswer,
    SetPreferredLayersRequest,
    StatsAnswer,
    TransportClosedNotice,
    TransportCreatedAnswer,
    TransportIdAnswer,
    TransportRequest,
    answer_message,
    error_message,
    notification_message,
)
from trio_sfu.signaling.webhooks import WebhookSink, left_reason

if TYPE_CHECKING:
    from trio_sfu.ortc.types import RtpCapabilities

logger = logging.getLogger(__name__)

__all__ = ["ContextLogger", "Job", "Peer", "PeerHost", "PeerLink", "PeerServices"]

# WebSocket close codes used when the server ends a peer.
CLOSE_ROOM_CLOSED: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_KICKED: Final = 4001
CLOSE_TRANSPORT_CLOSED: Final = 4002
#: A peer without any transport for ``peer_idle_timeout`` seconds.
CLOSE_IDLE: Final = 4003


class ContextLogger(logging.LoggerAdapter[logging.Logger]):
    """Puts the meeting and peer ids in front of every line."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = self.extra or {}
        parts = [f"{k}={v}" for k, v in extra.items() if v is not None]
        return (f"[{' '.join(parts)}] {msg}" if parts else msg), kwargs


class PeerLink(Protocol):
    """What a peer needs from its connection (the session)."""

    def send_message(self, message: dict[str, Any]) -> None:
        """Queue ``message`` without blocking. A connection that cannot keep up closes
        itself (and so ends its peer); it never blocks the caller."""

    def close_connection(self, code: int, reason: str) -> None:
        """Close the connection once the messages queued so far are sent."""


class PeerServices(Protocol):
    """What a peer needs of the server's rooms (the :class:`RoomManager`)."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def webhooks(self) -> WebhookSink:
        """Where the peer reports joins, leaves and tracks (see ``Peer.report``)."""
        ...

    def count_error(self, code: str) -> None:
        """Count an error answer for /metrics."""
        ...

    def on_refusal(self, exc: SfuError, log: ContextLogger) -> None:
        """Count and log a refused trespass (see ``SfuError.refusal``)."""
        ...

    def owned_by_another(self, entity_id: str, peer: Peer) -> bool:
        """Whether ``entity_id`` belongs to a peer other than ``peer``, in any meeting."""
        ...


class PeerHost(Protocol):
    """What a peer needs of its meeting (the :class:`Room`): the engine, the owners of
    the meeting's ids, and the notifications to the other peers."""

    meeting_id: str
    engine: MediaEngine
    closing: bool
    transport_owner: dict[str, Peer]
    producer_owner: dict[str, Peer]
    consumer_owner: dict[str, Peer]

    @property
    def manager(self) -> PeerServices: ...

    def broadcast(self, ntype: str, data: Any, exclude: Peer | None = None) -> None:
        """Send a notification to every member but ``exclude``."""
        ...

    def detach(self, peer: Peer) -> None:
        """``peer`` is ending: it is no longer a member (the others hear peerLeft)."""
        ...

    def peer_finished(self, peer: Peer) -> None:
        """``peer``'s task ended."""
        ...


@final
@attrs.define(eq=False)
class Job:
    """One request handed from a session to its peer's task."""

    type: str
    request_id: str | None
    request: Request
    done: trio.Event = attrs.field(factory=trio.Event)
    answered: bool = False


@final
@attrs.define(eq=False)
class _Transport:
    transport_id: str
    #: None: a plain transport that may both produce and consume.
    direction: Direction | None
    connected: bool = False
    plain: bool = False

    def can(self, direction: Direction) -> bool:
        return self.direction == direction or (self.plain and self.direction is None)


@final
@attrs.define(eq=False)
class _Producer:
    producer_id: str
    transport_id: str
    kind: Kind
    app_data: dict[str, Any]
    paused: bool


@final
@attrs.define(eq=False)
class _Consumer:
    consumer_id: str
    producer_id: str
    transport_id: str
    kind: Kind
    paused: bool


@final
class Peer:
    """A connection's membership in one meeting: its ids, its task, its cancel scope."""

    def __init__(
        self,
        room: PeerHost,
        grant: Grant,
        display_name: str | None,
        link: PeerLink,
        router_id: str,
    ) -> None:
        self.room = room
        #: The router (of the room's routers) that holds this peer's transports.
        self.router_id = router_id
        self.peer_id = secrets.token_hex(8)
        self.grant = grant
        self.display_name = display_name or grant.name or grant.user_id
        self.link = link
        self.transports: dict[str, _Transport] = {}
        self.producers: dict[str, _Producer] = {}
        self.consumers: dict[str, _Consumer] = {}
        self.cancel_scope = trio.CancelScope()
        self.finished = trio.Event()
        self.ending = False
        self.end_reason = "left"
        #: Whether the peer ended because its meeting closed (Room.close).
        self.ended_by_room = False
        #: When the room admitted it (None: it never became a member).
        self.joined_at: float | None = None
        self._close: tuple[int, str] | None = None
        self._jobs_tx, self._jobs_rx = trio.open_memory_channel[Job](0)
        self._current: Job | None = None
        #: Since when the peer has had no transport (None while it has one: only
        #: _transports_changed sets it), and the scope of the wait for its next request,
        #: whose deadline is the idle limit.
        self._idle_since: float | None = None
        self._idle_scope: trio.CancelScope | None = None
        self.log = ContextLogger(logger, {"meeting": room.meeting_id, "peer": self.peer_id})

    # ---- seen by others -----------------------------------------------------------------

    def info(self) -> PeerInfo:
        return PeerInfo(
            peer_id=self.peer_id,
            user_id=self.grant.user_id,
            display_name=self.display_name,
            producers=[
                ProducerInfo(p.producer_id, p.kind, p.app_data, p.paused)
                for p in self.producers.values()
            ],
        )

    def notify(self, ntype: str, data: Any) -> None:
        self.link.send_message(notification_message(ntype, data))

    def report(self, event: str, **fields: Any) -> None:
        """Tell the webhooks ``event`` about this peer (its meeting, peer and user ids go
        with ``fields``). Never blocks."""
        self.room.manager.webhooks.emit(
            event, self.room.meeting_id, peer_id=self.peer_id, user_id=self.grant.user_id, **fields
        )

    def admitted(self) -> None:
        """The room made this peer a member (the others heard rtc:peerJoined)."""
        self.joined_at = time.time()
        self.report("participant_joined", display_name=self.display_name)

    def _report_left(self) -> None:
        if self.joined_at is None:
            return  # never a member: no participant_joined went out either
        reason, close_reason = left_reason(self.end_reason, by_room=self.ended_by_room)
        extra = {} if close_reason is None else {"close_reason": close_reason}
        duration = round(time.time() - self.joined_at, 3)
        self.report(
            "participant_left",
            display_name=self.display_name,
            reason=reason,
            duration=duration,
            **extra,
        )

    def _report_unpublished(self, producer: _Producer, reason: str) -> None:
        self.report(
            "track_unpublished", producer_id=producer.producer_id, kind=producer.kind, reason=reason
        )

    def describe(self) -> dict[str, Any]:
        """The admin API's view of this peer."""
        return {
            "peerId": self.peer_id,
            "userId": self.grant.user_id,
            "displayName": self.display_name,
            "routerId": self.router_id,
            "canPublish": self.grant.can_publish,
            "canSubscribe": self.grant.can_subscribe,
            "transports": [
                {
                    "transportId": t.transport_id,
                    "type": "plain" if t.plain else "webrtc",
                    "direction": t.direction,
                    "connected": t.connected,
                }
                for t in self.transports.values()
            ],
            "producers": [
                {
                    "producerId": p.producer_id,
                    "transportId": p.transport_id,
                    "kind": p.kind,
                    "paused": p.paused,
                    "appData": p.app_data,
                }
                for p in self.producers.values()
            ],
            "consumers": [
                {
                    "consumerId": c.consumer_id,
                    "producerId": c.producer_id,
                    "transportId": c.transport_id,
                    "kind": c.kind,
                    "paused": c.paused,
                }
                for c in self.consumers.values()
            ],
        }

    # ---- life cycle -----------------------------------------------------------------------

    def end(
        self,
        reason: str,
        *,
        close: tuple[int, str] | None = None,
        notice: dict[str, Any] | None = None,
        by_room: bool = False,
    ) -> None:
        """End this peer: cancel its scope. ``notice`` is queued to it first; ``close``
        closes its connection once cleanup is done; ``by_room``: its meeting is closing
        (``reason`` is the meeting's). Idempotent; never blocks."""
        if self.ending:
            return
        self.ending = True
        self.end_reason = reason
        self.ended_by_room = by_room
        self._close = close
        if notice is not None:
            self.link.send_message(notice)
        self.cancel_scope.cancel()

    async def submit(self, job: Job) -> None:
        """Run ``job`` in this peer's task and wait until it is answered.

        Raises :class:`NotJoinedError` if the peer has already ended (nothing was answered).
        Cancelling the caller does not cancel the job.
        """
        try:
            await self._jobs_tx.send(job)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise NotJoinedError("not in a meeting (this peer has left)") from None
        await job.done.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The peer's task, in the room's nursery: serve requests until the peer ends."""
        try:
            with self.cancel_scope:
                self._transports_changed()  # none yet: the idle clock starts
                task_status.started()
                while True:
                    job = await self._next_job()
                    if job is None:
                        break
                    self._current = job
                    await self._handle(job)
                    if job.type == "rtc:leave" and not job.answered:
                        self.ending = True
                        break
                    job.done.set()
                    self._current = None
        except Exception:
            self.log.exception("peer task failed; the peer is removed")
        finally:
            self.ending = True
            self._jobs_rx.close()
            try:
                await self._cleanup()
            except Exception:
                self.log.exception("peer cleanup failed")
            finally:
                self._finish()

    def _idle_deadline(self) -> float:
        if self._idle_since is None:
            return math.inf
        return self._idle_since + self.room.manager.config.peer_idle_timeout

    def _add_transport(self, transport: _Transport) -> None:
        self.transports[transport.transport_id] = transport
        self.room.transport_owner[transport.transport_id] = self
        self._transports_changed()

    def _drop_transport(self, transport_id: str) -> bool:
        """Forget one of our transports; False if it was not ours (any more)."""
        if self.transports.pop(transport_id, None) is None:
            return False
        self.room.transport_owner.pop(transport_id, None)
        self._transports_changed()
        return True

    def _transports_changed(self) -> None:
        """Keep the idle clock in step with :attr:`transports`, the one state it is read
        from: stopped while the peer has a transport, started when the last one goes, and
        the wait for the next request told of its new deadline."""
        if self.transports:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = trio.current_time()
        if self._idle_scope is not None:
            self._idle_scope.deadline = self._idle_deadline()

    async def _next_job(self) -> Job | None:
        """The next request; None when the session is gone, or when the peer has had no
        transport for ``peer_idle_timeout`` seconds meanwhile (it is then ended: reaped).

        Each time the wait's deadline passes, the peer is either reaped or the deadline is
        read again from :attr:`transports` (so it is in the future, or infinite while the
        peer has a transport): a deadline in the past is never waited on twice."""
        while True:
            with trio.CancelScope(deadline=self._idle_deadline()) as idle:
                self._idle_scope = idle
                try:
                    return await self._jobs_rx.receive()
                except trio.EndOfChannel:
                    return None
                finally:
                    self._idle_scope = None
            self._transports_changed()
            if trio.current_time() >= self._idle_deadline():
                timeout = self.room.manager.config.peer_idle_timeout
                self.log.info("no transport for %.0f s: ending the idle peer", timeout)
                self.end("idle_timeout", close=(CLOSE_IDLE, "idle_timeout"))
                return None

    def _finish(self) -> None:
        """Answer the request in flight (``rtc:left`` for a leave), then close the
        connection if the server ended this peer. Never raises: the session waits on it."""
        current, self._current = self._current, None
        if current is not None:
            if current.answered:
                pass
            elif current.type == "rtc:leave":
                self._answer(current, _LEFT)
            else:
                self._answer_error(
                    current, NotJoinedError(f"the peer left the meeting ({self.end_reason})")
                )
            current.done.set()
        if self._close is not None:
            self.link.close_connection(*self._close)
        self.finished.set()

    async def _cleanup(self) -> None:
        room = self.room
        room.detach(self)
        timeout = room.manager.config.cleanup_timeout
        with trio.move_on_after(timeout, shield=True) as scope:
            for transport_id in list(self.transports):
                try:
                    await room.engine.close_transport(transport_id)
                except SfuError as exc:
                    self.log.debug("close_transport %s: %s", transport_id, exc)
                except Exception:
                    self.log.exception("close_transport %s failed", transport_id)
        if scope.cancelled_caught:
            self.log.warning("cleanup took longer than %.1fs; gave up waiting", timeout)
        if not room.closing:
            for producer in self.producers.values():
                room.broadcast(
                    "rtc:producerClosed", ProducerNotice(producer.producer_id, self.peer_id)
                )
            room.broadcast("rtc:peerLeft", PeerLeftNotice(self.peer_id))
        for producer in self.producers.values():
            self._report_unpublished(producer, "participant_left")
        self._report_left()
        self.transports.clear()
        self.producers.clear()
        self.consumers.clear()
        self.log.info("left the meeting (%s)", self.end_reason)
        room.peer_finished(self)

    # ---- engine events for this peer ------------------------------------------------------

    def transport_closed(self, transport_id: str, reason: str) -> None:
        """The engine closed one of our transports by itself: the peer hears
        ``rtc:transportClosed``."""
        if not self._drop_transport(transport_id):
            return
        self.log.info("transport %s closed by the engine: %s", transport_id, reason)
        self.notify("rtc:transportClosed", TransportClosedNotice(transport_id, reason))
        if "consent" in reason:
            self.end("ice_consent_timeout", close=(CLOSE_TRANSPORT_CLOSED, reason))
            return
        for producer in [p for p in self.producers.values() if p.transport_id == transport_id]:
            self._forget_producer(producer.producer_id)
            self.room.broadcast(
                "rtc:producerClosed", ProducerNotice(producer.producer_id, self.peer_id), self
            )
            self._report_unpublished(producer, "transport_closed")
        for consumer in [c for c in self.consumers.values() if c.transport_id == transport_id]:
            self._forget_consumer(consumer.consumer_id)
            self.notify(
                "rtc:consumerClosed",
                ConsumerClosedNotice(
                    consumer.consumer_id, consumer.producer_id, "transport_closed"
                ),
            )

    def consumer_closed(self, consumer_id: str, producer_id: str, reason: str) -> None:
        if consumer_id in self.consumers:
            self._forget_consumer(consumer_id)
            self.notify(
                "rtc:consumerClosed", ConsumerClosedNotice(consumer_id, producer_id, reason)
            )

    def _forget_producer(self, producer_id: str) -> _Producer | None:
        self.room.producer_owner.pop(producer_id, None)
        return self.producers.pop(producer_id, None)

    def _forget_consumer(self, consumer_id: str) -> _Consumer | None:
        self.room.consumer_owner.pop(consumer_id, None)
        return self.consumers.pop(consumer_id, None)

    # ---- requests ---------------------------------------------------------------------------

    def _answer(self, job: Job, data: Any) -> None:
        job.answered = True
        self.link.send_message(answer_message(job.type, job.request_id, data))

    def _answer_error(self, job: Job, exc: SfuError) -> None:
        job.answered = True
        self.room.manager.count_error(exc.code)
        if exc.refusal is not None:
            self.room.manager.on_refusal(exc, self.log)
        self.link.send_message(
            error_message(exc.code, exc.message, request_id=job.request_id, request=job.type)
        )

    async def _handle(self, job: Job) -> None:
        handler = _HANDLERS.get(job.type)
        try:
            if handler is None:  # the session only submits known, non-join types
                raise NotJoinedError(f"{job.type} is not a request for a joined peer")
            answer = await handler(self, job.request)
        except SfuError as exc:
            self._answer_error(job, exc)
        except Exception:
            self.log.exception("internal error in %s", job.type)
            self._answer_error(job, _InternalError("internal server error (logged)"))
        else:
            if answer is not None:
                self._answer(job, answer)

    def _not_found(self, what: str, entity_id: str) -> NotFoundError:
        """``not_found`` for an id this peer does not hold; a refusal (``foreign_id``) when
        it is another peer's, in this meeting or another."""
        foreign = self.room.manager.owned_by_another(entity_id, self)
        return NotFoundError(
            f"{what} {entity_id!r} not found", refusal="foreign_id" if foreign else None
        )

    def _transport(self, transport_id: str) -> _Transport:
        transport = self.transports.get(transport_id)
        if transport is None:
            raise self._not_found("transport", transport_id)
        return transport

    def _producer(self, producer_id: str) -> _Producer:
        producer = self.producers.get(producer_id)
        if producer is None:
            raise self._not_found("producer", producer_id)
        return producer

    def _consumer(self, consumer_id: str) -> _Consumer:
        consumer = self.consumers.get(consumer_id)
        if consumer is None:
            raise self._not_found("consumer", consumer_id)
        return consumer

    async def _get_router_rtp_capabilities(self, req: Request) -> Any:
        return RouterRtpCapabilitiesAnswer(self.room.engine.router_rtp_capabilities(self.router_id))

    async def _create_transport(self, req: Request) -> Any:
        assert isinstance(req, CreateTransportRequest)
        limit = self.room.manager.config.limits.transports_per_peer
        if len(self.transports) >= limit:
            raise LimitExceededError(f"at most {limit} transports per peer")
        info = await self.room.engine.create_webrtc_transport(
            self.router_id,
            force_tcp=bool(req.force_tcp),
            app_data={"peerId": self.peer_id, "direction": req.direction},
        )
        tid = info.transport_id
        self._add_transport(_Transport(tid, req.direction))
        return TransportCreatedAnswer(
            transport_id=tid,
            direction=req.direction,
            ice_parameters=info.ice_parameters,
            ice_candidates=info.ice_candidates,
            dtls_parameters=info.dtls_parameters,
        )

    async def _create_plain_transport(self, req: Request) -> Any:
        assert isinstance(req, CreatePlainTransportRequest)
        if not self.grant.can_plain_transport:
            raise ForbiddenError(
                "the token does not allow plain transports (canPlainTransport is not true)"
            )
        limit = self.room.manager.config.limits.transports_per_peer
        if len(self.transports) >= limit:
            raise LimitExceededError(f"at most {limit} transports per peer")
        info = await self.room.engine.create_plain_transport(
            self.router_id,
            rtcp_mux=True if req.rtcp_mux is None else req.rtcp_mux,
            comedia=bool(req.comedia),
            enable_srtp=bool(req.enable_srtp),
            srtp_crypto_suite=req.srtp_crypto_suite or "AES_CM_128_HMAC_SHA1_80",
            app_data={"peerId": self.peer_id, "plain": True, **(req.app_data or {})},
        )
        tid = info.transport_id
        self._add_transport(_Transport(tid, req.direction, plain=True))
        return PlainTransportAnswer(
            transport_id=tid,
            tuple=info.tuple,
            rtcp_mux=info.rtcp_mux,
            comedia=info.comedia,
            rtcp_tuple=info.rtcp_tuple,
            srtp_parameters=info.srtp_parameters,
            direction=req.direction,
        )

    async def _connect_plain_transport(self, req: Request) -> Any:
        assert isinstance(req, ConnectPlainTransportRequest)
        transport = self._transport(req.transport_id)
        if not transport.plain:
            raise UnsupportedError(f"transport {req.transport_id!r} is not a plain transport")
        info = await self.room.engine.connect_plain_transport(
            req.transport_id,
            ip=req.ip,
            port=req.port,
            rtcp_port=req.rtcp_port,
            srtp_parameters=req.srtp_parameters,
        )
        transport.connected = True
        return PlainTransportAnswer(
            transport_id=req.transport_id,
            tuple=info.tuple,
            rtcp_mux=info.rtcp_mux,
            comedia=info.comedia,
            rtcp_tuple=info.rtcp_tuple,
            direction=transport.direction,
        )

    async def _connect_transport(self, req: Request) -> Any:
        assert isinstance(req, ConnectTransportRequest)
        transport = self._transport(req.transport_id)
        await self.room.engine.connect_transport(req.transport_id, req.dtls_parameters)
        transport.connected = True
        return TransportIdAnswer(req.transport_id)

    async def _restart_ice(self, req: Request) -> Any:
        assert isinstance(req, TransportRequest)
        self._transport(req.transport_id)
        ice = await self.room.engine.restart_ice(req.transport_id)
        return IceRestartedAnswer(req.transport_id, ice)

    async def _produce(self, req: Request) -> Any:
        assert isinstance(req, ProduceRequest)
        if not self.grant.can_publish:
            raise ForbiddenError("the token does not allow publishing (canPublish is false)")
        transport = self._transport(req.transport_id)
        if not transport.can("send"):
            raise InvalidStateError(f"transport {req.transport_id!r} is not a send transport")
        limit = self.room.manager.config.limits.producers_per_peer
        if len(self.producers) >= limit:
            raise LimitExceededError(f"at most {limit} producers per peer")
        engine = self.room.engine
        paused = bool(req.paused)
        pid = await engine.produce(req.transport_id, req.kind, req.rtp_parameters, paused=paused)
        if req.transport_id not in self.transports:  # closed while we waited
            await _close_quietly(engine.close_producer, pid)
            raise InvalidStateError(f"transport {req.transport_id!r} closed")
        app_data = dict(req.app_data or {})
        self.producers[pid] = _Producer(pid, req.transport_id, req.kind, app_data, paused)
        self.room.producer_owner[pid] = self
        self.room.broadcast(
            "rtc:newProducer", NewProducerNotice(pid, self.peer_id, req.kind, app_data), self
        )
        if paused:
            self.room.broadcast("rtc:producerPaused", ProducerNotice(pid, self.peer_id), self)
        self.report(
            "track_published", producer_id=pid, kind=req.kind, app_data=app_data, paused=paused
        )
        return ProducerIdAnswer(pid)

    async def _close_producer(self, req: Request) -> Any:
        assert isinstance(req, ProducerRequest)
        producer = self._producer(req.producer_id)
        self._forget_producer(req.producer_id)
        self._report_unpublished(producer, "closed")
        await self.room.engine.close_producer(req.producer_id)
        self.room.broadcast(
            "rtc:producerClosed", ProducerNotice(req.producer_id, self.peer_id), self
        )
        return ProducerIdAnswer(req.producer_id)

    async def _pause_producer(self, req: Request) -> Any:
        return await self._set_producer_paused(req, True)

    async def _resume_producer(self, req: Request) -> Any:
        return await self._set_producer_paused(req, False)

    async def _set_producer_paused(self, req: Request, paused: bool) -> Any:
        assert isinstance(req, ProducerRequest)
        producer = self._producer(req.producer_id)
        engine = self.room.engine
        if paused:
            await engine.pause_producer(req.producer_id)
        else:
            await engine.resume_producer(req.producer_id)
        if producer.paused != paused and req.producer_id in self.producers:
            producer.paused = paused
            ntype = "rtc:producerPaused" if paused else "rtc:producerResumed"
            self.room.broadcast(ntype, ProducerNotice(req.producer_id, self.peer_id), self)
        return ProducerIdAnswer(req.producer_id)

    async def _consume(self, req: Request) -> Any:
        assert isinstance(req, ConsumeRequest)
        if not self.grant.can_subscribe:
            raise ForbiddenError("the token does not allow subscribing (canSubscribe is false)")
        room = self.room
        owner = room.producer_owner.get(req.producer_id)
        if owner is None:
            raise self._not_found("producer", req.producer_id)
        if req.transport_id is not None:
            transport = self._transport(req.transport_id)
            if not transport.can("recv"):
                raise InvalidStateError(f"transport {req.transport_id!r} is not a recv transport")
        else:
            found = next(
                (t for t in self.transports.values() if t.direction == "recv" and not t.plain),
                None,
            )
            if found is None:
                raise InvalidStateError("no recv transport: create one before consuming")
            transport = found
        limit = room.manager.config.limits.consumers_per_peer
        if len(self.consumers) >= limit:
            raise LimitExceededError(f"at most {limit} consumers per peer")
        caps: RtpCapabilities = req.rtp_capabilities
        if owner.router_id != self.router_id:  # the meeting spans workers: pipe it here
            await room.engine.pipe_to_router(
                req.producer_id, from_router=owner.router_id, to_router=self.router_id
            )
        # No can_consume first: consume refuses (unsupported) what it cannot serve, in
        # one round trip to the worker instead of two.
        paused = True if req.paused is None else req.paused
        info = await room.engine.consume(
            transport.transport_id, req.producer_id, caps, paused=paused
        )
        cid = info.consumer_id
        if req.producer_id not in room.producer_owner:  # closed while we waited
            await _close_quietly(room.engine.close_consumer, cid)
            raise NotFoundError(f"producer {req.producer_id!r} closed")
        if transport.transport_id not in self.transports:
            await _close_quietly(room.engine.close_consumer, cid)
            raise InvalidStateError(f"transport {transport.transport_id!r} closed")
        self.consumers[cid] = _Consumer(
            cid, req.producer_id, transport.transport_id, info.kind, paused
        )
        room.consumer_owner[cid] = self
        return ConsumedAnswer(
            consumer_id=cid,
            producer_id=info.producer_id,
            kind=info.kind,
            rtp_parameters=info.rtp_parameters,
            type=info.type,
            producer_paused=info.producer_paused,
        )

    async def _resume_consumer(self, req: Request) -> Any:
        assert isinstance(req, ConsumerRequest)
        consumer = self._consumer(req.consumer_id)
        await self.room.engine.resume_consumer(req.consumer_id)
        consumer.paused = False
        return ConsumerIdAnswer(req.consumer_id)

    async def _pause_consumer(self, req: Request) -> Any:
        assert isinstance(req, ConsumerRequest)
        consumer = self._consumer(req.consumer_id)
        await self.room.engine.pause_consumer(req.consumer_id)
        consumer.paused = True
        return ConsumerIdAnswer(req.consumer_id)

    async def _close_consumer(self, req: Request) -> Any:
        assert isinstance(req, ConsumerRequest)
        self._consumer(req.consumer_id)
        self._forget_consumer(req.consumer_id)  # first: no rtc:consumerClosed for this close
        await self.room.engine.close_consumer(req.consumer_id)
        return ConsumerIdAnswer(req.consumer_id)

    async def _set_preferred_layers(self, req: Request) -> Any:
        assert isinstance(req, SetPreferredLayersRequest)
        self._consumer(req.consumer_id)
        spatial, temporal = await self.room.engine.set_consumer_preferred_layers(
            req.consumer_id, req.spatial_layer, req.temporal_layer
        )
        return PreferredLayersSetAnswer(req.consumer_id, PreferredLayers(spatial, temporal))

    async def _get_stats(self, req: Request) -> Any:
        assert isinstance(req, GetStatsRequest)
        if not (req.id in self.transports or req.id in self.producers or req.id in self.consumers):
            raise self._not_found("transport, producer or consumer", req.id)
        return StatsAnswer(req.id, await self.room.engine.get_stats(req.id))

    async def _leave(self, req: Request) -> Any:
        self.end_reason = "left"
        return None  # answered by run() once the cleanup is done


class _InternalError(SfuError):
    code = "internal"


_LEFT: Final = LeftAnswer()

_HANDLERS: Final[dict[str, Callable[[Peer, Request], Any]]] = {
    "rtc:getRouterRtpCapabilities": Peer._get_router_rtp_capabilities,
    "rtc:createTransport": Peer._create_transport,
    "rtc:connectTransport": Peer._connect_transport,
    "rtc:restartIce": Peer._restart_ice,
    "rtc:produce": Peer._produce,
    "rtc:closeProducer": Peer._close_producer,
    "rtc:pauseProducer": Peer._pause_producer,
    "rtc:resumeProducer": Peer._resume_producer,
    "rtc:consume": Peer._consume,
    "rtc:resumeConsumer": Peer._resume_consumer,
    "rtc:pauseConsumer": Peer._pause_consumer,
    "rtc:closeConsumer": Peer._close_consumer,
    "rtc:setPreferredLayers": Peer._set_preferred_layers,
    "rtc:getStats": Peer._get_stats,
    "rtc:leave": Peer._leave,
    "rtc:createPlainTransport": Peer._create_plain_transport,
    "rtc:connectPlainTransport": Peer._connect_plain_transport,
}


async def _close_quietly(close: Callable[[str], Any], entity_id: str) -> None:
    try:
        await close(entity_id)
    except Exception:
        logger.exception("closing %s after a race failed", entity_id)
