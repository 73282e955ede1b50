"""A real trio-sfu for tests: signaling and media engine on 127.0.0.1, free ports.

::

    async with open_sfu_server() as sfu:                     # --workers 1
        token = sfu.token("standup", "ann")
        ... connect to sfu.ws_url, ask sfu.admin, read await sfu.metrics() ...
    # on a clean exit: no room, peer, router or transport was left, the server shut down,
    # the engine closed, and no child process it started is left

``open_sfu_server(workers=2)`` runs the media in two worker processes;
other keywords are :class:`~trio_sfu.config.ServerConfig` fields (and
:class:`~trio_sfu.config.Limits` fields, flat): ``peer_idle_timeout=1.0``,
``outgoing_queue=32``... The pytest plugin's ``sfu_server`` fixture is this block around
one test (:mod:`trio_sfu.pytest_plugin`).

:func:`make_server_config` and :func:`running_server` are the pieces, for tests that bring
an engine of their own (a fake one, or a Worker with special settings).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast, final

import attrs
import trio

from trio_sfu.config import Limits, ServerConfig
from trio_sfu.engine.api import MediaEngine
from trio_sfu.server import SfuServer, serve_sfu
from trio_sfu.signaling.auth import issue_token
from trio_sfu.testing.http import AdminClient, HttpAnswer, Metrics, fetch_metrics, http_request

__all__ = [
    "LeakError",
    "SfuTestServer",
    "child_processes",
    "make_server_config",
    "open_sfu_server",
    "open_sockets",
    "running_server",
]

_LIMIT_NAMES = frozenset(field.name for field in attrs.fields(Limits))
_CONFIG_NAMES = frozenset(field.name for field in attrs.fields(ServerConfig))


class LeakError(AssertionError):
    """A server was left with state after its test: rooms, peers, routers, transports,
    or a child process."""


def make_server_config(**settings: Any) -> ServerConfig:
    """A test server's configuration: 127.0.0.1, port 0 (a free one), one shared RTC port
    picked at start, a random JWT secret and admin token, short cleanup (2 s) and shutdown
    (5 s) bounds. ``settings`` override any :class:`ServerConfig` field, and any
    :class:`Limits` field given flat (``outgoing_queue=32``). Raises TypeError naming an
    unknown setting."""
    unknown = set(settings) - _CONFIG_NAMES - _LIMIT_NAMES
    if unknown:
        raise TypeError(f"unknown server setting(s): {', '.join(sorted(unknown))}")
    limits = {name: settings.pop(name) for name in list(settings) if name in _LIMIT_NAMES}
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "listen_ip": "127.0.0.1",
        "rtc_port": 0,
        "workers": 1,
        "jwt_secret": secrets.token_urlsafe(24),
        "admin_token": secrets.token_urlsafe(24),
        "cleanup_timeout": 2.0,
        "shutdown_timeout": 5.0,
    }
    base.update(settings)
    if limits:
        base["limits"] = attrs.evolve(base.get("limits", Limits()), **limits)
    return ServerConfig(**base)


@asynccontextmanager
async def running_server(engine: MediaEngine, config: ServerConfig) -> AsyncIterator[SfuServer]:
    """The signaling server on ``engine`` for the block; shut down gracefully after it
    (bounded by ``config.shutdown_timeout``). The engine stays the caller's."""
    async with trio.open_nursery() as nursery:
        server: SfuServer = await nursery.start(serve_sfu, config, engine)
        try:
            yield server
        finally:
            server.shutdown()


def open_sockets() -> set[str]:
    """Inode names (``socket:[1234]``) of the sockets this process holds open (Linux)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def child_processes() -> set[int]:
    """Pids of this process's children, zombies included: an unreaped child is a leak
    too (Linux)."""
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as file:
                found.update(int(pid) for pid in file.read().split())
        except OSError:
            continue
    return found


@final
class SfuTestServer:
    """A running test server (made by :func:`open_sfu_server`, or the ``sfu_server``
    fixture): where to connect, tokens it accepts, its admin API and its metrics."""

    def __init__(self, server: SfuServer, engine: MediaEngine, config: ServerConfig) -> None:
        #: The signaling server itself (``server.app`` holds the rooms).
        self.server = server
        #: The media engine: an in-process Worker, or a WorkerPool with ``workers > 1``.
        self.engine = engine
        self.config = config
        #: The admin API, authorized with this server's admin token.
        self.admin = AdminClient(server.host, server.port, config.admin_token)

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        """The HTTP and WebSocket port."""
        return self.server.port

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT``: /healthz, /metrics, the admin API under /v1."""
        return self.server.http_url

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT/ws``: the signaling WebSocket."""
        return self.server.ws_url

    @property
    def jwt_secret(self) -> str:
        """The HS256 secret the server checks tokens with (for an app's own token code)."""
        assert self.config.jwt_secret is not None
        return self.config.jwt_secret

    @property
    def admin_token(self) -> str | None:
        """The admin API's bearer token."""
        return self.config.admin_token

    def token(self, meeting: str, user: str, **claims: Any) -> str:
        """An access token to ``meeting`` for ``user``, signed with this server's secret.

        ``claims`` are :func:`trio_sfu.signaling.auth.issue_token`'s options: ``name``,
        ``can_publish``, ``can_subscribe``, ``can_plain_transport``, ``ttl`` (seconds),
        ``now`` (issue time, for tokens not valid yet or expired).
        """
        return issue_token(self.jwt_secret, meeting_id=meeting, user_id=user, **claims)

    async def http(
        self, method: str, path: str, *, bearer: str | None = None, body: bytes = b""
    ) -> HttpAnswer:
        """Any HTTP request to the server (``/healthz``, ``/dev/token``...)."""
        return await http_request(self.host, self.port, method, path, bearer=bearer, body=body)

    async def metrics(self) -> Metrics:
        """``GET /metrics``, parsed: ``(await sfu.metrics())["trio_sfu_peers"]``."""
        return await fetch_metrics(self.host, self.port)

    async def wait_rooms_closed(self) -> bool:
        """Wait until no meeting is open (peers left, rooms and their routers closed);
        ``False`` if some still are after twice the cleanup bound plus 5 s."""
        with trio.move_on_after(2 * self.config.cleanup_timeout + 5.0):
            await self.server.app.rooms.wait_all_closed()
            return True
        return False

    async def check_nothing_left(self) -> None:
        """Raise :class:`LeakError` unless every room has closed (waited for as in
        :meth:`wait_rooms_closed`) and the signaling books and the engine hold no peer,
        router, transport, producer or consumer."""
        await self.wait_rooms_closed()
        rooms = self.server.app.rooms
        problems: list[str] = []
        counts = attrs.asdict(rooms.counts())
        if any(counts.values()):
            held = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
            meetings = ", ".join(repr(m) for m in rooms.rooms)
            peers = ", ".join(
                f"{peer.grant.user_id} ({meeting})"
                for meeting, room in rooms.rooms.items()
                for peer in room.peers.values()
            )
            problems.append(f"signaling still holds {held} (meetings {meetings}; peers {peers})")
        routers = self.engine.dump()["routers"]
        if routers:
            problems.append(f"the engine still has {len(routers)} router(s)")
        dump_workers = getattr(self.engine, "dump_workers", None)
        if dump_workers is not None:
            for worker in await dump_workers():
                if worker["routers"]:
                    problems.append(
                        f"worker {worker['index']} still has {len(worker['routers'])} router(s)"
                    )
        if problems:
            raise LeakError(
                "the test left state in its trio-sfu server: "
                + "; ".join(problems)
                + " (close every peer and recording before the test ends)"
            )


@asynccontextmanager
async def open_sfu_server(
    *,
    workers: int = 1,
    engine: MediaEngine | None = None,
    check_leaks: bool = True,
    **settings: Any,
) -> AsyncIterator[SfuTestServer]:
    """A real trio-sfu for the block: signaling on a free port of 127.0.0.1, the media
    engine on one shared RTC port (``workers`` worker processes, or in this process with
    1, the default).

    ``settings`` are :func:`make_server_config`'s. ``engine``: drive this engine (the
    caller's, left open) instead of starting one. After a block that ends without an
    exception, with ``check_leaks``, it raises :class:`LeakError` if a room, peer,
    router or transport is left (see :meth:`SfuTestServer.check_nothing_left`) or, once
    the server has shut down and its engine closed, if a child process started during the
    block is still there. The server always shuts down gracefully at the end (bounded by
    ``shutdown_timeout``), then the engine closes.
    """
    config = make_server_config(workers=workers, **settings)
    children_before = child_processes()
    async with AsyncExitStack() as stack:
        running: MediaEngine
        if engine is None:
            from trio_sfu.engine import create_engine

            made = await stack.enter_async_context(create_engine(config))
            # A WorkerPool lacks MediaEngine's pipe endpoint methods (it pipes between
            # its own workers), which signaling never calls: as `trio-sfu serve` does.
            running = cast(MediaEngine, made)
        else:
            running = engine
        server = await stack.enter_async_context(running_server(running, config))
        sfu = SfuTestServer(server, running, config)
        yield sfu
        if check_leaks:
            await sfu.check_nothing_left()
    if check_leaks:
        left = child_processes() - children_before
        if left:
            raise LeakError(f"child process(es) {sorted(left)} outlived the trio-sfu server")
