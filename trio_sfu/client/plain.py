"""The other end of a PlainTransport: plain RTP/RTCP (optionally SRTP) over UDP.

What ffmpeg or GStreamer are to a plain transport, for tests and bots in Python::

    async with open_plain_endpoint(rtcp_mux=False, srtp_crypto_suite="AEAD_AES_128_GCM") as end:
        info = await sig.create_plain_transport(rtcp_mux=False, enable_srtp=True, ...)
        end.connect(info["tuple"], info.get("rtcpTuple"), info.get("srtpParameters"))
        await sig.connect_plain_transport(info["transportId"], ip="127.0.0.1",
                                          port=end.port, rtcp_port=end.rtcp_port,
                                          srtp_parameters=end.srtp_parameters)
        end.send_rtp(packet)
        packet = await end.receive_rtp()

Its reader tasks live in the nursery of :func:`open_plain_endpoint`; leaving the block
closes the sockets. What arrives waits in bounded queues (the oldest is kept, newer ones
are counted in :attr:`PlainEndpoint.dropped` when a queue is full). The parameters such an
endpoint produces and consumes with are in :mod:`trio_sfu.ortc.plain`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, final

import trio

from trio_sfu.errors import BadPacket
from trio_sfu.srtp import SRTP_CRYPTO_SUITES, SRTP_PROFILE_PARAMETERS, SrtpKeys, SrtpSession

Address = tuple[str, int]

#: Packets that may wait in each receive queue.
QUEUE = 4096


@final
class PlainEndpoint:
    """A UDP socket (and one for RTCP without rtcp-mux) facing a plain transport."""

    def __init__(
        self,
        sock: socket.socket,
        rtcp_sock: socket.socket | None,
        srtp_crypto_suite: str | None,
    ) -> None:
        self._sock = sock
        self._rtcp_sock = rtcp_sock
        self.ip, self.port = sock.getsockname()[:2]
        self.rtcp_port = rtcp_sock.getsockname()[1] if rtcp_sock is not None else self.port
        self.srtp_crypto_suite = srtp_crypto_suite
        self._local_key: bytes | None = None
        if srtp_crypto_suite is not None:
            profile = SRTP_PROFILE_PARAMETERS[SRTP_CRYPTO_SUITES[srtp_crypto_suite]]
            self._local_key = os.urandom(profile.master_len)
        self._srtp: SrtpSession | None = None
        #: The transport's RTP and RTCP addresses (set by :meth:`connect`).
        self.remote: Address | None = None
        self.rtcp_remote: Address | None = None
        self._rtp_tx, self._rtp_rx = trio.open_memory_channel[bytes](QUEUE)
        self._rtcp_tx, self._rtcp_rx = trio.open_memory_channel[bytes](QUEUE)
        #: Where RTP and RTCP came from (the transport's source addresses).
        self.rtp_sources: set[Address] = set()
        self.rtcp_sources: set[Address] = set()
        self.dropped = 0
        self.bad = 0

    @property
    def srtp_parameters(self) -> dict[str, str] | None:
        """Our key, in the wire form of ``srtpParameters`` (None without SRTP)."""
        if self._local_key is None:
            return None
        return {
            "cryptoSuite": str(self.srtp_crypto_suite),
            "keyBase64": base64.b64encode(self._local_key).decode("ascii"),
        }

    def connect(
        self,
        tuple_: Mapping[str, Any],
        rtcp_tuple: Mapping[str, Any] | None = None,
        srtp_parameters: Mapping[str, Any] | None = None,
    ) -> None:
        """Where the transport listens (its ``tuple`` and ``rtcpTuple``, wire form) and its
        SRTP key (its ``srtpParameters``)."""
        self.remote = (str(tuple_["localIp"]), int(tuple_["localPort"]))
        if rtcp_tuple is not None:
            self.rtcp_remote = (str(rtcp_tuple["localIp"]), int(rtcp_tuple["localPort"]))
        else:
            self.rtcp_remote = self.remote
        if self._local_key is not None:
            if srtp_parameters is None:
                raise ValueError("the transport sent no srtpParameters")
            suite = str(srtp_parameters["cryptoSuite"])
            if suite != self.srtp_crypto_suite:
                raise ValueError(f"crypto suite {suite}, expected {self.srtp_crypto_suite}")
            remote_key = base64.b64decode(str(srtp_parameters["keyBase64"]))
            self._srtp = SrtpSession(
                SrtpKeys(
                    SRTP_CRYPTO_SUITES[suite],
                    local_master=self._local_key,
                    remote_master=remote_key,
                )
            )

    # ---- sending -----------------------------------------------------------------------

    def protect_rtp(self, packet: bytes) -> bytes:
        return self._srtp.protect_rtp(packet) if self._srtp is not None else packet

    def send_rtp(self, packet: bytes) -> None:
        """Send one RTP packet (SRTP when on) now; a full socket buffer drops it."""
        assert self.remote is not None, "connect() first"
        _sendto_nowait(self._sock, self.protect_rtp(packet), self.remote)

    def send_rtcp(self, packet: bytes) -> None:
        """Send one RTCP compound packet (SRTCP when on) to the RTCP address."""
        assert self.rtcp_remote is not None, "connect() first"
        data = self._srtp.protect_rtcp(packet) if self._srtp is not None else packet
        sock = self._rtcp_sock if self._rtcp_sock is not None else self._sock
        _sendto_nowait(sock, data, self.rtcp_remote)

    # ---- receiving ---------------------------------------------------------------------

    async def receive_rtp(self) -> bytes:
        return await self._rtp_rx.receive()

    async def receive_rtcp(self) -> bytes:
        return await self._rtcp_rx.receive()

    def receive_rtp_nowait(self) -> bytes:
        return self._rtp_rx.receive_nowait()

    async def _read(self, stdlib_sock: socket.socket, rtcp_only: bool) -> None:
        sock = trio.socket.from_stdlib_socket(stdlib_sock)
        while True:
            data, address = await sock.recvfrom(65536)
            address = address[:2]
            if len(data) < 2 or not 128 <= data[0] <= 191:
                self.bad += 1
                continue
            is_rtcp = 192 <= data[1] <= 223
            if rtcp_only and not is_rtcp:
                self.bad += 1
                continue
            srtp = self._srtp
            if srtp is not None:
                try:
                    if is_rtcp:
                        data = srtp.unprotect_rtcp_untrusted(data)
                    else:
                        data = srtp.unprotect_rtp_untrusted(data)
                except BadPacket:
                    self.bad += 1
                    continue
            (self.rtcp_sources if is_rtcp else self.rtp_sources).add(address)
            try:
                (self._rtcp_tx if is_rtcp else self._rtp_tx).send_nowait(data)
            except trio.WouldBlock:
                self.dropped += 1


def _sendto_nowait(sock: socket.socket, data: bytes, address: Address) -> None:
    with contextlib.suppress(BlockingIOError):
        sock.sendto(data, address)


@asynccontextmanager
async def open_plain_endpoint(
    *, ip: str = "127.0.0.1", rtcp_mux: bool = True, srtp_crypto_suite: str | None = None
) -> AsyncIterator[PlainEndpoint]:
    """A bound endpoint for the block (ports chosen by the kernel); closed after it."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    rtcp_sock = None if rtcp_mux else socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        try:
            for each in (sock, rtcp_sock):
                if each is not None:
                    each.setblocking(False)
                    each.bind((ip, 0))
            endpoint = PlainEndpoint(sock, rtcp_sock, srtp_crypto_suite)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(endpoint._read, sock, False)
                if rtcp_sock is not None:
                    nursery.start_soon(endpoint._read, rtcp_sock, True)
                try:
                    yield endpoint
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            if rtcp_sock is not None:
                rtcp_sock.close()


__all__ = ["PlainEndpoint", "open_plain_endpoint"]
