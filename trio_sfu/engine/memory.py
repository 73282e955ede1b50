"""Giving freed heap memory back to the system.

glibc's allocator keeps what the process frees for its next allocations: the pages stay in
the process's RSS. When transports release their DTLS connections or close (tens of KiB
each, spread over the heap), :func:`trim_if_worth` returns the free pages with
``malloc_trim(0)`` once enough was freed (about 2 ms for a 50 MiB heap); the worker calls it
every few seconds. Without glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Final

__all__ = ["TRIM_THRESHOLD", "note_freed", "trim_if_worth"]

#: Bytes noted freed before a trim is worth its pause (about six transports' DTLS
#: connections; the worker checks every few seconds, so at most one pause of a couple of
#: milliseconds per check).
TRIM_THRESHOLD: Final = 512 << 10


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim: Callable[[int], int] = function
    return trim


_malloc_trim = _load_malloc_trim()
_freed = 0


def note_freed(size: int) -> None:
    """About ``size`` bytes of heap were just freed (an estimate is enough)."""
    global _freed
    _freed += size


def trim_if_worth() -> bool:
    """Return the free heap pages to the system if ``TRIM_THRESHOLD`` bytes were noted
    freed since the last trim; True if it trimmed."""
    global _freed
    if _freed < TRIM_THRESHOLD or _malloc_trim is None:
        return False
    _freed = 0
    _malloc_trim(0)
    return True
