"""Prometheus metrics, one registry per server (never prometheus-client's global one).

Gauges of the signaling side's books (rooms, peers, transports, producers, consumers) are
read at scrape time. Media counters (packets and bytes in/out, drops) come from the
engine's ``media_counters()``: keys ``packets_in``, ``packets_out``, ``bytes_in``,
``bytes_out``, ``drops``. Per-worker series (label ``worker``, the slot index) come from
``workers_info()``.

Refused trespasses are one counter family, ``trio_sfu_refused_total{reason=...}``: the
signaling side's reasons (:data:`SIGNALING_REFUSALS`, counted here) and the engine's
(:data:`~trio_sfu.errors.ENGINE_REFUSALS`, the media counters ``refused_<reason>``;
from worker processes as of their last load report).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, final

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from trio_sfu.errors import ENGINE_REFUSALS
from trio_sfu.signaling.messages import REQUESTS

logger = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE_LATEST", "Counts", "SfuMetrics"]


@final
@attrs.frozen
class Counts:
    rooms: int = 0
    peers: int = 0
    transports: int = 0
    producers: int = 0
    consumers: int = 0


#: Trespasses the signaling side refuses (the ``refusal`` of the SfuError it answers with).
SIGNALING_REFUSALS: Final = (
    "token_missing",  # rtc:join without a token
    "token_invalid",  # bad signature, alg none, malformed, claims missing or ill-typed
    "token_expired",
    "token_wrong_meeting",  # a token for another meeting
    "foreign_id",  # an id of another peer of the meeting, or of another meeting
    "foreign_meeting",  # a request naming a meeting the connection is not in
)

_MEDIA_COUNTERS: Final = (
    ("packets_in", "RTP/RTCP packets received from peers"),
    ("packets_out", "RTP/RTCP packets sent to peers"),
    ("bytes_in", "bytes received from peers on RTC transports"),
    ("bytes_out", "bytes sent to peers on RTC transports"),
    ("drops", "packets dropped because a receiving transport's queue was full"),
)


#: Per-worker gauges: (info key, metric name, help).
_WORKER_GAUGES: Final = (
    ("alive", "trio_sfu_worker_up", "1 while the media worker process runs"),
    ("routers", "trio_sfu_worker_routers", "routers on the worker"),
    ("transports", "trio_sfu_worker_transports", "transports on the worker"),
    ("producers", "trio_sfu_worker_producers", "producers on the worker"),
    ("consumers", "trio_sfu_worker_consumers", "consumers on the worker"),
    (
        "packetsPerSecond",
        "trio_sfu_worker_packets_per_second",
        "packets received and sent per second by the worker (last report)",
    ),
    ("cpuPercent", "trio_sfu_worker_cpu_percent", "CPU use of the worker process (last report)"),
)


@final
class _LiveCollector:
    def __init__(
        self,
        counts: Callable[[], Counts],
        media_counters: Callable[[], Mapping[str, int]],
        workers: Callable[[], list[dict[str, Any]]],
        refusals: Mapping[str, int],
    ) -> None:
        self._counts = counts
        self._media_counters = media_counters
        self._workers = workers
        self._refusals = refusals

    def collect(self) -> Iterator[Metric]:
        counts = self._counts()
        for name, help_text in (
            ("rooms", "open rooms (meetings with a router)"),
            ("peers", "peers joined to a meeting"),
            ("transports", "WebRTC transports"),
            ("producers", "producers"),
            ("consumers", "consumers"),
        ):
            yield GaugeMetricFamily(f"trio_sfu_{name}", help_text, value=getattr(counts, name))
        media: Mapping[str, Any] = {}
        try:
            media = self._media_counters()
        except Exception:
            logger.exception("engine.media_counters() failed while collecting metrics")
        for key, help_text in _MEDIA_COUNTERS:
            value = media.get(key, 0)
            yield CounterMetricFamily(
                f"trio_sfu_{key}", help_text, value=value if isinstance(value, int | float) else 0
            )
        refused = CounterMetricFamily(
            "trio_sfu_refused",
            "trespasses refused (bad tokens, other peers' ids, unauthenticated STUN, "
            "packets from unvalidated addresses, wrong DTLS certificates, taken SSRC/MID/RID)",
            labels=["reason"],
        )
        for reason in SIGNALING_REFUSALS:
            refused.add_metric([reason], float(self._refusals.get(reason, 0)))
        for reason in ENGINE_REFUSALS:
            value = media.get(f"refused_{reason}", 0)
            refused.add_metric([reason], float(value if isinstance(value, int | float) else 0))
        yield refused
        yield from self._collect_workers()

    def _collect_workers(self) -> Iterator[Metric]:
        try:
            workers = self._workers()
        except Exception:
            logger.exception("engine.workers_info() failed while collecting metrics")
            return
        for key, name, help_text in _WORKER_GAUGES:
            family = GaugeMetricFamily(name, help_text, labels=["worker"])
            for info in workers:
                family.add_metric([str(info["index"])], float(info.get(key) or 0))
            yield family
        restarts = CounterMetricFamily(
            "trio_sfu_worker_restarts",
            "media worker processes started again after one died",
            labels=["worker"],
        )
        for info in workers:
            restarts.add_metric([str(info["index"])], float(info.get("restarts") or 0))
        yield restarts


@final
class SfuMetrics:
    """The server's metrics; :meth:`render` is the ``/metrics`` body."""

    def __init__(
        self,
        counts: Callable[[], Counts],
        media_counters: Callable[[], Mapping[str, int]],
        workers: Callable[[], list[dict[str, Any]]] = list,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "trio_sfu_signaling_requests",
            "signaling requests received, by type",
            ["type"],
            registry=self.registry,
        )
        self.errors = Counter(
            "trio_sfu_signaling_errors",
            "rtc:error answers sent, by code",
            ["code"],
            registry=self.registry,
        )
        self.connections = Gauge(
            "trio_sfu_connections", "open signaling WebSockets", registry=self.registry
        )
        self.slow_disconnects = Counter(
            "trio_sfu_slow_connections_closed",
            "connections closed because their outgoing queue was full",
            registry=self.registry,
        )
        #: Signaling-side refusals by reason (SIGNALING_REFUSALS).
        self.refusals: dict[str, int] = dict.fromkeys(SIGNALING_REFUSALS, 0)
        self.registry.register(_LiveCollector(counts, media_counters, workers, self.refusals))

    def count_request(self, rtype: str) -> None:
        self.requests.labels(rtype if rtype in REQUESTS else "unknown").inc()

    def count_error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def count_refusal(self, reason: str) -> None:
        """Count a signaling-side refusal; the engine counts its own (ENGINE_REFUSALS)."""
        if reason in self.refusals:
            self.refusals[reason] += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)
