"""Receive statistics against RFC 3550 appendix A.1, A.3 and A.8 arithmetic, by hand."""

from __future__ import annotations

import pytest

from trio_sfu.rtcp import ReportBlock
from trio_sfu.rtp.stats import ReceiveStats, round_trip_time, rtt_from_block

CLOCK = 90_000


def feed(stats: ReceiveStats, seqs: list[int]) -> list[bool]:
    """Packets 20 ms apart with matching timestamps (no jitter)."""
    results = []
    for i, seq in enumerate(seqs):
        results.append(stats.update(seq, 1800 * i, 0.02 * i, CLOCK))
    return results


def test_no_packets_reports_nothing_lost() -> None:
    stats = ReceiveStats()
    assert stats.expected == 0
    assert stats.make_report_block(1, now=0.0) == ReportBlock(1, 0, 0, 0, 0, 0, 0)


def test_in_order_without_loss() -> None:
    stats = ReceiveStats()
    feed(stats, list(range(100, 110)))
    assert (stats.expected, stats.received, stats.cumulative_lost) == (10, 10, 0)
    block = stats.make_report_block(0xABC, now=1.0)
    assert block == ReportBlock(0xABC, 0, 0, 109, 0, 0, 0)


def test_loss_with_gaps_and_the_interval_fraction() -> None:
    stats = ReceiveStats()
    feed(stats, [1, 2, 3, 5, 6, 9, 10])  # 4, 7, 8 lost
    assert stats.expected == 10  # 10 - 1 + 1
    assert stats.received == 7
    block = stats.make_report_block(7, now=0.0)
    # fraction = (lost_interval << 8) / expected_interval = (3 << 8) // 10 = 76
    assert (block.fraction_lost, block.cumulative_lost, block.highest_seq) == (76, 3, 10)
    assert stats.fraction_lost == 76
    # Next interval: 11..30 with 15 and 16 missing -> 2 of 20 lost -> 512 // 20 = 25.
    feed(stats, [s for s in range(11, 31) if s not in (15, 16)])
    block = stats.make_report_block(7, now=1.0)
    assert (block.fraction_lost, block.cumulative_lost, block.highest_seq) == (25, 5, 30)
    # An interval with nothing new expected reports 0.
    assert stats.make_report_block(7, now=2.0).fraction_lost == 0


def test_reordering_is_not_loss() -> None:
    stats = ReceiveStats()
    feed(stats, [1, 2, 4, 3, 5])
    assert (stats.expected, stats.received, stats.cumulative_lost) == (5, 5, 0)
    assert stats.extended_highest_seq == 5
    assert stats.make_report_block(1, 0.0).fraction_lost == 0


def test_a_late_packet_counted_in_a_later_interval_gives_no_negative_fraction() -> None:
    stats = ReceiveStats()
    feed(stats, [1, 2, 4])
    assert stats.make_report_block(1, 0.0).fraction_lost == (1 << 8) // 4  # 64
    stats.update(3, 0, 0.1, CLOCK)  # arrives after the report: interval loss -1 -> 0
    block = stats.make_report_block(1, 0.2)
    assert (block.fraction_lost, block.cumulative_lost) == (0, 0)


def test_duplicates_make_cumulative_loss_negative() -> None:
    stats = ReceiveStats()
    feed(stats, [1, 2, 2, 3, 3])
    assert stats.cumulative_lost == 3 - 5
    block = stats.make_report_block(1, 0.0)
    assert (block.fraction_lost, block.cumulative_lost) == (0, -2)


def test_wrap_around_counts_a_cycle() -> None:
    stats = ReceiveStats()
    feed(stats, [*range(65530, 65536), *range(5)])
    assert stats.cycles == 65536
    assert stats.extended_highest_seq == 0x1_0004
    assert stats.expected == 11
    assert stats.make_report_block(1, 0.0).highest_seq == 0x0001_0004


def test_reordered_across_the_wrap() -> None:
    stats = ReceiveStats()
    feed(stats, [65534, 0, 65535])  # 65535 arrives after 0
    assert stats.extended_highest_seq == 0x1_0000
    assert (stats.expected, stats.received, stats.cumulative_lost) == (3, 3, 0)


def test_a_lone_big_jump_is_not_counted() -> None:
    stats = ReceiveStats()
    assert feed(stats, [*range(1, 11), 30000, 11]) == [True] * 10 + [False, True]
    assert (stats.expected, stats.received, stats.extended_highest_seq) == (11, 11, 11)


def test_two_sequential_packets_after_a_jump_restart_the_stream() -> None:
    stats = ReceiveStats()
    feed(stats, list(range(1, 11)))
    assert stats.update(30000, 0, 1.0, CLOCK) is False
    assert stats.update(30001, 0, 1.02, CLOCK) is True
    # A.1: init_seq(30001) then count it; 30000 itself is not counted.
    assert (stats.base_seq, stats.expected, stats.received) == (30001, 1, 1)
    assert stats.make_report_block(1, 1.1).highest_seq == 30001


def test_jitter_with_known_transit_times() -> None:
    # 8 kHz audio, 20 ms packets (160 ticks). Transit in ticks: 0, 80, 0, 0.
    stats = ReceiveStats()
    stats.update(1, 0, 0.000, 8000)
    stats.update(2, 160, 0.030, 8000)  # 10 ms late: D = 80
    assert stats.jitter == pytest.approx(80 / 16)  # 5.0
    stats.update(3, 320, 0.040, 8000)  # back on time: D = 80
    assert stats.jitter == pytest.approx(5 + (80 - 5) / 16)  # 9.6875
    stats.update(4, 480, 0.060, 8000)  # D = 0
    assert stats.jitter == pytest.approx(9.6875 * 15 / 16)  # 9.08203125
    assert stats.make_report_block(1, 0.1).jitter == 9


def test_jitter_converges_to_the_mean_deviation() -> None:
    # Transit alternating 0 and 90 ticks: |D| = 90 every packet, J -> 90.
    stats = ReceiveStats()
    for i in range(400):
        late = 0.001 if i % 2 else 0.0
        stats.update(i, 1800 * i, 0.02 * i + late, CLOCK)
    assert stats.jitter == pytest.approx(90, rel=1e-6)


def test_jitter_ignores_the_rtp_timestamp_wrap() -> None:
    # 8 kHz, 160 ticks per packet, the timestamp wraps from 2^32 - 160 to 0.
    stats = ReceiveStats()
    stats.update(1, (1 << 32) - 320, 10.00, 8000)
    stats.update(2, (1 << 32) - 160, 10.02, 8000)
    stats.update(3, 0, 10.04, 8000)  # transit differs by 2^32 ticks: that is 0 jitter
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)
    stats.update(4, 160, 10.07, 8000)  # 10 ms late: D = 80
    assert stats.jitter == pytest.approx(80 / 16)


def test_lsr_and_dlsr() -> None:
    stats = ReceiveStats()
    feed(stats, [1, 2, 3])
    block = stats.make_report_block(
        5, now=11.5, last_sr_ntp_compact=0x1234_5678, last_sr_arrival=10.0
    )
    assert block.lsr == 0x1234_5678
    assert block.dlsr == 0x0001_8000  # 1.5 s in 1/65536 s
    # No SR yet: both 0.
    block = stats.make_report_block(5, now=12.0)
    assert (block.lsr, block.dlsr) == (0, 0)


def test_round_trip_time_rfc3550_example() -> None:
    # RFC 3550 6.4.1: A = 0xb710:8000 (46864.500 s), LSR = 0xb705:2000 (46853.125 s),
    # DLSR = 0x0005:4000 (5.250 s) -> RTT = 6.125 s.
    assert round_trip_time(0xB705_2000, 0x0005_4000, 0xB710_8000) == 6.125
    block = ReportBlock(1, 0, 0, 0, 0, 0xB705_2000, 0x0005_4000)
    assert rtt_from_block(block, 0xB710_8000) == 6.125


def test_round_trip_time_edge_cases() -> None:
    assert round_trip_time(0, 0x10000, 0x50000) is None  # no SR received by the peer
    assert round_trip_time(0x10000, 0x10000, 0x1FFFF) == 0.0  # slightly negative
    # Compact NTP wraps: LSR just before the wrap, A just after.
    assert round_trip_time(0xFFFF_0000, 0x0001_0000, 0x0002_0000) == 2.0
