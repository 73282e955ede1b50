"""Where the forwarding process's time goes (``--profile N``): py-spy samples it during
one extra run, and its raw stacks are summed per function."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from trio_sfu.bench.options import Options

__all__ = ["profile_summary", "start_py_spy", "summarize_profile"]


async def start_py_spy(pid: int, opts: Options) -> trio.Process | None:
    """py-spy recording process ``pid`` for the window into ``profile.txt`` of the work
    directory (None, and a word on stderr, without py-spy)."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        print("py-spy is not installed (pip install -e '.[dev]'): no profile", file=sys.stderr)
        return None
    out = opts.workdir / "profile.txt"
    command = [spy, "record", "-p", str(pid), "-d", str(max(1, int(opts.window) - 1))]
    command += ["-r", "250", "-f", "raw", "--nonblocking", "-o", str(out)]
    return await trio.lowlevel.open_process(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``; package paths shortened."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/trio_sfu/", "/site-packages/", "/lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


def summarize_profile(raw: str, top: int = 25) -> list[tuple[str, float, float]]:
    """py-spy's raw (collapsed) stacks -> ``(function, self %, total %)``, by self time."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count
    if not total:
        return []
    ranked = sorted(own.items(), key=lambda item: -item[1])[:top]
    return [(name, 100 * n / total, 100 * inclusive[name] / total) for name, n in ranked]


def profile_summary(raw: str, scenario: str, workers: int) -> dict[str, Any]:
    """The report's ``profile``: the run, how many samples, and the top functions."""
    ranked = summarize_profile(raw)
    samples = sum(
        int(line.rpartition(" ")[2])
        for line in raw.splitlines()
        if line.rpartition(" ")[2].isdigit()
    )
    return {
        "scenario": scenario,
        "workers": workers,
        "samples": samples,
        "top": ranked,
    }
