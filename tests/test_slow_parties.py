"""Slow parties hurt only themselves: a peer whose process stops (SIGSTOP: it reads
neither its WebSocket nor its media socket) while the others' media and notifications keep
flowing, the server's queues for it stay bounded, and it is disconnected once its
notification queue is full.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.signaling_harness import http, make_config, running_server, token
from tests.test_signaling_admin import metric
from trio_sfu.client.peer import open_peer
from trio_sfu.client.synthetic import audio_rtp_parameters, vp8_simulcast_rtp_parameters
from trio_sfu.engine.rtc_sockets import TcpConnection
from trio_sfu.engine.worker import open_worker
from trio_sfu.rtp.packet import RtpPacket
from trio_sfu.wire import unstructure

ROOT = Path(__file__).resolve().parent.parent
#: The server's queue of frames per ICE-TCP connection (TcpListener's default).
TCP_QUEUE = 512


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            raise EOFError(data)
        data += chunk
    return data


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
async def test_a_peer_that_stops_reading_hurts_only_itself(protocol: str) -> None:
    config = make_config(outgoing_queue=32)
    with trio.fail_after(60):
        async with (
            open_worker() as worker,
            running_server(worker, config) as server,
            AsyncExitStack() as stack,
        ):
            ann = await stack.enter_async_context(
                open_peer(server.ws_url, "m", token=token("m", "ann"))
            )
            carl = await stack.enter_async_context(
                open_peer(server.ws_url, "m", token=token("m", "carl"))
            )
            audio_id, audio = await ann.publish("audio", audio_rtp_parameters(ssrc=9090))
            video_id, video = await ann.publish("video", vp8_simulcast_rtp_parameters())
            heard = await carl.consume(audio_id)
            await carl.consume(video_id)
            assert ann.send_transport and carl.recv_transport

            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "tests.slow_peer",
                    server.ws_url,
                    "m",
                    protocol,
                    token("m", "slow"),
                ],
                stdout=subprocess.PIPE,
                cwd=ROOT,
                env=env,
            )
            try:
                assert process.stdout is not None
                assert await read_line(process.stdout) == b"ready\n"
                slow = await carl.signaling.next_notification("rtc:peerJoined")
                slow_id = slow.data["peerId"]
                os.kill(process.pid, signal.SIGSTOP)

                received = 0

                def count(packet: bytes) -> None:
                    nonlocal received
                    if RtpPacket.parse_untrusted(packet).ssrc == heard.ssrc:
                        received += 1

                carl.recv_transport.on_rtp = count

                async def burst(rounds: int) -> None:
                    """Audio to carl (and slow), plus video in bulk toward both."""
                    assert ann.send_transport is not None
                    for _ in range(rounds):
                        now = trio.current_time()
                        ann.send_transport.send_rtp(audio.streams[0].opus_frame(now=now))
                        for stream in video.streams:  # whichever layer a consumer takes
                            for packet in stream.vp8_frame(
                                keyframe=stream.frames == 0, size=1100, packets=20, now=now
                            ):
                                ann.send_transport.send_rtp(packet)
                        await trio.sleep(0.005)

                # Media: the server's sends to the stopped peer back up (TCP: its queue
                # for that connection fills and drops, never past its bound); carl gets
                # every audio packet all along.
                sent = 0
                connection: TcpConnection | None = None
                for _ in range(40):
                    await burst(20)
                    sent += 20
                    tcp = worker.webrtc_server.tcp if worker.webrtc_server else None
                    connections = list(tcp.connections.values()) if tcp is not None else []
                    if protocol == "tcp":
                        assert len(connections) == 1
                        connection = connections[0]
                        queued = connection._send_channel.statistics().current_buffer_used
                        assert queued <= TCP_QUEUE
                        if connection.frames_dropped:
                            break
                    elif sent >= 200:
                        break
                if connection is not None:
                    assert connection.frames_dropped > 0
                with trio.fail_after(5):
                    while received < sent:  # noqa: ASYNC110 (counted by a callback)
                        await trio.sleep(0.01)

                # Notifications: large ones (a producer's appData) until the stopped
                # peer's queue is full: it is disconnected; carl hears every one.
                app_data: dict[str, Any] = {"blob": "x" * 150_000}
                for round_ in range(80):
                    assert ann.send_transport_id is not None
                    producer_id = await ann.signaling.produce(
                        ann.send_transport_id,
                        "audio",
                        _audio(20_000 + round_),
                        app_data=app_data,
                    )
                    with trio.fail_after(2):  # carl hears of it at once (older ones first)
                        while True:
                            note = await carl.signaling.next_notification("rtc:newProducer")
                            if note.data["producerId"] == producer_id:
                                break
                    assert len(note.data["appData"]["blob"]) == 150_000
                    await ann.signaling.close_producer(producer_id)
                    left = [
                        n
                        for n in carl.signaling.pending_notifications()
                        if n.type == "rtc:peerLeft"
                    ]
                    if left:
                        break
                with trio.fail_after(10):
                    left_note = await carl.signaling.next_notification("rtc:peerLeft")
                assert left_note.data["peerId"] == slow_id
                text = (await http(server, "GET", "/metrics")).body.decode()
                assert metric(text, "trio_sfu_slow_connections_closed_total") == 1
                assert metric(text, "trio_sfu_peers") == 2
                # Its transport went with it; carl's media never stopped.
                before = received
                await burst(5)
                with trio.fail_after(5):
                    while received < before + 5:  # noqa: ASYNC110 (counted by a callback)
                        await trio.sleep(0.01)
            finally:
                process.kill()
                await process.wait()
                if process.stdout is not None:
                    await process.stdout.aclose()


def _audio(ssrc: int) -> Any:
    return unstructure(audio_rtp_parameters(ssrc=ssrc, mid=str(ssrc)))
