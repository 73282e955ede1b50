"""Helpers for the transport tests: task-tree snapshots, RTP/RTCP builders, a connected pair."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

_RTP_HEADER = struct.Struct("!BBHII")


def task_names() -> set[trio.lowlevel.Task]:
    """Every task alive in this trio run (a walk of the task tree from the root task)."""
    found: set[trio.lowlevel.Task] = set()
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None:
            continue
        found.add(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


def rtp_packet(seq: int, *, ssrc: int = 0x11223344, pt: int = 96, size: int = 1200) -> bytes:
    """An RTP packet (RFC 3550 §5.1) of ``size`` bytes whose payload encodes ``seq``.

    First byte 0x80: V=2, P=0, X=0, CC=0. Second byte: M=0 and the payload type.
    Timestamp = 90 * seq (a 90 kHz clock at 1 packet per ms).
    """
    header = _RTP_HEADER.pack(0x80, pt, seq & 0xFFFF, (90 * seq) & 0xFFFFFFFF, ssrc)
    body = struct.pack("!I", seq) * ((size - len(header)) // 4 + 1)
    return header + body[: size - len(header)]


def rtcp_receiver_report(index: int, *, ssrc: int = 0x55667788) -> bytes:
    """An RTCP RR (RFC 3550 §6.4.2) with one report block whose fields encode ``index``.

    Header: V=2, RC=1 (0x81), PT=201, length 7 (32-bit words minus one: 8 words = 32 bytes).
    """
    header = struct.pack("!BBHI", 0x81, 201, 7, ssrc)
    block = struct.pack(
        "!IBBHIIII",
        0xA0000000 | index,  # SSRC of the reported source
        index & 0xFF,  # fraction lost
        0,
        index & 0xFFFF,  # cumulative lost (24 bits: 0x00 then 16 bits)
        1000 + index,  # extended highest sequence number
        index,  # jitter
        0,  # LSR
        0,  # DLSR
    )
    return header + block


@attrs.define(eq=False)
class Received:
    """What one side got, and an event per kind when ``target`` packets arrived."""

    rtp: list[bytes] = attrs.Factory(list)
    rtcp: list[bytes] = attrs.Factory(list)
    states: list[tuple[str, str]] = attrs.Factory(list)
    closed: list[str] = attrs.Factory(list)
    changed: trio.Event = attrs.Factory(trio.Event)

    def on_rtp(self, packet: bytes, arrival: float) -> None:
        self.rtp.append(packet)
        self._changed()

    def on_rtcp(self, packet: bytes, arrival: float) -> None:
        self.rtcp.append(packet)
        self._changed()

    def on_state(self, layer: str, state: str) -> None:
        self.states.append((layer, state))
        self._changed()

    def on_closed(self, reason: str) -> None:
        self.closed.append(reason)
        self._changed()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, predicate: Any) -> None:
        """Wait (without polling) until ``predicate()`` holds."""
        while not predicate():
            await self.changed.wait()


def attach(transport: Any) -> Received:
    """Record a server transport's callbacks."""
    received = Received()
    transport.on_rtp = received.on_rtp
    transport.on_rtcp = received.on_rtcp
    transport.on_state = received.on_state
    transport.on_closed = received.on_closed
    return received


@attrs.define(eq=False)
class Pair:
    server: Any
    client: Any
    server_received: Received


@asynccontextmanager
async def open_pair(
    nursery: trio.Nursery,
    certificate: Any,
    *,
    protocol: str = "udp",
    client_profiles: Sequence[str] | None = None,
    connect: bool = True,
    **transport_options: Any,
) -> AsyncIterator[Pair]:
    """A server WebRtcTransport started in ``nursery`` and a client transport to it,
    connected (ICE, DTLS, SRTP up) unless ``connect`` is False."""
    from trio_sfu.client import open_client_transport
    from trio_sfu.engine.webrtc_transport import WebRtcTransport
    from trio_sfu.srtp import SRTP_PROFILES

    server = WebRtcTransport(transport_id="t1", certificate=certificate, **transport_options)
    received = attach(server)
    await nursery.start(server.run)
    async with open_client_transport(
        server.ice_parameters,
        server.ice_candidates,
        server.dtls_parameters,
        protocol=protocol,  # type: ignore[arg-type]
        srtp_profiles=client_profiles if client_profiles is not None else SRTP_PROFILES,
    ) as client:
        if connect:
            server.connect(client.dtls_parameters)
            await client.wait_connected()
            await received.wait_for(lambda: server.dtls_state == "connected")
        try:
            yield Pair(server, client, received)
        finally:
            server.close()
