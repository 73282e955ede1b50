"""Sequence number / timestamp splicing across source streams (trio_sfu.rtp.rewriter)."""

from __future__ import annotations

import random
from bisect import bisect_left

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.rtp.rewriter import SEQ_MAX_AGE, SeqTsRewriter, Splicer

SSRC_A = 0x1111AAAA
SSRC_B = 0x2222BBBB

# 30 fps at 90 kHz: 3000 ticks per frame. Stream A's timestamps cross 2**32:
TS0 = 4294964000
TS1 = 4294967000  # TS0 + 3000
TS2 = 2704  # TS1 + 3000 - 2**32


def test_identity_first_stream_across_wrap() -> None:
    r = SeqTsRewriter()
    assert r.ssrc is None and r.next_seq is None
    r.switch_to(SSRC_A, 65534, TS0, 3000)
    assert r.ssrc == SSRC_A
    # Without initial values the first stream keeps its own numbers, through both wraps.
    assert r.rewrite(65534, TS0) == (65534, TS0)
    assert r.rewrite(65535, TS1) == (65535, TS1)
    assert r.rewrite(0, TS1) == (0, TS1)
    assert r.rewrite(1, TS2) == (1, TS2)
    assert r.last_ts == TS2
    assert r.next_seq == 2


def test_drop_then_switch_then_reorder() -> None:
    r = SeqTsRewriter()
    r.switch_to(SSRC_A, 65534, TS0, 3000)
    for seq, ts in ((65534, TS0), (65535, TS1), (0, TS1), (1, TS2)):
        assert r.rewrite(seq, ts) == (seq, ts)
    # Packet 2 is a skipped temporal layer: 3 takes its number.
    assert r.drop(2)
    assert r.rewrite(2, TS2) is None  # a retransmission of it stays dropped
    assert r.rewrite(3, 5704) == (2, 5704)
    assert r.next_seq == 3

    # Switch to B at its key frame, seq 1000 / ts 90000, one frame interval later.
    r.switch_to(SSRC_B, 1000, 90000, 3000)
    assert r.ssrc == SSRC_B
    assert r.ts_offset == (5704 + 3000 - 90000) % 2**32
    assert r.rewrite(999, 87000) is None  # from before the key frame
    assert r.rewrite(990, 84000) is None  # so is this one
    assert r.rewrite(1000, 90000) == (3, 8704)
    assert r.rewrite(1002, 93000) == (5, 11704)  # 1001 lost so far: gap kept
    assert r.rewrite(1001, 90000) == (4, 8704)  # arrives late: fills its slot
    assert r.last_ts == 11704  # the newest timestamp, not the latest packet's
    assert r.rewrite(1002, 93000) == (5, 11704)  # duplicate: same numbers


def test_initial_values_wrap() -> None:
    r = SeqTsRewriter(initial_seq=0xFFFF, initial_ts=0xFFFFFFFF)
    r.switch_to(SSRC_A, 500, 7000, 1234)  # ts_delta is ignored on the first switch
    assert r.rewrite(500, 7000) == (0xFFFF, 0xFFFFFFFF)
    assert r.rewrite(501, 10000) == (0, 2999)


def test_switch_without_forwarding_in_between() -> None:
    r = SeqTsRewriter(initial_seq=10, initial_ts=1000)
    r.switch_to(SSRC_A, 7, 50, 0)
    assert r.rewrite(7, 50) == (10, 1000)
    # Switch to B, nothing of B forwarded, then back to A: numbering goes on from A's last.
    r.switch_to(SSRC_B, 100, 100, 3000)
    r.switch_to(SSRC_A, 40, 9050, 3000)
    assert r.rewrite(40, 9050) == (11, 4000)


def test_old_packets_refused() -> None:
    r = SeqTsRewriter()
    r.switch_to(SSRC_A, 0, 0, 0)
    for seq in range(20000):
        assert r.rewrite(seq, seq) == (seq, seq)
    # SEQ_MAX_AGE (2048) behind the newest is still accepted, one more is not.
    assert r.rewrite(19999 - SEQ_MAX_AGE, 0) == (19999 - SEQ_MAX_AGE, 0)
    assert r.rewrite(19999 - SEQ_MAX_AGE - 1, 0) is None
    # Before the stream's start (even after wrapping around once) is refused too.
    r.switch_to(SSRC_B, 65000, 0, 0)
    assert r.rewrite(64999, 0) is None
    # ts_delta 0: B's first timestamp equals A's last one (19999).
    assert r.rewrite(65000, 0) == (20000, 19999)


def test_drop_results() -> None:
    s = Splicer(16)
    assert not s.drop(5)  # nothing started
    assert s.map(5) is None
    s.switch_to(5)
    assert s.map(5) == 5
    assert not s.drop(5)  # already forwarded
    assert s.drop(7)  # 6 lost, 7 dropped: 6's number stays reserved
    assert s.drop(7)  # idempotent
    assert s.map(8) == 7
    assert s.map(6) == 6  # late 6 still gets its own number
    assert not s.drop(6)  # too late, nothing shifts
    assert s.map(9) == 8


def test_splicer_narrow_source() -> None:
    s = Splicer(15, initial=0x7FFE)
    s.switch_to(126, in_bits=7)
    assert [s.map(v) for v in (126, 127, 0, 1)] == [0x7FFE, 0x7FFF, 0, 1]
    assert s.map(125) is None
    with pytest.raises(ValueError):
        s.switch_to(1, in_bits=16)


def test_bad_arguments() -> None:
    r = SeqTsRewriter()
    with pytest.raises(ValueError):
        r.switch_to(SSRC_A, 0, 0, -1)
    with pytest.raises(ValueError):
        r.switch_to(SSRC_A, 0, 0, 2**31)
    with pytest.raises(ValueError):
        Splicer(1)


# --- properties -----------------------------------------------------------------------------

seqs = st.integers(0, 0xFFFF) | st.sampled_from([0, 0xFFFF, 0xFFFE, 0x7FFF, 0x8000])
timestamps = st.integers(0, 0xFFFFFFFF) | st.sampled_from([0, 0xFFFFFFFF, 0xFFFFF000])
# One packet: (seq step from the previous one (>1 = lost packets), ts step, dropped?)
packets = st.tuples(st.integers(1, 3), st.sampled_from([0, 0, 3000, 1500, 90000]), st.booleans())
streams = st.tuples(
    seqs, timestamps, st.integers(0, 200000), st.lists(packets, min_size=1, max_size=40)
)


@settings(max_examples=200)
@given(
    st.none() | seqs,
    st.none() | timestamps,
    st.lists(streams, min_size=1, max_size=5),
)
def test_in_order_streams_are_continuous(
    initial_seq: int | None,
    initial_ts: int | None,
    stream_list: list[tuple[int, int, int, list[tuple[int, int, bool]]]],
) -> None:
    """In-order input: seq +1 per forwarded packet (losses aside), no gap for drops,
    timestamps keep their spacing within a stream and go on by ts_delta across switches."""
    r = SeqTsRewriter(initial_seq, initial_ts)
    next_out: int | None = None
    last_out_ts: int | None = None
    for first_seq, first_ts, ts_delta, pkts in stream_list:
        r.switch_to(SSRC_A, first_seq, first_ts, ts_delta)
        if next_out is None:
            next_out = first_seq if initial_seq is None else initial_seq
            first_out_ts = first_ts if initial_ts is None else initial_ts
        else:
            assert last_out_ts is not None
            first_out_ts = (last_out_ts + ts_delta) % 2**32
        assert r.next_seq == next_out
        seq, ts = first_seq, first_ts
        for i, (seq_step, ts_step, dropped) in enumerate(pkts):
            if i:
                seq = (seq + seq_step) % 2**16
                ts = (ts + ts_step) % 2**32
                next_out = (next_out + seq_step - 1) % 2**16  # lost ones keep their numbers
            if dropped and i:  # the key frame that starts a stream is never dropped
                assert r.drop(seq)
                assert r.rewrite(seq, ts) is None
                continue
            out = r.rewrite(seq, ts)
            assert out is not None
            assert out[0] == next_out
            assert out[1] == (first_out_ts + ts - first_ts) % 2**32
            next_out = (next_out + 1) % 2**16
            last_out_ts = out[1]
        assert r.last_ts == last_out_ts


@settings(max_examples=200)
@given(
    seqs,
    timestamps,
    st.lists(st.booleans(), min_size=1, max_size=60),
    st.lists(st.integers(0, 4), min_size=60, max_size=60),
)
def test_reordering_within_a_stream(
    first_seq: int,
    first_ts: int,
    drop_flags: list[bool],
    delays: list[int],
) -> None:
    """Reordered input: forwarded packets keep their order, never share a number, and
    without drops get exactly their source distance."""
    n = len(drop_flags)
    drop_flags[0] = False  # the key frame
    # Arrival order: packet i arrives at about i + delay (a bounded local shuffle).
    order = sorted(range(n), key=lambda i: (i + delays[i], i))
    # Packet 0 (the key frame the switch is made on) always arrives first.
    order.remove(0)
    order.insert(0, 0)
    r = SeqTsRewriter()
    r.switch_to(SSRC_B, first_seq, first_ts, 0)
    out: dict[int, int] = {}
    for i in order:
        seq = (first_seq + i) % 2**16
        ts = (first_ts + 3000 * i) % 2**32
        if drop_flags[i]:
            r.drop(seq)
            continue
        result = r.rewrite(seq, ts)
        assert result is not None
        assert result[1] == ts  # first stream: identity timestamps
        out[i] = (result[0] - first_seq) % 2**16  # distance from the first outgoing seq
    forwarded = sorted(out)
    distances = [out[i] for i in forwarded]
    assert distances == sorted(set(distances))  # order kept, no duplicates
    assert all(0 <= d < n for d in distances)
    if not any(drop_flags):
        assert distances == list(range(n))
    if order == list(range(n)):
        assert distances == list(range(len(forwarded)))


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("switch"), seqs, timestamps, st.integers(0, 2**31 - 1)),
            st.tuples(st.just("rewrite"), seqs, timestamps),
            st.tuples(st.just("drop"), seqs),
        ),
        max_size=60,
    )
)
def test_any_call_sequence_gives_valid_numbers(ops: list[tuple[object, ...]]) -> None:
    r = SeqTsRewriter()
    for op in ops:
        if op[0] == "switch":
            _, seq, ts, delta = op
            assert isinstance(seq, int) and isinstance(ts, int) and isinstance(delta, int)
            r.switch_to(SSRC_A, seq, ts, delta)
        elif op[0] == "rewrite":
            _, seq, ts = op
            assert isinstance(seq, int) and isinstance(ts, int)
            result = r.rewrite(seq, ts)
            if r.ssrc is None:
                assert result is None
            if result is not None:
                assert 0 <= result[0] <= 0xFFFF and 0 <= result[1] <= 0xFFFFFFFF
                # Asking again (a duplicate packet) gives the same answer.
                assert r.rewrite(seq, ts) == result
        else:
            _, seq = op
            assert isinstance(seq, int)
            r.drop(seq)


@pytest.mark.parametrize("seed", range(12))
def test_drop_bookkeeping_matches_a_model_that_remembers_everything(seed: int) -> None:
    """An 8-bit counter (values older than 64 refused) over thousands of values, many
    dropped, some late by up to 100: every answer is the one a splicer that never forgets
    a drop would give, while the splicer keeps only about a window's worth of drops."""
    rng = random.Random(seed)
    first = rng.randrange(256)
    count = 4000
    drop_share = rng.choice([0.1, 0.5, 0.9])
    delays = [rng.choice([0, 0, 1, 2, rng.randrange(40, 101)]) for _ in range(count)]
    order = sorted(range(1, count), key=lambda i: (i + delays[i], i))
    s = Splicer(8)
    s.switch_to(first)
    assert s.map(first) == first  # the switch is made on the first value
    dropped: list[int] = []  # the model: every value dropped so far, in order
    newest = 0
    late_answers = 0
    for i in order:
        value = (first + i) & 0xFF
        if rng.random() < drop_share:
            ok = s.drop(value)
            if i > newest:
                assert ok
                dropped.append(i)
                newest = i
            else:
                assert ok == (i == newest and i in dropped)
        else:
            out = s.map(value)
            newest = max(newest, i)
            if i in dropped or newest - i > 64:
                assert out is None
            else:
                assert out == (first + i - bisect_left(dropped, i)) & 0xFF
                late_answers += newest - i > 48
        # A retransmission of a value seen already (dropped or not), often at the edge.
        again = newest - rng.choice([63, 64, 65, rng.randrange(70)])
        if again >= 0 and (again in dropped or rng.random() < 0.5):
            out = s.map((first + again) & 0xFF)
            if again in dropped or newest - again > 64:
                assert out is None
            else:
                assert out == (first + again - bisect_left(dropped, again)) & 0xFF
        assert len(s._drops) <= 64 + 64 // 8 + 2
    assert late_answers > 10  # values near the window's edge were asked for


def test_drop_memory_stays_bounded_over_a_long_stream() -> None:
    """Half the packets of a long stream dropped (a temporal layer): the splicer keeps
    the drops of the last 16384 values and an eighth more, not all of them."""
    s = Splicer(16)
    s.switch_to(0)
    for n in range(200_000):
        value = n & 0xFFFF
        if n % 2:
            assert s.drop(value)
        else:
            assert s.map(value) == (n // 2) & 0xFFFF
        assert len(s._drops) <= (16384 + 2048) // 2 + 2
    # A late value near the window's end still gets its own number (all its newer drops
    # counted); one beyond it is refused.
    late = 199_999 - 16383
    assert s.map(late & 0xFFFF) == (late // 2) & 0xFFFF
    assert s.map((199_999 - 16385) & 0xFFFF) is None


def test_max_age_bounds_the_window_and_the_drops() -> None:
    """A temporal-layer filter dropping 3 packets of 4 over a long stream: with a max_age
    the splicer keeps only the drops of the last max_age values (and an eighth more)."""
    s = Splicer(16, max_age=1000)
    s.switch_to(0)
    sent = 0
    for n in range(100_000):
        value = n & 0xFFFF
        if n % 4:
            assert s.drop(value)
        else:
            assert s.map(value) == sent & 0xFFFF
            sent += 1
        assert len(s._drops) <= (1000 + 125) * 3 // 4 + 2
    newest = 99_999
    # A late kept value 1000 behind still gets its own number; one 1001 behind is refused.
    late = newest - 999  # 99_000: a multiple of 4, so it was kept
    assert late % 4 == 0
    assert s.map(late & 0xFFFF) == (late // 4) & 0xFFFF
    assert s.map((newest - 1003) & 0xFFFF) is None  # 98_996, kept, but too old
    # max_age never exceeds a quarter of the source's range.
    narrow = Splicer(15, max_age=10_000)
    narrow.switch_to(0, in_bits=7)
    for value in range(101):
        narrow.map(value)
    assert narrow.map(100 - 32) is not None and narrow.map(100 - 33) is None
    with pytest.raises(ValueError):
        Splicer(16, max_age=0)
