"""WebRtcServer: one UDP port and one TCP port for every WebRtcTransport of a worker.

mediasoup's WebRtcServer. Without it each transport binds a UDP socket and a TCP
listener of its own (a port pair per transport, two receive tasks); with it the worker
binds one of each, and transports share them:

- a STUN Binding request names its transport: the part of its USERNAME before the colon
  is the transport's ICE ufrag (RFC 8445 section 7.2.2);
- once a transport's ICE has validated a remote address (UDP tuple or ICE-TCP
  connection), everything else from that address (DTLS, SRTP, SRTCP, STUN indications)
  goes to that transport;
- anything else is dropped and counted.

So a transport costs no socket and no task here, and a firewall needs two ports open per
worker. Each transport still checks everything it is handed (ICE credentials, validated
address) exactly as on sockets of its own.

Run it with ``await nursery.start(server.run)`` before creating transports on it.
"""

from __future__ import annotations

from typing import Any, Final, Protocol, final

import trio

from trio_sfu.engine.rtc_sockets import (
    Address,
    DatagramHandler,
    TcpListener,
    UdpListener,
    check_listen_options,
)
from trio_sfu.errors import InvalidStateError
from trio_sfu.stun import request_ufrag_untrusted

__all__ = ["MAX_TCP_CONNECTIONS", "ServedTransport", "WebRtcServer"]

#: ICE-TCP connections open at once on the shared listener (over every transport).
MAX_TCP_CONNECTIONS: Final = 4096
#: Seconds an ICE-TCP connection may stay open before a transport claims it (its ICE
#: validated a check on it); then it is closed, so idle connections cannot fill the
#: listener. Checked every half of it.
UNCLAIMED_TCP_TIMEOUT: Final = 10.0


class ServedTransport(Protocol):
    """What the server needs of a transport it routes to (a
    :class:`~trio_sfu.engine.webrtc_transport.WebRtcTransport`)."""

    @property
    def closed(self) -> bool: ...

    def handle_datagram(self, data: bytes, address: Address, arrival: float) -> None:
        """One datagram or frame from ``address``, which reached the host at ``arrival``
        (trio's clock); never raises for bad input."""

    def is_validated(self, address: Address) -> bool:
        """Whether ICE accepts media from ``address``."""

    def tcp_connection_closed(self, address: Address) -> None:
        """The ICE-TCP connection from ``address`` closed."""

    def crashed(self, part: str) -> None:
        """The exception being handled is a bug in the transport: it closes."""


@final
class WebRtcServer:
    """One UDP socket and one TCP listener shared by many transports, demultiplexed by ICE
    ufrag and then by the remote address ICE validated.

    ``port`` 0 takes a free port of ``port_range`` (the TCP listener tries the UDP port
    first); any other port is bound exactly, or ``OSError``.
    """

    def __init__(
        self,
        *,
        listen_ip: str = "127.0.0.1",
        announced_ip: str | None = None,
        port: int = 0,
        port_range: tuple[int, int] = (40000, 49999),
        enable_udp: bool = True,
        enable_tcp: bool = True,
        max_tcp_connections: int = MAX_TCP_CONNECTIONS,
    ) -> None:
        check_listen_options(
            "WebRtcServer", listen_ip, announced_ip, port_range, enable_udp, enable_tcp
        )
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"invalid port {port}")
        self.listen_ip = listen_ip
        self.announced_ip = announced_ip
        self._port_range = port_range if port == 0 else (port, port)
        self._enable_udp = enable_udp
        self._enable_tcp = enable_tcp
        self._max_tcp_connections = max_tcp_connections
        self.udp: UdpListener | None = None
        self.tcp: TcpListener | None = None
        self.closed = False
        self._started = False
        #: ICE ufrag -> its transport.
        self._by_ufrag: dict[str, ServedTransport] = {}
        #: Validated remote address -> its transport, per protocol.
        self._udp_owners: dict[Address, ServedTransport] = {}
        self._tcp_owners: dict[Address, ServedTransport] = {}
        #: Each transport's entries in the two maps above, to forget them when it closes.
        self._owned: dict[ServedTransport, list[tuple[dict[Address, ServedTransport], Address]]]
        self._owned = {}
        #: Datagrams and frames no transport claimed: STUN naming no transport (or not a
        #: Binding request), and anything else from an address no transport validated.
        self.dropped_unknown = 0
        self.refused_stun = 0
        self.refused_not_validated = 0
        #: ICE-TCP connections closed because no transport claimed them in time.
        self.tcp_unclaimed_closed = 0
        self._sweep_scope = trio.CancelScope()

    # ---- life cycle --------------------------------------------------------------------

    @property
    def udp_port(self) -> int | None:
        return self.udp.local_address[1] if self.udp is not None else None

    @property
    def tcp_port(self) -> int | None:
        return self.tcp.local_address[1] if self.tcp is not None else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report started, then serve until cancelled; the sockets are closed however
        it ends. ``OSError`` (before started) when the port is taken."""
        if self._started or self.closed:
            raise InvalidStateError("this WebRtcServer was already run or closed")
        self._started = True
        try:
            if self._enable_udp:
                self.udp = UdpListener.bind(self.listen_ip, self._port_range)
            if self._enable_tcp:
                self.tcp = TcpListener.bind(
                    self.listen_ip,
                    self._port_range,
                    preferred_port=self.udp_port,
                    max_connections=self._max_tcp_connections,
                )
            async with trio.open_nursery() as nursery:
                if self.udp is not None:
                    await nursery.start(self.udp.serve, self._demultiplexer(self._udp_owners))
                if self.tcp is not None:
                    self.tcp.on_connection_closed = self._on_tcp_closed
                    await nursery.start(self.tcp.serve, self._demultiplexer(self._tcp_owners))
                    nursery.start_soon(self._close_unclaimed_tcp, self.tcp)
                task_status.started()
        finally:
            self.close()

    async def _close_unclaimed_tcp(self, tcp: TcpListener) -> None:
        with self._sweep_scope:  # close() ends it
            while True:
                await trio.sleep(UNCLAIMED_TCP_TIMEOUT / 2)
                self._sweep(tcp)

    def _sweep(self, tcp: TcpListener) -> None:
        too_old = trio.current_time() - UNCLAIMED_TCP_TIMEOUT
        for address, connection in list(tcp.connections.items()):
            if address not in self._tcp_owners and connection.opened_at <= too_old:
                self.tcp_unclaimed_closed += 1
                connection.close()

    def close(self) -> None:
        """Close both sockets now (every ICE-TCP connection with them). Idempotent; the
        transports on this server see their tuples go silent and are closed by their
        owners."""
        if self.closed:
            return
        self.closed = True
        self._sweep_scope.cancel()
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()
        self._by_ufrag.clear()
        self._udp_owners.clear()
        self._tcp_owners.clear()
        self._owned.clear()

    def stats(self) -> dict[str, Any]:
        udp, tcp = self.udp, self.tcp
        return {
            "udp_port": self.udp_port,
            "tcp_port": self.tcp_port,
            "transports": len(self._by_ufrag),
            "udp_tuples": len(self._udp_owners),
            "tcp_tuples": len(self._tcp_owners),
            "tcp_connections": len(tcp.connections) if tcp is not None else 0,
            "dropped_unknown": self.dropped_unknown,
            "refused_stun": self.refused_stun,
            "refused_not_validated": self.refused_not_validated,
            "send_would_block": udp.send_would_block if udp is not None else 0,
            "send_errors": udp.send_errors if udp is not None else 0,
            "tcp_frames_dropped": tcp.frames_dropped if tcp is not None else 0,
            "tcp_connections_refused": tcp.connections_refused if tcp is not None else 0,
            "tcp_unclaimed_closed": self.tcp_unclaimed_closed,
        }

    # ---- transports --------------------------------------------------------------------

    def add(self, transport: ServedTransport, ufrag: str) -> None:
        """Route Binding requests for ``ufrag`` to ``transport`` from now on."""
        if self.closed:
            raise InvalidStateError("the WebRtcServer is closed")
        if ufrag in self._by_ufrag:
            raise InvalidStateError(f"ICE ufrag {ufrag!r} is already in use")
        self._by_ufrag[ufrag] = transport
        self._owned.setdefault(transport, [])

    def rename(self, transport: ServedTransport, old: str, new: str) -> None:
        """An ICE restart: requests for ``old`` are not routed any more, ``new`` ones are."""
        if self._by_ufrag.get(old) is transport:
            del self._by_ufrag[old]
        self.add(transport, new)

    def remove(self, transport: ServedTransport, ufrag: str) -> None:
        """Forget ``transport`` (it closed): its ufrag and every address it owned; its
        ICE-TCP connections are closed."""
        if self._by_ufrag.get(ufrag) is transport:
            del self._by_ufrag[ufrag]
        tcp = self.tcp
        for owners, address in self._owned.pop(transport, ()):
            if owners.get(address) is transport:
                del owners[address]
                if owners is self._tcp_owners and tcp is not None:
                    # Its ICE-TCP connections end with it, as its own listener's would.
                    connection = tcp.connections.get(address)
                    if connection is not None:
                        connection.close()

    def owns_tcp(self, transport: ServedTransport) -> int:
        """How many ICE-TCP connections route to ``transport``."""
        return sum(1 for owners, _ in self._owned.get(transport, ()) if owners is self._tcp_owners)

    # ---- demultiplexing ----------------------------------------------------------------

    def _demultiplexer(self, owners: dict[Address, ServedTransport]) -> DatagramHandler:
        """The receive handler of one socket; ``owners`` maps its validated addresses."""
        route = self._route

        def demultiplex(data: bytes, address: Address, arrival: float) -> None:
            # Runs for every datagram or frame: media from a known address takes the
            # first branch.
            transport = owners.get(address)
            if transport is not None and data and data[0] > 3:
                try:
                    transport.handle_datagram(data, address, arrival)
                except Exception:
                    transport.crashed("receive")
            else:
                route(data, address, arrival, transport, owners)

        return demultiplex

    def _route(
        self,
        data: bytes,
        address: Address,
        arrival: float,
        owner: ServedTransport | None,
        owners: dict[Address, ServedTransport],
    ) -> None:
        """STUN, or anything from an address no transport owns yet."""
        transport = owner
        if data and data[0] <= 3:
            ufrag = request_ufrag_untrusted(data)
            if ufrag is not None:
                # A request names its transport; an unknown ufrag (an old one after an ICE
                # restart, say) goes to the address's owner, which counts it.
                transport = self._by_ufrag.get(ufrag, owner)
        if transport is None:
            self.dropped_unknown += 1
            if data and data[0] <= 3:
                self.refused_stun += 1
            else:
                self.refused_not_validated += 1
            return
        try:
            transport.handle_datagram(data, address, arrival)
        except Exception:
            transport.crashed("receive")
            return
        if transport is not owner and not transport.closed and transport.is_validated(address):
            # ICE validated the address for this transport: the rest from it goes there.
            owners[address] = transport
            entries = self._owned.get(transport)
            if entries is not None:
                entries.append((owners, address))

    def _on_tcp_closed(self, address: Address) -> None:
        transport = self._tcp_owners.pop(address, None)
        if transport is not None:
            try:
                transport.tcp_connection_closed(address)
            except Exception:
                transport.crashed("receive")
