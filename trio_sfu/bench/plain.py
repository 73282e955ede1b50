"""The PlainTransport fan-out benchmark: ``scripts/bench_fanout.py --transport plain``.

The workload of mediasoup's published worker figures, so that the two can be compared side
by side: one producer on a PlainTransport fed plain RTP (or SRTP, AES-GCM) by a fast
generator, N consumers each on a PlainTransport of its own, sending to UDP sinks that never
read. The server (``trio-sfu serve --workers 1``: media in its own process) is pinned to
one core; the generator and this driver to the other. The input rate goes up step by step
until packets are lost; CPU comes from ``/proc/<pid>/stat``.

The generator is a Python process (:mod:`trio_sfu.bench.plain_generator`) that paces a
precomputed ring of VP8 packets (4 packets of ``--size`` bytes a frame, the first frame a
keyframe) with non-blocking ``sendto`` in batches, protecting each with SRTP on the fly in
SRTP mode. Each step: ``--step`` seconds at a fixed rate, then the server's
counters (``rtc:getStats``) say what it received and forwarded.

Columns: *in pkt/s* the generator's rate; *fwd pkt/s* the consumers' packets the server
handed to the kernel per second; *loss %* what did not go out of what went in times N
(kernel drops at the server's socket included); *server CPU %* of one core; *µs/pkt*
server CPU time per forwarded packet; *pkt/s per core* forwarded packets per second of
server CPU time.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, final

import trio

from trio_sfu.bench.docs import DOCS_END, DOCS_START, write_plain_section
from trio_sfu.bench.plain_generator import PAYLOAD_TYPE, SRTP_SUITE, SSRC
from trio_sfu.bench.procfs import core_busy, cpu_model, cpu_seconds
from trio_sfu.client.signaling import SignalingClient, open_signaling
from trio_sfu.ortc.plain import plain_rtp_capabilities, vp8_plain_rtp_parameters
from trio_sfu.ortc.types import RtpCapabilities
from trio_sfu.wire import structure_untrusted, unstructure

__all__ = ["build_parser", "main", "render_markdown", "run_benchmark"]

MEETING = "bench-plain"


class _Lines:
    """Lines from a process's stdout."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(4096)
            if not chunk:
                raise EOFError("the process ended")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()


async def _start_server(
    args: argparse.Namespace, nursery: trio.Nursery
) -> tuple[trio.Process, str]:
    command = [sys.executable, "-m", "trio_sfu", "serve", "--dev", "--port", "0"]
    command += ["--workers", "1", "--log-level", "warning"]
    if not args.no_pin:
        command = ["taskset", "-c", str(args.server_cpu), *command]
    env = dict(os.environ)
    env["TRIO_SFU_MAX_TRANSPORTS_PER_PEER"] = "64"
    env["TRIO_SFU_REQUESTS_PER_SECOND"] = "1000"
    env["TRIO_SFU_REQUEST_BURST"] = "1000"
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    assert process.stdout is not None
    lines = _Lines(process.stdout)
    with trio.fail_after(30):
        while True:
            line = await lines.next()
            found = re.search(r"WebSocket (ws://\S+?)\)", line)
            if found:
                return process, found.group(1)


async def _stats(sig: Any, entity_id: str) -> dict[str, Any]:
    stats: dict[str, Any] = (await sig.get_stats(entity_id))[0]
    return stats


async def _run_config(
    args: argparse.Namespace, ws_url: str, server_pid: int, consumers: int, mode: str
) -> dict[str, Any]:
    """One (N, mode): a meeting with the producer and N consumers; the rate stepped up
    until loss. Returns every step and the best lossless one."""
    srtp = mode == "srtp"
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(consumers)]
    try:
        for sink in sinks:
            sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sink.bind(("127.0.0.1", 0))
        async with open_signaling(ws_url) as sig:
            await sig.join(f"{MEETING}-{mode}-{consumers}", display_name="bench")
            key = os.urandom(28)
            key_b64 = base64.b64encode(key).decode()
            pub, sub_ids = await _set_up_meeting(sig, sinks, srtp, key_b64)
            process = await _open_generator(args, pub, srtp, key_b64)
            try:
                assert process.stdin is not None and process.stdout is not None
                lines = _Lines(process.stdout)
                with trio.fail_after(60):
                    assert await lines.next() == "READY"
                core = None if args.no_pin else args.server_cpu
                stepper = _Stepper(
                    sig, process, lines, pub["transportId"], sub_ids, server_pid, core
                )
                steps = await _climb(args, stepper, consumers, mode)
            finally:
                await _stop_generator(process)
            await sig.leave()
    finally:
        for sink in sinks:
            sink.close()
    lossless = [s for s in steps if s["loss"] <= args.loss and not s["generator_short"]]
    best = max(lossless, key=lambda s: s["fwd_pps"]) if lossless else None
    return {"mode": mode, "consumers": consumers, "steps": steps, "best": best}


async def _set_up_meeting(
    sig: SignalingClient, sinks: list[socket.socket], srtp: bool, key_b64: str
) -> tuple[dict[str, Any], list[str]]:
    """The producer on a comedia PlainTransport (the generator feeds it) and a consumer of
    it on a PlainTransport of its own toward each sink: (the producer's transport, the
    consumers' transport ids)."""
    options: dict[str, Any] = {"rtcp_mux": True}
    if srtp:
        options.update(enable_srtp=True, srtp_crypto_suite=SRTP_SUITE)
    pub = await sig.create_plain_transport(comedia=True, **options)
    await sig.connect_plain_transport(
        pub["transportId"],
        srtp_parameters={"cryptoSuite": SRTP_SUITE, "keyBase64": key_b64} if srtp else None,
    )
    producer_id = await sig.produce(
        pub["transportId"],
        "video",
        unstructure(vp8_plain_rtp_parameters(ssrc=SSRC, payload_type=PAYLOAD_TYPE)),
    )
    router_caps = structure_untrusted(await sig.get_router_rtp_capabilities(), RtpCapabilities)
    caps = unstructure(plain_rtp_capabilities(router_caps, feedback=False))
    sub_ids = []
    for sink in sinks:
        sub = await sig.create_plain_transport(**options)
        port = sink.getsockname()[1]
        await sig.connect_plain_transport(
            sub["transportId"],
            ip="127.0.0.1",
            port=port,
            srtp_parameters={"cryptoSuite": SRTP_SUITE, "keyBase64": key_b64} if srtp else None,
        )
        await sig.consume(producer_id, caps, transport_id=sub["transportId"], paused=False)
        sub_ids.append(sub["transportId"])
    return pub, sub_ids


async def _open_generator(
    args: argparse.Namespace, pub: dict[str, Any], srtp: bool, key_b64: str
) -> trio.Process:
    """The generator process (:mod:`trio_sfu.bench.plain_generator`), toward ``pub``."""
    generator = [sys.executable, "-m", "trio_sfu.bench.plain_generator"]
    generator += ["--dest", f"{pub['tuple']['localIp']}:{pub['tuple']['localPort']}"]
    generator += ["--size", str(args.size)]
    if not args.no_pin:
        generator += ["--cpu", str(args.generator_cpu)]
    if srtp:
        generator += ["--srtp-key", key_b64]
    return await trio.lowlevel.open_process(
        generator, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )


async def _stop_generator(process: trio.Process) -> None:
    if process.stdin is not None:
        with trio.move_on_after(1):
            await process.stdin.send_all(b"QUIT\n")
        await process.stdin.aclose()
    with trio.move_on_after(5):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


@final
class _Stepper:
    """Runs the generator at one rate for a while and reads what the server did meanwhile."""

    def __init__(
        self,
        sig: SignalingClient,
        process: trio.Process,
        lines: _Lines,
        pub_id: str,
        sub_ids: list[str],
        server_pid: int,
        core: int | None,
    ) -> None:
        self.sig = sig
        self.process = process
        self.lines = lines
        self.pub_id = pub_id
        self.sub_ids = sub_ids
        self.server_pid = server_pid
        #: The server's CPU, whose busy time is read (None: unpinned).
        self.core = core

    async def step(self, rate: float, seconds: float) -> dict[str, Any]:
        sig, core, server_pid, process = self.sig, self.core, self.server_pid, self.process
        assert process.stdin is not None
        before_in = (await _stats(sig, self.pub_id))["rtp_packets_in"]
        before_out = [(await _stats(sig, tid))["rtp_packets_out"] for tid in self.sub_ids]
        cpu0 = cpu_seconds(server_pid)
        core0 = core_busy(core) if core is not None else 0.0
        await process.stdin.send_all(f"RUN {rate:.1f} {seconds}\n".encode())
        with trio.fail_after(seconds + 30):
            words = (await self.lines.next()).split()
        await trio.sleep(0.3)  # what is queued drains
        cpu = cpu_seconds(server_pid) - cpu0
        busy = (core_busy(core) if core is not None else 0.0) - core0
        sent, elapsed = int(words[1]), float(words[2])
        received = (await _stats(sig, self.pub_id))["rtp_packets_in"]
        received -= before_in
        forwarded = 0
        for tid, before in zip(self.sub_ids, before_out, strict=True):
            forwarded += (await _stats(sig, tid))["rtp_packets_out"] - before
        expected = sent * len(self.sub_ids)
        return {
            "rate": rate,
            "in_pps": sent / elapsed,
            "received": received,
            "sent": sent,
            "forwarded": forwarded,
            "fwd_pps": forwarded / elapsed,
            "loss": max(0.0, 1 - forwarded / expected) if expected else 0.0,
            "cpu_percent": 100 * cpu / (elapsed + 0.3),
            "core_busy_percent": 100 * busy / (elapsed + 0.3),
            "us_per_pkt": 1e6 * cpu / forwarded if forwarded else None,
            "pps_per_core": forwarded / cpu if cpu > 0 else None,
            "generator_short": sent < 0.97 * rate * seconds,
        }


async def _climb(
    args: argparse.Namespace, stepper: _Stepper, consumers: int, mode: str
) -> list[dict[str, Any]]:
    """Steps of rising rate, from ``--start-output`` forwarded pkt/s, until one loses
    more than ``--loss`` or the generator falls short."""
    steps: list[dict[str, Any]] = []
    rate = max(args.start_output / consumers, 50.0)
    await stepper.step(rate, args.warmup)  # keyframe through, counters warm
    for _ in range(args.max_steps):
        result = await stepper.step(rate, args.step)
        steps.append(result)
        if args.verbose:
            print(f"  {mode} N={consumers}: {json.dumps(result)}", file=sys.stderr)
        if result["loss"] > args.loss or result["generator_short"]:
            break
        rate *= args.growth
    return steps


async def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        server, ws_url = await _start_server(args, nursery)
        try:
            results = []
            for mode in args.modes:
                for consumers in args.consumers:
                    print(f"plain benchmark: {mode}, N={consumers} ...", file=sys.stderr)
                    results.append(await _run_config(args, ws_url, server.pid, consumers, mode))
        finally:
            server.send_signal(2)
            with trio.move_on_after(15):
                await server.wait()
            if server.returncode is None:
                server.kill()
                await server.wait()
    return {"results": results, "meta": _meta(args)}


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    cpu = cpu_model()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit,
        "machine": f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}",
        "python": platform.python_version(),
        "trio": trio.__version__,
        "command": "python scripts/bench_fanout.py --transport plain "
        + " ".join(sys.argv[1:]).replace("--transport plain", "").strip(),
        "step": args.step,
        "loss": args.loss,
        "size": args.size,
        "server_cpu": None if args.no_pin else args.server_cpu,
        "generator_cpu": None if args.no_pin else args.generator_cpu,
    }


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        DOCS_START,
        "## PlainTransport fan-out (the workload of mediasoup's worker figures)",
        "",
        "<!-- GENERATED by `python scripts/bench_fanout.py --transport plain --write-docs "
        "docs/performance.md`: this section only; do not edit by hand. -->",
        "",
        f"- Date: {meta['date']}; commit `{meta['commit']}`",
        f"- Machine: {meta['machine']}; Python {meta['python']}, trio {meta['trio']}",
        f"- Server: `trio-sfu serve --workers 1` (media in its own process) pinned to CPU "
        f"{meta['server_cpu']}; the generator (Python, batched non-blocking `sendto`) and "
        f"the driver on CPU {meta['generator_cpu']}",
        f"- Command: `{meta['command']}`",
        "",
        f"One producer (VP8, {meta['size']}-byte packets, 4 a frame) on a PlainTransport "
        "(rtcp-mux, comedia), N consumers each on a PlainTransport of its own toward a UDP "
        "socket that never reads (its buffer full, the kernel drops there: the server's "
        "`sendto` cost is all paid). Consumers negotiate no NACK (no repair history kept). "
        "SRTP: AEAD_AES_128_GCM both ways (the generator protects, the server unprotects "
        f"once and protects per consumer). Rates go up by steps of {meta['step']} s until "
        f"more than {100 * meta['loss']:.1f} % is lost; the table gives the highest "
        "lossless step. *pkt/s per core* is forwarded packets per second of server CPU "
        "time (what one whole core would forward at that cost), *µs/pkt* server CPU time "
        "(user + system, `/proc/<pid>/stat`) per forwarded packet; *server core busy* the "
        "whole core's non-idle time (`/proc/stat`): the kernel's loopback delivery runs "
        "partly in softirq work that is not charged to the server (ksoftirqd), and other "
        "processes of this shared machine may run there too. *First lossy step* says how "
        "much of its loss was already lost at the server's socket (the kernel dropped it "
        "before the server read it: the server, or whatever else ran on its core, fell "
        "behind a burst); where the core was much busier than the server, other work "
        "took it, and the lossless rate of that row is the machine's, not the server's: "
        "*µs/pkt* and *pkt/s per core* are the figures to compare.",
        "",
        "| mode | N | in pkt/s | fwd pkt/s (lossless) | server CPU % | server core busy % | "
        "µs/pkt | pkt/s per core | first lossy step: in pkt/s, loss %, server CPU %, "
        "core busy % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in report["results"]:
        best = result["best"]
        lossy = [s for s in result["steps"] if s is not best and s["loss"] > meta["loss"]]
        first_lossy = "-"
        if lossy:
            step = lossy[0]
            lost_in = 1 - step["received"] / step["sent"] if step["sent"] else 0.0
            first_lossy = (
                f"{step['in_pps']:,.0f}, {100 * step['loss']:.2f} "
                f"({100 * lost_in:.2f} at the server's socket), "
                f"{step['cpu_percent']:.0f}, {step.get('core_busy_percent', 0):.0f}"
            )
        if best is None:
            lines.append(f"| {result['mode']} | {result['consumers']} | - | - | - | - | - | - | "
                         f"{first_lossy} |")  # fmt: skip
            continue
        lines.append(
            f"| {result['mode']} | {result['consumers']} | {best['in_pps']:,.0f} | "
            f"{best['fwd_pps']:,.0f} | {best['cpu_percent']:.0f} | "
            f"{best.get('core_busy_percent', 0):.0f} | "
            f"{best['us_per_pkt']:.1f} | {best['pps_per_core']:,.0f} | {first_lossy} |"
        )
    lines += ["", DOCS_END, ""]
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_fanout.py --transport plain", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--transport", choices=["plain"], default="plain")
    parser.add_argument("--consumers", type=_ints, default=[1, 10, 30], help="N [1,10,30]")
    parser.add_argument(
        "--modes", type=lambda t: t.split(","), default=["plain", "srtp"], help="plain,srtp"
    )
    parser.add_argument("--step", type=float, default=3.0, help="seconds per rate step [3]")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds first [1]")
    parser.add_argument("--growth", type=float, default=1.3, help="rate factor per step [1.3]")
    parser.add_argument(
        "--start-output", type=float, default=4000.0, help="first step's forwarded pkt/s [4000]"
    )
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--loss", type=float, default=0.001, help="lossless: at most [0.001]")
    parser.add_argument("--size", type=int, default=1100, help="RTP packet bytes [1100]")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--generator-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", type=Path, help="write the report as JSON")
    parser.add_argument("--write-docs", type=Path, help="put the table in this Markdown file")
    parser.add_argument("--quick", action="store_true", help="smoke run: N=1,2, short steps")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument(
        "--render", type=Path, help="no run: render a previous --json report (with --write-docs)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.consumers = [1, 2]
        args.step = 0.5
        args.warmup = 0.3
        args.max_steps = 2
    if args.render:
        report = json.loads(args.render.read_text())
    else:
        if not args.no_pin:
            os.sched_setaffinity(0, {args.generator_cpu})
        report = trio.run(run_benchmark, args)
    section = render_markdown(report)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.write_docs:
        write_plain_section(args.write_docs, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
