"""Pipe transports and pipe_to_router: a producer of router A consumed on router B.

Real sockets throughout: the publisher and the subscriber are trio clients (UDP, ICE,
DTLS, SRTP) on 127.0.0.1, the pipe between the routers is plain RTP over a loopback UDP
pair. Two layouts: both routers in one Worker (``Worker.pipe_to_router``), and each router
in a Worker of its own, piped by a :class:`RouterPipes` that the test drives as the pool of
worker processes would (events in, ``router_closed`` when a router goes).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import attrs
import pytest
import trio
import trio.testing

from tests.test_engine_media import connected_client, device_caps, vp8_simulcast
from trio_sfu.client.synthetic import SyntheticPublisher, audio_rtp_parameters
from trio_sfu.client.transport import ClientTransport
from trio_sfu.engine.api import (
    ConsumerClosed,
    ConsumerLayersChanged,
    ConsumerProducerPaused,
    EngineEvent,
)
from trio_sfu.engine.pipe import RouterPipes
from trio_sfu.engine.pipe_transport import PipeTransport
from trio_sfu.engine.worker import Worker, WorkerSettings, open_worker
from trio_sfu.errors import InvalidStateError, NotFoundError, UnsupportedError
from trio_sfu.ortc.types import DtlsParameters, RtpParameters
from trio_sfu.rtcp import Fir, Pli, SenderReport, build_rtcp, parse_rtcp_untrusted, unix_to_ntp
from trio_sfu.rtp import vp8
from trio_sfu.rtp.packet import RtpPacket

T = TypeVar("T")

LAYOUTS = ["one_worker", "two_workers"]
#: Seconds between two frames of the synthetic publisher (every stream, audio too).
FRAME_INTERVAL = 0.02


@attrs.define(eq=False)
class Log(Generic[T]):
    """Items as they come, and a wait for a condition on them (no polling)."""

    items: list[T] = attrs.field(factory=list)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def append(self, item: T) -> None:
        self.items.append(item)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[list[T]], bool]) -> None:
        while True:
            changed = self._changed
            if predicate(self.items):
                return
            await changed.wait()


@attrs.define(eq=False)
class Setup:
    """Router A on ``engine_a``, router B on ``engine_b`` (the same Worker or two), and the
    pipes between them: the Worker's own, or (two workers) one the test drives."""

    engine_a: Worker
    engine_b: Worker
    pipes: RouterPipes
    events_a: Log[EngineEvent] = attrs.field(factory=Log)
    events_b: Log[EngineEvent] = attrs.field(factory=Log)
    owner: dict[str, Worker] = attrs.field(factory=dict)
    router_a: str = ""
    router_b: str = ""

    @property
    def one_worker(self) -> bool:
        return self.engine_a is self.engine_b

    async def create_router(self, engine: Worker, events: Log[EngineEvent]) -> str:
        def on_event(event: EngineEvent) -> None:
            if not self.one_worker:  # the Worker feeds its own pipes
                self.pipes.on_event(event)
            events.append(event)

        router_id = await engine.create_router(on_event)
        self.owner[router_id] = engine
        return router_id

    async def pipe(self, producer_id: str, to_router: str | None = None) -> None:
        to_router = to_router or self.router_b
        if self.one_worker:
            await self.engine_a.pipe_to_router(
                producer_id, from_router=self.router_a, to_router=to_router
            )
        else:
            await self.pipes.pipe_to_router(
                producer_id, from_router=self.router_a, to_router=to_router
            )

    async def close_router(self, router_id: str) -> None:
        await self.owner[router_id].close_router(router_id)
        if not self.one_worker:  # as the pool would
            self.pipes.router_closed(router_id)

    async def close_transport(self, engine: Worker, transport_id: str) -> None:
        await engine.close_transport(transport_id)
        if not self.one_worker:  # as the pool would
            self.pipes.transport_closed(transport_id)

    def pipe_transport(self, engine: Worker, router_id: str) -> str:
        router = router_dump(engine, router_id)
        (transport,) = [t for t in router["transports"] if t.get("type") == "pipe"]
        return str(transport["id"])

    def assert_pipes_empty(self) -> None:
        assert self.pipes.links == {}
        assert self.pipes.pipes == {}
        assert self.pipes._link_of_transport == {}
        assert self.pipes._pipe_of_consumer == {}


@asynccontextmanager
async def two_routers(layout: str) -> AsyncIterator[Setup]:
    if layout == "one_worker":
        async with open_worker(WorkerSettings(rtcp_interval=0.05)) as worker:
            assert worker.pipes is not None
            setup = Setup(worker, worker, worker.pipes)
            setup.router_a = await setup.create_router(worker, setup.events_a)
            setup.router_b = await setup.create_router(worker, setup.events_b)
            yield setup
        return
    async with (
        open_worker(WorkerSettings(rtcp_interval=0.05, id_prefix="one-")) as one,
        open_worker(WorkerSettings(rtcp_interval=0.05, id_prefix="two-")) as two,
        trio.open_nursery() as nursery,
    ):
        owner: dict[str, Worker] = {}
        setup = Setup(one, two, RouterPipes(lambda router_id: owner[router_id], nursery))
        setup.owner = owner
        setup.router_a = await setup.create_router(one, setup.events_a)
        setup.router_b = await setup.create_router(two, setup.events_b)
        assert setup.router_a.startswith("one-") and setup.router_b.startswith("two-")
        yield setup


@attrs.define(eq=False)
class Publisher:
    """Simulcast VP8 (three layers, each packet tagged with its layer) and Opus, one frame
    every 20 ms, each stream's RTP time following one capture clock; Sender Reports every
    five frames; a keyframe on a stream right after a PLI/FIR for it."""

    client: ClientTransport
    video_params: RtpParameters
    audio_params: RtpParameters
    video: SyntheticPublisher = attrs.field(init=False)
    audio: SyntheticPublisher = attrs.field(init=False)
    #: Media SSRCs named by the PLIs and FIRs that reached the publisher.
    keyframe_requests: Log[int] = attrs.field(factory=Log)
    t0: float = 0.0
    #: Cancel to stop it.
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _due: set[int] = attrs.field(factory=lambda: {0, 1, 2})

    def __attrs_post_init__(self) -> None:
        self.video = SyntheticPublisher(self.video_params)
        self.audio = SyntheticPublisher(self.audio_params)

    async def run(self) -> None:
        with self.scope:
            await self._run()

    async def _run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_rtcp)
            self.t0 = trio.current_time()
            frame = 0
            while True:
                now = trio.current_time()
                capture = now - self.t0
                for index, stream in enumerate(self.video.streams):
                    keyframe = index in self._due
                    for packet in stream.vp8_frame(
                        keyframe=keyframe, size=300, capture_time=capture, tag=b"LAYER%d" % index
                    ):
                        self.client.send_rtp(packet)
                self._due.clear()
                audio = self.audio.streams[0]
                self.client.send_rtp(audio.opus_frame(capture_time=capture))
                if frame % 5 == 0:
                    ntp = unix_to_ntp(1.7e9 + now)
                    reports = [s.sender_report(ntp, capture) for s in self.video.streams]
                    reports.append(audio.sender_report(ntp, capture))
                    self.client.send_rtcp(build_rtcp(reports))
                frame += 1
                await trio.sleep(FRAME_INTERVAL)

    async def _read_rtcp(self) -> None:
        ssrcs = [s.ssrc for s in self.video.streams]
        while True:
            for packet in parse_rtcp_untrusted(await self.client.receive_rtcp()):
                named = []
                if isinstance(packet, Pli):
                    named = [packet.media_ssrc]
                elif isinstance(packet, Fir):
                    named = [ssrc for ssrc, _ in packet.entries]
                for ssrc in named:
                    self.keyframe_requests.append(ssrc)
                    if ssrc in ssrcs:
                        self._due.add(ssrcs.index(ssrc))


@attrs.define(eq=False)
class Subscriber:
    """Every RTP packet and Sender Report the subscriber's client receives."""

    client: ClientTransport
    rtp: Log[RtpPacket] = attrs.field(factory=Log)
    sender_reports: Log[SenderReport] = attrs.field(factory=Log)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    async def run(self) -> None:
        with self.scope:
            await self._run()

    async def _run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_rtcp)
            while True:
                self.rtp.append(RtpPacket.parse_untrusted(await self.client.receive_rtp()))

    async def _read_rtcp(self) -> None:
        while True:
            for packet in parse_rtcp_untrusted(await self.client.receive_rtcp()):
                if isinstance(packet, SenderReport):
                    self.sender_reports.append(packet)


def router_dump(engine: Worker, router_id: str) -> Any:
    """The dump of one router of ``engine``."""
    (found,) = [r for r in engine.dump()["routers"] if r["id"] == router_id]
    return found


def tagged(packets: list[RtpPacket], ssrc: int, layer: int) -> list[RtpPacket]:
    tag = b"LAYER%d" % layer
    return [p for p in packets if p.ssrc == ssrc and tag in p.payload]


def of_event(kind: type, consumer_id: str, **fields: object) -> Callable[[list[EngineEvent]], bool]:
    """A condition: an event of ``kind`` about ``consumer_id``, with these fields."""

    def found(events: list[EngineEvent]) -> bool:
        return any(
            isinstance(e, kind)
            and getattr(e, "consumer_id", None) == consumer_id
            and all(getattr(e, name) == value for name, value in fields.items())
            for e in events
        )

    return found


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_piped_producers_are_consumed_on_the_other_router(layout: str) -> None:
    with trio.fail_after(30):
        async with two_routers(layout) as s:
            async with (
                connected_client(s.engine_a, s.router_a) as (pub_id, pub),
                connected_client(s.engine_b, s.router_b) as (sub_id, sub),
                trio.open_nursery() as nursery,
            ):
                video_params = vp8_simulcast()
                audio_params = audio_rtp_parameters(ssrc=1111, mid="0")
                video_id = await s.engine_a.produce(pub_id, "video", video_params)
                audio_id = await s.engine_a.produce(pub_id, "audio", audio_params)
                publisher = Publisher(pub, video_params, audio_params)
                subscriber = Subscriber(sub)
                nursery.start_soon(publisher.run)
                nursery.start_soon(subscriber.run)

                await s.pipe(video_id)
                await s.pipe(audio_id)
                caps = device_caps(bandwidth_feedback=False)
                video = await s.engine_b.consume(sub_id, video_id, caps, paused=False)
                audio = await s.engine_b.consume(sub_id, audio_id, caps, paused=False)
                assert video.type == "simulcast" and audio.type == "simple"
                v_ssrc = video.rtp_parameters.encodings[0].ssrc
                a_ssrc = audio.rtp_parameters.encodings[0].ssrc
                v_pt = video.rtp_parameters.codecs[0].payload_type
                a_pt = audio.rtp_parameters.codecs[0].payload_type
                assert v_ssrc is not None and a_ssrc is not None

                # The top layer (r2) and audio arrive, under the consumers' SSRCs and PTs.
                await subscriber.rtp.wait_for(
                    lambda ps: (
                        len(tagged(ps, v_ssrc, 2)) >= 10 and sum(p.ssrc == a_ssrc for p in ps) >= 10
                    )
                )
                got = subscriber.rtp.items
                assert {p.ssrc for p in got} <= {v_ssrc, a_ssrc}
                got_video = [p for p in got if p.ssrc == v_ssrc]
                assert all(p.payload_type == v_pt for p in got_video)
                assert all(p.payload_type == a_pt for p in got if p.ssrc == a_ssrc)
                assert vp8.is_keyframe(got_video[0].payload)
                seqs = [p.sequence_number for p in got_video]
                assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]

                # Layer selection happens on B: preferred layer 0 -> r0 from its keyframe.
                mark = len(subscriber.rtp.items)
                layers = await s.engine_b.set_consumer_preferred_layers(video.consumer_id, 0, None)
                assert layers[0] == 0
                await subscriber.rtp.wait_for(lambda ps: len(tagged(ps[mark:], v_ssrc, 0)) >= 10)
                after = [p for p in subscriber.rtp.items[mark:] if p.ssrc == v_ssrc]
                first_r0 = next(i for i, p in enumerate(after) if b"LAYER0" in p.payload)
                assert vp8.is_keyframe(after[first_r0].payload)
                assert not tagged(after[first_r0:], v_ssrc, 2)
                assert of_event(ConsumerLayersChanged, video.consumer_id, spatial_layer=0)(
                    s.events_b.items
                )

                # A PLI from B's subscriber reaches the publisher, for the layer forwarded.
                r0_ssrc = publisher.video.streams[0].ssrc
                mark = len(publisher.keyframe_requests.items)
                sub.send_rtcp(build_rtcp([Pli(sender_ssrc=1, media_ssrc=v_ssrc)]))
                await publisher.keyframe_requests.wait_for(lambda ssrcs: r0_ssrc in ssrcs[mark:])

                # The publisher's Sender Reports cross the pipe: B's copy of each stream
                # maps its RTP time to the publisher's capture clock.
                await subscriber.sender_reports.wait_for(
                    lambda reports: sum(r.ssrc == v_ssrc for r in reports) >= 3
                )
                copy = s.engine_b._routers[s.router_b].producers[video_id]
                checked = 0
                for stream, source in zip(copy.streams, publisher.video.streams, strict=True):
                    if stream.packets == 0:
                        continue
                    checked += 1
                    assert stream.last_sr_ntp and stream.last_sr_arrival >= 0
                    expected = source.ts_base + (stream.last_sr_arrival - publisher.t0) * 90000
                    error = (stream.last_sr_rtp - round(expected) + 0x80000000) % (1 << 32)
                    assert abs(error - 0x80000000) < 0.05 * 90000
                assert checked == 3  # every layer is piped, whichever B forwards

                # Pause and resume of the original reach B's consumer.
                await s.engine_a.pause_producer(video_id)
                await s.events_b.wait_for(
                    of_event(ConsumerProducerPaused, video.consumer_id, producer_paused=True)
                )
                await s.engine_a.resume_producer(video_id)
                await s.events_b.wait_for(
                    of_event(ConsumerProducerPaused, video.consumer_id, producer_paused=False)
                )
                mark = len(subscriber.rtp.items)
                await subscriber.rtp.wait_for(lambda ps: len(tagged(ps[mark:], v_ssrc, 0)) >= 5)
                resumed = [p for p in subscriber.rtp.items[mark:] if p.ssrc == v_ssrc]
                assert vp8.is_keyframe(resumed[0].payload)
                seqs = [p.sequence_number for p in subscriber.rtp.items if p.ssrc == v_ssrc]
                assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]

                # Closing the original closes the pipe producer and B's consumer.
                await s.engine_a.close_producer(video_id)
                await s.events_b.wait_for(
                    of_event(ConsumerClosed, video.consumer_id, reason="producer_closed")
                )
                assert (video_id, s.router_b) not in s.pipes.pipes
                dump_b = router_dump(s.engine_b, s.router_b)
                assert video_id not in dump_b["producerIds"]
                assert audio_id in dump_b["producerIds"]

                # Router A closes: B's consumers of what was piped from it close too.
                publisher.scope.cancel()
                subscriber.scope.cancel()
                await s.close_router(s.router_a)
                await s.events_b.wait_for(
                    of_event(ConsumerClosed, audio.consumer_id, reason="producer_closed")
                )
                s.assert_pipes_empty()
                dump_b = router_dump(s.engine_b, s.router_b)
                assert dump_b["transportIds"] == [sub_id]
                assert dump_b["producerIds"] == [] and dump_b["consumerIds"] == []
            await s.engine_b.close_transport(sub_id)
            await s.close_router(s.router_b)
            s.assert_pipes_empty()
            assert s.engine_a.dump() == {"routers": []}
            assert s.engine_b.dump() == {"routers": []}
            if layout == "one_worker":
                assert s.engine_a._index == {} and s.engine_a._copies == {}


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_pipe_to_router_pipes_each_producer_once(layout: str) -> None:
    with trio.fail_after(20):
        async with two_routers(layout) as s:
            pub_id = (await s.engine_a.create_webrtc_transport(s.router_a)).transport_id
            video_id = await s.engine_a.produce(pub_id, "video", vp8_simulcast())
            audio_id = await s.engine_a.produce(
                pub_id, "audio", audio_rtp_parameters(ssrc=1111, mid="0")
            )
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(s.pipe, video_id)
            await s.pipe(video_id)
            await s.pipe(audio_id)
            assert len(s.pipes.links) == 1 and len(s.pipes.pipes) == 2

            dump_a = router_dump(s.engine_a, s.router_a)
            dump_b = router_dump(s.engine_b, s.router_b)
            (pipe_a,) = [t for t in dump_a["transports"] if t.get("type") == "pipe"]
            (pipe_b,) = [t for t in dump_b["transports"] if t.get("type") == "pipe"]
            assert len(pipe_a["consumerIds"]) == 2 and pipe_a["producerIds"] == []
            assert sorted(pipe_b["producerIds"]) == sorted([video_id, audio_id])
            assert dump_b["producerIds"] == sorted([video_id, audio_id])
            assert pipe_a["tuple"]["remote"] == ["127.0.0.1", pipe_b["tuple"]["localPort"]]
            assert pipe_b["tuple"]["remote"] == ["127.0.0.1", pipe_a["tuple"]["localPort"]]

            # Stats of the pipe entities.
            (transport_stats,) = await s.engine_a.get_stats(pipe_a["id"])
            assert transport_stats["type"] == "pipe"
            (consumer_stats,) = await s.engine_a.get_stats(pipe_a["consumerIds"][0])
            assert consumer_stats["pipe"] is True
            video_stats = await s.engine_b.get_stats(video_id)
            assert len(video_stats) == 3 and all(st["type"] == "inbound-rtp" for st in video_stats)

            # Refusals; a failed pipe leaves nothing behind.
            with pytest.raises(NotFoundError):
                await s.pipe("no-such-producer")
            with pytest.raises(InvalidStateError):
                await s.pipes.pipe_to_router(video_id, from_router=s.router_a, to_router=s.router_a)
            assert len(s.pipes.links) == 1 and len(s.pipes.pipes) == 2

            # Router B closes: A's end of the pipe closes with its pipe consumers.
            await s.close_router(s.router_b)
            for consumer_id in pipe_a["consumerIds"]:
                await s.events_a.wait_for(
                    of_event(ConsumerClosed, consumer_id, reason="transport_closed")
                )
            s.assert_pipes_empty()
            assert router_dump(s.engine_a, s.router_a)["transportIds"] == [pub_id]
            # The producers are still there, and can be piped to another router; closing
            # the original closes the copy there.
            events_c: Log[EngineEvent] = Log()
            router_c = await s.create_router(s.engine_b, events_c)
            await s.pipe(audio_id, to_router=router_c)
            assert len(s.pipes.links) == 1 and len(s.pipes.pipes) == 1
            pub_c = (await s.engine_b.create_webrtc_transport(router_c)).transport_id
            consumer = await s.engine_b.consume(pub_c, audio_id, s.engine_b.rtp_capabilities)
            await s.engine_a.close_producer(audio_id)
            await events_c.wait_for(
                of_event(ConsumerClosed, consumer.consumer_id, reason="producer_closed")
            )
            assert len(s.pipes.pipes) == 0
            assert router_dump(s.engine_b, router_c)["producerIds"] == []
            await s.close_router(router_c)
            await s.close_router(s.router_a)
            s.assert_pipes_empty()
            assert s.engine_a.dump() == {"routers": []}
            assert s.engine_b.dump() == {"routers": []}


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_closed_pipe_transport_takes_its_link_along(layout: str) -> None:
    with trio.fail_after(20):
        async with two_routers(layout) as s:
            pub_id = (await s.engine_a.create_webrtc_transport(s.router_a)).transport_id
            sub_id = (await s.engine_b.create_webrtc_transport(s.router_b)).transport_id
            audio_id = await s.engine_a.produce(
                pub_id, "audio", audio_rtp_parameters(ssrc=1111, mid="0")
            )
            caps = s.engine_b.rtp_capabilities

            # A's end closes by itself (as on a bug in it): B's end follows.
            await s.pipe(audio_id)
            consumer = await s.engine_b.consume(sub_id, audio_id, caps)
            end_a = s.pipe_transport(s.engine_a, s.router_a)
            s.engine_a._routers[s.router_a].transports[end_a].transport.close("internal_error")
            await s.events_b.wait_for(
                of_event(ConsumerClosed, consumer.consumer_id, reason="producer_closed")
            )
            s.assert_pipes_empty()

            # Piped again over a new link; then B's end is closed on request: A's follows.
            await s.pipe(audio_id)
            consumer = await s.engine_b.consume(sub_id, audio_id, caps)
            (pipe_consumer,) = s.pipes._pipe_of_consumer
            end_b = s.pipe_transport(s.engine_b, s.router_b)
            await s.close_transport(s.engine_b, end_b)
            assert of_event(ConsumerClosed, consumer.consumer_id, reason="producer_closed")(
                s.events_b.items
            )
            await s.events_a.wait_for(
                of_event(ConsumerClosed, pipe_consumer, reason="transport_closed")
            )
            s.assert_pipes_empty()
            assert router_dump(s.engine_a, s.router_a)["transportIds"] == [pub_id]
            assert router_dump(s.engine_b, s.router_b)["transportIds"] == [sub_id]
            await s.close_router(s.router_a)
            await s.close_router(s.router_b)
            assert s.engine_a.dump() == {"routers": []}
            assert s.engine_b.dump() == {"routers": []}


async def test_pipe_primitives() -> None:
    """The engine's pipe primitives one by one, and what they refuse."""
    with trio.fail_after(20):
        async with open_worker() as worker:
            router_a = await worker.create_router(lambda event: None)
            router_b = await worker.create_router(lambda event: None)
            pub_id = (await worker.create_webrtc_transport(router_a)).transport_id
            producer_id = await worker.produce(pub_id, "video", vp8_simulcast())
            a = await worker.create_pipe_transport(router_a)
            b = await worker.create_pipe_transport(router_b)
            assert a.ip == "127.0.0.1" and 40000 <= a.port <= 49999 and a.port != b.port
            await worker.connect_pipe_transport(a.transport_id, b.ip, b.port)
            await worker.connect_pipe_transport(b.transport_id, a.ip, a.port)
            with pytest.raises(InvalidStateError):
                await worker.connect_pipe_transport(a.transport_id, b.ip, b.port)
            with pytest.raises(UnsupportedError):
                await worker.connect_pipe_transport(pub_id, b.ip, b.port)
            with pytest.raises(UnsupportedError):
                await worker.connect_transport(a.transport_id, DtlsParameters(fingerprints=[]))
            with pytest.raises(UnsupportedError):
                await worker.produce(a.transport_id, "video", vp8_simulcast())
            with pytest.raises(UnsupportedError):
                await worker.consume(a.transport_id, producer_id, worker.rtp_capabilities)
            with pytest.raises(UnsupportedError):
                await worker.pipe_consume(pub_id, producer_id)
            with pytest.raises(NotFoundError):
                await worker.pipe_consume(a.transport_id, "nope")

            info = await worker.pipe_consume(a.transport_id, producer_id)
            assert info.producer_id == producer_id and info.kind == "video"
            assert not info.producer_paused
            params = info.rtp_parameters
            # Every stream, with its consumable SSRC; no RTX, no MID, no BWE extensions.
            producer = worker._routers[router_a].producers[producer_id]
            assert [e.ssrc for e in params.encodings] == [s.mapped_ssrc for s in producer.streams]
            assert all(e.rtx is None and e.rid is None for e in params.encodings)
            assert [c.mime_type for c in params.codecs] == ["video/VP8"]
            assert {(fb.type, fb.parameter) for fb in params.codecs[0].rtcp_feedback} == {
                ("nack", "pli"),
                ("ccm", "fir"),
            }
            assert params.mid is None
            with pytest.raises(InvalidStateError):
                await worker.pipe_consume(a.transport_id, producer_id)

            await worker.pipe_produce(b.transport_id, producer_id, "video", params)
            with pytest.raises(InvalidStateError):
                await worker.pipe_produce(b.transport_id, producer_id, "video", params)
            # The copy shares the id: producer calls reach both routers of this worker.
            await worker.pause_producer(producer_id)
            copy = worker._routers[router_b].producers[producer_id]
            assert producer.paused and copy.paused
            assert copy.streams[0].ssrc == params.encodings[0].ssrc
            await worker.resume_producer(producer_id)
            assert not producer.paused and not copy.paused
            (stats,) = await worker.get_stats(a.transport_id)
            assert stats["type"] == "pipe" and stats["remote_port"] == b.port

            # Closing A's pipe transport closes its pipe consumer; the index follows.
            await worker.close_transport(a.transport_id)
            assert worker._routers[router_a].consumers == {}
            assert set(worker._index) == {pub_id, producer_id, b.transport_id}
            assert set(worker._copies) == {producer_id}
            await worker.close_transport(b.transport_id)
            assert set(worker._copies) == set()
            assert producer_id in worker._routers[router_a].producers
            await worker.close_producer(producer_id)
            assert set(worker._index) == {pub_id}


async def test_pipe_transport_takes_datagrams_from_its_peer_only() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            transport = PipeTransport(
                transport_id="p", listen_ip="127.0.0.1", port_range=(40000, 49999)
            )
            rtp: list[bytes] = []
            rtcp: list[bytes] = []
            closed: list[str] = []
            transport.on_rtp = lambda packet, arrival: rtp.append(packet)
            transport.on_rtcp = lambda packet, arrival: rtcp.append(packet)
            transport.on_closed = closed.append
            await nursery.start(transport.run)
            assert not transport.send_rtp_nowait(b"\x80" * 12)  # not connected yet
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger,
            ):
                peer.bind(("127.0.0.1", 0))
                stranger.bind(("127.0.0.1", 0))
                transport.connect("127.0.0.1", peer.getsockname()[1])
                packet = bytes([0x80, 101]) + bytes(10)
                report = bytes([0x80, 201, 0, 1, 0, 0, 0, 1])
                stranger.sendto(packet, ("127.0.0.1", transport.port))
                peer.sendto(b"\x00\x01junk", ("127.0.0.1", transport.port))
                peer.sendto(report, ("127.0.0.1", transport.port))
                peer.sendto(packet, ("127.0.0.1", transport.port))
                await trio.testing.wait_all_tasks_blocked()
                assert rtp == [packet] and rtcp == [report]
                stats = transport.stats()
                assert stats["dropped"] == {"not_connected": 2, "unknown": 1, "send": 0}
                assert transport.send_rtp_nowait(packet)
                peer.settimeout(2)
                assert peer.recv(100) == packet
            transport.close()
            transport.close()
            assert closed == ["closed"]
