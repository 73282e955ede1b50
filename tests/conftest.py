"""Shared fixtures. Every test is checked for leaked sockets and child processes.

pytest-trio runs each test in its own ``trio.run``: a task that outlives its test makes that
run fail, so tasks cannot leak silently. Sockets can (a socket closed by nobody stays open
after the run), so an autouse fixture compares the process's open sockets before and after
each test. Worker processes (and any other child) must be gone too, reaped: another
compares this process's children.

The signaling tests share ``engine`` (the fake engine of :mod:`tests.fake_engine`) and
``server`` (a real server on it, :mod:`tests.signaling_harness`). Tests of the real media
path use the package's pytest plugin (:mod:`trio_sfu.pytest_plugin`: ``sfu_server``,
``sfu_peer``), as apps do; the server pieces and the socket and process listings here are
the plugin's (:mod:`trio_sfu.testing.server`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.fake_engine import make_test_engine
from tests.signaling_harness import make_config
from trio_sfu.engine.api import MediaEngine
from trio_sfu.server import SfuServer
from trio_sfu.testing.server import child_processes, open_sockets, running_server

__all__ = ["child_processes", "open_sockets"]


@pytest.fixture(autouse=True)
def no_leaked_sockets() -> Iterator[None]:
    before = open_sockets()
    yield
    leaked = open_sockets() - before
    assert not leaked, f"test left {len(leaked)} socket(s) open"


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    before = child_processes()
    yield
    left = child_processes() - before
    assert not left, f"test left child process(es) {sorted(left)}"


@pytest.fixture
async def engine() -> AsyncIterator[MediaEngine]:
    """The fake engine of the signaling tests (:func:`tests.fake_engine.make_test_engine`)."""
    async with make_test_engine() as made:
        yield made


@pytest.fixture
async def server(engine: MediaEngine) -> AsyncIterator[SfuServer]:
    """A signaling server on ``engine``, 127.0.0.1 port 0, shut down after the test."""
    async with running_server(engine, make_config()) as running:
        yield running
