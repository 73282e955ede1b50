"""Fuzzing every input trio-sfu reads from the network (``scripts/fuzz``, ``tests/test_fuzz.py``).

A mutation fuzzer in the manner of atheris / libFuzzer, without their coverage feedback:
each target has seeds (valid inputs made with the project's own builders: signed STUN
checks, a real DTLS flight, RTP with header extensions, RTCP of every type, VP8 and H264
payloads, RFC 4571 streams, signaling requests of every type) and a check that runs the
input through the code that reads it. Each case is a seed put through one to eight random
mutations (bit flips, "interesting" bytes, 16/32-bit lengths and counts, insertions,
deletions, duplicated or spliced ranges, truncation); JSON is also mutated as a structure
(values of every JSON type, huge and negative numbers, long and odd unicode strings, deep
nesting, missing and unknown fields). A case fails when the code raises anything but the
target's documented errors (``BadPacket``; ``SfuError`` for signaling; nothing at all for
the functions documented never to raise).

Pure targets run in a plain loop; the ``router`` target drives a real Router (through an
in-process Worker) with what an *authenticated* malicious client could send after SRTP:
mutated RTP into its producers, mutated RTCP feedback about its consumers, and fuzzed
``produce``/``consume`` parameters through the engine API, with the router's periodic
work (reports, feedback, layer policy) run in between. ``live`` (see
:func:`fuzz_live_call`) sprays a running server from strangers' sockets and a malicious
peer while a real call goes on, and checks that the call keeps getting packets.

Run ``python -m trio_sfu.testing.fuzz --seconds N`` (``scripts/fuzz``): every target for
``N`` seconds, a table of cases run and failures, reproducers written to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import random
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from trio_sfu.errors import SfuError
from trio_sfu.testing.fuzz_live import fuzz_live_call
from trio_sfu.testing.fuzz_targets import (
    pure_targets,
    rtcp_seed_packets,
    rtp_seed_packets,
    signaling_seeds,
)
from trio_sfu.testing.fuzzer import FuzzResult, failure_key, fuzz_target, mutate, mutate_json_bytes

__all__ = ["fuzz_router", "main"]


# ---- the router (trio) --------------------------------------------------------------------


async def fuzz_router(*, seconds: float | None = None, cases: int | None = None,
                      seed: int = 0) -> FuzzResult:  # fmt: skip
    """A real Router of an in-process Worker, fed what an authenticated client could send
    after SRTP, and fuzzed produce/consume parameters. Nothing may raise but SfuError from
    the API calls; the packet handlers and the periodic work must never raise."""
    import trio

    from trio_sfu.client.synthetic import audio_rtp_parameters, vp8_simulcast_rtp_parameters
    from trio_sfu.engine.worker import WorkerSettings, open_worker
    from trio_sfu.ortc.types import RtpCapabilities, RtpParameters
    from trio_sfu.rtcp import GenericNack, Pli, ReceiverReport, ReportBlock, build_rtcp
    from trio_sfu.wire import structure_untrusted

    rng = random.Random(seed)
    result = FuzzResult("router")
    settings = WorkerSettings(rtc_port=0, transport_connect_timeout=None)
    start = time.monotonic()
    deadline = start + seconds if seconds is not None else float("inf")
    async with open_worker(settings) as worker:
        router_id = await worker.create_router(lambda event: None)
        router = worker._routers[router_id]
        send = (await worker.create_webrtc_transport(router_id)).transport_id
        recv = (await worker.create_webrtc_transport(router_id)).transport_id
        caps = worker.rtp_capabilities
        await worker.produce(send, "audio", audio_rtp_parameters(ssrc=1111, audio_level=True,
                                                                transport_cc=True))  # fmt: skip
        video_id = await worker.produce(send, "video", vp8_simulcast_rtp_parameters())
        producers = list(router.producers)
        consumer_ssrcs = []
        for producer_id in producers:
            info = await worker.consume(recv, producer_id, caps, paused=False)
            consumer_ssrcs += [e.ssrc for e in info.rtp_parameters.encodings if e.ssrc]
        await worker.set_consumer_preferred_layers(
            next(iter(router.transports[recv].consumers)), 2, 2
        )
        send_entry, recv_entry = router.transports[send], router.transports[recv]
        rtp_seeds = rtp_seed_packets()
        rtcp_seeds = rtcp_seed_packets()
        for ssrc in consumer_ssrcs:  # feedback about the consumers, as a subscriber sends
            rtcp_seeds.append(build_rtcp([GenericNack.from_seqs(9, ssrc, [1, 2, 3, 40])]))
            rtcp_seeds.append(build_rtcp([Pli(9, ssrc)]))
            rtcp_seeds.append(
                build_rtcp([ReceiverReport(9, (ReportBlock(ssrc, 80, 3, 100, 9, 0, 0),))])
            )
        api_seeds = [
            json.dumps(s["data"]).encode()
            for s in signaling_seeds()
            if s["type"] in ("rtc:produce", "rtc:consume")
        ]

        async def api_case(data: bytes) -> None:
            try:
                obj = json.loads(data)
            except (ValueError, RecursionError):
                return
            if not isinstance(obj, dict):
                return
            if "rtpParameters" in obj:
                params = structure_untrusted(obj["rtpParameters"], RtpParameters)
                kind: Literal["audio", "video"] = "audio" if obj.get("kind") == "audio" else "video"
                producer_id = await worker.produce(send, kind, params)
                await worker.consume(recv, producer_id, caps, paused=False)
                send_entry.on_rtp(rng.choice(rtp_seeds), trio.current_time())
                await worker.close_producer(producer_id)
            elif "rtpCapabilities" in obj:
                theirs = structure_untrusted(obj["rtpCapabilities"], RtpCapabilities)
                info = await worker.consume(recv, video_id, theirs, paused=False)
                await worker.close_consumer(info.consumer_id)

        while (cases is None or result.cases < cases) and time.monotonic() < deadline:
            result.cases += 1
            roll = rng.random()
            if roll < 0.5:
                data, kind = mutate(rng.choice(rtp_seeds), rng, rtp_seeds), "rtp"
            elif roll < 0.9:
                data, kind = mutate(rng.choice(rtcp_seeds), rng, rtcp_seeds), "rtcp"
            else:
                data, kind = mutate_json_bytes(rng.choice(api_seeds), rng, api_seeds), "api"
            try:
                if kind == "rtp":
                    send_entry.on_rtp(data, trio.current_time())
                elif kind == "rtcp":
                    (recv_entry if rng.random() < 0.7 else send_entry).on_rtcp(
                        data, trio.current_time()
                    )
                else:
                    with contextlib.suppress(SfuError, ValueError):
                        await api_case(data)
                if result.cases % 64 == 0:
                    now = trio.current_time()
                    for entry in (send_entry, recv_entry):
                        router._feedback_to(entry, now)
                        router._send_reports_to(entry, now)
                        router._policy_for(entry, now)
                    await trio.lowlevel.checkpoint()
            except Exception as exc:
                key = f"{kind}: {failure_key(exc)}"
                if key not in result.failures:
                    result.failures[key] = (data, traceback.format_exc())
        worker.close()
    result.seconds = time.monotonic() - start
    return result


# ---- the command ------------------------------------------------------------------------


def _report(results: Sequence[FuzzResult], out: Path | None) -> int:
    print(f"{'target':<16} {'cases':>10} {'cases/s':>9} {'failures':>9}")
    failed = 0
    for result in results:
        rate = result.cases / result.seconds if result.seconds else 0.0
        print(f"{result.target:<16} {result.cases:>10} {rate:>9.0f} {len(result.failures):>9}")
        for key, (data, text) in result.failures.items():
            failed += 1
            digest = hashlib.sha256(data).hexdigest()[:12]
            print(f"\n--- {result.target}: {key} (input {digest}: {data[:80].hex()})\n{text}")
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{result.target}-{digest}.bin").write_bytes(data)
    total = sum(r.cases for r in results)
    print(f"{'total':<16} {total:>10} {'':>9} {failed:>9}")
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per target [10]")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="random seed")
    parser.add_argument("--target", action="append", help="only these targets (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("fuzz-failures"),
                        help="where reproducers go [fuzz-failures/]")  # fmt: skip
    parser.add_argument("--live-seconds", type=float, default=None,
                        help="the live call target's length [--seconds]")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    import trio

    wanted = set(args.target or [])
    print(f"fuzz: {args.seconds:g} s per target, seed {args.seed}")
    results: list[FuzzResult] = []
    for target in pure_targets():
        if not wanted or target.name in wanted:
            results.append(fuzz_target(target, seconds=args.seconds, seed=args.seed))
            print(f"  {target.name}: {results[-1].cases} cases", file=sys.stderr)
    if not wanted or "router" in wanted:
        results.append(trio.run(lambda: fuzz_router(seconds=args.seconds, seed=args.seed)))
    if not wanted or "live" in wanted:
        live = args.live_seconds if args.live_seconds is not None else args.seconds
        results.extend(trio.run(lambda: fuzz_live_call(seconds=live, seed=args.seed)))
    return 1 if _report(results, args.out) else 0


if __name__ == "__main__":
    sys.exit(main())
