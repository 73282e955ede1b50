"""docs/performance.md from a fan-out report: the tables, capacity, targets, before and
after, the profile; and the one-line progress of a run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from trio_sfu.bench.figures import fmt
from trio_sfu.bench.report import (
    BUSY_WAIT,
    LOSS_LIMIT,
    P99_LIMIT,
    base_workers,
    row_workers,
)
from trio_sfu.bench.row import GENERATOR_BUSY
from trio_sfu.bench.scenarios import FORWARDED_PPS

__all__ = ["COLUMNS", "WORKER_COLUMNS", "format_table", "progress_line", "render_markdown"]

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


def format_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]] = COLUMNS
) -> list[str]:
    headers = [header for _, header, _ in columns]
    body = [[fmt(row.get(key), spec) for key, _, spec in columns] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row, cells in zip(rows, body, strict=True):
        if row.get("generator_bound"):
            cells[0] += " ⚠"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def progress_line(row: dict[str, Any]) -> str:
    """One run's figures on one line, as the benchmark goes."""
    cells = [f"{header}={fmt(row.get(key), spec)}" for key, header, spec in COLUMNS[1:]]
    if row["target"] == "sfu":
        cells += [
            f"{header}={fmt(row.get(key), spec)}"
            for key, header, spec in WORKER_COLUMNS[2:]
            if key not in ("forwarded_pps", "us_per_packet", "p99_ms", "vs_one_worker")
        ]
    mark = "  [generators saturated]" if row.get("generator_bound") else ""
    return f"{row['scenario']:>12}: " + ", ".join(cells) + mark


def render_markdown(report: dict[str, Any], compare: dict[str, Any] | None = None) -> str:
    """docs/performance.md from a report (and optionally a previous one for before/after)."""
    rows = report["rows"]
    lines = [
        *_head(report),
        "",
        _scenarios_text(report),
        "",
        _COLUMNS_TEXT,
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
    lines += [""]
    lines += _targets_lines(
        f"## Targets (issue 7, {base} worker{'s' if base > 1 else ''})", report["targets"]
    )
    if report.get("worker_targets"):
        lines += _targets_lines("## Targets (issue 12)", report["worker_targets"])
    if compare is not None:
        lines += _comparison(compare, report)
    if report.get("profile"):
        lines += _profile_lines(report["profile"])
    notes = report.get("notes") or []
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(lines)


def _head(report: dict[str, Any]) -> list[str]:
    """The title and how the benchmark ran: when, which commit, where, how."""
    machine = report["machine"]
    return [
        "# Performance: the fan-out benchmark",
        "",
        "<!-- GENERATED by `python scripts/bench_fanout.py --write-docs docs/performance.md`: "
        "do not edit by hand, rerun the benchmark. -->",
        "",
        f"- Date: {report['date']}",
        f"- Commit: `{report['commit']}`{' (with uncommitted changes)' if report['dirty'] else ''}",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['system']}; Python {machine['python']}, "
        f"trio {machine['trio']}, pylibsrtp {machine['pylibsrtp']}",
        _server_line(report),
        f"- SRTP profile negotiated: {', '.join(report['srtp_profiles']) or '-'}",
        f"- Window: {report['window']:g} s of measurement after {report['warmup']:g} s of warm-up"
        + (f"; server and generators at niceness {report['nice']}" if report.get("nice") else ""),
        f"- Command: `{report['command']}`",
        *[
            f"- Rerun on {rerun['date']} (commit `{rerun['commit']}`), in place of the "
            f"first runs: {', '.join(rerun['runs'])}; `{rerun['command']}`"
            for rerun in report.get("reruns") or []
        ],
    ]


def _server_line(report: dict[str, Any]) -> str:
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
    return server_line + f"; {report['peers_per_process']} peers per process"


def _scenarios_text(report: dict[str, Any]) -> str:
    return (
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
        "packets/s. It runs once per scenario (it has no workers), not in (c)."
    )


_COLUMNS_TEXT: Final = (
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
    "µs/SFU µs* the same comparison with the relay by CPU cost instead of throughput."
)


def _targets_lines(title: str, targets: list[Any]) -> list[str]:
    lines = [title, "", "| target | measured | met |", "|---|---|---|"]
    for name, measured, met in targets:
        lines.append(f"| {name} | {measured} | {'yes' if met else 'no'} |")
    lines.append("")
    return lines


def _profile_lines(prof: dict[str, Any]) -> list[str]:
    lines = [
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
    return lines


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
        lines += _channel_lines(layouts)
    return lines


def _channel_lines(layouts: list[dict[str, Any]]) -> list[str]:
    """The channel's own cost (``--channel-calls``), per layout."""
    lines = [
        "The channel alone (`--channel-calls`): one request at a time, "
        f"{layouts[0]['calls']} of each, on one router with two transports and an audio "
        "producer (each consumer closed again, untimed), timed by the caller: the "
        "in-process engine (`open_worker`) against one worker process behind the "
        "channel (`open_worker_pool`). The caller ran on CPU "
        f"{fmt(layouts[0].get('cpu'), '{}')}; *worker on CPU* where the worker process "
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
                fmt(layout.get("worker_cpu"), "{}"),
                fmt(inner["p50_us"], "{:.0f}"),
                fmt(inner["p99_us"], "{:.0f}"),
                fmt(inner["mean_us"], "{:.0f}"),
                fmt(outer["p50_us"], "{:.0f}"),
                fmt(outer["p99_us"], "{:.0f}"),
                fmt(outer["mean_us"], "{:.0f}"),
                fmt(outer["mean_us"] - inner["mean_us"], "{:+.0f}"),
            ]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _comparison(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    old = {(r["scenario"], r["target"], row_workers(r)): r for r in before["rows"]}
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
        prev = old.get((row["scenario"], "sfu", row_workers(row)))
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
            cells.append(f"{fmt(prev.get(key), spec)} → {fmt(row.get(key), spec)}")
        lines.append(f"| {row['scenario']} | {row_workers(row)} | " + " | ".join(cells) + " |")
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
