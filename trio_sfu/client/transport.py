"""The client half of a WebRTC transport: ICE (controlling, full), DTLS client, SRTP.

A real peer of :class:`~trio_sfu.engine.webrtc_transport.WebRtcTransport` and of any ICE-lite
server such as mediasoup, over UDP or ICE-TCP (RFC 6544, active; frames per RFC 4571)::

    async with open_client_transport(ice_parameters, ice_candidates, dtls_parameters) as client:
        send_to_server("rtc:connectTransport", client.dtls_parameters)
        await client.wait_connected()
        client.send_rtp(packet)
        packet = await client.receive_rtp()

It is the test harness, the core of the Python SDK and the load generator, so sending is a
synchronous, non-blocking call (protect + one ``send``) that returns ``False`` and counts a
drop instead of waiting. Received packets go to ``on_rtp`` / ``on_rtcp`` when set (cheapest),
else into bounded queues read with :meth:`ClientTransport.receive_rtp` /
:meth:`ClientTransport.receive_rtcp` (a full queue drops and counts).
"""

from __future__ import annotations

import logging
import math
import socket as stdlib_socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Literal, final

import trio

from trio_sfu.dtls import DtlsCertificate, DtlsEndpoint, DtlsError, Fingerprint
from trio_sfu.engine.rtc_sockets import Address, TcpConnection, address_family
from trio_sfu.errors import BadPacket
from trio_sfu.ice import IceClientState, IceControllingClient
from trio_sfu.ortc.types import (
    DtlsFingerprint,
    DtlsParameters,
    IceCandidate,
    IceParameters,
)
from trio_sfu.srtp import SRTP_PROFILES, SrtpSession
from trio_sfu.timers import DeadlineTimer

logger = logging.getLogger(__name__)

Protocol = Literal["udp", "tcp"]
CLIENT_FINGERPRINT_ALGORITHM: Final = "sha-256"


class ClientTransportError(Exception):
    """The transport could not connect, or failed later (ICE or DTLS); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def pick_candidate(candidates: Sequence[IceCandidate], protocol: Protocol) -> IceCandidate:
    """The highest-priority server candidate we can reach with ``protocol``
    (for TCP: a passive candidate, since this client connects actively)."""
    usable = [
        candidate
        for candidate in candidates
        if candidate.protocol == protocol
        and (protocol == "udp" or candidate.tcp_type in (None, "passive"))
    ]
    if not usable:
        raise ValueError(f"the server offers no {protocol} candidate")
    return max(usable, key=lambda candidate: candidate.priority)


@final
class ClientTransport:
    """One client transport. Create it with :func:`open_client_transport`."""

    def __init__(
        self,
        ice_parameters: IceParameters,
        ice_candidates: Sequence[IceCandidate],
        server_dtls_parameters: DtlsParameters,
        *,
        protocol: Protocol = "udp",
        srtp_profiles: Sequence[str] = SRTP_PROFILES,
        certificate: DtlsCertificate | None = None,
        receive_queue_size: int = 4096,
        tcp_queue_size: int = 4096,
        consent_interval: float = 5.0,
    ) -> None:
        if server_dtls_parameters.role == "client":
            raise ValueError("the server wants the DTLS client role; this client is a DTLS client")
        candidate = pick_candidate(ice_candidates, protocol)
        ip = candidate.ip or candidate.address
        self._family = address_family(ip)
        self.protocol: Protocol = protocol
        self.remote_address: Address = (ip, candidate.port)
        self._tcp_queue_size = tcp_queue_size

        self._ice = IceControllingClient(
            remote_ufrag=ice_parameters.username_fragment,
            remote_password=ice_parameters.password,
            consent_interval=consent_interval,
        )
        certificate = certificate if certificate is not None else DtlsCertificate.generate()
        self._dtls = DtlsEndpoint(
            certificate=certificate, role="client", srtp_profiles=list(srtp_profiles)
        )
        self._dtls.set_remote_fingerprints(
            [Fingerprint(fp.algorithm, fp.value) for fp in server_dtls_parameters.fingerprints]
        )
        self.dtls_parameters = DtlsParameters(
            fingerprints=[
                DtlsFingerprint(algorithm="sha-256", value=fp.value)
                for fp in certificate.fingerprints()
                if fp.algorithm == CLIENT_FINGERPRINT_ALGORITHM
            ],
            role="client",
        )

        self.on_rtp: Callable[[bytes], None] | None = None
        self.on_rtcp: Callable[[bytes], None] | None = None
        self._rtp_send, self._rtp_receive = trio.open_memory_channel[bytes](receive_queue_size)
        self._rtcp_send, self._rtcp_receive = trio.open_memory_channel[bytes](receive_queue_size)

        self.consent_refresh = True
        """Set to False to stop sending consent checks (tests of the server's timeout). The
        unanswered check then fails this client too (RFC 7675): it closes itself with
        ``failure == "ice_failed"`` about 8 s later, without a DTLS close_notify."""
        self.closed = False
        self.failure: str | None = None
        self._scope = trio.CancelScope()
        self._timer = DeadlineTimer(self._next_deadline, self._on_timer)
        self._done = trio.Event()
        self._udp: stdlib_socket.socket | None = None
        self._tcp: TcpConnection | None = None
        self._receive_scope = trio.CancelScope()
        self._dtls_started = False
        self._srtp: SrtpSession | None = None

        self.bytes_in = 0
        self.bytes_out = 0
        self.rtp_packets_in = 0
        self.rtcp_packets_in = 0
        self.rtp_packets_out = 0
        self.rtcp_packets_out = 0
        self.dropped_srtp = 0
        self.dropped_receive_full = 0
        self.dropped_not_ready = 0
        self.dropped_send = 0
        self.dropped_noise = 0

    # ---- state -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """ICE, DTLS and SRTP are up (and the transport is not closed)."""
        return self._srtp is not None and not self.closed

    @property
    def selected_srtp_profile(self) -> str | None:
        return self._dtls.selected_srtp_profile

    @property
    def ice_state(self) -> str:
        return self._ice.state.value

    @property
    def dtls_state(self) -> str:
        return str(self._dtls.state)

    @property
    def local_address(self) -> Address | None:
        if self._udp is not None:
            address: Address = self._udp.getsockname()[:2]
            return address
        if self._tcp is not None:
            tcp_address: Address = self._tcp.stream.socket.getsockname()[:2]
            return tcp_address
        return None

    def stats(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "ice_state": self.ice_state,
            "dtls_state": self.dtls_state,
            "srtp_profile": self.selected_srtp_profile,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "rtp_packets_in": self.rtp_packets_in,
            "rtcp_packets_in": self.rtcp_packets_in,
            "rtp_packets_out": self.rtp_packets_out,
            "rtcp_packets_out": self.rtcp_packets_out,
            "dropped": {
                "srtp": self.dropped_srtp,
                "receive_full": self.dropped_receive_full,
                "not_ready": self.dropped_not_ready,
                "send": self.dropped_send
                + (self._tcp.frames_dropped if self._tcp is not None else 0),
                "noise": self.dropped_noise,
            },
        }

    async def wait_connected(self) -> None:
        """Wait until ICE, DTLS and SRTP are up. Raises ClientTransportError when the
        transport failed or closed first."""
        if self._srtp is None and not self._done.is_set():
            await self._done.wait()
        if self.failure is not None:
            raise ClientTransportError(self.failure)
        if self.closed or self._srtp is None:
            raise ClientTransportError("closed")

    # ---- media -------------------------------------------------------------------------

    def send_rtp(self, packet: bytes) -> bool:
        """Protect and send one RTP packet now. Never blocks: ``False`` (counted) when SRTP
        is not up yet or the socket / TCP queue is full."""
        return self._protect_and_send(packet, rtcp=False)

    def send_rtcp(self, packet: bytes) -> bool:
        """Protect and send one RTCP compound packet now; as :meth:`send_rtp`."""
        return self._protect_and_send(packet, rtcp=True)

    def _protect_and_send(self, packet: bytes, *, rtcp: bool) -> bool:
        srtp = self._srtp
        if srtp is None:
            self.dropped_not_ready += 1
            return False
        try:
            data = srtp.protect_rtcp(packet) if rtcp else srtp.protect_rtp(packet)
        except BadPacket:
            self.dropped_send += 1
            return False
        if not self._send(data):
            return False
        if rtcp:
            self.rtcp_packets_out += 1
        else:
            self.rtp_packets_out += 1
        return True

    async def receive_rtp(self) -> bytes:
        """The next decrypted RTP packet (unless ``on_rtp`` is set). Raises
        trio.EndOfChannel once the transport is closed and the queue is empty."""
        return await self._rtp_receive.receive()

    async def receive_rtcp(self) -> bytes:
        """The next decrypted RTCP compound packet (unless ``on_rtcp`` is set)."""
        return await self._rtcp_receive.receive()

    def send_raw(self, data: bytes) -> bool:
        """Send bytes as they are (no SRTP): for tests that feed a server garbage."""
        return self._send(data)

    # ---- ICE restart -------------------------------------------------------------------

    def restart_ice(self, ice_parameters: IceParameters) -> None:
        """Check with the server's new credentials (after its ``rtc:restartIce``).
        Media keeps flowing on the current tuple meanwhile."""
        if self.closed:
            raise ClientTransportError("closed")
        self._ice.restart(
            remote_ufrag=ice_parameters.username_fragment,
            remote_password=ice_parameters.password,
        )
        self._send(self._ice.start_check(trio.current_time()))
        self._timer.reschedule()

    # ---- life cycle --------------------------------------------------------------------

    def close(self) -> None:
        """Close now: DTLS close_notify (best effort), socket closed, tasks cancelled.
        Synchronous and idempotent."""
        self._close(None)

    def _fail(self, reason: str) -> None:
        # No close_notify: after an ICE failure (consent lost, RFC 7675) nothing more may be
        # sent, and after a DTLS failure the alert already went out.
        logger.info("client transport to %s failed: %s", self.remote_address, reason)
        self._close(reason)

    def _close(self, failure: str | None) -> None:
        if self.closed:
            return
        self.closed = True
        if failure is None:
            for record in self._dtls.close():  # close_notify if it was connected
                self._send(record)
        elif self.failure is None:
            self.failure = failure
        self._srtp = None
        if self._udp is not None:
            trio.lowlevel.notify_closing(self._udp)
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        self._rtp_send.close()
        self._rtcp_send.close()
        self._scope.cancel()
        self._done.set()

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                if self.protocol == "udp":
                    sock = stdlib_socket.socket(self._family, stdlib_socket.SOCK_DGRAM)
                    self._udp = sock
                    sock.setblocking(False)
                    for option in (stdlib_socket.SO_RCVBUF, stdlib_socket.SO_SNDBUF):
                        sock.setsockopt(stdlib_socket.SOL_SOCKET, option, 1 << 20)
                    sock.connect(self.remote_address)
                else:
                    stream = await trio.open_tcp_stream(*self.remote_address)
                    self._tcp = TcpConnection(stream, self.remote_address, self._tcp_queue_size)
                async with trio.open_nursery() as nursery:
                    if self._tcp is not None:
                        nursery.start_soon(self._run_tcp, self._tcp)
                    else:
                        nursery.start_soon(self._run_udp_loop)
                    nursery.start_soon(self._timer.run)
                    self._send(self._ice.start_check(trio.current_time()))
                    task_status.started()
        finally:
            self.close()

    async def _run_tcp(self, connection: TcpConnection) -> None:
        # The client takes no arrival times (it reads its own clock where it needs one).
        await connection.run(lambda data, address, arrival: self._handle(data, address))
        if not self.closed:
            self._fail("tcp connection closed by the server")

    async def _run_udp_loop(self) -> None:
        with self._receive_scope:
            await self._udp_loop()

    def detach_receive(self) -> stdlib_socket.socket:
        """Stop reading the UDP socket in this transport's own task and return it.

        From now on the caller reads the (non-blocking) socket and hands every datagram
        to :meth:`receive_datagram`; the transport still owns and closes the socket. For
        load generators with hundreds of transports in one process: one epoll over all
        their sockets wakes once per batch of datagrams instead of once per datagram per
        socket. UDP only (``ValueError`` otherwise).
        """
        if self._udp is None:
            raise ValueError("detach_receive needs a UDP transport")
        self._receive_scope.cancel()
        return self._udp

    def receive_datagram(self, data: bytes) -> None:
        """Handle one datagram read from the socket :meth:`detach_receive` returned
        (untrusted bytes: bad ones are counted, never raised)."""
        self._handle(data, self.remote_address)

    async def _udp_loop(self) -> None:
        sock = self._udp
        assert sock is not None
        recv = sock.recv
        handle = self._handle
        address = self.remote_address
        wait_readable = trio.lowlevel.wait_readable
        checkpoint = trio.lowlevel.checkpoint
        count = 0
        while True:
            try:
                data = recv(65535)
            except BlockingIOError:
                count = 0
                try:
                    await wait_readable(sock)
                except trio.ClosedResourceError:
                    return  # close() from another task
                continue
            except (ConnectionRefusedError, ConnectionResetError):
                # ICMP port unreachable for an earlier send (server not there (yet)).
                self.dropped_send += 1
                continue
            except OSError:
                if self.closed:
                    return  # close() from the handler below, in this very task
                raise
            handle(data, address)
            count += 1
            if count >= 64:
                count = 0
                await checkpoint()

    def _send(self, data: bytes) -> bool:
        udp = self._udp
        if udp is not None:
            try:
                udp.send(data)
            except OSError:  # BlockingIOError (buffer full), ECONNREFUSED, closed socket
                self.dropped_send += 1
                return False
            self.bytes_out += len(data)
            return True
        tcp = self._tcp
        if tcp is not None and tcp.send_nowait(data):
            self.bytes_out += len(data)
            return True
        self.dropped_send += 1
        return False

    # ---- ingress -----------------------------------------------------------------------

    def _handle(self, data: bytes, address: Address) -> None:
        self.bytes_in += len(data)
        if not data:
            self.dropped_noise += 1
            return
        first = data[0]
        if 128 <= first <= 191 and len(data) >= 2:
            srtp = self._srtp
            if srtp is None:
                self.dropped_not_ready += 1
                return
            if 192 <= data[1] <= 223:
                try:
                    packet = srtp.unprotect_rtcp_untrusted(data)
                except BadPacket:
                    self.dropped_srtp += 1
                    return
                self.rtcp_packets_in += 1
                if self.on_rtcp is not None:
                    self.on_rtcp(packet)
                    return
                channel = self._rtcp_send
            else:
                try:
                    packet = srtp.unprotect_rtp_untrusted(data)
                except BadPacket:
                    self.dropped_srtp += 1
                    return
                self.rtp_packets_in += 1
                if self.on_rtp is not None:
                    self.on_rtp(packet)
                    return
                channel = self._rtp_send
            try:
                channel.send_nowait(packet)
            except (trio.WouldBlock, trio.ClosedResourceError):
                self.dropped_receive_full += 1
        elif first <= 3:
            self._handle_stun(data)
        elif 20 <= first <= 63:
            self._handle_dtls(data)
        else:
            self.dropped_noise += 1

    def _handle_stun(self, data: bytes) -> None:
        try:
            self._ice.receive_stun_untrusted(data, trio.current_time())
        except BadPacket:
            self.dropped_noise += 1
            return
        self._after_ice_event()

    def _after_ice_event(self) -> None:
        if self.closed:
            return
        state = self._ice.state
        if state is IceClientState.FAILED:
            self._fail("ice_failed")
            return
        if not self._dtls_started and state is IceClientState.CONNECTED:
            self._dtls_started = True
            try:
                records = self._dtls.start(trio.current_time())
            except DtlsError as exc:
                self._dtls_failed(exc)
                return
            for record in records:
                self._send(record)
        self._timer.reschedule()

    def _handle_dtls(self, data: bytes) -> None:
        if not self._dtls_started:
            self.dropped_noise += 1
            return
        try:
            records = self._dtls.receive_untrusted(data, trio.current_time())
        except BadPacket:
            self.dropped_noise += 1
            return
        except DtlsError as exc:
            self._dtls_failed(exc)
            return
        for record in records:
            self._send(record)
        self._after_dtls_event()

    def _dtls_failed(self, exc: DtlsError) -> None:
        for datagram in exc.datagrams:  # a fatal alert for the server, as a courtesy
            self._send(datagram)
        self._fail(f"dtls_failed: {exc.reason}")

    def _after_dtls_event(self) -> None:
        state = self._dtls.state
        if state == "connected" and self._srtp is None:
            keys = self._dtls.srtp_keys
            if keys is None:
                self._fail("dtls_failed: connected without SRTP keys")
                return
            self._srtp = SrtpSession(keys)
            self._done.set()
        elif state == "failed":
            self._fail("dtls_failed")
            return
        elif state == "closed":
            self._fail("dtls_closed")
            return
        self._timer.reschedule()

    # ---- timers ------------------------------------------------------------------------

    def _next_deadline(self) -> float:
        deadline = self._ice.next_deadline()
        result = math.inf if deadline is None else deadline
        if self._dtls_started and self._dtls.state == "connecting":
            dtls_deadline = self._dtls.next_deadline(trio.current_time())
            if dtls_deadline is not None and dtls_deadline < result:
                result = dtls_deadline
        return result

    def _on_timer(self, now: float) -> None:
        ice = self._ice
        deadline = ice.next_deadline()
        while deadline is not None and deadline <= now:
            request = ice.handle_timeout(now)
            if request is not None and self.consent_refresh:
                self._send(request)
            deadline = ice.next_deadline()
        self._after_ice_event()
        if self.closed or not self._dtls_started or self._dtls.state != "connecting":
            return
        deadline = self._dtls.next_deadline(now)
        if deadline is None or deadline > now:
            return
        try:
            records = self._dtls.handle_timeout(now)
        except DtlsError as exc:
            self._dtls_failed(exc)
            return
        for record in records:
            self._send(record)
        self._after_dtls_event()


@asynccontextmanager
async def open_client_transport(
    ice_parameters: IceParameters,
    ice_candidates: Sequence[IceCandidate],
    server_dtls_parameters: DtlsParameters,
    *,
    protocol: Protocol = "udp",
    srtp_profiles: Sequence[str] = SRTP_PROFILES,
    certificate: DtlsCertificate | None = None,
    receive_queue_size: int = 4096,
    consent_interval: float = 5.0,
) -> AsyncIterator[ClientTransport]:
    """Open a client transport to the server's ``protocol`` candidate and start ICE.

    Returns as soon as the socket is open (for TCP: connected) and the first Binding request
    is out; send :attr:`ClientTransport.dtls_parameters` to the server, then
    ``await client.wait_connected()``. Leaving the block closes the transport and its socket.
    ``consent_interval`` is the period of consent checks once connected (RFC 7675: 5 s).
    Raises ValueError when the server offers no candidate for ``protocol``, OSError when the
    TCP connection is refused.
    """
    client = ClientTransport(
        ice_parameters,
        ice_candidates,
        server_dtls_parameters,
        protocol=protocol,
        srtp_profiles=srtp_profiles,
        certificate=certificate,
        receive_queue_size=receive_queue_size,
        consent_interval=consent_interval,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(client._run)
        try:
            yield client
        finally:
            client.close()
