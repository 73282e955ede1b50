"""The PlainTransport benchmark runs end to end at tiny scale (a smoke test: its figures
are not checked, only that packets were forwarded and the docs section is replaced)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from trio_sfu.bench.docs import DOCS_END, DOCS_START, write_plain_section

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_fanout.py"


def test_quick_run_forwards_plain_and_srtp(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n\nthe fan-out tables\n")
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--transport",
            "plain",
            "--quick",
            "--no-pin",
            "--start-output",
            "500",
            "--json",
            str(report_path),
            "--write-docs",
            str(docs),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,  # the server and the generator run as `python -m` from here
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert [(r["mode"], r["consumers"]) for r in report["results"]] == [
        ("plain", 1),
        ("plain", 2),
        ("srtp", 1),
        ("srtp", 2),
    ]
    for entry in report["results"]:
        assert entry["steps"], entry
        assert all(step["forwarded"] > 0 for step in entry["steps"]), entry
    text = docs.read_text()
    assert text.startswith("# Performance\n\nthe fan-out tables\n")
    assert text.count(DOCS_START) == 1 and "| srtp | 2 |" in text


def test_write_docs_replaces_its_own_section_only(tmp_path: Path) -> None:
    docs = tmp_path / "performance.md"
    docs.write_text(f"head\n\n{DOCS_START}\nold\n{DOCS_END}\n\ntail\n")
    write_plain_section(docs, f"{DOCS_START}\nnew\n{DOCS_END}\n")
    assert docs.read_text() == f"head\n\n{DOCS_START}\nnew\n{DOCS_END}\ntail\n"
