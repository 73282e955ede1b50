"""The fan-out benchmark: forwarded packets per core, against a bare Trio UDP relay.

``python scripts/bench_fanout.py`` (or ``python -m trio_sfu.bench``) runs, per scenario and
per worker count (``--workers 1,2``: ``trio-sfu serve --workers N``), a fresh ``trio-sfu
serve --dev`` and load peers (:mod:`trio_sfu.loadgen`, several processes) over 127.0.0.1,
then the same fan-out once through :mod:`trio_sfu.bench_relay`, the reference:

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
import contextlib
import datetime
import json
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Final, final

import trio

from trio_sfu.loadgen import HIST_BIN, LAYER_AUDIO, LAYER_R0, LAYER_R1, LAYER_R2, STREAMS

__all__ = [
    "COLUMNS",
    "LOSS_LIMIT",
    "P99_LIMIT",
    "WORKER_COLUMNS",
    "Scenario",
    "channel_round_trips",
    "latency_percentile",
    "main",
    "render_markdown",
    "run_benchmark",
    "set_affinity",
    "summarize_profile",
]

#: Capacity: the largest fan-out with less loss than this (percent) ...
LOSS_LIMIT: Final = 0.5
#: ... and a p99 latency below this (milliseconds).
P99_LIMIT: Final = 20.0
#: Load generators above this share of their core (percent) may be the bottleneck.
GENERATOR_BUSY: Final = 85.0
#: A run whose server waited this share of the window (percent) for its CPU, taken by
#: other processes, is "busy" (see --retry-busy).
BUSY_WAIT: Final = 5.0
#: Targets of issue 7.
TARGET_PPS: Final = 40_000
TARGET_RATIO: Final = 0.8
TARGET_P99_HALF: Final = 5.0
TARGET_RSS_PER_CONSUMER: Final = 50 * 1024
#: Target of issue 12: a worker process's CPU per forwarded packet, at most this much
#: (percent) above the one-worker server's.
TARGET_WORKER_OVERHEAD: Final = 10.0

FORWARDED_PPS: Final = sum(s.pps for s in STREAMS if s.layer in (LAYER_AUDIO, LAYER_R2))
#: Key, header, format: the columns of every results table (the smoke test checks them).
COLUMNS: Final[tuple[tuple[str, str, str], ...]] = (
    ("scenario", "scenario", "{}"),
    ("target", "path", "{}"),
    ("workers", "workers", "{}"),
    ("consumers", "consumers", "{}"),
    ("offered_pps", "offered pkt/s", "{:,.0f}"),
    ("forwarded_pps", "fwd pkt/s", "{:,.0f}"),
    ("us_per_packet", "server µs/pkt", "{:.1f}"),
    ("server_cpu", "server CPU %", "{:.0f}"),
    ("loss", "loss %", "{:.2f}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"),
    ("rss_mib", "server RSS MiB", "{:.1f}"),
    ("rss_per_consumer_kib", "RSS/consumer KiB", "{:.1f}"),
    ("generator_cpu", "gen CPU %", "{:.0f}"),
    ("server_wait", "server waited for CPU %", "{:.1f}"),
    ("other_load_server_core", "other load on server core %", "{:.0f}"),
    ("ratio", "SFU/relay", "{:.2f}"),
    ("pps_per_core", "pkt/s per core", "{:,.0f}"),
    ("cost_ratio", "relay µs/SFU µs", "{:.2f}"),
)
#: The same for the table of workers and signaling requests (a list value is one cell,
#: "a / b", in worker order).
WORKER_COLUMNS: Final[tuple[tuple[str, str, str], ...]] = (
    ("scenario", "scenario", "{}"),
    ("workers", "workers", "{}"),
    ("layout", "CPUs", "{}"),
    ("placement", "meetings on worker", "{}"),
    ("forwarded_pps", "fwd pkt/s", "{:,.0f}"),
    ("worker_forwarded_pps", "fwd pkt/s per worker", "{:,.0f}"),
    ("worker_cpu", "CPU % per worker", "{:.0f}"),
    ("worker_us_per_packet", "µs/pkt per worker", "{:.1f}"),
    ("vs_one_worker", "µs/pkt per worker vs 1 worker %", "{:+.1f}"),
    ("signaling_cpu", "signaling CPU %", "{:.1f}"),
    ("us_per_packet", "server µs/pkt (all processes)", "{:.1f}"),
    ("consume_p50_ms", "consume p50 ms", "{:.2f}"),
    ("consume_p99_ms", "consume p99 ms", "{:.2f}"),
    ("resume_p50_ms", "resumeConsumer p50 ms", "{:.2f}"),
    ("resume_p99_ms", "resumeConsumer p99 ms", "{:.2f}"),
    ("produce_p50_ms", "produce p50 ms", "{:.2f}"),
    ("produce_p99_ms", "produce p99 ms", "{:.2f}"),
    ("p99_ms", "latency p99 ms", "{:.2f}"),
)
#: Request types timed by the load generators -> the row keys of their p50/p99.
REQUESTS: Final = {
    "rtc:consume": "consume",
    "rtc:resumeConsumer": "resume",
    "rtc:produce": "produce",
}


#: Scenario kinds, in the order of the tables.
KINDS: Final = {"fanout": 0, "meeting": 1, "dual": 2, "floating": 3}


@final
class Scenario:
    """Who publishes and who subscribes in one run: ``kind`` "fanout", "meeting", "dual"
    (two fan-out meetings of ``size`` subscribers at once), or "floating" (a fan-out whose
    load generators float over every CPU: the reference of "dual")."""

    def __init__(self, kind: str, size: int) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown scenario kind {kind!r}")
        self.kind = kind
        self.size = size

    @property
    def name(self) -> str:
        if self.kind == "dual":
            return f"fanout-{self.size}x2"
        if self.kind == "floating":
            return f"fanout-{self.size}-floating"
        return f"{self.kind}-{self.size}"

    @property
    def meetings(self) -> int:
        return 2 if self.kind == "dual" else 1

    def peers(self) -> list[dict[str, Any]]:
        """The peers of one meeting."""
        if self.kind != "meeting":
            return [{"name": "pub", "publish": True, "subscribe": False}] + [
                {"name": f"sub{i}", "publish": False, "subscribe": True} for i in range(self.size)
            ]
        return [{"name": f"peer{i}", "publish": True, "subscribe": True} for i in range(self.size)]

    @property
    def receivers(self) -> int:
        """Subscribers of each published packet."""
        return self.size - 1 if self.kind == "meeting" else self.size

    @property
    def subscriptions(self) -> int:
        """(subscriber, publisher) pairs, in every meeting."""
        publishers = self.size if self.kind == "meeting" else 1
        return self.meetings * publishers * self.receivers

    @property
    def consumers(self) -> int:
        return 2 * self.subscriptions


# ---- processes ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    # After the command: state is field 3, utime 14 and stime 15 (proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpus_allowed(pid: int) -> str:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return "?"


def run_delay(pid: int) -> float:
    """Seconds process ``pid`` (its main thread) spent runnable but waiting for a CPU
    (``/proc/<pid>/schedstat``, second field); 0 where the kernel keeps no schedstats."""
    try:
        with open(f"/proc/{pid}/schedstat") as file:
            return int(file.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def core_busy(cpu: int | None) -> float:
    """Seconds CPU ``cpu`` was busy so far (``/proc/stat``: all but idle and iowait), by
    anyone; for the whole machine when ``cpu`` is None."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    with open("/proc/stat") as file:
        for line in file:
            fields = line.split()
            if fields[0] == name:
                ticks = [int(x) for x in fields[1:8]]
                return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _pinned(cpu: int | str | None, command: list[str], nice: int = 0) -> list[str]:
    if nice:
        command = ["nice", "-n", str(nice), *command]
    if cpu is None:
        return command
    return ["taskset", "-c", str(cpu), *command]


@final
class Child:
    """A child process speaking JSON lines on stdin/stdout; stderr goes to a log file."""

    def __init__(self, process: trio.Process, log: Path, name: str) -> None:
        self.process = process
        self.log = log
        self.name = name
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(message).encode() + b"\n")

    async def line(self) -> str:
        stdout = self.process.stdout
        assert stdout is not None
        while b"\n" not in self._buffer:
            data = await stdout.receive_some(1 << 20)
            if not data:
                tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
                raise RuntimeError(f"{self.name} exited early; its log ends:\n{tail}")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace")

    async def event(self, name: str) -> dict[str, Any]:
        while True:
            text = await self.line()
            if not text.startswith("{"):
                continue
            message: dict[str, Any] = json.loads(text)
            if message.get("event") == name:
                return message

    async def stop(self, grace: float = 5.0, leaving: float = 0.0) -> None:
        """Close its stdin and give it ``leaving`` seconds to exit by itself (a load
        generator does; a signal in the middle of its leaving can hold it up for the whole
        grace), then SIGINT, SIGTERM and SIGKILL, each after ``grace`` seconds."""
        process = self.process
        if process.stdin is not None:
            await process.stdin.aclose()
        if leaving:
            with trio.move_on_after(leaving):
                await process.wait()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if process.returncode is not None:
                break
            process.send_signal(sig)
            with trio.move_on_after(grace):
                await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


async def open_child(command: list[str], log: Path, name: str, env: dict[str, str]) -> Child:
    log_file = open(log, "wb")  # noqa: ASYNC230, SIM115 - a local file, closed below
    try:
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=env,
        )
    finally:
        log_file.close()
    return Child(process, log, name)


# ---- one run -----------------------------------------------------------------------------


def latency_percentile(hist: dict[int, int], fraction: float) -> float | None:
    """The ``fraction`` quantile (0..1) of a latency histogram, in milliseconds."""
    total = sum(hist.values())
    if not total:
        return None
    rank = fraction * total
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return (index + 0.5) * HIST_BIN * 1e3
    return None


@final
class Options:
    def __init__(self, args: argparse.Namespace) -> None:
        self.window: float = args.window
        self.warmup: float = args.warmup
        self.server_cpu: int | None = None if args.no_pin else args.server_cpu
        self.generator_cpu: int | None = None if args.no_pin else args.generator_cpu
        #: Every CPU this process may use, for the workers and floating generators.
        self.cpus: list[int] = sorted(os.sched_getaffinity(0))
        self.peers_per_process: int = args.peers_per_process
        self.verbose: bool = args.verbose
        self.nice: int = args.nice
        self.retry_busy: int = args.retry_busy
        self.pacing: bool = not args.burst
        self.admin_token = secrets.token_hex(16)
        self.workdir = Path(tempfile.mkdtemp(prefix="trio-sfu-bench-"))

    def worker_cpus(self, count: int) -> list[int]:
        """The CPUs of ``count`` workers in placement order: the server's first, then the
        others in turn."""
        assert self.server_cpu is not None
        order = [self.server_cpu] + [c for c in self.cpus if c != self.server_cpu]
        return [order[i % len(order)] for i in range(count)]


def _server_env(admin_token: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRIO_SFU_WORKERS", None)  # --workers says it
    env.update(
        {
            "TRIO_SFU_MAX_PEERS_PER_MEETING": "100000",
            "TRIO_SFU_MAX_CONSUMERS_PER_PEER": "100000",
            "TRIO_SFU_REQUESTS_PER_SECOND": "100000",
            "TRIO_SFU_REQUEST_BURST": "100000",
            "TRIO_SFU_OUTGOING_QUEUE": "100000",
            "TRIO_SFU_ADMIN_TOKEN": admin_token,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


async def _start_target(
    target: str, opts: Options, name: str, workers: int
) -> tuple[Child, dict[str, Any]]:
    python = sys.executable
    log = opts.workdir / f"{name}-{target}-{workers}w-server.log"
    if target == "sfu":
        command = [python, "-m", "trio_sfu", "serve", "--dev", "--port", "0"]
        command += ["--workers", str(workers), "--log-level", "warning"]
    else:
        command = [python, "-m", "trio_sfu.bench_relay", "--max-seconds", "600"]
    child = await open_child(
        _pinned(opts.server_cpu, command, opts.nice),
        log,
        f"{target} server",
        _server_env(opts.admin_token),
    )
    with trio.fail_after(60):
        while True:
            text = await child.line()
            if target == "sfu" and "(WebSocket " in text:
                url = text.split("(WebSocket ", 1)[1].rstrip(")")
                http = text.split("listening on ", 1)[1].split(" ", 1)[0]
                return child, {"mode": "sfu", "url": url, "http": http, "meeting": "bench"}
            if target == "relay" and text.startswith("{"):
                port = json.loads(text)["port"]
                return child, {"mode": "relay", "relay": ["127.0.0.1", port]}


def _get_workers_blocking(http_url: str, token: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        f"{http_url.rstrip('/')}/v1/workers", headers={"Authorization": f"Bearer {token}"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only
    with opener.open(request, timeout=10) as answer:
        workers: list[dict[str, Any]] = json.loads(answer.read())["workers"]
    return workers


async def admin_workers(base_job: dict[str, Any], opts: Options) -> list[dict[str, Any]]:
    """The server's ``GET /v1/workers``: each worker's pid, load, counters and meetings."""
    return await trio.to_thread.run_sync(_get_workers_blocking, base_job["http"], opts.admin_token)


def _split(peers: list[dict[str, Any]], per_process: int) -> list[list[dict[str, Any]]]:
    count = max(1, math.ceil(len(peers) / per_process))
    groups: list[list[dict[str, Any]]] = [[] for _ in range(count)]
    for index, peer in enumerate(peers):
        groups[index % count].append(peer)
    return groups


async def _connect_peers(generators: list[Child]) -> list[dict[str, Any]]:
    """Steps 2-3 of the load generators' protocol for the generators of one meeting: every
    producer of the meeting to every generator, once all published; returns their
    ``ready`` events."""
    producers: dict[str, list[str]] = {}
    for child in generators:
        producers.update((await child.event("published"))["producers"])
    for child in generators:
        await child.send({"producers": producers})
    return [await child.event("ready") for child in generators]


async def _warm_up(
    base_job: dict[str, Any], opts: Options, name: str, meetings: int, cpu: int | str | None
) -> None:
    """A publisher and a subscriber join another meeting, send media for a second and
    leave, before the idle RSS is read: what the server loads or builds once, on its first
    peer (modules imported on first use, generated converters), is then not counted as
    memory per consumer. With several workers, one such meeting per worker, each set up
    once the one before is (so that each goes to the least loaded worker: another one)."""
    peers = [
        {"name": "warm-pub", "publish": True, "subscribe": False},
        {"name": "warm-sub", "publish": False, "subscribe": True},
    ]
    command = [sys.executable, "-m", "trio_sfu.loadgen", "--timeout", "120"]
    children: list[Child] = []
    try:
        for index in range(meetings):
            child = await open_child(
                _pinned(cpu, command, opts.nice),
                opts.workdir / f"{name}-warmup{index}.log",
                "warm-up peers",
                dict(os.environ, PYTHONUNBUFFERED="1"),
            )
            children.append(child)
            meeting = f"{base_job['meeting']}-warmup{index}"
            job = dict(base_job, meeting=meeting, peers=peers, seed=999 + index)
            await child.send(dict(job, concurrency=2, pacing=opts.pacing))
            with trio.fail_after(60):
                await _connect_peers([child])
        start = time.monotonic() + 0.2
        for child in children:
            await child.send({"start": start, "window": [start, start + 1.0], "stop": start + 1.0})
        with trio.fail_after(60):
            for child in children:
                await child.event("result")
    finally:
        for child in children:
            await child.stop(leaving=3.0)
    await trio.sleep(0.5)  # the server closes what they left


def _quantile(values: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` quantile (0..1) of ``values``, nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def _request_times(ready: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per request type: how many, and p50/p99 in milliseconds (the generators' ``ready``
    events)."""
    times: dict[str, list[float]] = {}
    for event in ready:
        for rtype, values in (event.get("requests") or {}).items():
            times.setdefault(rtype, []).extend(values)
    return {
        rtype: {
            "count": len(values),
            "p50_ms": _quantile(values, 0.5),
            "p99_ms": _quantile(values, 0.99),
        }
        for rtype, values in sorted(times.items())
    }


def _other_load(
    affinity: dict[int, int | None],
    spent: dict[int, float],
    busy: dict[int, float],
    window: float,
) -> dict[int, float]:
    """Per CPU, the share of the window (percent) it was busy with something else than our
    processes (``affinity``: pid -> its one CPU, or None when it floats over all of
    ``busy``; ``spent``: CPU seconds per pid; ``busy``: seconds each CPU was busy). With a
    floating process, what is not ours is spread evenly over the CPUs."""
    if any(cpu is None for cpu in affinity.values()):
        other = sum(busy.values()) - sum(spent[pid] for pid in affinity)
        return dict.fromkeys(busy, max(0.0, other / len(busy) / window * 100))
    return {
        cpu: max(
            0.0,
            (seconds - sum(spent[pid] for pid, own in affinity.items() if own == cpu))
            / window
            * 100,
        )
        for cpu, seconds in busy.items()
    }


async def run_one(
    scenario: Scenario, target: str, opts: Options, workers: int = 1, profile: bool = False
) -> dict[str, Any]:
    """One scenario through the SFU with ``workers`` workers (``target="sfu"``) or the
    relay; the result row."""
    server, base_job = await _start_target(target, opts, scenario.name, workers)
    generators: list[Child] = []
    meeting_of: list[int] = []  # per generator, its meeting
    spy: trio.Process | None = None
    # The generators' CPU: their own, or every CPU when two workers forward (see above).
    floating = target == "sfu" and (
        scenario.kind == "floating" or (workers > 1 and scenario.meetings > 1)
    )
    generator_cpu: int | str | None = opts.generator_cpu
    if floating and generator_cpu is not None:
        generator_cpu = ",".join(str(c) for c in opts.cpus)
    worker_pids = {0: server.pid}  # worker index -> pid (the server itself: in process)
    worker_cpus: dict[int, int | None] = {0: opts.server_cpu}
    placement: list[list[int]] = [[0] for _ in range(scenario.meetings)]
    out_before: dict[int, int] = {}
    out_after: dict[int, int] = {}
    try:
        if target == "sfu":
            info = await admin_workers(base_job, opts)
            worker_pids = {int(w["index"]): int(w["pid"]) for w in info}
            await _warm_up(base_job, opts, scenario.name, len(info), generator_cpu)
        in_process = list(worker_pids.values()) == [server.pid]
        server_pids = [server.pid] + ([] if in_process else list(worker_pids.values()))
        await trio.sleep(0.3)
        rss_idle = sum(rss_bytes(pid) for pid in server_pids)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        ready: list[dict[str, Any]] = []
        setup_started = time.monotonic()
        for meeting in range(scenario.meetings):
            # One meeting after the other: the next one is placed seeing this one's load.
            children: list[Child] = []
            for group in _split(scenario.peers(), opts.peers_per_process):
                index = len(generators)
                command = [sys.executable, "-m", "trio_sfu.loadgen", "--timeout", "400"]
                log = opts.workdir / f"{scenario.name}-{target}-{workers}w-gen{index}.log"
                child = await open_child(
                    _pinned(generator_cpu, command, opts.nice), log, f"load generator {index}", env
                )
                generators.append(child)
                meeting_of.append(meeting)
                children.append(child)
                job = dict(base_job, meeting=f"{base_job.get('meeting', 'bench')}-{meeting}")
                await child.send(
                    dict(job, peers=group, seed=index, concurrency=8, pacing=opts.pacing)
                )
            with trio.fail_after(60 + 0.5 * len(scenario.peers())):
                ready += await _connect_peers(children)
        setup_seconds = time.monotonic() - setup_started
        consumers = sum(int(event["consumers"]) for event in ready)
        if target == "sfu":
            info = await admin_workers(base_job, opts)
            holders: dict[str, list[int]] = {}
            for w in info:
                for name in w.get("meetings", []):
                    holders.setdefault(name, []).append(int(w["index"]))
                out_before[int(w["index"])] = int(w["counters"]["packets_out"])
            placement = [
                holders.get(f"{base_job['meeting']}-{m}", [0]) for m in range(scenario.meetings)
            ]
            if not in_process and opts.server_cpu is not None:
                order = placement[0] + [i for i in sorted(worker_pids) if i not in placement[0]]
                for index, cpu in zip(order, opts.worker_cpus(len(order)), strict=True):
                    set_affinity(worker_pids[index], {cpu})
                    worker_cpus[index] = cpu
        start = time.monotonic() + 0.5
        w0 = start + opts.warmup
        w1 = w0 + opts.window
        stop = w1 + 0.3
        for child in generators:
            await child.send({"start": start, "window": [w0, w1], "stop": stop})
        offset = trio.current_time() - time.monotonic()
        await trio.sleep_until(w0 + offset)
        pids = server_pids + [g.pid for g in generators]
        before = {pid: cpu_seconds(pid) for pid in pids}
        cores_before = {cpu: core_busy(cpu) for cpu in opts.cpus}
        waits_before = {pid: run_delay(pid) for pid in pids}
        if profile:
            spy = await _start_py_spy(worker_pids[placement[0][0]], opts, scenario)
        await trio.sleep_until(w1 + offset)
        after = {pid: cpu_seconds(pid) for pid in pids}
        cores_after = {cpu: core_busy(cpu) for cpu in opts.cpus}
        waits_after = {pid: run_delay(pid) for pid in pids}
        rss = sum(rss_bytes(pid) for pid in server_pids)
        cpu_list = cpus_allowed(server.pid)
        if target == "sfu":
            for w in await admin_workers(base_job, opts):
                out_after[int(w["index"])] = int(w["counters"]["packets_out"])
        results = []
        with trio.fail_after(30):
            for child in generators:
                results.append(await child.event("result"))
        profile_text = None
        if spy is not None:
            with trio.fail_after(30):
                await spy.wait()
            spy = None
            profile_text = (opts.workdir / "profile.txt").read_text()
    finally:
        if spy is not None:
            spy.kill()
        with trio.CancelScope(shield=True):
            for child in generators:
                await child.stop(leaving=3.0)
            await server.stop()
    window = w1 - w0
    received = [sum(r["received"][layer] for r in results) for layer in range(4)]
    sent: dict[str, list[int]] = {}  # "meeting/publisher" -> packets sent, per layer
    for meeting, r in zip(meeting_of, results, strict=True):
        sent.update((f"{meeting}/{name}", v) for name, v in r["sent_in_window"].items())
    forwarded = received[LAYER_AUDIO] + received[LAYER_R2]
    expected = sum(s[LAYER_AUDIO] + s[LAYER_R2] for s in sent.values()) * scenario.receivers
    # What each worker forwarded: its meetings' packets, as their subscribers counted them
    # (a meeting on several workers split by their packets_out counters).
    by_meeting = [0] * scenario.meetings
    for meeting, r in zip(meeting_of, results, strict=True):
        by_meeting[meeting] += r["received"][LAYER_AUDIO] + r["received"][LAYER_R2]
    worker_forwarded = dict.fromkeys(worker_pids, 0.0)
    for meeting, on in enumerate(placement):
        shares = {i: max(0, out_after.get(i, 0) - out_before.get(i, 0)) for i in on}
        total = sum(shares.values())
        for i in on:
            share = shares[i] / total if total else 1 / len(on)
            worker_forwarded[i] = worker_forwarded.get(i, 0.0) + by_meeting[meeting] * share
    hist: dict[int, int] = {}
    for r in results:
        for index, count in r["hist"].items():
            hist[int(index)] = hist.get(int(index), 0) + count
    spent = {pid: after[pid] - before[pid] for pid in pids}
    server_cpu = sum(spent[pid] for pid in server_pids)
    generator_cpu_seconds = sum(spent[g.pid] for g in generators)
    order = sorted(worker_pids)
    worker_seconds = [spent[worker_pids[i]] for i in order]
    requests = _request_times(ready)
    row: dict[str, Any] = {
        "scenario": scenario.name,
        "kind": scenario.kind,
        "size": scenario.size,
        "target": target,
        "workers": workers if target == "sfu" else None,
        "consumers": consumers if target == "sfu" else scenario.subscriptions,
        "offered_pps": expected / window,
        "forwarded_pps": forwarded / window,
        "us_per_packet": server_cpu / forwarded * 1e6 if forwarded else None,
        "server_cpu": server_cpu / window * 100,
        "loss": max(0.0, 100 * (1 - forwarded / expected)) if expected else None,
        "p50_ms": latency_percentile(hist, 0.5),
        "p99_ms": latency_percentile(hist, 0.99),
        "rss_mib": rss / 2**20,
        "rss_per_consumer_kib": (
            (rss - rss_idle) / 1024 / consumers if target == "sfu" and consumers else None
        ),
        "generator_cpu": generator_cpu_seconds / window * 100,
        "generators": len(generators),
        "wrong_layer": received[LAYER_R0] + received[LAYER_R1],
        "late": sum(r["late"] for r in results),
        "publisher_send_failed": sum(r["send_failed"] for r in results),
        "keyframes": sum(r["keyframes"] for r in results),
        "setup_seconds": setup_seconds,
        "window": window,
        "server_cpus_allowed": cpu_list,
        "srtp_profiles": sorted({p for r in results for p in r.get("srtp_profiles", [])}),
        "ratio": None,
        "cost_ratio": None,
        "pps_per_core": forwarded / server_cpu if server_cpu and forwarded else None,
        "signaling_cpu": None if in_process else spent[server.pid] / window * 100,
        "worker_pids": [worker_pids[i] for i in order],
        "worker_cpus": [worker_cpus.get(i) for i in order],
        "placement": _placement_text(placement) if target == "sfu" else None,
        "meetings_on": placement,
        "worker_cpu": [s / window * 100 for s in worker_seconds] if target == "sfu" else None,
        "worker_forwarded_pps": (
            [worker_forwarded[i] / window for i in order] if target == "sfu" else None
        ),
        "worker_us_per_packet": (
            [
                s / worker_forwarded[i] * 1e6 if worker_forwarded[i] else None
                for i, s in zip(order, worker_seconds, strict=True)
            ]
            if target == "sfu"
            else None
        ),
        "vs_one_worker": None,
        "requests": requests,
    }
    for rtype, key in REQUESTS.items():
        timed = requests.get(rtype, {})
        row[f"{key}_p50_ms"] = timed.get("p50_ms")
        row[f"{key}_p99_ms"] = timed.get("p99_ms")
    row["layout"] = _layout_text(
        opts, in_process, [worker_cpus.get(i) for i in order], generator_cpu, target
    )
    row["generator_bound"] = row["generator_cpu"] >= GENERATOR_BUSY
    # How long the server waited, runnable, for its core: the share of the window other
    # processes took from it (a starved server's loss and latency are not its own). With
    # workers, the longest wait of the signaling process and the forwarding workers.
    forwarding = [server.pid] + [
        worker_pids[i] for i in order if worker_forwarded[i] and not in_process
    ]
    row["server_wait"] = max(
        (waits_after[pid] - waits_before[pid]) / window * 100 for pid in forwarding
    )
    row["generator_wait"] = (
        sum(waits_after[g.pid] - waits_before[g.pid] for g in generators) / window * 100
    )
    if opts.server_cpu is not None and opts.generator_cpu is not None:
        # What else ran on the cores meanwhile (other processes of the machine; also
        # kernel work such as softirqs not charged to our processes).
        affinity: dict[int, int | None] = {server.pid: opts.server_cpu}
        if not in_process:
            affinity.update((worker_pids[i], worker_cpus.get(i, opts.server_cpu)) for i in order)
        for g in generators:
            affinity[g.pid] = None if floating else opts.generator_cpu
        other = _other_load(
            affinity,
            spent,
            {cpu: cores_after[cpu] - cores_before[cpu] for cpu in opts.cpus},
            window,
        )
        row["other_load_server_core"] = other.get(opts.server_cpu)
        row["other_load_generator_core"] = other.get(opts.generator_cpu)
    else:
        row["other_load_server_core"] = row["other_load_generator_core"] = None
    if profile_text is not None:
        row["profile"] = profile_text
    return row


def _placement_text(placement: list[list[int]]) -> str:
    """Meeting 0's workers, then meeting 1's...: ``w0`` or ``w1, w0``."""
    return ", ".join("+".join(f"w{i}" for i in on) for on in placement)


def _layout_text(
    opts: Options,
    in_process: bool,
    worker_cpus: list[int | None],
    generator_cpu: int | str | None,
    target: str,
) -> str:
    if opts.server_cpu is None:
        return "unpinned"
    if target != "sfu":
        return f"relay {opts.server_cpu}, gen {generator_cpu}"
    if in_process:
        return f"server {opts.server_cpu}, gen {generator_cpu}"
    workers = ", ".join(f"w{i} {cpu}" for i, cpu in enumerate(worker_cpus))
    return f"sig {opts.server_cpu}, {workers}, gen {generator_cpu}"


async def _start_py_spy(pid: int, opts: Options, scenario: Scenario) -> trio.Process | None:
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        print("py-spy is not installed (pip install -e '.[dev]'): no profile", file=sys.stderr)
        return None
    out = opts.workdir / "profile.txt"
    command = [spy, "record", "-p", str(pid), "-d", str(max(1, int(opts.window) - 1))]
    command += ["-r", "250", "-f", "raw", "--nonblocking", "-o", str(out)]
    return await trio.lowlevel.open_process(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


# ---- profile summary ---------------------------------------------------------------------


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``; package paths shortened."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/trio_sfu/", "/site-packages/", "/lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


def summarize_profile(raw: str, top: int = 25) -> list[tuple[str, float, float]]:
    """py-spy's raw (collapsed) stacks -> ``(function, self %, total %)``, by self time."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count
    if not total:
        return []
    ranked = sorted(own.items(), key=lambda item: -item[1])[:top]
    return [(name, 100 * n / total, 100 * inclusive[name] / total) for name, n in ranked]


# ---- the whole benchmark -------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return " / ".join(_fmt(item, spec) for item in value)
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return spec.format(value)


def format_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]] = COLUMNS
) -> list[str]:
    headers = [header for _, header, _ in columns]
    body = [[_fmt(row.get(key), spec) for key, _, spec in columns] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row, cells in zip(rows, body, strict=True):
        if row.get("generator_bound"):
            cells[0] += " ⚠"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _workers(row: dict[str, Any]) -> int:
    """A row's worker count (reports from before workers had one)."""
    return int(row.get("workers") or 1)


def base_workers(rows: Sequence[dict[str, Any]]) -> int:
    """The worker count of the issue 7 targets and capacity: 1 when it ran."""
    counts = {_workers(r) for r in rows if r["target"] == "sfu"}
    return 1 if 1 in counts or not counts else min(counts)


def _within_limits(row: dict[str, Any]) -> bool:
    return (
        row["loss"] is not None
        and row["loss"] < LOSS_LIMIT
        and row["p99_ms"] is not None
        and row["p99_ms"] < P99_LIMIT
    )


def _starved(row: dict[str, Any]) -> bool:
    """Other processes took the server's core for more than BUSY_WAIT of the window: the
    row's loss and latency say nothing about the server's capacity."""
    return (row.get("server_wait") or 0.0) > BUSY_WAIT


def _fanout_rows(rows: Sequence[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    return [
        r for r in rows if r["target"] == "sfu" and r["kind"] == "fanout" and _workers(r) == workers
    ]


def capacity(rows: Sequence[dict[str, Any]], workers: int | None = None) -> dict[str, Any]:
    """The largest passing fan-out with ``workers`` workers (default: :func:`base_workers`),
    whether it is only a lower bound, and what stopped it. Runs whose server was starved
    of its core count neither way."""
    if workers is None:
        workers = base_workers(rows)
    of_count = _fanout_rows(rows, workers)
    fanout = sorted((r for r in of_count if not _starved(r)), key=lambda r: r["size"])
    best: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    for row in fanout:
        ok = _within_limits(row)
        if ok and failed is None:
            best = row
        elif not ok and failed is None:
            failed = row
    return {
        "workers": workers,
        "starved": sorted(r["scenario"] for r in of_count if _starved(r)),
        "subscribers": best["size"] if best else None,
        "forwarded_pps": best["forwarded_pps"] if best else None,
        "lower_bound": failed is None,
        "first_failure": failed["scenario"] if failed else None,
        "failure_generator_bound": bool(failed and failed["generator_bound"]),
    }


def targets(rows: Sequence[dict[str, Any]], cap: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Issue 7's targets, on the runs with ``cap["workers"]`` workers (one)."""
    workers = int(cap.get("workers") or 1)
    rows = [r for r in rows if r["target"] != "sfu" or _workers(r) == workers]
    sfu_fanout = _fanout_rows(rows, workers)
    out: list[tuple[str, str, bool]] = []
    best_pps = max((r["forwarded_pps"] for r in sfu_fanout), default=0.0)
    ok_rows = [
        r
        for r in sfu_fanout
        if r["loss"] is not None and r["loss"] < LOSS_LIMIT and (r["p99_ms"] or 1e9) < P99_LIMIT
    ]
    best_ok = max((r["forwarded_pps"] for r in ok_rows), default=0.0)
    per_core = [r["pps_per_core"] for r in sfu_fanout if r.get("pps_per_core")]
    best_core = max(per_core, default=0.0)
    out.append(
        (
            f"≥ {TARGET_PPS:,} forwarded SRTP pkt/s in (a) (within the loss/p99 limits)",
            f"{best_ok:,.0f} pkt/s (most delivered in any (a) run: {best_pps:,.0f}; "
            f"by CPU cost, one whole core: {best_core:,.0f})",
            best_ok >= TARGET_PPS,
        )
    )
    ratios = [r["ratio"] for r in sfu_fanout if r.get("ratio") is not None]
    costs = [r["cost_ratio"] for r in sfu_fanout if r.get("cost_ratio") is not None]
    if ratios:
        low = min(ratios)
        cost_text = f"; by CPU cost {min(costs):.2f}-{max(costs):.2f}" if costs else ""
        out.append(
            (
                f"SFU/relay ≥ {TARGET_RATIO}",
                f"{low:.2f} (lowest of (a), by throughput{cost_text})",
                low >= TARGET_RATIO,
            )
        )
    if cap["subscribers"]:
        half = cap["subscribers"] / 2
        candidates = [r for r in sfu_fanout if not _starved(r)] or sfu_fanout
        near = min(candidates, key=lambda r: abs(r["size"] - half))
        p99 = near["p99_ms"]
        out.append(
            (
                f"p99 < {TARGET_P99_HALF:g} ms at half of capacity",
                f"{_fmt(p99, '{:.2f}')} ms at {near['scenario']}",
                p99 is not None and p99 < TARGET_P99_HALF,
            )
        )
    measured = [
        r
        for r in rows
        if r["target"] == "sfu"
        and _workers(r) == workers
        and r["kind"] in ("fanout", "meeting")
        and r["rss_per_consumer_kib"] is not None
    ]
    if measured:
        worst = max(r["rss_per_consumer_kib"] for r in measured)
        parts = []
        for kind, name in (("fanout", "(a)"), ("meeting", "(b)")):
            of_kind = [r for r in measured if r["kind"] == kind]
            if of_kind:
                top = max(of_kind, key=lambda r: r["rss_per_consumer_kib"])
                parts.append(
                    f"{name} at most {top['rss_per_consumer_kib']:.1f} ({top['scenario']})"
                )
        out.append(
            (
                f"RSS < {TARGET_RSS_PER_CONSUMER // 1024} KiB per consumer",
                f"{worst:.1f} KiB, the largest of all runs: {'; '.join(parts)}",
                worst * 1024 < TARGET_RSS_PER_CONSUMER,
            )
        )
    return out


# ---- workers -----------------------------------------------------------------------------


def _one_worker_reference(
    rows: Sequence[dict[str, Any]], row: dict[str, Any]
) -> dict[str, Any] | None:
    """The one-worker run a worker of ``row`` compares with: the same scenario; for two
    fan-out meetings, the one-worker run of one such meeting (the same load per worker)
    with the load generators laid out as in ``row`` (``fanout-N-floating``), or else
    ``fanout-N``."""
    names = [row["scenario"]]
    if row["kind"] == "dual":
        names = [f"fanout-{row['size']}-floating", f"fanout-{row['size']}"]
    for scenario in names:
        for other in rows:
            if other["target"] == "sfu" and _workers(other) == 1 and other["scenario"] == scenario:
                return other
    return None


def annotate_workers(rows: Sequence[dict[str, Any]]) -> None:
    """Each run with several workers: ``vs_one_worker``, per worker, how much more (percent)
    CPU it spent per forwarded packet than the one-worker server did in
    :func:`_one_worker_reference` (None for a worker that forwarded nothing)."""
    for row in rows:
        if row["target"] != "sfu" or _workers(row) == 1:
            continue
        reference = _one_worker_reference(rows, row)
        base = reference["us_per_packet"] if reference else None
        per_worker = row.get("worker_us_per_packet") or []
        row["vs_one_worker"] = [
            (value / base - 1) * 100 if value is not None and base else None for value in per_worker
        ]


def worker_targets(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """Issue 12's target: every forwarding worker within TARGET_WORKER_OVERHEAD of one
    worker's cost per packet, for one meeting ((a), (b)) and for two ((c), where the load
    generators share the workers' cores); runs whose load generators were saturated, or
    whose one-worker reference's were, are left out (the server then ran at another load).
    Then what several workers forwarded in (c)."""
    out: list[tuple[str, str, bool]] = []
    for kinds, name in (
        (("fanout", "meeting"), "one meeting, (a) and (b)"),
        (("dual",), "two meetings, (c)"),
    ):
        pairs: list[tuple[str, int, float]] = []
        left_out: list[str] = []
        for row in rows:
            if row["target"] != "sfu" or row["kind"] not in kinds or _workers(row) == 1:
                continue
            reference = _one_worker_reference(rows, row)
            if row["generator_bound"] or (reference and reference["generator_bound"]):
                left_out.append(row["scenario"])
                continue
            pairs += [
                (row["scenario"], _workers(row), delta)
                for delta in row.get("vs_one_worker") or []
                if delta is not None
            ]
        if not pairs and not left_out:
            continue
        skipped = (
            f"; left out (load generators saturated): {', '.join(left_out)}" if left_out else ""
        )
        target = f"µs/pkt per forwarding worker ≤ 1 worker's + {TARGET_WORKER_OVERHEAD:g} %, {name}"
        if not pairs:
            out.append((target, f"no run to compare{skipped}", False))
            continue
        worst = max(pairs, key=lambda p: p[2])
        within = [p for p in pairs if p[2] <= TARGET_WORKER_OVERHEAD]
        out.append(
            (
                target,
                f"{len(within)} of {len(pairs)} workers within; worst {worst[2]:+.1f} % "
                f"({worst[0]}, {worst[1]} workers); "
                f"range {min(p[2] for p in pairs):+.1f} to {worst[2]:+.1f} %{skipped}",
                len(within) == len(pairs),
            )
        )
    for row in rows:
        if row["target"] != "sfu" or row["kind"] != "dual" or _workers(row) == 1:
            continue
        one = next(
            (
                r
                for r in rows
                if r["target"] == "sfu" and _workers(r) == 1 and r["scenario"] == row["scenario"]
            ),
            None,
        )
        busy = [w for w in row.get("worker_forwarded_pps") or [] if w]
        out.append(
            (
                f"{row['scenario']}: both meetings forwarded, each by its own worker",
                f"{row['forwarded_pps']:,.0f} pkt/s with {_workers(row)} workers "
                f"({len(busy)} forwarding: {_fmt(row['worker_forwarded_pps'], '{:,.0f}')}) "
                f"vs {_fmt(one['forwarded_pps'] if one else None, '{:,.0f}')} with 1; "
                f"loss {_fmt(row['loss'], '{:.2f}')} % vs "
                f"{_fmt(one['loss'] if one else None, '{:.2f}')} %",
                len(busy) >= min(2, _workers(row)) and (row["loss"] or 0.0) < LOSS_LIMIT,
            )
        )
    return out


# ---- the channel's own cost --------------------------------------------------------------


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Move every thread of process ``pid`` to ``cpus`` (``taskset -a -p``)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(task), cpus)


async def channel_round_trips(
    calls: int, cpu: int | None = None, worker_cpu: int | None = None
) -> dict[str, Any]:
    """``calls`` get_stats and ``calls`` consume (each consumer closed again, untimed) on
    one router with two transports and an audio producer: on an in-process engine
    (:func:`~trio_sfu.engine.worker.open_worker`) and through one worker process
    (:func:`~trio_sfu.engine.pool.open_worker_pool`); p50/p99/mean microseconds on this
    process's clock. This process runs on ``cpu`` meanwhile and the worker process on
    ``worker_cpu`` (None: wherever they may)."""
    from trio_sfu.client.synthetic import audio_rtp_parameters
    from trio_sfu.engine.pool import PoolSettings, open_worker_pool
    from trio_sfu.engine.worker import open_worker

    async def measure(engine: Any) -> dict[str, Any]:
        router_id = await engine.create_router(lambda event: None)
        send = (await engine.create_webrtc_transport(router_id)).transport_id
        recv = (await engine.create_webrtc_transport(router_id)).transport_id
        producer = await engine.produce(send, "audio", audio_rtp_parameters(ssrc=1111))
        caps = engine.router_rtp_capabilities(router_id)
        stats: list[float] = []
        consume: list[float] = []
        for _ in range(calls):
            started = time.perf_counter()
            await engine.get_stats(send)
            stats.append((time.perf_counter() - started) * 1e6)
        for _ in range(calls):
            started = time.perf_counter()
            info = await engine.consume(recv, producer, caps, paused=True)
            consume.append((time.perf_counter() - started) * 1e6)
            await engine.close_consumer(info.consumer_id)
        await engine.close_router(router_id)
        return {
            name: {
                "p50_us": _quantile(values, 0.5),
                "p99_us": _quantile(values, 0.99),
                "mean_us": sum(values) / len(values),
            }
            for name, values in (("get_stats", stats), ("consume", consume))
        }

    previous = os.sched_getaffinity(0)
    if cpu is not None:
        set_affinity(os.getpid(), {cpu})
    try:
        async with open_worker() as worker:
            in_process = await measure(worker)
        async with open_worker_pool(PoolSettings(workers=1, log_level="warning")) as pool:
            if worker_cpu is not None:
                for handle in pool.live_workers():
                    assert handle.pid is not None
                    set_affinity(handle.pid, {worker_cpu})
            through_channel = await measure(pool)
    finally:
        set_affinity(os.getpid(), previous)
    return {
        "calls": calls,
        "cpu": cpu,
        "worker_cpu": worker_cpu,
        "in_process": in_process,
        "worker_process": through_channel,
    }


async def _channel_layouts(calls: int, opts: Options) -> list[dict[str, Any]]:
    """:func:`channel_round_trips` with the worker on this process's CPU (as the signaling
    process and the forwarding worker run in the fan-out runs), then on another CPU."""
    cpu = opts.server_cpu
    if cpu is None:
        return [await channel_round_trips(calls)]
    layouts = [await channel_round_trips(calls, cpu, cpu)]
    other = next((c for c in opts.cpus if c != cpu), None)
    if other is not None:
        layouts.append(await channel_round_trips(calls, cpu, other))
    return layouts


def render_markdown(report: dict[str, Any], compare: dict[str, Any] | None = None) -> str:
    """docs/performance.md from a report (and optionally a previous one for before/after)."""
    rows = report["rows"]
    counts = report.get("workers") or [1]
    several = [n for n in counts if n > 1]
    server_line = (
        f"- Server: `trio-sfu serve --workers N` for N = {', '.join(str(n) for n in counts)}, "
        "with its defaults otherwise (one RTC port per worker, shared by its transports). "
        f"1 worker: one process pinned with `taskset -c {report['server_cpu']}`; load "
        f"generators pinned to CPU {report['generator_cpu']}"
    )
    if several:
        server_line += (
            f". {' and '.join(str(n) for n in several)} workers: the signaling process and "
            f"the worker holding the (first) meeting on CPU {report['server_cpu']}, the other "
            "worker(s) on the other CPU(s) (every thread, once the meetings are placed); "
            f"the load generators stay on CPU {report['generator_cpu']} (sharing it with the "
            "second worker, idle in a one-meeting run) except in the two-meeting runs (c), "
            "where they float over every CPU: on one CPU beside a forwarding worker they "
            "would not fit. There they share cores with the workers, which costs the "
            "workers CPU time per packet too (caches, context switches, waiting for the "
            "core): (c) with several workers is compared with (c'), one worker at the same "
            "load beside the same floating load generators"
        )
    server_line += f"; {report['peers_per_process']} peers per process"
    lines = [
        "# Performance: the fan-out benchmark",
        "",
        "<!-- GENERATED by `python scripts/bench_fanout.py --write-docs docs/performance.md`: "
        "do not edit by hand, rerun the benchmark. -->",
        "",
        f"- Date: {report['date']}",
        f"- Commit: `{report['commit']}`{' (with uncommitted changes)' if report['dirty'] else ''}",
        f"- Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"{report['machine']['system']}; Python {report['machine']['python']}, "
        f"trio {report['machine']['trio']}, pylibsrtp {report['machine']['pylibsrtp']}",
        server_line,
        f"- SRTP profile negotiated: {', '.join(report['srtp_profiles']) or '-'}",
        f"- Window: {report['window']:g} s of measurement after {report['warmup']:g} s of warm-up"
        + (f"; server and generators at niceness {report['nice']}" if report.get("nice") else ""),
        f"- Command: `{report['command']}`",
        *[
            f"- Rerun on {rerun['date']} (commit `{rerun['commit']}`), in place of the "
            f"first runs: {', '.join(rerun['runs'])}; `{rerun['command']}`"
            for rerun in report.get("reruns") or []
        ],
        "",
        "Scenarios: (a) `fanout-N`, one publisher and N subscribers; (b) `meeting-P`, P peers "
        "all publishing and subscribing to each other; (c) `fanout-Nx2`, two fan-out meetings "
        "of N subscribers at once (a meeting lives on one worker: with two workers, each "
        "forwards one); (c') `fanout-N-floating`, the reference of (c): one fan-out meeting "
        "of N on one worker, the load generators floating over every CPU as in (c) with "
        "several workers (the same load per worker, the same neighbours on its core). "
        "Load per publisher: Opus 50 pkt/s (100 B) and simulcast VP8 r0 15, r1 40, r2 150 "
        "pkt/s (about 1,160 B), a keyframe every 3 s and on PLI. "
        + (
            "Video leaves each publisher through a pacer as a browser's does (WebRTC's paced "
            "sender: a leaky bucket at 2.5 times the video bitrate; the five packets of an "
            "r2 frame about 2 ms apart). "
            if report.get("pacing", False)
            else "Each video frame is sent in one burst (`--burst`: no pacer). "
        )
        + "Subscribers take r2 and "
        f"audio ({FORWARDED_PPS:g} pkt/s per subscription). The relay is a bare Trio UDP relay "
        "(`await recvfrom`, `await sendto` per destination, no crypto, no parsing) at the same "
        "fan-out; its publishers send only audio and r2, so that it forwards the same "
        "packets/s. It runs once per scenario (it has no workers), not in (c).",
        "",
        "Columns: *workers* `--workers` of the server (1: the media in the server process); "
        "*fwd pkt/s* what the subscribers received of the packets sent in the "
        "window, per second; *server µs/pkt* the CPU time (user + system, "
        "`/proc/<pid>/stat`) of every server process (signaling and workers) per forwarded "
        "packet; *server CPU %* theirs over the window (above 100 with several workers); "
        "*loss %* against what the publishers "
        "sent; *p50/p99* latency from the publisher's send to the datagram's arrival at the "
        "subscriber's socket (the kernel's receive timestamp, `SO_TIMESTAMPNS`, so that the "
        "generators' own scheduling is left out), on one clock (the relay's row is the "
        "baseline of what the load generators and the kernel add); *server RSS* of every "
        "server process together; *RSS/consumer* that "
        "RSS's growth from idle (after a warm-up peer pair per worker joined, sent media and "
        "left in another meeting) divided by consumers (transports, sessions and "
        "buffers included: in a meeting, each publisher's NACK repair history of its "
        "forwarded packets is counted once and shared by only P-1 subscribers, which "
        "dominates at small P); *gen CPU %* the load generators' CPU (⚠: "
        f"≥ {GENERATOR_BUSY:g} % of one core, the generators may be the bottleneck of that "
        "row); *other "
        "load on server core* what else kept the server's core busy during the window (other "
        "processes of this shared machine, and kernel work not charged to our processes; "
        "spread evenly over the cores when the generators float); "
        "*server waited for CPU* how long the server (with workers: the signaling process or "
        "a forwarding worker, the longest) was runnable but waiting for its core "
        "(`/proc/<pid>/schedstat`): where it is more than a few percent, other processes "
        "took the core from it and that row's loss and latency are not the server's own; "
        "*pkt/s per core* forwarded packets per second of server CPU time (what one whole "
        "core would forward at this cost per packet: robust to a busy machine); *relay "
        "µs/SFU µs* the same comparison with the relay by CPU cost instead of throughput.",
        "",
        "## Results",
        "",
        *format_table(rows),
        "",
    ]
    lines += _workers_section(report)
    base = base_workers(rows)
    by_count = report.get("capacity_by_workers") or {str(base): report["capacity"]}
    lines += ["## Capacity", ""]
    for count, cap in sorted(by_count.items(), key=lambda item: int(item[0])):
        lines += _capacity_lines(cap, int(count))
    lines += [
        "",
        f"## Targets (issue 7, {base} worker{'s' if base > 1 else ''})",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for name, measured, met in report["targets"]:
        lines.append(f"| {name} | {measured} | {'yes' if met else 'no'} |")
    lines.append("")
    if report.get("worker_targets"):
        lines += ["## Targets (issue 12)", "", "| target | measured | met |", "|---|---|---|"]
        for name, measured, met in report["worker_targets"]:
            lines.append(f"| {name} | {measured} | {'yes' if met else 'no'} |")
        lines.append("")
    if compare is not None:
        lines += _comparison(compare, report)
    if report.get("profile"):
        prof = report["profile"]
        lines += [
            "## Where the server's time goes",
            "",
            f"py-spy, {prof['scenario']} with {prof.get('workers', 1)} worker(s), sampling "
            f"the forwarding process during the window ({prof['samples']} samples of busy "
            "time). *self*: samples in the function "
            "itself; *total*: with what it calls.",
            "",
            "| function | self % | total % |",
            "|---|---|---|",
        ]
        for name, own, total in prof["top"]:
            lines.append(f"| `{name}` | {own:.1f} | {total:.1f} |")
        lines.append("")
    notes = report.get("notes") or []
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(lines)


def _capacity_lines(cap: dict[str, Any], workers: int) -> list[str]:
    who = f"{workers} worker{'s' if workers > 1 else ''}"
    lines: list[str] = []
    if cap["subscribers"]:
        bound = " (a lower bound: every fan-out tried passed)" if cap["lower_bound"] else ""
        lines.append(
            f"- {who}: highest scenario (a) load with loss < {LOSS_LIMIT:g} % and p99 < "
            f"{P99_LIMIT:g} ms (one meeting: one worker forwards it): "
            f"**{cap['subscribers']} subscribers, {cap['forwarded_pps']:,.0f} forwarded "
            f"pkt/s**{bound}."
        )
    else:
        lines.append(f"- {who}: no scenario (a) run stayed within the limits.")
    if cap.get("starved"):
        lines.append(
            f"  Not counted (the server waited > {BUSY_WAIT:g} % of the window for its core, "
            f"taken by other processes of this shared machine): {', '.join(cap['starved'])}."
        )
    if cap["first_failure"]:
        lines.append(
            f"  First run past the limits: {cap['first_failure']}"
            + (
                " (its load generators were saturated: the figure may be theirs)."
                if cap["failure_generator_bound"]
                else "."
            )
        )
    return lines


def _workers_section(report: dict[str, Any]) -> list[str]:
    rows = [r for r in report["rows"] if r["target"] == "sfu"]
    if not any("worker_cpu" in r for r in rows):
        return []
    lines = [
        "## Workers and signaling requests",
        "",
        "Per run with the SFU: *CPUs* where `taskset` put the server (`server`: the one "
        "process of `--workers 1`; `sig`: the signaling process; `wN`: worker N) and the "
        "load generators (`gen`); *meetings on worker* the worker of each meeting (from "
        "`GET /v1/workers`); then, per worker in index order (`a / b`), what it forwarded "
        "(its meetings' packets as their subscribers counted them), its CPU % and its CPU "
        "µs per packet it forwarded (`-`: it forwarded nothing), and how that compares "
        "with the one-worker server's µs/pkt in the same scenario (for (c), in (c') "
        "`fanout-N-floating`: the same load per worker, the same layout of the load "
        "generators); *signaling CPU %* "
        "the signaling process alone (in the server with one worker); *server µs/pkt* "
        "every process together. The request columns: the time from sending "
        "`rtc:consume`, `rtc:resumeConsumer` or `rtc:produce` to reading its answer, as "
        "the load generators saw it while the peers were set up (up to 8 requests per "
        "generator process in flight, so queueing at the server is included); with "
        "several workers each of them is a round trip to a worker process over its "
        "Unix-socket channel.",
        "",
        *format_table(rows, WORKER_COLUMNS),
        "",
    ]
    layouts = report.get("channel") or []
    if layouts:
        lines += [
            "The channel alone (`--channel-calls`): one request at a time, "
            f"{layouts[0]['calls']} of each, on one router with two transports and an audio "
            "producer (each consumer closed again, untimed), timed by the caller: the "
            "in-process engine (`open_worker`) against one worker process behind the "
            "channel (`open_worker_pool`). The caller ran on CPU "
            f"{_fmt(layouts[0].get('cpu'), '{}')}; *worker on CPU* where the worker process "
            "did (the same CPU is the layout of the runs above: the signaling process and the "
            "forwarding worker share a core).",
            "",
            "| call | worker on CPU | in process p50 µs | p99 µs | mean µs "
            "| through the channel p50 µs | p99 µs | mean µs | added per call (mean) µs |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for layout in layouts:
            for name in ("get_stats", "consume"):
                inner = layout["in_process"][name]
                outer = layout["worker_process"][name]
                cells = [
                    _fmt(layout.get("worker_cpu"), "{}"),
                    _fmt(inner["p50_us"], "{:.0f}"),
                    _fmt(inner["p99_us"], "{:.0f}"),
                    _fmt(inner["mean_us"], "{:.0f}"),
                    _fmt(outer["p50_us"], "{:.0f}"),
                    _fmt(outer["p99_us"], "{:.0f}"),
                    _fmt(outer["mean_us"], "{:.0f}"),
                    _fmt(outer["mean_us"] - inner["mean_us"], "{:+.0f}"),
                ]
                lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _comparison(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    old = {(r["scenario"], r["target"], _workers(r)): r for r in before["rows"]}
    lines = [
        "## Before and after",
        "",
        f"Before: commit `{before['commit']}` ({before['date']})"
        + (f", {before['label']}" if before.get("label") else "")
        + f"; after: this run{', ' + after['label'] if after.get('label') else ''}. "
        "Runs with the same number of workers (before worker processes: 1).",
        "",
        *_method_change(before, after),
        "| scenario | workers | fwd pkt/s before → after | server µs/pkt before → after "
        "| p99 ms before → after | loss % before → after | RSS/consumer KiB before → after |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in after["rows"]:
        if row["target"] != "sfu":
            continue
        prev = old.get((row["scenario"], "sfu", _workers(row)))
        if prev is None:
            continue
        cells = []
        for key, spec in (
            ("forwarded_pps", "{:,.0f}"),
            ("us_per_packet", "{:.1f}"),
            ("p99_ms", "{:.2f}"),
            ("loss", "{:.2f}"),
            ("rss_per_consumer_kib", "{:.1f}"),
        ):
            cells.append(f"{_fmt(prev.get(key), spec)} → {_fmt(row.get(key), spec)}")
        lines.append(f"| {row['scenario']} | {_workers(row)} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _method(report: dict[str, Any]) -> str:
    load = "a paced load" if report.get("pacing", False) else "each video frame in one burst"
    clock = report.get("latency_clock", "when the load generator read the packet")
    return f"{load}, latency taken {clock}"


def _method_change(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """A warning when the two reports measured latency differently (older reports have
    no ``pacing`` / ``latency_clock``: bursts, read time)."""
    if _method(before) == _method(after):
        return []
    return [
        f"Measured differently: before with {_method(before)}; after with {_method(after)}. "
        "The p99 columns do not compare like for like; packets/s and µs/pkt do, within "
        "the noise of this shared machine (about ±15 % from run to run).",
        "",
    ]


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


def _print_row(row: dict[str, Any]) -> None:
    cells = [f"{header}={_fmt(row.get(key), spec)}" for key, header, spec in COLUMNS[1:]]
    if row["target"] == "sfu":
        cells += [
            f"{header}={_fmt(row.get(key), spec)}"
            for key, header, spec in WORKER_COLUMNS[2:]
            if key not in ("forwarded_pps", "us_per_packet", "p99_ms", "vs_one_worker")
        ]
    mark = "  [generators saturated]" if row.get("generator_bound") else ""
    print(f"{row['scenario']:>12}: " + ", ".join(cells) + mark, flush=True)


async def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    opts = Options(args)
    counts: list[int] = args.workers
    scenarios = (
        [Scenario("fanout", n) for n in args.fanout]
        + [Scenario("meeting", p) for p in args.meeting]
        + [Scenario("dual", n) for n in args.dual]
    )
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    relays: dict[str, dict[str, Any]] = {}

    async def run_quiet(scenario: Scenario, target: str, workers: int) -> dict[str, Any]:
        """One run; again (up to --retry-busy times) while the machine was busy, keeping
        the run with the least other load."""
        best: dict[str, Any] | None = None
        for attempt in range(opts.retry_busy + 1):
            row = await run_one(scenario, target, opts, workers)
            other = max(
                row["other_load_server_core"] or 0.0, row["other_load_generator_core"] or 0.0
            )
            row["attempts"] = attempt + 1
            if best is None or other < best["_other"]:
                best = row
                best["_other"] = other
            if other <= BUSY_WAIT:
                break
            if attempt < opts.retry_busy:
                print(
                    f"{scenario.name} ({target}, {workers} workers): waited {other:.0f} % "
                    "for a CPU, again",
                    flush=True,
                )
                await trio.sleep(5)
        assert best is not None
        best.pop("_other", None)
        return best

    async def run_pair(scenario: Scenario, workers: int) -> dict[str, Any]:
        """The SFU with ``workers`` workers, and the relay (once per scenario)."""
        row = await run_quiet(scenario, "sfu", workers)
        _print_row(row)
        rows.append(row)
        if not args.no_relay and scenario.kind != "dual":
            relay = relays.get(scenario.name)
            if relay is None:
                relay = relays[scenario.name] = await run_quiet(scenario, "relay", 0)
                _print_row(relay)
                rows.append(relay)
            if relay["forwarded_pps"]:
                row["ratio"] = row["forwarded_pps"] / relay["forwarded_pps"]
            if relay["us_per_packet"] and row["us_per_packet"]:
                row["cost_ratio"] = relay["us_per_packet"] / row["us_per_packet"]
        return row

    for scenario in scenarios:
        for workers in counts:
            await run_pair(scenario, workers)
    if 1 in counts and max(counts) > 1:
        for size in args.dual:  # (c)'s references: one worker, the generators as in (c)
            row = await run_quiet(Scenario("floating", size), "sfu", 1)
            _print_row(row)
            rows.append(row)
    for workers in counts:
        if args.capacity_max:
            size = max(args.fanout, default=10)
            while True:
                last = _fanout_rows(rows, workers)
                top = max(last, key=lambda r: r["size"]) if last else None
                if top is None or top["generator_bound"]:
                    break
                if not (top["loss"] is not None and top["loss"] < LOSS_LIMIT):
                    break
                if not (top["p99_ms"] is not None and top["p99_ms"] < P99_LIMIT):
                    break
                size = int(size * 1.5)
                if size > args.capacity_max:
                    break
                await run_pair(Scenario("fanout", size), workers)
        for _ in range(args.bisect):
            # Between the largest fan-out that passed and the smallest that failed.
            fanout = [r for r in _fanout_rows(rows, workers) if not _starved(r)]
            passed = [r["size"] for r in fanout if _within_limits(r)]
            failed = [r["size"] for r in fanout if not _within_limits(r)]
            if not passed or not failed:
                break
            low = max(passed)
            high = min((f for f in failed if f > low), default=None)
            if high is None or high - low < max(4, low // 8):
                break
            await run_pair(Scenario("fanout", (low + high) // 2), workers)
    rows.sort(key=lambda r: (KINDS[r["kind"]], r["size"], r["target"] != "sfu", r["workers"] or 0))
    annotate_workers(rows)
    profile = None
    if args.profile:
        scenario = Scenario("fanout", args.profile)
        workers = 1 if 1 in counts else counts[0]
        row = await run_one(scenario, "sfu", opts, workers, profile=True)
        raw = row.pop("profile", None)
        if raw:
            ranked = summarize_profile(raw)
            samples = sum(
                int(line.rpartition(" ")[2])
                for line in raw.splitlines()
                if line.rpartition(" ")[2].isdigit()
            )
            profile = {
                "scenario": scenario.name,
                "workers": workers,
                "samples": samples,
                "top": ranked,
            }
            notes.append(
                f"The profiled run ({scenario.name}, {workers} worker(s), py-spy attached) is "
                f"not in the table: {_fmt(row['forwarded_pps'], '{:,.0f}')} pkt/s, "
                f"{_fmt(row['us_per_packet'], '{:.1f}')} µs/pkt under the sampler."
            )
    channel = None
    if args.channel_calls:
        channel = await _channel_layouts(args.channel_calls, opts)
    for row in rows:
        where = _where(row)
        if row["wrong_layer"]:
            notes.append(
                f"{where}: {row['wrong_layer']} packets of r0/r1 reached subscribers "
                "(a layer switch in the window)."
            )
        if row["publisher_send_failed"]:
            notes.append(
                f"{where}: the publishers' sockets refused {row['publisher_send_failed']} packets."
            )
        if (
            row["target"] == "sfu"
            and row["kind"] == "dual"
            and (row["workers"] or 1) > 1
            and len({tuple(on) for on in row.get("meetings_on") or []}) < 2
        ):
            notes.append(f"{where}: both meetings went to the same worker.")
    base = base_workers(rows)
    cap = capacity(rows, base)
    sfu_rows = [r for r in rows if r["target"] == "sfu" and _workers(r) == base]
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git("rev-parse", "--short", "HEAD") or "?",
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "label": args.label,
        "machine": {
            "cpu": _cpu_model(),
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
        "capacity": cap,
        "capacity_by_workers": {str(n): capacity(rows, n) for n in counts},
        "notes": notes,
        "profile": profile,
        "channel": channel,
    }
    report["targets"] = targets(rows, cap)
    report["worker_targets"] = worker_targets(rows)
    shutil.rmtree(opts.workdir, ignore_errors=True)
    return report


def _where(row: dict[str, Any]) -> str:
    """How notes name a run: ``fanout-50 (sfu, 2 workers)``."""
    workers = f", {row['workers']} workers" if row.get("workers") else ""
    return f"{row['scenario']} ({row['target']}{workers})"


def _row_key(row: dict[str, Any]) -> tuple[str, str, int | None]:
    return (row["scenario"], row["target"], row.get("workers"))


def finish_report(report: dict[str, Any]) -> dict[str, Any]:
    """Recompute from the rows what depends on them all: each worker's comparison with one
    worker, capacity per worker count, the targets."""
    rows = report["rows"]
    annotate_workers(rows)
    report["capacity"] = capacity(rows)
    counts = report.get("workers") or sorted({_workers(r) for r in rows if r["target"] == "sfu"})
    report["capacity_by_workers"] = {str(n): capacity(rows, n) for n in counts}
    report["targets"] = targets(rows, report["capacity"])
    report["worker_targets"] = worker_targets(rows)
    return report


def merge_reports(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with the runs of ``new`` instead of its runs of the same scenario, path and
    worker count (``--update``: rerun what other load disturbed); SFU/relay ratios taken
    again against the relay row now in the report; the rerun listed in ``reruns``."""
    replaced = {_row_key(r) for r in new["rows"]}
    gone = [r for r in old["rows"] if _row_key(r) in replaced]
    rows = [r for r in old["rows"] if _row_key(r) not in replaced] + new["rows"]
    relays = {r["scenario"]: r for r in rows if r["target"] == "relay"}
    for row in rows:
        relay = relays.get(row["scenario"])
        if row["target"] != "sfu" or relay is None:
            continue
        if relay["forwarded_pps"]:
            row["ratio"] = row["forwarded_pps"] / relay["forwarded_pps"]
        if relay["us_per_packet"] and row["us_per_packet"]:
            row["cost_ratio"] = relay["us_per_packet"] / row["us_per_packet"]
    rows.sort(
        key=lambda r: (KINDS[r["kind"]], r["size"], r["target"] != "sfu", r.get("workers") or 0)
    )
    stale = tuple(_where(r) + ":" for r in gone)
    report = dict(old)
    report["rows"] = rows
    report["notes"] = [n for n in old.get("notes") or [] if not n.startswith(stale)]
    report["notes"] += new.get("notes") or []
    report["workers"] = sorted(set(old.get("workers") or [1]) | set(new.get("workers") or []))
    for key in ("profile", "channel"):
        if new.get(key):
            report[key] = new[key]
    report["reruns"] = [
        *(old.get("reruns") or []),
        {
            "date": new["date"],
            "commit": new["commit"],
            "command": new["command"],
            "runs": [_where(r) for r in new["rows"]],
        },
    ]
    return finish_report(report)


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_fanout", description=__doc__.split("\n", 1)[0] if __doc__ else None
    )
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
    return parser


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
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.write_docs:
        compare = json.loads(args.compare.read_text()) if args.compare else None
        text = render_markdown(report, compare)
        # The PlainTransport benchmark's section (trio_sfu.bench_plain) is kept as it was.
        from trio_sfu.bench_plain import DOCS_END, DOCS_START

        old = args.write_docs.read_text() if args.write_docs.exists() else ""
        if DOCS_START in old and DOCS_END in old:
            section = old[old.index(DOCS_START) : old.index(DOCS_END) + len(DOCS_END)]
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        args.write_docs.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
