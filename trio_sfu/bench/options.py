"""The fan-out benchmark's settings for every run (from the command line), and where its
processes run."""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
from pathlib import Path
from typing import final

__all__ = ["Options", "pinned"]


@final
class Options:
    def __init__(self, args: argparse.Namespace) -> None:
        self.window: float = args.window
        self.warmup: float = args.warmup
        self.server_cpu: int | None = None if args.no_pin else args.server_cpu
        self.generator_cpu: int | None = None if args.no_pin else args.generator_cpu
        #: Every CPU this process may use, for the workers and floating generators.
        self.cpus: list[int] = sorted(os.sched_getaffinity(0))
        self.peers_per_process: int = args.peers_per_process
        self.verbose: bool = args.verbose
        self.nice: int = args.nice
        self.retry_busy: int = args.retry_busy
        self.pacing: bool = not args.burst
        self.admin_token = secrets.token_hex(16)
        self.workdir = Path(tempfile.mkdtemp(prefix="trio-sfu-bench-"))

    def worker_cpus(self, count: int) -> list[int]:
        """The CPUs of ``count`` workers in placement order: the server's first, then the
        others in turn."""
        assert self.server_cpu is not None
        order = [self.server_cpu] + [c for c in self.cpus if c != self.server_cpu]
        return [order[i % len(order)] for i in range(count)]


def pinned(cpu: int | str | None, command: list[str], nice: int = 0) -> list[str]:
    """``command`` run at niceness ``nice`` on ``cpu`` (``taskset -c``; None: anywhere)."""
    if nice:
        command = ["nice", "-n", str(nice), *command]
    if cpu is None:
        return command
    return ["taskset", "-c", str(cpu), *command]
