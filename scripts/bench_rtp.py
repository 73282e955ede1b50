#!/usr/bin/env python3
"""Nanoseconds per packet for the sans-IO packet path: RTP routing, VP8, RTCP.

Run it as ``.venv/bin/python scripts/bench_rtp.py`` (``--quick`` for a smoke run well
under a second, as CI does). Each case runs ``--iterations`` times in a loop, ``--runs``
times; the figure printed is the median run's time per iteration. The ``loop overhead``
line is the cost of the timing loop and one Python call; every other figure includes it.

Cases:

* ``rtp_route_rewrite``: what the router reads from every incoming RTP packet (SSRC,
  sequence number, timestamp, payload type, marker, the mid and rid header extensions)
  plus one consumer's copy with SSRC/PT/seq/ts rewritten, for a 1200-byte VP8 packet with
  one-byte header extensions (mid, rid, abs-send-time, transport-wide seq).
* ``vp8_descriptor``: the VP8 payload descriptor summary (RFC 7741) of that packet.
* ``vp8_forward``: a simulcast consumer's whole per-packet work on it: header fields, layout,
  VP8 summary, seq/ts splicing, PictureID/TL0PICIDX continuity, rewritten copy.
* ``rtcp_sr_sdes`` / ``rtcp_rr_remb_nack``: parsing the two typical compound RTCP packets,
  a sender's SR+SDES and a receiver's RR+REMB+NACK.

Figures, not tests: nothing here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from trio_sfu.rtcp import (
    GenericNack,
    ReceiverReport,
    Remb,
    ReportBlock,
    Sdes,
    SdesChunk,
    SenderReport,
    build_rtcp,
    parse_rtcp_untrusted,
)
from trio_sfu.rtp import vp8
from trio_sfu.rtp.packet import (
    RtpPacket,
    build_extensions,
    find_extension_untrusted,
    rewrite_untrusted,
    rtp_layout_untrusted,
    rtp_marker,
    rtp_payload_type,
    rtp_seq,
    rtp_ssrc,
    rtp_timestamp,
)
from trio_sfu.rtp.rewriter import SeqTsRewriter

MID_ID = 1
RID_ID = 2
ABS_SEND_TIME_ID = 4
TRANSPORT_CC_ID = 5
PACKET_SIZE = 1200

PRODUCER_SSRC = 0x1234ABCD
CONSUMER_SSRC = 0x0BADCAFE


def vp8_packet() -> bytes:
    """A 1200-byte VP8 RTP packet as Chromium sends one of a simulcast stream."""
    profile, block = build_extensions(
        {
            MID_ID: b"0",
            RID_ID: b"r2",
            ABS_SEND_TIME_ID: b"\x12\x34\x56",
            TRANSPORT_CC_ID: b"\x01\x02",
        }
    )
    # X S, I L T, 15-bit PictureID 0x1234, TL0PICIDX 5, TID 0; VP8 payload, P=0: key frame.
    descriptor = vp8.Vp8Descriptor(
        start_of_partition=True, picture_id=0x1234, tl0picidx=5, tid=0
    ).to_bytes()
    header = RtpPacket(
        payload_type=101,
        sequence_number=4321,
        timestamp=123456789,
        ssrc=PRODUCER_SSRC,
        marker=False,
        extension_profile=profile,
        extension=block,
    ).serialize()
    body_size = PACKET_SIZE - len(header) - len(descriptor)
    body = bytes((0x50, 0x02, 0x00, 0x9D, 0x01, 0x2A)) + bytes(body_size - 6)
    packet = RtpPacket.parse_untrusted(header + descriptor + body).serialize()
    assert len(packet) == PACKET_SIZE
    return packet


def rtcp_sr_sdes() -> bytes:
    return build_rtcp(
        [
            SenderReport(
                ssrc=PRODUCER_SSRC,
                ntp_timestamp=0xE7A1B2C3_D4E5F607,
                rtp_timestamp=123456789,
                packet_count=1000,
                octet_count=1_100_000,
            ),
            Sdes((SdesChunk.with_cname(PRODUCER_SSRC, "dGhpcyBpcyBhIGNuYW1l"),)),
        ]
    )


def rtcp_rr_remb_nack() -> bytes:
    block = ReportBlock(
        ssrc=CONSUMER_SSRC,
        fraction_lost=12,
        cumulative_lost=40,
        highest_seq=0x0001_1234,
        jitter=150,
        lsr=0x1234_5678,
        dlsr=0x0000_8000,
    )
    return build_rtcp(
        [
            ReceiverReport(ssrc=1, reports=(block,)),
            Remb(sender_ssrc=1, bitrate=1_500_000, ssrcs=(CONSUMER_SSRC,)),
            GenericNack.from_seqs(1, CONSUMER_SSRC, [4321, 4323, 4330]),
        ]
    )


def cases() -> dict[str, Callable[[], object]]:
    packet = vp8_packet()
    payload_start = rtp_layout_untrusted(packet)[1]
    payload = memoryview(packet)[payload_start:]

    def rtp_route_rewrite() -> object:
        ssrc = rtp_ssrc(packet)
        seq = rtp_seq(packet)
        ts = rtp_timestamp(packet)
        pt = rtp_payload_type(packet)
        marker = rtp_marker(packet)
        mid = find_extension_untrusted(packet, MID_ID)
        rid = find_extension_untrusted(packet, RID_ID)
        out = rewrite_untrusted(
            packet,
            ssrc=CONSUMER_SSRC,
            payload_type=pt,
            sequence_number=seq + 7,
            timestamp=ts + 3000,
        )
        return ssrc, marker, mid, rid, out

    def vp8_descriptor() -> object:
        return vp8.summarize_untrusted(payload)

    seq_ts = SeqTsRewriter(initial_seq=1, initial_ts=1)
    continuity = vp8.Vp8Continuity(initial_picture_id=1, initial_tl0picidx=1)
    first = vp8.summarize_untrusted(payload)
    seq_ts.switch_to(PRODUCER_SSRC, rtp_seq(packet), rtp_timestamp(packet), 3000)
    continuity.switch_to(first)
    counter = [rtp_seq(packet)]

    def vp8_forward() -> object:
        # The input is the same packet each time; a fresh seq makes the splicer take its
        # usual in-order path instead of the duplicate one.
        seq = counter[0] = (counter[0] + 1) & 0xFFFF
        pt = rtp_payload_type(packet)
        start = rtp_layout_untrusted(packet)[1]
        view = memoryview(packet)[start:]
        info = vp8.summarize_untrusted(view)
        numbers = seq_ts.rewrite(seq, rtp_timestamp(packet))
        ids = continuity.map(info)
        if numbers is None or ids is None:
            return None
        out = rewrite_untrusted(
            packet,
            ssrc=CONSUMER_SSRC,
            payload_type=pt,
            sequence_number=numbers[0],
            timestamp=numbers[1],
        )
        vp8.write_picture_id(memoryview(out)[start:], ids[0], ids[1])
        return out

    sr_sdes = rtcp_sr_sdes()
    rr_remb_nack = rtcp_rr_remb_nack()

    def rtcp_sr_sdes_case() -> object:
        return parse_rtcp_untrusted(sr_sdes)

    def rtcp_rr_remb_nack_case() -> object:
        return parse_rtcp_untrusted(rr_remb_nack)

    def loop_overhead() -> object:
        return None

    # Sanity: every case works on its input before it is timed.
    assert len(rewrite_untrusted(packet, ssrc=1, payload_type=1, sequence_number=1, timestamp=1))
    assert find_extension_untrusted(packet, RID_ID) == b"r2"
    assert first.keyframe and first.picture_id == 0x1234
    assert len(parse_rtcp_untrusted(sr_sdes)) == 2
    assert len(parse_rtcp_untrusted(rr_remb_nack)) == 3
    return {
        "loop overhead": loop_overhead,
        "rtp_route_rewrite": rtp_route_rewrite,
        "vp8_descriptor": vp8_descriptor,
        "vp8_forward": vp8_forward,
        "rtcp_sr_sdes": rtcp_sr_sdes_case,
        "rtcp_rr_remb_nack": rtcp_rr_remb_nack_case,
    }


def time_per_call(fn: Callable[[], object], iterations: int, runs: int) -> float:
    """Median over ``runs`` of the nanoseconds per call of ``fn`` in a tight loop."""
    results = []
    for _ in range(runs):
        loop = range(iterations)
        start = time.perf_counter_ns()
        for _ in loop:
            fn()
        results.append((time.perf_counter_ns() - start) / iterations)
    return statistics.median(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run, well under a second")
    parser.add_argument("--iterations", type=int, default=None, help="calls per run")
    parser.add_argument("--runs", type=int, default=None, help="runs per case (median shown)")
    args = parser.parse_args(argv)
    iterations = args.iterations or (300 if args.quick else 50_000)
    runs = args.runs or (3 if args.quick else 5)

    print(f"python {sys.version.split()[0]}, {iterations} iterations x {runs} runs, median")
    for name, fn in cases().items():
        ns = time_per_call(fn, iterations, runs)
        print(f"{name:<20} {ns:10.1f} ns/packet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
