"""Transport-wide congestion control both ways: the receiver's recorder (its feedback
checked byte by byte) and the sender's estimator on simulated paths."""

from __future__ import annotations

import random

from trio_sfu.engine.bandwidth import SendSideEstimator, TwccRecorder
from trio_sfu.rtcp import TransportCcFeedback, build_rtcp, parse_rtcp_untrusted


def test_recorder_feedback_bytes() -> None:
    recorder = TwccRecorder()
    recorder.record(65534, 10.000000)
    # 65535 is lost
    recorder.record(0, 10.000500)  # wraps around
    recorder.record(1, 10.064000)
    feedback = recorder.feedback(sender_ssrc=1, media_ssrc=2)
    assert len(feedback) == 1
    expected = bytes.fromhex(
        "8f cd 0006"  # V=2, FMT=15; PT=205 (RTPFB); length 6 words (28 bytes)
        "00000001"  # sender SSRC
        "00000002"  # media SSRC
        "fffe 0004"  # base sequence number 65534; packet status count 4
        "00009c 00"  # reference time 156 x 64 ms = 9.984 s; feedback packet count 0
        "ac00"  # status vector chunk, 1-bit symbols: 1 0 1 1 (received, lost, received x2)
        "40 02 fe"  # deltas in 250 us: 64 (10.000 - 9.984 s), 2 (0.5 ms), 254 (63.5 ms)
        "000000"  # padding to 32 bits
    )
    assert build_rtcp(feedback) == expected
    parsed = parse_rtcp_untrusted(expected)[0]
    assert isinstance(parsed, TransportCcFeedback)
    assert parsed.arrivals_us() == [
        (65534, 10_000_000),
        (65535, None),
        (0, 10_000_500),
        (1, 10_064_000),
    ]
    # Nothing new: no feedback. The next one starts after the last reported number and
    # counts up the feedback packet count.
    assert recorder.feedback(1, 2) == []
    recorder.record(3, 10.1)
    (next_feedback,) = recorder.feedback(1, 2)
    assert next_feedback.base_seq == 2 and next_feedback.fb_pkt_count == 1
    assert next_feedback.recv_deltas[0] is None


def test_recorder_ignores_packets_already_reported_and_keeps_reordering() -> None:
    recorder = TwccRecorder()
    recorder.record(100, 1.0)
    recorder.record(102, 1.002)
    recorder.record(101, 1.003)  # reordered, before the feedback: reported as received
    (feedback,) = recorder.feedback(1, 2)
    assert [seq for seq, at in feedback.arrivals_us() if at is not None] == [100, 101, 102]
    recorder.record(99, 1.01)  # reported long ago (before the base): ignored
    assert recorder.feedback(1, 2) == []


def test_recorder_splits_a_gap_too_long_for_one_delta() -> None:
    recorder = TwccRecorder()
    recorder.record(1, 0.0)
    recorder.record(2, 20.0)  # 20 s later: more than a 16-bit delta (8.19 s) holds
    feedback = recorder.feedback(1, 2)
    assert [f.base_seq for f in feedback] == [1, 2]
    assert [len(f.recv_deltas) for f in feedback] == [1, 1]


class Path:
    """A simulated path: a FIFO bottleneck of ``capacity`` bits per second (None: none)
    without drops, then ``delay`` seconds; the receiver sends feedback every 100 ms."""

    def __init__(
        self, estimator: SendSideEstimator, capacity: float | None, delay: float = 0.02
    ) -> None:
        self.estimator = estimator
        self.capacity = capacity
        self.delay = delay
        self.recorder = TwccRecorder()
        self.now = 0.0
        self.link_free = 0.0
        self.next_feedback = 0.1
        self.in_flight: list[tuple[float, int]] = []

    def send(self, duration: float, rate: float, size: int = 1000) -> float:
        """Send ``size``-byte packets at ``rate`` for ``duration``; returns the time."""
        interval = size * 8 / rate
        stop = self.now + duration
        while self.now < stop:
            seq = self.estimator.on_sent(size, self.now)
            leave = self.now
            if self.capacity is not None:
                leave = max(self.now, self.link_free) + size * 8 / self.capacity
                self.link_free = leave
            self.in_flight.append((leave + self.delay, seq))
            self.now += interval
            while self.now >= self.next_feedback:
                self._feedback(self.next_feedback)
                self.next_feedback += 0.1
        return self.now

    def _feedback(self, at: float) -> None:
        arrived = [(when, seq) for when, seq in self.in_flight if when <= at]
        self.in_flight = [(when, seq) for when, seq in self.in_flight if when > at]
        for when, seq in arrived:
            self.recorder.record(seq, when)
        for feedback in self.recorder.feedback(1, 2):
            self.estimator.on_feedback(feedback, at)


def test_estimate_is_none_until_feedback_then_follows_the_delivery_rate() -> None:
    estimator = SendSideEstimator(initial_bitrate=300_000)
    assert estimator.estimate(0.0) is None
    path = Path(estimator, capacity=None)
    path.send(0.15, 800_000)
    # The first feedback covers too little time to measure a rate, and shows no queue.
    assert estimator.feedback_packets == 1 and estimator.acked_bitrate() is None
    assert estimator.estimate(path.now) is None
    path.send(0.3, 800_000)
    # A quarter of a second measured: 1.25 times what arrived.
    first = estimator.estimate(path.now)
    assert first is not None and 950_000 < first < 1_050_000
    path.send(2.55, 800_000)
    estimate = estimator.estimate(path.now)
    acked = estimator.acked_bitrate()
    assert acked is not None and 760_000 < acked < 840_000
    # Above what arrived, at most 1.5 times that: no more is known without probing.
    assert estimate is not None and 1.25 * acked <= estimate <= 1.52 * acked + 10_000
    assert estimator.queue_delay < 0.005


def test_a_queue_brings_the_first_estimate_below_the_bottleneck() -> None:
    estimator = SendSideEstimator(initial_bitrate=1_000_000)
    path = Path(estimator, capacity=400_000)
    path.send(0.2, 1_200_000)
    # The queue grows by 13 ms a packet; one feedback packet with a queue is not enough.
    assert estimator.queue_delay > estimator.overuse_delay
    assert estimator.estimate(path.now) is None
    path.send(0.1, 1_200_000)
    # Two in a row: the first estimate is 85 % of what arrived, not the initial bitrate.
    estimate = estimator.estimate(path.now)
    assert estimate is not None and estimate <= 0.9 * 400_000


def test_a_probe_the_path_carries_raises_the_estimate() -> None:
    estimator = SendSideEstimator(initial_bitrate=300_000)
    path = Path(estimator, capacity=None)
    path.send(2.0, 300_000)
    before = estimator.estimate(path.now)
    assert before is not None and before < 500_000
    estimator.start_probe(path.now)
    path.send(0.3, 2_000_000)
    estimator.end_probe(path.now)
    path.send(0.5, 300_000)
    result = estimator.probe_results[-1]
    assert result.success, result
    assert 1_800_000 < result.sent_bps < 2_200_000
    after = estimator.estimate(path.now)
    assert after is not None and after >= 1_600_000
    assert estimator.probes_finished == 1


def test_a_probe_into_a_bottleneck_fails() -> None:
    estimator = SendSideEstimator(initial_bitrate=300_000)
    path = Path(estimator, capacity=400_000)
    path.send(2.0, 300_000)
    estimator.start_probe(path.now)
    path.send(0.3, 1_500_000)
    estimator.end_probe(path.now)
    path.send(3.0, 300_000)
    result = estimator.probe_results[-1]
    assert not result.success
    assert result.delivered_bps < 0.5 * result.sent_bps
    # The queue the probe left behind brought the estimate below the bottleneck; once it
    # drained, the estimate is back near what the path carries.
    estimate = estimator.estimate(path.now)
    assert estimate is not None and 250_000 < estimate < 600_000


def test_remb_caps_the_estimate_while_fresh() -> None:
    estimator = SendSideEstimator()
    estimator.on_remb(250_000, now=1.0)
    assert estimator.estimate(1.0) == 250_000
    assert estimator.estimate(1.0 + estimator.remb_lifetime + 0.1) is None


def test_sequence_numbers_wrap() -> None:
    estimator = SendSideEstimator(history=16)
    seqs = [estimator.on_sent(100, 0.0) for _ in range(0x10002)]
    assert seqs[:2] == [0, 1] and seqs[-3:] == [0xFFFF, 0, 1]
    assert estimator.bytes_sent == 100 * 0x10002


def _acked_feedback(estimator: SendSideEstimator, first: int, count: int, at: float) -> None:
    recorder = TwccRecorder()
    for seq in range(first, first + count):
        recorder.record(seq & 0xFFFF, at + (seq - first) * 1e-4)
    for feedback in recorder.feedback(1, 2):
        estimator.on_feedback(feedback, at + 0.2)


def test_history_starts_small_and_grows_with_the_rate_between_feedbacks() -> None:
    estimator = SendSideEstimator(history=2048)
    assert estimator.history_size == 64  # a subscriber's transport: about a KiB
    for _ in range(30):
        estimator.on_sent(1000, 1.0)
    _acked_feedback(estimator, 0, 30, 1.0)
    assert estimator.history_size == 64  # 30 packets a feedback: room enough
    # A busy transport: 900 packets between two feedbacks. The history doubles at each
    # feedback until half of it holds them, and keeps what it remembered.
    sizes = []
    first = 30
    for round_ in range(7):
        for _ in range(900):
            estimator.on_sent(1000, 2.0 + round_)
        remembered = sum(
            estimator._sent_seq[seq & estimator._mask] == seq for seq in range(first, first + 900)
        )
        assert remembered == min(900, estimator.history_size)
        _acked_feedback(estimator, first, 900, 2.0 + round_)
        sizes.append(estimator.history_size)
        first += 900
    assert sizes == [128, 256, 512, 1024, 2048, 2048, 2048]  # capped at ``history``


def test_history_grows_to_hold_a_long_round_trip() -> None:
    """200 packets/s with feedback every 100 ms is 20 packets a feedback, which 64 slots
    hold. Then the delay creeps up to 0.6 s (10 ms every 100 ms, so the feedback keeps
    coming): 140 packets are sent before the report of the first one comes back. The
    reports of packets whose slots were overwritten make the history grow until they
    fit; the delivery rate is measured all along."""
    estimator = SendSideEstimator(initial_bitrate=300_000)
    path = Path(estimator, capacity=None, delay=0.02)
    path.send(1.0, 1_600_000)  # 1000-byte packets: 200 a second
    assert estimator.history_size == 64
    while path.delay < 0.6:
        path.delay += 0.01
        path.send(0.1, 1_600_000)
    path.send(2.0, 1_600_000)
    assert estimator.history_size == 256
    acked = estimator.acked_bitrate()
    assert acked is not None and 1_500_000 < acked < 1_700_000


def test_queue_delay_is_measured_from_the_smallest_delay_of_the_last_five_seconds() -> None:
    """One packet per feedback, every 50 ms, with random one-way delays: the smoothed
    queueing delay is the one computed from the plain minimum over the 5 s window."""
    rng = random.Random(7)
    estimator = SendSideEstimator()
    window: list[tuple[float, float]] = []
    expected = 0.0
    for n in range(400):
        sent_at = n * 0.05
        owd = rng.choice([0.02, 0.03, 0.05, rng.uniform(0.02, 0.3)])
        seq = estimator.on_sent(1000, sent_at)
        recorder = TwccRecorder()
        recorder.record(seq, sent_at + owd)
        (feedback,) = recorder.feedback(1, 2)
        now = sent_at + owd + 0.001
        estimator.on_feedback(feedback, now)
        # The owd the feedback carries (its arrival time is in 250 us units since its
        # reference time, 64 ms units: rounded as the packet rounds it).
        (_, arrival_us), *_ = feedback.arrivals_us()
        assert arrival_us is not None
        owd = arrival_us / 1_000_000 - sent_at
        window = [(at, value) for at, value in window if at >= now - 5.0] + [(now, owd)]
        queue_delay = owd - min(value for _, value in window)
        expected = queue_delay if n == 0 else expected + (queue_delay - expected) * 0.4
        assert abs(estimator.queue_delay - expected) < 1e-9


def test_the_newest_sixteen_probe_results_are_kept() -> None:
    estimator = SendSideEstimator(initial_bitrate=300_000)
    path = Path(estimator, capacity=None)
    path.send(1.0, 300_000)
    for _ in range(18):
        cluster = estimator.start_probe(path.now)
        path.send(0.1, 1_000_000)
        estimator.end_probe(path.now)
        path.send(0.3, 300_000)
    assert estimator.probes_finished == 18
    assert len(estimator.probe_results) == 16
    assert estimator.probe_results[-1].cluster == cluster
    assert [r.cluster for r in estimator.probe_results] == list(range(cluster - 15, cluster + 1))


def test_a_probe_whose_last_packets_were_lost_counts_once_nothing_more_is_reported() -> None:
    """While video is paused nothing but the probe carries transport-wide numbers: the
    feedback never reports the probe's last packets lost (no later packet arrived), so
    its result waits, and ``expire_probes`` finishes it a second after it ended."""
    estimator = SendSideEstimator()
    recorder = TwccRecorder()
    now = 0.0
    cluster = estimator.start_probe(now)
    for index in range(40):
        seq = estimator.on_sent(130, now)
        if index % 10 != 3 and index < 36:  # 4 lost in the middle, the last 4 lost
            recorder.record(seq, now + 0.02)
        now += 0.0125
    estimator.end_probe(now)
    for feedback in recorder.feedback(1, 2):
        estimator.on_feedback(feedback, now + 0.05)
    assert estimator.probe_results == []
    estimator.expire_probes(now + 0.5)
    assert estimator.probe_results == []
    estimator.expire_probes(now + 1.0)
    (result,) = estimator.probe_results
    assert result.cluster == cluster
    assert (result.reported, result.lost) == (36, 4)


def test_recent_peak_remembers_what_the_path_carried_for_a_minute() -> None:
    estimator = SendSideEstimator(initial_bitrate=300_000)
    path = Path(estimator, capacity=None)
    assert estimator.recent_peak(0.0) is None
    path.send(2.0, 1_200_000)
    peak = estimator.recent_peak(path.now)
    assert peak is not None and 1_100_000 < peak < 1_300_000
    # Loss came, the layers went down: the peak stays while the rate is lower ...
    path.send(30.0, 150_000)
    assert estimator.recent_peak(path.now) == peak
    # ... for about a minute; then it is what the path carries now.
    path.send(35.0, 150_000)
    later = estimator.recent_peak(path.now)
    assert later is not None and later < 200_000
