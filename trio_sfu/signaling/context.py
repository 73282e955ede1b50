"""What one server's connections and its admin API share: the configuration, the media
engine, the token verifier, the rooms, the metrics, the webhooks and the open connections.

:class:`~trio_sfu.signaling.session.Session` and :func:`~trio_sfu.signaling.admin.handle_admin`
take this context; the ASGI app (:class:`~trio_sfu.signaling.app.SignalingApp`) extends it with
the routing of requests, so neither of them needs to know the app.
"""

from __future__ import annotations

import logging

import trio

from trio_sfu.config import ServerConfig
from trio_sfu.engine.api import MediaEngine
from trio_sfu.errors import SfuError
from trio_sfu.ratelog import DEFAULT_INTERVAL, RateLimitedLog
from trio_sfu.signaling.auth import TokenVerifier
from trio_sfu.signaling.metrics import SfuMetrics
from trio_sfu.signaling.peer import PeerLink
from trio_sfu.signaling.room import RoomManager
from trio_sfu.signaling.webhooks import Webhooks

logger = logging.getLogger(__name__)

__all__ = ["SignalingContext"]


class SignalingContext:
    """The state of one server's signaling. Rooms' tasks, and the webhooks' (one per
    URL), go to ``nursery``."""

    def __init__(self, config: ServerConfig, engine: MediaEngine, nursery: trio.Nursery) -> None:
        self.config = config
        #: The server's nursery: rooms' tasks, and connections' drains (see Session).
        self.nursery = nursery
        self.engine = engine
        self.verifier = TokenVerifier.from_config(config)
        self.metrics = SfuMetrics(
            counts=lambda: self.rooms.counts(),
            media_counters=engine.media_counters,
            workers=engine.workers_info,
        )
        self.refusal_log = RateLimitedLog(logger, DEFAULT_INTERVAL)
        self.webhooks = Webhooks(config.webhooks, self.metrics.registry)
        self.webhooks.start(nursery)
        self.rooms = RoomManager(
            engine,
            config,
            nursery,
            count_error=self.metrics.count_error,
            on_refusal=self.note_refusal,
            webhooks=self.webhooks,
        )
        #: The open signaling connections (sessions add and remove themselves).
        self.sessions: set[PeerLink] = set()

    def note_refusal(self, exc: SfuError, log: logging.LoggerAdapter[logging.Logger]) -> None:
        """``exc`` refused a trespass (its ``refusal`` is set): count it for /metrics and
        log it, at most one line per reason per minute (never a traceback)."""
        if exc.refusal is None:
            return
        self.metrics.count_refusal(exc.refusal)
        self.refusal_log.note(exc.refusal, trio.current_time(), "%s", exc.message, logger=log)

    def close_sessions(self, code: int, reason: str) -> None:
        """Close every connection (after what is queued on it). Never blocks."""
        for session in list(self.sessions):
            session.close_connection(code, reason)
