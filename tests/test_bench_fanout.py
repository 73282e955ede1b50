"""The fan-out benchmark runs end to end at tiny scale (a smoke test: figures unchecked).

A real ``trio-sfu serve`` (with one worker, in process, and with two worker processes) and
the bare relay, load peers in their own processes, SRTP over 127.0.0.1: packets must be
forwarded, by the workers that hold the meetings, and the report must carry every column.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trio_sfu.bench.figures import fmt, latency_percentile, quantile
from trio_sfu.bench.media import TAIL, stamp
from trio_sfu.bench.profile import summarize_profile
from trio_sfu.bench.render import COLUMNS, WORKER_COLUMNS
from trio_sfu.bench.report import annotate_workers, capacity, merge_reports, worker_targets
from trio_sfu.bench.row import other_load

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_fanout.py"


def test_quick_run_forwards_and_reports_every_column(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    docs_path = tmp_path / "performance.md"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--workers",
            "1,2",
            "--window",
            "1.5",
            "--warmup",
            "1.2",
            "--channel-calls",
            "50",
            "--json",
            str(report_path),
            "--write-docs",
            str(docs_path),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    rows = {(row["scenario"], row["target"], row["workers"]): row for row in report["rows"]}
    assert set(rows) == {
        ("fanout-2", "sfu", 1),
        ("fanout-2", "sfu", 2),
        ("fanout-2", "relay", None),
        ("meeting-3", "sfu", 1),
        ("meeting-3", "sfu", 2),
        ("meeting-3", "relay", None),
        ("fanout-2x2", "sfu", 1),
        ("fanout-2x2", "sfu", 2),
        ("fanout-2-floating", "sfu", 1),  # (c)'s reference
    }
    for row in rows.values():
        assert {key for key, _, _ in COLUMNS} <= set(row)
        # Two subscriptions (fan-out) or six (meeting) of audio + r2 were forwarded.
        assert row["forwarded_pps"] > 0
        assert row["offered_pps"] > 0
        assert row["loss"] is not None and row["p99_ms"] is not None
        assert row["us_per_packet"] is not None and row["us_per_packet"] > 0
    for (scenario, target, workers), row in rows.items():
        if target != "sfu":
            continue
        assert {key for key, _, _ in WORKER_COLUMNS} <= set(row)
        assert len(row["worker_cpu"]) == len(row["worker_us_per_packet"]) == workers
        # Every meeting's worker forwarded its packets, at a CPU cost of its own.
        forwarding = {index for on in row["meetings_on"] for index in on}
        assert len(row["meetings_on"]) == (2 if scenario == "fanout-2x2" else 1)
        for index in forwarding:
            assert row["worker_forwarded_pps"][index] > 0
            assert row["worker_cpu"][index] > 0
            assert row["worker_us_per_packet"][index] > 0
        assert sum(row["worker_forwarded_pps"]) == pytest.approx(row["forwarded_pps"])
        if workers == 1:
            assert row["signaling_cpu"] is None  # one process: its CPU is the worker's
        else:
            assert row["signaling_cpu"] is not None
            assert row["vs_one_worker"] is not None
        # Each rtc:consume (and resume, produce) was timed from send to answer.
        assert row["requests"]["rtc:consume"]["count"] == row["consumers"]
        for key in ("consume", "resume", "produce"):
            assert 0 < row[f"{key}_p50_ms"] <= row[f"{key}_p99_ms"]
    # With two workers, the two meetings went one to each worker, and both forwarded.
    dual = rows[("fanout-2x2", "sfu", 2)]
    assert sorted(on[0] for on in dual["meetings_on"]) == [0, 1]
    assert all(us > 0 for us in dual["worker_us_per_packet"])
    # (c) compared with its reference: one worker, the generators floating as in (c).
    floating = rows[("fanout-2-floating", "sfu", 1)]
    assert floating["layout"].endswith("gen 0,1")
    assert dual["vs_one_worker"] == [
        pytest.approx((us / floating["us_per_packet"] - 1) * 100)
        for us in dual["worker_us_per_packet"]
    ]
    sfu = rows[("fanout-2", "sfu", 1)]
    assert sfu["consumers"] == 4  # two subscribers x (audio + video)
    assert sfu["rss_per_consumer_kib"] is not None
    assert sfu["ratio"] is not None
    assert sfu["srtp_profiles"] == ["SRTP_AEAD_AES_128_GCM"]
    # Subscribers got r2 and audio, never r0/r1, once the warm-up was over.
    assert sfu["wrong_layer"] == 0
    assert set(report["capacity_by_workers"]) == {"1", "2"}
    # The channel's own cost: the same calls in process and through a worker process.
    for layout in report["channel"]:
        assert layout["calls"] == 50
        for engine in ("in_process", "worker_process"):
            for call in ("get_stats", "consume"):
                assert 0 < layout[engine][call]["p50_us"] <= layout[engine][call]["p99_us"]
    markdown = docs_path.read_text()
    for _, header, _ in COLUMNS + WORKER_COLUMNS:
        assert header in markdown
    assert "## Capacity" in markdown and "## Targets (issue 7, 1 worker)" in markdown
    assert "## Workers and signaling requests" in markdown
    assert "## Targets (issue 12)" in markdown
    assert "| fanout-2 | sfu | 1 | 4 |" in markdown
    assert "| fanout-2 | sfu | 2 | 4 |" in markdown


def _row(scenario: str, workers: int, **fields: Any) -> dict[str, Any]:
    kind, _, size = scenario.partition("-")
    if size.endswith("x2"):
        kind = "dual"
    elif size.endswith("-floating"):
        kind = "floating"
    row: dict[str, Any] = {
        "scenario": scenario,
        "kind": kind,
        "size": int(size.removesuffix("x2").removesuffix("-floating")),
        "target": "sfu",
        "workers": workers,
        "loss": 0.0,
        "p99_ms": 1.0,
        "generator_bound": False,
        "forwarded_pps": 1000.0,
        "us_per_packet": 20.0,
        "rss_per_consumer_kib": None,
    }
    row.update(fields)
    return row


def test_workers_compare_with_the_one_worker_run_of_the_same_load() -> None:
    rows = [
        _row("fanout-100", 1, us_per_packet=20.0, worker_us_per_packet=[20.0]),
        _row("fanout-100", 2, us_per_packet=22.0, worker_us_per_packet=[None, 21.0]),
        # Two meetings of 100 on two workers: each compares with fanout-100 on one worker.
        _row("fanout-100x2", 1, us_per_packet=18.0, worker_us_per_packet=[18.0]),
        _row(
            "fanout-100x2",
            2,
            us_per_packet=25.0,
            worker_us_per_packet=[21.0, 23.0],
            worker_forwarded_pps=[20_000.0, 20_000.0],
            forwarded_pps=40_000.0,
        ),
    ]
    annotate_workers(rows)
    assert rows[0].get("vs_one_worker") is None
    assert rows[1]["vs_one_worker"] == [None, pytest.approx(5.0)]
    assert rows[3]["vs_one_worker"] == [pytest.approx(5.0), pytest.approx(15.0)]
    one_meeting, two_meetings, dual = worker_targets(rows)
    assert one_meeting[2] and "1 of 1" in one_meeting[1]
    assert not two_meetings[2]  # one worker of two is 15 % over
    assert "1 of 2" in two_meetings[1] and "+15.0 %" in two_meetings[1]
    assert dual[2] and "40,000 pkt/s with 2 workers" in dual[1]
    # A run whose load generators were saturated ran at another load: left out.
    rows[1]["generator_bound"] = True
    rows[1]["worker_us_per_packet"] = [None, 30.0]
    annotate_workers(rows)
    one_meeting = worker_targets(rows)[0]
    assert "left out (load generators saturated): fanout-100" in one_meeting[1]
    # With (c)'s reference run (one worker, the generators as in (c)), (c) compares with it.
    rows.append(_row("fanout-100-floating", 1, us_per_packet=22.0, worker_us_per_packet=[22.0]))
    annotate_workers(rows)
    assert rows[3]["vs_one_worker"] == [pytest.approx(-100 / 22), pytest.approx(100 / 22)]
    two_meetings = worker_targets(rows)[1]
    assert two_meetings[2] and "2 of 2" in two_meetings[1]


def test_capacity_per_worker_count() -> None:
    rows = [
        _row("fanout-100", 1),
        _row("fanout-200", 1, loss=2.0),
        _row("fanout-100", 2),
        _row("fanout-200", 2),
    ]
    assert capacity(rows)["subscribers"] == 100  # one worker, by default
    assert capacity(rows, 1)["first_failure"] == "fanout-200"
    two = capacity(rows, 2)
    assert two["subscribers"] == 200 and two["lower_bound"]
    # A report from before workers: its rows count as one worker.
    old = [{k: v for k, v in r.items() if k != "workers"} for r in rows[:2]]
    assert capacity(old)["subscribers"] == 100


def test_update_replaces_the_runs_rerun_and_their_notes() -> None:
    relay = _row("fanout-100", 1, target="relay", forwarded_pps=2000.0)
    relay["workers"] = None
    old = {
        "date": "then",
        "commit": "abc",
        "command": "first",
        "workers": [1, 2],
        "rows": [
            _row("fanout-100", 1, forwarded_pps=1000.0, server_wait=40.0),
            _row("fanout-100", 2, forwarded_pps=2000.0),
            relay,
        ],
        "notes": [
            "fanout-100 (sfu, 1 workers): a note on the disturbed run.",
            "fanout-100 (sfu, 2 workers): a note that stays.",
        ],
        "channel": [{"calls": 1}],
    }
    new = {
        "date": "now",
        "commit": "def",
        "command": "again",
        "workers": [1],
        "rows": [_row("fanout-100", 1, forwarded_pps=2000.0, us_per_packet=10.0)],
        "notes": [],
        "channel": None,
    }
    report = merge_reports(old, new)
    rows = {(r["scenario"], r["target"], r["workers"]): r for r in report["rows"]}
    assert len(rows) == 3
    assert rows[("fanout-100", "sfu", 1)]["us_per_packet"] == 10.0
    assert rows[("fanout-100", "sfu", 1)]["ratio"] == 1.0  # against the relay kept
    assert report["notes"] == ["fanout-100 (sfu, 2 workers): a note that stays."]
    assert report["reruns"] == [
        {
            "date": "now",
            "commit": "def",
            "command": "again",
            "runs": ["fanout-100 (sfu, 1 workers)"],
        }
    ]
    assert report["channel"] == [{"calls": 1}]
    assert report["capacity"]["subscribers"] == 100
    assert set(report["capacity_by_workers"]) == {"1", "2"}


def test_other_load_per_core_and_with_floating_processes() -> None:
    spent = {10: 4.0, 11: 1.0, 12: 3.0}
    busy = {0: 5.5, 1: 3.5}
    # Pinned: core 0 runs 10 and 11 (5 s of 5.5), core 1 runs 12 (3 of 3.5): 0.5 s each.
    pinned = other_load({10: 0, 11: 0, 12: 1}, spent, busy, 10.0)
    assert pinned == {0: pytest.approx(5.0), 1: pytest.approx(5.0)}
    # 12 floats: 9 s busy, 8 s ours, spread over both cores.
    floating = other_load({10: 0, 11: 0, 12: None}, spent, busy, 10.0)
    assert floating == {0: pytest.approx(5.0), 1: pytest.approx(5.0)}


def test_quantile_and_list_cells() -> None:
    assert quantile([], 0.5) is None
    assert quantile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert quantile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert fmt([12.25, None, 3.0], "{:.1f}") == "12.2 / - / 3.0"


def test_payload_tail_carries_layer_and_send_time() -> None:
    packet = bytes(12) + b"\xfc" + bytes(99)
    stamped = stamp(packet, 3, 1234.5)
    assert len(stamped) == len(packet)
    assert stamped[:-9] == packet[:-9]
    # Layer byte 3, then 1234.5 as an IEEE 754 big-endian double: 0x40934A0000000000.
    assert stamped[-9:] == bytes.fromhex("03 40934a0000000000")
    assert TAIL.unpack_from(stamped, len(stamped) - 9) == (3, 1234.5)


def test_latency_percentile_reads_10us_bins() -> None:
    # 90 packets in bin 100 (1.000-1.010 ms), 10 in bin 2000 (20.00-20.01 ms).
    hist = {100: 90, 2000: 10}
    assert latency_percentile(hist, 0.5) == pytest.approx(1.005)
    assert latency_percentile(hist, 0.9) == pytest.approx(1.005)
    assert latency_percentile(hist, 0.99) == pytest.approx(20.005)
    assert latency_percentile({}, 0.5) is None


def test_profile_summary_self_and_total() -> None:
    raw = "\n".join(
        [
            "run (/repo/trio_sfu/x.py:1);loop (/repo/trio_sfu/engine/a.py:10);"
            "protect (/repo/trio_sfu/srtp.py:5) 6",
            "run (/repo/trio_sfu/x.py:1);loop (/repo/trio_sfu/engine/a.py:12) 3",
            "run (/repo/trio_sfu/x.py:1);recv (/repo/trio_sfu/engine/b.py:3) 1",
        ]
    )
    top = summarize_profile(raw)
    assert top[0] == ("protect (srtp.py)", 60.0, 60.0)
    assert top[1] == ("loop (engine/a.py)", 30.0, 90.0)
    assert top[2] == ("recv (engine/b.py)", 10.0, 10.0)
