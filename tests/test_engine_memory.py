"""Freed heap goes back to the system (glibc's malloc_trim) once enough was noted freed."""

from __future__ import annotations

import gc
import os

import pytest

from trio_sfu.engine import memory


def rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(memory._malloc_trim is None, reason="needs glibc's malloc_trim")
def test_trim_returns_freed_pages_once_enough_was_freed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_freed", 0)
    memory.note_freed(memory.TRIM_THRESHOLD - 1)
    assert not memory.trim_if_worth()  # not worth a pause yet
    # 40 MiB in 1 KiB blocks (like DTLS connections: small pieces all over the heap), with
    # one in 64 kept so that the heap's top cannot simply shrink.
    blocks = [bytes(1024) + i.to_bytes(4) for i in range(40_000)]
    kept = blocks[::64]
    del blocks
    gc.collect()
    before = rss()
    memory.note_freed(40 << 20)
    assert memory.trim_if_worth()
    assert rss() < before - (16 << 20)
    assert not memory.trim_if_worth()  # the count starts again
    assert kept
