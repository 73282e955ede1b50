"""Load peers for the fan-out benchmark (:mod:`trio_sfu.bench`): one process, many peers.

Run as ``python -m trio_sfu.loadgen``; it talks JSON lines with its parent:

1. stdin, first line: the job, ``{"mode": "sfu", "url": "ws://...", "meeting": "m",
   "peers": [{"name": "p0", "publish": true, "subscribe": false}, ...]}`` (or ``"mode":
   "relay"`` with ``"relay": [ip, port]`` instead of the URL: plain UDP, no signaling).
2. stdout ``{"event": "published", "producers": {name: [ids]}}`` once every peer joined
   (publishers produced audio and simulcast VP8; subscribers opened their receive
   transport).
3. stdin ``{"producers": {name: [ids]}}``: every producer of the meeting; each subscriber
   consumes all those that are not its own. stdout ``{"event": "ready", "consumers": n,
   "requests": {type: [ms, ...]}}``: how long each ``rtc:produce``, ``rtc:consume`` and
   ``rtc:resumeConsumer`` took, from its send to its answer, as this client saw it (with
   up to ``concurrency`` requests of this process in flight).
4. stdin ``{"start": t0, "window": [w0, w1], "stop": t1}`` (``time.monotonic()`` seconds,
   one clock for every process of the machine): publishers send from ``t0`` to ``t1``;
   subscribers count what was *sent* in ``[w0, w1)``. About half a second after ``t1``
   stdout gets ``{"event": "result", ...}`` and the process leaves and exits.

Every step is bounded in time (``--timeout`` seconds for the whole process, default
300); the process exits by itself, and closing stdin ends it too.

The media is what a browser sends: per publisher Opus (50 packets/s, 100 B) and three
simulcast VP8 streams (r0 15 frames/s of one packet, r1 20 frames/s of two, r2 30 frames/s
of five: 15, 40 and 150 packets/s of about 1,160 B), a keyframe on every layer every 3 s
and on a PLI/FIR. Video leaves through a pacer, as a browser's does (WebRTC's paced sender: a
leaky bucket at 2.5 times the video bitrate, audio ahead of it): the five packets of an r2
frame go out about 2 ms apart instead of in one burst. ``"pacing": false`` in the job sends
each frame in one burst. Each packet's payload ends with a layer byte and the send time
(``!Bd``, ``time.monotonic()``, taken right before the send), so a subscriber knows what it
got and how late, whatever the SFU rewrote in the header. Subscribers are cheap on purpose:
their ``on_rtp`` only counts, reads those nine bytes and bumps a latency histogram (10 µs
bins). The arrival time is the kernel's receive timestamp of the datagram
(``SO_TIMESTAMPNS``), so the generators' own scheduling delay is not counted as latency.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import math
import os
import random
import select
import socket as stdlib_socket
import struct
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, Final, final

import trio

from trio_sfu.client.peer import MediaPeer, open_peer
from trio_sfu.client.synthetic import (
    SyntheticPublisher,
    SyntheticStream,
    TransportWideCounter,
    audio_rtp_parameters,
    vp8_simulcast_rtp_parameters,
)
from trio_sfu.client.transport import ClientTransport
from trio_sfu.wire import unstructure

__all__ = [
    "HIST_BIN",
    "HIST_BINS",
    "LAYER_AUDIO",
    "LAYER_R0",
    "LAYER_R1",
    "LAYER_R2",
    "STREAMS",
    "RequestTimes",
    "StreamSpec",
    "Subscriber",
    "main",
    "stamp",
]

#: Payload tail: the layer (LAYER_*) and the send time, ``time.monotonic()``.
TAIL: Final = struct.Struct("!Bd")
LAYER_AUDIO: Final = 0
LAYER_R0: Final = 1
LAYER_R1: Final = 2
LAYER_R2: Final = 3
#: What a subscriber gets: audio and the highest simulcast layer.
FORWARDED_LAYERS: Final = (LAYER_AUDIO, LAYER_R2)
#: Latency histogram: 10 µs bins up to one second; the last bin holds everything later.
HIST_BIN: Final = 1e-5
HIST_BINS: Final = 100_001
KEYFRAME_INTERVAL: Final = 3.0
#: At most one keyframe per layer for PLIs this close together (a browser throttles too).
PLI_MIN_INTERVAL: Final = 0.3
VIDEO_PACKET_SIZE: Final = 1130
AUDIO_PACKET_SIZE: Final = 100
RELAY_HELLO: Final = b"HELLO"
#: The pacer sends video at this multiple of the publisher's video bitrate (WebRTC's
#: default pacing factor).
PACING_FACTOR: Final = 2.5
# Linux: a receive timestamp (struct timespec, CLOCK_REALTIME) with every datagram.
_SO_TIMESTAMPNS: Final = 35
_TIMESPEC: Final = struct.Struct("@qq")
#: With kernel receive timestamps, a reader that woke up waits this long before reading,
#: so that it reads many datagrams per wakeup.
READ_BATCH_DELAY: Final = 0.001


@final
class StreamSpec:
    """One stream of a publisher: frames per second and packets per frame."""

    __slots__ = ("fps", "layer", "packets", "size")

    def __init__(self, layer: int, fps: float, packets: int, size: int) -> None:
        self.layer = layer
        self.fps = fps
        self.packets = packets
        self.size = size

    @property
    def pps(self) -> float:
        return self.fps * self.packets


STREAMS: Final = (
    StreamSpec(LAYER_AUDIO, 50.0, 1, AUDIO_PACKET_SIZE),
    StreamSpec(LAYER_R0, 15.0, 1, VIDEO_PACKET_SIZE),
    StreamSpec(LAYER_R1, 20.0, 2, VIDEO_PACKET_SIZE),
    StreamSpec(LAYER_R2, 30.0, 5, VIDEO_PACKET_SIZE),
)


def stamp(packet: bytes, layer: int, sent: float) -> bytes:
    """``packet`` with its last nine payload bytes replaced by the layer and send time."""
    return packet[: -TAIL.size] + TAIL.pack(layer, sent)


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


# ---- measuring -------------------------------------------------------------------------


@final
class Subscriber:
    """Counts received packets by layer and their latency, for packets sent in a window.

    :meth:`on_rtp` is the transport's ``on_rtp`` callback (plain RTP, SRTP already removed)
    or is called with the datagrams of the relay.
    """

    __slots__ = ("arrival", "hist", "late", "outside", "received", "unknown", "w0", "w1")

    def __init__(self) -> None:
        #: When the datagram being handled arrived (``time.monotonic()`` seconds, from the
        #: kernel's timestamp; set by :class:`SocketReader`), None: now.
        self.arrival: float | None = None
        self.w0 = math.inf
        self.w1 = -math.inf
        self.received = [0, 0, 0, 0]
        self.outside = 0
        self.unknown = 0
        self.late = 0
        self.hist = [0] * HIST_BINS

    def on_rtp(self, packet: bytes) -> None:
        now = self.arrival
        if now is None:
            now = time.monotonic()
        try:
            layer, sent = TAIL.unpack_from(packet, len(packet) - 9)
        except struct.error:
            self.unknown += 1
            return
        if not self.w0 <= sent < self.w1 or layer > 3:
            self.outside += 1
            return
        self.received[layer] += 1
        index = int((now - sent) * 1e5)
        if index >= HIST_BINS - 1:
            self.late += 1
            index = HIST_BINS - 1
        elif index < 0:
            index = 0
        self.hist[index] += 1


@final
class Publisher:
    """Sends the STREAMS of one publisher through ``send(packet) -> bool``; video through a
    pacer unless ``pacing`` is False."""

    def __init__(
        self,
        streams: dict[int, SyntheticStream],
        send: Callable[[bytes], bool],
        rng: random.Random,
        *,
        pacing: bool = True,
    ) -> None:
        self.streams = streams
        self.send = send
        self.rng = rng
        self.sent_in_window = [0, 0, 0, 0]
        self.sent = 0
        self.send_failed = 0
        self.keyframes = 0
        self._want_keyframe: set[int] = set()
        self._last_pli: dict[int, float] = {}
        self._next_keyframe = dict.fromkeys(streams, 0.0)
        self._by_ssrc = {stream.ssrc: layer for layer, stream in streams.items()}
        # The three simulcast layers' bitrate, also for the relay's publishers (they send
        # only r2): the same spacing on both paths.
        video_bps = sum(spec.pps * spec.size * 8 for spec in STREAMS if spec.layer != LAYER_AUDIO)
        #: Bits per second the pacer lets out (0: no pacing).
        self.pacing_rate = PACING_FACTOR * video_bps if pacing else 0.0
        self._paced: collections.deque[tuple[int, bytes]] = collections.deque()
        self._pacer_free_at = 0.0
        #: Whether the send loop has a wake-up for the pacer queued.
        self.pacer_scheduled = False

    def on_pli(self, media_ssrc: int) -> None:
        layer = self._by_ssrc.get(media_ssrc)
        if layer is None:
            return
        now = time.monotonic()
        if now - self._last_pli.get(layer, -1e9) >= PLI_MIN_INTERVAL:
            self._last_pli[layer] = now
            self._want_keyframe.add(layer)

    def frame(self, spec: StreamSpec, w0: float, w1: float) -> None:
        """Make one frame of ``spec``: audio goes out now, video to the pacer (or now)."""
        stream = self.streams.get(spec.layer)
        if stream is None:
            return
        now = time.monotonic()
        if spec.layer == LAYER_AUDIO:
            self._send(spec.layer, stream.opus_frame(size=spec.size, now=now), w0, w1)
            return
        keyframe = spec.layer in self._want_keyframe or now >= self._next_keyframe[spec.layer]
        if keyframe:
            self._want_keyframe.discard(spec.layer)
            self._next_keyframe[spec.layer] = now + KEYFRAME_INTERVAL
            self.keyframes += 1
        packets = stream.vp8_frame(
            keyframe=keyframe, size=spec.size, packets=spec.packets, tid=None, now=now
        )
        if not self.pacing_rate:
            for packet in packets:
                self._send(spec.layer, packet, w0, w1)
            return
        self._paced.extend((spec.layer, packet) for packet in packets)

    def pace(self, w0: float, w1: float) -> float | None:
        """Send what the pacer lets out now; when to call again (None: nothing queued)."""
        queue = self._paced
        now = time.monotonic()
        free_at = self._pacer_free_at
        while queue and free_at <= now:
            layer, packet = queue.popleft()
            self._send(layer, packet, w0, w1)
            free_at = max(free_at, now) + len(packet) * 8 / self.pacing_rate
        self._pacer_free_at = free_at
        return free_at if queue else None

    def _send(self, layer: int, packet: bytes, w0: float, w1: float) -> None:
        sent = time.monotonic()
        if self.send(stamp(packet, layer, sent)):
            self.sent += 1
            if w0 <= sent < w1:
                self.sent_in_window[layer] += 1
        else:
            self.send_failed += 1


_PACER: Final = -1  # a send-loop entry for a publisher's pacer, not a stream


async def _send_media(
    publishers: list[Publisher], start: float, w0: float, w1: float, stop: float
) -> None:
    """Every publisher's streams on their schedule, and their pacers (one task for all)."""
    if not publishers:
        return
    offset = trio.current_time() - time.monotonic()
    queue: list[tuple[float, int, int]] = []
    for index, publisher in enumerate(publishers):
        phase = publisher.rng.random() / 50  # spread the publishers' frames apart
        for spec_index, spec in enumerate(STREAMS):
            if spec.layer in publisher.streams:
                queue.append((start + phase, index, spec_index))
    heapq.heapify(queue)
    while queue:
        due, index, spec_index = queue[0]
        if due >= stop:
            break
        if due > time.monotonic():
            await trio.sleep_until(due + offset)
        publisher = publishers[index]
        if spec_index == _PACER:
            heapq.heappop(queue)
            publisher.pacer_scheduled = False
        else:
            heapq.heapreplace(queue, (due + 1 / STREAMS[spec_index].fps, index, spec_index))
            publisher.frame(STREAMS[spec_index], w0, w1)
        if not publisher.pacer_scheduled:
            wake = publisher.pace(w0, w1)
            if wake is not None:
                publisher.pacer_scheduled = True
                heapq.heappush(queue, (wake, index, _PACER))


@final
class SocketReader:
    """Reads many non-blocking sockets from one task.

    A level-triggered stdlib epoll holds them all and trio waits for that epoll's own fd:
    one wakeup per batch of ready sockets, no per-datagram re-arming, instead of one task
    wakeup and epoll update per datagram per socket. This is what keeps a load generator
    with hundreds of subscribers cheaper than the server it measures.

    A socket added with its :class:`Subscriber` is read with ``recvmsg`` and its kernel
    receive timestamp (``SO_TIMESTAMPNS``) goes to ``subscriber.arrival`` before the
    handler runs. When every socket has timestamps, the reader waits ``READ_BATCH_DELAY``
    after each wakeup, so that it reads a batch per wakeup.
    """

    def __init__(self) -> None:
        #: Every socket has kernel receive timestamps (reads may then wait a little).
        self._timestamped = True
        self._epoll = select.epoll()
        self._handlers: dict[
            int, tuple[stdlib_socket.socket, Callable[[bytes], None], Subscriber | None]
        ] = {}

    def add(
        self,
        sock: stdlib_socket.socket,
        handler: Callable[[bytes], None],
        subscriber: Subscriber | None = None,
    ) -> None:
        if subscriber is not None:
            try:
                sock.setsockopt(stdlib_socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            except OSError:  # not Linux: the subscriber reads the clock itself
                subscriber = None
        if subscriber is None:
            self._timestamped = False
        self._handlers[sock.fileno()] = (sock, handler, subscriber)
        self._epoll.register(sock.fileno(), select.EPOLLIN)

    async def run(self) -> None:
        epoll = self._epoll
        poll = epoll.poll
        handlers = self._handlers
        unpack = _TIMESPEC.unpack_from
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                if self._timestamped:
                    # Every datagram carries its arrival time: let a few more arrive and
                    # read them in one go (fewer wakeups and polls per datagram; the
                    # latency measured is not touched).
                    await trio.sleep(READ_BATCH_DELAY)
                # CLOCK_REALTIME -> time.monotonic(), read again at every wakeup.
                offset = time.time() - time.monotonic()
                # Level-triggered: every ready socket drained (up to a bound), as many
                # rounds as there is something to read (up to a bound, then trio runs the
                # others).
                for _ in range(8):
                    events = poll(0)
                    if not events:
                        break
                    for fd, _ in events:
                        entry = handlers.get(fd)
                        if entry is None:
                            continue
                        sock, handler, subscriber = entry
                        for _ in range(64):
                            try:
                                if subscriber is None:
                                    data = sock.recv(2048)
                                else:
                                    data, ancillary, _, _ = sock.recvmsg(2048, 64)
                                    arrival = None
                                    for _level, kind, value in ancillary:
                                        if kind == _SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                                            seconds, nanoseconds = unpack(value)
                                            arrival = seconds + nanoseconds * 1e-9 - offset
                                    subscriber.arrival = arrival
                            except OSError:  # drained, closed at the end, or ICMP
                                break
                            handler(data)
        finally:
            epoll.close()


# ---- the parent's protocol -------------------------------------------------------------


@final
class _Lines:
    """JSON lines from a stream (the parent's stdin)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some(65536)
            if not data:
                raise EOFError("the parent closed stdin")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message


def _summary(subscribers: list[Subscriber], publishers: dict[str, Publisher]) -> dict[str, Any]:
    received = [0, 0, 0, 0]
    hist: dict[int, int] = {}
    outside = unknown = late = 0
    for sub in subscribers:
        for layer in range(4):
            received[layer] += sub.received[layer]
        outside += sub.outside
        unknown += sub.unknown
        late += sub.late
        for index, count in enumerate(sub.hist):
            if count:
                hist[index] = hist.get(index, 0) + count
    return {
        "event": "result",
        "received": received,
        "outside": outside,
        "unknown": unknown,
        "late": late,
        "hist": hist,
        "sent_in_window": {name: p.sent_in_window for name, p in publishers.items()},
        "sent": sum(p.sent for p in publishers.values()),
        "send_failed": sum(p.send_failed for p in publishers.values()),
        "keyframes": sum(p.keyframes for p in publishers.values()),
    }


# ---- SFU peers -------------------------------------------------------------------------


def _pli_watcher(publisher: Publisher) -> Callable[[bytes], None]:
    def on_rtcp(packet: bytes) -> None:
        # Walk the compound: PLI is PT 206 FMT 1, FIR PT 206 FMT 4 (RFC 4585, RFC 5104).
        offset = 0
        size = len(packet)
        while offset + 12 <= size:
            first = packet[offset]
            pt = packet[offset + 1]
            length = ((packet[offset + 2] << 8) | packet[offset + 3]) * 4 + 4
            if pt == 206 and (first & 0x1F) == 1:
                publisher.on_pli(int.from_bytes(packet[offset + 8 : offset + 12]))
            elif pt == 206 and (first & 0x1F) == 4 and offset + 16 <= size:
                publisher.on_pli(int.from_bytes(packet[offset + 12 : offset + 16]))
            offset += length

    return on_rtcp


def _ignore(packet: bytes) -> None:
    return None


@final
class RequestTimes:
    """How long signaling requests took, by type, in milliseconds (client side: from
    sending the request to reading its answer)."""

    def __init__(self) -> None:
        self.by_type: dict[str, list[float]] = collections.defaultdict(list)

    def add(self, rtype: str, started: float) -> None:
        """One request of ``rtype`` sent at ``started`` (``time.perf_counter()``) was just
        answered."""
        self.by_type[rtype].append(round((time.perf_counter() - started) * 1e3, 4))


@final
class _SfuPeer:
    def __init__(self, spec: dict[str, Any], rng: random.Random, pacing: bool = True) -> None:
        self.pacing = pacing
        self.name: str = spec["name"]
        self.publish: bool = spec.get("publish", False)
        self.subscribe: bool = spec.get("subscribe", False)
        self.rng = rng
        self.producer_ids: list[str] = []
        self.publisher: Publisher | None = None
        self.subscriber = Subscriber()
        self.consumers = 0
        self.srtp_profile: str | None = None

    async def setup(self, peer: MediaPeer, reader: SocketReader, times: RequestTimes) -> None:
        if self.subscribe:
            _, recv = await peer.open_transport("recv")
            recv.on_rtp = self.subscriber.on_rtp
            recv.on_rtcp = _ignore
            reader.add(recv.detach_receive(), recv.receive_datagram, self.subscriber)
            self.srtp_profile = recv.selected_srtp_profile
            await peer.load_capabilities()
        if self.publish:
            counter = TransportWideCounter(self.rng.randrange(0, 0x10000))
            audio_parameters = audio_rtp_parameters(
                ssrc=self.rng.randrange(1, 0x1_0000_0000), mid="0", transport_cc=True
            )
            video_parameters = vp8_simulcast_rtp_parameters(mid="1", transport_cc=True)
            await peer.open_transport("send")  # so that publish times only rtc:produce
            started = time.perf_counter()
            audio_id, _ = await peer.publish("audio", audio_parameters)
            times.add("rtc:produce", started)
            started = time.perf_counter()
            video_id, _ = await peer.publish("video", video_parameters)
            times.add("rtc:produce", started)
            send: ClientTransport | None = peer.send_transport
            assert send is not None
            audio = SyntheticPublisher(audio_parameters, rng=self.rng, transport_counter=counter)
            video = SyntheticPublisher(video_parameters, rng=self.rng, transport_counter=counter)
            streams = {LAYER_AUDIO: audio.streams[0]}
            for layer, stream in zip((LAYER_R0, LAYER_R1, LAYER_R2), video.streams, strict=True):
                streams[layer] = stream
            self.publisher = Publisher(streams, send.send_rtp, self.rng, pacing=self.pacing)
            self.srtp_profile = send.selected_srtp_profile
            send.on_rtcp = _pli_watcher(self.publisher)
            self.producer_ids = [audio_id, video_id]

    async def consume(
        self, peer: MediaPeer, producers: dict[str, list[str]], times: RequestTimes
    ) -> None:
        """What :meth:`MediaPeer.consume` does (the receive transport is open already), each
        request timed."""
        if not self.subscribe:
            return
        caps = unstructure(await peer.load_capabilities())
        for owner, ids in producers.items():
            if owner == self.name:
                continue
            for producer_id in ids:
                started = time.perf_counter()
                answer = await peer.signaling.consume(producer_id, caps)
                times.add("rtc:consume", started)
                started = time.perf_counter()
                await peer.signaling.resume_consumer(str(answer["consumerId"]))
                times.add("rtc:resumeConsumer", started)
                self.consumers += 1


async def _run_sfu(job: dict[str, Any], lines: _Lines) -> None:
    rng = random.Random(job.get("seed"))
    pacing = bool(job.get("pacing", True))
    peers = [_SfuPeer(spec, random.Random(rng.random()), pacing) for spec in job["peers"]]
    limit = trio.Semaphore(int(job.get("concurrency", 8)))
    producers_in: dict[str, list[str]] = {}
    consume_now = trio.Event()
    done = trio.Event()
    counts = {"published": 0, "ready": 0}
    all_ready = trio.Event()
    all_published = trio.Event()
    times = RequestTimes()

    async def run_peer(state: _SfuPeer) -> None:
        async with AsyncExitStack() as stack:
            async with limit:
                peer = await stack.enter_async_context(
                    open_peer(job["url"], job["meeting"], display_name=state.name)
                )
                await state.setup(peer, reader, times)
            counts["published"] += 1
            if counts["published"] == len(peers):
                all_published.set()
            await consume_now.wait()
            async with limit:
                await state.consume(peer, producers_in, times)
            counts["ready"] += 1
            if counts["ready"] == len(peers):
                all_ready.set()
            await done.wait()

    reader = SocketReader()
    async with trio.open_nursery() as outer:
        outer.start_soon(reader.run)
        async with trio.open_nursery() as nursery:
            for state in peers:
                nursery.start_soon(run_peer, state)
            await all_published.wait()
            _emit(
                {
                    "event": "published",
                    "producers": {p.name: p.producer_ids for p in peers if p.producer_ids},
                }
            )
            producers_in.update((await lines.next())["producers"])
            consume_now.set()
            await all_ready.wait()
            _emit(
                {
                    "event": "ready",
                    "consumers": sum(p.consumers for p in peers),
                    "requests": times.by_type,
                }
            )
            timing = await lines.next()
            start, stop = float(timing["start"]), float(timing["stop"])
            w0, w1 = (float(x) for x in timing["window"])
            subscribers = [p.subscriber for p in peers if p.subscribe]
            for sub in subscribers:
                sub.w0, sub.w1 = w0, w1
            publishers = {p.name: p.publisher for p in peers if p.publisher is not None}
            await _send_media(list(publishers.values()), start, w0, w1, stop)
            await trio.sleep_until(stop + 0.5 + trio.current_time() - time.monotonic())
            summary = _summary(subscribers, publishers)
            summary["srtp_profiles"] = sorted({p.srtp_profile for p in peers if p.srtp_profile})
            _emit(summary)
            done.set()
        outer.cancel_scope.cancel()  # every peer left: stop reading


# ---- relay peers -----------------------------------------------------------------------


@final
class _RelayPeer:
    def __init__(
        self, spec: dict[str, Any], relay: tuple[str, int], rng: random.Random, pacing: bool = True
    ) -> None:
        self.name: str = spec["name"]
        self.publish: bool = spec.get("publish", False)
        self.subscribe: bool = spec.get("subscribe", False)
        sock = stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
        sock.setblocking(False)
        for option in (stdlib_socket.SO_RCVBUF, stdlib_socket.SO_SNDBUF):
            sock.setsockopt(stdlib_socket.SOL_SOCKET, option, 1 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.connect(relay)
        self.sock = sock
        self.subscriber = Subscriber()
        self.publisher: Publisher | None = None
        self.send_failed = 0
        if self.publish:
            streams = {}
            for layer in FORWARDED_LAYERS:  # the relay forwards all it gets: send only these
                audio = layer == LAYER_AUDIO
                streams[layer] = SyntheticStream(
                    ssrc=rng.randrange(1, 0x1_0000_0000),
                    payload_type=111 if audio else 96,
                    clock_rate=48000 if audio else 90000,
                    rng=rng,
                )
            self.publisher = Publisher(streams, self.send, rng, pacing=pacing)

    def send(self, data: bytes) -> bool:
        try:
            self.sock.send(data)
        except OSError:
            return False
        return True


async def _run_relay(job: dict[str, Any], lines: _Lines) -> None:
    rng = random.Random(job.get("seed"))
    relay = (str(job["relay"][0]), int(job["relay"][1]))
    pacing = bool(job.get("pacing", True))
    peers = [_RelayPeer(spec, relay, random.Random(rng.random()), pacing) for spec in job["peers"]]
    try:
        for peer in peers:
            if peer.subscribe:
                peer.send(RELAY_HELLO)
        _emit({"event": "published", "producers": {}})
        await lines.next()
        _emit({"event": "ready", "consumers": sum(p.subscribe for p in peers)})
        timing = await lines.next()
        start, stop = float(timing["start"]), float(timing["stop"])
        w0, w1 = (float(x) for x in timing["window"])
        reader = SocketReader()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            for peer in peers:
                peer.subscriber.w0, peer.subscriber.w1 = w0, w1
                if peer.subscribe:
                    peer.send(RELAY_HELLO)  # again, in case the first one was lost
                    reader.add(peer.sock, peer.subscriber.on_rtp, peer.subscriber)
            publishers = [p.publisher for p in peers if p.publisher is not None]
            await _send_media(publishers, start, w0, w1, stop)
            await trio.sleep_until(stop + 0.5 + trio.current_time() - time.monotonic())
            nursery.cancel_scope.cancel()
        _emit(
            _summary(
                [p.subscriber for p in peers if p.subscribe],
                {p.name: p.publisher for p in peers if p.publisher is not None},
            )
        )
    finally:
        for peer in peers:
            peer.sock.close()


async def _main(limit_seconds: float) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    lines = _Lines(stdin)
    with trio.fail_after(limit_seconds):
        async with stdin:
            job = await lines.next()
            if job["mode"] == "sfu":
                await _run_sfu(job, lines)
            elif job["mode"] == "relay":
                await _run_relay(job, lines)
            else:
                raise ValueError(f"unknown mode {job['mode']!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds, at most")
    args = parser.parse_args(argv)
    try:
        trio.run(_main, args.timeout)
    except EOFError:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
