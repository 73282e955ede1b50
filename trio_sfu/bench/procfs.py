"""What the benchmarks read of processes and CPUs in ``/proc`` (proc(5)), and where they
put them (``sched_setaffinity``)."""

from __future__ import annotations

import contextlib
import os
import platform

__all__ = [
    "core_busy",
    "cpu_model",
    "cpu_seconds",
    "cpus_allowed",
    "rss_bytes",
    "run_delay",
    "set_affinity",
]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    # After the command: state is field 3, utime 14 and stime 15 (proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpus_allowed(pid: int) -> str:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return "?"


def run_delay(pid: int) -> float:
    """Seconds process ``pid`` (its main thread) spent runnable but waiting for a CPU
    (``/proc/<pid>/schedstat``, second field); 0 where the kernel keeps no schedstats."""
    try:
        with open(f"/proc/{pid}/schedstat") as file:
            return int(file.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def core_busy(cpu: int | None) -> float:
    """Seconds CPU ``cpu`` was busy so far (``/proc/stat``: all but idle and iowait), by
    anyone; for the whole machine when ``cpu`` is None."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    with open("/proc/stat") as file:
        for line in file:
            fields = line.split()
            if fields[0] == name:
                ticks = [int(x) for x in fields[1:8]]
                return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Move every thread of process ``pid`` to ``cpus`` (``taskset -a -p``)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(task), cpus)
