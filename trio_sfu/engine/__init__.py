"""The media engine: Worker, Router, WebRtcTransport, Producer, Consumer (trio).

:func:`create_engine` is the one seam between the server and the engine: it turns the
server's configuration into a running engine, in this process (one worker) or as a pool of
worker processes (:class:`~trio_sfu.engine.pool.WorkerPool`).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trio_sfu.config import ServerConfig
    from trio_sfu.engine.pool import WorkerPool
    from trio_sfu.engine.worker import Worker


def create_engine(config: ServerConfig) -> AbstractAsyncContextManager[Worker | WorkerPool]:
    """An async context manager yielding the running engine configured from ``config``:
    an in-process Worker when ``config.worker_count()`` is 1, else a WorkerPool."""
    from trio_sfu.engine.pool import PoolSettings, open_worker_pool
    from trio_sfu.engine.worker import WorkerSettings, open_worker

    settings = WorkerSettings(
        listen_ip=config.listen_ip,
        announced_ip=config.announced_ip,
        rtc_min_port=config.rtc_min_port,
        rtc_max_port=config.rtc_max_port,
        rtc_port=config.rtc_port,
        transport_connect_timeout=config.transport_connect_timeout,
    )
    workers = config.worker_count()
    if workers == 1:
        return open_worker(settings)
    return open_worker_pool(
        PoolSettings(
            workers=workers,
            worker=settings,
            pipe_threshold=config.pipe_threshold,
            log_level=config.log_level,
        )
    )
