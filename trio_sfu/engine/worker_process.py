"""A worker process: one :class:`~trio_sfu.engine.worker.Worker` driven over a channel.

The signaling process starts ``python -m trio_sfu.engine.worker_process --fd N`` with one
end of a Unix socket pair as file descriptor ``N`` (see :mod:`trio_sfu.engine.pool`). The
first request is ``start`` with the worker's settings; the answer says what the worker
listens on. Then every request names a verb (:data:`~trio_sfu.engine.api.VERBS`), served
one at a time in arrival order: its arguments structured on receipt, the
:class:`~trio_sfu.engine.worker.Worker` method of that name called, its result
unstructured on send (:mod:`trio_sfu.engine.verbs`); ``create_router`` and ``dump`` are
the two requests beside the verbs. Engine events and a load report every
``report_interval`` seconds go back as notifications (:mod:`trio_sfu.engine.channel`).

The process never outlives its parent: the end of the channel (the parent closed it, exited
or was killed: the kernel closes its end) closes every router and exits, and a parent pid
that changes (the parent is gone, the process was re-parented) does the same. SIGINT and
SIGTERM are ignored: the parent drains its workers itself on a graceful shutdown (closing
their meetings first, so that peers hear ``server_shutdown``), and a terminal's Ctrl-C or a
service manager's SIGTERM reaches the whole process group. A worker stopped by SIGKILL is a
dead worker: the parent replaces it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import trio

from trio_sfu.engine.api import VERBS, EngineEvent
from trio_sfu.engine.channel import NOTIFY, REQUEST, RESPONSE, Channel, encode_error, encode_event
from trio_sfu.engine.worker import Worker, WorkerSettings
from trio_sfu.errors import BadPacket, SfuError
from trio_sfu.wire import converter

logger = logging.getLogger(__name__)

#: Seconds between two checks that the parent is still the parent.
PARENT_CHECK_INTERVAL: Final = 0.5

#: How many messages (answers, events, load reports) may wait for the channel to the parent.
#: Past that, the parent has stopped reading (it is wedged or far behind): a request's
#: answer waits for room (the worker reads no more requests meanwhile), a load report is
#: skipped (the next one says it all), and an event ends the worker (see :class:`_Server`).
OUTGOING_QUEUE_SIZE: Final = 16384


def structure_args(method: str, args: Sequence[Any]) -> dict[str, Any]:
    """The keyword arguments of verb ``method`` from their wire form (see
    :mod:`trio_sfu.engine.verbs`). Raises KeyError for an unknown method, ValueError for a
    wrong count."""
    return VERBS[method].decode_args(args)


def load_report(worker: Worker) -> dict[str, Any]:
    """What the parent places meetings by, and shows per worker."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        **worker.load(),
        "counters": worker.media_counters(),
        "cpuSeconds": usage.ru_utime + usage.ru_stime,
        "maxRssKib": usage.ru_maxrss,
        "time": time.monotonic(),
    }


class _Server:
    """Serves one channel: requests one at a time, notifications in between.

    What goes to the parent waits in a queue of ``queue_size`` messages for the writer.
    When the parent stops reading, the queue fills; then an answer waits for room (and no
    further request is read, so the parent's own writes block and its request timeout
    ends this worker), a load report is skipped, and an event, which cannot wait (engine
    tasks emit it synchronously) and cannot be dropped (the parent would go on believing
    in a consumer or transport that is gone), ends the worker: :attr:`overflowed` is set,
    the parent sees the channel end as the worker's death and starts a new one.
    """

    def __init__(
        self, channel: Channel, report_interval: float, queue_size: int = OUTGOING_QUEUE_SIZE
    ) -> None:
        self.channel = channel
        self.report_interval = report_interval
        self.worker: Worker | None = None
        self._out_tx, self._out_rx = trio.open_memory_channel[Any](queue_size)
        #: An event found the queue full: the worker ends.
        self.overflowed = trio.Event()

    def on_event(self, event: EngineEvent) -> None:
        if self.overflowed.is_set():
            return
        try:
            self._out_tx.send_nowait([NOTIFY, "event", encode_event(event)])
        except trio.WouldBlock:
            logger.error(
                "the parent has not read the last %d messages: ending the worker",
                self._out_tx.statistics().max_buffer_size,
            )
            self.overflowed.set()

    async def write_loop(self) -> None:
        """Send queued messages in order; whatever is queued when a send starts goes in
        one write."""
        async for message in self._out_rx:
            batch = [message]
            while True:
                try:
                    batch.append(self._out_rx.receive_nowait())
                except trio.WouldBlock:
                    break
            for item in batch[:-1]:
                await self.channel.send(item)
            await self.channel.send(batch[-1])

    async def report_loop(self) -> None:
        while True:
            await trio.sleep(self.report_interval)
            if self.worker is not None:
                with contextlib.suppress(trio.WouldBlock):  # the next report says it all
                    self._out_tx.send_nowait([NOTIFY, "load", load_report(self.worker)])

    async def serve(self, nursery: trio.Nursery) -> None:
        """Read requests until the channel ends."""
        while True:
            message = await self.channel.receive()
            if message is None:
                logger.info("channel closed by the parent: exiting")
                return
            try:
                kind, request_id, method, args = message
                if kind != REQUEST:
                    raise ValueError(f"not a request: {kind!r}")
            except (TypeError, ValueError) as exc:
                raise BadPacket(f"malformed channel message: {exc}") from None
            await self._out_tx.send(await self._handle(nursery, request_id, method, args))

    async def _handle(
        self, nursery: trio.Nursery, request_id: Any, method: str, args: Any
    ) -> list[Any]:
        try:
            result = await self._call(nursery, method, args)
        except SfuError as exc:
            return [RESPONSE, request_id, False, encode_error(exc)]
        except Exception:
            logger.exception("worker request %s failed", method)
            return [RESPONSE, request_id, False, ["internal", f"{method} failed in the worker"]]
        return [RESPONSE, request_id, True, result]

    async def _call(self, nursery: trio.Nursery, method: str, args: Any) -> Any:
        if method == "start":
            return await self._start(nursery, *args)
        worker = self.worker
        if worker is None:
            raise SfuError("the worker is not started")
        if method == "create_router":
            return await worker.create_router(self.on_event)
        if method == "dump":
            return worker.dump()
        verb = VERBS[method]
        call: Callable[..., Awaitable[Any]] = getattr(worker, method)
        return verb.encode_result(await call(**verb.decode_args(args)))

    async def _start(self, nursery: trio.Nursery, settings: Any) -> dict[str, Any]:
        if self.worker is not None:
            raise SfuError("the worker is already started")
        worker = Worker(converter.structure(settings, WorkerSettings))
        await nursery.start(worker.run)
        self.worker = worker
        # As `trio-sfu serve` does: the start-up heap lives as long as the process, so keep
        # it out of the cyclic collector's full passes while media flows.
        gc.freeze()
        server = worker.webrtc_server
        return {
            "pid": os.getpid(),
            "udpPort": server.udp_port if server is not None else None,
            "tcpPort": server.tcp_port if server is not None else None,
            "rtpCapabilities": converter.unstructure(worker.rtp_capabilities),
        }


async def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:  # noqa: ASYNC110 (no event tells of a new parent)
        await trio.sleep(PARENT_CHECK_INTERVAL)
    logger.warning("the parent process %d is gone: exiting", parent)


async def run_worker_process(
    fd: int, parent: int, report_interval: float, queue_size: int = OUTGOING_QUEUE_SIZE
) -> bool:
    """Serve the channel on ``fd`` until it ends or the parent goes. Returns False when it
    ended because the parent stopped reading (see :class:`_Server`)."""
    sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
    channel = Channel(trio.SocketStream(sock))
    server = _Server(channel, report_interval, queue_size)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.write_loop)
        nursery.start_soon(server.report_loop)

        async def until_done(wait: Callable[[], Awaitable[None]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(until_done, lambda: _watch_parent(parent))
        nursery.start_soon(until_done, lambda: server.serve(nursery))
        nursery.start_soon(until_done, server.overflowed.wait)
    # The worker's run() closed every router on the way out of the nursery.
    with trio.move_on_after(1):
        await channel.aclose()
    return not server.overflowed.is_set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trio_sfu.engine.worker_process")
    parser.add_argument("--fd", type=int, required=True, help="the channel's file descriptor")
    parser.add_argument("--parent", type=int, required=True, help="the parent's pid")
    parser.add_argument("--name", default="worker", help="the name its log lines carry")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--report-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)-7s [{args.name} pid=%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.getppid() != args.parent:
        return 1  # the parent died before we got here
    try:
        kept_up = trio.run(run_worker_process, args.fd, args.parent, args.report_interval)
    except BadPacket as exc:
        logger.error("broken channel: %s", exc)
        return 1
    return 0 if kept_up else 1


if __name__ == "__main__":
    sys.exit(main())
