"""Bringing back video that the weak-network policy paused: when to probe the link, and
what a probe says. Sans-IO: the router feeds it times and counts and does what it says.

While a subscriber's video is paused for the network (more than 20 % loss), only its
audio flows, and the audio says little about the link in time. The router's
capabilities (mediasoup's) put no transport-wide sequence number on the audio it sends,
so the subscriber's transport-cc feedback does not cover it; libwebrtc sends receiver
reports on audio every 2.5 to 7.5 s, each about the stretch since the one before; and
a receiver NACKs only what it misses, so a clean interval, and a link that lost
everything, both read as no NACKs at all. An interval of the policy with no audio report
in it read nothing (the policy waited for the next one), and two clean intervals were
needed before video came back: 6 to 13 s after the loss stopped.

So, per transport, a :class:`RecoveryProber` makes the evidence:

1. It watches the NACKs of the audio over the last ``window`` seconds (from a receiver
   that has NACKed the audio before: one that NACKs at all). While they say the audio
   loses ``gate_loss`` (5 %) or more, there is nothing to try.
2. Otherwise (also with nothing to judge by: no NACKing receiver, DTX silence), once no
   backoff holds it back, it asks for a probe: ``probe_duration`` seconds of padding at
   the bitrate of the first layer on the paused consumers' RTX streams. Padding-only
   RTX packets carry the transport-wide sequence number, so the feedback says of each
   one whether it arrived; the subscriber's decoder never sees them.
3. A probe that lost less than ``resume_loss`` and arrived at nearly the rate it was sent
   at brings video back at r0 (:meth:`~trio_sfu.engine.layers.LossPolicy.resume`); the
   policy's hysteresis takes it from there. A probe that did not waits ``backoff``
   seconds before the next, doubling up to ``backoff_max``.
4. Video paused again within ``failure_window`` of a resume counts as a failed probe
   too; a resume that held that long brings the backoff back to ``backoff``.

A probe is read on its own, not in the policy's interval: half a second of padding is
too few packets to stand for 3 s (45 of them lose 20 % or less on a link losing 30 %
about one time in ten), and the policy's way back from paused takes two such readings.

``resume_loss`` (10 %) is half the loss that pauses video, so that a link near 20 % does
not bring video back for a moment and take it away again; between 10 and 20 % the
policy's own intervals decide.

How often a link that stays lossy is probed: every failed probe doubles the wait, so
probes start no sooner than ``first_wait`` (1 s) after the pause and then at least
``probe_duration + backoff`` apart, the backoff going 2, 4, 8, 16, 16 ... s: at most 4
probes (2 s of padding at r0's rate) in the first 20 s of a pause, then at most one in
16.5 s (3 % of the time). A receiver that NACKs its audio (Chromium does) keeps even
those away: on a link losing 30 % independently, the fifty Opus packets of a window read
below 5 % loss with a chance of 4e-6 (9e-5 at 25 %). When the loss stops, the window
reads below 5 % within about 0.85 s and the probe takes 0.6 s with its feedback: video
is back some 1.5 s after the network healed (its keyframe aside). Without transport-cc
feedback the router cannot tell what a probe delivered and does not probe: the policy's
intervals alone decide.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Literal, final

import attrs

from trio_sfu.engine.bandwidth import SendSideEstimator

__all__ = ["RecoveryProber", "RecoverySettings"]

#: Snapshots of the audio counters for the window, at least this far apart (seconds).
_SNAPSHOT_SPACING: Final = 0.1


@final
@attrs.frozen
class RecoverySettings:
    """The prober's knobs: seconds, bytes and loss fractions."""

    #: The audio NACK window that may keep a probe back: 50 Opus packets.
    window: float = 1.0
    #: Fewest audio packets sent in the window for its NACKs to count, and fewest probe
    #: packets reported for a probe's result to count.
    min_packets: int = 20
    #: Audio losing this much or more in the window keeps probes back.
    gate_loss: float = 0.05
    #: A probe must lose less than this to resume video.
    resume_loss: float = 0.10
    #: How long one probe sends padding.
    probe_duration: float = 0.5
    #: Padding bytes per probe packet: at r0's 100 kbit/s, 130-byte packets make some 45
    #: packets in half a second, enough to tell 30 % loss from none.
    padding_size: int = 100
    #: The first probe waits this long after video was paused.
    first_wait: float = 1.0
    #: The wait after a failed probe: ``backoff``, doubling up to ``backoff_max``.
    backoff: float = 2.0
    backoff_max: float = 16.0
    #: A probe whose result is not in this long after it ended failed (the estimator
    #: gives a probe whose last packets were lost 1 s).
    result_timeout: float = 1.5
    #: Video paused again this soon after a resume: the probe was wrong.
    failure_window: float = 6.0
    #: A probe must arrive at this share of the rate it was sent at.
    delivered_share: float = 0.8

    def __attrs_post_init__(self) -> None:
        if not (self.window > 0 and self.probe_duration > 0 and self.result_timeout > 0):
            raise ValueError("window, probe_duration and result_timeout must be positive")
        if not (0 < self.resume_loss < 1 and 0 < self.gate_loss < 1):
            raise ValueError("resume_loss and gate_loss must be between 0 and 1")
        if not 0 < self.backoff <= self.backoff_max:
            raise ValueError("backoff must be positive and at most backoff_max")
        if not 1 <= self.padding_size <= 255:
            raise ValueError("padding_size must be 1-255 bytes")
        if self.first_wait < 0 or self.failure_window < 0 or self.min_packets < 1:
            raise ValueError("first_wait and failure_window must be >= 0, min_packets >= 1")


Action = Literal["probe", "resume"] | None
State = Literal["idle", "asked", "probing", "sent"]


@final
class RecoveryProber:
    """One transport's way back from paused video (see the module's docstring).

    Per feedback round call :meth:`tick`: it answers ``"probe"`` when a probe should
    start (then call :meth:`probe_started` with its cluster, :meth:`probe_sent` when its
    padding ended, or :meth:`probe_failed` when none could be sent), ``"resume"`` when
    video should come back, else ``None``. Once per policy interval call
    :meth:`set_paused`.
    """

    __slots__ = (
        "_cluster",
        "_resumed_at",
        "_sent_at",
        "_window",
        "backoff",
        "next_probe_at",
        "paused",
        "probes",
        "resumes",
        "settings",
        "state",
    )

    def __init__(self, settings: RecoverySettings | None = None) -> None:
        self.settings = settings or RecoverySettings()
        #: Whether the policy holds video of this transport paused for the network.
        self.paused = False
        #: ``idle``; ``asked`` (a probe was asked for); ``probing`` (its padding goes
        #: out); ``sent`` (waiting for the feedback about it).
        self.state: State = "idle"
        self.next_probe_at = 0.0
        self.backoff = self.settings.backoff
        self._cluster = 0
        self._sent_at = 0.0
        self._resumed_at = -1e9
        #: (time, audio sent, audio NACKed), oldest first, spanning the window.
        self._window: deque[tuple[float, int, int]] = deque()
        #: Probes started, and resumes they brought (stats, tests).
        self.probes = 0
        self.resumes = 0

    # ---- once per policy interval ------------------------------------------------------

    def set_paused(self, paused: bool, now: float) -> None:
        """Whether some video of the transport is paused for the network now."""
        if paused == self.paused:
            return
        self.paused = paused
        if paused:
            self._window.clear()
            settings = self.settings
            if now - self._resumed_at <= settings.failure_window:
                self._fail(now)  # the last resume did not hold
            self.next_probe_at = max(self.next_probe_at, now + settings.first_wait)

    # ---- each feedback round -----------------------------------------------------------

    def audio_loss(self) -> float | None:
        """The share of audio packets NACKed over the last ``window`` seconds; ``None``
        with fewer than ``min_packets`` sent (or no NACKing receiver)."""
        window = self._window
        if len(window) < 2:
            return None
        _, sent_0, nacked_0 = window[0]
        _, sent_1, nacked_1 = window[-1]
        sent = sent_1 - sent_0
        if sent < self.settings.min_packets:
            return None
        return min(1.0, (nacked_1 - nacked_0) / sent)

    def tick(
        self,
        now: float,
        estimator: SendSideEstimator,
        audio: tuple[int, int] | None,
        *,
        can_probe: bool = True,
    ) -> Action:
        """What to do now. ``audio``: ``(sent, nacked)`` so far of the transport's audio
        whose receiver NACKs it (``None``: none); ``can_probe``: whether a probe could
        start now (no bandwidth probe runs)."""
        if self.state == "sent":
            return self._read_result(now, estimator)
        settings = self.settings
        if not self.paused:
            if now - self._resumed_at > settings.failure_window:
                self.backoff = settings.backoff  # the last resume held
            return None
        window = self._window
        if audio is None:
            window.clear()
        elif not window or now - window[-1][0] >= _SNAPSHOT_SPACING:
            window.append((now, audio[0], audio[1]))
            while len(window) > 2 and now - window[1][0] >= settings.window:
                window.popleft()
        if self.state != "idle" or not can_probe or now < self.next_probe_at:
            return None
        if not estimator.expect_feedback or estimator.feedback_packets == 0:
            return None
        loss = self.audio_loss()
        if loss is not None and loss >= settings.gate_loss:
            return None
        self.state = "asked"
        return "probe"

    # ---- around a probe ----------------------------------------------------------------

    def probe_started(self, cluster: int) -> None:
        """The router started sending padding, counted as probe ``cluster``."""
        self.state = "probing"
        self._cluster = cluster
        self.probes += 1

    def probe_sent(self, now: float) -> None:
        """The padding ended; the feedback about it is awaited."""
        self.state = "sent"
        self._sent_at = now

    def probe_failed(self, now: float) -> None:
        """The probe told nothing (no padding could be sent, or no result came)."""
        self.state = "idle"
        self._fail(now)

    def _read_result(self, now: float, estimator: SendSideEstimator) -> Action:
        settings = self.settings
        estimator.expire_probes(now)
        result = next((r for r in estimator.probe_results if r.cluster == self._cluster), None)
        if result is None:
            if now - self._sent_at > settings.result_timeout:
                self.probe_failed(now)
            return None
        self.state = "idle"
        clean = (
            result.reported >= settings.min_packets
            and result.lost < settings.resume_loss * result.reported
            and result.delivered_bps >= settings.delivered_share * result.sent_bps
        )
        if not self.paused:
            return None
        if not clean:
            self._fail(now)
            return None
        self.paused = False
        self.resumes += 1
        self._resumed_at = now
        return "resume"

    def _fail(self, now: float) -> None:
        self.next_probe_at = now + self.backoff
        self.backoff = min(self.settings.backoff_max, self.backoff * 2)
