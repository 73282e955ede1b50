"""The live fuzz target: a real call keeps flowing while the server is sprayed.

A server (in-process Worker, dev mode) on 127.0.0.1 carries a call: ann publishes audio and
simulcast VP8, bob consumes both. Meanwhile, for ``seconds``:

* a stranger's UDP socket sends mutated STUN, DTLS, RTP and RTCP to the shared RTC port,
  and a stranger's TCP connection mutated RFC 4571 streams (``live-rtc-port``);
* eve, a joined peer with working transports, sends mutated RTP and RTCP *protected with
  her own SRTP keys*, so that it reaches the router's parsers (``live-srtp-peer``);
* mallory, a joined peer, sends mutated signaling frames of every request type, naming her
  own transports and ann's producer (``live-signaling``): no answer may be ``internal``;
* every 0.25 s ann sends a frame and bob must receive it (``live-call``: a window without
  it is a failure).

Any log record at ERROR or above from trio-sfu (a crashed transport, an internal error) is a
failure too. Traffic goes to 127.0.0.1 only and stops after ``seconds``.
"""

from __future__ import annotations

import json
import logging
import random
import socket as stdlib_socket
import time
import traceback

import trio

from trio_sfu.config import ServerConfig
from trio_sfu.engine.rtc_sockets import frame
from trio_sfu.errors import BadPacket
from trio_sfu.testing.fuzz_targets import (
    pure_targets,
    rtcp_seed_packets,
    rtp_seed_packets,
    signaling_seeds,
)
from trio_sfu.testing.fuzzer import FuzzResult, mutate, mutate_json_bytes

__all__ = ["fuzz_live_call"]


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def fuzz_live_call(*, seconds: float, seed: int = 0) -> list[FuzzResult]:
    from trio_sfu.client.peer import open_peer
    from trio_sfu.client.signaling import open_signaling
    from trio_sfu.client.synthetic import audio_rtp_parameters, vp8_simulcast_rtp_parameters
    from trio_sfu.engine.worker import WorkerSettings, open_worker
    from trio_sfu.rtp.packet import RtpPacket
    from trio_sfu.server import serve_sfu

    rng = random.Random(seed)
    port_result = FuzzResult("live-rtc-port")
    peer_result = FuzzResult("live-srtp-peer")
    signaling_result = FuzzResult("live-signaling")
    call_result = FuzzResult("live-call")
    results = [port_result, peer_result, signaling_result, call_result]
    errors = _Errors()
    package_logger = logging.getLogger("trio_sfu")
    package_logger.addHandler(errors)
    stun_dtls = [s for t in pure_targets()[:2] for s in t.seeds]  # STUN and DTLS seeds
    rtp_seeds, rtcp_seeds = rtp_seed_packets(), rtcp_seed_packets()
    datagram_seeds = [*stun_dtls, *rtp_seeds, *rtcp_seeds]
    config = ServerConfig(host="127.0.0.1", port=0, dev=True, cleanup_timeout=2.0)
    start = time.monotonic()
    try:
        async with (
            open_worker(WorkerSettings(rtcp_interval=0.2)) as worker,
            trio.open_nursery() as nursery,
        ):
            server = await nursery.start(serve_sfu, config, worker)
            url = server.ws_url
            async with (
                open_peer(url, "m", display_name="ann") as ann,
                open_peer(url, "m", display_name="bob") as bob,
                open_peer(url, "m", display_name="eve") as eve,
            ):
                audio_id, audio = await ann.publish(
                    "audio", audio_rtp_parameters(ssrc=rng.randrange(1, 2**32))
                )
                video_id, video = await ann.publish("video", vp8_simulcast_rtp_parameters())
                heard = await bob.consume(audio_id)
                await bob.consume(video_id)
                await eve.publish("audio", audio_rtp_parameters(ssrc=rng.randrange(1, 2**32)))
                await eve.consume(video_id)
                ann_send, bob_recv = ann.send_transport, bob.recv_transport
                assert ann_send is not None and bob_recv is not None
                assert eve.send_transport and eve.recv_transport
                udp_port = worker.webrtc_server.udp_port if worker.webrtc_server else None
                tcp_port = worker.webrtc_server.tcp_port if worker.webrtc_server else None
                assert udp_port is not None and tcp_port is not None
                deadline = trio.current_time() + seconds

                async def call() -> None:
                    """ann -> bob, checked every 0.25 s."""
                    while trio.current_time() < deadline:
                        size = rng.randrange(60, 200)
                        now = trio.current_time()
                        ann_send.send_rtp(audio.streams[0].opus_frame(size=size, now=now))
                        for packet in video.streams[2].vp8_frame(keyframe=False, size=300, now=now):
                            ann_send.send_rtp(packet)
                        call_result.cases += 1
                        with trio.move_on_after(2.0) as window:
                            while True:
                                got = RtpPacket.parse_untrusted(await bob_recv.receive_rtp())
                                if got.ssrc == heard.ssrc and len(got.payload) == size:
                                    break
                        if window.cancelled_caught:
                            call_result.failures.setdefault(
                                f"no packet for 2 s (case {call_result.cases})", (b"", "")
                            )
                        await trio.sleep(0.25)

                async def strangers() -> None:
                    udp = trio.socket.socket(type=stdlib_socket.SOCK_DGRAM)
                    tcp: trio.SocketStream | None = None
                    with udp:
                        await udp.bind(("127.0.0.1", 0))
                        try:
                            while trio.current_time() < deadline:
                                for _ in range(20):
                                    data = mutate(rng.choice(datagram_seeds), rng, datagram_seeds)
                                    await udp.sendto(data, ("127.0.0.1", udp_port))
                                    port_result.cases += 1
                                if tcp is None:
                                    tcp = await trio.open_tcp_stream("127.0.0.1", tcp_port)
                                stream = b"".join(
                                    frame(mutate(rng.choice(datagram_seeds), rng)[:1400])
                                    for _ in range(5)
                                )
                                try:
                                    await tcp.send_all(
                                        mutate(stream, rng) if rng.random() < 0.3 else stream
                                    )
                                    port_result.cases += 5
                                except (trio.BrokenResourceError, trio.ClosedResourceError):
                                    await tcp.aclose()
                                    tcp = None  # closed by the server: connect again
                                await trio.sleep(0.005)
                        finally:
                            if tcp is not None:
                                await tcp.aclose()

                async def evil_peer() -> None:
                    assert eve.send_transport and eve.recv_transport
                    while trio.current_time() < deadline:
                        for _ in range(10):
                            try:
                                eve.send_transport.send_rtp(
                                    mutate(rng.choice(rtp_seeds), rng, rtp_seeds)
                                )
                                rtcp = mutate(rng.choice(rtcp_seeds), rng, rtcp_seeds)
                                target = (
                                    eve.recv_transport if rng.random() < 0.6 else eve.send_transport
                                )
                                target.send_rtcp(rtcp)
                            except BadPacket:
                                pass
                            peer_result.cases += 2
                        await trio.sleep(0.005)

                async def mallory() -> None:
                    while trio.current_time() < deadline:
                        async with open_signaling(url) as client:
                            await client.join("m", display_name="mallory")
                            send = (await client.create_transport("send"))["transportId"]
                            recv = (await client.create_transport("recv"))["transportId"]
                            seeds = []
                            for request in signaling_seeds():
                                text = json.dumps(request)
                                text = text.replace(
                                    "w0g1-0123456789abcdef", send if "produce" in text else recv
                                )
                                text = text.replace(
                                    '"producerId": "p"', f'"producerId": "{audio_id}"'
                                )
                                seeds.append(text.encode())
                            while trio.current_time() < deadline and client.closed is None:
                                data = mutate_json_bytes(rng.choice(seeds), rng, seeds)
                                try:
                                    await client.send_raw(data.decode("utf-8", "replace"))
                                except Exception:
                                    break  # closed (too many bad frames: 1008)
                                signaling_result.cases += 1
                                await trio.sleep(0.012)  # under the rate limit
                            await trio.sleep(0.1)
                            for answer in client.unmatched_errors:
                                if answer.get("code") == "internal":
                                    signaling_result.failures.setdefault(
                                        f"internal error answer to {answer.get('request')}",
                                        (b"", json.dumps(answer)),
                                    )

                async with trio.open_nursery() as fuzzers:
                    fuzzers.start_soon(call)
                    fuzzers.start_soon(strangers)
                    fuzzers.start_soon(evil_peer)
                    fuzzers.start_soon(mallory)
            server.shutdown()
    except Exception:
        call_result.failures["the live harness failed"] = (b"", traceback.format_exc())
    finally:
        package_logger.removeHandler(errors)
    for record in errors.records:
        key = f"logged {record.levelname}: {record.getMessage()[:120]}"
        text = "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else ""
        call_result.failures.setdefault(key, (b"", text))
    elapsed = time.monotonic() - start
    for result in results:
        result.seconds = elapsed
    return results
