"""One run of the fan-out benchmark: the server under test, load generators in processes of
their own, one measurement window; what was read becomes a row (:mod:`trio_sfu.bench.row`).

Pinning and the window are described in :mod:`trio_sfu.bench.fanout`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, final

import trio

from trio_sfu.bench.children import Child, open_child
from trio_sfu.bench.options import Options, pinned
from trio_sfu.bench.procfs import (
    core_busy,
    cpu_seconds,
    cpus_allowed,
    rss_bytes,
    run_delay,
    set_affinity,
)
from trio_sfu.bench.profile import start_py_spy
from trio_sfu.bench.row import Readings, run_row
from trio_sfu.bench.scenarios import Scenario
from trio_sfu.bench.server import admin_workers, start_target

__all__ = ["run_one"]


async def run_one(
    scenario: Scenario, target: str, opts: Options, workers: int = 1, profile: bool = False
) -> dict[str, Any]:
    """One scenario through the SFU with ``workers`` workers (``target="sfu"``) or the
    relay; the result row."""
    server, base_job = await start_target(target, opts, scenario.name, workers)
    run = _Run(scenario, target, opts, workers, server, base_job)
    try:
        await run.set_up()
        readings = await run.measure(profile)
    finally:
        await run.stop()
    return run_row(readings, opts)


@final
class _Run:
    """The processes of one run and what is known of them so far."""

    def __init__(
        self,
        scenario: Scenario,
        target: str,
        opts: Options,
        workers: int,
        server: Child,
        base_job: dict[str, Any],
    ) -> None:
        self.scenario = scenario
        self.target = target
        self.sfu = target == "sfu"
        self.opts = opts
        self.workers = workers
        self.server = server
        self.base_job = base_job
        # The generators' CPU: their own, or every CPU when two workers forward.
        self.floating = self.sfu and (
            scenario.kind == "floating" or (workers > 1 and scenario.meetings > 1)
        )
        generator_cpu: int | str | None = opts.generator_cpu
        if self.floating and generator_cpu is not None:
            generator_cpu = ",".join(str(c) for c in opts.cpus)
        self.generator_cpu = generator_cpu
        self.generators: list[Child] = []
        self.meeting_of: list[int] = []  # per generator, its meeting
        self.ready: list[dict[str, Any]] = []
        self.setup_seconds = 0.0
        self.spy: trio.Process | None = None
        self.worker_pids = {0: server.pid}  # worker index -> pid (the server itself: in process)
        self.worker_cpus: dict[int, int | None] = {0: opts.server_cpu}
        self.placement: list[list[int]] = [[0] for _ in range(scenario.meetings)]
        self.out_before: dict[int, int] = {}
        self.out_after: dict[int, int] = {}
        self.server_pids = [server.pid]
        self.rss_idle = 0

    @property
    def in_process(self) -> bool:
        return list(self.worker_pids.values()) == [self.server.pid]

    async def set_up(self) -> None:
        """Warm the server up and read its idle memory; then the load generators, one
        meeting after the other (the next one is placed seeing this one's load), until
        every peer is ready; then where the meetings went, and the workers pinned."""
        opts = self.opts
        if self.sfu:
            info = await admin_workers(self.base_job, opts)
            self.worker_pids = {int(w["index"]): int(w["pid"]) for w in info}
            await _warm_up(self.base_job, opts, self.scenario.name, len(info), self.generator_cpu)
        if not self.in_process:
            self.server_pids += list(self.worker_pids.values())
        await trio.sleep(0.3)
        self.rss_idle = sum(rss_bytes(pid) for pid in self.server_pids)
        setup_started = time.monotonic()
        for meeting in range(self.scenario.meetings):
            await self._start_meeting(meeting)
        self.setup_seconds = time.monotonic() - setup_started
        if self.sfu:
            await self._place_workers()

    async def _start_meeting(self, meeting: int) -> None:
        """The load generators of one meeting, each with its share of the peers; their
        ``ready`` events once every peer consumes."""
        opts = self.opts
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        children: list[Child] = []
        for group in _split(self.scenario.peers(), opts.peers_per_process):
            index = len(self.generators)
            command = [sys.executable, "-m", "trio_sfu.bench.loadgen", "--timeout", "400"]
            log = (
                opts.workdir / f"{self.scenario.name}-{self.target}-{self.workers}w-gen{index}.log"
            )
            child = await open_child(
                pinned(self.generator_cpu, command, opts.nice), log, f"load generator {index}", env
            )
            self.generators.append(child)
            self.meeting_of.append(meeting)
            children.append(child)
            job = dict(self.base_job, meeting=f"{self.base_job.get('meeting', 'bench')}-{meeting}")
            await child.send(dict(job, peers=group, seed=index, concurrency=8, pacing=opts.pacing))
        with trio.fail_after(60 + 0.5 * len(self.scenario.peers())):
            self.ready += await _connect_peers(children)

    async def _place_workers(self) -> None:
        """Each meeting's workers and each worker's ``packets_out`` (admin API); worker
        processes pinned, the first meeting's on the server's CPU, the others in turn."""
        opts = self.opts
        holders: dict[str, list[int]] = {}
        for w in await admin_workers(self.base_job, opts):
            for name in w.get("meetings", []):
                holders.setdefault(name, []).append(int(w["index"]))
            self.out_before[int(w["index"])] = int(w["counters"]["packets_out"])
        meeting = self.base_job["meeting"]
        self.placement = [holders.get(f"{meeting}-{m}", [0]) for m in range(self.scenario.meetings)]
        if not self.in_process and opts.server_cpu is not None:
            first = self.placement[0]
            order = first + [i for i in sorted(self.worker_pids) if i not in first]
            for index, cpu in zip(order, opts.worker_cpus(len(order)), strict=True):
                set_affinity(self.worker_pids[index], {cpu})
                self.worker_cpus[index] = cpu

    async def measure(self, profile: bool) -> Readings:
        """Send the media; read every process and CPU at both ends of the window (py-spy
        on the forwarding process meanwhile with ``profile``); the generators' results."""
        opts = self.opts
        start = time.monotonic() + 0.5
        w0 = start + opts.warmup
        w1 = w0 + opts.window
        stop = w1 + 0.3
        for child in self.generators:
            await child.send({"start": start, "window": [w0, w1], "stop": stop})
        offset = trio.current_time() - time.monotonic()
        await trio.sleep_until(w0 + offset)
        pids = self.server_pids + [g.pid for g in self.generators]
        before, cores_before, waits_before = _sample(pids, opts.cpus)
        if profile:
            self.spy = await start_py_spy(self.worker_pids[self.placement[0][0]], opts)
        await trio.sleep_until(w1 + offset)
        after, cores_after, waits_after = _sample(pids, opts.cpus)
        rss = sum(rss_bytes(pid) for pid in self.server_pids)
        cpu_list = cpus_allowed(self.server.pid)
        if self.sfu:
            for w in await admin_workers(self.base_job, opts):
                self.out_after[int(w["index"])] = int(w["counters"]["packets_out"])
        results = []
        with trio.fail_after(30):
            for child in self.generators:
                results.append(await child.event("result"))
        return Readings(
            scenario=self.scenario,
            target=self.target,
            workers=self.workers,
            window=w1 - w0,
            ready=self.ready,
            results=results,
            meeting_of=self.meeting_of,
            setup_seconds=self.setup_seconds,
            consumers=sum(int(event["consumers"]) for event in self.ready),
            server_pid=self.server.pid,
            server_pids=self.server_pids,
            generator_pids=[g.pid for g in self.generators],
            worker_pids=self.worker_pids,
            worker_cpus=self.worker_cpus,
            placement=self.placement,
            out_before=self.out_before,
            out_after=self.out_after,
            spent={pid: after[pid] - before[pid] for pid in pids},
            busy={cpu: cores_after[cpu] - cores_before[cpu] for cpu in opts.cpus},
            waited={pid: waits_after[pid] - waits_before[pid] for pid in pids},
            rss=rss,
            rss_idle=self.rss_idle,
            cpus_allowed=cpu_list,
            generator_cpu=self.generator_cpu,
            floating=self.floating,
            profile=await self._profile_text(),
        )

    async def _profile_text(self) -> str | None:
        """py-spy's raw stacks, once it ended (None without ``profile``)."""
        spy = self.spy
        if spy is None:
            return None
        with trio.fail_after(30):
            await spy.wait()
        self.spy = None
        return (self.opts.workdir / "profile.txt").read_text()

    async def stop(self) -> None:
        """End every process of the run, whatever happened to it."""
        if self.spy is not None:
            self.spy.kill()
        with trio.CancelScope(shield=True):
            for child in self.generators:
                await child.stop(leaving=3.0)
            await self.server.stop()


def _sample(
    pids: list[int], cpus: list[int]
) -> tuple[dict[int, float], dict[int, float], dict[int, float]]:
    """CPU seconds per pid, busy seconds per CPU, seconds waited for a CPU per pid."""
    spent = {pid: cpu_seconds(pid) for pid in pids}
    busy = {cpu: core_busy(cpu) for cpu in cpus}
    waited = {pid: run_delay(pid) for pid in pids}
    return spent, busy, waited


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
    command = [sys.executable, "-m", "trio_sfu.bench.loadgen", "--timeout", "120"]
    children: list[Child] = []
    try:
        for index in range(meetings):
            child = await open_child(
                pinned(cpu, command, opts.nice),
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
