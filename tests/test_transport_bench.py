"""scripts/bench_transport.py runs (smoke test; its figures are not checked)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_transport.py"


def test_bench_transport_quick() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = dict(re.findall(r"^(\S[\w ()]*?)\s+(\d+\.\d\d µs\s+\d+\.\d\d µs)$", result.stdout, re.M))
    assert set(rows) == {
        "ingress",
        "ingress (no socket)",
        "srtp unprotect",
        "egress",
        "srtp protect",
    }, result.stdout
    for figures in rows.values():
        assert all(float(f) > 0 for f in re.findall(r"\d+\.\d\d", figures))
    assert "SRTP_AEAD_AES_128_GCM" in result.stdout
    assert "SRTP_AES128_CM_SHA1_80" in result.stdout
