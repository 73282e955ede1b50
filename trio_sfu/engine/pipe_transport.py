"""PipeTransport: plain RTP/RTCP between two routers over one UDP socket pair.

mediasoup's PipeTransport: the link that carries a producer from the router where it was
published to another router (maybe in another worker process), so that the other
router's consumers can consume it (:mod:`trio_sfu.engine.pipe`). No ICE, no DTLS, no
SRTP: the two ends are routers on the same host or a trusted network, and each end only
takes datagrams from the address it was connected to. RTP and RTCP share the socket
(rtcp-mux, RFC 5761) and are told apart by the second byte.

Life cycle, as a :class:`~trio_sfu.engine.webrtc_transport.WebRtcTransport`'s::

    transport = PipeTransport(transport_id="p1", listen_ip="127.0.0.1", port_range=(...))
    await nursery.start(transport.run)      # binds the socket: transport.port is known
    transport.connect(remote_ip, remote_port)
    ...
    transport.close()                       # or cancel the owner's scope

The router drives it through the same small interface as a WebRtcTransport: ``on_rtp`` /
``on_rtcp`` callbacks for what arrives, :meth:`send_rtp_nowait` /
:meth:`send_rtcp_nowait` for what leaves, :meth:`stats`, :meth:`close` and ``on_closed``.
Sending never blocks: a datagram the kernel does not take at once (a full socket buffer)
is dropped and counted; on loopback that means the receiving end cannot keep up anyway.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any, final

import trio

from trio_sfu.engine.rtc_sockets import Address, UdpListener, address_family, is_unspecified
from trio_sfu.errors import InvalidMessageError, InvalidStateError, UnsupportedError

logger = logging.getLogger(__name__)


def _ignore_packet(packet: bytes) -> None:
    return None


def _ignore_closed(reason: str) -> None:
    return None


@final
class PipeTransport:
    """One end of a router-to-router pipe: a UDP socket, plain RTP and RTCP.

    ``listen_ip`` is where the socket is bound (a port of ``port_range``); the address the
    other end sends to is :attr:`ip` / :attr:`port`, where ``ip`` is ``announced_ip`` when
    ``listen_ip`` is 0.0.0.0 / :: (then required), else ``listen_ip``.
    """

    __slots__ = (
        "_family",
        "_listen_ip",
        "_port_range",
        "_remote",
        "_scope",
        "_started",
        "_udp",
        "app_data",
        "bytes_in",
        "bytes_out",
        "close_reason",
        "closed",
        "dropped_not_connected",
        "dropped_unknown",
        "id",
        "ip",
        "on_closed",
        "on_rtcp",
        "on_rtp",
        "packets_in",
        "packets_out",
        "port",
        "rtcp_packets_in",
        "rtcp_packets_out",
        "rtp_packets_in",
        "rtp_packets_out",
    )

    def __init__(
        self,
        *,
        transport_id: str,
        listen_ip: str,
        port_range: tuple[int, int],
        announced_ip: str | None = None,
        app_data: dict[str, Any] | None = None,
    ) -> None:
        self._family = address_family(listen_ip)  # ValueError for anything but an IP
        if is_unspecified(listen_ip) and not announced_ip:
            raise ValueError(
                f"listen_ip {listen_ip} listens on every interface: a pipe transport needs "
                "announced_ip, or a specific listen_ip"
            )
        self.id = transport_id
        self.app_data = app_data or {}
        self._listen_ip = listen_ip
        self._port_range = port_range
        self.ip = announced_ip if is_unspecified(listen_ip) and announced_ip else listen_ip
        #: The bound port (0 until :meth:`run` has started).
        self.port = 0
        self._udp: UdpListener | None = None
        self._remote: Address | None = None
        self._scope = trio.CancelScope()
        self._started = False
        self.closed = False
        self.close_reason: str | None = None
        #: What the owner hears: each RTP packet, each RTCP compound packet, the close.
        self.on_rtp: Callable[[bytes], None] = _ignore_packet
        self.on_rtcp: Callable[[bytes], None] = _ignore_packet
        self.on_closed: Callable[[str], None] = _ignore_closed
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.rtp_packets_in = 0
        self.rtcp_packets_in = 0
        self.rtp_packets_out = 0
        self.rtcp_packets_out = 0
        self.dropped_not_connected = 0
        self.dropped_unknown = 0

    # ---- public state ------------------------------------------------------------------

    @property
    def remote_address(self) -> Address | None:
        """(ip, port) of the other end, once connected."""
        return self._remote

    def stats(self) -> dict[str, Any]:
        """Counters, in the shape of a WebRtcTransport's (a fresh dict each call)."""
        udp = self._udp
        remote = self._remote
        return {
            "transport_id": self.id,
            "type": "pipe",
            "local_ip": self.ip,
            "local_port": self.port,
            "remote_ip": remote[0] if remote is not None else None,
            "remote_port": remote[1] if remote is not None else None,
            "bytes_in": self.bytes_in,
            "packets_in": self.packets_in,
            "bytes_out": self.bytes_out,
            "packets_out": self.packets_out,
            "rtp_packets_in": self.rtp_packets_in,
            "rtcp_packets_in": self.rtcp_packets_in,
            "rtp_packets_out": self.rtp_packets_out,
            "rtcp_packets_out": self.rtcp_packets_out,
            "dropped": {
                "not_connected": self.dropped_not_connected,
                "unknown": self.dropped_unknown,
                "send": (udp.send_would_block + udp.send_errors) if udp is not None else 0,
            },
        }

    # ---- life cycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the socket, report started, then receive until closed or cancelled.

        Use with ``await nursery.start(transport.run)``: when that returns, :attr:`port`
        is the bound port. Raises ``OSError`` when no port of the range is free. However
        it ends, the socket is closed and ``on_closed`` was called (once).
        """
        if self._started or self.closed:
            raise InvalidStateError(f"pipe transport {self.id} was already run or closed")
        self._started = True
        started = False
        try:
            with self._scope:
                udp = self._udp = UdpListener.bind(self._listen_ip, self._port_range)
                self.port = udp.local_address[1]
                task_status.started()
                started = True
                await udp.serve(self.handle_datagram)  # returns once the socket is closed
        except BaseException as exc:
            if isinstance(exc, trio.Cancelled):
                self._close_now("cancelled")
                raise
            if not started or not isinstance(exc, Exception):
                raise  # a start-up error (no free port) belongs to the caller
            # A bug in the owner's callbacks: it closes this transport, not the router.
            logger.exception("pipe transport %s crashed", self.id)
            self._close_now("internal_error")
        finally:
            self._close_now("closed")

    def connect(self, ip: str, port: int) -> None:
        """Set the other end's address: media goes there, and only datagrams from there
        are taken. Raises InvalidStateError when connected twice or closed,
        InvalidMessageError for a bad address, UnsupportedError for another IP family."""
        if self.closed:
            raise InvalidStateError(f"pipe transport {self.id} is closed")
        if self._remote is not None:
            raise InvalidStateError(f"pipe transport {self.id} is already connected")
        try:
            parsed = ipaddress.ip_address(ip)
        except ValueError:
            raise InvalidMessageError(f"ip: {ip!r} is not an IP address") from None
        if not 0 < port <= 0xFFFF:
            raise InvalidMessageError(f"port: {port} is not a UDP port")
        if address_family(str(parsed)) != self._family:
            raise UnsupportedError(f"ip: {ip} is not of the family of {self._listen_ip}")
        self._remote = (str(parsed), port)

    def close(self, reason: str = "closed") -> None:
        """Close the socket now, stop the receive task, ``on_closed(reason)``. Synchronous
        and idempotent."""
        self._close_now(reason)

    def _close_now(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if self._udp is not None:
            self._udp.close()
        self._scope.cancel()
        if reason not in ("closed", "cancelled"):
            logger.info("pipe transport %s closed: %s", self.id, reason)
        self.on_closed(reason)

    # ---- packets -----------------------------------------------------------------------

    def send_rtp_nowait(self, packet: bytes | bytearray) -> bool:
        """Send one RTP packet to the other end if the kernel takes it now; ``False``
        (counted) when not connected, closed or the socket buffer is full. Never blocks."""
        remote = self._remote
        udp = self._udp
        if remote is None or udp is None or not udp.sendto_nowait(packet, remote):
            if remote is None:
                self.dropped_not_connected += 1
            return False
        self.rtp_packets_out += 1
        self.packets_out += 1
        self.bytes_out += len(packet)
        return True

    def send_rtcp_nowait(self, packet: bytes) -> bool:
        """Send one RTCP compound packet; as :meth:`send_rtp_nowait`."""
        remote = self._remote
        udp = self._udp
        if remote is None or udp is None or not udp.sendto_nowait(packet, remote):
            if remote is None:
                self.dropped_not_connected += 1
            return False
        self.rtcp_packets_out += 1
        self.packets_out += 1
        self.bytes_out += len(packet)
        return True

    def handle_datagram(self, data: bytes, address: Address) -> None:
        """One datagram from ``address``: RTP or RTCP from the other end goes to
        ``on_rtp`` / ``on_rtcp``; anything else is counted and dropped. Never raises for
        bad input."""
        self.packets_in += 1
        self.bytes_in += len(data)
        if address != self._remote:
            self.dropped_not_connected += 1
            return
        if len(data) < 2 or not 128 <= data[0] <= 191:
            self.dropped_unknown += 1
            return
        if 192 <= data[1] <= 223:
            self.rtcp_packets_in += 1
            self.on_rtcp(data)
        else:
            self.rtp_packets_in += 1
            self.on_rtp(data)
