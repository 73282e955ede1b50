"""A server killed (SIGKILL) in the middle of a call comes back on the same ports: the
HTTP/WebSocket port and every worker's shared RTC port, at once, while the killed server's
workers are still on their way out (they hold the RTC ports until they see their channel
end: the new workers try a taken fixed port again for a while).

(SIGTERM's roomClosed and 1001 within the bound: tests/test_workers_cli.py and
tests/test_cli.py.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from contextlib import AsyncExitStack

import trio

from tests.test_workers_cli import get_json, serve_process, wait_gone
from trio_sfu.client.peer import open_peer
from trio_sfu.client.synthetic import audio_rtp_parameters
from trio_sfu.rtp.packet import RtpPacket


def free_ports(count: int) -> int:
    """A port P with P..P+count-1 free for UDP and TCP on 127.0.0.1 (at the time asked)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        taken = []
        try:
            for port in range(base, base + count):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    sock = socket.socket(socket.AF_INET, kind)
                    taken.append(sock)
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in taken:
                sock.close()
        return base
    raise AssertionError("no free ports")


async def call_works(url: str, ssrc: int) -> None:
    """Ann publishes audio, bob consumes it and gets a packet."""
    async with AsyncExitStack() as stack:
        ann = await stack.enter_async_context(open_peer(url, "m", display_name="ann"))
        bob = await stack.enter_async_context(open_peer(url, "m", display_name="bob"))
        producer_id, source = await ann.publish("audio", audio_rtp_parameters(ssrc=ssrc))
        consumer = await bob.consume(producer_id)
        assert ann.send_transport and bob.recv_transport
        with trio.fail_after(5):
            while True:
                ann.send_transport.send_rtp(source.streams[0].opus_frame())
                with trio.move_on_after(0.2):
                    packet = RtpPacket.parse_untrusted(await bob.recv_transport.receive_rtp())
                    if packet.ssrc == consumer.ssrc:
                        return


async def test_sigkill_mid_call_then_restart_on_the_same_ports() -> None:
    http_port = free_ports(1)
    rtc_port = free_ports(2)
    ports = ["--port", str(http_port), "--rtc-port", str(rtc_port)]
    pids: list[int] = []
    try:
        with trio.fail_after(60):
            async with serve_process(*ports) as (process, url, port):
                assert port == http_port
                workers = (await get_json(port, "/v1/workers"))["workers"]
                assert sorted(w["udpPort"] for w in workers) == [rtc_port, rtc_port + 1]
                pids = [w["pid"] for w in workers]
                async with AsyncExitStack() as stack:
                    # A call in progress ...
                    ann = await stack.enter_async_context(open_peer(url, "m", display_name="a"))
                    bob = await stack.enter_async_context(open_peer(url, "m", display_name="b"))
                    producer_id, _ = await ann.publish("audio", audio_rtp_parameters(ssrc=1))
                    await bob.consume(producer_id)
                    # ... when the server is killed, its workers slow to go (stopped: they
                    # hold the RTC ports until they run again and see their channel end).
                    for pid in pids:
                        os.kill(pid, signal.SIGSTOP)
                    process.kill()
                    assert await process.wait() == -signal.SIGKILL
                    closed = await bob.signaling.wait_closed()
                    assert closed.code == 1006

            async def let_the_old_workers_go() -> None:
                await trio.sleep(1.5)
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)

            # At once, on the same ports: the new workers wait for the old ones' ports.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(let_the_old_workers_go)
                async with serve_process(*ports) as (process, url, port):
                    assert port == http_port
                    workers = (await get_json(port, "/v1/workers"))["workers"]
                    assert sorted(w["udpPort"] for w in workers) == [rtc_port, rtc_port + 1]
                    assert sorted(w["tcpPort"] for w in workers) == [rtc_port, rtc_port + 1]
                    await wait_gone(pids)
                    await call_works(url, ssrc=2)
                    process.send_signal(signal.SIGTERM)
                    assert await process.wait() == 0
    finally:
        for pid in pids:  # never leave a stopped process behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
