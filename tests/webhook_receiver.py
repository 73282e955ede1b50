"""A real HTTP/1.1 webhook receiver on 127.0.0.1 for the webhook tests (Trio and h11).

It records every request it reads (headers, body, arrival time) and answers by its
``mode``: ``ok`` (204), ``error`` (500), ``refuse`` (403), ``slow`` (200, but only after
``delay`` seconds);
keep-alive as httpx uses it. :func:`closed_port_url` is a receiver that is down.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import httpx
import trio


@attrs.define
class Received:
    headers: httpx.Headers
    body: bytes
    at: float

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class Receiver:
    def __init__(self, mode: str = "ok", delay: float = 0.0) -> None:
        self.mode = mode
        self.delay = delay
        self.port = 0
        self.requests: list[Received] = []
        self._arrived = trio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/sfu?key=in-the-query"

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The bodies received (of event ``name``), each event once (retries collapse)."""
        seen: dict[str, dict[str, Any]] = {}
        for request in self.requests:
            body = request.json
            if name is None or body["event"] == name:
                seen.setdefault(body["id"], body)
        return list(seen.values())

    def attempts(self, event_id: str) -> list[Received]:
        return [r for r in self.requests if r.json["id"] == event_id]

    async def wait_for(self, check: Callable[[], Any]) -> Any:
        """Wait until ``check()`` is truthy (after each request); return its value. The
        caller bounds the wait."""
        while True:
            result = check()
            if result:
                return result
            await self._arrived.wait()
            self._arrived = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            conn = h11.Connection(h11.SERVER)
            while True:
                request: h11.Request | None = None
                body = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        try:
                            data = await stream.receive_some(65536)
                        except trio.BrokenResourceError:
                            return
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += bytes(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                headers = httpx.Headers([(k.decode(), v.decode()) for k, v in request.headers])
                self.requests.append(Received(headers, body, trio.current_time()))
                self._arrived.set()
                if self.mode == "slow":
                    await trio.sleep(self.delay)
                status = {"ok": 204, "error": 500, "refuse": 403, "slow": 200}[self.mode]
                response = h11.Response(status_code=status, headers=[("content-length", "0")])
                try:
                    await stream.send_all(conn.send(response) + conn.send(h11.EndOfMessage()))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()


@asynccontextmanager
async def running_receiver(mode: str = "ok", delay: float = 0.0) -> AsyncIterator[Receiver]:
    receiver = Receiver(mode, delay)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        try:
            yield receiver
        finally:
            nursery.cancel_scope.cancel()


def closed_port_url() -> str:
    """The URL of a receiver that is down: a port of 127.0.0.1 that nothing listens on
    (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks"
