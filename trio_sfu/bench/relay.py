"""The reference of the fan-out benchmark: a bare Trio UDP relay.

``python -m trio_sfu.bench.relay`` binds one UDP socket on 127.0.0.1, prints
``{"port": N}`` and forwards every datagram it receives to every registered address but
the sender's: ``await sock.recvfrom()``, then ``await sock.sendto()`` per destination. No
crypto, no parsing; a datagram ``HELLO`` registers its sender. That is the least an SFU
written on Trio has to do per forwarded packet, so our forwarded packets/s divided by its
is the share of the machine the SFU's own work leaves.

It stops when its stdin closes or after ``--max-seconds``, whichever comes first.
"""

from __future__ import annotations

import argparse
import json
import os
import socket as stdlib_socket
import sys
from typing import Final

import trio

HELLO: Final = b"HELLO"


async def relay(sock: trio.socket.SocketType) -> None:
    """Forward datagrams to every registered address but their sender's, forever."""
    destinations: list[tuple[str, int]] = []
    known: set[tuple[str, int]] = set()
    while True:
        data, address = await sock.recvfrom(2048)
        if data == HELLO:
            if address not in known:
                known.add(address)
                destinations.append(address)
            continue
        for destination in destinations:
            if destination != address:
                await sock.sendto(data, destination)


async def _wait_stdin_closed() -> None:
    async with trio.lowlevel.FdStream(os.dup(0)) as stdin:
        while await stdin.receive_some(1024):
            pass


async def _main(max_seconds: float) -> None:
    sock = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
    for option in (stdlib_socket.SO_RCVBUF, stdlib_socket.SO_SNDBUF):
        sock.setsockopt(stdlib_socket.SOL_SOCKET, option, 1 << 20)
    await sock.bind(("127.0.0.1", 0))
    sys.stdout.write(json.dumps({"port": sock.getsockname()[1]}) + "\n")
    sys.stdout.flush()
    with sock, trio.move_on_after(max_seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay, sock)
            await _wait_stdin_closed()
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A bare Trio UDP relay (benchmark reference).")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    trio.run(_main, args.max_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
