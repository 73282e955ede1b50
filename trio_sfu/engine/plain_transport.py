"""PlainTransport: plain RTP/RTCP over UDP, optionally SRTP with keys given in signaling.

mediasoup's PlainTransport: how tools that are not browsers publish and receive (ffmpeg or
GStreamer ingest, recorders, bots). No ICE, no DTLS. Its options are mediasoup's:

* ``rtcp_mux`` (default on): RTP and RTCP share one socket and are told apart by the
  second byte (RFC 5761); off, RTCP has a socket (and port) of its own.
* ``comedia``: the remote address is not given but learned from the first packet that
  arrives (and passes SRTP, when on): RTP's tuple from the first RTP packet (or RTCP
  packet, with rtcp-mux), RTCP's from the first RTCP packet on the RTCP socket.
* ``enable_srtp`` with ``srtp_crypto_suite``: SRTP/SRTCP both ways; the transport makes
  its own key (:attr:`srtp_parameters`, given to the other end) and takes the other end's
  in :meth:`connect`.

Once the remote tuple is known (by :meth:`connect` or learned), only datagrams from it are
taken; anything else is counted and dropped. Sending never blocks: a datagram the kernel
does not take at once (a full socket buffer) is dropped and counted, and nothing goes out
before the remote tuple is known.

:class:`~trio_sfu.engine.pipe_transport.PipeTransport` (between two routers) is a
PlainTransport with rtcp-mux, no comedia and no SRTP: both share this packet path.

Life cycle::

    transport = PlainTransport(transport_id="t1", listen_ip="127.0.0.1", port_range=(...))
    await nursery.start(transport.run)      # binds the socket(s): transport.port is known
    transport.connect(ip=..., port=..., rtcp_port=..., srtp_parameters=...)
    ...
    transport.close()                       # or cancel the owner's scope

The router drives it as it drives a WebRtcTransport: ``on_rtp`` / ``on_rtcp`` callbacks for
what arrives (with when it arrived), :meth:`send_rtp_nowait` / :meth:`send_rtcp_nowait` for
what leaves, :meth:`stats`, :meth:`close` and ``on_closed``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import os
from collections.abc import Callable
from typing import Any

import trio

from trio_sfu.engine.rtc_sockets import (
    Address,
    UdpListener,
    address_family,
    is_unspecified,
    no_callback,
)
from trio_sfu.errors import BadPacket, InvalidMessageError, InvalidStateError, UnsupportedError
from trio_sfu.ortc.types import SrtpParameters, TransportTuple
from trio_sfu.srtp import SRTP_CRYPTO_SUITES, SRTP_PROFILE_PARAMETERS, SrtpKeys, SrtpSession

logger = logging.getLogger(__name__)

#: mediasoup's default ``srtpCryptoSuite``.
DEFAULT_SRTP_CRYPTO_SUITE = "AES_CM_128_HMAC_SHA1_80"


def srtp_key_length(crypto_suite: str) -> int:
    """Bytes of master key + salt of a crypto suite; UnsupportedError for an unknown one."""
    profile = SRTP_CRYPTO_SUITES.get(crypto_suite)
    if profile is None:
        raise UnsupportedError(
            f"srtpCryptoSuite: {crypto_suite!r} is not one of {sorted(SRTP_CRYPTO_SUITES)}"
        )
    return SRTP_PROFILE_PARAMETERS[profile].master_len


class PlainTransport:
    """Plain RTP/RTCP (optionally SRTP) over UDP. Subclassed only by PipeTransport.

    ``listen_ip`` is where the socket(s) are bound (ports of ``port_range``); the address
    the other end sends to is :attr:`ip` / :attr:`port` (:attr:`rtcp_port` without
    rtcp-mux), where ``ip`` is ``announced_ip`` when given, else ``listen_ip`` (then not
    0.0.0.0 / ::).
    """

    __slots__ = (
        "_family",
        "_listen_ip",
        "_local_key",
        "_port_range",
        "_rtcp_remote",
        "_rtcp_udp",
        "_scope",
        "_srtp",
        "_started",
        "_udp",
        "app_data",
        "bytes_in",
        "bytes_out",
        "close_reason",
        "closed",
        "comedia",
        "connected",
        "dropped_not_connected",
        "dropped_srtp",
        "dropped_unknown",
        "id",
        "ip",
        "on_closed",
        "on_rtcp",
        "on_rtp",
        "packets_in",
        "packets_out",
        "port",
        "remote",
        "rtcp_mux",
        "rtcp_packets_in",
        "rtcp_packets_out",
        "rtcp_port",
        "rtp_packets_in",
        "rtp_packets_out",
        "srtp_crypto_suite",
    )

    #: What :meth:`stats` and dumps call this kind of transport.
    kind = "plain"

    def __init__(
        self,
        *,
        transport_id: str,
        listen_ip: str,
        port_range: tuple[int, int],
        announced_ip: str | None = None,
        rtcp_mux: bool = True,
        comedia: bool = False,
        enable_srtp: bool = False,
        srtp_crypto_suite: str = DEFAULT_SRTP_CRYPTO_SUITE,
        app_data: dict[str, Any] | None = None,
    ) -> None:
        self._family = address_family(listen_ip)  # ValueError for anything but an IP
        if is_unspecified(listen_ip) and not announced_ip:
            raise ValueError(
                f"listen_ip {listen_ip} listens on every interface: a plain transport needs "
                "announced_ip, or a specific listen_ip"
            )
        self.id = transport_id
        self.app_data = app_data or {}
        self._listen_ip = listen_ip
        self._port_range = port_range
        self.ip = announced_ip or listen_ip
        self.rtcp_mux = rtcp_mux
        self.comedia = comedia
        #: The bound ports (0 until :meth:`run` has started; ``rtcp_port`` is ``port``
        #: with rtcp-mux).
        self.port = 0
        self.rtcp_port = 0
        self._udp: UdpListener | None = None
        self._rtcp_udp: UdpListener | None = None
        #: The other end's RTP (and, with rtcp-mux, RTCP) address, and its RTCP address.
        self.remote: Address | None = None
        self._rtcp_remote: Address | None = None
        self.srtp_crypto_suite: str | None = None
        self._local_key: bytes | None = None
        if enable_srtp:
            self.srtp_crypto_suite = srtp_crypto_suite
            self._local_key = os.urandom(srtp_key_length(srtp_crypto_suite))
        self._srtp: SrtpSession | None = None
        self.connected = False
        self._scope = trio.CancelScope()
        self._started = False
        self.closed = False
        self.close_reason: str | None = None
        #: What the owner hears: each RTP packet and each RTCP compound packet, with its
        #: arrival time (trio's clock), and the close.
        self.on_rtp: Callable[[bytes, float], None] = no_callback
        self.on_rtcp: Callable[[bytes, float], None] = no_callback
        self.on_closed: Callable[[str], None] = no_callback
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
        self.dropped_srtp = 0

    # ---- public state ------------------------------------------------------------------

    @property
    def remote_address(self) -> Address | None:
        """(ip, port) of the other end's RTP, once known."""
        return self.remote

    @property
    def rtcp_remote_address(self) -> Address | None:
        """(ip, port) of the other end's RTCP, once known (its RTP address with rtcp-mux)."""
        return self.remote if self.rtcp_mux else self._rtcp_remote

    @property
    def srtp_parameters(self) -> SrtpParameters | None:
        """Our SRTP key, for the other end (None without SRTP)."""
        if self._local_key is None or self.srtp_crypto_suite is None:
            return None
        return SrtpParameters(
            crypto_suite=self.srtp_crypto_suite,  # type: ignore[arg-type]
            key_base64=base64.b64encode(self._local_key).decode("ascii"),
        )

    @property
    def tuple(self) -> TransportTuple:
        remote = self.remote
        return TransportTuple(
            local_address=self.ip,
            local_ip=self.ip,
            local_port=self.port,
            remote_ip=remote[0] if remote is not None else None,
            remote_port=remote[1] if remote is not None else None,
        )

    @property
    def rtcp_tuple(self) -> TransportTuple | None:
        """The RTCP socket's tuple (None with rtcp-mux)."""
        if self.rtcp_mux:
            return None
        remote = self._rtcp_remote
        return TransportTuple(
            local_address=self.ip,
            local_ip=self.ip,
            local_port=self.rtcp_port,
            remote_ip=remote[0] if remote is not None else None,
            remote_port=remote[1] if remote is not None else None,
        )

    def stats(self) -> dict[str, Any]:
        """Counters, in the shape of a WebRtcTransport's (a fresh dict each call)."""
        send_drops = 0
        for udp in (self._udp, self._rtcp_udp):
            if udp is not None:
                send_drops += udp.send_would_block + udp.send_errors
        remote = self.remote
        rtcp_remote = self.rtcp_remote_address
        dropped = {
            "not_connected": self.dropped_not_connected,
            "unknown": self.dropped_unknown,
            "send": send_drops,
        }
        if self._local_key is not None:
            dropped["srtp"] = self.dropped_srtp
        return {
            "transport_id": self.id,
            "type": self.kind,
            "local_ip": self.ip,
            "local_port": self.port,
            "remote_ip": remote[0] if remote is not None else None,
            "remote_port": remote[1] if remote is not None else None,
            "rtcp_mux": self.rtcp_mux,
            "comedia": self.comedia,
            "local_rtcp_port": self.rtcp_port,
            "remote_rtcp_port": rtcp_remote[1] if rtcp_remote is not None else None,
            "srtp_crypto_suite": self.srtp_crypto_suite,
            "bytes_in": self.bytes_in,
            "packets_in": self.packets_in,
            "bytes_out": self.bytes_out,
            "packets_out": self.packets_out,
            "rtp_packets_in": self.rtp_packets_in,
            "rtcp_packets_in": self.rtcp_packets_in,
            "rtp_packets_out": self.rtp_packets_out,
            "rtcp_packets_out": self.rtcp_packets_out,
            "dropped": dropped,
        }

    # ---- life cycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the socket(s), report started, then receive until closed or cancelled.

        Use with ``await nursery.start(transport.run)``: when that returns, :attr:`port`
        (and :attr:`rtcp_port`) are bound. Raises ``OSError`` when no port of the range is
        free. However it ends, the sockets are closed and ``on_closed`` was called (once).
        """
        if self._started or self.closed:
            raise InvalidStateError(f"{self.kind} transport {self.id} was already run or closed")
        self._started = True
        started = False
        try:
            with self._scope:
                udp = self._udp = UdpListener.bind(self._listen_ip, self._port_range)
                self.port = self.rtcp_port = udp.local_address[1]
                rtcp_udp = None
                if not self.rtcp_mux:
                    rtcp_udp = self._rtcp_udp = UdpListener.bind(self._listen_ip, self._port_range)
                    self.rtcp_port = rtcp_udp.local_address[1]
                task_status.started()
                started = True
                if rtcp_udp is None:
                    await udp.serve(self.handle_datagram)  # returns once the socket is closed
                else:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(udp.serve, self.handle_datagram)
                        await rtcp_udp.serve(self.handle_rtcp_datagram)
        except BaseException as exc:
            if isinstance(exc, trio.Cancelled):
                self._close_now("cancelled")
                raise
            if not started or not isinstance(exc, Exception):
                raise  # a start-up error (no free port) belongs to the caller
            # A bug in the owner's callbacks: it closes this transport, not the router.
            logger.exception("%s transport %s crashed", self.kind, self.id)
            self._close_now("internal_error")
        finally:
            self._close_now("closed")

    def connect(
        self,
        *,
        ip: str | None = None,
        port: int | None = None,
        rtcp_port: int | None = None,
        srtp_parameters: SrtpParameters | None = None,
    ) -> None:
        """The other end: its address (without comedia: ``ip`` and ``port``, and
        ``rtcp_port`` without rtcp-mux) and, with SRTP, its key. With comedia the address
        is learned from the first packet and ``ip`` / ports are ignored, as mediasoup does.

        Raises InvalidStateError when connected twice or closed, InvalidMessageError for a
        missing or bad address or key, UnsupportedError for another IP family or crypto
        suite. Nothing changes when it raises.
        """
        if self.closed:
            raise InvalidStateError(f"{self.kind} transport {self.id} is closed")
        if self.connected:
            raise InvalidStateError(f"{self.kind} transport {self.id} is already connected")
        remote: Address | None = None
        rtcp_remote: Address | None = None
        if not self.comedia:
            if ip is None or port is None:
                raise InvalidMessageError("ip and port are required (comedia is off)")
            address = self._parse_ip(ip)
            remote = (address, self._check_port("port", port))
            if not self.rtcp_mux:
                if rtcp_port is None:
                    raise InvalidMessageError("rtcpPort is required (rtcpMux is off)")
                rtcp_remote = (address, self._check_port("rtcpPort", rtcp_port))
        srtp = None
        if self._local_key is not None:
            srtp = self._srtp_session(srtp_parameters)
        elif srtp_parameters is not None:
            raise InvalidMessageError("srtpParameters: SRTP is not enabled on this transport")
        self.connected = True
        self._srtp = srtp
        if remote is not None:
            self.remote = remote
            self._rtcp_remote = rtcp_remote

    def _parse_ip(self, ip: str) -> str:
        try:
            parsed = ipaddress.ip_address(ip)
        except ValueError:
            raise InvalidMessageError(f"ip: {ip!r} is not an IP address") from None
        if address_family(str(parsed)) != self._family:
            raise UnsupportedError(f"ip: {ip} is not of the family of {self._listen_ip}")
        return str(parsed)

    @staticmethod
    def _check_port(name: str, port: int) -> int:
        if not 0 < port <= 0xFFFF:
            raise InvalidMessageError(f"{name}: {port} is not a UDP port")
        return port

    def _srtp_session(self, parameters: SrtpParameters | None) -> SrtpSession:
        assert self._local_key is not None and self.srtp_crypto_suite is not None
        if parameters is None:
            raise InvalidMessageError("srtpParameters are required (SRTP is enabled)")
        if parameters.crypto_suite != self.srtp_crypto_suite:
            raise UnsupportedError(
                f"srtpParameters.cryptoSuite: {parameters.crypto_suite!r}, but this transport "
                f"runs {self.srtp_crypto_suite!r}"
            )
        try:
            key = base64.b64decode(parameters.key_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidMessageError("srtpParameters.keyBase64: not base64") from None
        if len(key) != len(self._local_key):
            raise InvalidMessageError(
                f"srtpParameters.keyBase64: {len(key)} bytes, {self.srtp_crypto_suite} "
                f"takes {len(self._local_key)} (master key and salt)"
            )
        profile = SRTP_CRYPTO_SUITES[self.srtp_crypto_suite]
        return SrtpSession(SrtpKeys(profile, local_master=self._local_key, remote_master=key))

    def close(self, reason: str = "closed") -> None:
        """Close the socket(s) now, stop the receive task, ``on_closed(reason)``.
        Synchronous and idempotent."""
        self._close_now(reason)

    def _close_now(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        for udp in (self._udp, self._rtcp_udp):
            if udp is not None:
                udp.close()
        self._scope.cancel()
        if reason not in ("closed", "cancelled"):
            logger.info("%s transport %s closed: %s", self.kind, self.id, reason)
        self.on_closed(reason)

    # ---- packets out -------------------------------------------------------------------

    def send_rtp_nowait(self, packet: bytes | bytearray) -> bool:
        """Send one RTP packet (SRTP-protected when on) to the other end if the kernel
        takes it now; ``False`` (counted) when the remote is not known, the transport is
        closed or the socket buffer is full. Never blocks."""
        remote = self.remote
        udp = self._udp
        if remote is None or udp is None:
            self.dropped_not_connected += 1
            return False
        srtp = self._srtp
        if srtp is not None:
            try:
                packet = srtp.protect_rtp(packet)
            except BadPacket:
                self.dropped_srtp += 1
                return False
        elif self._local_key is not None:  # SRTP on, keys not given yet
            self.dropped_not_connected += 1
            return False
        if not udp.sendto_nowait(packet, remote):
            return False
        self.rtp_packets_out += 1
        self.packets_out += 1
        self.bytes_out += len(packet)
        return True

    def send_rtcp_nowait(self, packet: bytes) -> bool:
        """Send one RTCP compound packet (SRTCP when on), to the RTCP address; as
        :meth:`send_rtp_nowait`."""
        if self.rtcp_mux:
            remote = self.remote
            udp = self._udp
        else:
            remote = self._rtcp_remote
            udp = self._rtcp_udp
        if remote is None or udp is None:
            self.dropped_not_connected += 1
            return False
        srtp = self._srtp
        if srtp is not None:
            try:
                packet = srtp.protect_rtcp(packet)
            except BadPacket:
                self.dropped_srtp += 1
                return False
        elif self._local_key is not None:
            self.dropped_not_connected += 1
            return False
        if not udp.sendto_nowait(packet, remote):
            return False
        self.rtcp_packets_out += 1
        self.packets_out += 1
        self.bytes_out += len(packet)
        return True

    # ---- packets in --------------------------------------------------------------------

    def handle_datagram(self, data: bytes, address: Address, arrival: float) -> None:
        """One datagram on the RTP socket from ``address``, arrived at ``arrival`` (trio's
        clock): RTP (and with rtcp-mux, RTCP) from the other end goes to ``on_rtp`` /
        ``on_rtcp`` with ``arrival``; anything else is counted and dropped. Never raises
        for bad input."""
        self.packets_in += 1
        self.bytes_in += len(data)
        remote = self.remote
        if address != remote and (remote is not None or not self.comedia):
            self.dropped_not_connected += 1
            return
        if len(data) < 2 or not 128 <= data[0] <= 191:
            self.dropped_unknown += 1
            return
        rtcp = 192 <= data[1] <= 223
        if rtcp and not self.rtcp_mux:
            self.dropped_unknown += 1  # RTCP belongs on the RTCP socket
            return
        srtp = self._srtp
        if srtp is not None:
            try:
                if rtcp:
                    data = srtp.unprotect_rtcp_untrusted(data)
                else:
                    data = srtp.unprotect_rtp_untrusted(data)
            except BadPacket:
                self.dropped_srtp += 1
                return
        elif self._local_key is not None:  # SRTP on, keys not given yet
            self.dropped_not_connected += 1
            return
        if remote is None:
            self.remote = address  # comedia: the first packet that passed says who
            logger.debug("%s transport %s: remote learned, %s", self.kind, self.id, address)
        if rtcp:
            self.rtcp_packets_in += 1
            self.on_rtcp(data, arrival)
        else:
            self.rtp_packets_in += 1
            self.on_rtp(data, arrival)

    def handle_rtcp_datagram(self, data: bytes, address: Address, arrival: float) -> None:
        """One datagram on the RTCP socket (without rtcp-mux): RTCP from the other end's
        RTCP address goes to ``on_rtcp``. Never raises for bad input."""
        self.packets_in += 1
        self.bytes_in += len(data)
        remote = self._rtcp_remote
        if address != remote and (remote is not None or not self.comedia):
            self.dropped_not_connected += 1
            return
        if len(data) < 2 or not 128 <= data[0] <= 191 or not 192 <= data[1] <= 223:
            self.dropped_unknown += 1
            return
        srtp = self._srtp
        if srtp is not None:
            try:
                data = srtp.unprotect_rtcp_untrusted(data)
            except BadPacket:
                self.dropped_srtp += 1
                return
        elif self._local_key is not None:
            self.dropped_not_connected += 1
            return
        if remote is None:
            self._rtcp_remote = address
        self.rtcp_packets_in += 1
        self.on_rtcp(data, arrival)
