"""NackGenerator: which sequence numbers to NACK, and when."""

from __future__ import annotations

import pytest

from trio_sfu.rtcp import nack_pairs_from_seqs
from trio_sfu.rtp.nack import NackGenerator


def arrive(gen: NackGenerator, seqs: list[int], now: float = 0.0) -> list[bool]:
    return [gen.on_packet(seq, now) for seq in seqs]


# -- NackGenerator ---------------------------------------------------------------------------


def test_gap_is_nacked_then_retried_after_the_interval() -> None:
    gen = NackGenerator()
    arrive(gen, [10, 11, 14])
    assert gen.missing == [12, 13]
    assert gen.get_nacks(0.0) == [12, 13]
    assert gen.get_nacks(0.05) == []  # retry interval (0.1 s without an RTT)
    assert gen.get_nacks(0.1) == [12, 13]
    gen.on_packet(12, 0.12)  # recovered
    assert gen.recovered == 1
    assert gen.get_nacks(0.2) == [13]


def test_first_packet_and_duplicates_open_no_gap() -> None:
    gen = NackGenerator()
    arrive(gen, [500, 500, 501, 501])
    assert len(gen) == 0
    assert gen.get_nacks(1.0) == []


def test_reordered_packet_fills_its_gap_before_any_nack() -> None:
    gen = NackGenerator(initial_delay=0.01)
    arrive(gen, [1, 3])
    assert gen.get_nacks(0.005) == []  # still waiting for reordering
    gen.on_packet(2, 0.006)
    assert gen.get_nacks(0.02) == []
    assert gen.recovered == 1


def test_initial_delay() -> None:
    gen = NackGenerator(initial_delay=0.01)
    arrive(gen, [1, 3])
    assert gen.get_nacks(0.009) == []
    assert gen.get_nacks(0.01) == [2]


def test_gap_across_the_wrap() -> None:
    gen = NackGenerator()
    arrive(gen, [65533, 65534, 1])
    assert gen.missing == [65535, 0]
    nacks = gen.get_nacks(0.0)
    assert nacks == [65535, 0]
    assert nack_pairs_from_seqs(nacks) == [(65535, 0b1)]
    gen.on_packet(0, 0.01)  # recovered across the wrap
    assert gen.missing == [65535]
    # Three wraps of contiguous packets later, a gap over the wrap still reads right.
    for i in range(2, 3 * 65536 + 65535):  # up to seq 65534
        gen.on_packet(i & 0xFFFF, 0.02)
    assert gen.missing == [65535]  # not yet forgotten: get_nacks prunes
    assert gen.get_nacks(0.03) == []  # 65535 is now far behind: dropped
    assert gen.missing == []
    arrive(gen, [65535, 2], now=0.04)
    assert gen.missing == [0, 1]


def test_retry_limit() -> None:
    gen = NackGenerator(max_retries=3, max_age=10.0)
    arrive(gen, [1, 3])
    sent = [gen.get_nacks(0.1 * i) for i in range(6)]
    assert sent == [[2], [2], [2], [], [], []]
    assert len(gen) == 0
    assert gen.dropped == 1


def test_age_limit() -> None:
    gen = NackGenerator(max_age=1.0, max_retries=100)
    arrive(gen, [1, 3], now=0.0)
    assert gen.get_nacks(0.0) == [2]
    assert gen.get_nacks(1.0) == [2]
    assert gen.get_nacks(1.1) == []  # noticed 1.1 s ago: forgotten
    assert gen.dropped == 1
    assert len(gen) == 0


def test_packets_behind_limit() -> None:
    gen = NackGenerator(max_packets_behind=100, max_age=100.0)
    arrive(gen, [1, 3, 5])
    arrive(gen, list(range(6, 104)))  # newest 103: 2 is 101 behind, 4 is 99 behind
    assert gen.get_nacks(0.0) == [4]
    assert gen.dropped == 1


def test_huge_gap_asks_for_a_keyframe() -> None:
    gen = NackGenerator(max_missing=500)
    assert arrive(gen, [1, 502]) == [False, False]  # 500 missing: exactly the cap
    assert len(gen) == 500
    assert gen.on_packet(504, 0.0) is True  # one more would exceed it: clear, keyframe
    assert len(gen) == 0
    assert gen.dropped == 500
    assert gen.on_packet(505, 0.0) is False
    assert gen.on_packet(2000, 0.0) is True  # a single gap over the cap


def test_retransmissions_fill_gaps_but_never_move_forward() -> None:
    gen = NackGenerator()
    arrive(gen, [1, 4])
    assert gen.on_packet(2, 0.01, retransmitted=True) is False
    assert gen.missing == [3]
    gen.on_packet(9, 0.01, retransmitted=True)  # a stray RTX ahead: ignored
    gen.on_packet(5, 0.02)
    assert gen.missing == [3]  # no gap 5..8 was opened by the RTX


def test_rtt_sets_the_retry_interval_within_bounds() -> None:
    gen = NackGenerator(min_retry_interval=0.02, max_retry_interval=0.1)
    assert gen.retry_interval == 0.1
    gen.set_rtt(0.001)
    assert gen.retry_interval == 0.02
    gen.set_rtt(1.0)
    assert gen.retry_interval == 0.1
    gen.set_rtt(0.05)
    assert gen.retry_interval == 0.05
    arrive(gen, [1, 3])
    assert gen.get_nacks(0.0) == [2]
    assert gen.get_nacks(0.04) == []
    assert gen.get_nacks(0.05) == [2]
    with pytest.raises(ValueError):
        NackGenerator(min_retry_interval=0.2, max_retry_interval=0.1)


def test_each_seq_has_its_own_schedule() -> None:
    gen = NackGenerator()  # retry interval 0.1 s
    arrive(gen, [1, 3], now=0.0)
    assert gen.get_nacks(0.0) == [2]
    arrive(gen, [5], now=0.05)
    assert gen.get_nacks(0.05) == [4]  # 2 is not due yet
    assert gen.get_nacks(0.11) == [2]
    assert gen.get_nacks(0.12) == []  # 4 is due at 0.15
    assert gen.get_nacks(0.16) == [4]
