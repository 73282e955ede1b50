"""The fan-out benchmark's media (:mod:`trio_sfu.bench.loadgen`): what a load peer sends, and
what it measures of what it receives.

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

import collections
import heapq
import math
import random
import select
import socket as stdlib_socket
import struct
import time
from collections.abc import Callable
from typing import Final, final

import trio

from trio_sfu.client.synthetic import SyntheticStream

__all__ = [
    "FORWARDED_LAYERS",
    "HIST_BIN",
    "HIST_BINS",
    "LAYER_AUDIO",
    "LAYER_R0",
    "LAYER_R1",
    "LAYER_R2",
    "STREAMS",
    "TAIL",
    "Publisher",
    "SocketReader",
    "StreamSpec",
    "Subscriber",
    "send_media",
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


async def send_media(
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
