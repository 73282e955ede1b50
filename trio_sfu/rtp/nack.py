"""NACK generation for incoming streams (answering NACKs: :mod:`trio_sfu.rtp.egress`).

:class:`NackGenerator` (receiver side, RFC 4585 generic NACK): fed every sequence number
that arrives, it remembers the gaps, forgets the ones that get filled (late or by RTX), and
says which sequence numbers to NACK now, with a retry limit, a minimum interval between
retries of one number (from the RTT), an age limit, and a cap on the list: a gap too large
to repair is dropped and reported as "ask for a keyframe instead".

Sequence numbers are 16-bit on the wire and extended to unbounded ints inside, so the wrap
from 65535 to 0 is ordinary. Sans-IO and clock-free: ``now`` is a parameter (seconds on
any monotonic clock).
"""

from __future__ import annotations

from typing import final

__all__ = ["NackGenerator"]


@final
class _Missing:
    __slots__ = ("first_seen", "last_sent", "tries")

    def __init__(self, first_seen: float) -> None:
        self.first_seen = first_seen
        self.last_sent: float | None = None
        self.tries = 0


@final
class NackGenerator:
    """Decides which lost packets of one incoming stream to NACK, and when.

    Parameters (all keyword):

    * ``max_retries``: NACKs sent for one sequence number before giving up (10).
    * ``min_retry_interval`` / ``max_retry_interval``: the wait before NACKing the same
      number again is the RTT clamped to this range (0.02 s .. 0.1 s); until
      :meth:`set_rtt` is called it is ``max_retry_interval``.
    * ``initial_delay``: wait this long after noticing a gap before the first NACK, to let
      reordered packets arrive (0: NACK at once).
    * ``max_age``: forget a missing packet this many seconds after noticing it (1.0 s).
    * ``max_packets_behind``: forget a missing packet this many sequence numbers behind the
      newest one (1000).
    * ``max_missing``: the most missing packets tracked (500). A gap that would exceed it
      clears the list and :meth:`on_packet` returns True: request a keyframe instead.
    """

    __slots__ = (
        "_highest",
        "_missing",
        "_restart_seq",
        "_retry_interval",
        "dropped",
        "initial_delay",
        "max_age",
        "max_missing",
        "max_packets_behind",
        "max_retries",
        "max_retry_interval",
        "min_retry_interval",
        "recovered",
    )

    def __init__(
        self,
        *,
        max_retries: int = 10,
        min_retry_interval: float = 0.02,
        max_retry_interval: float = 0.1,
        initial_delay: float = 0.0,
        max_age: float = 1.0,
        max_packets_behind: int = 1000,
        max_missing: int = 500,
    ) -> None:
        if min_retry_interval > max_retry_interval:
            raise ValueError("min_retry_interval is above max_retry_interval")
        self.max_retries = max_retries
        self.min_retry_interval = min_retry_interval
        self.max_retry_interval = max_retry_interval
        self.initial_delay = initial_delay
        self.max_age = max_age
        self.max_packets_behind = max_packets_behind
        self.max_missing = max_missing
        self._retry_interval = max_retry_interval
        self._highest: int | None = None
        self._restart_seq = -1
        # Extended seq -> state, in increasing order (gaps are appended in order).
        self._missing: dict[int, _Missing] = {}
        #: Missing packets given up on (retries, age or distance exhausted, or cleared).
        self.dropped = 0
        #: Missing packets that arrived after all (late or retransmitted).
        self.recovered = 0

    @property
    def retry_interval(self) -> float:
        """The current wait between two NACKs of the same sequence number, in seconds."""
        return self._retry_interval

    def set_rtt(self, rtt: float) -> None:
        """Use a measured round-trip time (seconds) as the retry interval, clamped."""
        self._retry_interval = min(self.max_retry_interval, max(self.min_retry_interval, rtt))

    @property
    def missing(self) -> list[int]:
        """The 16-bit sequence numbers currently missing, oldest first."""
        return [ext & 0xFFFF for ext in self._missing]

    def __len__(self) -> int:
        return len(self._missing)

    def on_packet(self, seq: int, now: float, *, retransmitted: bool = False) -> bool:
        """Note the arrival of ``seq``; returns True when a keyframe should be requested.

        Pass the original sequence number of an RTX packet with ``retransmitted=True``: it
        fills its gap but never moves the stream forward. A packet newer than the newest
        opens a gap for everything in between; an older one fills its gap if it had one.
        Two consecutive packets more than ``max_packets_behind`` behind restart the
        tracking from them (the sender restarted its numbering); one alone is ignored.
        """
        highest = self._highest
        if highest is None:
            if not retransmitted:
                self._highest = seq & 0xFFFF
            return False
        delta = (seq - highest) & 0xFFFF
        if delta == 0:
            return False
        if delta >= 0x8000:
            back = 0x10000 - delta
            if back > self.max_packets_behind and not retransmitted:
                # Far behind: a stray packet, or a stream restarted with new numbers.
                # Two in a row mean a restart (as RFC 3550 A.1 does for big jumps).
                if seq & 0xFFFF == self._restart_seq:
                    self.dropped += len(self._missing)
                    self._missing.clear()
                    self._highest = seq & 0xFFFF
                    self._restart_seq = -1
                else:
                    self._restart_seq = (seq + 1) & 0xFFFF
                return False
            # Older than the newest: late or retransmitted.
            if self._missing.pop(highest - back, None) is not None:
                self.recovered += 1
            return False
        if retransmitted:
            return False
        ext = highest + delta
        self._highest = ext
        gap = delta - 1
        if not gap:
            return False
        missing = self._missing
        self._forget_behind(ext - self.max_packets_behind)
        if len(missing) + gap > self.max_missing:
            self.dropped += len(missing)
            missing.clear()
            return True
        for lost in range(highest + 1, ext):
            missing[lost] = _Missing(now)
        return False

    def _forget_behind(self, oldest: int) -> None:
        missing = self._missing
        while missing:
            first = next(iter(missing))
            if first >= oldest:
                break
            del missing[first]
            self.dropped += 1

    def get_nacks(self, now: float) -> list[int]:
        """The 16-bit sequence numbers to NACK now, oldest first; marks them as sent.

        Missing packets past their retries, age or distance are forgotten here. Feed the
        result to :func:`trio_sfu.rtcp.packets.nack_pairs_from_seqs` (or
        ``GenericNack.from_seqs``).
        """
        missing = self._missing
        if not missing:
            return []
        if self._highest is not None:
            self._forget_behind(self._highest - self.max_packets_behind)
        result: list[int] = []
        expired: list[int] = []
        interval = self._retry_interval
        for ext, state in missing.items():
            if state.tries >= self.max_retries or now - state.first_seen > self.max_age:
                expired.append(ext)
                continue
            last = state.last_sent
            if last is None:
                if now - state.first_seen < self.initial_delay:
                    continue
            elif now - last < interval:
                continue
            state.last_sent = now
            state.tries += 1
            result.append(ext & 0xFFFF)
        for ext in expired:
            del missing[ext]
        self.dropped += len(expired)
        return result
