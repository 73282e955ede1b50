#!/usr/bin/env python3
"""The cost of one request through the worker channel (issue 12): see
:func:`trio_sfu.bench.channel.channel_round_trips`.

Times N ``get_stats`` and N ``consume`` calls, one at a time, on the in-process engine and
through one worker process, and prints p50/p99/mean microseconds of each.

.venv/bin/python scripts/bench_channel.py                          # unpinned
.venv/bin/python scripts/bench_channel.py --cpu 0 --worker-cpu 0   # both on CPU 0
.venv/bin/python scripts/bench_channel.py --cpu 0 --worker-cpu 1   # one CPU each
"""

from __future__ import annotations

import argparse
import json
import sys

import trio

from trio_sfu.bench.channel import channel_round_trips


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls of each kind [2000]")
    parser.add_argument("--cpu", type=int, help="pin this process (the caller) to this CPU")
    parser.add_argument("--worker-cpu", type=int, help="pin the worker process to this CPU")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = trio.run(channel_round_trips, args.calls, args.cpu, args.worker_cpu)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{args.calls} calls each; caller on CPU {args.cpu}, worker on CPU {args.worker_cpu}")
    print(f"{'call':<10} {'engine':<16} {'p50 µs':>8} {'p99 µs':>8} {'mean µs':>8}")
    for name in ("get_stats", "consume"):
        for engine in ("in_process", "worker_process"):
            figures = result[engine][name]
            print(
                f"{name:<10} {engine:<16} {figures['p50_us']:>8.0f} {figures['p99_us']:>8.0f} "
                f"{figures['mean_us']:>8.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
