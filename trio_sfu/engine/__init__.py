"""The media engine: Worker, Router, WebRtcTransport, Producer, Consumer (trio).

:func:`create_engine` is the one seam between the server and the engine: it turns the
server's configuration into a running in-process :class:`~trio_sfu.engine.worker.Worker`.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trio_sfu.config import ServerConfig
    from trio_sfu.engine.worker import Worker


def create_engine(config: ServerConfig) -> AbstractAsyncContextManager[Worker]:
    """An async context manager yielding a running Worker configured from ``config``."""
    from trio_sfu.engine.worker import WorkerSettings, open_worker

    return open_worker(
        WorkerSettings(
            listen_ip=config.listen_ip,
            announced_ip=config.announced_ip,
            rtc_min_port=config.rtc_min_port,
            rtc_max_port=config.rtc_max_port,
            rtc_port=config.rtc_port,
        )
    )
