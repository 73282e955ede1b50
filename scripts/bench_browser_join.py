#!/usr/bin/env python3
"""Milliseconds from clicking Join to the first decoded remote frame, in headless Chromium.

Run it as root: ``.venv/bin/python scripts/bench_browser_join.py [--runs 5]``. It runs the
browser runner's ``join`` scenario (``tests/browser/run.py``) in a loopback-only network
namespace: the server in-process, Chromium through playwright-core, fake camera and mic.
Each run uses a fresh meeting: Alice joins and publishes, then Bob clicks Join on the demo
page; the figure is Bob's time from the click to the first video frame of Alice's that his
page decoded (requestVideoFrameCallback / loadeddata). That span holds Bob's dev token
fetch, getUserMedia, the WebSocket, rtc:join, Device.load, both transports (ICE + DTLS),
rtc:consume and the first keyframe. The median of the runs is printed last.

Needs what the browser tests need (scripts/install_browser, scripts/build_web, root).
A figure, not a test: nothing here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="joins to time [5]")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be positive")
    command = [sys.executable, "-m", "tests.browser.run", "join", "--runs", str(args.runs)]
    done = subprocess.run(
        [*command, "--outside"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120 + 160 * args.runs,
        check=False,
    )
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        print(f"the runner printed no result (exit {done.returncode}):", file=sys.stderr)
        print(done.stdout[-2000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
        return 1
    if not result.get("ok"):
        print(json.dumps(result, indent=1)[:8000], file=sys.stderr)
        return 1
    print(f"chromium {result['browser']}, {args.runs} runs, VP8 simulcast 1280x720")
    print(f"{'run':>3} {'joined':>10} {'published':>10} {'first frame':>12}")
    for index, run in enumerate(result["runs"], 1):
        print(
            f"{index:>3} {run['joinToJoinedMs']:>7.0f} ms {run['joinToPublishedMs']:>7.0f} ms"
            f" {run['joinToFirstFrameMs']:>9.0f} ms"
        )
    median = statistics.median(run["joinToFirstFrameMs"] for run in result["runs"])
    print(f"median join -> first decoded remote frame: {median:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
