"""ffmpeg in and out through PlainTransports: ``trio-sfu ingest`` and the admin recording.

Debian's ffmpeg (installed by ``scripts/install_media_tools``, which ``scripts/test`` runs)
makes a real VP8 + Opus clip; ``run_ingest`` (what ``trio-sfu ingest`` runs) publishes it
into a meeting through two plain transports; a WebRTC subscriber (real ICE/DTLS/SRTP)
receives it and hands the RTP to another ffmpeg that decodes it. The admin API records
the ingested producers to WebM; ffprobe and a full decode check the file. Every ffmpeg is
waited for (the autouse fixture fails a test that leaves a child process).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.signaling_harness import ADMIN_TOKEN, http, make_config, running_server, token
from trio_sfu.client.peer import MediaPeer, RemoteConsumer, open_peer
from trio_sfu.engine.api import MediaEngine
from trio_sfu.engine.pool import PoolSettings, open_worker_pool
from trio_sfu.engine.worker import WorkerSettings, open_worker
from trio_sfu.ingest import run_ingest
from trio_sfu.media_tools import (
    SdpStream,
    free_udp_port_pair,
    probe,
    record_command,
    recording_sdp,
    stop_ffmpeg,
    wait_udp_bound,
)
from trio_sfu.server import SfuServer

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg is missing: run scripts/install_media_tools"
)

MEETING = "ffmpeg"
CLIP_SECONDS = 3.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real VP8 (320x240, 30 fps, a keyframe every 10 frames) + Opus (stereo) clip."""
    path = tmp_path_factory.mktemp("media") / "clip.webm"
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(CLIP_SECONDS),
            "-c:v", "libvpx", "-deadline", "realtime", "-g", "10", "-b:v", "300k",
            "-c:a", "libopus", "-ac", "2",
            str(path),
        ],
        check=True,
        timeout=60,
    )  # fmt: skip
    return str(path)


@asynccontextmanager
async def sfu(kind: str, **config: Any) -> AsyncIterator[tuple[MediaEngine, SfuServer]]:
    settings = WorkerSettings(rtcp_interval=0.2)
    if kind == "worker":
        async with (
            open_worker(settings) as worker,
            running_server(worker, make_config(**config)) as server,
        ):
            yield worker, server
    else:
        pool_settings = PoolSettings(workers=2, worker=settings, report_interval=0.2)
        async with (
            open_worker_pool(pool_settings) as pool,
            running_server(pool, make_config(**config)) as server,
        ):
            yield pool, server


def ingest_token() -> str:
    return token(MEETING, "ingest", can_plain_transport=True)


async def start_ingest(
    nursery: trio.Nursery, server: SfuServer, clip: str, *, loop: bool
) -> dict[str, str]:
    """``run_ingest`` of the clip into MEETING, in ``nursery``: its producers by kind."""
    producers: dict[str, str] = await nursery.start(
        lambda task_status: run_ingest(
            server.ws_url, MEETING, clip, token=ingest_token(), loop=loop, task_status=task_status
        )
    )
    return producers


def decode(path: str) -> dict[str, Any]:
    """Decode every frame of ``path`` with ffmpeg (errors fail), and ffprobe it (frames
    counted by decoding)."""
    subprocess.run(
        ["ffmpeg", "-v", "error", "-xerror", "-i", path, "-f", "null", "-"],
        check=True,
        timeout=60,
        capture_output=True,
    )
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format",
         "-of", "json", path],
        check=True,
        timeout=60,
        capture_output=True,
    )  # fmt: skip
    info: dict[str, Any] = json.loads(result.stdout)
    return info


def streams_by_kind(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["codec_type"]: s for s in info["streams"]}


async def relay_to_ffmpeg(
    subscriber: MediaPeer, consumers: list[RemoteConsumer], out: str
) -> tuple[trio.Process, list[int]]:
    """ffmpeg listening for the subscriber's consumers as plain RTP (it writes WebM)."""
    streams = []
    for consumer in consumers:
        codec = consumer.rtp_parameters.codecs[0]
        port = free_udp_port_pair()
        streams.append(
            SdpStream(
                kind=consumer.kind,
                port=port,
                payload_type=codec.payload_type,
                encoding_name=codec.mime_type.split("/", 1)[1],
                clock_rate=codec.clock_rate,
                channels=codec.channels,
            )
        )
    sdp = out + ".sdp"
    await trio.Path(sdp).write_text(recording_sdp(streams))
    log = await trio.to_thread.run_sync(lambda: open(out + ".log", "wb"))  # noqa: SIM115
    try:
        process = await trio.lowlevel.open_process(
            record_command(sdp, out), stdin=subprocess.PIPE, stdout=log, stderr=log
        )
    finally:
        log.close()
    try:
        with trio.fail_after(10):
            await wait_udp_bound([p for s in streams for p in (s.port, s.port + 1)], process)
    except BaseException:
        await stop_ffmpeg(process)
        raise
    return process, [s.port for s in streams]


async def test_ingest_is_decoded_by_a_subscriber(clip: str, tmp_path: Path) -> None:
    """A file published with ``trio-sfu ingest`` reaches a WebRTC subscriber as VP8 and
    Opus that ffmpeg decodes: every frame, at the clip's size."""
    out = str(tmp_path / "received.webm")
    with trio.fail_after(60):
        async with sfu("worker") as (_, server):
            async with (
                open_peer(server.ws_url, MEETING, token=token(MEETING, "sub")) as sub,
                trio.open_nursery() as nursery,
            ):
                producers = await start_ingest(nursery, server, clip, loop=True)
                assert set(producers) == {"video", "audio"}
                consumers = [await sub.consume(producers[kind], resume=False) for kind in producers]
                process, ports = await relay_to_ffmpeg(sub, consumers, out)
                port_of = {c.ssrc: port for c, port in zip(consumers, ports, strict=True)}
                relayed = [0]

                async def relay() -> None:
                    assert sub.recv_transport is not None
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                        while True:
                            packet = await sub.recv_transport.receive_rtp()
                            ssrc = int.from_bytes(packet[8:12])
                            sock.sendto(packet, ("127.0.0.1", port_of[ssrc]))
                            relayed[0] += 1

                try:
                    nursery.start_soon(relay)
                    for consumer in consumers:
                        await sub.signaling.resume_consumer(consumer.consumer_id)
                    await trio.sleep(CLIP_SECONDS)
                finally:
                    # While media flows: ffmpeg reads its "q" at the next packet.
                    code = await stop_ffmpeg(process)
                    nursery.cancel_scope.cancel()  # the relay and the ingest
                assert relayed[0] > 100
                assert code == 0
            info = await trio.to_thread.run_sync(decode, out)
            kinds = streams_by_kind(info)
            assert kinds["video"]["codec_name"] == "vp8"
            assert (kinds["video"]["width"], kinds["video"]["height"]) == (320, 240)
            assert kinds["audio"]["codec_name"] == "opus"
            # Most of the 3 s: 90 frames (the first keyframe may come a little late).
            assert int(kinds["video"]["nb_read_frames"]) >= 60
            assert int(kinds["audio"]["nb_read_frames"]) >= 100


async def admin(server: SfuServer, method: str, path: str, body: Any = None) -> Any:
    data = b"" if body is None else json.dumps(body).encode()
    return await http(server, method, path, bearer=ADMIN_TOKEN, body=data)


async def test_recording_stops_when_the_producers_close(clip: str, tmp_path: Path) -> None:
    """Record every producer of the meeting; the ingest ends, its producers close, the
    recording ends by itself: a WebM file with VP8 and Opus of the clip's length."""
    with trio.fail_after(60):
        async with sfu("worker", recording_dir=str(tmp_path)) as (engine, server):
            async with trio.open_nursery() as nursery:
                producers = await start_ingest(nursery, server, clip, loop=False)
                answer = await admin(server, "POST", f"/v1/rooms/{MEETING}/record")
                assert answer.status == 200, answer.json()
                recording = answer.json()
                assert recording["state"] == "recording"
                assert sorted(recording["producerIds"]) == sorted(producers.values())
                running = server.app.rooms.rooms[MEETING].recordings[recording["recordingId"]]
                # A keyframe was asked of the video publisher when recording began.
                (video,) = await engine.get_stats(producers["video"])
                assert video["keyframeRequests"] >= 1
            # The ingest is over: its producers closed, the recording ends by itself (the
            # meeting, empty now, closes too). At once: every stream's consumer sent ffmpeg
            # an RTCP BYE as its producer closed (without them ffmpeg would wait out its
            # 10 s read timeout).
            with trio.fail_after(5):
                await running.finished.wait()
            described = running.describe()
            assert described["endReason"] == "producer_closed"
            assert described["exitCode"] == 0
            assert described["state"] == "finished"
            path = recording["file"]
            assert os.path.dirname(path) == str(tmp_path)
            info = await trio.to_thread.run_sync(decode, path)
            kinds = streams_by_kind(info)
            assert kinds["video"]["codec_name"] == "vp8"
            assert (kinds["video"]["width"], kinds["video"]["height"]) == (320, 240)
            assert kinds["audio"]["codec_name"] == "opus"
            duration = float(info["format"]["duration"])
            assert CLIP_SECONDS - 1.0 <= duration <= CLIP_SECONDS + 0.5
            assert not [p for p in await trio.Path(tmp_path).iterdir() if p.suffix == ".sdp"]


async def test_recording_stops_on_request(clip: str, tmp_path: Path) -> None:
    """Record one producer (the looping ingest's video) and stop it after about 2 s: the
    file plays, with the recorded length; the API lists the recording as finished. On
    worker processes (the meeting's router is in another process than ffmpeg's parent)."""
    with trio.fail_after(60):
        async with sfu("pool", recording_dir=str(tmp_path)) as (_, server):
            async with trio.open_nursery() as nursery:
                producers = await start_ingest(nursery, server, clip, loop=True)
                base = f"/v1/rooms/{MEETING}/record"
                bad = await admin(server, "POST", base, {"producerId": "nope"})
                assert bad.status == 404
                bad = await admin(server, "POST", base, {"producerIds": "x"})
                assert bad.status == 400
                answer = await admin(server, "POST", base, {"producerId": producers["video"]})
                assert answer.status == 200, answer.json()
                recording_id = answer.json()["recordingId"]
                await trio.sleep(2.5)
                stopped = await admin(server, "POST", f"{base}/{recording_id}/stop")
                assert stopped.status == 200
                assert stopped.json()["state"] == "finished"
                assert stopped.json()["endReason"] == "stopped"
                listed = await admin(server, "GET", base)
                assert [r["recordingId"] for r in listed.json()["recordings"]] == [recording_id]
                nursery.cancel_scope.cancel()  # ends the ingest (and its ffmpeg)
            info = await trio.to_thread.run_sync(probe, stopped.json()["file"])
            (video,) = info["streams"]
            assert video["codec_name"] == "vp8"
            assert 1.5 <= float(info["format"]["duration"]) <= 3.0
