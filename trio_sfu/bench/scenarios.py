"""The fan-out benchmark's scenarios: who publishes and who subscribes in one run."""

from __future__ import annotations

from typing import Any, Final, final

from trio_sfu.bench.media import LAYER_AUDIO, LAYER_R2, STREAMS

__all__ = ["FORWARDED_PPS", "KINDS", "Scenario"]

#: Packets per second of one subscription: a subscriber takes audio and r2.
FORWARDED_PPS: Final = sum(s.pps for s in STREAMS if s.layer in (LAYER_AUDIO, LAYER_R2))

#: Scenario kinds, in the order of the tables.
KINDS: Final = {"fanout": 0, "meeting": 1, "dual": 2, "floating": 3}


@final
class Scenario:
    """Who publishes and who subscribes in one run: ``kind`` "fanout", "meeting", "dual"
    (two fan-out meetings of ``size`` subscribers at once), or "floating" (a fan-out whose
    load generators float over every CPU: the reference of "dual")."""

    def __init__(self, kind: str, size: int) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown scenario kind {kind!r}")
        self.kind = kind
        self.size = size

    @property
    def name(self) -> str:
        if self.kind == "dual":
            return f"fanout-{self.size}x2"
        if self.kind == "floating":
            return f"fanout-{self.size}-floating"
        return f"{self.kind}-{self.size}"

    @property
    def meetings(self) -> int:
        return 2 if self.kind == "dual" else 1

    def peers(self) -> list[dict[str, Any]]:
        """The peers of one meeting."""
        if self.kind != "meeting":
            return [{"name": "pub", "publish": True, "subscribe": False}] + [
                {"name": f"sub{i}", "publish": False, "subscribe": True} for i in range(self.size)
            ]
        return [{"name": f"peer{i}", "publish": True, "subscribe": True} for i in range(self.size)]

    @property
    def receivers(self) -> int:
        """Subscribers of each published packet."""
        return self.size - 1 if self.kind == "meeting" else self.size

    @property
    def subscriptions(self) -> int:
        """(subscriber, publisher) pairs, in every meeting."""
        publishers = self.size if self.kind == "meeting" else 1
        return self.meetings * publishers * self.receivers

    @property
    def consumers(self) -> int:
        return 2 * self.subscriptions
