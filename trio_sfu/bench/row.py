"""One run's row of the report, from what the run read of its processes (:class:`Readings`):
forwarded packets, loss, latency, CPU per packet, memory, and per worker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs

from trio_sfu.bench.figures import latency_percentile, quantile
from trio_sfu.bench.media import LAYER_AUDIO, LAYER_R0, LAYER_R1, LAYER_R2
from trio_sfu.bench.options import Options
from trio_sfu.bench.scenarios import Scenario

__all__ = ["GENERATOR_BUSY", "REQUESTS", "Readings", "other_load", "request_times", "run_row"]

#: Load generators above this share of their core (percent) may be the bottleneck.
GENERATOR_BUSY: Final = 85.0
#: Request types timed by the load generators -> the row keys of their p50/p99.
REQUESTS: Final = {
    "rtc:consume": "consume",
    "rtc:resumeConsumer": "resume",
    "rtc:produce": "produce",
}


@attrs.define(kw_only=True)
class Readings:
    """What one run read of its processes over the measurement window."""

    scenario: Scenario
    #: "sfu" or "relay".
    target: str
    workers: int
    #: Seconds measured.
    window: float
    #: The load generators' ``ready`` and ``result`` events, in generator order, and each
    #: generator's meeting.
    ready: list[dict[str, Any]]
    results: list[dict[str, Any]]
    meeting_of: list[int]
    setup_seconds: float
    consumers: int
    #: The server process, every server process (signaling and workers), the generators.
    server_pid: int
    server_pids: list[int]
    generator_pids: list[int]
    #: Worker index -> its pid and its CPU (the server itself when in process).
    worker_pids: dict[int, int]
    worker_cpus: dict[int, int | None]
    #: Per meeting, the workers holding it.
    placement: list[list[int]]
    #: Worker index -> its ``packets_out`` counter before and after the window.
    out_before: dict[int, int]
    out_after: dict[int, int]
    #: Over the window: CPU seconds per pid, seconds each CPU was busy, seconds each pid
    #: waited for a CPU.
    spent: dict[int, float]
    busy: dict[int, float]
    waited: dict[int, float]
    #: Server RSS (every process) at the end of the window, and idle before the peers came.
    rss: int
    rss_idle: int
    cpus_allowed: str
    #: Where the generators ran; whether they floated over every CPU.
    generator_cpu: int | str | None
    floating: bool
    profile: str | None = None

    @property
    def in_process(self) -> bool:
        return list(self.worker_pids.values()) == [self.server_pid]


def run_row(r: Readings, opts: Options) -> dict[str, Any]:
    """The report's row of one run (the columns of :mod:`trio_sfu.bench.render`, and more)."""
    worker_forwarded = _worker_forwarded(r)
    row = _traffic(r)
    row.update(_per_worker(r, worker_forwarded))
    requests = request_times(r.ready)
    row["requests"] = requests
    for rtype, key in REQUESTS.items():
        timed = requests.get(rtype, {})
        row[f"{key}_p50_ms"] = timed.get("p50_ms")
        row[f"{key}_p99_ms"] = timed.get("p99_ms")
    order = sorted(r.worker_pids)
    row["layout"] = _layout_text(
        opts, r.in_process, [r.worker_cpus.get(i) for i in order], r.generator_cpu, r.target
    )
    row["generator_bound"] = row["generator_cpu"] >= GENERATOR_BUSY
    row.update(_waits(r, worker_forwarded))
    row.update(_other_loads(r, opts))
    if r.profile is not None:
        row["profile"] = r.profile
    return row


def _traffic(r: Readings) -> dict[str, Any]:
    """What was forwarded and lost, how late, at what CPU and memory cost."""
    scenario, window, results, sfu = r.scenario, r.window, r.results, r.target == "sfu"
    received = [sum(x["received"][layer] for x in results) for layer in range(4)]
    sent: dict[str, list[int]] = {}  # "meeting/publisher" -> packets sent, per layer
    for meeting, x in zip(r.meeting_of, results, strict=True):
        sent.update((f"{meeting}/{name}", v) for name, v in x["sent_in_window"].items())
    forwarded = received[LAYER_AUDIO] + received[LAYER_R2]
    expected = sum(s[LAYER_AUDIO] + s[LAYER_R2] for s in sent.values()) * scenario.receivers
    hist: dict[int, int] = {}
    for x in results:
        for index, count in x["hist"].items():
            hist[int(index)] = hist.get(int(index), 0) + count
    server_cpu = sum(r.spent[pid] for pid in r.server_pids)
    generator_cpu_seconds = sum(r.spent[pid] for pid in r.generator_pids)
    return {
        "scenario": scenario.name,
        "kind": scenario.kind,
        "size": scenario.size,
        "target": r.target,
        "workers": r.workers if sfu else None,
        "consumers": r.consumers if sfu else scenario.subscriptions,
        "offered_pps": expected / window,
        "forwarded_pps": forwarded / window,
        "us_per_packet": server_cpu / forwarded * 1e6 if forwarded else None,
        "server_cpu": server_cpu / window * 100,
        "loss": max(0.0, 100 * (1 - forwarded / expected)) if expected else None,
        "p50_ms": latency_percentile(hist, 0.5),
        "p99_ms": latency_percentile(hist, 0.99),
        "rss_mib": r.rss / 2**20,
        "rss_per_consumer_kib": (
            (r.rss - r.rss_idle) / 1024 / r.consumers if sfu and r.consumers else None
        ),
        "generator_cpu": generator_cpu_seconds / window * 100,
        "generators": len(r.generator_pids),
        "wrong_layer": received[LAYER_R0] + received[LAYER_R1],
        "late": sum(x["late"] for x in results),
        "publisher_send_failed": sum(x["send_failed"] for x in results),
        "keyframes": sum(x["keyframes"] for x in results),
        "setup_seconds": r.setup_seconds,
        "window": window,
        "server_cpus_allowed": r.cpus_allowed,
        "srtp_profiles": sorted({p for x in results for p in x.get("srtp_profiles", [])}),
        "ratio": None,
        "cost_ratio": None,
        "pps_per_core": forwarded / server_cpu if server_cpu and forwarded else None,
    }


def _worker_forwarded(r: Readings) -> dict[int, float]:
    """What each worker forwarded: its meetings' packets, as their subscribers counted them
    (a meeting on several workers split by their ``packets_out`` counters)."""
    by_meeting = [0] * r.scenario.meetings
    for meeting, x in zip(r.meeting_of, r.results, strict=True):
        by_meeting[meeting] += x["received"][LAYER_AUDIO] + x["received"][LAYER_R2]
    worker_forwarded = dict.fromkeys(r.worker_pids, 0.0)
    for meeting, on in enumerate(r.placement):
        shares = {i: max(0, r.out_after.get(i, 0) - r.out_before.get(i, 0)) for i in on}
        total = sum(shares.values())
        for i in on:
            share = shares[i] / total if total else 1 / len(on)
            worker_forwarded[i] = worker_forwarded.get(i, 0.0) + by_meeting[meeting] * share
    return worker_forwarded


def _per_worker(r: Readings, worker_forwarded: dict[int, float]) -> dict[str, Any]:
    """The signaling process's CPU, and per worker (in index order) its pid, CPU, meetings,
    what it forwarded and its CPU per packet."""
    window, sfu = r.window, r.target == "sfu"
    order = sorted(r.worker_pids)
    worker_seconds = [r.spent[r.worker_pids[i]] for i in order]
    return {
        "signaling_cpu": None if r.in_process else r.spent[r.server_pid] / window * 100,
        "worker_pids": [r.worker_pids[i] for i in order],
        "worker_cpus": [r.worker_cpus.get(i) for i in order],
        "placement": _placement_text(r.placement) if sfu else None,
        "meetings_on": r.placement,
        "worker_cpu": [s / window * 100 for s in worker_seconds] if sfu else None,
        "worker_forwarded_pps": ([worker_forwarded[i] / window for i in order] if sfu else None),
        "worker_us_per_packet": (
            [
                s / worker_forwarded[i] * 1e6 if worker_forwarded[i] else None
                for i, s in zip(order, worker_seconds, strict=True)
            ]
            if sfu
            else None
        ),
        "vs_one_worker": None,
    }


def _waits(r: Readings, worker_forwarded: dict[int, float]) -> dict[str, float]:
    """How long the server waited, runnable, for its core: the share of the window other
    processes took from it (a starved server's loss and latency are not its own). With
    workers, the longest wait of the signaling process and the forwarding workers."""
    forwarding = [r.server_pid] + [
        r.worker_pids[i] for i in sorted(r.worker_pids) if worker_forwarded[i] and not r.in_process
    ]
    return {
        "server_wait": max(r.waited[pid] / r.window * 100 for pid in forwarding),
        "generator_wait": sum(r.waited[pid] for pid in r.generator_pids) / r.window * 100,
    }


def _other_loads(r: Readings, opts: Options) -> dict[str, float | None]:
    """What else ran on the server's and the generators' cores meanwhile (other processes
    of the machine; also kernel work such as softirqs not charged to our processes)."""
    if opts.server_cpu is None or opts.generator_cpu is None:
        return {"other_load_server_core": None, "other_load_generator_core": None}
    affinity: dict[int, int | None] = {r.server_pid: opts.server_cpu}
    if not r.in_process:
        affinity.update(
            (r.worker_pids[i], r.worker_cpus.get(i, opts.server_cpu)) for i in sorted(r.worker_pids)
        )
    for pid in r.generator_pids:
        affinity[pid] = None if r.floating else opts.generator_cpu
    other = other_load(affinity, r.spent, r.busy, r.window)
    return {
        "other_load_server_core": other.get(opts.server_cpu),
        "other_load_generator_core": other.get(opts.generator_cpu),
    }


def request_times(ready: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per request type: how many, and p50/p99 in milliseconds (the generators' ``ready``
    events)."""
    times: dict[str, list[float]] = {}
    for event in ready:
        for rtype, values in (event.get("requests") or {}).items():
            times.setdefault(rtype, []).extend(values)
    return {
        rtype: {
            "count": len(values),
            "p50_ms": quantile(values, 0.5),
            "p99_ms": quantile(values, 0.99),
        }
        for rtype, values in sorted(times.items())
    }


def other_load(
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
