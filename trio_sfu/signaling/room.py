"""Rooms: meeting membership, who owns which id, notifications.

Ownership (ARCHITECTURE.md)::

    server nursery
      └─ Room.run            one per meeting: a router through the engine, and a nursery
           └─ Peer.run       one per joined connection: a cancel scope in the room's nursery

A room opens on the first join and closes when its last peer has gone, or when it is closed
(admin API, shutdown): peers then get ``rtc:roomClosed`` before their sockets close. How a
peer lives and ends, and how it serves its requests, is :mod:`trio_sfu.signaling.peer`.
What happens in a meeting is told to the webhooks (:mod:`trio_sfu.signaling.webhooks`).

Ids map to peers only here, on the room; a peer acts only on ids in its own maps, and any
other id (another peer's, another meeting's) is ``not_found`` before the engine is called.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, final

import trio

from trio_sfu.config import ServerConfig
from trio_sfu.engine.api import (
    ActiveSpeaker,
    ConsumerClosed,
    ConsumerLayersChanged,
    EngineEvent,
    MediaEngine,
    NetworkQuality,
    RouterClosed,
    TransportClosed,
)
from trio_sfu.errors import (
    InvalidStateError,
    LimitExceededError,
    NotFoundError,
    SfuError,
)
from trio_sfu.signaling.auth import Grant, ice_servers_for
from trio_sfu.signaling.messages import (
    ActiveSpeakerNotice,
    ConsumerLayersChangedNotice,
    JoinedAnswer,
    NetworkQualityNotice,
    RoomClosedNotice,
    notification_message,
)
from trio_sfu.signaling.metrics import Counts
from trio_sfu.signaling.peer import (
    CLOSE_GOING_AWAY,
    CLOSE_ROOM_CLOSED,
    ContextLogger,
    Peer,
    PeerLink,
)
from trio_sfu.signaling.recording import Recording
from trio_sfu.signaling.webhooks import NO_WEBHOOKS, WebhookSink

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

__all__ = ["Room", "RoomManager"]


@final
class Room:
    """One meeting: a router, its peers, and the owner of every id in it."""

    def __init__(self, manager: RoomManager, meeting_id: str) -> None:
        self.manager = manager
        self.engine = manager.engine
        self.meeting_id = meeting_id
        self.router_id: str | None = None
        #: Every router of the meeting: ``router_id`` first, then any opened on other
        #: workers once its worker was past its load threshold (pipe-to-router).
        self.router_ids: list[str] = []
        self._placing = trio.Lock()
        self.created_at = time.time()
        self.peers: dict[str, Peer] = {}
        self.transport_owner: dict[str, Peer] = {}
        self.producer_owner: dict[str, Peer] = {}
        self.consumer_owner: dict[str, Peer] = {}
        #: Recordings (the admin API's), by id, ended ones too; and the consumers and
        #: transports of the running ones.
        self.recordings: dict[str, Recording] = {}
        self.recording_of_consumer: dict[str, Recording] = {}
        self.recording_of_transport: dict[str, Recording] = {}
        self.closing = False
        self.close_reason: str | None = None
        self.ready = trio.Event()
        self.finished = trio.Event()
        self._pending = 0
        self._close_requested = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.log = ContextLogger(logger, {"meeting": meeting_id})

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The room's task, in the server's nursery."""
        started = False
        try:
            self.router_id = await self.engine.create_router(self._on_event)
            self.router_ids.append(self.router_id)
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self.ready.set()
                    self.log.info("room opened (router %s)", self.router_id)
                    self.manager.webhooks.emit("room_started", self.meeting_id)
                    task_status.started()
                    started = True
                    await self._close_requested.wait()
                    nursery.cancel_scope.cancel()
            finally:
                self._mark_closing(self.close_reason or "empty")
                timeout = self.manager.config.cleanup_timeout
                with trio.move_on_after(timeout, shield=True):
                    for router_id in self.router_ids:
                        await self.engine.close_router(router_id)
                self.log.info("room closed (%s)", self.close_reason)
        except Exception:
            if not started:
                raise
            self.log.exception("room task failed")
        finally:
            self._mark_closing(self.close_reason or "failed")
            self.ready.set()
            self.finished.set()
            if started:
                self._report_finished()
            self.manager.room_finished(self)

    def _mark_closing(self, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.close_reason = reason
            self.manager.forget(self)

    def close(
        self, reason: str, *, code: int = CLOSE_ROOM_CLOSED, keep_connections: bool = False
    ) -> None:
        """Close the meeting: every peer gets ``rtc:roomClosed`` then its socket closes
        (with ``keep_connections`` it stays open, and may join again). Never blocks; wait
        on :attr:`finished` for the end."""
        if self.closing:
            return
        self._mark_closing(reason)
        notice = notification_message("rtc:roomClosed", RoomClosedNotice(self.meeting_id, reason))
        close = None if keep_connections else (code, reason)
        for peer in list(self.peers.values()):
            peer.end(reason, close=close, notice=notice, by_room=True)
        self._close_requested.set()

    async def start_peer(self, grant: Grant, display_name: str | None, link: PeerLink) -> Peer:
        """Start a peer's task in this room (not yet visible to others: see :meth:`admit`)."""
        limit = self.manager.config.limits.peers_per_meeting
        if len(self.peers) + self._pending >= limit:
            raise LimitExceededError(f"meeting {self.meeting_id!r} is full ({limit} peers)")
        assert self._nursery is not None
        self._pending += 1
        try:
            peer = Peer(self, grant, display_name, link, await self._place_peer())
            await self._nursery.start(peer.run)
        except BaseException:
            self._pending -= 1
            self._close_if_empty()
            raise
        return peer

    async def _place_peer(self) -> str:
        """The router for a new peer: the first of the meeting's routers whose worker is
        not past its load threshold; when all are, a new router on another worker (the
        peer's consumers of producers elsewhere are piped to it); when there is no other
        worker, the newest router."""
        async with self._placing:
            for router_id in self.router_ids:
                if not self.engine.router_overloaded(router_id):
                    return router_id
            try:
                router_id = await self.engine.create_router(self._on_event, avoid=self.router_ids)
            except LimitExceededError:
                return self.router_ids[-1]
            if self.closing:
                await self.engine.close_router(router_id)
                raise InvalidStateError(f"meeting {self.meeting_id!r} is closing; join again")
            self.router_ids.append(router_id)
            self.log.info("meeting spread to a new router %s (on another worker)", router_id)
            return router_id

    async def start_recording(self, producer_ids: list[str] | None) -> Recording:
        """Start recording ``producer_ids`` (None: every producer of the meeting now) to
        one WebM file; returns once ffmpeg records (see :mod:`trio_sfu.signaling.recording`).
        NotFoundError for an unknown producer, InvalidStateError when there is none or the
        meeting is closing; FileNotFoundError without ffmpeg."""

        if self.closing or self._nursery is None:
            raise InvalidStateError(f"meeting {self.meeting_id!r} is closing")
        ids = list(self.producer_owner) if producer_ids is None else list(producer_ids)
        if not ids:
            raise InvalidStateError(f"meeting {self.meeting_id!r} has no producer to record")
        for producer_id in ids:
            if producer_id not in self.producer_owner:
                raise NotFoundError(f"producer {producer_id!r} not found")
        recording = Recording(self, ids, self.manager.config.recording_dir)
        self.recordings[recording.recording_id] = recording
        try:
            await self._nursery.start(recording.run)
        except BaseException:
            del self.recordings[recording.recording_id]
            raise
        self._report_recording("recording_started", recording)
        return recording

    # ---- RecordingHost (what a recording needs of its meeting) ---------------------------

    @property
    def cleanup_timeout(self) -> float:
        return self.manager.config.cleanup_timeout

    def producer_router(self, producer_id: str) -> str | None:
        owner = self.producer_owner.get(producer_id)
        return None if owner is None else owner.router_id

    def recording_finished(self, recording: Recording) -> None:
        """A recording ended (it stays listed with its end reason)."""
        self.log.debug("recording %s finished", recording.recording_id)
        if recording.started_at is not None:  # it did record (and recording_started went)
            self._report_recording("recording_finished", recording)

    # ---- webhooks ----------------------------------------------------------------------

    def _report_recording(self, event: str, recording: Recording) -> None:
        fields: dict[str, Any] = {
            "recording_id": recording.recording_id,
            "file": recording.path,
            "producer_ids": list(recording.producer_ids),
        }
        if event == "recording_finished":
            ended = recording.ended_at or time.time()
            try:
                size: int | None = os.stat(recording.path).st_size  # a local stat: no wait
            except OSError:
                size = None
            fields.update(
                reason=recording.end_reason,
                duration=round(ended - (recording.started_at or ended), 3),
                size=size,
                exit_code=recording.exit_code,
            )
        self.manager.webhooks.emit(event, self.meeting_id, **fields)

    def _report_worker_died(self, event: RouterClosed) -> None:
        self.manager.webhooks.emit(
            "worker_died",
            self.meeting_id,
            router_id=event.router_id,
            reason=event.reason,
            worker=event.worker,
            pid=event.pid,
        )

    def _report_finished(self) -> None:
        duration = round(time.time() - self.created_at, 3)
        self.manager.webhooks.emit(
            "room_finished", self.meeting_id, reason=self.close_reason, duration=duration
        )

    def admit(self, peer: Peer) -> JoinedAnswer:
        """Make a started peer a member: the others hear ``rtc:peerJoined``. Synchronous,
        so that the caller queues the ``rtc:joined`` answer before any notification."""
        self._pending -= 1
        if self.closing or peer.ending:
            peer.end("join_failed")
            raise InvalidStateError(f"meeting {self.meeting_id!r} is closing; join again")
        others = [p.info() for p in self.peers.values()]
        self.peers[peer.peer_id] = peer
        self.broadcast("rtc:peerJoined", peer.info(), peer)
        peer.log.info("joined as user %s", peer.grant.user_id)
        peer.admitted()
        return JoinedAnswer(
            peer_id=peer.peer_id,
            user_id=peer.grant.user_id,
            peers=others,
            ice_servers=ice_servers_for(self.manager.config, peer.grant.user_id, now=time.time()),
        )

    def detach(self, peer: Peer) -> None:
        """Remove a peer from the books (first step of its cleanup)."""
        if self.peers.get(peer.peer_id) is peer:
            del self.peers[peer.peer_id]
        for index, ids in (
            (self.transport_owner, peer.transports),
            (self.producer_owner, peer.producers),
            (self.consumer_owner, peer.consumers),
        ):
            for entity_id in ids:
                if index.get(entity_id) is peer:
                    del index[entity_id]

    def peer_finished(self, peer: Peer) -> None:
        self._close_if_empty()

    def _close_if_empty(self) -> None:
        if not self.peers and self._pending == 0 and not self.closing:
            self._mark_closing("empty")
            self._close_requested.set()

    def broadcast(self, ntype: str, data: Any, exclude: Peer | None = None) -> None:
        message = notification_message(ntype, data)
        for peer in list(self.peers.values()):
            if peer is not exclude:
                peer.link.send_message(message)

    def _on_event(self, event: EngineEvent) -> None:
        """The engine's event callback: never blocks, never raises."""
        try:
            if event.router_id in self.router_ids:
                self._dispatch(event)
        except Exception:
            self.log.exception("handling engine event %r failed", event)

    def _dispatch(self, event: EngineEvent) -> None:
        if isinstance(event, RouterClosed):  # its worker died: everyone may rejoin
            self.log.error("router %s closed: %s", event.router_id, event.reason)
            self._report_worker_died(event)
            self.close(event.reason, keep_connections=True)
        elif isinstance(event, ConsumerClosed):
            owner = self.consumer_owner.get(event.consumer_id)
            if owner is not None:
                owner.consumer_closed(event.consumer_id, event.producer_id, event.reason)
            recording = self.recording_of_consumer.get(event.consumer_id)
            if recording is not None:
                recording.consumer_closed(event.consumer_id, event.reason)
        elif isinstance(event, TransportClosed):
            owner = self.transport_owner.get(event.transport_id)
            if owner is not None:
                owner.transport_closed(event.transport_id, event.reason)
            recording = self.recording_of_transport.get(event.transport_id)
            if recording is not None:
                recording.stop("transport_closed")
        elif isinstance(event, ConsumerLayersChanged):
            owner = self.consumer_owner.get(event.consumer_id)
            if owner is not None:
                owner.notify(
                    "rtc:consumerLayersChanged",
                    ConsumerLayersChangedNotice(
                        event.consumer_id, event.spatial_layer, event.temporal_layer
                    ),
                )
        elif isinstance(event, NetworkQuality):
            owner = self.transport_owner.get(event.transport_id)
            if owner is not None:
                owner.notify(
                    "rtc:networkQuality",
                    NetworkQualityNotice(
                        event.transport_id, event.packet_loss, event.rtt_ms, event.quality
                    ),
                )
        elif isinstance(event, ActiveSpeaker):
            owner = self.producer_owner.get(event.producer_id)
            # A producer piped to other routers is heard there too: its own router speaks.
            if owner is not None and owner.router_id == event.router_id:
                self.broadcast(
                    "rtc:activeSpeaker",
                    ActiveSpeakerNotice(owner.peer_id, event.producer_id, event.volume),
                )
        # ConsumerProducerPaused: the other peers already heard rtc:producerPaused/Resumed.

    def describe(self, *, with_peers: bool) -> dict[str, Any]:
        """The admin API's view of this room."""
        out: dict[str, Any] = {
            "meetingId": self.meeting_id,
            "routerId": self.router_id,
            "routerIds": list(self.router_ids),
            "createdAt": self.created_at,
            "peerCount": len(self.peers),
            "transportCount": len(self.transport_owner),
            "producerCount": len(self.producer_owner),
            "consumerCount": len(self.consumer_owner),
        }
        if with_peers:
            out["peers"] = [p.describe() for p in self.peers.values()]
        return out


@final
class RoomManager:
    """The open rooms of one server, keyed by meeting id; room tasks live in ``nursery``."""

    def __init__(
        self,
        engine: MediaEngine,
        config: ServerConfig,
        nursery: trio.Nursery,
        *,
        count_error: Callable[[str], None] | None = None,
        on_refusal: Callable[[SfuError, ContextLogger], None] | None = None,
        webhooks: WebhookSink = NO_WEBHOOKS,
    ) -> None:
        self.engine = engine
        self.config = config
        self.webhooks = webhooks
        self.rooms: dict[str, Room] = {}
        self.accepting = True
        self._nursery = nursery
        self._live: set[Room] = set()
        self._all_closed = trio.Event()
        self._all_closed.set()
        self.count_error = count_error or (lambda code: None)
        self.on_refusal = on_refusal or (lambda exc, log: None)

    def owned_by_another(self, entity_id: str, peer: Peer) -> bool:
        """Whether ``entity_id`` is a transport, producer or consumer of a peer other than
        ``peer``, in any meeting (the error path of a request only: a scan of the rooms)."""
        for room in self._live:
            for index in (room.transport_owner, room.producer_owner, room.consumer_owner):
                owner = index.get(entity_id)
                if owner is not None and owner is not peer:
                    return True
        return False

    async def join(
        self, grant: Grant, display_name: str | None, link: PeerLink
    ) -> tuple[Peer, JoinedAnswer]:
        """Join ``grant.meeting_id``, opening its room if needed. Returns the running peer
        and the ``rtc:joined`` answer, which the caller must queue before its next
        checkpoint."""
        for _ in range(3):
            if not self.accepting:
                raise InvalidStateError("the server is shutting down")
            room = await self._open_room(grant.meeting_id)
            if room.closing:
                continue
            peer = await room.start_peer(grant, display_name, link)
            try:
                return peer, room.admit(peer)
            except InvalidStateError:
                continue
        raise InvalidStateError(f"meeting {grant.meeting_id!r} is closing; join again")

    async def _open_room(self, meeting_id: str) -> Room:
        room = self.rooms.get(meeting_id)
        if room is not None:
            await room.ready.wait()
            if room.router_id is None:
                raise InvalidStateError(f"meeting {meeting_id!r} failed to open")
            return room
        room = Room(self, meeting_id)
        self.rooms[meeting_id] = room
        self._live.add(room)
        self._all_closed = trio.Event()
        await self._nursery.start(room.run)
        return room

    def forget(self, room: Room) -> None:
        """Stop routing joins to ``room`` (it is closing)."""
        if self.rooms.get(room.meeting_id) is room:
            del self.rooms[room.meeting_id]

    def room_finished(self, room: Room) -> None:
        self.forget(room)
        self._live.discard(room)
        if not self._live:
            self._all_closed.set()

    def close_all(self, reason: str, *, code: int = CLOSE_GOING_AWAY) -> None:
        """Stop accepting joins and close every room (peers get ``rtc:roomClosed``)."""
        self.accepting = False
        for room in list(self._live):
            room.close(reason, code=code)

    async def wait_all_closed(self) -> None:
        await self._all_closed.wait()

    def counts(self) -> Counts:
        rooms = list(self._live)
        return Counts(
            rooms=len(rooms),
            peers=sum(len(r.peers) for r in rooms),
            transports=sum(len(r.transport_owner) for r in rooms),
            producers=sum(len(r.producer_owner) for r in rooms),
            consumers=sum(len(r.consumer_owner) for r in rooms),
        )
