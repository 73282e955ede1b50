"""scripts/bench_srtp.py runs (smoke test; its figures are not checked against a speed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_srtp.py"


def test_bench_srtp_quick() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    figures = re.findall(
        r"^(SRTP_\w+) (protect|unprotect)\s+(\d+\.\d\d) us/packet$", result.stdout, re.M
    )
    assert {(profile, op) for profile, op, _ in figures} == {
        ("SRTP_AEAD_AES_128_GCM", "protect"),
        ("SRTP_AEAD_AES_128_GCM", "unprotect"),
        ("SRTP_AES128_CM_SHA1_80", "protect"),
        ("SRTP_AES128_CM_SHA1_80", "unprotect"),
    }, result.stdout
    assert all(float(us) > 0 for _, _, us in figures)
