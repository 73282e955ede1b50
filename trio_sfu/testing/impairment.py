"""A lossy, slow, jittery UDP link between a client and the server, for tests and demos.

The kernel in CI has no netem, so this module plays it: a Trio UDP relay that a client
talks to instead of the server. Each direction has its own :class:`Impairment` (loss,
delay, jitter, reordering, a bandwidth cap with a drop-tail queue), drawn from its own
seeded random generator, so a run can be repeated. The settings are plain attributes and
may change while the relay runs (turn the loss up in the middle of a call)::

    async with open_udp_relay(server_address, seed=7) as relay:
        candidates = relay.rewrite_candidates(transport_info.ice_candidates)
        ...                                   # the client connects to the relay
        relay.downlink.loss = 0.15            # server -> client loses 15 % from now on

:class:`ImpairedLink` is the decision part without sockets or clocks (``now`` is a
parameter): given a datagram's size and arrival time it answers when to deliver it, or
``None`` to drop it. :class:`UdpRelay` owns the sockets and the tasks.

By default only RTP/RTCP is impaired (first byte 128-191, RFC 7983); STUN and DTLS pass
untouched so that connecting stays deterministic (``only_media=False`` impairs
everything).

Loss models: ``"bernoulli"`` drops each packet independently with probability ``loss``;
``"spread"`` drops the same share, spaced out (each packet adds ``loss`` times a random
factor between 0.5 and 1.5 to a credit, and a packet is dropped whenever the credit
reaches one), so that any few hundred packets see very nearly ``loss`` of them lost: for
tests of policies with thresholds.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Literal, final

import attrs
import trio

from trio_sfu.ortc.types import IceCandidate

__all__ = ["ImpairedLink", "Impairment", "LinkStats", "UdpRelay", "open_udp_relay"]

logger = logging.getLogger(__name__)

Address = tuple[str, int]


@attrs.define
class Impairment:
    """What one direction of the link does to datagrams. Mutable while the relay runs."""

    #: Share of packets lost (0-1).
    loss: float = 0.0
    loss_model: Literal["bernoulli", "spread"] = "bernoulli"
    #: Fixed one-way delay, seconds.
    delay: float = 0.0
    #: Extra delay drawn uniformly from [0, jitter] per packet, seconds (may reorder).
    jitter: float = 0.0
    #: Share of packets held back an extra ``reorder_delay`` (reordered behind later ones).
    reorder: float = 0.0
    reorder_delay: float = 0.02
    #: Link rate in bits per second (``None``: unlimited).
    bandwidth: float | None = None
    #: The most queueing the cap allows, in seconds at ``bandwidth``; more is dropped.
    queue_limit: float = 0.1
    #: Leave STUN and DTLS alone (impair RTP/RTCP only).
    only_media: bool = True


@final
@attrs.define
class LinkStats:
    packets: int = 0
    delivered: int = 0
    dropped_loss: int = 0
    dropped_queue: int = 0
    bytes_delivered: int = 0


@final
class ImpairedLink:
    """One direction's decisions: when each datagram arrives, or whether it is lost."""

    __slots__ = ("_credit", "_free_at", "_rng", "impairment", "stats")

    def __init__(self, impairment: Impairment, rng: random.Random) -> None:
        self.impairment = impairment
        self._rng = rng
        self._credit = rng.random()
        self._free_at = 0.0
        self.stats = LinkStats()

    def admit(self, data: bytes, now: float) -> float | None:
        """When ``data``, arriving at ``now``, leaves the link; ``None``: it is dropped."""
        imp = self.impairment
        stats = self.stats
        stats.packets += 1
        if imp.only_media and not (data and 128 <= data[0] <= 191):
            stats.delivered += 1
            stats.bytes_delivered += len(data)
            return now
        rng = self._rng
        if imp.loss > 0:
            if imp.loss_model == "spread":
                self._credit += imp.loss * (0.5 + rng.random())
                lost = self._credit >= 1.0
                if lost:
                    self._credit -= 1.0
            else:
                lost = rng.random() < imp.loss
            if lost:
                stats.dropped_loss += 1
                return None
        leave = now
        if imp.bandwidth is not None and imp.bandwidth > 0:
            start = max(now, self._free_at)
            if start - now > imp.queue_limit:
                stats.dropped_queue += 1
                return None
            self._free_at = start + len(data) * 8 / imp.bandwidth
            leave = self._free_at
        leave += imp.delay
        if imp.jitter > 0:
            leave += rng.random() * imp.jitter
        if imp.reorder > 0 and rng.random() < imp.reorder:
            leave += imp.reorder_delay
        stats.delivered += 1
        stats.bytes_delivered += len(data)
        return leave


@final
class _Direction:
    """Datagrams waiting for their delivery time, and the task that sends them."""

    def __init__(self, link: ImpairedLink) -> None:
        self.link = link
        self.heap: list[tuple[float, int, bytes]] = []
        self.counter = 0
        self.wakeup = trio.Event()

    def push(self, data: bytes, now: float) -> None:
        leave = self.link.admit(data, now)
        if leave is None:
            return
        self.counter += 1
        heapq.heappush(self.heap, (leave, self.counter, data))
        if self.heap[0][1] == self.counter:
            self.wakeup.set()

    async def run(self, send: trio.socket.SocketType, target: list[Address | None]) -> None:
        heap = self.heap
        while True:
            if heap:
                with trio.move_on_at(heap[0][0]):
                    await self.wakeup.wait()
            else:
                await self.wakeup.wait()
            self.wakeup = trio.Event()
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, data = heapq.heappop(heap)
                address = target[0]
                if address is None:
                    continue
                # A peer that went away (OSError) loses the datagram, as on a real link.
                with contextlib.suppress(OSError):
                    await send.sendto(data, address)


@final
class UdpRelay:
    """A UDP relay for one client: the client sends to :attr:`address`, the relay forwards
    to the server from a socket of its own, and back.

    ``uplink`` is client -> server, ``downlink`` server -> client. Start it with
    ``await nursery.start(relay.run)`` (or use :func:`open_udp_relay`); cancelling ``run``
    closes both sockets.
    """

    def __init__(
        self,
        server_address: Address,
        *,
        uplink: Impairment | None = None,
        downlink: Impairment | None = None,
        seed: int = 0,
        listen_ip: str = "127.0.0.1",
    ) -> None:
        self.server_address = server_address
        self.uplink = uplink or Impairment()
        self.downlink = downlink or Impairment()
        rng = random.Random(seed)
        self._up = _Direction(ImpairedLink(self.uplink, random.Random(rng.getrandbits(64))))
        self._down = _Direction(ImpairedLink(self.downlink, random.Random(rng.getrandbits(64))))
        self._listen_ip = listen_ip
        self.address: Address | None = None
        self._client: list[Address | None] = [None]
        self._server: list[Address | None] = [server_address]

    @property
    def uplink_stats(self) -> LinkStats:
        return self._up.link.stats

    @property
    def downlink_stats(self) -> LinkStats:
        return self._down.link.stats

    def rewrite_candidates(self, candidates: Sequence[IceCandidate]) -> list[IceCandidate]:
        """The server's UDP candidates pointing at the relay instead (TCP ones dropped)."""
        if self.address is None:
            raise RuntimeError("the relay is not running yet")
        ip, port = self.address
        return [
            attrs.evolve(candidate, ip=ip, address=ip, port=port)
            for candidate in candidates
            if candidate.protocol == "udp"
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind both sockets and relay until cancelled."""
        with (
            trio.socket.socket(type=trio.socket.SOCK_DGRAM) as client_side,
            trio.socket.socket(type=trio.socket.SOCK_DGRAM) as server_side,
        ):
            await client_side.bind((self._listen_ip, 0))
            await server_side.bind((self._listen_ip, 0))
            self.address = client_side.getsockname()[:2]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_from_client, client_side)
                nursery.start_soon(self._receive_from_server, server_side)
                nursery.start_soon(self._up.run, server_side, self._server)
                nursery.start_soon(self._down.run, client_side, self._client)
                task_status.started()

    async def _receive_from_client(self, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                data, address = await sock.recvfrom(65535)
            except ConnectionError:
                continue
            self._client[0] = address[:2]
            self._up.push(data, trio.current_time())

    async def _receive_from_server(self, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                data, address = await sock.recvfrom(65535)
            except ConnectionError:
                continue
            if address[:2] != self.server_address:
                continue
            self._down.push(data, trio.current_time())


@asynccontextmanager
async def open_udp_relay(
    server_address: Address,
    *,
    uplink: Impairment | None = None,
    downlink: Impairment | None = None,
    seed: int = 0,
) -> AsyncIterator[UdpRelay]:
    """A running :class:`UdpRelay` for the duration of the block."""
    relay = UdpRelay(server_address, uplink=uplink, downlink=downlink, seed=seed)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        try:
            yield relay
        finally:
            nursery.cancel_scope.cancel()
