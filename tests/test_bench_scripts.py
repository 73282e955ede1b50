"""The benchmark scripts run (smoke test; their figures are not checked)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def test_bench_rtp_quick() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_rtp.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    figures = dict(re.findall(r"^(\S[\w ]*?)\s+(\d+\.\d) ns/packet$", result.stdout, re.M))
    assert set(figures) == {
        "loop overhead",
        "rtp_route_rewrite",
        "vp8_descriptor",
        "vp8_forward",
        "rtcp_sr_sdes",
        "rtcp_rr_remb_nack",
    }, result.stdout
    assert all(float(ns) > 0 for ns in figures.values())
