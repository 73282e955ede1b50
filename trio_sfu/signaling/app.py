"""The ASGI application: ``/ws`` (signaling), ``GET /healthz``, ``GET /metrics``, ``/v1/*``
(admin API).

It runs inside the trio program that owns it (:func:`trio_sfu.server.serve_sfu`), so that
rooms live in the server's nursery while hypercorn runs each connection in a task of its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, final
from urllib.parse import unquote

import trio

from trio_sfu.config import ServerConfig
from trio_sfu.engine.api import MediaEngine
from trio_sfu.errors import SfuError
from trio_sfu.ratelog import DEFAULT_INTERVAL, RateLimitedLog
from trio_sfu.signaling.admin import handle_admin
from trio_sfu.signaling.auth import TokenVerifier
from trio_sfu.signaling.metrics import CONTENT_TYPE_LATEST, SfuMetrics
from trio_sfu.signaling.room import RoomManager
from trio_sfu.signaling.session import Session
from trio_sfu.signaling.web import handle_web_request

logger = logging.getLogger(__name__)

__all__ = ["SignalingApp"]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: Largest admin request body read.
MAX_BODY: Final = 64 * 1024
WS_PATH: Final = "/ws"


@final
class SignalingApp:
    """The ASGI app of one server. Rooms' tasks go to ``nursery``."""

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
        self.rooms = RoomManager(
            engine,
            config,
            nursery,
            count_error=self.metrics.count_error,
            on_refusal=self.note_refusal,
        )
        self.sessions: set[Session] = set()

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

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            if scope["path"] != WS_PATH:
                await _reject_websocket(send, 404)
                return
            await Session(self, scope, receive, send).run()
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)

    async def _http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1")
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                await _respond_json(send, 413, {"error": "body too large"})
                return
            if not message.get("more_body", False):
                break
        if path == "/healthz":
            await _respond_json(send, 200, {"status": "ok"})
        elif path == "/metrics":
            await _respond(send, 200, self.metrics.render(), CONTENT_TYPE_LATEST)
        elif path == "/v1" or path.startswith("/v1/"):
            segments = [unquote(s) for s in path[len("/v1/") :].split("/")]
            headers = {k.lower(): v for k, v in scope.get("headers", [])}
            try:
                status, payload = await handle_admin(self, method, segments, headers, body)
            except Exception:
                logger.exception("admin request %s %s failed", method, path)
                status, payload = 500, {"error": "internal server error (logged)"}
            extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            await _respond_json(send, status, payload, extra)
        elif not await handle_web_request(scope, receive, send, config=self.config):
            await _respond_json(send, 404, {"error": "not found"})


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _respond_json(
    send: Send,
    status: int,
    payload: dict[str, Any],
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(payload).encode()
    await _respond(send, status, body, "application/json", extra_headers)


async def _reject_websocket(send: Send, status: int) -> None:
    body = json.dumps({"error": f"the signaling WebSocket is at {WS_PATH}"}).encode()
    await send(
        {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
