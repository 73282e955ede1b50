"""Worker processes: meetings spread over them, a dead one costs only its meetings.

A real server on 127.0.0.1 driving a :class:`~trio_sfu.engine.pool.WorkerPool` of two
worker processes; Python peers with real UDP, DTLS and SRTP. One worker is killed with
SIGKILL mid-call: its meeting's peers hear ``rtc:roomClosed`` (``worker_died``) within a
second and may rejoin on the same socket, while the other worker's call goes on without a
gap; the slot gets a new process, and nothing of the dead one stays in the books, the
admin API or the metrics. (The autouse fixtures check that no socket and no child process
outlives a test.)
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from tests.signaling_harness import ADMIN_TOKEN, http, make_config, running_server, token
from trio_sfu.client.peer import MediaPeer, RemoteConsumer, open_peer
from trio_sfu.client.signaling import SignalingError
from trio_sfu.client.synthetic import (
    SyntheticPublisher,
    audio_rtp_parameters,
    vp8_simulcast_rtp_parameters,
)
from trio_sfu.engine.pool import WORKER_DIED, PoolSettings, WorkerPool, open_worker_pool
from trio_sfu.engine.worker import WorkerSettings
from trio_sfu.errors import NotFoundError
from trio_sfu.rtcp import Pli, build_rtcp, parse_rtcp_untrusted
from trio_sfu.rtp import vp8
from trio_sfu.rtp.packet import RtpPacket
from trio_sfu.server import SfuServer


@asynccontextmanager
async def pool_server(**pool_options: Any) -> AsyncIterator[tuple[WorkerPool, SfuServer]]:
    settings = PoolSettings(
        workers=2,
        worker=WorkerSettings(rtcp_interval=0.1),
        report_interval=0.2,
        restart_delay=0.3,
        **pool_options,
    )
    async with (
        open_worker_pool(settings) as pool,
        running_server(pool, make_config()) as server,
    ):
        yield pool, server


def join(server: SfuServer, meeting: str, user: str) -> Any:
    return open_peer(server.ws_url, meeting, token=token(meeting, user), display_name=user)


async def audio_call(
    stack: AsyncExitStack, server: SfuServer, meeting: str, names: tuple[str, str]
) -> tuple[MediaPeer, SyntheticPublisher, MediaPeer, RemoteConsumer]:
    """The first publishes Opus, the second consumes it."""
    publisher = await stack.enter_async_context(join(server, meeting, names[0]))
    subscriber = await stack.enter_async_context(join(server, meeting, names[1]))
    ssrc = 1000 + sum(map(ord, meeting))
    producer_id, source = await publisher.publish("audio", audio_rtp_parameters(ssrc=ssrc))
    consumer = await subscriber.consume(producer_id)
    return publisher, source, subscriber, consumer


async def send_audio(publisher: MediaPeer, source: SyntheticPublisher, count: int) -> None:
    assert publisher.send_transport is not None
    for _ in range(count):
        publisher.send_transport.send_rtp(source.streams[0].opus_frame(now=trio.current_time()))
        await trio.sleep(0.02)


async def receive_audio(subscriber: MediaPeer, consumer: RemoteConsumer, count: int) -> None:
    assert subscriber.recv_transport is not None
    got = 0
    while got < count:
        packet = RtpPacket.parse_untrusted(await subscriber.recv_transport.receive_rtp())
        assert packet.ssrc == consumer.ssrc
        got += 1


def worker_of(pool: WorkerPool, router_id: str) -> int:
    (index,) = [r["worker"] for r in pool.dump()["routers"] if r["id"] == router_id]
    return int(index)


def router_of(server: SfuServer, meeting: str) -> str:
    router_id = server.app.rooms.rooms[meeting].router_id
    assert router_id is not None
    return router_id


async def test_meetings_spread_and_a_dead_worker_costs_only_its_own() -> None:
    with trio.fail_after(40):
        async with pool_server() as (pool, server):
            async with AsyncExitStack() as stack:
                ann, ann_audio, bob, bob_consumer = await audio_call(
                    stack, server, "alpha", ("ann", "bob")
                )
                cat, cat_audio, dan, dan_consumer = await audio_call(
                    stack, server, "beta", ("cat", "dan")
                )
                # Two meetings, two workers; media flows in both (real DTLS/SRTP).
                alpha_worker = worker_of(pool, router_of(server, "alpha"))
                beta_worker = worker_of(pool, router_of(server, "beta"))
                assert {alpha_worker, beta_worker} == {0, 1}
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_audio, ann, ann_audio, 10)
                    nursery.start_soon(send_audio, cat, cat_audio, 10)
                    await receive_audio(bob, bob_consumer, 5)
                    await receive_audio(dan, dan_consumer, 5)
                answer = await http(server, "GET", "/v1/workers", bearer=ADMIN_TOKEN)
                workers = answer.json()["workers"]
                assert [w["meetings"] for w in workers] == [
                    ["alpha"] if alpha_worker == 0 else ["beta"],
                    ["alpha"] if alpha_worker == 1 else ["beta"],
                ]
                dead_pid = workers[alpha_worker]["pid"]
                dead_transport = bob.recv_transport_id
                assert dead_transport is not None
                live_pid = workers[beta_worker]["pid"]
                assert dead_pid != live_pid and all(w["alive"] for w in workers)

                # Cat keeps talking to Dan every 20 ms while Ann's worker is killed.
                arrivals: list[float] = []

                async def dan_listens() -> None:
                    assert dan.recv_transport is not None
                    while True:
                        await dan.recv_transport.receive_rtp()
                        arrivals.append(trio.current_time())

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_audio, cat, cat_audio, 100)
                    nursery.start_soon(dan_listens)
                    await trio.sleep(0.3)
                    killed_at = trio.current_time()
                    os.kill(dead_pid, signal.SIGKILL)
                    with trio.fail_after(1):
                        for peer in (ann, bob):
                            note = await peer.signaling.next_notification("rtc:roomClosed")
                            assert note.data == {"meetingId": "alpha", "reason": WORKER_DIED}
                    noticed = trio.current_time() - killed_at
                    await trio.sleep(1.0)
                    nursery.cancel_scope.cancel()
                assert noticed < 1.0
                # No gap on the other worker: packets every 20 ms all along.
                during = [t for t in arrivals if t > killed_at - 0.2]
                assert len(during) > 40
                assert max(b - a for a, b in itertools.pairwise(during)) < 0.2

                # Bob's socket stayed open: he joins again and is served by a live worker.
                rejoined = await bob.signaling.join("alpha", token=token("alpha", "bob"))
                assert rejoined["peers"] == []
                transport = await bob.signaling.create_transport("recv")
                ports = {c["port"] for c in transport["iceCandidates"]}
                live = {w["udpPort"] for w in pool.workers_info() if w["alive"]}
                assert ports <= live

                # The slot has a new process, and nothing of the dead one is left.
                with trio.fail_after(5):
                    while pool.workers_info()[alpha_worker]["pid"] in (None, dead_pid):  # noqa: ASYNC110
                        await trio.sleep(0.05)
                infos = pool.workers_info()
                assert infos[alpha_worker]["restarts"] == 1
                assert infos[alpha_worker]["generation"] == 2
                assert infos[beta_worker]["pid"] == live_pid
                answer = await http(server, "GET", "/v1/workers", bearer=ADMIN_TOKEN)
                assert dead_pid not in {w["pid"] for w in answer.json()["workers"]}
                dead_tag = f"w{alpha_worker}g1-"
                assert dead_tag not in str(pool.dump())
                rooms = (await http(server, "GET", "/v1/rooms", bearer=ADMIN_TOKEN)).json()["rooms"]
                assert dead_tag not in str(rooms)
                metrics = (await http(server, "GET", "/metrics")).body.decode()
                assert f'trio_sfu_worker_up{{worker="{alpha_worker}"}} 1.0' in metrics
                assert f'trio_sfu_worker_restarts_total{{worker="{alpha_worker}"}} 1.0' in metrics
                # An id of the dead worker's is not_found, at once.
                with pytest.raises(NotFoundError):
                    await pool.get_stats(dead_transport)
            await server.app.rooms.wait_all_closed()
            # Everyone left: the workers hold nothing.
            assert [dump["routers"] for dump in await pool.dump_workers()] == [[], []]


async def test_a_wedged_worker_answers_its_peers_with_an_error_and_is_replaced() -> None:
    """A worker that stops answering (SIGSTOP) gets its peers' requests a clean rtc:error
    (invalid_state) once the pool's request timeout is up, not an answer that never
    comes; the other worker's meeting goes on (its requests answered, its media flowing);
    the wedged worker is killed, and its meeting's peers hear rtc:roomClosed worker_died."""
    with trio.fail_after(40):
        async with pool_server(request_timeout=1.5) as (pool, server), AsyncExitStack() as stack:
            ann, _, bob, bob_consumer = await audio_call(stack, server, "alpha", ("ann", "bob"))
            cat, cat_audio, dan, dan_consumer = await audio_call(
                stack, server, "beta", ("cat", "dan")
            )
            alpha_worker = worker_of(pool, router_of(server, "alpha"))
            assert worker_of(pool, router_of(server, "beta")) != alpha_worker
            wedged_pid = pool.workers_info()[alpha_worker]["pid"]
            os.kill(wedged_pid, signal.SIGSTOP)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_audio, cat, cat_audio, 100)
                failed = trio.Event()

                async def bob_asks() -> None:
                    started = trio.current_time()
                    with pytest.raises(SignalingError) as caught:
                        await bob.signaling.get_stats(bob_consumer.consumer_id)
                    assert caught.value.code == "invalid_state"
                    assert "did not answer" in caught.value.message
                    assert 1.3 < trio.current_time() - started < 5.0
                    failed.set()

                nursery.start_soon(bob_asks)
                # While Bob waits, the other meeting is served as ever.
                with trio.fail_after(1.0):
                    assert await dan.signaling.get_stats(dan_consumer.consumer_id)
                    await receive_audio(dan, dan_consumer, 10)
                assert not failed.is_set()
                await failed.wait()
                with trio.fail_after(5):
                    for peer in (ann, bob):
                        note = await peer.signaling.next_notification("rtc:roomClosed")
                        assert note.data == {"meetingId": "alpha", "reason": WORKER_DIED}
                nursery.cancel_scope.cancel()
            with pytest.raises(ProcessLookupError):
                os.kill(wedged_pid, 0)


async def test_a_meeting_past_the_threshold_spreads_to_a_second_worker() -> None:
    with trio.fail_after(40):
        async with pool_server(pipe_threshold=1) as (pool, server):
            async with AsyncExitStack() as stack:
                ann = await stack.enter_async_context(join(server, "big", "ann"))
                audio_id, audio = await ann.publish("audio", audio_rtp_parameters(ssrc=5000))
                video_id, video = await ann.publish("video", vp8_simulcast_rtp_parameters())
                # Bob joins Ann's router; his two consumers put its worker past one.
                bob = await stack.enter_async_context(join(server, "big", "bob"))
                await bob.consume(audio_id)
                await bob.consume(video_id)
                home = router_of(server, "big")
                assert pool.router_overloaded(home)
                # Cat lands on a router of the other worker; Ann's producers are piped.
                cat = await stack.enter_async_context(join(server, "big", "cat"))
                room = server.app.rooms.rooms["big"]
                assert len(room.router_ids) == 2 and room.router_ids[0] == home
                away = room.router_ids[1]
                assert worker_of(pool, away) != worker_of(pool, home)
                cat_audio = await cat.consume(audio_id)
                cat_video = await cat.consume(video_id)
                assert cat_video.type == "simulcast"
                away_port = pool.workers_info()[worker_of(pool, away)]["udpPort"]
                assert cat.recv_transport is not None and ann.send_transport is not None
                assert cat.recv_transport.remote_address[1] == away_port

                # Ann sends a keyframe on every layer, then deltas, and audio.
                now = trio.current_time()
                for frame in range(20):
                    for stream in video.streams:
                        for packet in stream.vp8_frame(keyframe=frame == 0, size=300, now=now):
                            ann.send_transport.send_rtp(packet)
                    ann.send_transport.send_rtp(audio.streams[0].opus_frame(now=now))
                    await trio.sleep(0.01)
                wanted = {cat_audio.ssrc: cat_audio, cat_video.ssrc: cat_video}
                got: dict[int, list[RtpPacket]] = {ssrc: [] for ssrc in wanted}
                with trio.fail_after(5):
                    while min(len(packets) for packets in got.values()) < 10:
                        packet = RtpPacket.parse_untrusted(await cat.recv_transport.receive_rtp())
                        assert packet.ssrc in wanted
                        got[packet.ssrc].append(packet)
                for ssrc, consumer in wanted.items():
                    pts = {p.payload_type for p in got[ssrc]}
                    assert pts == {consumer.rtp_parameters.codecs[0].payload_type}
                assert vp8.is_keyframe(got[cat_video.ssrc][0].payload)

                # Cat's PLI crosses the pipe and reaches Ann, on her r2 stream.
                cat.recv_transport.send_rtcp(build_rtcp([Pli(7, cat_video.ssrc)]))
                with trio.fail_after(3):
                    plis: list[int] = []
                    while not plis:
                        for rtcp in parse_rtcp_untrusted(await ann.send_transport.receive_rtcp()):
                            if isinstance(rtcp, Pli):
                                plis.append(rtcp.media_ssrc)
                assert set(plis) <= {s.ssrc for s in video.streams}

                # The other way: Cat publishes on her router, Bob (home) hears her.
                cat_mic, cat_source = await cat.publish("audio", audio_rtp_parameters(ssrc=6000))
                bob_hears = await bob.consume(cat_mic)
                assert bob.recv_transport is not None and cat.send_transport is not None
                for _ in range(5):
                    cat.send_transport.send_rtp(cat_source.streams[0].opus_frame(now=now))
                with trio.fail_after(5):
                    while True:
                        packet = RtpPacket.parse_untrusted(await bob.recv_transport.receive_rtp())
                        if packet.ssrc == bob_hears.ssrc:
                            break

                # Ann closes her camera: Cat's consumer of its pipe copy closes too.
                await ann.signaling.close_producer(video_id)
                with trio.fail_after(3):
                    while True:
                        note = await cat.signaling.next_notification("rtc:consumerClosed")
                        if note.data["consumerId"] == cat_video.consumer_id:
                            break
                assert note.data["reason"] == "producer_closed"
            await server.app.rooms.wait_all_closed()
            assert [dump["routers"] for dump in await pool.dump_workers()] == [[], []]
            assert pool.pipes is not None
            assert pool.pipes.links == {} and pool.pipes.pipes == {}
