"""Small helpers on figures, shared by the runs, the report and its rendering: quantiles,
the latency histogram's percentiles, and a table cell's text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from trio_sfu.bench.media import HIST_BIN

__all__ = ["fmt", "latency_percentile", "quantile"]


def quantile(values: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` quantile (0..1) of ``values``, nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def latency_percentile(hist: dict[int, int], fraction: float) -> float | None:
    """The ``fraction`` quantile (0..1) of a latency histogram, in milliseconds."""
    total = sum(hist.values())
    if not total:
        return None
    rank = fraction * total
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return (index + 0.5) * HIST_BIN * 1e3
    return None


def fmt(value: Any, spec: str) -> str:
    """One table cell: ``value`` formatted with ``spec``; ``-`` for None or NaN; a list
    as ``a / b``."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return " / ".join(fmt(item, spec) for item in value)
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return spec.format(value)
