#!/usr/bin/env python3
"""Microseconds per packet for SRTP protect and unprotect: the crypto floor of the packet path.

Run it as ``.venv/bin/python scripts/bench_srtp.py`` (``--quick`` for a smoke run well
under a second, as CI does). For each profile in trio_sfu.srtp.SRTP_PROFILES it protects
``--packets`` 1200-byte RTP packets (consecutive sequence numbers, one SSRC) through
``SrtpSession.protect_rtp``, then unprotects them through ``unprotect_rtp_untrusted`` in a
fresh receiving session; that is repeated ``--runs`` times and the median run is printed,
in microseconds per packet. Each figure includes the Python call and the loop.

Figures, not tests: nothing here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import time

from trio_sfu.srtp import SRTP_PROFILE_PARAMETERS, SRTP_PROFILES, SrtpKeys, SrtpSession

PACKET_SIZE = 1200
RTP_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence number, timestamp, SSRC


def make_packets(count: int) -> list[bytes]:
    payload = os.urandom(PACKET_SIZE - RTP_HEADER.size)
    return [
        RTP_HEADER.pack(0x80, 96, seq & 0xFFFF, seq * 3000, 0x1234ABCD) + payload
        for seq in range(count)
    ]


def run_once(profile: str, packets: list[bytes]) -> tuple[float, float]:
    """Seconds per packet for protect and for unprotect, one run."""
    size = SRTP_PROFILE_PARAMETERS[profile].master_len
    ours, theirs = os.urandom(size), os.urandom(size)
    sender = SrtpSession(SrtpKeys(profile, local_master=ours, remote_master=theirs))
    receiver = SrtpSession(SrtpKeys(profile, local_master=theirs, remote_master=ours))
    protect = sender.protect_rtp
    unprotect = receiver.unprotect_rtp_untrusted

    start = time.perf_counter()
    protected = [protect(packet) for packet in packets]
    middle = time.perf_counter()
    for packet in protected:
        unprotect(packet)
    end = time.perf_counter()
    return (middle - start) / len(packets), (end - middle) / len(packets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run well under a second")
    parser.add_argument("--packets", type=int, default=20_000, help="packets per run")
    parser.add_argument("--runs", type=int, default=7, help="runs; the median is printed")
    args = parser.parse_args(argv)
    packets_per_run, runs = (500, 3) if args.quick else (args.packets, args.runs)
    if packets_per_run < 1 or runs < 1:
        parser.error("--packets and --runs must be positive")

    packets = make_packets(packets_per_run)
    print(f"SRTP, {PACKET_SIZE}-byte RTP packets, median of {runs} runs x {packets_per_run}")
    for profile in SRTP_PROFILES:
        results = [run_once(profile, packets) for _ in range(runs)]
        protect_us = statistics.median(r[0] for r in results) * 1e6
        unprotect_us = statistics.median(r[1] for r in results) * 1e6
        print(f"{profile} protect    {protect_us:7.2f} us/packet")
        print(f"{profile} unprotect  {unprotect_us:7.2f} us/packet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
