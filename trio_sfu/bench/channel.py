"""The worker channel's own cost (``--channel-calls``, ``scripts/bench_channel.py``): the same
engine calls on an in-process engine and through one worker process."""

from __future__ import annotations

import os
import time
from typing import Any

from trio_sfu.bench.figures import quantile
from trio_sfu.bench.options import Options
from trio_sfu.bench.procfs import set_affinity
from trio_sfu.client.synthetic import audio_rtp_parameters
from trio_sfu.engine.pool import PoolSettings, open_worker_pool
from trio_sfu.engine.worker import open_worker

__all__ = ["channel_layouts", "channel_round_trips"]


async def channel_round_trips(
    calls: int, cpu: int | None = None, worker_cpu: int | None = None
) -> dict[str, Any]:
    """``calls`` get_stats and ``calls`` consume (each consumer closed again, untimed) on
    one router with two transports and an audio producer: on an in-process engine
    (:func:`~trio_sfu.engine.worker.open_worker`) and through one worker process
    (:func:`~trio_sfu.engine.pool.open_worker_pool`); p50/p99/mean microseconds on this
    process's clock. This process runs on ``cpu`` meanwhile and the worker process on
    ``worker_cpu`` (None: wherever they may)."""
    previous = os.sched_getaffinity(0)
    if cpu is not None:
        set_affinity(os.getpid(), {cpu})
    try:
        async with open_worker() as worker:
            in_process = await _measure(worker, calls)
        async with open_worker_pool(PoolSettings(workers=1, log_level="warning")) as pool:
            if worker_cpu is not None:
                for handle in pool.live_workers():
                    assert handle.pid is not None
                    set_affinity(handle.pid, {worker_cpu})
            through_channel = await _measure(pool, calls)
    finally:
        set_affinity(os.getpid(), previous)
    return {
        "calls": calls,
        "cpu": cpu,
        "worker_cpu": worker_cpu,
        "in_process": in_process,
        "worker_process": through_channel,
    }


async def _measure(engine: Any, calls: int) -> dict[str, Any]:
    """The calls of :func:`channel_round_trips` on one engine."""
    router_id = await engine.create_router(lambda event: None)
    send = (await engine.create_webrtc_transport(router_id)).transport_id
    recv = (await engine.create_webrtc_transport(router_id)).transport_id
    producer = await engine.produce(send, "audio", audio_rtp_parameters(ssrc=1111))
    caps = engine.router_rtp_capabilities(router_id)
    stats: list[float] = []
    consume: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
        await engine.get_stats(send)
        stats.append((time.perf_counter() - started) * 1e6)
    for _ in range(calls):
        started = time.perf_counter()
        info = await engine.consume(recv, producer, caps, paused=True)
        consume.append((time.perf_counter() - started) * 1e6)
        await engine.close_consumer(info.consumer_id)
    await engine.close_router(router_id)
    return {
        name: {
            "p50_us": quantile(values, 0.5),
            "p99_us": quantile(values, 0.99),
            "mean_us": sum(values) / len(values),
        }
        for name, values in (("get_stats", stats), ("consume", consume))
    }


async def channel_layouts(calls: int, opts: Options) -> list[dict[str, Any]]:
    """:func:`channel_round_trips` with the worker on this process's CPU (as the signaling
    process and the forwarding worker run in the fan-out runs), then on another CPU."""
    cpu = opts.server_cpu
    if cpu is None:
        return [await channel_round_trips(calls)]
    layouts = [await channel_round_trips(calls, cpu, cpu)]
    other = next((c for c in opts.cpus if c != cpu), None)
    if other is not None:
        layouts.append(await channel_round_trips(calls, cpu, other))
    return layouts
