"""The fan-out benchmark: forwarded packets per core, against a bare Trio UDP relay.

``python scripts/bench_fanout.py`` (or ``python -m trio_sfu.bench``) runs, per scenario and
per worker count (``--workers 1,2``: ``trio-sfu serve --workers N``), a fresh ``trio-sfu
serve --dev`` and load peers (:mod:`trio_sfu.bench.loadgen`, several processes) over 127.0.0.1,
then the same fan-out once through :mod:`trio_sfu.bench.relay`, the reference:

* (a) ``fanout-N``: one publisher (Opus + three simulcast VP8 layers), N subscribers taking
  r2 and audio (N = 10, 50, 100, 200 by default);
* (b) ``meeting-P``: P peers all publishing and consuming each other (P = 4, 8, 12);
* (c) ``fanout-Nx2``: two fan-out meetings of N subscribers at once (``--dual``; N = 50,
  100): a meeting lives on one worker, so this is the scenario in which two workers both
  forward (no relay run: the relay has no meetings);
* (c') ``fanout-N-floating``: (c)'s reference, one fan-out meeting of N on one worker with
  the load generators laid out as in (c) with several workers (floating over every CPU),
  so that a worker of (c) is compared with one worker at the same load and the same
  neighbours (run with ``--dual`` when the worker counts are 1 and more).

Pinning (``taskset``): with one worker the server is one process on CPU 0
(``--server-cpu``) and the load generators run on CPU 1 (``--generator-cpu``). With N
workers the signaling process and the worker holding the (first) meeting run on CPU 0 and
the other workers on the other CPUs in turn (all their threads, moved once the admin API,
``GET /v1/workers``, has said where the meetings went); the generators stay on CPU 1,
sharing it with the second worker, except in (c) with several workers, where they float
over every CPU (on CPU 1 beside a forwarding worker they would not fit), and in (c').

Per run: forwarded packets/s (as received by the subscribers, for packets sent in the
measurement window), server CPU µs per forwarded packet and CPU % (every server process,
signaling and workers, ``/proc/<pid>/stat`` over the window), per worker its CPU % and µs
per packet it forwarded (a meeting's packets are counted by its own subscribers; a meeting
spread over several workers would be split by the workers' ``packets_out`` counters), the
signaling process's CPU %, loss % (against what the publishers sent in the window),
latency p50/p99 (send time in the payload, one monotonic clock), server RSS (all its
processes) and RSS growth per consumer, the load generators' CPU % (at 85 % of their core
they are the bottleneck, and the row is marked), and how long each ``rtc:produce``,
``rtc:consume`` and ``rtc:resumeConsumer`` took as the clients saw it (p50/p99). Capacity
is the largest fan-out N whose loss stays under 0.5 % and p99 under 20 ms, per worker
count (``--capacity-max`` keeps going up past the list).

``--write-docs docs/performance.md`` writes the results as Markdown (never edit that file
by hand: rerun the benchmark), ``--json FILE`` keeps them for a later ``--compare FILE``
(before/after columns), ``--profile N`` samples the forwarding process with py-spy during
one extra ``fanout-N`` run and adds where its time goes, ``--channel-calls N`` times N
``get_stats`` and N ``consume`` calls on an in-process engine and through one worker
process (the channel's own cost). ``--quick`` is a smoke run of about a minute.

Every process is bounded in time and stops by itself; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, final

import trio

from trio_sfu.bench.channel import channel_layouts
from trio_sfu.bench.docs import write_fanout_docs
from trio_sfu.bench.figures import fmt
from trio_sfu.bench.options import Options
from trio_sfu.bench.procfs import cpu_model
from trio_sfu.bench.profile import profile_summary
from trio_sfu.bench.render import WORKER_COLUMNS, format_table, progress_line, render_markdown
from trio_sfu.bench.report import (
    BUSY_WAIT,
    annotate_workers,
    base_workers,
    capacity,
    fanout_rows,
    finish_report,
    merge_reports,
    row_workers,
    starved,
    targets,
    where,
    within_limits,
    worker_targets,
)
from trio_sfu.bench.run import run_one
from trio_sfu.bench.scenarios import KINDS, Scenario

__all__ = ["build_parser", "main", "run_benchmark"]


async def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Every scenario with every worker count (and the relay), (c)'s references, the runs
    that look for the capacity, the profile and the channel's cost: the report."""
    bench = _Benchmark(args)
    counts: list[int] = args.workers
    for scenario in bench.scenarios():
        for workers in counts:
            await bench.run_pair(scenario, workers)
    if 1 in counts and max(counts) > 1:
        for size in args.dual:  # (c)'s references: one worker, the generators as in (c)
            bench.add(await bench.run_quiet(Scenario("floating", size), "sfu", 1))
    for workers in counts:
        if args.capacity_max:
            await bench.raise_fanout(workers)
        for _ in range(args.bisect):
            if not await bench.bisect(workers):
                break
    rows = bench.rows
    rows.sort(key=lambda r: (KINDS[r["kind"]], r["size"], r["target"] != "sfu", r["workers"] or 0))
    annotate_workers(rows)
    profile = await bench.profiled_run() if args.profile else None
    channel = None
    if args.channel_calls:
        channel = await channel_layouts(args.channel_calls, bench.opts)
    bench.note_runs()
    report = _report(args, bench.opts, rows, bench.notes)
    report["profile"] = profile
    report["channel"] = channel
    report["targets"] = targets(rows, report["capacity"])
    report["worker_targets"] = worker_targets(rows)
    shutil.rmtree(bench.opts.workdir, ignore_errors=True)
    return report


@final
class _Benchmark:
    """The runs of one benchmark so far, and its notes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.opts = Options(args)
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        #: Scenario name -> its relay run (one per scenario, whatever the worker count).
        self.relays: dict[str, dict[str, Any]] = {}

    def scenarios(self) -> list[Scenario]:
        args = self.args
        return (
            [Scenario("fanout", n) for n in args.fanout]
            + [Scenario("meeting", p) for p in args.meeting]
            + [Scenario("dual", n) for n in args.dual]
        )

    def add(self, row: dict[str, Any]) -> None:
        print(progress_line(row), flush=True)
        self.rows.append(row)

    async def run_quiet(self, scenario: Scenario, target: str, workers: int) -> dict[str, Any]:
        """One run; again (up to --retry-busy times) while the machine was busy, keeping
        the run with the least other load."""
        retry_busy = self.opts.retry_busy
        best: dict[str, Any] | None = None
        for attempt in range(retry_busy + 1):
            row = await run_one(scenario, target, self.opts, workers)
            other = max(
                row["other_load_server_core"] or 0.0, row["other_load_generator_core"] or 0.0
            )
            row["attempts"] = attempt + 1
            if best is None or other < best["_other"]:
                best = row
                best["_other"] = other
            if other <= BUSY_WAIT:
                break
            if attempt < retry_busy:
                print(
                    f"{scenario.name} ({target}, {workers} workers): waited {other:.0f} % "
                    "for a CPU, again",
                    flush=True,
                )
                await trio.sleep(5)
        assert best is not None
        best.pop("_other", None)
        return best

    async def run_pair(self, scenario: Scenario, workers: int) -> dict[str, Any]:
        """The SFU with ``workers`` workers, and the relay (once per scenario)."""
        row = await self.run_quiet(scenario, "sfu", workers)
        self.add(row)
        if not self.args.no_relay and scenario.kind != "dual":
            relay = self.relays.get(scenario.name)
            if relay is None:
                relay = self.relays[scenario.name] = await self.run_quiet(scenario, "relay", 0)
                self.add(relay)
            if relay["forwarded_pps"]:
                row["ratio"] = row["forwarded_pps"] / relay["forwarded_pps"]
            if relay["us_per_packet"] and row["us_per_packet"]:
                row["cost_ratio"] = relay["us_per_packet"] / row["us_per_packet"]
        return row

    async def raise_fanout(self, workers: int) -> None:
        """Fan-outs ever larger (x1.5) past the list while they pass, up to
        --capacity-max."""
        size = max(self.args.fanout, default=10)
        while True:
            last = fanout_rows(self.rows, workers)
            top = max(last, key=lambda r: r["size"]) if last else None
            if top is None or top["generator_bound"] or not within_limits(top):
                break
            size = int(size * 1.5)
            if size > self.args.capacity_max:
                break
            await self.run_pair(Scenario("fanout", size), workers)

    async def bisect(self, workers: int) -> bool:
        """A fan-out between the largest that passed and the smallest that failed; False
        when there is none to try."""
        fanout = [r for r in fanout_rows(self.rows, workers) if not starved(r)]
        passed = [r["size"] for r in fanout if within_limits(r)]
        failed = [r["size"] for r in fanout if not within_limits(r)]
        if not passed or not failed:
            return False
        low = max(passed)
        high = min((f for f in failed if f > low), default=None)
        if high is None or high - low < max(4, low // 8):
            return False
        await self.run_pair(Scenario("fanout", (low + high) // 2), workers)
        return True

    async def profiled_run(self) -> dict[str, Any] | None:
        """One more ``fanout-N`` (``--profile N``) under py-spy: the report's profile (the
        run itself is only noted)."""
        counts: list[int] = self.args.workers
        scenario = Scenario("fanout", self.args.profile)
        workers = 1 if 1 in counts else counts[0]
        row = await run_one(scenario, "sfu", self.opts, workers, profile=True)
        raw = row.pop("profile", None)
        if not raw:
            return None
        self.notes.append(
            f"The profiled run ({scenario.name}, {workers} worker(s), py-spy attached) is "
            f"not in the table: {fmt(row['forwarded_pps'], '{:,.0f}')} pkt/s, "
            f"{fmt(row['us_per_packet'], '{:.1f}')} µs/pkt under the sampler."
        )
        return profile_summary(raw, scenario.name, workers)

    def note_runs(self) -> None:
        """Notes on runs that went otherwise than planned."""
        for row in self.rows:
            name = where(row)
            if row["wrong_layer"]:
                self.notes.append(
                    f"{name}: {row['wrong_layer']} packets of r0/r1 reached subscribers "
                    "(a layer switch in the window)."
                )
            if row["publisher_send_failed"]:
                self.notes.append(
                    f"{name}: the publishers' sockets refused {row['publisher_send_failed']} "
                    "packets."
                )
            if (
                row["target"] == "sfu"
                and row["kind"] == "dual"
                and (row["workers"] or 1) > 1
                and len({tuple(on) for on in row.get("meetings_on") or []}) < 2
            ):
                self.notes.append(f"{name}: both meetings went to the same worker.")


def _report(
    args: argparse.Namespace, opts: Options, rows: list[dict[str, Any]], notes: list[str]
) -> dict[str, Any]:
    """The report of the runs: how, where and when they ran, the rows, capacity."""
    counts: list[int] = args.workers
    base = base_workers(rows)
    sfu_rows = [r for r in rows if r["target"] == "sfu" and row_workers(r) == base]
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git("rev-parse", "--short", "HEAD") or "?",
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "label": args.label,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "trio": _version("trio"),
            "pylibsrtp": _version("pylibsrtp"),
        },
        "workers": counts,
        "server_cpu": opts.server_cpu,
        "generator_cpu": opts.generator_cpu,
        "server_cpus_allowed": sfu_rows[0]["server_cpus_allowed"] if sfu_rows else "?",
        "srtp_profiles": sorted(
            {p for r in rows if r["target"] == "sfu" for p in r["srtp_profiles"]}
        ),
        "peers_per_process": opts.peers_per_process,
        "nice": opts.nice,
        "pacing": opts.pacing,
        "latency_clock": "at the kernel's receive timestamp (SO_TIMESTAMPNS)",
        "window": opts.window,
        "warmup": opts.warmup,
        "command": args.command_line,
        "rows": rows,
        "capacity": capacity(rows, base),
        "capacity_by_workers": {str(n): capacity(rows, n) for n in counts},
        "notes": notes,
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_fanout", description=__doc__.split("\n", 1)[0] if __doc__ else None
    )
    _add_run_options(parser)
    _add_report_options(parser)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """What runs, and how."""
    parser.add_argument("--fanout", type=_sizes, default=[10, 50, 100, 200], help="(a) sizes")
    parser.add_argument("--meeting", type=_sizes, default=[4, 8, 12], help="(b) sizes")
    parser.add_argument(
        "--dual", type=_sizes, default=[50, 100], help="(c) sizes: two fan-out meetings of N"
    )
    parser.add_argument(
        "--workers", type=_sizes, default=[1, 2], help="server worker counts to run [1,2]"
    )
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured [10]")
    parser.add_argument("--warmup", type=float, default=3.5, help="seconds before [3.5]")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--generator-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--no-relay", action="store_true", help="skip the reference relay")
    parser.add_argument(
        "--nice", type=int, default=0, help="niceness of the server and generators [0]"
    )
    parser.add_argument(
        "--retry-busy",
        type=int,
        default=0,
        metavar="N",
        help="rerun a run up to N times while its server waits > 5 %% for its CPU",
    )
    parser.add_argument("--peers-per-process", type=int, default=50)
    parser.add_argument(
        "--burst", action="store_true", help="send each video frame in one burst (no pacer)"
    )
    parser.add_argument(
        "--capacity-max",
        type=int,
        default=0,
        help="keep raising the fan-out (x1.5) past the list while it passes, up to this",
    )
    parser.add_argument(
        "--bisect",
        type=int,
        default=2,
        metavar="K",
        help="then up to K fan-outs halfway between the last pass and the first failure [2]",
    )
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="py-spy fanout-N")
    parser.add_argument(
        "--channel-calls",
        type=int,
        default=2000,
        metavar="N",
        help="time N get_stats and N consume calls in process and through a worker [2000]",
    )


def _add_report_options(parser: argparse.ArgumentParser) -> None:
    """Where the report goes, and reports saved before."""
    parser.add_argument("--json", type=Path, help="write the report as JSON")
    parser.add_argument("--write-docs", type=Path, help="write the report as Markdown")
    parser.add_argument("--compare", type=Path, help="a previous --json report: before/after")
    parser.add_argument("--label", default="", help="a word on this run, for --compare")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="no run: write --write-docs from a saved --json report (capacity recomputed)",
    )
    parser.add_argument(
        "--update",
        type=Path,
        metavar="JSON",
        help="run the scenarios given and put them in place of the same runs of a saved "
        "--json report (rerun what other load disturbed); --json/--write-docs write the "
        "whole",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny and short")
    parser.add_argument("--verbose", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = "python scripts/bench_fanout.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if not args.workers or min(args.workers) < 1:
        parser.error("--workers: one or more counts, each at least 1")
    if args.quick:
        args.bisect = 0
        args.fanout = [2]
        args.meeting = [3]
        args.dual = [2]
        args.window = min(args.window, 2.0)
        args.warmup = min(args.warmup, 1.5)
        args.channel_calls = min(args.channel_calls, 200)
    if not args.no_pin and (shutil.which("taskset") is None or (os.cpu_count() or 1) < 2):
        print("taskset or a second CPU is missing: running unpinned", file=sys.stderr)
        args.no_pin = True
    if args.render:
        report = finish_report(json.loads(args.render.read_text()))
    elif args.update:
        old = json.loads(args.update.read_text())
        report = merge_reports(old, trio.run(run_benchmark, args))
    else:
        report = trio.run(run_benchmark, args)
    _print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.write_docs:
        compare = json.loads(args.compare.read_text()) if args.compare else None
        write_fanout_docs(args.write_docs, render_markdown(report, compare))
    return 0


def _print_report(report: dict[str, Any]) -> None:
    print()
    print("\n".join(format_table(report["rows"])))
    print()
    print(
        "\n".join(format_table([r for r in report["rows"] if r["target"] == "sfu"], WORKER_COLUMNS))
    )
    for count, cap in (report.get("capacity_by_workers") or {}).items():
        print(f"\ncapacity ({count} workers): {cap}")
    for name, measured, met in report["targets"] + (report.get("worker_targets") or []):
        print(f"target {'MET' if met else 'NOT MET'}: {name}: {measured}")
    if report.get("channel"):
        print(f"channel: {json.dumps(report['channel'])}")


if __name__ == "__main__":
    raise SystemExit(main())
