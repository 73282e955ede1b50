"""Run the signaling server: hypercorn's trio ``serve()`` with the ASGI app and the rooms.

::

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_sfu, config, engine)
        print(server.port)          # the bound port (config.port may be 0)
        ...
        server.shutdown()           # graceful: peers get rtc:roomClosed, sockets close

The server nursery owns hypercorn (one task per connection), every Room's task and the
webhooks' tasks (one per URL).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, cast, final

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from trio_sfu.config import ServerConfig
from trio_sfu.engine.api import MediaEngine
from trio_sfu.signaling.app import SignalingApp
from trio_sfu.signaling.peer import CLOSE_GOING_AWAY

logger = logging.getLogger(__name__)

__all__ = ["SHUTDOWN_REASON", "SfuServer", "serve_sfu"]

#: rtc:roomClosed reason sent to every peer on a graceful shutdown.
SHUTDOWN_REASON = "server_shutdown"


@final
class SfuServer:
    """A running server, as reported by :func:`serve_sfu` through ``task_status``."""

    def __init__(self, app: SignalingApp, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.shutting_down = False
        self.finished = trio.Event()
        self._shutdown = trio.Event()

    @property
    def http_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return "ws" + self.http_url[len("http") :] + "/ws"

    def shutdown(self) -> None:
        """Start a graceful shutdown (idempotent, never blocks): no new joins, every room
        closes with ``rtc:roomClosed`` (reason ``server_shutdown``), then the sockets."""
        self.shutting_down = True
        self._shutdown.set()


def _hypercorn_config(config: ServerConfig) -> HypercornConfig:
    hconfig = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hconfig.bind = [f"{host}:{config.port}"]
    # Frames up to this size reach the app, which answers invalid_message past
    # limits.max_frame_bytes (PROTOCOL.md); hypercorn itself closes (1009) beyond it.
    hconfig.websocket_max_message_size = max(4 * config.limits.max_frame_bytes, 16 << 20)
    hconfig.graceful_timeout = max(1.0, config.shutdown_timeout / 2)
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    return hconfig


async def serve_sfu(
    config: ServerConfig,
    engine: MediaEngine,
    *,
    task_status: trio.TaskStatus[SfuServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until :meth:`SfuServer.shutdown` (or cancellation).

    Reports an :class:`SfuServer` (with the bound ``port``: bind port 0 in tests) once it
    accepts connections. A graceful shutdown takes at most ``config.shutdown_timeout``;
    whatever is left then is cancelled.
    """
    hypercorn_stop = trio.Event()
    server: SfuServer | None = None
    try:
        async with trio.open_nursery() as nursery:
            app = SignalingApp(config, engine, nursery)
            binds: list[str] = await nursery.start(
                partial(
                    serve,
                    cast(Any, app),
                    _hypercorn_config(config),
                    shutdown_trigger=hypercorn_stop.wait,
                )
            )
            port = int(binds[0].rsplit(":", 1)[1])
            server = SfuServer(app, config.host, port)
            logger.info("signaling on %s (WebSocket %s)", server.http_url, server.ws_url)
            task_status.started(server)
            await server._shutdown.wait()
            logger.info("shutting down: closing every room")
            nursery.cancel_scope.deadline = trio.current_time() + config.shutdown_timeout
            app.rooms.close_all(SHUTDOWN_REASON, code=CLOSE_GOING_AWAY)
            app.close_sessions(CLOSE_GOING_AWAY, SHUTDOWN_REASON)
            await app.rooms.wait_all_closed()
            app.webhooks.close()  # what the closes reported is still sent, for a while
            hypercorn_stop.set()
        if nursery.cancel_scope.cancelled_caught:
            logger.warning("shutdown took over %.1fs: cancelled the rest", config.shutdown_timeout)
    finally:
        if server is not None:
            server.finished.set()
