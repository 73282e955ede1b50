"""NackGenerator (which seqs to NACK, when) and RetransmissionBuffer (answering NACKs)."""

from __future__ import annotations

import pytest

from trio_sfu.rtcp import nack_pairs_from_seqs
from trio_sfu.rtp.nack import NackGenerator, RetransmissionBuffer


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


# -- RetransmissionBuffer ----------------------------------------------------------------------


def test_store_and_get() -> None:
    buf = RetransmissionBuffer(16)
    assert buf.get(1) is None
    for seq in range(1, 6):
        buf.store(seq, b"p%d" % seq)
    assert buf.get(3) == b"p3"
    assert buf.get(6) is None  # newer than anything sent
    assert buf.get(0) is None  # never stored


def test_wrap() -> None:
    buf = RetransmissionBuffer(16)
    for seq in [*range(65530, 65536), *range(6)]:
        buf.store(seq, seq.to_bytes(2, "big"))
    assert buf.get(65533) == b"\xff\xfd"
    assert buf.get(2) == b"\x00\x02"
    assert buf.get(65529) is None


def test_only_the_newest_size_packets_are_kept() -> None:
    buf = RetransmissionBuffer(16)
    for seq in range(41):
        buf.store(seq, bytes([seq]))
    assert buf.get(24) is None  # 40 - 24 = 16 behind
    assert buf.get(25) == bytes([25])
    assert buf.get(40) == bytes([40])


def test_forward_jump_forgets_older_packets() -> None:
    buf = RetransmissionBuffer(16)
    for seq in range(11):
        buf.store(seq, bytes([seq]))
    buf.store(5000, b"new")
    assert buf.get(10) is None
    assert buf.get(5000) == b"new"
    assert buf.get(4999) is None  # slot holds nothing for that number


def test_stale_slot_after_a_full_wrap_is_not_returned() -> None:
    buf = RetransmissionBuffer(16)
    buf.store(5, b"old")
    # Move forward by a whole 2^16 cycle plus 3 without storing 5 again.
    for step in (0x4000, 0x8000, 0xC000, 0x10000 + 3):
        buf.store((5 + step) & 0xFFFF, b"x")
    assert buf.get(5) is None  # same 16-bit number, same slot, 65536 packets older
    buf.store(5 + 4, b"y")
    buf.store(5, b"late")  # a late packet within the window is kept
    assert buf.get(5) == b"late"


def test_late_packet_within_the_window() -> None:
    buf = RetransmissionBuffer(16)
    buf.store(10, b"a")
    buf.store(12, b"c")
    buf.store(11, b"b")
    assert [buf.get(s) for s in (10, 11, 12)] == [b"a", b"b", b"c"]


def test_backward_restart() -> None:
    buf = RetransmissionBuffer(16)
    for seq in range(1000, 1011):
        buf.store(seq, b"old")
    buf.store(100, b"restarted")  # 910 behind: a new stream, not a late packet
    assert buf.get(100) == b"restarted"
    assert buf.get(1010) is None
    buf.store(101, b"next")
    assert buf.get(101) == b"next"


def test_max_age() -> None:
    buf = RetransmissionBuffer(16, max_age=1.0)
    buf.store(1, b"a", now=10.0)
    assert buf.get(1, now=10.5) == b"a"
    assert buf.get(1, now=11.5) is None
    assert buf.get(1) == b"a"  # without now, age is not checked


def test_clear_and_size_validation() -> None:
    buf = RetransmissionBuffer(16)
    buf.store(1, b"a")
    buf.clear()
    assert buf.get(1) is None
    buf.store(7, b"b")
    assert buf.get(7) == b"b"
    for size in (0, 1000, 1 << 16):
        with pytest.raises(ValueError):
            RetransmissionBuffer(size)


def test_backward_restart_needs_two_packets_in_a_row() -> None:
    gen = NackGenerator(max_packets_behind=1000)
    arrive(gen, [30000, 30002])
    assert gen.missing == [30001]
    gen.on_packet(100, 0.0)  # a lone stray far behind: ignored
    assert gen.missing == [30001]
    gen.on_packet(30003, 0.0)
    gen.on_packet(200, 0.0)
    gen.on_packet(201, 0.0)  # two in a row: the sender restarted at 200
    assert gen.missing == []
    assert gen.dropped == 1
    gen.on_packet(203, 0.0)
    assert gen.missing == [202]
    # Retransmissions far behind never restart anything.
    gen.on_packet(5, 0.0, retransmitted=True)
    gen.on_packet(6, 0.0, retransmitted=True)
    assert gen.missing == [202]
