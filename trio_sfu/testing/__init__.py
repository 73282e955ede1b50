"""What tests of trio-sfu, and of the apps built on it, use.

The pytest plugin (:mod:`trio_sfu.pytest_plugin`) gives ``sfu_server`` and ``sfu_peer``;
outside pytest the same pieces are :func:`open_sfu_server` and :func:`open_peer_factory`.
The impairment relay (loss, delay, jitter, reordering, a bandwidth cap) is
:mod:`trio_sfu.testing.impairment`.

The names are imported on first use, so that importing this package costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trio_sfu.testing.http import AdminClient, AdminError, HttpAnswer, Metrics
    from trio_sfu.testing.impairment import Impairment, LinkStats, UdpRelay
    from trio_sfu.testing.peers import (
        LocalTrack,
        PeerClosed,
        PeerFactory,
        SfuTestPeer,
        Subscription,
        WaitTimeout,
        open_peer_factory,
    )
    from trio_sfu.testing.server import LeakError, SfuTestServer, open_sfu_server

_WHERE = {
    "AdminClient": "http",
    "AdminError": "http",
    "HttpAnswer": "http",
    "Metrics": "http",
    "Impairment": "impairment",
    "LinkStats": "impairment",
    "UdpRelay": "impairment",
    "LocalTrack": "peers",
    "PeerClosed": "peers",
    "PeerFactory": "peers",
    "SfuTestPeer": "peers",
    "Subscription": "peers",
    "WaitTimeout": "peers",
    "open_peer_factory": "peers",
    "LeakError": "server",
    "SfuTestServer": "server",
    "open_sfu_server": "server",
}

__all__ = [
    "AdminClient",
    "AdminError",
    "HttpAnswer",
    "Impairment",
    "LeakError",
    "LinkStats",
    "LocalTrack",
    "Metrics",
    "PeerClosed",
    "PeerFactory",
    "SfuTestPeer",
    "SfuTestServer",
    "Subscription",
    "UdpRelay",
    "WaitTimeout",
    "open_peer_factory",
    "open_sfu_server",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
