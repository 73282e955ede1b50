"""Load peers for the fan-out benchmark (:mod:`trio_sfu.bench.fanout`): one process, many
peers.

Run as ``python -m trio_sfu.bench.loadgen``; it talks JSON lines with its parent:

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

The peers' media and what they measure: :mod:`trio_sfu.bench.media`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import socket as stdlib_socket
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, final

import trio

from trio_sfu.bench.media import (
    FORWARDED_LAYERS,
    LAYER_AUDIO,
    LAYER_R0,
    LAYER_R1,
    LAYER_R2,
    Publisher,
    SocketReader,
    Subscriber,
    send_media,
)
from trio_sfu.bench.relay import HELLO
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

__all__ = ["RequestTimes", "main"]


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


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
            await send_media(list(publishers.values()), start, w0, w1, stop)
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
                peer.send(HELLO)
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
                    peer.send(HELLO)  # again, in case the first one was lost
                    reader.add(peer.sock, peer.subscriber.on_rtp, peer.subscriber)
            publishers = [p.publisher for p in peers if p.publisher is not None]
            await send_media(publishers, start, w0, w1, stop)
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
