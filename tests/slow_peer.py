"""A peer in a process of its own, for tests of slow parties (tests/test_slow_parties.py).

``python -m tests.slow_peer WS_URL MEETING PROTOCOL TOKEN``: joins, consumes every producer the
meeting has, with a receive transport over ``PROTOCOL`` (udp or tcp), prints ``ready`` and
then sits there. The test stops the whole process (SIGSTOP): from then on it reads nothing,
neither its WebSocket nor its media socket, as a client whose network stopped draining.
"""

from __future__ import annotations

import sys
from typing import Literal

import trio

from trio_sfu.client.peer import open_peer


async def main(url: str, meeting: str, protocol: Literal["udp", "tcp"], token: str) -> None:
    async with open_peer(url, meeting, token=token, display_name="slow") as peer:
        await peer.open_transport("recv", protocol=protocol)
        for other in peer.joined["peers"]:
            for producer in other["producers"]:
                await peer.consume(producer["producerId"])
        print("ready", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    protocol: Literal["udp", "tcp"] = "tcp" if sys.argv[3] == "tcp" else "udp"
    trio.run(main, sys.argv[1], sys.argv[2], protocol, sys.argv[4])
