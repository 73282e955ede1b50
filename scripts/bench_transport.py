#!/usr/bin/env python3
"""Microseconds per 1200-byte RTP packet through the WebRtcTransport code, both SRTP profiles.

Run it as ``.venv/bin/python scripts/bench_transport.py`` (``--quick`` for a smoke run of a
few seconds). A server WebRtcTransport and a trio client transport connect over 127.0.0.1
(UDP: ICE, DTLS, SRTP as in production); then, per profile:

* ``ingress``: the server's receive path, datagram to ``on_rtp``: the UDP receive task's
  ``recvfrom``, the RFC 7983 demux, the validated-address check, SRTP unprotect and the
  ``on_rtp`` call. The client sends packets it protected beforehand, in bursts; only the
  time spent in the server's receive task is counted (a trio Instrument times each task
  step), so the client's work and idle time are not in the figure.
* ``ingress (no socket)``: the same path minus the ``recvfrom``: ``handle_datagram`` called
  in a loop with those datagrams.
* ``egress``: ``send_rtp_nowait`` (timed in the caller) plus the egress task's time (channel
  receive, batch drain, SRTP protect, ``sendto``), per packet.
* ``srtp unprotect`` / ``srtp protect``: the bare SrtpSession calls, for reference: the
  difference to the lines above is what the transport code costs.

Each figure is the median of ``--runs`` runs of ``--packets`` packets. Figures, not tests:
nothing here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

import trio

from trio_sfu.client import open_client_transport
from trio_sfu.dtls import DtlsCertificate
from trio_sfu.engine.webrtc_transport import WebRtcTransport

PROFILES = ("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80")
PACKET_SIZE = 1200
BURST = 200


class TaskTimer(trio.abc.Instrument):
    """Accumulates the wall time each task spends running (per task step)."""

    def __init__(self) -> None:
        self.spent: dict[trio.lowlevel.Task, float] = defaultdict(float)
        self._started = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.spent[task] += time.thread_time() - self._started

    def total(self, suffix: str) -> float:
        return sum(t for task, t in self.spent.items() if task.name.endswith(suffix))

    def reset(self) -> None:
        self.spent.clear()


def check(server: WebRtcTransport) -> None:
    dropped = {cause: n for cause, n in server.stats()["dropped"].items() if n}
    if dropped or server.closed:
        raise RuntimeError(f"packets dropped during the benchmark: {dropped}")


def rtp_packet(seq: int, ssrc: int) -> bytes:
    header = bytes([0x80, 96]) + (seq & 0xFFFF).to_bytes(2, "big")
    header += ((seq * 90) & 0xFFFFFFFF).to_bytes(4, "big") + ssrc.to_bytes(4, "big")
    return header + bytes(PACKET_SIZE - len(header))


async def bench_profile(profile: str, packets: int, runs: int) -> dict[str, float]:
    certificate = DtlsCertificate.generate()
    timer = TaskTimer()
    results: dict[str, list[float]] = defaultdict(list)
    async with trio.open_nursery() as nursery:
        server = WebRtcTransport(
            transport_id="bench", certificate=certificate, enable_tcp=False, egress_queue_size=1024
        )
        received = 0

        def on_rtp(packet: bytes, arrival: float) -> None:
            nonlocal received
            received += 1

        server.on_rtp = on_rtp
        dtls_connected = trio.Event()

        def on_state(layer: str, state: str) -> None:
            if (layer, state) == ("dtls", "connected"):
                dtls_connected.set()

        server.on_state = on_state
        await nursery.start(server.run)
        async with open_client_transport(
            server.ice_parameters,
            server.ice_candidates,
            server.dtls_parameters,
            srtp_profiles=[profile],
        ) as client:
            server.connect(client.dtls_parameters)
            await client.wait_connected()
            if server.dtls_state != "connected":
                await dtls_connected.wait()
            assert server.selected_srtp_profile == profile, server.selected_srtp_profile
            client_srtp: Any = client._srtp  # the client's own session protects the input
            client_sock: Any = client._udp
            client_address = client.local_address
            assert client_address is not None
            client.on_rtp = lambda packet: None  # the client's work is not measured
            trio.lowlevel.add_instrument(timer)
            ssrc = 0x10000000

            def stream(count: int) -> list[bytes]:
                # A fresh SSRC per batch: sequence numbers 1..count never wrap or repeat.
                nonlocal ssrc
                ssrc += 1
                return [rtp_packet(seq, ssrc) for seq in range(1, count + 1)]

            try:
                for _ in range(runs):
                    # Ingress through the socket.
                    datagrams = [client_srtp.protect_rtp(p) for p in stream(packets)]
                    received = 0
                    await trio.lowlevel.checkpoint()
                    timer.reset()
                    for first in range(0, packets, BURST):
                        for datagram in datagrams[first : first + BURST]:
                            client_sock.send(datagram)
                        goal = min(first + BURST, packets)
                        while received < goal:
                            check(server)
                            await trio.lowlevel.checkpoint()
                    results["ingress"].append(timer.total("UdpListener.serve") / packets)

                    # Ingress without the socket: the same path from handle_datagram on.
                    datagrams = [client_srtp.protect_rtp(p) for p in stream(packets)]
                    handle = server.handle_datagram
                    received = 0
                    arrival = trio.current_time()
                    started = time.thread_time()
                    for datagram in datagrams:
                        handle(datagram, client_address, arrival)
                    elapsed = time.thread_time() - started
                    check(server)
                    assert received == packets, received
                    results["ingress (no socket)"].append(elapsed / packets)

                    # Egress.
                    plain = stream(packets)
                    before = server.rtp_packets_out
                    await trio.lowlevel.checkpoint()
                    timer.reset()
                    caller = 0.0
                    for first in range(0, packets, BURST):
                        started = time.thread_time()
                        for packet in plain[first : first + BURST]:
                            if not server.send_rtp_nowait(packet):
                                raise RuntimeError("egress queue full in the benchmark")
                        caller += time.thread_time() - started
                        goal = before + min(first + BURST, packets)
                        while server.rtp_packets_out < goal:
                            check(server)
                            await trio.lowlevel.checkpoint()
                    results["egress"].append(
                        (caller + timer.total("WebRtcTransport._egress_loop")) / packets
                    )

                    # Bare SRTP, for reference.
                    plain = stream(packets)
                    started = time.thread_time()
                    protected = [client_srtp.protect_rtp(p) for p in plain]
                    results["srtp protect"].append((time.thread_time() - started) / packets)
                    unprotect = server._srtp.unprotect_rtp_untrusted  # type: ignore[union-attr]
                    started = time.thread_time()
                    for datagram in protected:
                        unprotect(datagram)
                    results["srtp unprotect"].append((time.thread_time() - started) / packets)
            finally:
                trio.lowlevel.remove_instrument(timer)
            server.close()
        nursery.cancel_scope.cancel()
    return {name: statistics.median(values) * 1e6 for name, values in results.items()}


async def main_async(packets: int, runs: int) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for profile in PROFILES:
        with trio.fail_after(120):
            table[profile] = await bench_profile(profile, packets, runs)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--packets", type=int, default=None, help="packets per run")
    parser.add_argument("--runs", type=int, default=None, help="runs (the median is shown)")
    args = parser.parse_args(argv)
    packets = args.packets or (2000 if args.quick else 20000)
    runs = args.runs or (3 if args.quick else 5)
    table = trio.run(main_async, packets, runs)

    rows = ["ingress", "ingress (no socket)", "srtp unprotect", "egress", "srtp protect"]
    print(f"µs per {PACKET_SIZE}-byte RTP packet over 127.0.0.1 ({packets} packets x {runs} runs)")
    print(f"{'path':<22}" + "".join(f"{p:>26}" for p in PROFILES))
    for row in rows:
        print(f"{row:<22}" + "".join(f"{table[p][row]:>23.2f} µs" for p in PROFILES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
