"""Python peers for testing an app against a real trio-sfu.

A :class:`PeerFactory` (the pytest plugin's ``sfu_peer`` fixture) joins peers of the
project's Python client (:mod:`trio_sfu.client`: real ICE, DTLS and SRTP over UDP) to a
:class:`~trio_sfu.testing.server.SfuTestServer`. Each :class:`SfuTestPeer` publishes
synthetic media that the SFU forwards like a browser's (Opus every 20 ms; VP8 at 30 fps,
with keyframes on request and every 2 s, and simulcast r0/r1/r2 on request), subscribes to
other peers, counts the frames it receives from each, and lets a test wait for what it
expects::

    async with open_peer_factory(sfu) as peers:
        ann = await peers("standup", "ann")
        bob = await peers("standup", "bob", downlink=Impairment(loss=0.1, delay=0.05))
        await ann.publish_audio()
        await ann.publish_video(simulcast=True)
        await bob.subscribe(ann)
        await bob.wait_for_frames(ann, 50, kind="audio")
        await ann.wait_for_notification("rtc:peerJoined", userId="bob")

A wait that times out raises :class:`WaitTimeout` (an AssertionError, so pytest reports a
failure) saying what was awaited and what was seen instead.

Impairment: ``uplink`` and ``downlink`` (:class:`~trio_sfu.testing.impairment.Impairment`)
put the peer behind the impairment relay (one per transport, :attr:`SfuTestPeer.relays`):
``uplink`` acts on what the peer sends, ``downlink`` on what it receives, RTP and RTCP
only (ICE and DTLS pass untouched). The objects may be changed while the call runs.

Each peer runs in a task of the factory's nursery: its notification reader, media senders,
the RTCP answers of a publisher (keyframes on PLI/FIR, retransmissions on NACK) and the
feedback of a subscriber (receiver reports and NACKs). Closing the factory closes every
peer (its WebSocket, then its transports and relays).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, final

import attrs
import trio

from trio_sfu.client.peer import MediaPeer, RemoteConsumer, open_peer
from trio_sfu.client.signaling import (
    Notification,
    SignalingClient,
    SignalingClosed,
    SignalingError,
)
from trio_sfu.client.synthetic import (
    SyntheticPublisher,
    SyntheticReceiver,
    audio_rtp_parameters,
    vp8_simulcast_rtp_parameters,
)
from trio_sfu.client.transport import ClientTransport
from trio_sfu.errors import BadPacket
from trio_sfu.ortc.types import IceCandidate, RtpEncodingParameters, RtpParameters
from trio_sfu.rtcp import Fir, GenericNack, Pli, parse_rtcp_untrusted
from trio_sfu.testing.impairment import Impairment, UdpRelay

if TYPE_CHECKING:
    from trio_sfu.testing.server import SfuTestServer

__all__ = [
    "DEFAULT_TIMEOUT",
    "LocalTrack",
    "PeerFactory",
    "SfuTestPeer",
    "Subscription",
    "WaitTimeout",
    "open_peer_factory",
]

#: Seconds a wait (frames, a notification, the close) lasts unless told otherwise.
DEFAULT_TIMEOUT: Final = 10.0
#: A publisher's keyframe period (besides the first frame and PLI/FIR requests).
KEYFRAME_INTERVAL: Final = 2.0
#: Bytes of a VP8 frame per simulcast layer (one packet each), and of a single stream.
_VP8_LAYER_SIZES: Final = (300, 600, 1000)
_AUDIO_PERIOD: Final = 0.02
_NACK_INTERVAL: Final = 0.05
_REPORT_INTERVAL: Final = 0.5
#: A sender this far behind its schedule starts again from now instead of bursting.
_MAX_LAG: Final = 0.5

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A peer did not see what a test waited for in time; the message says what was
    awaited and what was seen instead."""


class PeerClosed(AssertionError):
    """A peer was used after :meth:`SfuTestPeer.leave`, :meth:`SfuTestPeer.drop` or
    :meth:`SfuTestPeer.close`."""


@final
class LocalTrack:
    """A producer a peer publishes, fed with synthetic media while it is not paused."""

    def __init__(
        self,
        peer: SfuTestPeer,
        producer_id: str,
        kind: Literal["audio", "video"],
        publisher: SyntheticPublisher,
        *,
        simulcast: bool,
        fps: float,
    ) -> None:
        self.peer = peer
        self.producer_id = producer_id
        self.kind: Literal["audio", "video"] = kind
        self.simulcast = simulcast
        #: The synthetic streams (one, or one per simulcast layer).
        self.publisher = publisher
        self.fps = fps
        self.paused = False
        self.closed = False
        #: Frames sent (a simulcast frame, sent on every layer, counts once).
        self.frames_sent = 0
        #: Packets sent again because the SFU NACKed them.
        self.retransmitted = 0
        self._keyframe_wanted = set(range(len(publisher.streams)))
        self._last_keyframe = -KEYFRAME_INTERVAL

    async def pause(self) -> None:
        """``rtc:pauseProducer`` and stop sending (a muted microphone, a camera off)."""
        self.paused = True
        await self.peer.signaling.pause_producer(self.producer_id)

    async def resume(self) -> None:
        """``rtc:resumeProducer`` and send again (video starts with a keyframe)."""
        await self.peer.signaling.resume_producer(self.producer_id)
        self._keyframe_wanted = set(range(len(self.publisher.streams)))
        self.paused = False

    async def close(self) -> None:
        """``rtc:closeProducer``; nothing more is sent."""
        self.closed = True
        await self.peer.signaling.close_producer(self.producer_id)

    def _send_frame(self, transport: ClientTransport, now: float) -> None:
        if self.kind == "audio":
            transport.send_rtp(self.publisher.streams[0].opus_frame(now=now))
            self.frames_sent += 1
            return
        if now - self._last_keyframe >= KEYFRAME_INTERVAL:
            self._keyframe_wanted = set(range(len(self.publisher.streams)))
        if self._keyframe_wanted:
            self._last_keyframe = now
        single = len(self.publisher.streams) == 1
        for index, stream in enumerate(self.publisher.streams):
            keyframe = index in self._keyframe_wanted
            size = _VP8_LAYER_SIZES[-1] if single else _VP8_LAYER_SIZES[min(index, 2)]
            for packet in stream.vp8_frame(keyframe=keyframe, size=size, now=now, fps=self.fps):
                transport.send_rtp(packet)
        self.frames_sent += 1
        self._keyframe_wanted.clear()


@final
class Subscription:
    """A consumer of a peer: what it consumes, whose it is, the frames it has received."""

    def __init__(self, consumer: RemoteConsumer, peer_id: str | None) -> None:
        #: The server's answer to ``rtc:consume``.
        self.consumer = consumer
        #: The peer whose producer this consumes (``None``: not known to this peer).
        self.peer_id = peer_id
        #: Frames received: audio packets, and video frames (their last packet, marker
        #: set), repaired ones included, duplicates not.
        self.frames = 0
        #: ``rtc:consumerClosed`` arrived (its ``reason``), or ``None``.
        self.closed_reason: str | None = None

    @property
    def consumer_id(self) -> str:
        return self.consumer.consumer_id

    @property
    def producer_id(self) -> str:
        return self.consumer.producer_id

    @property
    def kind(self) -> str:
        return self.consumer.kind


@final
class SfuTestPeer:
    """One joined participant of a :class:`PeerFactory` (the ``sfu_peer`` fixture)."""

    def __init__(
        self,
        media: MediaPeer,
        nursery: trio.Nursery,
        *,
        meeting: str,
        user: str,
        uplink: Impairment | None,
        downlink: Impairment | None,
        seed: int,
        auto_subscribe: bool,
        finished: trio.Event,
    ) -> None:
        #: The Python client underneath (signaling plus transports), for anything else.
        self.media = media
        self.meeting = meeting
        self.user = user
        #: The ``rtc:joined`` answer.
        self.joined = media.joined
        self.uplink = uplink
        self.downlink = downlink
        #: One impairment relay per transport, when ``uplink`` or ``downlink`` was given.
        self.relays: list[UdpRelay] = []
        self.tracks: list[LocalTrack] = []
        #: Subscriptions by consumer id.
        self.subscriptions: dict[str, Subscription] = {}
        #: Every notification received, in order of arrival.
        self.notifications: list[Notification] = []
        #: How the server closed the WebSocket, once it has.
        self.closed: SignalingClosed | None = None
        self._nursery = nursery
        self._seed = seed
        self._auto_subscribe = auto_subscribe
        self._close_requested = trio.Event()
        self._finished = finished
        self._ended = False
        self._mids = 0
        self._taken: set[int] = set()
        self._by_ssrc: dict[int, Subscription] = {}
        self._by_send_ssrc: dict[int, tuple[LocalTrack, int]] = {}
        self._receiver = SyntheticReceiver(transport_cc=False)
        self._changed = trio.Event()
        self._waiters = 0
        self._transport_lock = trio.Lock()
        #: user ids by peer id, and the producers (id -> kind) of the others, by peer id.
        self._users: dict[str, str] = {media.peer_id: user}
        self._remote: dict[str, dict[str, str]] = {}
        for info in self.joined.get("peers", []):
            self._add_remote_peer(info)

    # ---- who -----------------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        """The server's id of this peer."""
        return self.media.peer_id

    @property
    def signaling(self) -> SignalingClient:
        """The :class:`~trio_sfu.client.signaling.SignalingClient` (its notifications are
        read by this peer: use :attr:`notifications` and :meth:`wait_for_notification`)."""
        return self.media.signaling

    def __repr__(self) -> str:
        return f"<SfuTestPeer {self.user!r} in {self.meeting!r} ({self.peer_id})>"

    # ---- publishing ----------------------------------------------------------------------

    async def publish_audio(
        self, *, paused: bool = False, app_data: Mapping[str, Any] | None = None
    ) -> LocalTrack:
        """Produce Opus and send a 20 ms frame every 20 ms (not while paused)."""
        parameters = audio_rtp_parameters(ssrc=_random_ssrc(), mid=self._next_mid())
        return await self._publish("audio", parameters, paused, app_data, fps=1 / _AUDIO_PERIOD)

    async def publish_video(
        self,
        *,
        simulcast: bool = False,
        layers: int = 3,
        fps: float = 30.0,
        paused: bool = False,
        app_data: Mapping[str, Any] | None = None,
    ) -> LocalTrack:
        """Produce VP8 and send ``fps`` frames a second: one stream, or ``layers``
        simulcast streams (rids r0, r1, ...) with ``simulcast``. The first frame, one every
        2 s and any the SFU asks for (PLI, FIR) are keyframes; NACKed packets are sent
        again."""
        parameters = vp8_simulcast_rtp_parameters(
            mid=self._next_mid(), layers=layers if simulcast else 1
        )
        if not simulcast:
            parameters = attrs.evolve(
                parameters,
                encodings=[RtpEncodingParameters(ssrc=_random_ssrc())],
            )
        return await self._publish("video", parameters, paused, app_data, fps=fps)

    async def _publish(
        self,
        kind: Literal["audio", "video"],
        parameters: RtpParameters,
        paused: bool,
        app_data: Mapping[str, Any] | None,
        *,
        fps: float,
    ) -> LocalTrack:
        self._check_open()
        transport = await self._transport("send")
        producer_id, publisher = await self.media.publish(
            kind,
            parameters,
            app_data=dict(app_data) if app_data is not None else None,
            paused=paused or None,
        )
        track = LocalTrack(
            self,
            producer_id,
            kind,
            publisher,
            simulcast=len(publisher.streams) > 1,
            fps=fps,
        )
        track.paused = paused
        self.tracks.append(track)
        for index, stream in enumerate(publisher.streams):
            self._by_send_ssrc[stream.ssrc] = (track, index)
        self._nursery.start_soon(self._send_media, track, transport)
        return track

    # ---- subscribing ---------------------------------------------------------------------

    async def subscribe(
        self, source: SfuTestPeer | str, *, kind: Literal["audio", "video"] | None = None
    ) -> list[Subscription]:
        """Consume (and resume) what ``source`` publishes now that this peer does not
        consume yet: every producer, or those of ``kind``. ``source`` is a peer (its
        tracks are known at once), a peer id or a user id (its producers as this peer
        has heard of them: ``rtc:joined`` and ``rtc:newProducer``), or a producer id.
        Raises AssertionError when there is nothing to consume."""
        self._check_open()
        peer_id, producers = self._producers_of(source)
        if kind is not None:
            producers = {p: k for p, k in producers.items() if k == kind}
        consumed = {s.producer_id for s in self.subscriptions.values()}
        wanted = [p for p in producers if p not in consumed]
        if not wanted:
            what = f"{kind} " if kind else ""
            raise AssertionError(
                f"{self.user}: {self._name(source)} publishes no {what}producer to subscribe "
                f"to (known: {producers or 'none'}; already consumed: {sorted(consumed)})"
            )
        return [await self._consume(producer_id, peer_id) for producer_id in wanted]

    async def _consume(self, producer_id: str, peer_id: str | None) -> Subscription:
        await self._transport("recv")
        consumer = await self.media.consume(producer_id, resume=False)
        subscription = Subscription(consumer, peer_id)
        self.subscriptions[consumer.consumer_id] = subscription
        self._receiver.add_consumer(consumer.rtp_parameters)
        self._by_ssrc[consumer.ssrc] = subscription
        await self.signaling.resume_consumer(consumer.consumer_id)
        return subscription

    def frames_from(
        self, source: SfuTestPeer | str, *, kind: Literal["audio", "video"] | None = None
    ) -> int:
        """Frames received so far from ``source`` (a peer, peer id or user id), of every
        subscription to it or those of ``kind``."""
        peer_id = self._peer_id(source)
        return sum(
            s.frames
            for s in self.subscriptions.values()
            if s.peer_id == peer_id and (kind is None or s.kind == kind)
        )

    async def wait_for_frames(
        self,
        source: SfuTestPeer | str,
        count: int,
        *,
        kind: Literal["audio", "video"] | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (the failure says what was seen)
    ) -> int:
        """Wait until :meth:`frames_from` ``source`` reaches ``count`` (counted since
        subscribing: for N more, ask for ``frames_from(...) + N``); returns it. Raises
        :class:`WaitTimeout` after ``timeout`` seconds, or as soon as the server closed
        this peer's connection."""
        __tracebackhide__ = True

        def reached() -> int | None:
            got = self.frames_from(source, kind=kind)
            return got if got >= count else None

        def seen() -> str:
            got = self.frames_from(source, kind=kind)
            return f"got {got}. {self._describe_reception()}"

        what = f"{count} {kind + ' ' if kind else ''}frames from {self._name(source)}"
        return await self._wait(reached, timeout, what, seen)

    # ---- notifications -------------------------------------------------------------------

    async def wait_for_notification(
        self,
        type: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (the failure says what was seen)
        **fields: Any,
    ) -> Notification:
        """The first notification of ``type`` whose data has ``fields`` (wire names:
        ``peerId=...``) that no earlier call returned; waits for it if it has not arrived.
        Raises :class:`WaitTimeout` after ``timeout`` seconds, or once the connection is
        closed without it."""
        __tracebackhide__ = True

        def found() -> Notification | None:
            for index, note in enumerate(self.notifications):
                if index in self._taken or note.type != type:
                    continue
                if all(note.data.get(k) == v for k, v in fields.items()):
                    self._taken.add(index)
                    return note
            return None

        what = type + (f" with {fields}" if fields else "")
        return await self._wait(found, timeout, what, self._describe_notifications)

    async def wait_closed(
        self,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (the failure says what was seen)
    ) -> SignalingClosed:
        """Wait until the server closes this peer's WebSocket (kicked, room closed...);
        its close ``code`` and ``reason``."""
        __tracebackhide__ = True

        def is_closed() -> SignalingClosed | None:
            return self.closed

        def seen() -> str:
            return f"it is still open; {self._describe_notifications()}"

        what = "the server to close its connection"
        return await self._wait(is_closed, timeout, what, seen)

    # ---- going away ------------------------------------------------------------------------

    async def leave(self) -> None:
        """``rtc:leave``, then close the connection and the transports."""
        self._check_open()
        if self.closed is None:
            with suppress(SignalingClosed):
                await self.signaling.leave()
        await self.close()

    async def drop(self) -> None:
        """Lose the connection abruptly (TCP closed without a WebSocket close frame, as a
        crash or a lost network), then close the transports."""
        self._check_open()
        await self.signaling.abort()
        await self.close()

    async def close(self) -> None:
        """Close the WebSocket (the server takes it as a leave) and the transports; waits
        until they are (the WebSocket close is bounded at 5 s). Idempotent."""
        self._ended = True
        self._close_requested.set()
        await self._finished.wait()

    # ---- the peer's tasks ------------------------------------------------------------------

    def _start(self) -> None:
        self._nursery.start_soon(self._read_notifications)
        if self._auto_subscribe:
            for peer_id, producers in self._remote.items():
                for producer_id in producers:
                    self._nursery.start_soon(self._auto_consume, producer_id, peer_id)

    async def _read_notifications(self) -> None:
        try:
            while True:
                note = await self.signaling.next_notification()
                self._on_notification(note)
        except SignalingClosed as exc:
            self.closed = exc
            self._wake()

    def _on_notification(self, note: Notification) -> None:
        self.notifications.append(note)
        data = note.data
        if note.type == "rtc:peerJoined":
            self._add_remote_peer(data)
        elif note.type == "rtc:newProducer":
            peer_id = str(data.get("peerId"))
            producer_id = str(data.get("producerId"))
            self._remote.setdefault(peer_id, {})[producer_id] = str(data.get("kind"))
            if self._auto_subscribe:
                self._nursery.start_soon(self._auto_consume, producer_id, peer_id)
        elif note.type == "rtc:producerClosed":
            self._remote.get(str(data.get("peerId")), {}).pop(str(data.get("producerId")), None)
        elif note.type == "rtc:peerLeft":
            self._remote.pop(str(data.get("peerId")), None)
        elif note.type == "rtc:consumerClosed":
            subscription = self.subscriptions.get(str(data.get("consumerId")))
            if subscription is not None:
                subscription.closed_reason = str(data.get("reason"))
        self._wake()

    def _add_remote_peer(self, info: Mapping[str, Any]) -> None:
        peer_id = str(info.get("peerId"))
        self._users[peer_id] = str(info.get("userId"))
        producers = self._remote.setdefault(peer_id, {})
        for producer in info.get("producers", []):
            producers[str(producer.get("producerId"))] = str(producer.get("kind"))

    async def _auto_consume(self, producer_id: str, peer_id: str) -> None:
        if any(s.producer_id == producer_id for s in self.subscriptions.values()):
            return
        try:
            await self._consume(producer_id, peer_id)
        except SignalingError as exc:
            if exc.code not in ("not_found", "invalid_state"):  # it closed meanwhile
                raise
        except SignalingClosed:
            pass

    async def _transport(self, direction: Literal["send", "recv"]) -> ClientTransport:
        """The send or receive transport, opened (through a relay if impaired) on first use."""
        async with self._transport_lock:
            existing = (
                self.media.send_transport if direction == "send" else self.media.recv_transport
            )
            if existing is not None:
                return existing
            impaired = self.uplink is not None or self.downlink is not None
            _, transport = await self.media.open_transport(
                direction, route=self._through_relay if impaired else None
            )
            if direction == "send":
                self._nursery.start_soon(self._answer_rtcp, transport)
            else:
                transport.on_rtp = self._on_rtp
                transport.on_rtcp = self._on_rtcp
                self._nursery.start_soon(self._send_feedback, transport)
            return transport

    async def _through_relay(self, candidates: list[IceCandidate]) -> list[IceCandidate]:
        server = next((c for c in candidates if c.protocol == "udp"), None)
        if server is None:
            raise AssertionError(f"{self.user}: the server offers no UDP candidate to impair")
        relay = UdpRelay(
            (server.ip or server.address, server.port),
            uplink=self.uplink,
            downlink=self.downlink,
            seed=self._seed + len(self.relays),
        )
        await self._nursery.start(relay.run)
        self.relays.append(relay)
        return relay.rewrite_candidates(candidates)

    async def _send_media(self, track: LocalTrack, transport: ClientTransport) -> None:
        period = 1 / track.fps
        next_at = trio.current_time()
        while not track.closed:
            now = trio.current_time()
            if not track.paused:
                track._send_frame(transport, now)
            next_at += period
            if next_at < now - _MAX_LAG:
                next_at = now
            await trio.sleep_until(next_at)

    async def _answer_rtcp(self, transport: ClientTransport) -> None:
        """A publisher's answers: keyframes for PLI and FIR, retransmissions for NACK."""
        while True:
            try:
                data = await transport.receive_rtcp()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            try:
                packets = parse_rtcp_untrusted(data)
            except BadPacket:
                continue
            for packet in packets:
                if isinstance(packet, Pli):
                    self._want_keyframe(packet.media_ssrc)
                elif isinstance(packet, Fir):
                    for ssrc, _ in packet.entries:
                        self._want_keyframe(ssrc)
                elif isinstance(packet, GenericNack):
                    found = self._by_send_ssrc.get(packet.media_ssrc)
                    if found is None:
                        continue
                    track, index = found
                    stream = track.publisher.streams[index]
                    for seq in packet.lost_seqs():
                        again = stream.retransmit(seq)
                        if again is not None:
                            transport.send_rtp(again)
                            track.retransmitted += 1

    def _want_keyframe(self, ssrc: int) -> None:
        found = self._by_send_ssrc.get(ssrc)
        if found is not None:
            track, index = found
            track._keyframe_wanted.add(index)

    def _on_rtp(self, packet: bytes) -> None:
        media = self._receiver.receive_rtp(packet, trio.current_time())
        if media is None:
            return
        subscription = self._by_ssrc.get(int.from_bytes(media[8:12], "big"))
        if subscription is None:
            return
        if subscription.kind == "audio" or media[1] & 0x80:
            subscription.frames += 1
            self._wake()

    def _on_rtcp(self, data: bytes) -> None:
        self._receiver.receive_rtcp(data, trio.current_time())

    async def _send_feedback(self, transport: ClientTransport) -> None:
        """A subscriber's feedback: NACKs for what is missing, receiver reports."""
        next_report = trio.current_time() + _REPORT_INTERVAL
        while True:
            await trio.sleep(_NACK_INTERVAL)
            now = trio.current_time()
            nacks = self._receiver.nacks(now)
            if nacks is not None:
                transport.send_rtcp(nacks)
            if now >= next_report:
                next_report = now + _REPORT_INTERVAL
                report = self._receiver.reports(now)
                if report is not None:
                    transport.send_rtcp(report)

    # ---- helpers ---------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiters:
            self._changed.set()
            self._changed = trio.Event()

    async def _wait(
        self,
        check: Callable[[], T | None],
        timeout: float,  # noqa: ASYNC109 (the failure says what was seen)
        what: str,
        seen: Callable[[], str],
    ) -> T:
        """``check()``'s first answer that is not None, checked again at every change
        (a frame, a notification, the close). Raises WaitTimeout, saying ``what`` was
        awaited and ``seen()``, after ``timeout``, or as soon as the connection is closed
        (nothing more can come)."""
        __tracebackhide__ = True
        start = trio.current_time()
        with trio.move_on_after(timeout):
            while True:
                result = check()
                if result is not None:
                    return result
                if self.closed is not None:
                    code, reason = self.closed.code, self.closed.reason
                    raise WaitTimeout(
                        f"{self.user} waited for {what}, but after "
                        f"{trio.current_time() - start:.1f} s the server had closed its "
                        f"connection ({code}{' ' + reason if reason else ''}): {seen()}"
                    )
                self._waiters += 1
                try:
                    await self._changed.wait()
                finally:
                    self._waiters -= 1
        raise WaitTimeout(f"{self.user} waited {timeout:g} s for {what}: {seen()}")

    def _check_open(self) -> None:
        if self._ended:
            raise PeerClosed(f"{self.user} has left")

    def _next_mid(self) -> str:
        mid = str(self._mids)
        self._mids += 1
        return mid

    def _peer_id(self, source: SfuTestPeer | str) -> str:
        if isinstance(source, SfuTestPeer):
            return source.peer_id
        if source in self._users:
            return source
        for peer_id, user in self._users.items():
            if user == source:
                return peer_id
        return source

    def _name(self, source: SfuTestPeer | str) -> str:
        if isinstance(source, SfuTestPeer):
            return source.user
        return self._users.get(self._peer_id(source), source)

    def _producers_of(self, source: SfuTestPeer | str) -> tuple[str | None, dict[str, str]]:
        """(owner peer id, {producer id: kind}) of a peer, a peer or user id, or a producer
        id."""
        if isinstance(source, SfuTestPeer):
            tracks = {t.producer_id: t.kind for t in source.tracks if not t.closed}
            return source.peer_id, dict(tracks)
        peer_id = self._peer_id(source)
        if peer_id in self._remote:
            return peer_id, dict(self._remote[peer_id])
        for owner, producers in self._remote.items():
            if source in producers:
                return owner, {source: producers[source]}
        return None, {}

    def _describe_reception(self) -> str:
        if not self.subscriptions:
            return f"{self.user} has no subscription (call subscribe())."
        parts = []
        for s in self.subscriptions.values():
            owner = self._users.get(s.peer_id, s.peer_id) if s.peer_id else "?"
            closed = f", closed: {s.closed_reason}" if s.closed_reason else ""
            parts.append(f"{owner} {s.kind} {s.frames}{closed}")
        transport = self.media.recv_transport
        packets = transport.rtp_packets_in if transport is not None else 0
        return f"Frames by subscription: {'; '.join(parts)} ({packets} RTP packets in)."

    def _describe_notifications(self) -> str:
        if not self.notifications:
            return "it got no notification at all."
        shown = [
            f"{note.type} {_short(note.data)}"
            + (" (returned before)" if index in self._taken else "")
            for index, note in enumerate(self.notifications)
        ][-20:]
        more = len(self.notifications) - len(shown)
        return (
            f"it got {len(self.notifications)} notification(s)"
            + (f" (the last {len(shown)})" if more else "")
            + ": "
            + "; ".join(shown)
        )


def _random_ssrc() -> int:
    return secrets.randbelow(0xFFFF_FFFF) + 1


def _short(data: Mapping[str, Any], limit: int = 160) -> str:
    text = repr(dict(data))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _leaf(error: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one, or ``error`` itself."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


@attrs.frozen
class _PeerOptions:
    meeting: str
    user: str
    display_name: str
    token: str
    uplink: Impairment | None
    downlink: Impairment | None
    seed: int
    auto_subscribe: bool


@final
class PeerFactory:
    """Joins :class:`SfuTestPeer` s to a server: ``await peers(meeting, user)``.

    Made by :func:`open_peer_factory`; the ``sfu_peer`` fixture is one. Every peer runs
    in a task of the factory and is closed with it.
    """

    def __init__(self, server: SfuTestServer, nursery: trio.Nursery) -> None:
        self.server = server
        #: Every peer made, in order (closed ones too).
        self.peers: list[SfuTestPeer] = []
        self._nursery = nursery

    async def __call__(
        self,
        meeting: str,
        user: str,
        *,
        display_name: str | None = None,
        token: str | None = None,
        claims: Mapping[str, Any] | None = None,
        uplink: Impairment | None = None,
        downlink: Impairment | None = None,
        seed: int = 0,
        auto_subscribe: bool = False,
    ) -> SfuTestPeer:
        """Join ``meeting`` as ``user``; the joined peer (no transport yet: publishing and
        subscribing open them).

        ``token``: use this one (say, your backend's) instead of
        ``server.token(meeting, user, name=display_name, **claims)``; ``claims`` are
        :meth:`~trio_sfu.testing.server.SfuTestServer.token`'s (``can_publish=False``...).
        ``display_name`` defaults to ``user``. ``uplink`` / ``downlink``: impair what the
        peer sends / receives (see the module doc), with random generators seeded from
        ``seed``. ``auto_subscribe``: consume every producer of the meeting, present and
        future, as this peer hears of it (then do not also call
        :meth:`SfuTestPeer.subscribe`). A refused join raises its
        :class:`~trio_sfu.client.signaling.SignalingError`.
        """
        name = display_name if display_name is not None else user
        if token is None:
            token = self.server.token(meeting, user, name=name, **dict(claims or {}))
        options = _PeerOptions(
            meeting=meeting,
            user=user,
            display_name=name,
            token=token,
            uplink=uplink,
            downlink=downlink,
            seed=seed,
            auto_subscribe=auto_subscribe,
        )
        try:
            peer: SfuTestPeer = await self._nursery.start(self._run_peer, options)
        except BaseExceptionGroup as group:
            raise _leaf(group) from None
        self.peers.append(peer)
        return peer

    async def _run_peer(
        self, options: _PeerOptions, *, task_status: trio.TaskStatus[SfuTestPeer]
    ) -> None:
        """One peer's life: joined, until its close() (or the factory's)."""
        finished = trio.Event()
        try:
            async with (
                open_peer(
                    self.server.ws_url,
                    options.meeting,
                    token=options.token,
                    display_name=options.display_name,
                ) as media,
                trio.open_nursery() as nursery,
            ):
                peer = SfuTestPeer(
                    media,
                    nursery,
                    meeting=options.meeting,
                    user=options.user,
                    uplink=options.uplink,
                    downlink=options.downlink,
                    seed=options.seed,
                    auto_subscribe=options.auto_subscribe,
                    finished=finished,
                )
                peer._start()
                task_status.started(peer)
                await peer._close_requested.wait()
                nursery.cancel_scope.cancel()
        finally:
            finished.set()

    async def aclose(self) -> None:
        """Close every peer (WebSocket, transports, relays) and wait until they are."""
        for peer in self.peers:
            peer._close_requested.set()
        for peer in self.peers:
            await peer.close()


@asynccontextmanager
async def open_peer_factory(server: SfuTestServer) -> AsyncIterator[PeerFactory]:
    """A :class:`PeerFactory` for ``server`` for the block; its peers are closed after it
    (each WebSocket close bounded at 5 s)."""
    async with trio.open_nursery() as nursery:
        factory = PeerFactory(server, nursery)
        try:
            yield factory
        finally:
            await factory.aclose()
