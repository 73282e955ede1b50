"""A real call: the signaling server and the media engine on 127.0.0.1, Python peers with
real UDP, DTLS and SRTP publishing synthetic audio and simulcast VP8, consuming each other.

Also the three ways a peer goes away (rtc:leave, a dropped socket, an ICE consent timeout):
each ends with the others notified and nothing left behind: no transport, producer,
consumer or router in the engine's dump, no Room/Peer/transport task, no socket.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from tests.signaling_harness import http, live_tasks, make_config, running_server, token
from tests.test_signaling_admin import metric
from trio_sfu.client.peer import MediaPeer, RemoteConsumer, open_peer
from trio_sfu.client.synthetic import (
    SyntheticPublisher,
    audio_rtp_parameters,
    vp8_simulcast_rtp_parameters,
)
from trio_sfu.engine.worker import Worker, WorkerSettings, open_worker
from trio_sfu.rtcp import (
    GenericNack,
    Pli,
    ReceiverReport,
    SenderReport,
    build_rtcp,
    parse_rtcp_untrusted,
)
from trio_sfu.rtp import vp8
from trio_sfu.rtp.packet import RtpPacket
from trio_sfu.server import SfuServer

MEETING = "standup"


@asynccontextmanager
async def sfu(**worker_options: Any) -> AsyncIterator[tuple[Worker, SfuServer]]:
    settings = WorkerSettings(rtcp_interval=0.1, **worker_options)
    async with open_worker(settings) as worker, running_server(worker, make_config()) as server:
        yield worker, server


def join(server: SfuServer, user: str) -> Any:
    return open_peer(
        server.ws_url, MEETING, token=token(MEETING, user), display_name=user.capitalize()
    )


def vp8_body(payload: bytes) -> bytes:
    """A VP8 payload without its descriptor (the SFU rewrites PictureID and TL0PICIDX)."""
    return payload[vp8.summarize_untrusted(payload).header_length :]


def complete(
    by_ssrc: dict[int, list[RtpPacket]],
    wanted: dict[int, RemoteConsumer],
    frames: int,
    sent_r2: dict[str, list[bytes]],
    owner: dict[str, str],
) -> bool:
    """Each consumer has ``frames`` packets; video ones end with the r2 frames sent."""
    return all(
        len(by_ssrc[ssrc]) >= frames
        and (
            c.kind == "audio"
            or [vp8_body(p.payload) for p in by_ssrc[ssrc][-frames:]]
            == sent_r2[owner[c.producer_id]]
        )
        for ssrc, c in wanted.items()
    )


def assert_engine_empty(worker: Worker) -> None:
    assert worker.dump() == {"routers": []}
    assert live_tasks("Router", "WebRtcTransport", "Room.run", "Peer.run") == []


@pytest.mark.parametrize("rtc_port", [0, None], ids=["shared_port", "port_per_transport"])
async def test_three_peers_publish_and_consume_each_other(rtc_port: int | None) -> None:
    with trio.fail_after(30):
        async with sfu(rtc_port=rtc_port) as (worker, server):
            async with AsyncExitStack() as stack:
                peers: list[MediaPeer] = []
                sources: dict[str, tuple[SyntheticPublisher, SyntheticPublisher]] = {}
                producers: dict[str, tuple[str, str]] = {}
                for index, name in enumerate(("ann", "bob", "cat")):
                    peer = await stack.enter_async_context(join(server, name))
                    audio_id, audio = await peer.publish(
                        "audio", audio_rtp_parameters(ssrc=1000 + index)
                    )
                    video_id, video = await peer.publish("video", vp8_simulcast_rtp_parameters())
                    peers.append(peer)
                    sources[peer.peer_id] = (audio, video)
                    producers[peer.peer_id] = (audio_id, video_id)

                # Each consumes the other two: 4 consumers each, one SSRC each.
                consumers: dict[str, list[RemoteConsumer]] = {}
                for peer in peers:
                    consumers[peer.peer_id] = [
                        await peer.consume(producer_id)
                        for other, ids in producers.items()
                        if other != peer.peer_id
                        for producer_id in ids
                    ]
                    ssrcs = [c.ssrc for c in consumers[peer.peer_id]]
                    assert len(set(ssrcs)) == 4
                    assert sorted(c.type for c in consumers[peer.peer_id]) == [
                        "simple",
                        "simple",
                        "simulcast",
                        "simulcast",
                    ]

                # One UDP+TCP port for all six transports, or a port pair each.
                ports = {
                    (candidate.protocol, candidate.port)
                    for router in worker._routers.values()
                    for entry in router.transports.values()
                    for candidate in entry.transport.ice_candidates
                }
                if rtc_port == 0:
                    assert worker.webrtc_server is not None
                    port = worker.webrtc_server.udp_port
                    assert ports == {("udp", port), ("tcp", port)}
                else:
                    assert worker.webrtc_server is None
                    assert len(ports) == 12

                # Everyone sends a keyframe on every layer, then 29 delta frames, plus audio.
                frames = 30
                now = trio.current_time()
                sent_r2: dict[str, list[bytes]] = defaultdict(list)
                for frame in range(frames):
                    for peer in peers:
                        audio, video = sources[peer.peer_id]
                        assert peer.send_transport is not None
                        for layer, stream in enumerate(video.streams):
                            for packet in stream.vp8_frame(keyframe=frame == 0, size=400, now=now):
                                peer.send_transport.send_rtp(packet)
                                if layer == 2:
                                    sent_r2[peer.peer_id].append(
                                        vp8_body(RtpPacket.parse_untrusted(packet).payload)
                                    )
                        peer.send_transport.send_rtp(audio.streams[0].opus_frame(now=now))
                    await trio.sleep(0.004)

                owner = {pid: peer_id for peer_id, ids in producers.items() for pid in ids}
                received: dict[str, dict[int, list[RtpPacket]]] = {}
                # Every consumer gets its producer's packets, under one SSRC, in sequence.
                for peer in peers:
                    assert peer.recv_transport is not None
                    by_ssrc: dict[int, list[RtpPacket]] = defaultdict(list)
                    received[peer.peer_id] = by_ssrc
                    wanted = {c.ssrc: c for c in consumers[peer.peer_id]}

                    with trio.fail_after(5):
                        while not complete(by_ssrc, wanted, frames, sent_r2, owner):
                            packet = RtpPacket.parse_untrusted(
                                await peer.recv_transport.receive_rtp()
                            )
                            assert packet.ssrc in wanted, "a packet under an SSRC nobody consumes"
                            by_ssrc[packet.ssrc].append(packet)
                    for ssrc, consumer in wanted.items():
                        packets = by_ssrc[ssrc]
                        seqs = [p.sequence_number for p in packets]
                        assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]
                        pts = {p.payload_type for p in packets}
                        assert pts == {consumer.rtp_parameters.codecs[0].payload_type}
                        if consumer.kind == "video":
                            assert vp8.is_keyframe(packets[0].payload)

                ann, bob, _ = peers
                assert ann.send_transport and bob.recv_transport and ann.recv_transport

                # Sender Reports for bob's consumers; Receiver Reports about ann's streams.
                reported: set[int] = set()
                with trio.fail_after(3):
                    while not {c.ssrc for c in consumers[bob.peer_id]} <= reported:
                        for rtcp in parse_rtcp_untrusted(await bob.recv_transport.receive_rtcp()):
                            if isinstance(rtcp, SenderReport):
                                reported.add(rtcp.ssrc)
                ann_ssrcs = {s.ssrc for src in sources[ann.peer_id] for s in src.streams}
                blocks: set[int] = set()
                with trio.fail_after(3):
                    while blocks != ann_ssrcs:
                        for rtcp in parse_rtcp_untrusted(await ann.send_transport.receive_rtcp()):
                            if isinstance(rtcp, ReceiverReport):
                                blocks |= {b.ssrc for b in rtcp.reports}

                # Bob's PLIs for ann's video reach ann once (throttled), on her r2 SSRC.
                ann_video = next(
                    c for c in consumers[bob.peer_id] if c.producer_id == producers[ann.peer_id][1]
                )
                for _ in range(5):
                    bob.recv_transport.send_rtcp(build_rtcp([Pli(7, ann_video.ssrc)]))
                plis: list[int] = []
                with trio.move_on_after(0.5):
                    while True:
                        for rtcp in parse_rtcp_untrusted(await ann.send_transport.receive_rtcp()):
                            if isinstance(rtcp, Pli):
                                plis.append(rtcp.media_ssrc)
                assert plis == [sources[ann.peer_id][1].streams[2].ssrc]

                # Bob's NACK is answered with a retransmission on the consumer's RTX stream.
                rtx = ann_video.rtp_parameters.encodings[0].rtx
                assert rtx is not None
                stats = await bob.signaling.get_stats(ann_video.consumer_id)
                assert stats[0]["packetCount"] >= frames
                original = received[bob.peer_id][ann_video.ssrc][-3]
                bob.recv_transport.send_rtcp(
                    build_rtcp(
                        [GenericNack.from_seqs(7, ann_video.ssrc, [original.sequence_number])]
                    )
                )
                with trio.fail_after(2):
                    while True:
                        repaired = RtpPacket.parse_untrusted(await bob.recv_transport.receive_rtp())
                        if repaired.ssrc == rtx.ssrc:
                            break
                assert repaired.payload[:2] == original.sequence_number.to_bytes(2, "big")
                assert repaired.payload[2:] == original.payload

            assert_engine_empty(worker)
            # The traffic stays counted after the transports closed.
            text = (await http(server, "GET", "/metrics")).body.decode()
            sent = 3 * frames * 4  # three publishers, three video layers and audio each
            assert metric(text, "trio_sfu_packets_in_total") >= sent
            assert metric(text, "trio_sfu_packets_out_total") >= 3 * 4 * frames
            assert metric(text, "trio_sfu_bytes_in_total") > 3 * frames * 3 * 400


async def two_peers_in_a_call(
    stack: AsyncExitStack, server: SfuServer, consent_interval: float = 5.0
) -> tuple[MediaPeer, MediaPeer, str, RemoteConsumer]:
    """Ann publishes audio and simulcast video; Bob consumes both. Returns the video consumer."""
    ann = await stack.enter_async_context(join(server, "ann"))
    bob = await stack.enter_async_context(join(server, "bob"))
    await bob.open_transport("recv", consent_interval=consent_interval)
    audio_id, _ = await ann.publish("audio", audio_rtp_parameters(ssrc=4242))
    video_id, _ = await ann.publish("video", vp8_simulcast_rtp_parameters())
    await bob.consume(audio_id)
    video = await bob.consume(video_id)
    return ann, bob, video_id, video


async def expect_ann_gone(bob: MediaPeer, ann: MediaPeer, video: RemoteConsumer) -> None:
    """What Bob must hear when Ann goes away, however she went."""
    closed = []
    for _ in range(2):
        note = await bob.signaling.next_notification("rtc:consumerClosed")
        closed.append((note.data["consumerId"], note.data["reason"]))
    assert video.consumer_id in {c for c, _ in closed}
    assert {reason for _, reason in closed} == {"producer_closed"}
    produced = [await bob.signaling.next_notification("rtc:producerClosed") for _ in range(2)]
    assert {n.data["peerId"] for n in produced} == {ann.peer_id}
    left = await bob.signaling.next_notification("rtc:peerLeft")
    assert left.data["peerId"] == ann.peer_id


def router_of(worker: Worker) -> dict[str, Any]:
    routers = worker.dump()["routers"]
    assert len(routers) == 1
    router: dict[str, Any] = routers[0]
    return router


async def test_leave_closes_everything_of_the_peer() -> None:
    with trio.fail_after(20):
        async with sfu() as (worker, server), AsyncExitStack() as stack:
            ann, bob, _, video = await two_peers_in_a_call(stack, server)
            await ann.signaling.leave()
            await expect_ann_gone(bob, ann, video)
            router = router_of(worker)
            assert router["producerIds"] == [] and router["consumerIds"] == []
            assert router["transportIds"] == [bob.recv_transport_id]
            await bob.signaling.leave()
            await server.app.rooms.wait_all_closed()
            assert_engine_empty(worker)


async def test_dropped_socket_is_a_leave() -> None:
    with trio.fail_after(20):
        async with sfu() as (worker, server):
            async with AsyncExitStack() as stack:
                ann, bob, _, video = await two_peers_in_a_call(stack, server)
                await ann.signaling.abort()
                await expect_ann_gone(bob, ann, video)
                assert router_of(worker)["transportIds"] == [bob.recv_transport_id]
            await server.app.rooms.wait_all_closed()
            await trio.testing.wait_all_tasks_blocked()
            assert_engine_empty(worker)


async def test_consent_timeout_ends_the_peer() -> None:
    with trio.fail_after(20):
        async with sfu(ice_consent_timeout=0.5, ice_close_timeout=0.8) as (worker, server):
            async with AsyncExitStack() as stack:
                ann, bob, _, video = await two_peers_in_a_call(stack, server, 0.1)
                # Ann's client falls silent (a lost network); Bob's keeps consent fresh.
                assert ann.send_transport is not None
                ann.send_transport.consent_refresh = False
                await expect_ann_gone(bob, ann, video)
                closed = await ann.signaling.wait_closed()
                assert closed.code == 4002
                assert router_of(worker)["transportIds"] == [bob.recv_transport_id]
            await server.app.rooms.wait_all_closed()
            await trio.testing.wait_all_tasks_blocked()
            assert_engine_empty(worker)
