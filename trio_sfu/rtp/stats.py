"""Receive statistics per SSRC, as RFC 3550 appendix A.1, A.3 and A.8 compute them.

:class:`ReceiveStats` follows one incoming RTP stream: the extended highest sequence
number (with wrap-around cycles), packets expected and received, cumulative loss, the
fraction lost since the previous report, and the interarrival jitter. It then writes the
stream's report block for an RR or SR. :func:`round_trip_time` reads a report block that
came back and gives the round-trip time (RFC 3550 section 6.4.1).

No probation (A.1's MIN_SEQUENTIAL): the first packet starts the stream. A jump of
MAX_DROPOUT or more packets is taken as a restart only when the next packet continues from
it (A.1's ``bad_seq`` rule); a lone stray packet is not counted.

Sans-IO and clock-free: arrival times and ``now`` are parameters, in seconds on any
monotonic clock, the same one for all calls.
"""

from __future__ import annotations

from typing import final

from trio_sfu.rtcp.ntp import seconds_to_compact
from trio_sfu.rtcp.packets import ReportBlock

__all__ = ["MAX_DROPOUT", "MAX_MISORDER", "ReceiveStats", "round_trip_time", "rtt_from_block"]

#: A forward jump of this many sequence numbers or more is suspect (A.1).
MAX_DROPOUT = 3000
#: A backward step of up to this many is a late packet, not a restart (A.1).
MAX_MISORDER = 100

_SEQ_MOD = 1 << 16
_MASK32 = 0xFFFF_FFFF
_HALF32 = 1 << 31


@final
class ReceiveStats:
    """Reception statistics of one SSRC (RFC 3550 A.1 sequence tracking, A.3 loss, A.8
    jitter).

    Feed every received packet to :meth:`update`; call :meth:`make_report_block` once per
    RTCP report interval (it starts a new interval for ``fraction_lost``).
    """

    __slots__ = (
        "_bad_seq",
        "_expected_prior",
        "_received_prior",
        "_started",
        "_transit",
        "base_seq",
        "cycles",
        "fraction_lost",
        "jitter",
        "max_seq",
        "received",
    )

    def __init__(self) -> None:
        self._started = False
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self._bad_seq = _SEQ_MOD + 1
        #: Packets counted as received (duplicates included, as in A.1).
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: float | None = None
        #: Interarrival jitter estimate in RTP timestamp units (A.8), as a float.
        self.jitter = 0.0
        #: The 8-bit fraction lost computed by the last :meth:`make_report_block`.
        self.fraction_lost = 0

    def _restart(self, seq: int) -> None:
        self._started = True
        self.base_seq = seq
        self.max_seq = seq
        self.cycles = 0
        self._bad_seq = _SEQ_MOD + 1
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit = None

    def update(self, seq: int, rtp_timestamp: int, arrival_time: float, clock_rate: int) -> bool:
        """Count one received packet; returns False if it was set aside as a stray jump.

        ``arrival_time`` is in seconds; ``clock_rate`` is the payload's RTP clock (Hz).
        """
        if not self._started:
            self._restart(seq)
        else:
            udelta = (seq - self.max_seq) & 0xFFFF
            if udelta < MAX_DROPOUT:
                # In order, possibly with a gap.
                if seq < self.max_seq:
                    self.cycles += _SEQ_MOD
                self.max_seq = seq
            elif udelta <= _SEQ_MOD - MAX_MISORDER:
                # A very large jump: believe it only if the next packet follows on.
                if seq != self._bad_seq:
                    self._bad_seq = (seq + 1) & 0xFFFF
                    return False
                self._restart(seq)
            # Otherwise a duplicate or a late (reordered) packet: counted, no new max.
        self.received += 1

        # Interarrival jitter (A.8), in timestamp units. The transit difference is taken
        # modulo 2^32 so that an RTP timestamp wrap does not look like a huge jump.
        transit = arrival_time * clock_rate - rtp_timestamp
        previous = self._transit
        self._transit = transit
        if previous is not None:
            d = (transit - previous + _HALF32) % (1 << 32) - _HALF32
            if d < 0:
                d = -d
            self.jitter += (d - self.jitter) / 16.0
        return True

    @property
    def extended_highest_seq(self) -> int:
        """Highest sequence number received, with 16 bits of wrap count above it."""
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        """Packets expected: from the first sequence number to the highest (A.3)."""
        if not self._started:
            return 0
        return self.extended_highest_seq - self.base_seq + 1

    @property
    def cumulative_lost(self) -> int:
        """Expected minus received, clamped to 24 bits signed (negative with duplicates)."""
        return max(-0x80_0000, min(0x7F_FFFF, self.expected - self.received))

    def make_report_block(
        self,
        ssrc: int,
        now: float,
        last_sr_ntp_compact: int = 0,
        last_sr_arrival: float | None = None,
    ) -> ReportBlock:
        """This stream's report block, and the start of a new reporting interval.

        ``ssrc`` is the reported stream's SSRC; ``last_sr_ntp_compact`` is the middle 32
        bits of the NTP timestamp of the last SR received from it (0: none) and
        ``last_sr_arrival`` when that SR arrived, on ``now``'s clock. DLSR is their
        difference in 1/65536 s, 0 without an SR.
        """
        expected = self.expected
        expected_interval = expected - self._expected_prior
        self._expected_prior = expected
        received_interval = self.received - self._received_prior
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        if expected_interval <= 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        self.fraction_lost = fraction
        dlsr = 0
        if last_sr_ntp_compact and last_sr_arrival is not None:
            dlsr = seconds_to_compact(now - last_sr_arrival)
        return ReportBlock(
            ssrc=ssrc,
            fraction_lost=fraction,
            cumulative_lost=self.cumulative_lost,
            highest_seq=self.extended_highest_seq & _MASK32,
            jitter=int(self.jitter) & _MASK32,
            lsr=last_sr_ntp_compact & _MASK32,
            dlsr=dlsr,
        )


def round_trip_time(lsr: int, dlsr: int, arrival_ntp_compact: int) -> float | None:
    """RTT in seconds from a report block about our stream (RFC 3550 section 6.4.1).

    ``arrival_ntp_compact`` is when the report arrived, as compact NTP (middle 32 bits) on
    the same clock that stamped our SRs. Returns None if the block has no LSR (the peer
    has no SR from us yet); a slightly negative result (rounding, a clock step) is 0.0.
    """
    if lsr == 0:
        return None
    rtt = (arrival_ntp_compact - lsr - dlsr) & _MASK32
    if rtt & 0x8000_0000:
        return 0.0
    return rtt / 65536.0


def rtt_from_block(block: ReportBlock, arrival_ntp_compact: int) -> float | None:
    """:func:`round_trip_time` for a parsed :class:`~trio_sfu.rtcp.packets.ReportBlock`."""
    return round_trip_time(block.lsr, block.dlsr, arrival_ntp_compact)
