"""The fan-out benchmark runs end to end at tiny scale (a smoke test: figures unchecked).

A real ``trio-sfu serve`` and the bare relay, load peers in their own processes, SRTP over
127.0.0.1: packets must be forwarded, and the report must carry every column.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trio_sfu.bench import COLUMNS, latency_percentile, summarize_profile
from trio_sfu.loadgen import TAIL, stamp

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_fanout.py"


def test_quick_run_forwards_and_reports_every_column(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    docs_path = tmp_path / "performance.md"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--window",
            "1.5",
            "--warmup",
            "1.2",
            "--json",
            str(report_path),
            "--write-docs",
            str(docs_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    rows = {(row["scenario"], row["target"]): row for row in report["rows"]}
    assert set(rows) == {
        ("fanout-2", "sfu"),
        ("fanout-2", "relay"),
        ("meeting-3", "sfu"),
        ("meeting-3", "relay"),
    }
    for row in rows.values():
        assert {key for key, _, _ in COLUMNS} <= set(row)
        # Two subscriptions (fan-out) or six (meeting) of audio + r2 were forwarded.
        assert row["forwarded_pps"] > 0
        assert row["offered_pps"] > 0
        assert row["loss"] is not None and row["p99_ms"] is not None
        assert row["us_per_packet"] is not None and row["us_per_packet"] > 0
    sfu = rows[("fanout-2", "sfu")]
    assert sfu["consumers"] == 4  # two subscribers x (audio + video)
    assert sfu["rss_per_consumer_kib"] is not None
    assert sfu["ratio"] is not None
    assert sfu["srtp_profiles"] == ["SRTP_AEAD_AES_128_GCM"]
    # Subscribers got r2 and audio, never r0/r1, once the warm-up was over.
    assert sfu["wrong_layer"] == 0
    markdown = docs_path.read_text()
    for _, header, _ in COLUMNS:
        assert header in markdown
    assert "## Capacity" in markdown and "## Targets (issue 7)" in markdown
    assert "| fanout-2 | sfu | 4 |" in markdown


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
