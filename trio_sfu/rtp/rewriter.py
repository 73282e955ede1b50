"""Splicing several source streams into one continuous outgoing stream (sans-IO).

A simulcast consumer forwards one producer stream at a time and switches to another at a
keyframe; a temporal-layer filter drops some packets of the stream it forwards. The
subscriber must nevertheless see one RTP stream whose sequence numbers go up by one per
packet and whose timestamps go on from where they were. Two classes do the renumbering:

* :class:`Splicer` renumbers one modular counter (RTP sequence number, VP8 PictureID,
  VP8 TL0PICIDX): the first value of each new source follows the last outgoing value by
  one, values dropped on purpose leave no gap, and reordering inside a source is kept.
* :class:`SeqTsRewriter` is what a consumer holds: a :class:`Splicer` for the 16-bit
  sequence number plus an offset for the 32-bit timestamp, chosen at each switch so that
  the new stream's first timestamp lands ``ts_delta`` after the last one sent.

How the splicer works: it unwraps incoming values into an unbounded "extended" count
(``ext``), and the outgoing value is ``(ext + offset) mod 2**bits``. A switch picks a new
offset; a drop of the newest value lowers the offset by one, so every later value shifts
down. Late (reordered) values that arrive after a drop of a newer value add the drops
newer than themselves back, which keeps their original place. The fast path (the next
value in order) is a subtraction, a mask, two comparisons and an addition.

Limits, on purpose:

* Only a value newer than every value seen so far can be dropped with effect. A late
  value dropped after newer ones went out leaves its gap (the newer ones are already on
  the wire); :meth:`Splicer.drop` returns ``False`` then.
* Values more than ``max_age`` older than the newest one are refused (``None``), as are
  values from before the current source's first value. ``max_age`` is at most a quarter
  of the counter's range; a consumer's sequence numbers use :data:`SEQ_MAX_AGE` (2048
  packets: seconds of video, far more than any reordering or NACK repair reaches).
  Nothing older is worth forwarding, and refusing it keeps the drop bookkeeping small:
  a temporal-layer filter drops most packets, and each drop inside the window is
  remembered (8 bytes).

All arithmetic is modular, so every counter wraps around safely. Nothing here reads a
clock or touches a socket.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from typing import Final, final

#: How far behind the newest sequence number a consumer still forwards a late packet.
SEQ_MAX_AGE: Final = 2048

_TS_MASK = 0xFFFFFFFF
_TS_HALF = 0x80000000


@final
class Splicer:
    """Renumber a ``bits``-wide wrapping counter from successive sources into one sequence.

    ``initial`` is the outgoing value of the first source's first value; ``None`` (the
    default) keeps the first source's own numbering. Until the first :meth:`switch_to`
    every value maps to ``None``. ``max_age`` bounds how far behind the newest value a
    late one is still mapped (default, and at most: a quarter of the source's range).
    """

    __slots__ = (
        "_age_limit",
        "_drops",
        "_ext_max",
        "_ext_start",
        "_in_half",
        "_in_mask",
        "_in_max",
        "_initial",
        "_max_age",
        "_offset",
        "_out_mask",
        "_started",
        "_trim_at",
    )

    def __init__(
        self, bits: int, initial: int | None = None, *, max_age: int | None = None
    ) -> None:
        if not 2 <= bits <= 32:
            raise ValueError(f"bits must be in 2..32, not {bits}")
        if max_age is not None and max_age < 1:
            raise ValueError(f"max_age must be positive, not {max_age}")
        self._age_limit = max_age
        self._out_mask = (1 << bits) - 1
        self._initial = None if initial is None else initial & self._out_mask
        self._started = False
        # Before the first switch: a zero mask makes every value "the newest one", and
        # the newest one is marked dropped, so map() answers None.
        self._in_mask = 0
        self._in_half = 1
        self._max_age = 0
        self._in_max = 0
        self._ext_max = -1
        self._ext_start = 0
        self._offset = 0
        # The extended values dropped on purpose, oldest first (an array of 8-byte ints:
        # a deque costs 600 bytes even with one item, and a list 40 bytes an item). Once
        # the newest value passes ``_trim_at``, the oldest drop is more than an eighth of
        # the window older than any value map() accepts: the stale ones are cut off.
        self._drops = array("q", (-1,))
        self._trim_at = 0

    @property
    def started(self) -> bool:
        """Whether :meth:`switch_to` has been called."""
        return self._started

    @property
    def next_out(self) -> int | None:
        """The outgoing value the next new value in order will get (``None`` before the start)."""
        if not self._started:
            return None
        return (self._ext_max + 1 + self._offset) & self._out_mask

    def switch_to(self, first: int, *, in_bits: int | None = None) -> None:
        """Start a new source whose first value is ``first``.

        ``first`` maps to the last outgoing value + 1 (to ``initial``, or to itself, for
        the very first source); later values of the source keep their distance to it.
        ``in_bits`` is the source's counter width when it is narrower than the outgoing
        one (a 7-bit VP8 PictureID spliced into a 15-bit sequence); it defaults to
        ``bits``.
        """
        out_bits = self._out_mask.bit_length()
        in_bits = out_bits if in_bits is None else in_bits
        if not 2 <= in_bits <= out_bits:
            raise ValueError(f"in_bits must be in 2..{out_bits}, not {in_bits}")
        in_mask = (1 << in_bits) - 1
        first &= in_mask
        if self._started:
            next_out = (self._ext_max + 1 + self._offset) & self._out_mask
        else:
            next_out = first if self._initial is None else self._initial
            self._started = True
        self._in_mask = in_mask
        self._in_half = (in_mask + 1) >> 1
        quarter = (in_mask + 1) >> 2
        limit = self._age_limit
        self._max_age = quarter if limit is None else min(limit, quarter)
        self._ext_start = first
        self._ext_max = first - 1
        self._in_max = (first - 1) & in_mask
        self._offset = next_out - first
        # The value just before the start counts as dropped: map() refuses it.
        self._drops = array("q", (first - 1,))
        self._trim_at = first - 1 + self._max_age + (self._max_age >> 3)

    def map(self, value: int) -> int | None:
        """The outgoing value for ``value`` of the current source; ``None`` to not forward it.

        ``None`` means: dropped on purpose earlier, from before the current source's first
        value, too old, or no source yet.
        """
        d = (value - self._in_max) & self._in_mask
        if 0 < d < self._in_half:
            # In order (or after a loss): the common case.
            self._in_max = value & self._in_mask
            self._ext_max += d
            return (self._ext_max + self._offset) & self._out_mask
        if d == 0:
            ext = self._ext_max
            if self._drops[-1] == ext:
                return None
            return (ext + self._offset) & self._out_mask
        # Older than the newest value: reordered or retransmitted.
        ext = self._ext_max - (self._in_mask + 1 - d)
        if ext < self._ext_start or self._ext_max - ext > self._max_age:
            return None
        newer_drops = 0
        for dropped in reversed(self._drops):
            if dropped > ext:
                newer_drops += 1
            elif dropped == ext:
                return None
            else:
                break
        return (ext + self._offset + newer_drops) & self._out_mask

    def drop(self, value: int) -> bool:
        """Leave ``value`` out of the outgoing sequence; later values shift down to fill it.

        Returns ``True`` if ``value`` is (now) dropped without a gap: it was newer than
        every value seen so far (or is the newest and already dropped). Returns ``False``
        for a value already forwarded or older than the newest one: that gap stays.
        """
        if not self._started:
            return False
        d = (value - self._in_max) & self._in_mask
        if d == 0:
            return self._drops[-1] == self._ext_max
        if d >= self._in_half:
            return False
        self._in_max = value & self._in_mask
        ext = self._ext_max + d
        self._ext_max = ext
        self._offset -= 1
        drops = self._drops
        drops.append(ext)
        if ext > self._trim_at:
            # Drops older than the oldest value map() accepts are never looked at again.
            # They go in batches, so that the array's shift costs a few moves per drop.
            max_age = self._max_age
            del drops[: bisect_left(drops, ext - max_age)]
            self._trim_at = drops[0] + max_age + (max_age >> 3)
        return True


@final
class SeqTsRewriter:
    """Rewrite RTP sequence numbers and timestamps of spliced streams into one stream.

    Use: ``switch_to()`` with the first packet (a keyframe) of each newly chosen source
    stream, then ``rewrite()`` every packet of that stream to be forwarded and ``drop()``
    every packet of it left out on purpose (a skipped temporal layer). Packets of any other
    SSRC must not be passed in: check :attr:`ssrc` first.

    ``initial_seq`` / ``initial_ts`` are the outgoing values of the very first forwarded
    packet; ``None`` keeps the first stream's own values.

    Per packet, :meth:`rewrite` costs one :meth:`Splicer.map` and four integer operations.
    """

    __slots__ = ("_initial_ts", "_last_ts", "_seq", "_ssrc", "_ts_offset")

    def __init__(self, initial_seq: int | None = None, initial_ts: int | None = None) -> None:
        self._seq = Splicer(16, initial_seq, max_age=SEQ_MAX_AGE)
        self._initial_ts = None if initial_ts is None else initial_ts & _TS_MASK
        self._ssrc: int | None = None
        self._ts_offset = 0
        self._last_ts = 0

    @property
    def ssrc(self) -> int | None:
        """The source stream being forwarded (``None`` before the first switch)."""
        return self._ssrc

    @property
    def ts_offset(self) -> int:
        """Add this to a source timestamp (mod 2**32) to get the outgoing one (for SR rewriting)."""
        return self._ts_offset

    @property
    def last_ts(self) -> int:
        """The newest outgoing timestamp so far."""
        return self._last_ts

    @property
    def next_seq(self) -> int | None:
        """The outgoing sequence number of the next packet in order."""
        return self._seq.next_out

    def switch_to(self, ssrc: int, first_seq: int, first_ts: int, ts_delta: int) -> None:
        """Forward stream ``ssrc`` from its packet ``first_seq`` / ``first_ts`` on.

        That packet will go out with the sequence number after the last one sent and with
        timestamp ``last_ts + ts_delta``. The caller computes ``ts_delta`` (from sender
        reports, or one frame interval, 3000 at 90 kHz and 30 fps); it is ignored on the
        very first switch. Switching to the same SSRC again restarts it the same way.
        """
        if not 0 <= ts_delta < _TS_HALF:
            raise ValueError(f"ts_delta must be in 0..2**31-1, not {ts_delta}")
        if not self._seq.started:
            first_out_ts = first_ts & _TS_MASK if self._initial_ts is None else self._initial_ts
            self._last_ts = first_out_ts
        else:
            first_out_ts = (self._last_ts + ts_delta) & _TS_MASK
        self._seq.switch_to(first_seq)
        self._ssrc = ssrc
        self._ts_offset = (first_out_ts - first_ts) & _TS_MASK

    def rewrite(self, seq: int, ts: int) -> tuple[int, int] | None:
        """``(out_seq, out_ts)`` for a packet of the current stream; ``None``: do not forward.

        ``None`` is for packets from before the switch, dropped ones, or ones too old.
        """
        out_seq = self._seq.map(seq)
        if out_seq is None:
            return None
        out_ts = (ts + self._ts_offset) & _TS_MASK
        if (out_ts - self._last_ts) & _TS_MASK < _TS_HALF:
            self._last_ts = out_ts
        return out_seq, out_ts

    def drop(self, seq: int) -> bool:
        """Leave packet ``seq`` out without leaving a gap (see :meth:`Splicer.drop`)."""
        return self._seq.drop(seq)
