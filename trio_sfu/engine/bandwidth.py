"""Bandwidth estimation with transport-wide congestion control, both ways. Sans-IO.

Two halves, one per direction of a transport:

* :class:`TwccRecorder` is the *receiving* side: it notes the arrival time of every packet
  by its transport-wide sequence number (the ``transport-cc`` header extension) and turns
  them into :class:`~trio_sfu.rtcp.twcc.TransportCcFeedback` packets. The sender's
  delay-based estimator reads every late millisecond in them as a queue on the path, so
  the router gives it when the datagram reached the host (the kernel's receive
  timestamp, see :mod:`~trio_sfu.engine.rtc_sockets`), not when it was processed. The router uses it
  toward publishers that negotiated ``transport-cc`` (so that Chromium's send-side
  estimator works through the SFU); test clients and bots use it toward the SFU.

* :class:`SendSideEstimator` is the *sending* side, one per subscriber transport: it hands
  out transport-wide sequence numbers for what the SFU sends, remembers when and how big
  each packet was, and reads the subscriber's transport-cc feedback (and REMB) to estimate
  the bitrate the path carries.

The estimator is deliberately simple and says what it does:

* *Delivery rate*: the bits the subscriber received over the last second of arrivals.
* *Delay*: the one-way delay of each reported packet above the smallest one seen in the
  last few seconds is the queueing delay. A smoothed queueing delay above
  ``overuse_delay`` in two feedback packets in a row means a queue is building: the
  estimate drops to 85 % of the delivery rate (at most every ``decrease_interval``).
* Otherwise the estimate stays at least 1.25 times the delivery rate (the path carries
  what arrived, and likely a little more) and grows by 8 % a second, never beyond 1.5
  times the delivery rate: without probing nobody knows what lies beyond.
* *Probing*: :meth:`SendSideEstimator.start_probe` marks a cluster of packets (the router
  sends extra RTX copies meanwhile); when the feedback for it is in, a cluster delivered at
  (nearly) its sending rate without a queue raises the estimate to that rate.
* Packet loss is not an input: random loss is the weak-network policy's business
  (:mod:`trio_sfu.engine.layers`), congestion shows as delay first.
* REMB caps the estimate while it is fresh.

Times are seconds on one monotonic clock, passed in as ``now``.
"""

from __future__ import annotations

from array import array
from typing import Final, final

from trio_sfu.rtcp.twcc import TransportCcFeedback

__all__ = ["ProbeResult", "SendSideEstimator", "TwccRecorder"]

#: Most packets one feedback packet reports.
MAX_FEEDBACK_PACKETS: Final = 1000
_MAX_DELTA_US: Final = 8_000_000
#: Sent packets a transport remembers for transport-cc feedback at first (it grows): 64
#: is 320 ms of a 200 packet/s subscription, and feedback comes every 50 to 250 ms.
_INITIAL_HISTORY: Final = 64
#: Finished probes kept in :attr:`SendSideEstimator.probe_results`.
_PROBE_RESULTS: Final = 16
#: How long :meth:`SendSideEstimator.recent_peak` remembers the most the path delivered.
_PEAK_MEMORY: Final = 60.0


@final
class TwccRecorder:
    """Arrival times by transport-wide sequence number, turned into feedback packets.

    :meth:`record` is cheap (one unwrap, one dict store). :meth:`feedback` reports every
    sequence number from the first not yet reported to the highest received; a packet that
    arrives after its number was reported is ignored (it was reported lost).
    """

    __slots__ = ("_arrivals", "_fb_count", "_highest", "_next_base", "packets")

    def __init__(self) -> None:
        self._arrivals: dict[int, float] = {}
        self._highest: int | None = None
        self._next_base: int | None = None
        self._fb_count = 0
        #: Packets recorded.
        self.packets = 0

    def record(self, seq: int, arrival: float) -> None:
        """A packet with transport-wide sequence number ``seq`` (16 bits) arrived at
        ``arrival`` (seconds, one clock for every packet)."""
        self.packets += 1
        highest = self._highest
        if highest is None:
            ext = seq & 0xFFFF
            self._highest = ext
            self._next_base = ext
        else:
            delta = (seq - highest) & 0xFFFF
            if delta < 0x8000:
                ext = highest + delta
                self._highest = ext
            else:
                ext = highest - (0x10000 - delta)
                base = self._next_base
                if base is not None and ext < base:
                    return
        self._arrivals[ext] = arrival

    def feedback(self, sender_ssrc: int, media_ssrc: int) -> list[TransportCcFeedback]:
        """Feedback for everything received since the last call (``[]`` if nothing)."""
        highest = self._highest
        base = self._next_base
        if highest is None or base is None or highest < base or not self._arrivals:
            return []
        arrivals = self._arrivals
        if highest - base >= 0x8000:
            base = highest - 0x7FFF
        out: list[TransportCcFeedback] = []
        start = base
        while start <= highest:
            stop = min(highest + 1, start + MAX_FEEDBACK_PACKETS)
            times: list[int | None] = []
            previous: int | None = None
            for ext in range(start, stop):
                arrival = arrivals.get(ext)
                if arrival is None:
                    times.append(None)
                    continue
                micros = int(arrival * 1_000_000)
                if previous is not None and abs(micros - previous) > _MAX_DELTA_US:
                    # Too far from the previous arrival for one delta: end this packet here.
                    stop = ext
                    break
                previous = micros
                times.append(micros)
            while times and times[-1] is None:
                times.pop()
                stop -= 1
            if any(t is not None for t in times):
                out.append(
                    TransportCcFeedback.from_arrivals(
                        sender_ssrc, media_ssrc, start & 0xFFFF, self._fb_count & 0xFF, times
                    )
                )
                self._fb_count += 1
            if stop <= start:
                stop = start + 1
            start = stop
        self._next_base = highest + 1
        arrivals.clear()
        return out


@final
class ProbeResult:
    """What one probe cluster achieved (for logs and tests)."""

    __slots__ = ("cluster", "delivered_bps", "lost", "reported", "sent_bps", "success")

    def __init__(
        self,
        cluster: int,
        sent_bps: float,
        delivered_bps: float,
        success: bool,
        reported: int = 0,
        lost: int = 0,
    ) -> None:
        self.cluster = cluster
        self.sent_bps = sent_bps
        self.delivered_bps = delivered_bps
        self.success = success
        #: The cluster's packets the feedback reported (received or lost), and lost.
        self.reported = reported
        self.lost = lost

    def __repr__(self) -> str:
        return (
            f"<ProbeResult {self.cluster} sent={self.sent_bps:.0f} "
            f"delivered={self.delivered_bps:.0f} lost={self.lost}/{self.reported} "
            f"success={self.success}>"
        )


@final
class _Cluster:
    __slots__ = (
        "ended_at",
        "first_arrival",
        "first_sent",
        "first_size",
        "id",
        "last_arrival",
        "last_sent",
        "lost",
        "received",
        "received_bytes",
        "sent",
        "sent_bytes",
        "started_at",
    )

    def __init__(self, cluster_id: int, now: float) -> None:
        self.id = cluster_id
        self.started_at = now
        self.ended_at: float | None = None
        self.sent = 0
        self.sent_bytes = 0
        self.first_sent = now
        self.last_sent = now
        self.received = 0
        self.lost = 0
        self.received_bytes = 0
        self.first_arrival: float | None = None
        self.last_arrival = 0.0
        self.first_size = 0


@final
class SendSideEstimator:
    """The bitrate one subscriber's path carries, from its transport-cc feedback and REMB.

    Per sent packet call :meth:`on_sent` (it returns the transport-wide sequence number to
    write into the packet); per feedback :meth:`on_feedback`; per REMB :meth:`on_remb`.
    :meth:`estimate` is ``None`` until the feedback says something (no feedback: no limit).
    """

    __slots__ = (
        "_acked",
        "_acked_bits",
        "_acked_head",
        "_acked_sizes",
        "_clusters",
        "_estimate",
        "_last_decrease",
        "_last_update",
        "_mask",
        "_max_history",
        "_min_owd",
        "_next_cluster",
        "_overuse_count",
        "_peak",
        "_peak_at",
        "_queue_delay",
        "_remb",
        "_remb_at",
        "_rtx_at",
        "_rtx_tokens",
        "_sent_cluster",
        "_sent_seq",
        "_sent_since_feedback",
        "_sent_size",
        "_sent_time",
        "_seq",
        "active_cluster",
        "bytes_sent",
        "decrease_interval",
        "expect_feedback",
        "feedback_packets",
        "initial_bitrate",
        "last_overuse",
        "max_bitrate",
        "min_bitrate",
        "overuse_delay",
        "probe_results",
        "probes_finished",
        "remb_lifetime",
        "retransmission_share",
        "retransmissions_refused",
    )

    def __init__(
        self,
        *,
        initial_bitrate: float = 1_000_000,
        min_bitrate: float = 30_000,
        max_bitrate: float = 20_000_000,
        overuse_delay: float = 0.04,
        decrease_interval: float = 0.3,
        remb_lifetime: float = 5.0,
        history: int = 8192,
    ) -> None:
        if history & (history - 1) or not 0 < history <= 0x8000:
            raise ValueError("history must be a power of two, at most 32768")
        self.initial_bitrate = initial_bitrate
        self.min_bitrate = min_bitrate
        self.max_bitrate = max_bitrate
        self.overuse_delay = overuse_delay
        self.decrease_interval = decrease_interval
        self.remb_lifetime = remb_lifetime
        self._seq = 0
        # Per sent packet, in arrays (20 bytes a slot, not five Python objects); they start
        # small and double (up to ``history``, once per feedback) while the packets sent
        # between two feedbacks are more than half of them, or after a feedback reported
        # a packet whose slot had gone to a newer one already (a long round trip).
        self._max_history = history
        self._sent_since_feedback = 0
        size = min(history, _INITIAL_HISTORY)
        self._mask = size - 1
        self._sent_seq = array("i", [-1]) * size
        self._sent_time = array("d", [0.0]) * size
        self._sent_size = array("i", [0]) * size
        self._sent_cluster = array("i", [0]) * size
        self._estimate: float | None = None
        # Arrival times and sizes (bits) of acknowledged packets over the last second, in
        # two arrays (12 bytes a packet, nothing for the garbage collector to scan) used as
        # queues: the oldest one still counted is at ``_acked_head``, and the ones before
        # it are cut off in batches.
        self._acked = array("d")
        self._acked_sizes = array("i")
        self._acked_head = 0
        self._acked_bits = 0
        # (feedback time, smallest one-way delay in it) over the last 5 s, only those no
        # later feedback undercut: the first one is the window's minimum, the base for
        # queueing delay.
        self._min_owd: list[tuple[float, float]] = []
        self._queue_delay = 0.0
        self._last_decrease = -1e9
        self._overuse_count = 0
        self._last_update: float | None = None
        self._peak = 0.0
        self._peak_at = -1e9
        self._remb: float | None = None
        self._remb_at = -1e9
        self._clusters: dict[int, _Cluster] = {}
        self._next_cluster = 1
        #: The probe cluster packets are counted in now (0: none).
        self.active_cluster = 0
        #: When the last overuse was seen.
        self.last_overuse = -1e9
        #: Feedback packets processed.
        self.feedback_packets = 0
        #: Bytes handed to :meth:`on_sent` (for the sending rate).
        self.bytes_sent = 0
        #: The subscriber negotiated transport-cc or REMB (the router may probe for it).
        self.expect_feedback = False
        #: Finished probes, newest last (at most 16 kept).
        self.probe_results: list[ProbeResult] = []
        #: How many probes finished so far.
        self.probes_finished = 0
        #: Retransmissions may use this share of the estimate (a token bucket), so that
        #: NACKs for what a full link lost do not fill it further.
        self.retransmission_share = 0.25
        self._rtx_tokens = 0.0
        self._rtx_at: float | None = None
        self.retransmissions_refused = 0

    # ---- sending ------------------------------------------------------------------------

    def on_sent(self, size: int, now: float) -> int:
        """Note a packet of ``size`` bytes going out now; returns its transport-wide seq."""
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFF
        self._sent_since_feedback += 1
        self.bytes_sent += size
        index = seq & self._mask
        self._sent_seq[index] = seq
        self._sent_time[index] = now
        self._sent_size[index] = size
        cluster_id = self.active_cluster
        self._sent_cluster[index] = cluster_id
        if cluster_id:
            cluster = self._clusters.get(cluster_id)
            if cluster is not None:
                if not cluster.sent:
                    cluster.first_sent = now
                cluster.sent += 1
                cluster.sent_bytes += size
                cluster.last_sent = now
        return seq

    # ---- feedback -----------------------------------------------------------------------

    def _grow_history(self) -> None:
        old_seq, old_time = self._sent_seq, self._sent_time
        old_size, old_cluster = self._sent_size, self._sent_cluster
        size = min(self._max_history, len(old_seq) * 2)
        self._mask = mask = size - 1
        self._sent_seq = array("i", [-1]) * size
        self._sent_time = array("d", [0.0]) * size
        self._sent_size = array("i", [0]) * size
        self._sent_cluster = array("i", [0]) * size
        for old_index, seq in enumerate(old_seq):
            if seq >= 0:
                index = seq & mask
                self._sent_seq[index] = seq
                self._sent_time[index] = old_time[old_index]
                self._sent_size[index] = old_size[old_index]
                self._sent_cluster[index] = old_cluster[old_index]

    @property
    def history_size(self) -> int:
        """How many sent packets are remembered for feedback now."""
        return len(self._sent_seq)

    def on_remb(self, bitrate: float, now: float) -> None:
        self._remb = float(bitrate)
        self._remb_at = now

    def on_feedback(self, feedback: TransportCcFeedback, now: float) -> None:
        """Read one transport-cc feedback packet from the subscriber."""
        self.feedback_packets += 1
        busy = self._sent_since_feedback * 2 > len(self._sent_seq)
        self._sent_since_feedback = 0
        overwritten = 0
        mask = self._mask
        sent_seq = self._sent_seq
        sent_time = self._sent_time
        sent_size = self._sent_size
        sent_cluster = self._sent_cluster
        clusters = self._clusters
        acked = self._acked
        acked_sizes = self._acked_sizes
        min_owd: float | None = None
        owd_sum = 0.0
        owd_count = 0
        newest_arrival: float | None = None
        for seq, arrival_us in feedback.arrivals_us():
            index = seq & mask
            if sent_seq[index] != seq:
                newer = sent_seq[index]
                if newer >= 0 and arrival_us is not None and (newer - seq) & 0xFFFF < 0x8000:
                    overwritten += 1  # its slot went to a newer packet before this report
                continue
            cluster = clusters.get(sent_cluster[index]) if sent_cluster[index] else None
            if arrival_us is None:
                if cluster is not None:
                    cluster.lost += 1
                continue
            arrival = arrival_us / 1_000_000
            size = sent_size[index]
            owd = arrival - sent_time[index]
            if min_owd is None or owd < min_owd:
                min_owd = owd
            owd_sum += owd
            owd_count += 1
            acked.append(arrival)
            acked_sizes.append(size * 8)
            self._acked_bits += size * 8
            if newest_arrival is None or arrival > newest_arrival:
                newest_arrival = arrival
            if cluster is not None:
                if cluster.first_arrival is None or arrival < cluster.first_arrival:
                    cluster.first_arrival = arrival
                    cluster.first_size = size
                if arrival > cluster.last_arrival:
                    cluster.last_arrival = arrival
                cluster.received += 1
                cluster.received_bytes += size
            sent_seq[index] = -1  # reported once
        if (busy or overwritten) and len(sent_seq) < self._max_history:
            self._grow_history()
        if newest_arrival is not None:
            head = self._acked_head
            count = len(acked)
            oldest = newest_arrival - 1.0
            while head < count and acked[head] < oldest:
                self._acked_bits -= acked_sizes[head]
                head += 1
            if head * 2 >= count:  # half of it is gone: cut it off (amortised O(1))
                del acked[:head]
                del acked_sizes[:head]
                head = 0
            self._acked_head = head
        if min_owd is not None:
            history = self._min_owd
            while history and history[-1][1] >= min_owd:
                history.pop()
            history.append((now, min_owd))
            while history[0][0] < now - 5.0:
                del history[0]
            base = history[0][1]
            queue_delay = owd_sum / owd_count - base
            if self.feedback_packets == 1:
                self._queue_delay = queue_delay
            else:
                self._queue_delay += (queue_delay - self._queue_delay) * 0.4
        self._update(now)
        self._finish_clusters(now)

    @property
    def queue_delay(self) -> float:
        """The smoothed queueing delay seen in the feedback, in seconds."""
        return self._queue_delay

    def acked_bitrate(self, min_span: float = 0.25) -> float | None:
        """Bits per second the subscriber received over the last second of arrivals
        (``None`` while the arrivals span less than ``min_span`` seconds)."""
        acked = self._acked
        head = self._acked_head
        if len(acked) - head < 2:
            return None
        span = acked[-1] - acked[head]
        if span < min_span or span <= 0:
            return None
        return (self._acked_bits - self._acked_sizes[head]) / span

    def _update(self, now: float) -> None:
        last = self._last_update
        self._last_update = now
        # Overuse: a queue in two feedback packets in a row (one may be a hiccup).
        if self._queue_delay > self.overuse_delay:
            self._overuse_count += 1
        else:
            self._overuse_count = 0
        overuse = self._overuse_count >= 2
        # A queue shows after a few packets; a rate needs a quarter of a second.
        acked = self.acked_bitrate(0.05 if overuse else 0.25)
        if acked is None:
            return
        carried = self.acked_bitrate(0.75)
        if carried is not None and (carried >= self._peak or now - self._peak_at > _PEAK_MEMORY):
            self._peak = carried
            self._peak_at = now
        estimate = self._estimate
        if overuse:
            self.last_overuse = now
            if estimate is None or now - self._last_decrease >= self.decrease_interval:
                estimate = 0.85 * acked if estimate is None else min(estimate, 0.85 * acked)
                self._last_decrease = now
        elif estimate is None:
            # The path carries what arrived, and likely a little more.
            estimate = max(self.initial_bitrate, 1.25 * acked)
        else:
            dt = 0.0 if last is None else min(1.0, max(0.0, now - last))
            limit = 1.5 * acked + 10_000
            if estimate < limit:
                estimate = min(limit, estimate * 1.08**dt)
            estimate = max(estimate, 1.25 * acked)
        self._estimate = min(self.max_bitrate, max(self.min_bitrate, estimate))

    def recent_peak(self, now: float) -> float | None:
        """The most the subscriber received in a second (measured over at least 0.75 s)
        within about the last minute; ``None`` if nothing that recent.
        What the path carried before a loss episode cut the estimate: a probe may go
        straight back there once the loss is gone (libwebrtc probes after a large drop
        the same way)."""
        if now - self._peak_at > _PEAK_MEMORY:
            return None
        return self._peak

    def allow_retransmission(self, size: int, now: float) -> bool:
        """Whether a retransmission of ``size`` bytes fits the budget now (always, while
        there is no estimate)."""
        estimate = self.estimate(now)
        if estimate is None:
            return True
        rate = estimate * self.retransmission_share / 8  # bytes per second
        last = self._rtx_at
        self._rtx_at = now
        tokens = self._rtx_tokens
        if last is not None:
            tokens += (now - last) * rate
        tokens = min(tokens, rate * 0.25 + size)  # a quarter-second burst at most
        if tokens < size:
            self._rtx_tokens = tokens
            self.retransmissions_refused += 1
            return False
        self._rtx_tokens = tokens - size
        return True

    # ---- probing ------------------------------------------------------------------------

    def start_probe(self, now: float) -> int:
        """Count the packets sent from now on in a new probe cluster; returns its id."""
        self.end_probe(now)
        cluster_id = self._next_cluster
        self._next_cluster = cluster_id % 0x7FFFFFFF + 1  # never 0, fits the array
        self._clusters[cluster_id] = _Cluster(cluster_id, now)
        self.active_cluster = cluster_id
        return cluster_id

    def end_probe(self, now: float) -> None:
        cluster = self._clusters.get(self.active_cluster)
        if cluster is not None:
            cluster.ended_at = now
        self.active_cluster = 0

    def expire_probes(self, now: float) -> None:
        """Finish the probes whose feedback is as complete as it gets: the feedback never
        reports lost packets after the last one that arrived, and while nothing else is
        sent it reports nothing more, so a probe ended a second ago counts as it is."""
        self._finish_clusters(now)

    @property
    def probing(self) -> bool:
        return self.active_cluster != 0 or bool(self._clusters)

    def _finish_clusters(self, now: float) -> None:
        for cluster_id, cluster in list(self._clusters.items()):
            if cluster.ended_at is None:
                continue
            reported = cluster.received + cluster.lost
            if reported < cluster.sent and now - cluster.ended_at < 1.0:
                continue
            del self._clusters[cluster_id]
            duration = cluster.last_sent - cluster.first_sent
            if cluster.sent < 4 or duration <= 0:
                continue
            sent_bps = (cluster.sent_bytes - cluster.first_size) * 8 / duration
            delivered = 0.0
            first = cluster.first_arrival
            if first is not None and cluster.received >= 2:
                span = cluster.last_arrival - first
                if span > 0:
                    # The bottleneck sets the spacing: the span can't beat the sending time.
                    span = max(span, duration * 0.5)
                    delivered = (cluster.received_bytes - cluster.first_size) * 8 / span
            loss = cluster.lost / max(1, reported)
            success = (
                delivered >= 0.8 * sent_bps
                and loss < 0.1
                and self._queue_delay <= self.overuse_delay
            )
            self.probe_results.append(
                ProbeResult(cluster_id, sent_bps, delivered, success, reported, cluster.lost)
            )
            if len(self.probe_results) > _PROBE_RESULTS:
                del self.probe_results[0]
            self.probes_finished += 1
            if success:
                rate = min(delivered, sent_bps)
                current = self._estimate if self._estimate is not None else 0.0
                self._estimate = min(self.max_bitrate, max(current, rate))

    # ---- the answer ---------------------------------------------------------------------

    def estimate(self, now: float) -> float | None:
        """The bitrate to plan for; ``None`` while neither transport-cc nor REMB said one.

        The first estimate comes once the feedback covers a quarter of a second of
        arrivals (at least ``initial_bitrate`` then), or as soon as a queue shows."""
        value = self._estimate
        if self._remb is not None and now - self._remb_at <= self.remb_lifetime:
            value = self._remb if value is None else min(value, self._remb)
        return value
