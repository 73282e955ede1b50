"""The pytest plugin: a real trio-sfu and Python peers as fixtures, for apps built on it.

Installed with the package (entry point ``pytest11``, name ``trio_sfu``): no conftest
needed. It needs pytest-trio, and Trio tests: ``trio_mode = true`` in the pytest
configuration, or ``@pytest.mark.trio`` on each test.

``sfu_server``
    A :class:`~trio_sfu.testing.server.SfuTestServer`: signaling and media engine on free
    ports of 127.0.0.1 (``--workers 1``), with ``ws_url``, ``http_url``,
    ``token(meeting, user, **claims)``, ``admin`` (the admin API) and ``metrics()``.
    ``@pytest.mark.sfu(workers=2, peer_idle_timeout=5.0, ...)`` sets it up otherwise
    (:func:`~trio_sfu.testing.server.make_server_config`'s settings). After the test it
    fails the test if a room, peer, router or transport is left, and, once it has shut
    down, if a child process it started is. Recordings go to the test's ``tmp_path``.
``sfu_peer``
    A :class:`~trio_sfu.testing.peers.PeerFactory` on ``sfu_server``:
    ``await sfu_peer(meeting, user, ...)`` joins a
    :class:`~trio_sfu.testing.peers.SfuTestPeer`; every peer is closed after the test,
    before the server's check.

The plugin does nothing for tests that use neither fixture: it has no autouse fixture,
and this module imports only pytest (the server and the client load on first use).
``-p no:trio_sfu`` turns it off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from trio_sfu.testing.peers import PeerFactory
    from trio_sfu.testing.server import SfuTestServer

__all__ = ["sfu_peer", "sfu_server"]

_FIXTURES = frozenset({"sfu_server", "sfu_peer"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sfu(workers=1, **settings): how the sfu_server fixture runs trio-sfu "
        "(workers: media worker processes; settings: ServerConfig and Limits fields)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A clear error, before the fixtures, for a test that cannot run them."""
    if _FIXTURES.isdisjoint(getattr(item, "fixturenames", ())):
        return
    if not item.config.pluginmanager.has_plugin("trio"):
        raise pytest.UsageError(
            f"{item.nodeid}: the trio-sfu fixtures need pytest-trio (pip install pytest-trio)"
        )
    if item.get_closest_marker("trio") is None:
        pytest.fail(
            f"{item.nodeid} uses trio-sfu fixtures but is not a Trio test: set "
            "'trio_mode = true' in the pytest configuration, or mark it @pytest.mark.trio",
            pytrace=False,
        )


@pytest.fixture
async def sfu_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SfuTestServer]:
    """A real trio-sfu on 127.0.0.1 for one test (see the module doc)."""
    from trio_sfu.testing.server import open_sfu_server

    marker = request.node.get_closest_marker("sfu")
    settings = {}
    if marker is not None:
        if marker.args:
            raise pytest.UsageError("@pytest.mark.sfu takes keyword arguments only")
        settings = dict(marker.kwargs)
    settings.setdefault("recording_dir", str(tmp_path / "recordings"))
    async with open_sfu_server(**settings) as server:
        yield server


@pytest.fixture
async def sfu_peer(sfu_server: SfuTestServer) -> AsyncIterator[PeerFactory]:
    """Joins Python peers to ``sfu_server``: ``ann = await sfu_peer("standup", "ann")``."""
    from trio_sfu.testing.peers import open_peer_factory

    async with open_peer_factory(sfu_server) as factory:
        yield factory
