"""WebRtcTransport: ICE-lite, DTLS-SRTP and RTP/RTCP over one UDP port and one TCP port.

One transport per direction per peer, owned by a Router (mediasoup's model). The protocol
state lives in the sans-IO objects (:class:`~trio_sfu.ice.IceLiteServer`,
:class:`~trio_sfu.dtls.DtlsEndpoint`, :class:`~trio_sfu.srtp.SrtpSession`); this module is
the Trio side: sockets, tasks, timers and the egress queue.

Life cycle::

    transport = WebRtcTransport(transport_id="t1", certificate=certificate)
    await nursery.start(transport.run)      # binds the sockets; candidates are known now
    transport.connect(remote_dtls_parameters)
    ...
    transport.close()                       # or cancel the owner's scope

All of the transport's tasks live under :meth:`run`. :meth:`close` (synchronous and
idempotent) closes the sockets at once and cancels :meth:`run`'s scope; cancelling the
owner's scope does the same. ``on_closed(reason)`` is called exactly once either way.

Packets in (:meth:`handle_datagram`, one call per UDP datagram or RFC 4571 frame) are
demultiplexed per RFC 7983: STUN to ICE, DTLS to the DTLS endpoint, SRTP/SRTCP to the SRTP
session and then to ``on_rtp(packet, arrival)`` / ``on_rtcp(packet, arrival)``, where
``arrival`` is when the datagram reached the host (trio's clock; see
:mod:`~trio_sfu.engine.rtc_sockets`), not when it was decrypted. Bad bytes of any kind,
and DTLS or media from addresses ICE has not validated, are dropped and counted (see
:meth:`stats`); they never end the transport. A DTLS failure (e.g. a certificate that
matches no fingerprint given to :meth:`connect`) closes it with the reason
``"dtls_failed: ..."``; an ICE consent timeout closes it with ``"consent_timeout"``; a
transport whose DTLS is not connected ``connect_timeout`` seconds after it started (its
client never connected it, or vanished on the way) closes with ``"connect_timeout"``.

Packets out (:meth:`send_rtp_nowait`, :meth:`send_rtcp_nowait`) are protected and sent at
once; only while the socket would block (or over TCP) do they wait in a bounded queue for
an egress task (:mod:`~trio_sfu.engine.egress_batch`). A full queue drops and counts: the
sender (a Router fanning out) is never blocked.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Final, Literal, final

import trio

from trio_sfu.dtls import DtlsCertificate, DtlsEndpoint, DtlsError
from trio_sfu.engine import memory
from trio_sfu.engine.dtls_parameters import local_dtls_parameters, remote_fingerprints
from trio_sfu.engine.egress_batch import (
    EGRESS_BATCH,
    KIND_PROTECTED,
    KIND_RTCP,
    KIND_RTP,
    protect_batch,
)
from trio_sfu.engine.rtc_sockets import (
    SEND_WOULD_BLOCK,
    Address,
    TcpListener,
    UdpListener,
    check_listen_options,
    no_callback,
)
from trio_sfu.engine.webrtc_server import WebRtcServer
from trio_sfu.errors import BadPacket, InvalidStateError
from trio_sfu.ice import (
    IceLiteServer,
    IceSelectedAddressChanged,
    IceState,
    IceStateChanged,
    host_candidates,
)
from trio_sfu.ortc.types import (
    DtlsParameters,
    IceCandidate,
    IceParameters,
)
from trio_sfu.srtp import SrtpSession
from trio_sfu.timers import DeadlineTimer, TimerQueue

logger = logging.getLogger(__name__)

MAX_EARLY_DTLS: Final = 8
#: The DTLS connection (OpenSSL's, some 60 KiB) is released this long after SRTP starts,
#: or at the peer's first SRTP/SRTCP packet if sooner; a DTLS alert from the peer (its
#: close_notify) is read only until then: the end of a transport comes from signaling or
#: ICE consent.
DTLS_RELEASE_AFTER: Final = 5.0
#: About what a connected OpenSSL DTLS connection holds (measured: 92 KiB of heap).
DTLS_CONNECTION_BYTES: Final = 90 << 10


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return False


@final
class WebRtcTransport:
    """A server-side WebRTC transport (ICE-lite + DTLS-SRTP), mediasoup's WebRtcTransport.

    Construction validates the configuration and creates the ICE credentials and DTLS
    parameters; :meth:`run` binds the sockets. ``listen_ip`` 0.0.0.0 / :: needs an
    ``announced_ip`` (the address clients can reach), else ``ValueError``.
    """

    # Slots, not an instance dict: with this many attributes CPython gives up sharing the
    # dict's keys, and each transport's dict took 1.6 KiB. Owners assign the on_* callbacks.
    __slots__ = (
        "_announced_ip",
        "_certificate",
        "_connect_deadline",
        "_connect_timeout",
        "_direct_address",
        "_dtls",
        "_dtls_address",
        "_dtls_release_at",
        "_dtls_role",
        "_dtls_started",
        "_dtls_state",
        "_early_dtls",
        "_egress_queue_size",
        "_egress_scope",
        "_egress_send",
        "_enable_tcp",
        "_enable_udp",
        "_ice",
        "_listen_ip",
        "_nursery",
        "_port_range",
        "_prefer_udp",
        "_queued",
        "_scope",
        "_selected_is_tcp",
        "_server",
        "_srtp",
        "_started",
        "_tcp",
        "_timer",
        "_udp",
        "app_data",
        "bytes_in",
        "bytes_out",
        "close_reason",
        "closed",
        "dropped_dtls_early",
        "dropped_dtls_noise",
        "dropped_egress_full",
        "dropped_egress_not_ready",
        "dropped_egress_protect",
        "dropped_not_validated",
        "dropped_send",
        "dropped_srtp_auth",
        "dropped_srtp_not_ready",
        "dropped_unknown",
        "dtls_fingerprint_refused",
        "dtls_in",
        "dtls_parameters",
        "ice_candidates",
        "ice_parameters",
        "id",
        "on_closed",
        "on_rtcp",
        "on_rtp",
        "on_state",
        "packets_in",
        "packets_out",
        "rtcp_packets_in",
        "rtcp_packets_out",
        "rtp_packets_in",
        "rtp_packets_out",
        "stun_in",
    )

    def __init__(
        self,
        *,
        transport_id: str,
        certificate: DtlsCertificate,
        listen_ip: str = "127.0.0.1",
        announced_ip: str | None = None,
        port_range: tuple[int, int] = (40000, 49999),
        enable_udp: bool = True,
        enable_tcp: bool = True,
        prefer_udp: bool = True,
        egress_queue_size: int = 512,
        app_data: dict[str, Any] | None = None,
        consent_timeout: float = 30.0,
        close_timeout: float = 40.0,
        timers: TimerQueue | None = None,
        server: WebRtcServer | None = None,
        connect_timeout: float | None = 30.0,
    ) -> None:
        check_listen_options(
            "WebRtcTransport", listen_ip, announced_ip, port_range, enable_udp, enable_tcp
        )
        if egress_queue_size < 1:
            raise ValueError("egress_queue_size must be at least 1")
        if connect_timeout is not None and connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive (or None: no limit)")

        self.id = transport_id
        self.app_data: dict[str, Any] = app_data if app_data is not None else {}
        self._certificate = certificate
        self._listen_ip = listen_ip
        self._announced_ip = announced_ip
        self._port_range = port_range
        self._enable_udp = enable_udp
        self._enable_tcp = enable_tcp
        self._prefer_udp = prefer_udp

        self._ice = IceLiteServer(consent_timeout=consent_timeout, close_timeout=close_timeout)
        self.ice_parameters = IceParameters(
            username_fragment=self._ice.ufrag, password=self._ice.password, ice_lite=True
        )
        self.ice_candidates: list[IceCandidate] = []
        self.dtls_parameters = local_dtls_parameters(certificate)

        self.on_rtp: Callable[[bytes, float], None] = no_callback
        self.on_rtcp: Callable[[bytes, float], None] = no_callback
        self.on_state: Callable[[str, str], None] = no_callback
        self.on_closed: Callable[[str], None] = no_callback

        self.closed = False
        self.close_reason: str | None = None
        self._started = False
        self._scope = trio.CancelScope()
        # With a queue (the Router's), its task fires this transport's timer; without
        # one, run() starts a task for it.
        self._timer = (
            DeadlineTimer(self._next_deadline, self._on_timer)
            if timers is None
            else timers.timer(
                self._next_deadline, self._on_timer, on_error=lambda exc: self.crashed("timer")
            )
        )
        #: The worker's shared sockets, if it has them; else the transport binds its own.
        self._server = server
        self._udp: UdpListener | None = None
        self._tcp: TcpListener | None = None
        self._nursery: trio.Nursery | None = None
        #: The running egress task's scope (close() cancels it), else None.
        self._egress_scope: trio.CancelScope | None = None
        self._egress_queue_size = egress_queue_size
        # The egress queue and its task exist only while packets wait for the socket
        # (see _enqueue): most of the time a transport sends at once and has neither.
        self._egress_send: trio.MemorySendChannel[tuple[bytes | bytearray, int]] | None = None
        #: Entries in the egress queue or being sent by the egress task: while there are
        #: any, new packets queue behind them.
        self._queued = 0
        #: The UDP tuple to send media to at once (see _refresh_direct), else None.
        self._direct_address: Address | None = None

        self._dtls: DtlsEndpoint | None = None
        self._dtls_role: Literal["client", "server"] | None = None
        self._dtls_started = False
        self._dtls_address: Address | None = None
        self._dtls_state = "new"
        # When the DTLS connection is released: DTLS_RELEASE_AFTER seconds after SRTP
        # starts, or at the peer's first authenticated SRTP/SRTCP packet if sooner (it
        # finished its handshake too); infinity before SRTP starts and once released.
        self._dtls_release_at = math.inf
        self._early_dtls: list[tuple[bytes, Address]] = []
        #: Seconds from the start until DTLS must be connected (None: no limit), and when
        #: that is (infinity before the start and once connected).
        self._connect_timeout = connect_timeout
        self._connect_deadline = math.inf
        self._srtp: SrtpSession | None = None
        self._selected_is_tcp = False

        # Counters (plain attributes: the receive path increments them per packet).
        self.bytes_in = 0
        self.packets_in = 0
        self.bytes_out = 0
        self.packets_out = 0
        self.rtp_packets_in = 0
        self.rtcp_packets_in = 0
        self.rtp_packets_out = 0
        self.rtcp_packets_out = 0
        self.stun_in = 0
        self.dtls_in = 0
        self.dropped_not_validated = 0
        self.dropped_srtp_not_ready = 0
        self.dropped_srtp_auth = 0
        self.dropped_dtls_noise = 0
        self.dropped_dtls_early = 0
        self.dropped_unknown = 0
        self.dropped_egress_full = 0
        self.dropped_egress_not_ready = 0
        self.dropped_egress_protect = 0
        self.dropped_send = 0
        #: 1 once a DTLS handshake was refused for a certificate that matches no
        #: fingerprint given to connect() (the transport closed then).
        self.dtls_fingerprint_refused = 0

    # ---- public state ------------------------------------------------------------------

    @property
    def ice_state(self) -> str:
        """The ICE state: "new", "connected", "disconnected" or "closed" (mediasoup's values)."""
        return str(self._ice.state.value)

    @property
    def dtls_state(self) -> str:
        """The DTLS state: "new", "connecting", "connected", "failed" or "closed"."""
        return self._dtls_state

    @property
    def ice_selected_tuple(self) -> tuple[str, Address] | None:
        """("udp"|"tcp", remote address) of the tuple media goes to, if any."""
        address = self._ice.selected_address
        if address is None:
            return None
        return ("tcp" if self._selected_is_tcp else "udp", address)

    @property
    def selected_srtp_profile(self) -> str | None:
        return self._dtls.selected_srtp_profile if self._dtls is not None else None

    def stats(self) -> dict[str, Any]:
        """Counters and states, for getStats and leak checks (a fresh dict each call)."""
        udp, tcp = self._udp, self._tcp
        server = self._server
        if server is not None:
            # The sockets' own counters are the server's (WebRtcServer.stats()).
            udp = tcp = None
        return {
            "transport_id": self.id,
            "ice_state": self.ice_state,
            "dtls_state": self._dtls_state,
            "ice_selected_tuple": self.ice_selected_tuple,
            "srtp_profile": self.selected_srtp_profile,
            "bytes_in": self.bytes_in,
            "packets_in": self.packets_in,
            "bytes_out": self.bytes_out,
            "packets_out": self.packets_out,
            "rtp_packets_in": self.rtp_packets_in,
            "rtcp_packets_in": self.rtcp_packets_in,
            "rtp_packets_out": self.rtp_packets_out,
            "rtcp_packets_out": self.rtcp_packets_out,
            "stun_in": self.stun_in,
            "stun_answered": self._ice.stun_answered,
            "stun_dropped": self._ice.stun_dropped,
            "dtls_in": self.dtls_in,
            "dtls_released": self._dtls is not None and self._dtls.released,
            "dropped": {
                "not_validated": self.dropped_not_validated,
                "srtp_not_ready": self.dropped_srtp_not_ready,
                "srtp_auth": self.dropped_srtp_auth,
                "bad_stun": self._ice.stun_dropped,
                "dtls_noise": self.dropped_dtls_noise,
                "dtls_early": self.dropped_dtls_early,
                "unknown": self.dropped_unknown,
                "egress_full": self.dropped_egress_full,
                "egress_not_ready": self.dropped_egress_not_ready,
                "egress_protect": self.dropped_egress_protect,
                "send": self.dropped_send
                + (udp.send_would_block + udp.send_errors if udp is not None else 0)
                + (tcp.frames_dropped if tcp is not None else 0),
            },
            # Trespasses (see trio_sfu.errors.ENGINE_REFUSALS).
            "refused": {
                "stun_unauthenticated": self._ice.stun_dropped,
                "not_validated": self.dropped_not_validated,
                "dtls_fingerprint": self.dtls_fingerprint_refused,
            },
            "tcp_connections": (
                server.owns_tcp(self)
                if server is not None
                else len(tcp.connections)
                if tcp is not None
                else 0
            ),
        }

    # ---- life cycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the sockets, report started, then serve until closed or cancelled.

        Use with ``await nursery.start(transport.run)``: when that returns,
        :attr:`ice_candidates` holds the bound ports. Raises ``OSError`` when no port of the
        range is free. However it ends, the sockets are closed and ``on_closed`` was called.
        """
        if self._started or self.closed:
            raise InvalidStateError(f"transport {self.id} was already run or closed")
        self._started = True
        started = False
        try:
            with self._scope:
                server = self._server
                if server is not None:
                    self._use_server(server)
                else:
                    self._bind()
                async with trio.open_nursery() as nursery:
                    if server is None and self._udp is not None:
                        await nursery.start(self._udp.serve, self.handle_datagram)
                    if server is None and self._tcp is not None:
                        self._tcp.on_connection_closed = self.tcp_connection_closed
                        await nursery.start(self._tcp.serve, self.handle_datagram)
                    self._start_connect_timer()
                    if self._timer.queued:
                        self._timer.reschedule()
                    else:
                        nursery.start_soon(self._timer.run)
                    self._nursery = nursery
                    task_status.started()
                    started = True
                    # Until close() cancels the scope (there may be no child task at all).
                    await trio.sleep_forever()
        except BaseException as exc:
            if _only_cancelled(exc):
                self._close_now("cancelled")
                raise
            if not started or not isinstance(exc, Exception):
                raise  # a start-up error (e.g. no free port) belongs to the caller
            self.crashed("tasks")
        finally:
            self._nursery = None
            self._close_now("closed")
        if not started:
            raise InvalidStateError(f"transport {self.id} closed before it started")

    def start(self, nursery: trio.Nursery) -> None:
        """Start without a task of its own: for a transport on a :class:`WebRtcServer`
        (which receives for it) with a :class:`TimerQueue` (which fires its timer).

        Synchronous: the candidates are known when it returns. The transport's egress
        task, while packets wait for the socket, runs in ``nursery`` (the owner's); close()
        cancels it. Use :meth:`run` otherwise.
        """
        if self._server is None or not self._timer.queued:
            raise InvalidStateError("start() needs a WebRtcServer and a TimerQueue: use run()")
        if self._started or self.closed:
            raise InvalidStateError(f"transport {self.id} was already run or closed")
        self._started = True
        try:
            self._use_server(self._server)
        except BaseException:
            self._close_now("closed")
            raise
        self._nursery = nursery
        self._start_connect_timer()
        self._timer.reschedule()

    def _start_connect_timer(self) -> None:
        if self._connect_timeout is not None:
            self._connect_deadline = trio.current_time() + self._connect_timeout

    def close(self, reason: str = "closed") -> None:
        """Close the transport now: DTLS close_notify (best effort), sockets closed, tasks
        cancelled, ``on_closed(reason)``. Synchronous and idempotent."""
        self._close_now(reason)

    def _close_now(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._direct_address = None
        self.close_reason = reason
        dtls = self._dtls
        if dtls is not None:
            if not dtls.released:
                memory.note_freed(DTLS_CONNECTION_BYTES)  # freed with the transport
            records = dtls.close()  # close_notify if it was connected, else nothing
            address = self._dtls_address or self._ice.selected_address
            if address is not None:
                for record in records:
                    self._send(record, address)
        if self._dtls_state not in ("failed", "closed"):
            self._dtls_state = "closed"
        self._srtp = None
        ufrag = self._ice.ufrag
        self._ice.close()
        if self._server is not None:
            self._server.remove(self, ufrag)  # the sockets are the server's
        else:
            if self._udp is not None:
                self._udp.close()
            if self._tcp is not None:
                self._tcp.close()
        self._timer.cancel()
        self._scope.cancel()
        self._nursery = None
        if self._egress_scope is not None:
            self._egress_scope.cancel()
        if self._egress_send is not None:
            self._egress_send.close()
            self._egress_send = None
        if reason not in ("closed", "cancelled"):
            logger.info("transport %s closed: %s", self.id, reason)
        self.on_closed(reason)

    def _bind(self) -> None:
        udp_port: int | None = None
        tcp_port: int | None = None
        if self._enable_udp:
            self._udp = UdpListener.bind(self._listen_ip, self._port_range)
            udp_port = self._udp.local_address[1]
        if self._enable_tcp:
            self._tcp = TcpListener.bind(self._listen_ip, self._port_range, preferred_port=udp_port)
            tcp_port = self._tcp.local_address[1]
        self.ice_candidates = host_candidates(
            self._announced_ip or self._listen_ip, udp_port, tcp_port, prefer_udp=self._prefer_udp
        )

    def _use_server(self, server: WebRtcServer) -> None:
        """Take the server's sockets (those of the protocols this transport enables) and
        have it route this transport's ICE ufrag here."""
        if server.closed:
            raise InvalidStateError("the WebRtcServer is closed")
        if self._enable_udp:
            self._udp = server.udp
        if self._enable_tcp:
            self._tcp = server.tcp
        if self._udp is None and self._tcp is None:
            raise InvalidStateError(
                "the WebRtcServer has none of the protocols this transport needs"
            )
        self.ice_candidates = host_candidates(
            server.announced_ip or server.listen_ip,
            server.udp_port if self._udp is not None else None,
            server.tcp_port if self._tcp is not None else None,
            prefer_udp=self._prefer_udp,
        )
        server.add(self, self._ice.ufrag)

    # ---- signaling-driven --------------------------------------------------------------

    def connect(self, dtls_parameters: DtlsParameters) -> None:
        """Give the remote DTLS role and fingerprints (``rtc:connectTransport``).

        Remote role ``client`` or ``auto`` makes us the DTLS server (we wait for its
        ClientHello); ``server`` makes us the client (we start once ICE selected a tuple).
        Raises InvalidStateError when called twice or after close, UnsupportedError when no
        fingerprint uses an algorithm we can check.
        """
        if self.closed:
            raise InvalidStateError(f"transport {self.id} is closed")
        if self._dtls is not None:
            raise InvalidStateError(f"transport {self.id} is already connected")
        role: Literal["client", "server"] = (
            "client" if dtls_parameters.role == "server" else "server"
        )
        fingerprints = remote_fingerprints(dtls_parameters)
        dtls = DtlsEndpoint(certificate=self._certificate, role=role)
        dtls.set_remote_fingerprints(fingerprints)
        self._dtls = dtls
        self._dtls_role = role
        self._set_dtls_state("connecting")
        if role == "client":
            self._maybe_start_dtls_client()
        else:
            early, self._early_dtls = self._early_dtls, []
            for data, address in early:
                if self.closed:
                    break
                self._handle_dtls(data, address)
        self._timer.reschedule()

    def restart_ice(self) -> IceParameters:
        """New ICE credentials; media keeps flowing on the old tuple until a check with the
        new ones validates a tuple."""
        if self.closed:
            raise InvalidStateError(f"transport {self.id} is closed")
        old = self._ice.ufrag
        ufrag, password = self._ice.restart()
        if self._server is not None:
            self._server.rename(self, old, ufrag)
        self.ice_parameters = IceParameters(
            username_fragment=ufrag, password=password, ice_lite=True
        )
        self._after_ice_event()
        return self.ice_parameters

    # ---- egress ------------------------------------------------------------------------

    def send_rtp_nowait(self, packet: bytes | bytearray) -> bool:
        """Protect and send one RTP packet, or queue it. Never blocks; ``False`` (and a
        counted drop) when SRTP is not ready yet or the queue is full.

        Over UDP, when nothing is queued before it, the packet is protected and handed to
        the kernel right here (no task switch, no channel); only a socket that would block
        sends it through the queue and the egress task, which keeps the order.
        """
        # _send_media() inlined for RTP: this runs once per forwarded packet.
        srtp = self._srtp
        address = self._direct_address
        if srtp is None or address is None or self._queued:
            return self._send_media(packet, KIND_RTP)
        try:
            data = srtp.protect_rtp(packet)
        except BadPacket:
            self.dropped_egress_protect += 1
            return False
        udp = self._udp
        assert udp is not None
        if udp.try_sendto(data, address) == SEND_WOULD_BLOCK:
            return self._enqueue(data, KIND_PROTECTED + KIND_RTP)
        self.rtp_packets_out += 1
        self.packets_out += 1
        self.bytes_out += len(data)
        return True

    def send_rtcp_nowait(self, packet: bytes) -> bool:
        """Protect and send (or queue) one RTCP compound packet; as :meth:`send_rtp_nowait`."""
        return self._send_media(packet, KIND_RTCP)

    def _send_media(self, packet: bytes | bytearray, kind: int) -> bool:
        srtp = self._srtp
        if srtp is None:
            self.dropped_egress_not_ready += 1
            return False
        address = self._direct_address
        if address is not None and not self._queued:
            try:
                data = srtp.protect_rtp(packet) if kind == KIND_RTP else srtp.protect_rtcp(packet)
            except BadPacket:
                self.dropped_egress_protect += 1
                return False
            udp = self._udp
            assert udp is not None
            result = udp.try_sendto(data, address)
            if result == SEND_WOULD_BLOCK:
                return self._enqueue(data, KIND_PROTECTED + kind)
            if kind == KIND_RTP:
                self.rtp_packets_out += 1
            else:
                self.rtcp_packets_out += 1
            self.packets_out += 1
            self.bytes_out += len(data)
            return True
        return self._enqueue(packet, kind)

    def _enqueue(self, packet: bytes | bytearray, kind: int) -> bool:
        send = self._egress_send
        if send is None:
            # The first packet to wait: open the queue and start the task that drains it.
            nursery = self._nursery
            if nursery is None or self.closed:
                self.dropped_egress_not_ready += 1
                return False
            send, receive = trio.open_memory_channel[tuple[bytes | bytearray, int]](
                self._egress_queue_size
            )
            self._egress_send = send
            nursery.start_soon(self._egress_loop, send, receive)
        try:
            send.send_nowait((packet, kind))
        except trio.WouldBlock:
            self.dropped_egress_full += 1
            return False
        self._queued += 1
        return True

    def _refresh_direct(self) -> None:
        """Where media may go without the egress task: the selected UDP tuple, once ICE is
        connected and SRTP is up; None otherwise (TCP, closed, not yet)."""
        address = self._ice.selected_address
        if (
            self.closed
            or self._srtp is None
            or self._udp is None
            or self._selected_is_tcp
            or address is None
            or not self._ice.is_connected
        ):
            self._direct_address = None
        else:
            self._direct_address = address

    async def _egress_loop(
        self,
        send: trio.MemorySendChannel[tuple[bytes | bytearray, int]],
        receive: trio.MemoryReceiveChannel[tuple[bytes | bytearray, int]],
    ) -> None:
        """Send what waits in the queue, in order, then end: the queue is empty, and the
        next packet that has to wait opens a new one (and a new task)."""
        receive_nowait = receive.receive_nowait
        ice = self._ice
        with receive, trio.CancelScope() as scope:
            self._egress_scope = scope
            try:
                while True:
                    batch: list[tuple[bytes | bytearray, int]] = []
                    while len(batch) < EGRESS_BATCH:
                        try:
                            batch.append(receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    if not batch:
                        # Nothing waits and no await since the check: nothing is lost.
                        if self._egress_send is send:
                            self._egress_send = None
                        send.close()
                        return
                    try:
                        await self._send_batch(batch, ice.selected_address)
                    finally:
                        # Until now, later packets queued behind these, not overtaking them.
                        self._queued -= len(batch)
            except Exception:
                # The task may run in the owner's nursery (start()).
                self.crashed("egress")
            finally:
                if self._egress_scope is scope:
                    self._egress_scope = None

    async def _send_batch(
        self, batch: list[tuple[bytes | bytearray, int]], address: Address | None
    ) -> None:
        srtp = self._srtp
        if srtp is None or address is None or not self._ice.is_connected:
            self.dropped_egress_not_ready += len(batch)
            return
        connection = None
        if self._selected_is_tcp:
            tcp = self._tcp
            connection = tcp.connections.get(address) if tcp is not None else None
            if connection is None:  # the selected TCP connection is gone
                self.dropped_send += len(batch)
                return
        out, rtcp, refused = protect_batch(srtp, batch)
        self.dropped_egress_protect += refused
        if not out:
            return
        # Packets handed to the socket / TCP queue; what the kernel or a full TCP queue
        # refuses is counted in stats()["dropped"]["send"].
        self.rtcp_packets_out += rtcp
        self.rtp_packets_out += len(out) - rtcp
        self.packets_out += len(out)
        self.bytes_out += sum(map(len, out))
        if connection is not None:
            for data in out:
                connection.send_nowait(data)
        elif self._udp is not None:
            await self._udp.sendto_many(out, address)
        else:
            self.dropped_send += len(out)

    # ---- ingress -----------------------------------------------------------------------

    def handle_datagram(self, data: bytes, address: Address, arrival: float) -> None:
        """Demultiplex one UDP datagram or TCP frame from ``address`` (RFC 7983) that
        arrived at ``arrival`` (trio's clock).

        Reads untrusted bytes: never raises for bad input, it counts it. Runs in the
        socket's receive task; ``on_rtp`` / ``on_rtcp`` are called synchronously from here,
        with ``arrival``.
        """
        self.packets_in += 1
        self.bytes_in += len(data)
        if not data:
            self.dropped_unknown += 1
            return
        first = data[0]
        if first >= 128:
            if first > 191 or len(data) < 2:
                self.dropped_unknown += 1
                return
            if not self._ice.is_validated(address):
                self.dropped_not_validated += 1
                return
            srtp = self._srtp
            if srtp is None:
                self.dropped_srtp_not_ready += 1
                return
            if 192 <= data[1] <= 223:
                try:
                    packet = srtp.unprotect_rtcp_untrusted(data)
                except BadPacket:
                    self.dropped_srtp_auth += 1
                    return
                self.rtcp_packets_in += 1
                if self._dtls_release_at != math.inf:
                    self._release_dtls()
                self.on_rtcp(packet, arrival)
            else:
                try:
                    packet = srtp.unprotect_rtp_untrusted(data)
                except BadPacket:
                    self.dropped_srtp_auth += 1
                    return
                self.rtp_packets_in += 1
                if self._dtls_release_at != math.inf:
                    self._release_dtls()
                self.on_rtp(packet, arrival)
        elif first <= 3:
            self._handle_stun(data, address)
        elif 20 <= first <= 63:
            self._handle_dtls(data, address)
        else:
            self.dropped_unknown += 1

    def _release_dtls(self) -> None:
        """The peer's keys work: its handshake is over, our OpenSSL connection is not
        needed any more (see :meth:`DtlsEndpoint.release`)."""
        self._dtls_release_at = math.inf
        if self._dtls is not None and self._dtls.release():
            memory.note_freed(DTLS_CONNECTION_BYTES)

    def _handle_stun(self, data: bytes, address: Address) -> None:
        self.stun_in += 1
        # Never raises: IceLiteServer counts what it drops (stun_dropped).
        response = self._ice.receive_stun_untrusted(data, address, trio.current_time())
        if response is not None:
            self._send(response, address)
        self._after_ice_event()

    def _handle_dtls(self, data: bytes, address: Address) -> None:
        self.dtls_in += 1
        if not self._ice.is_validated(address):
            self.dropped_not_validated += 1
            return
        dtls = self._dtls
        if dtls is None:
            # A ClientHello that beat rtc:connectTransport: keep a few for connect().
            if len(self._early_dtls) < MAX_EARLY_DTLS:
                self._early_dtls.append((data, address))
            else:
                self.dropped_dtls_early += 1
            return
        if self._dtls_state not in ("connecting", "connected"):
            self.dropped_dtls_noise += 1
            return
        if self._dtls_role == "client" and not self._dtls_started:
            self.dropped_dtls_early += 1
            return
        if self._dtls_role == "server":
            self._dtls_started = True
        try:
            records = dtls.receive_untrusted(data, trio.current_time())
        except BadPacket:
            self.dropped_dtls_noise += 1
            return
        except DtlsError as exc:
            self._dtls_failed(exc, address)
            return
        self._dtls_address = address
        for record in records:
            self._send(record, address)
        self._after_dtls_event()

    def _dtls_failed(self, exc: DtlsError, address: Address | None) -> None:
        # Send what OpenSSL wrote on the way out (a fatal alert), as a courtesy.
        if address is not None:
            for datagram in exc.datagrams:
                self._send(datagram, address)
        if exc.reason == "fingerprint mismatch":
            self.dtls_fingerprint_refused = 1
        self._set_dtls_state("failed")
        self.close(f"dtls_failed: {exc.reason}")

    def _after_dtls_event(self) -> None:
        dtls = self._dtls
        if dtls is None or self.closed:
            return
        state = dtls.state
        if state == "connected" and self._srtp is None:
            try:
                if dtls.srtp_keys is None:
                    raise ValueError("connected without keys")
                self._srtp = SrtpSession(dtls.srtp_keys)
                self._dtls_release_at = trio.current_time() + DTLS_RELEASE_AFTER
                self._connect_deadline = math.inf  # connected: no timeout any more
            except ValueError as exc:
                self._set_dtls_state("failed")
                self.close(f"dtls_failed: no SRTP keys ({exc})")
                return
        if state != self._dtls_state:
            self._set_dtls_state(state)
            if state == "failed":
                self.close("dtls_failed")
                return
            if state == "closed":
                self.close("dtls_closed")
                return
        self._refresh_direct()
        self._timer.reschedule()

    def _set_dtls_state(self, state: str) -> None:
        if state != self._dtls_state:
            self._dtls_state = state
            self.on_state("dtls", state)

    def _after_ice_event(self) -> None:
        if self.closed:
            return
        for event in self._ice.drain_events():
            if isinstance(event, IceSelectedAddressChanged):
                # Called while handling the nominating request, so a TCP tuple's
                # connection is open now; if it closes later, media to it is dropped
                # rather than sent over UDP to a TCP port.
                tcp = self._tcp
                self._selected_is_tcp = tcp is not None and event.address in tcp.connections
            elif isinstance(event, IceStateChanged):
                self.on_state("ice", event.state.value)
                if event.state is IceState.CLOSED:
                    self.close("consent_timeout")
                    return
        self._refresh_direct()
        self._maybe_start_dtls_client()
        self._timer.reschedule()

    def _maybe_start_dtls_client(self) -> None:
        dtls = self._dtls
        if dtls is None or self._dtls_role != "client" or self._dtls_started:
            return
        address = self._ice.selected_address
        if address is None:
            return
        self._dtls_started = True
        self._dtls_address = address
        try:
            records = dtls.start(trio.current_time())
        except DtlsError as exc:
            self._dtls_failed(exc, address)
            return
        for record in records:
            self._send(record, address)

    def _send(self, data: bytes, address: Address) -> None:
        """Send a STUN/DTLS message to ``address`` on the path it came from; never blocks."""
        tcp = self._tcp
        if tcp is not None:
            connection = tcp.connections.get(address)
            if connection is not None:
                if connection.send_nowait(data):
                    self.packets_out += 1
                    self.bytes_out += len(data)
                return
        udp = self._udp
        if udp is not None and udp.sendto_nowait(data, address):
            self.packets_out += 1
            self.bytes_out += len(data)

    def crashed(self, part: str) -> None:
        """The exception being handled is a bug in this transport's ``part`` (or in its
        owner's callbacks): log it and close the transport with ``internal_error``. A bug
        in one transport never takes down its owner, nor the sockets and timers it shares
        with other transports."""
        logger.exception("transport %s crashed (%s)", self.id, part)
        self._close_now("internal_error")

    def is_validated(self, address: Address) -> bool:
        """Whether ICE accepts media from ``address`` (it passed a connectivity check)."""
        return self._ice.is_validated(address)

    def tcp_connection_closed(self, address: Address) -> None:
        """The ICE-TCP connection from ``address`` closed (its listener calls this)."""
        # The tuple is gone: nothing can be sent there any more, and if it was the selected
        # one ICE is disconnected until the peer nominates another (or the close timeout).
        if self._dtls_address == address:
            self._dtls_address = None
        self._ice.forget(address)
        self._after_ice_event()

    # ---- timers ------------------------------------------------------------------------

    def _next_deadline(self) -> float:
        deadline = self._ice.next_deadline()
        result = math.inf if deadline is None else deadline
        dtls = self._dtls
        if dtls is not None and self._dtls_started and self._dtls_state == "connecting":
            dtls_deadline = dtls.next_deadline(trio.current_time())
            if dtls_deadline is not None and dtls_deadline < result:
                result = dtls_deadline
        return min(result, self._dtls_release_at, self._connect_deadline)

    def _on_timer(self, now: float) -> None:
        if now >= self._connect_deadline:
            self.close("connect_timeout")
            return
        self._ice.poll(now)
        self._after_ice_event()
        if self.closed:
            return
        if now >= self._dtls_release_at:
            self._release_dtls()
        dtls = self._dtls
        if dtls is None or not self._dtls_started or self._dtls_state != "connecting":
            return
        deadline = dtls.next_deadline(now)
        if deadline is None or deadline > now:
            return
        address = self._dtls_address or self._ice.selected_address
        try:
            records = dtls.handle_timeout(now)
        except DtlsError as exc:
            self._dtls_failed(exc, address)
            return
        if address is not None:
            for record in records:
                self._send(record, address)
        self._after_dtls_event()
