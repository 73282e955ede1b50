"""The fan-out benchmark's figures across runs: capacity per worker count, issue 7's and
issue 12's targets, each worker against the one-worker server, and reruns merged into a
saved report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from trio_sfu.bench.figures import fmt
from trio_sfu.bench.scenarios import KINDS

__all__ = [
    "BUSY_WAIT",
    "LOSS_LIMIT",
    "P99_LIMIT",
    "annotate_workers",
    "base_workers",
    "capacity",
    "fanout_rows",
    "finish_report",
    "merge_reports",
    "row_workers",
    "starved",
    "targets",
    "where",
    "within_limits",
    "worker_targets",
]

#: Capacity: the largest fan-out with less loss than this (percent) ...
LOSS_LIMIT: Final = 0.5
#: ... and a p99 latency below this (milliseconds).
P99_LIMIT: Final = 20.0
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

#: A target: what, what was measured, whether it is met.
Target = tuple[str, str, bool]


def row_workers(row: dict[str, Any]) -> int:
    """A row's worker count (reports from before workers had one)."""
    return int(row.get("workers") or 1)


def where(row: dict[str, Any]) -> str:
    """How notes name a run: ``fanout-50 (sfu, 2 workers)``."""
    workers = f", {row['workers']} workers" if row.get("workers") else ""
    return f"{row['scenario']} ({row['target']}{workers})"


def base_workers(rows: Sequence[dict[str, Any]]) -> int:
    """The worker count of the issue 7 targets and capacity: 1 when it ran."""
    counts = {row_workers(r) for r in rows if r["target"] == "sfu"}
    return 1 if 1 in counts or not counts else min(counts)


def within_limits(row: dict[str, Any]) -> bool:
    return (
        row["loss"] is not None
        and row["loss"] < LOSS_LIMIT
        and row["p99_ms"] is not None
        and row["p99_ms"] < P99_LIMIT
    )


def starved(row: dict[str, Any]) -> bool:
    """Other processes took the server's core for more than BUSY_WAIT of the window: the
    row's loss and latency say nothing about the server's capacity."""
    return (row.get("server_wait") or 0.0) > BUSY_WAIT


def fanout_rows(rows: Sequence[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    return [
        r
        for r in rows
        if r["target"] == "sfu" and r["kind"] == "fanout" and row_workers(r) == workers
    ]


def capacity(rows: Sequence[dict[str, Any]], workers: int | None = None) -> dict[str, Any]:
    """The largest passing fan-out with ``workers`` workers (default: :func:`base_workers`),
    whether it is only a lower bound, and what stopped it. Runs whose server was starved
    of its core count neither way."""
    if workers is None:
        workers = base_workers(rows)
    of_count = fanout_rows(rows, workers)
    fanout = sorted((r for r in of_count if not starved(r)), key=lambda r: r["size"])
    best: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    for row in fanout:
        ok = within_limits(row)
        if ok and failed is None:
            best = row
        elif not ok and failed is None:
            failed = row
    return {
        "workers": workers,
        "starved": sorted(r["scenario"] for r in of_count if starved(r)),
        "subscribers": best["size"] if best else None,
        "forwarded_pps": best["forwarded_pps"] if best else None,
        "lower_bound": failed is None,
        "first_failure": failed["scenario"] if failed else None,
        "failure_generator_bound": bool(failed and failed["generator_bound"]),
    }


# ---- issue 7 -----------------------------------------------------------------------------


def targets(rows: Sequence[dict[str, Any]], cap: dict[str, Any]) -> list[Target]:
    """Issue 7's targets, on the runs with ``cap["workers"]`` workers (one)."""
    workers = int(cap.get("workers") or 1)
    rows = [r for r in rows if r["target"] != "sfu" or row_workers(r) == workers]
    sfu_fanout = fanout_rows(rows, workers)
    out = [_throughput_target(sfu_fanout)]
    for target in (
        _ratio_target(sfu_fanout),
        _p99_target(sfu_fanout, cap),
        _rss_target(rows, workers),
    ):
        if target is not None:
            out.append(target)
    return out


def _throughput_target(sfu_fanout: list[dict[str, Any]]) -> Target:
    best_pps = max((r["forwarded_pps"] for r in sfu_fanout), default=0.0)
    ok_rows = [
        r
        for r in sfu_fanout
        if r["loss"] is not None and r["loss"] < LOSS_LIMIT and (r["p99_ms"] or 1e9) < P99_LIMIT
    ]
    best_ok = max((r["forwarded_pps"] for r in ok_rows), default=0.0)
    per_core = [r["pps_per_core"] for r in sfu_fanout if r.get("pps_per_core")]
    best_core = max(per_core, default=0.0)
    return (
        f"≥ {TARGET_PPS:,} forwarded SRTP pkt/s in (a) (within the loss/p99 limits)",
        f"{best_ok:,.0f} pkt/s (most delivered in any (a) run: {best_pps:,.0f}; "
        f"by CPU cost, one whole core: {best_core:,.0f})",
        best_ok >= TARGET_PPS,
    )


def _ratio_target(sfu_fanout: list[dict[str, Any]]) -> Target | None:
    ratios = [r["ratio"] for r in sfu_fanout if r.get("ratio") is not None]
    costs = [r["cost_ratio"] for r in sfu_fanout if r.get("cost_ratio") is not None]
    if not ratios:
        return None
    low = min(ratios)
    cost_text = f"; by CPU cost {min(costs):.2f}-{max(costs):.2f}" if costs else ""
    return (
        f"SFU/relay ≥ {TARGET_RATIO}",
        f"{low:.2f} (lowest of (a), by throughput{cost_text})",
        low >= TARGET_RATIO,
    )


def _p99_target(sfu_fanout: list[dict[str, Any]], cap: dict[str, Any]) -> Target | None:
    if not cap["subscribers"]:
        return None
    half = cap["subscribers"] / 2
    candidates = [r for r in sfu_fanout if not starved(r)] or sfu_fanout
    near = min(candidates, key=lambda r: abs(r["size"] - half))
    p99 = near["p99_ms"]
    return (
        f"p99 < {TARGET_P99_HALF:g} ms at half of capacity",
        f"{fmt(p99, '{:.2f}')} ms at {near['scenario']}",
        p99 is not None and p99 < TARGET_P99_HALF,
    )


def _rss_target(rows: Sequence[dict[str, Any]], workers: int) -> Target | None:
    measured = [
        r
        for r in rows
        if r["target"] == "sfu"
        and row_workers(r) == workers
        and r["kind"] in ("fanout", "meeting")
        and r["rss_per_consumer_kib"] is not None
    ]
    if not measured:
        return None
    worst = max(r["rss_per_consumer_kib"] for r in measured)
    parts = []
    for kind, name in (("fanout", "(a)"), ("meeting", "(b)")):
        of_kind = [r for r in measured if r["kind"] == kind]
        if of_kind:
            top = max(of_kind, key=lambda r: r["rss_per_consumer_kib"])
            parts.append(f"{name} at most {top['rss_per_consumer_kib']:.1f} ({top['scenario']})")
    return (
        f"RSS < {TARGET_RSS_PER_CONSUMER // 1024} KiB per consumer",
        f"{worst:.1f} KiB, the largest of all runs: {'; '.join(parts)}",
        worst * 1024 < TARGET_RSS_PER_CONSUMER,
    )


# ---- workers (issue 12) ------------------------------------------------------------------


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
            if (
                other["target"] == "sfu"
                and row_workers(other) == 1
                and other["scenario"] == scenario
            ):
                return other
    return None


def annotate_workers(rows: Sequence[dict[str, Any]]) -> None:
    """Each run with several workers: ``vs_one_worker``, per worker, how much more (percent)
    CPU it spent per forwarded packet than the one-worker server did in
    :func:`_one_worker_reference` (None for a worker that forwarded nothing)."""
    for row in rows:
        if row["target"] != "sfu" or row_workers(row) == 1:
            continue
        reference = _one_worker_reference(rows, row)
        base = reference["us_per_packet"] if reference else None
        per_worker = row.get("worker_us_per_packet") or []
        row["vs_one_worker"] = [
            (value / base - 1) * 100 if value is not None and base else None for value in per_worker
        ]


def worker_targets(rows: Sequence[dict[str, Any]]) -> list[Target]:
    """Issue 12's target: every forwarding worker within TARGET_WORKER_OVERHEAD of one
    worker's cost per packet, for one meeting ((a), (b)) and for two ((c), where the load
    generators share the workers' cores); runs whose load generators were saturated, or
    whose one-worker reference's were, are left out (the server then ran at another load).
    Then what several workers forwarded in (c)."""
    out: list[Target] = []
    for kinds, name in (
        (("fanout", "meeting"), "one meeting, (a) and (b)"),
        (("dual",), "two meetings, (c)"),
    ):
        target = _overhead_target(rows, kinds, name)
        if target is not None:
            out.append(target)
    for row in rows:
        if row["target"] == "sfu" and row["kind"] == "dual" and row_workers(row) != 1:
            out.append(_dual_target(rows, row))
    return out


def _overhead_target(
    rows: Sequence[dict[str, Any]], kinds: tuple[str, ...], name: str
) -> Target | None:
    pairs: list[tuple[str, int, float]] = []
    left_out: list[str] = []
    for row in rows:
        if row["target"] != "sfu" or row["kind"] not in kinds or row_workers(row) == 1:
            continue
        reference = _one_worker_reference(rows, row)
        if row["generator_bound"] or (reference and reference["generator_bound"]):
            left_out.append(row["scenario"])
            continue
        pairs += [
            (row["scenario"], row_workers(row), delta)
            for delta in row.get("vs_one_worker") or []
            if delta is not None
        ]
    if not pairs and not left_out:
        return None
    skipped = f"; left out (load generators saturated): {', '.join(left_out)}" if left_out else ""
    target = f"µs/pkt per forwarding worker ≤ 1 worker's + {TARGET_WORKER_OVERHEAD:g} %, {name}"
    if not pairs:
        return (target, f"no run to compare{skipped}", False)
    worst = max(pairs, key=lambda p: p[2])
    within = [p for p in pairs if p[2] <= TARGET_WORKER_OVERHEAD]
    return (
        target,
        f"{len(within)} of {len(pairs)} workers within; worst {worst[2]:+.1f} % "
        f"({worst[0]}, {worst[1]} workers); "
        f"range {min(p[2] for p in pairs):+.1f} to {worst[2]:+.1f} %{skipped}",
        len(within) == len(pairs),
    )


def _dual_target(rows: Sequence[dict[str, Any]], row: dict[str, Any]) -> Target:
    """What several workers forwarded in (c), against one worker."""
    one = next(
        (
            r
            for r in rows
            if r["target"] == "sfu" and row_workers(r) == 1 and r["scenario"] == row["scenario"]
        ),
        None,
    )
    busy = [w for w in row.get("worker_forwarded_pps") or [] if w]
    return (
        f"{row['scenario']}: both meetings forwarded, each by its own worker",
        f"{row['forwarded_pps']:,.0f} pkt/s with {row_workers(row)} workers "
        f"({len(busy)} forwarding: {fmt(row['worker_forwarded_pps'], '{:,.0f}')}) "
        f"vs {fmt(one['forwarded_pps'] if one else None, '{:,.0f}')} with 1; "
        f"loss {fmt(row['loss'], '{:.2f}')} % vs "
        f"{fmt(one['loss'] if one else None, '{:.2f}')} %",
        len(busy) >= min(2, row_workers(row)) and (row["loss"] or 0.0) < LOSS_LIMIT,
    )


# ---- whole reports -----------------------------------------------------------------------


def finish_report(report: dict[str, Any]) -> dict[str, Any]:
    """Recompute from the rows what depends on them all: each worker's comparison with one
    worker, capacity per worker count, the targets."""
    rows = report["rows"]
    annotate_workers(rows)
    report["capacity"] = capacity(rows)
    counts = report.get("workers") or sorted({row_workers(r) for r in rows if r["target"] == "sfu"})
    report["capacity_by_workers"] = {str(n): capacity(rows, n) for n in counts}
    report["targets"] = targets(rows, report["capacity"])
    report["worker_targets"] = worker_targets(rows)
    return report


def _row_key(row: dict[str, Any]) -> tuple[str, str, int | None]:
    return (row["scenario"], row["target"], row.get("workers"))


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
    stale = tuple(where(r) + ":" for r in gone)
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
            "runs": [where(r) for r in new["rows"]],
        },
    ]
    return finish_report(report)
