"""Which video layers a subscriber gets: the weak-network policy, network quality and the
bandwidth allocation. Pure functions and small state machines: numbers in, numbers out.

Nothing here imports trio, reads a clock or touches a packet; the router feeds it the loss
and round-trip time it measured and the bitrates it counted, and applies the answers.

The weak-network policy (ARCHITECTURE.md, "Weak networks") works in *levels*::

    level 3   loss <  5 %        the highest spatial layer (r2, 720p)
    level 2   5 % <= loss < 10 %  r1 (360p)
    level 1   10 % <= loss <= 20 % r0 (180p)
    level 0   loss > 20 %        video paused, audio kept

:class:`LossPolicy` goes down to the level of a bad interval at once, and up one level
only after the loss stayed below the current level's lower threshold for a while:
``up_intervals`` intervals in a row (one: 3 s), ``resume_intervals`` (two) to come back
from paused. A level lost again right after it was reached (within
``probation_intervals``) makes the next climb wait twice as long, up to
``max_up_intervals``, so that a link hovering at a threshold does not flip between two
levels every few seconds. Video paused for the network usually comes back sooner than
two intervals: the router probes the link (:mod:`trio_sfu.engine.recovery`) and calls
:meth:`LossPolicy.resume`. :func:`spatial_cap` turns a level into the highest spatial
layer a producer with fewer (or more) streams may send.

:func:`interval_loss` reads one interval's loss of a downlink from what its streams'
receiver reports and NACKs say.

:func:`network_quality` grades a link from its loss and RTT with the thresholds of the
project brief (RTT < 100 / 200 / 500 ms, loss < 2 / 5 / 20 %).

:func:`layer_options` and :func:`allocate` share a bandwidth estimate among the video
consumers of one transport once its audio is paid for; every consumer keeps at least its
lowest layer (the loss policy, not the estimate, decides when video stops).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, Literal, NamedTuple, final

import attrs

__all__ = [
    "LEVEL_PAUSED",
    "LEVEL_R0",
    "LEVEL_R1",
    "LEVEL_R2",
    "LayerOption",
    "LossPolicy",
    "PolicySettings",
    "Quality",
    "allocate",
    "interval_loss",
    "layer_options",
    "level_for_loss",
    "network_quality",
    "spatial_cap",
]

Quality = Literal["good", "fair", "poor", "bad"]

LEVEL_PAUSED: Final = 0
LEVEL_R0: Final = 1
LEVEL_R1: Final = 2
LEVEL_R2: Final = 3

_QUALITIES: Final[tuple[Quality, ...]] = ("good", "fair", "poor", "bad")


@final
@attrs.frozen
class PolicySettings:
    """The weak-network policy's knobs. Loss values are fractions (0.05 = 5 %)."""

    #: Seconds between two policy decisions for a consumer.
    interval: float = 3.0
    #: Good intervals in a row before going up one level from r0 or r1.
    up_intervals: int = 1
    #: Good intervals in a row before video paused for the network comes back (at r0);
    #: a clean probe brings it back sooner (:meth:`LossPolicy.resume`).
    resume_intervals: int = 2
    #: A level lost again within this many intervals of reaching it was reached too
    #: early: the next climb needs twice as many good intervals (up to
    #: ``max_up_intervals``) until a climb holds for ``settle_intervals``.
    probation_intervals: int = 2
    max_up_intervals: int = 8
    settle_intervals: int = 10
    #: Loss at or above this caps video at r1.
    r1_loss: float = 0.05
    #: Loss at or above this caps video at r0.
    r0_loss: float = 0.10
    #: Loss above this pauses video.
    pause_loss: float = 0.20

    def __attrs_post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError("interval must be positive")
        if not 1 <= self.up_intervals <= self.max_up_intervals:
            raise ValueError("up_intervals must be at least 1 and at most max_up_intervals")
        if not 1 <= self.resume_intervals <= self.max_up_intervals:
            raise ValueError("resume_intervals must be at least 1 and at most max_up_intervals")
        if self.probation_intervals < 0 or self.settle_intervals < 1:
            raise ValueError("probation_intervals must be >= 0, settle_intervals >= 1")
        if not 0 < self.r1_loss <= self.r0_loss <= self.pause_loss < 1:
            raise ValueError("loss thresholds must rise: 0 < r1 <= r0 <= pause < 1")


def level_for_loss(loss: float, settings: PolicySettings) -> int:
    """The level a loss fraction calls for, without any hysteresis."""
    if loss > settings.pause_loss:
        return LEVEL_PAUSED
    if loss >= settings.r0_loss:
        return LEVEL_R0
    if loss >= settings.r1_loss:
        return LEVEL_R1
    return LEVEL_R2


@final
class LossPolicy:
    """The hysteresis of one consumer: down at once, up one level after good intervals.

    Call :meth:`update` once per policy interval with the loss measured over it, or with
    ``None`` when nothing was measured (the level stays, and so does the count of good
    intervals).

    Going up takes ``up_intervals`` good intervals in a row (``resume_intervals`` from
    paused), times a factor that doubles whenever a level is lost within
    ``probation_intervals`` of reaching it (at most ``max_up_intervals`` in all), and
    is back to one once a climb held for ``settle_intervals``.
    """

    __slots__ = ("_climbed", "_factor", "_good", "_held", "_stale", "level", "settings")

    def __init__(self, settings: PolicySettings | None = None, level: int = LEVEL_R2) -> None:
        self.settings = settings or PolicySettings()
        self.level = level
        self._good = 0
        #: Measured intervals since the level last changed, and whether it went up then.
        self._held = 0
        self._climbed = False
        self._factor = 1
        #: The next interval began before :meth:`resume`: it may not take video down.
        self._stale = False

    @property
    def up_needed(self) -> int:
        """Good intervals in a row the next step up takes now."""
        settings = self.settings
        base = settings.resume_intervals if self.level <= LEVEL_PAUSED else settings.up_intervals
        return min(settings.max_up_intervals, base * self._factor)

    def update(self, loss: float | None) -> int:
        """The level after one more interval with ``loss``."""
        if loss is None:
            return self.level
        settings = self.settings
        stale, self._stale = self._stale, False
        self._held += 1
        wanted = level_for_loss(loss, settings)
        if wanted < self.level:
            if stale:
                return self.level
            if self._climbed and self._held <= settings.probation_intervals:
                self._factor = min(self._factor * 2, settings.max_up_intervals)
            self._move(wanted, climbed=False)
        elif wanted > self.level:
            self._good += 1
            if self._good >= self.up_needed:
                self._move(self.level + 1, climbed=True)
        else:
            self._good = 0
        if self._climbed and self._held >= settings.settle_intervals:
            self._factor = 1
        return self.level

    def resume(self) -> int:
        """Video paused for the network comes back at r0 now: a probe found the link
        clean. The interval under way began before that and may not take it down again
        (the next one may); losing r0 within ``probation_intervals`` counts against the
        next climb as usual."""
        if self.level <= LEVEL_PAUSED:
            self._move(LEVEL_R0, climbed=True)
            self._stale = True
        return self.level

    def _move(self, level: int, *, climbed: bool) -> None:
        self.level = level
        self._good = 0
        self._held = 0
        self._climbed = climbed

    def reset(self, level: int = LEVEL_R2) -> None:
        self.level = level
        self._good = 0
        self._held = 0
        self._climbed = False
        self._factor = 1
        self._stale = False


def interval_loss(
    samples: Iterable[tuple[int, int, int, int]], min_packets: int = 10
) -> float | None:
    """The share of packets a downlink lost over one policy interval, from each of its
    streams' ``(expected, lost, sent, nacked)``: packets its receiver reports expected and
    lost, packets sent and distinct sequence numbers NACKed (``Consumer.loss_sample``).

    A stream the receiver NACKed counts with its NACKs (NACKed of sent): they cover the
    interval itself, while a receiver report covers the stretch between two reports, a
    second or more off (a 180p stream carries some 90 packets in 3 s, so that stretch
    alone can read 15 % loss as 25 %), and a report counts a packet repaired on the
    stream's own SSRC as received (Chromium's Opus, NACKed and resent as it was). A
    stream without NACKs counts with its reports. The streams are pooled, so that the
    decision rests on every packet of the interval. ``None`` below ``min_packets``.
    """
    lost_total = 0
    packets = 0
    for expected, lost, sent, nacked in samples:
        if sent > 0 and nacked > 0:
            lost_total += min(nacked, sent)
            packets += sent
        elif expected > 0:
            lost_total += lost
            packets += expected
    if packets < min_packets:
        return None
    return lost_total / packets


def spatial_cap(level: int, spatial_layers: int) -> int | None:
    """The highest spatial layer ``level`` allows for a producer with ``spatial_layers``
    streams; ``None`` when video is paused. Level 3 is always the top stream, level 2 the
    second (r1), level 1 the first (r0), clamped to the streams there are."""
    if level <= LEVEL_PAUSED:
        return None
    top = spatial_layers - 1
    if level >= LEVEL_R2:
        return top
    return min(top, level - 1)


def network_quality(loss: float, rtt_ms: float | None) -> Quality:
    """``good`` / ``fair`` / ``poor`` / ``bad``: the worse of the loss and the RTT grade.

    Grades: RTT < 100 ms good, < 200 fair, < 500 poor, else bad; loss < 2 % good, < 5 %
    fair, <= 20 % poor, else bad. An unknown RTT (``None``) grades by loss alone.
    """
    if loss < 0.02:
        grade = 0
    elif loss < 0.05:
        grade = 1
    elif loss <= 0.20:
        grade = 2
    else:
        grade = 3
    if rtt_ms is not None:
        if rtt_ms >= 500:
            grade = 3
        elif rtt_ms >= 200:
            grade = max(grade, 2)
        elif rtt_ms >= 100:
            grade = max(grade, 1)
    return _QUALITIES[grade]


class LayerOption(NamedTuple):
    """One choice for a consumer: forward ``spatial`` up to temporal layer ``temporal``."""

    spatial: int
    temporal: int
    #: Bits per second this choice costs.
    bitrate: float


def layer_options(
    rates: Sequence[Sequence[float] | None],
    *,
    max_spatial: int,
    max_temporal: int,
    temporal_filtering: bool = True,
) -> list[LayerOption]:
    """The choices of one consumer, cheapest first.

    ``rates[s]`` holds stream ``s``'s bitrate per temporal layer (the bits of frames with
    exactly that TID; H264 and streams without TIDs count everything under TID 0), or
    ``None`` for a stream that is not being received. A choice costs the sum of the rates
    of the temporal layers it includes. Only streams up to ``max_spatial`` and temporal
    layers up to ``max_temporal`` are offered.

    The lowest stream received is offered one temporal layer at a time (video keeps going
    on the thinnest link, at a lower frame rate); higher streams only whole (up to
    ``max_temporal``): a bigger picture at a quarter of the frame rate is no upgrade.
    Without ``temporal_filtering`` every stream is offered whole.
    """
    options: list[LayerOption] = []
    for spatial, per_tid in enumerate(rates):
        if spatial > max_spatial:
            break
        if per_tid is None:
            continue
        if not temporal_filtering:
            options.append(LayerOption(spatial, max_temporal, float(sum(per_tid))))
            continue
        cumulative = []
        total = 0.0
        for temporal in range(max_temporal + 1):
            if temporal < len(per_tid):
                total += per_tid[temporal]
            cumulative.append(LayerOption(spatial, temporal, total))
        options += cumulative if not options else cumulative[-1:]
    return options


def allocate(
    budget: float | None, audio_bitrate: float, demands: Sequence[Sequence[LayerOption]]
) -> list[int]:
    """Share ``budget`` (bits per second, ``None`` = unlimited) among video consumers.

    ``demands[i]`` is consumer ``i``'s options from :func:`layer_options`; the answer is an
    index into each (``-1`` for a consumer with no options). Audio is paid first. Every
    consumer gets its first option even when the budget does not cover it (video keeps
    going; the loss policy decides when it stops); then, round by round, each consumer in
    turn moves to its next option while the budget covers the difference.
    """
    if budget is None:
        return [len(options) - 1 for options in demands]
    choice = [0 if options else -1 for options in demands]
    remaining = budget - audio_bitrate
    for options in demands:
        if options:
            remaining -= options[0].bitrate
    changed = True
    while changed:
        changed = False
        for index, options in enumerate(demands):
            current = choice[index]
            if current < 0 or current + 1 >= len(options):
                continue
            extra = options[current + 1].bitrate - options[current].bitrate
            if extra <= remaining:
                choice[index] = current + 1
                remaining -= extra
                changed = True
    return choice
