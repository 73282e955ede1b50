"""Churn soak (``scripts/soak --minutes N``): peers come and go in many meetings, and at the
end nothing is left.

One trio program holds the server (signaling and an in-process media Worker, as
``--workers 1`` runs it) and the peers, all on 127.0.0.1. Up to ``peers`` peer "lives" run
at once over ``meetings`` meetings; each joins, maybe publishes audio and simulcast VP8,
consumes what the others publish (as they appear), switches layers and pauses now and then,
and after a few seconds goes away one of six ways:

* ``leave``: ``rtc:leave``, then the socket closes;
* ``drop``: the TCP connection is dropped without a WebSocket close;
* ``silent``: media and ICE consent checks stop (a lost network): the server must close the
  transports by ICE consent and end the peer (4002);
* ``unconnected``: a transport is created and never connected, nothing else: the server
  must close it (``connect_timeout``) and then reap the idle peer (4003);
* ``frozen``: a transport is created, then the client reads its WebSocket no more while
  it keeps sending requests (a burst, as from timers of a program whose reading hung):
  the answers and the others' notifications fill its socket and its outgoing queue, the
  server ends it as too slow (1008); the client then sends ``rtc:leave`` and drops the
  TCP connection (a reset, with unread data);
* ``frozen_reaped``: a transport is created, then nothing is read or sent: the server
  reaps the transport and then the idle peer, and only then the client drops the
  connection.

The server runs with short timeouts (consent 2 s, connect 3 s, idle 4 s) so that the
abandoned ones are reaped within a life's length. The checks at the end:

* zero rooms, peers, transports, producers and consumers (the signaling books, the
  engine's dump and ``/metrics``);
* open file descriptors and trio tasks back to their count before the first peer (once
  the last connections have ended: a few seconds at most);
* RSS growth under 5 % from the end of the warm-up (the first ``warmup`` share of the run)
  to the end of the churn, both taken as the largest sample of a window of equal load.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final, final

import attrs
import trio

__all__ = ["SoakReport", "main", "run_soak"]

MODES: Final = ("leave", "drop", "silent", "unconnected", "frozen", "frozen_reaped")
MODE_WEIGHTS: Final = (4, 3, 2, 1, 1, 1)
#: Requests a frozen peer sends without reading, at most: past the server's outgoing
#: queue (1024 messages by default), whose answers then overflow.
FROZEN_BURST: Final = 1500
#: How long the last connections may take to end after the churn.
SETTLE_TIMEOUT: Final = 10.0
#: RSS growth allowed from the warm-up's end to the churn's end.
MAX_RSS_GROWTH: Final = 0.05


@attrs.define
class SoakReport:
    seconds: float = 0.0
    lives: int = 0
    ended: Counter[str] = attrs.Factory(Counter)
    joins: int = 0
    producers: int = 0
    consumers: int = 0
    layer_switches: int = 0
    packets_sent: int = 0
    packets_received: int = 0
    errors: list[str] = attrs.Factory(list)
    fds_before: int = 0
    fds_after: int = 0
    tasks_before: int = 0
    tasks_after: int = 0
    rss_warm_kib: int = 0
    rss_end_kib: int = 0
    rss_after_kib: int = 0
    left: dict[str, int] = attrs.Factory(dict)
    max_concurrent: int = 0
    #: Connections the server closed because their outgoing queue was full (frozen lives).
    too_slow: int = 0
    #: RSS growth allowed from the warm-up's end to the churn's end.
    max_rss_growth: float = MAX_RSS_GROWTH
    #: (seconds into the churn, RSS KiB), one sample a second.
    rss_samples: list[tuple[float, int]] = attrs.Factory(list)

    @property
    def rss_growth(self) -> float:
        return (
            (self.rss_end_kib - self.rss_warm_kib) / self.rss_warm_kib if self.rss_warm_kib else 0.0
        )

    def problems(self) -> list[str]:
        found = list(self.errors)
        if any(self.left.values()):
            found.append(f"left behind: {self.left}")
        if self.fds_after != self.fds_before:
            found.append(f"open fds {self.fds_before} -> {self.fds_after}")
        if self.tasks_after != self.tasks_before:
            found.append(f"trio tasks {self.tasks_before} -> {self.tasks_after}")
        if self.rss_growth >= self.max_rss_growth:
            found.append(
                f"RSS grew {self.rss_growth:.1%} after the warm-up "
                f"(limit {self.max_rss_growth:.0%})"
            )
        return found

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "lives": self.lives,
            "ended": dict(self.ended),
            "max_concurrent_peers": self.max_concurrent,
            "closed_too_slow": self.too_slow,
            "producers": self.producers,
            "consumers": self.consumers,
            "layer_switches": self.layer_switches,
            "packets_sent": self.packets_sent,
            "packets_received": self.packets_received,
            "left": self.left,
            "fds": [self.fds_before, self.fds_after],
            "trio_tasks": [self.tasks_before, self.tasks_after],
            "rss_kib": {
                "warm": self.rss_warm_kib,
                "end": self.rss_end_kib,
                "after": self.rss_after_kib,
                "growth": round(self.rss_growth, 4),
                "every_10_s": [kib for at, kib in self.rss_samples[::10]],
            },
            "problems": self.problems(),
        }


@final
class FrozenClient:
    """A signaling client that stops reading its WebSocket, as one whose program hung (or
    whose network stopped draining) while its timers still send: raw wsproto over a TCP
    socket with a small receive buffer, so that the server's sends to it block soon.

    :meth:`request` reads until its answer; after :meth:`freeze` nothing is read any more;
    :meth:`drop` closes the socket with what was not read still in it (the kernel then
    resets the connection: no WebSocket close, no FIN).
    """

    #: Bytes of receive buffer asked of the kernel (it doubles it).
    RECEIVE_BUFFER: Final = 4096

    def __init__(self, stream: trio.SocketStream) -> None:
        import wsproto

        self._stream = stream
        self._ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._text: list[str] = []
        self._partial = ""
        self._ids = 0
        self.frozen = False
        #: Frames sent after the freeze (requests the server may still read and answer).
        self.sent_frozen = 0

    @classmethod
    async def connect(cls, host: str, port: int) -> FrozenClient:
        """Open the WebSocket ``ws://host:port/ws``."""
        import socket

        from wsproto.events import AcceptConnection, Request

        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cls.RECEIVE_BUFFER)
        try:
            await sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        client = cls(trio.SocketStream(sock))
        try:
            await client._stream.send_all(client._ws.send(Request(host=host, target="/ws")))
            while True:
                events = await client._pump()
                if any(isinstance(event, AcceptConnection) for event in events):
                    return client
        except BaseException:
            client.drop()
            raise

    async def _pump(self) -> list[Any]:
        from wsproto.events import TextMessage

        data = await self._stream.receive_some(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self._ws.receive_data(data)
        events = list(self._ws.events())
        for event in events:
            if isinstance(event, TextMessage):
                self._partial += event.data
                if event.message_finished:
                    self._text.append(self._partial)
                    self._partial = ""
        return events

    def _frame(self, rtype: str, data: dict[str, Any]) -> tuple[str, bytes]:
        from wsproto.events import TextMessage

        self._ids += 1
        request_id = str(self._ids)
        text = json.dumps({"type": rtype, "requestId": request_id, "data": data})
        return request_id, self._ws.send(TextMessage(data=text))

    async def request(self, rtype: str, data: dict[str, Any]) -> dict[str, Any]:
        """Send a request and read until its answer (before the freeze only)."""
        assert not self.frozen
        request_id, frame = self._frame(rtype, data)
        await self._stream.send_all(frame)
        while True:
            while self._text:
                message: dict[str, Any] = json.loads(self._text.pop(0))
                if message.get("requestId") == request_id:
                    return message
            await self._pump()

    def freeze(self) -> None:
        """Read nothing from now on."""
        self.frozen = True

    async def send_frozen(self, rtype: str, data: dict[str, Any]) -> None:
        """Send a request without reading anything. Blocks while the server reads nothing
        either; once cancelled there, nothing more can be sent."""
        self.freeze()
        _, frame = self._frame(rtype, data)
        await self._stream.send_all(frame)
        self.sent_frozen += 1

    def drop(self) -> None:
        """Close the TCP connection at once (a reset, with unread data)."""
        self._stream.socket.close()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _sample(text: bytes, name: str) -> int:
    """The value of the sample ``name`` in Prometheus text (0 if absent)."""
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[-1]))
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def trio_tasks() -> int:
    count = 0
    root = trio.lowlevel.current_root_task()
    stack = [root] if root is not None else []
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def run_soak(
    *,
    seconds: float,
    meetings: int = 4,
    peers: int = 12,
    warmup: float = 0.3,
    max_rss_growth: float = MAX_RSS_GROWTH,
    seed: int = 0,
    log: logging.Logger | None = None,
) -> SoakReport:
    """Churn for ``seconds`` and check what is left (see the module docstring)."""
    from trio_sfu.client.peer import MediaPeer, open_peer
    from trio_sfu.client.signaling import SignalingClosed, SignalingError
    from trio_sfu.client.synthetic import audio_rtp_parameters, vp8_simulcast_rtp_parameters
    from trio_sfu.config import ServerConfig
    from trio_sfu.engine.worker import WorkerSettings, open_worker
    from trio_sfu.server import serve_sfu

    log = log or logging.getLogger(__name__)
    rng = random.Random(seed)
    report = SoakReport(max_rss_growth=max_rss_growth)
    settings = WorkerSettings(
        ice_consent_timeout=2.0,
        ice_close_timeout=3.0,
        transport_connect_timeout=3.0,
        rtcp_interval=0.5,
    )
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        dev=True,
        transport_connect_timeout=3.0,
        peer_idle_timeout=4.0,
        cleanup_timeout=2.0,
        shutdown_timeout=5.0,
    )
    started = time.monotonic()
    async with open_worker(settings) as worker, trio.open_nursery() as server_nursery:
        server = await server_nursery.start(serve_sfu, config, worker)
        url = server.ws_url
        await trio.sleep(0.2)
        gc.collect()
        report.fds_before, report.tasks_before = open_fds(), trio_tasks()
        start = trio.current_time()
        stop_at = start + seconds
        warm_at = start + max(seconds * warmup, 5.0)
        window = max(seconds * 0.1, 3.0)
        samples: list[tuple[float, int]] = []
        live = 0

        async def life(number: int) -> None:
            nonlocal live
            meeting = f"soak-{rng.randrange(meetings)}"
            mode = rng.choices(MODES, MODE_WEIGHTS)[0]
            length = rng.uniform(2.0, 10.0)
            live += 1
            report.max_concurrent = max(report.max_concurrent, live)
            try:
                if mode.startswith("frozen"):
                    await _live_frozen(meeting, number, mode, length)
                else:
                    async with open_peer(url, meeting, display_name=f"p{number}") as peer:
                        report.joins += 1
                        await _live(peer, mode, length)
            except Exception as exc:
                for leaf in _leaves(exc):
                    expected = (SignalingClosed, SignalingError, OSError, trio.BrokenResourceError)
                    if not isinstance(leaf, expected):
                        raise
                    report.errors.append(f"life {number} ({mode}): {leaf!r}")
            finally:
                live -= 1
            report.ended[mode] += 1

        async def _live(peer: MediaPeer, mode: str, length: float) -> None:
            signaling = peer.signaling
            if mode == "unconnected":
                await signaling.create_transport("send")
                with trio.fail_after(
                    config.transport_connect_timeout + config.peer_idle_timeout + 5
                ):
                    note = await signaling.next_notification("rtc:transportClosed")
                    if note.data.get("reason") != "connect_timeout":
                        report.errors.append(f"unconnected: {note.data}")
                    closed = await signaling.wait_closed()
                if closed.code != 4003:
                    report.errors.append(f"unconnected peer closed with {closed.code}")
                return
            sources = []
            # Consent checks well within the server's consent timeout.
            await peer.open_transport("recv", consent_interval=0.5)
            if rng.random() < 0.6:
                await peer.open_transport("send", consent_interval=0.5)
                _, audio = await peer.publish(
                    "audio", audio_rtp_parameters(ssrc=rng.randrange(1, 2**32))
                )
                _, video = await peer.publish("video", vp8_simulcast_rtp_parameters())
                sources = [audio, video]
                report.producers += 2
            consumed: set[str] = set()
            video_consumers: list[str] = []

            async def consume(producer_id: str) -> None:
                if producer_id in consumed:
                    return
                consumed.add(producer_id)
                try:
                    consumer = await peer.consume(producer_id)
                except SignalingError as exc:
                    if exc.code not in ("not_found", "invalid_state"):  # it closed meanwhile
                        raise
                    return
                report.consumers += 1
                if peer.recv_transport is not None:  # count, do not queue, what arrives
                    peer.recv_transport.on_rtp = _count_received
                if consumer.kind == "video":
                    video_consumers.append(consumer.consumer_id)

            for other in peer.joined.get("peers", []):
                for producer in other.get("producers", []):
                    await consume(producer["producerId"])
            end = trio.current_time() + length
            frame = 0
            while trio.current_time() < end:
                now = trio.current_time()
                if sources and peer.send_transport is not None:
                    audio, video = sources
                    report.packets_sent += peer.send_transport.send_rtp(
                        audio.streams[0].opus_frame(now=now)
                    )
                    if frame % 3 == 0:
                        for layer, stream in enumerate(video.streams):
                            for packet in stream.vp8_frame(
                                keyframe=frame % 60 == 0, size=200 * (layer + 1), now=now
                            ):
                                report.packets_sent += peer.send_transport.send_rtp(packet)
                frame += 1
                with trio.move_on_after(0.04):
                    note = await signaling.next_notification()
                    if note.type == "rtc:newProducer":
                        await consume(note.data["producerId"])
                if video_consumers and rng.random() < 0.02:
                    consumer_id = rng.choice(video_consumers)
                    try:
                        if rng.random() < 0.8:
                            await signaling.set_preferred_layers(
                                consumer_id, rng.randrange(3), rng.randrange(3)
                            )
                            report.layer_switches += 1
                        else:
                            await signaling.pause_consumer(consumer_id)
                            await signaling.resume_consumer(consumer_id)
                    except SignalingError as exc:
                        if exc.code != "not_found":  # closed with its producer
                            raise
                        video_consumers.remove(consumer_id)
            if mode == "leave":
                await signaling.leave()
            elif mode == "drop":
                await signaling.abort()
            else:  # silent: no media, no consent checks; the server must notice
                for transport in (peer.send_transport, peer.recv_transport):
                    if transport is not None:
                        transport.consent_refresh = False
                with trio.fail_after(settings.ice_close_timeout + 10):
                    closed = await signaling.wait_closed()
                if closed.code not in (4002, 4003):
                    report.errors.append(f"silent peer closed with {closed.code}")

        async def _live_frozen(meeting: str, number: int, mode: str, length: float) -> None:
            client = await FrozenClient.connect(config.host, server.port)
            try:
                joined = await client.request(
                    "rtc:join", {"meetingId": meeting, "displayName": f"p{number}"}
                )
                if joined["type"] != "rtc:joined":
                    report.errors.append(f"frozen join: {joined}")
                    return
                report.joins += 1
                created = await client.request(
                    "rtc:createTransport", {"meetingId": meeting, "direction": "recv"}
                )
                if created["type"] != "rtc:transportCreated":
                    report.errors.append(f"frozen createTransport: {created}")
                    return
                client.freeze()
                if mode == "frozen":
                    request = {"meetingId": meeting}
                    taken = True
                    for _ in range(FROZEN_BURST):
                        with trio.move_on_after(1.0) as blocked:
                            await client.send_frozen("rtc:getRouterRtpCapabilities", request)
                        taken = not blocked.cancelled_caught
                        if not taken:  # the server reads it no more
                            break
                    await trio.sleep(length)
                    if taken:
                        with trio.move_on_after(1.0):
                            await client.send_frozen("rtc:leave", request)
                else:  # left until the server has reaped the transport, then the peer
                    await trio.sleep(config.transport_connect_timeout + config.peer_idle_timeout)
                    await trio.sleep(2.0)
            finally:
                client.drop()

        def _count_received(packet: bytes) -> None:
            report.packets_received += 1

        async def sample_rss() -> None:
            while trio.current_time() < stop_at:
                samples.append((trio.current_time(), rss_kib()))
                await trio.sleep(1.0)

        async with trio.open_nursery() as lives:
            lives.start_soon(sample_rss)
            number = 0
            while trio.current_time() < stop_at:
                if live < peers:
                    number += 1
                    report.lives += 1
                    lives.start_soon(life, number)
                await trio.sleep(rng.uniform(0.05, 0.4))
            # no new lives; the running ones end by themselves (bounded by their timeouts)
        await server.app.rooms.wait_all_closed()
        await trio.sleep(0.5)  # the last closes' follow-ups (timers, egress tasks)
        # Connections of frozen peers end once hypercorn notices their reset.
        for _ in range(int(SETTLE_TIMEOUT / 0.1)):
            if (open_fds(), trio_tasks()) == (report.fds_before, report.tasks_before):
                break
            await trio.sleep(0.1)
        gc.collect()
        report.fds_after, report.tasks_after = open_fds(), trio_tasks()
        report.too_slow = _sample(
            server.app.metrics.render(), "trio_sfu_slow_connections_closed_total"
        )
        counts = attrs.asdict(server.app.rooms.counts())
        counts["engine_routers"] = len(worker.dump()["routers"])
        report.left = {k: v for k, v in counts.items()}
        warm = [kib for at, kib in samples if warm_at - window <= at <= warm_at]
        end = [kib for at, kib in samples if at >= stop_at - window]
        report.rss_warm_kib = max(warm, default=0)
        report.rss_end_kib = max(end, default=0)
        report.rss_after_kib = rss_kib()
        report.rss_samples = [(round(at - start, 1), kib) for at, kib in samples]
        server.shutdown()
    report.seconds = time.monotonic() - started
    log.info("soak: %s", json.dumps(report.summary()))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="length of the churn [1]")
    parser.add_argument("--meetings", type=int, default=4, help="meetings [4]")
    parser.add_argument("--peers", type=int, default=12, help="peers at once at most [12]")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument(
        "--warmup", type=float, default=0.3, help="share of the run that is warm-up [0.3]"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    report = trio.run(
        lambda: run_soak(
            seconds=args.minutes * 60,
            meetings=args.meetings,
            peers=args.peers,
            warmup=args.warmup,
            seed=args.seed,
        )
    )
    print(json.dumps(report.summary(), indent=2))
    problems = report.problems()
    print("soak: " + ("OK" if not problems else "FAILED: " + "; ".join(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
