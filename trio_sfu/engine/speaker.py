"""The dominant speaker of a meeting, from the ssrc-audio-level header extension. Sans-IO.

RFC 6464 puts the audio level of each packet in a header extension: 0 is the loudest
(0 dBov), 127 the quietest (-127 dBov). The router feeds every audio packet's level to
:meth:`ActiveSpeakerDetector.add_level` (a few additions), and calls
:meth:`ActiveSpeakerDetector.tick` a few times a second; ``tick`` answers with the new
dominant speaker when it changes.

The hysteresis: each speaker's volume is the mean level of its packets since the last tick,
smoothed over ticks (a speaker who sent nothing, DTX or muted, counts as silent). A
speaker is *speaking* above ``threshold`` dBov. The first speaker to speak becomes
dominant at once. Another one takes over only after being at least ``margin`` dB louder
than the dominant one, or speaking while the dominant one is silent, for ``hold`` seconds
in a row. A dominant speaker who falls silent stays dominant until someone takes over.
"""

from __future__ import annotations

from typing import Final, final

__all__ = ["SILENCE_DBOV", "ActiveSpeakerDetector"]

#: The volume of a speaker who sent nothing.
SILENCE_DBOV: Final = -127.0


@final
class _Speaker:
    __slots__ = ("count", "louder_since", "total", "volume")

    def __init__(self) -> None:
        self.total = 0
        self.count = 0
        self.volume = SILENCE_DBOV
        self.louder_since: float | None = None


@final
class ActiveSpeakerDetector:
    """Which of the audio producers (by key) is the dominant speaker, with hysteresis."""

    __slots__ = ("_speakers", "dominant", "hold", "margin", "smoothing", "threshold")

    def __init__(
        self,
        *,
        threshold: float = -60.0,
        margin: float = 6.0,
        hold: float = 1.0,
        smoothing: float = 0.5,
    ) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")
        self.threshold = threshold
        self.margin = margin
        self.hold = hold
        self.smoothing = smoothing
        self._speakers: dict[str, _Speaker] = {}
        #: The dominant speaker's key, or None before anyone spoke.
        self.dominant: str | None = None

    def add(self, key: str) -> None:
        self._speakers.setdefault(key, _Speaker())

    def remove(self, key: str) -> None:
        self._speakers.pop(key, None)
        if self.dominant == key:
            self.dominant = None

    def add_level(self, key: str, level: int) -> None:
        """One packet's RFC 6464 level (0-127, i.e. -dBov) for speaker ``key``."""
        speaker = self._speakers.get(key)
        if speaker is not None:
            speaker.total += level
            speaker.count += 1

    def volume(self, key: str) -> float:
        """The smoothed volume of ``key`` in dBov (``SILENCE_DBOV`` if unknown)."""
        speaker = self._speakers.get(key)
        return SILENCE_DBOV if speaker is None else speaker.volume

    def tick(self, now: float) -> tuple[str, float] | None:
        """Fold in the levels since the last tick; ``(key, volume)`` when the dominant
        speaker changed, else ``None``."""
        alpha = self.smoothing
        for speaker in self._speakers.values():
            sample = -speaker.total / speaker.count if speaker.count else SILENCE_DBOV
            speaker.volume += (sample - speaker.volume) * alpha
            speaker.total = 0
            speaker.count = 0
        speaking = [
            (speaker.volume, key)
            for key, speaker in self._speakers.items()
            if speaker.volume > self.threshold
        ]
        dominant = self._speakers.get(self.dominant) if self.dominant is not None else None
        if dominant is None:
            if not speaking:
                return None
            volume, key = max(speaking)
            return self._switch(key, volume)
        dominant_speaking = dominant.volume > self.threshold
        best: tuple[float, str] | None = None
        for key, speaker in self._speakers.items():
            if key == self.dominant:
                continue
            louder = speaker.volume > self.threshold and (
                not dominant_speaking or speaker.volume >= dominant.volume + self.margin
            )
            if not louder:
                speaker.louder_since = None
                continue
            if speaker.louder_since is None:
                speaker.louder_since = now
            if now - speaker.louder_since >= self.hold and (
                best is None or speaker.volume > best[0]
            ):
                best = (speaker.volume, key)
        if best is None:
            return None
        return self._switch(best[1], best[0])

    def _switch(self, key: str, volume: float) -> tuple[str, float]:
        self.dominant = key
        for speaker in self._speakers.values():
            speaker.louder_since = None
        return key, round(volume, 1)
