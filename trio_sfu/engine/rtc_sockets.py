"""Sockets for WebRTC transports: UDP and TCP listening, RFC 4571 framing, RFC 7983 demux.

This module owns the I/O that sits *under* a transport and knows nothing of ICE, DTLS or
SRTP. Each listener reads datagrams (UDP) or frames (TCP) and hands every one to a
``handler(data, address, arrival)`` callback; whoever owns the listener decides what the
bytes are.
Today a :class:`~trio_sfu.engine.webrtc_transport.WebRtcTransport` owns one UDP listener
and one TCP listener; a shared UDP port for many transports only needs a small demuxer
(by STUN USERNAME, then by validated remote address) calling each transport's
``handle_datagram`` instead.

``arrival`` is when the datagram reached the host, on trio's clock: the kernel's receive
timestamp where it gives one (Linux: ``SO_TIMESTAMPNS``), else the time the datagram was
read. Transport-wide congestion control reports these times to the sender, whose
delay-based estimator reads every millisecond in them as a queue: a time taken after the
datagram waited in the socket buffer for a busy event loop, or after SRTP and the packets
before it in the same batch were processed, is a queue that is not on the network. See
:class:`UdpListener` for how kernel time becomes trio time; TCP frames carry the time of
the read that completed them (the kernel's stamp would be one per read too).

Sending never blocks the caller: :meth:`UdpListener.sendto_nowait` and
:meth:`TcpConnection.send_nowait` return ``False`` (and count a drop) when the kernel or
the connection's bounded queue is full.

``close()`` on every object here is synchronous and idempotent: it closes the OS sockets at
once (tasks blocked on them wake with :class:`trio.ClosedResourceError`), so an owner whose
scope is cancelled never leaves a socket open behind it.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import platform
import random
import socket as stdlib_socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Final, final

import trio

logger = logging.getLogger(__name__)

Address = tuple[str, int]
"""A remote transport address: (ip, port). IPv6 addresses are cut to these two fields."""

DatagramHandler = Callable[[bytes, Address, float], None]
"""``handler(data, address, arrival)``: ``arrival`` in seconds on trio's clock."""

#: :meth:`UdpListener.try_sendto` results.
SENT: Final = 0
SEND_WOULD_BLOCK: Final = 1
SEND_FAILED: Final = 2

# ---- RFC 7983 demultiplexing ------------------------------------------------------------

KIND_STUN: Final = 0
KIND_DTLS: Final = 1
KIND_RTP: Final = 2
KIND_RTCP: Final = 3
KIND_OTHER: Final = 4


def no_callback(*args: object) -> None:
    """What a transport calls (``on_rtp``, ``on_state``, ...) until its owner sets it."""
    return None


def classify_untrusted(data: bytes) -> int:
    """Classify one datagram or frame by its first byte (RFC 7983 §7, RFC 5761 §4).

    0-3 STUN, 20-63 DTLS, 128-191 RTP or RTCP (RTCP when the second byte, the RTCP
    packet type, is 192-223). Anything else, and packets too short to tell, are
    ``KIND_OTHER``. Never raises.
    """
    if not data:
        return KIND_OTHER
    first = data[0]
    if first <= 3:
        return KIND_STUN
    if 20 <= first <= 63:
        return KIND_DTLS
    if 128 <= first <= 191:
        if len(data) < 2:
            return KIND_OTHER
        return KIND_RTCP if 192 <= data[1] <= 223 else KIND_RTP
    return KIND_OTHER


# ---- RFC 4571 framing (RFC 6544 ICE-TCP) ------------------------------------------------

_LENGTH = struct.Struct("!H")
MAX_FRAME: Final = 0xFFFF


def frame(data: bytes) -> bytes:
    """Prefix ``data`` with its 16-bit big-endian length (RFC 4571 §2)."""
    if len(data) > MAX_FRAME:
        raise ValueError(f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
    return _LENGTH.pack(len(data)) + data


@final
class FrameDecoder:
    """Reassemble RFC 4571 frames from a TCP byte stream (sans-IO).

    Buffered bytes never exceed one incomplete frame (at most 65,536 bytes) plus the last
    chunk fed. Zero-length frames are legal and skipped.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed_untrusted(self, data: bytes) -> list[bytes]:
        """Add bytes read from the stream; return the frames now complete. Never raises."""
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        start = 0
        end = len(buffer)
        while end - start >= 2:
            length = (buffer[start] << 8) | buffer[start + 1]
            if end - start - 2 < length:
                break
            if length:
                frames.append(bytes(buffer[start + 2 : start + 2 + length]))
            start += 2 + length
        if start:
            del buffer[:start]
        return frames

    @property
    def pending(self) -> int:
        """Bytes buffered towards the next frame."""
        return len(self._buffer)


# ---- binding ---------------------------------------------------------------------------


def address_family(ip: str) -> int:
    """``AF_INET`` or ``AF_INET6`` for a literal IP; ``ValueError`` for anything else."""
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"listen_ip {ip!r} is not an IP address") from None
    return stdlib_socket.AF_INET6 if parsed.version == 6 else stdlib_socket.AF_INET


def is_unspecified(ip: str) -> bool:
    """True for 0.0.0.0 and :: (listening on every interface)."""
    return ipaddress.ip_address(ip).is_unspecified


def check_listen_options(
    what: str,
    listen_ip: str,
    announced_ip: str | None,
    port_range: tuple[int, int],
    enable_udp: bool,
    enable_tcp: bool,
) -> None:
    """``ValueError`` for listening options ``what`` (a transport, a server) cannot run with."""
    address_family(listen_ip)  # ValueError for anything but an IP literal
    if is_unspecified(listen_ip) and not announced_ip:
        raise ValueError(
            f"listen_ip {listen_ip} listens on every interface: set announced_ip to the "
            "address clients can reach, or listen on a specific IP"
        )
    if announced_ip is not None:
        address_family(announced_ip)
    if not (enable_udp or enable_tcp):
        raise ValueError(f"a {what} needs UDP, TCP or both enabled")
    low, high = port_range
    if not (0 < low <= high <= 0xFFFF):
        raise ValueError(f"invalid port range {port_range!r}")


def _candidate_ports(port_range: tuple[int, int], rng: random.Random, attempts: int) -> list[int]:
    low, high = port_range
    if not (0 < low <= high <= 0xFFFF):
        raise ValueError(f"invalid port range {port_range!r}")
    size = high - low + 1
    if size <= attempts:
        ports = list(range(low, high + 1))
        rng.shuffle(ports)
        return ports
    return rng.sample(range(low, high + 1), attempts)


def bind_in_range(
    ip: str,
    kind: int,
    port_range: tuple[int, int],
    *,
    preferred_port: int | None = None,
    attempts: int = 64,
    rng: random.Random | None = None,
) -> stdlib_socket.socket:
    """A non-blocking socket of ``kind`` (SOCK_DGRAM/SOCK_STREAM) bound to ``ip`` on a port
    of ``port_range``: ``preferred_port`` first if given, then random ports, retrying on
    EADDRINUSE. Raises ``OSError`` when no port was free after ``attempts`` tries.
    """
    family = address_family(ip)
    ports = _candidate_ports(port_range, rng or random.Random(), attempts)
    if preferred_port is not None and port_range[0] <= preferred_port <= port_range[1]:
        ports.insert(0, preferred_port)
    for port in ports:
        sock = stdlib_socket.socket(family, kind)
        try:
            if family == stdlib_socket.AF_INET6:
                sock.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_V6ONLY, 1)
            if kind == stdlib_socket.SOCK_STREAM:
                # Rebinding a port whose old connections sit in TIME_WAIT is safe for a listener.
                sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((ip, port))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        return sock
    raise OSError(errno.EADDRINUSE, f"no free port in {port_range[0]}-{port_range[1]} on {ip}")


def _grow_buffers(sock: stdlib_socket.socket, size: int) -> None:
    # Best effort: the kernel caps the value at net.core.[rw]mem_max.
    for option in (stdlib_socket.SO_RCVBUF, stdlib_socket.SO_SNDBUF):
        try:
            sock.setsockopt(stdlib_socket.SOL_SOCKET, option, size)
        except OSError:
            logger.debug("could not set socket buffer option %s to %d", option, size)


# ---- receive timestamps ----------------------------------------------------------------

#: Linux's SO_TIMESTAMPNS (asm-generic value; the standard library has no name for it):
#: every datagram then carries, as SOL_SOCKET ancillary data of the same type, the time
#: the kernel received it: a ``struct timespec`` of CLOCK_REALTIME.
SO_TIMESTAMPNS: Final = 35
#: Machines whose kernels use the asm-generic socket option numbers (parisc, sparc, alpha
#: and mips number theirs differently: there the read time is used).
_GENERIC_SOCKET_OPTIONS: Final = frozenset(
    {"x86_64", "amd64", "i386", "i686", "aarch64", "arm64", "armv7l", "armv8l", "riscv64"}
    | {"ppc64le", "ppc64", "s390x", "loongarch64"}
)
#: The kernel's ``struct timespec`` for this process (two C longs).
_TIMESPEC: Final = struct.Struct("@ll")
_TIMESTAMP_ANCILLARY_SIZE: Final = stdlib_socket.CMSG_SPACE(_TIMESPEC.size)
#: A clock offset is measured only from reads of trio's clock at most this far apart (a
#: process preempted between them would skew it by as long as it waited).
_OFFSET_BRACKET: Final = 50e-6
#: A kernel timestamp further than this from the batch's read (a step of the system
#: clock between the stamp and the offset measured after it) is not believed: the read
#: time stands in for it.
_STAMP_TRUST: Final = 1.0


def enable_receive_timestamps(sock: stdlib_socket.socket) -> bool:
    """Ask the kernel to stamp every datagram ``sock`` receives (``SO_TIMESTAMPNS``).

    ``False`` where it cannot (not Linux, a machine with other option numbers, or the
    kernel refused): the receiver then reads the clock itself.
    """
    if not sys.platform.startswith("linux") or platform.machine() not in _GENERIC_SOCKET_OPTIONS:
        return False
    try:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


# ---- UDP -------------------------------------------------------------------------------


@final
class UdpListener:
    """One bound UDP socket: a receive loop calling ``handler`` per datagram, and
    non-blocking sends.

    The receive loop reads with non-blocking ``recvmsg`` until the socket is empty, then
    waits for readability, yielding to other tasks every ``batch`` datagrams.

    Arrival times: with :attr:`kernel_timestamps` each datagram's kernel receive time
    (CLOCK_REALTIME) is moved onto trio's clock (CLOCK_MONOTONIC plus a constant) by an
    offset between the two clocks, measured again at every wakeup and after every yield:
    Linux keeps REALTIME and MONOTONIC a constant apart (NTP slews both alike; only a
    step of the system clock moves one against the other), so offsets measured a batch
    apart agree to within their measurement error (at most 25 µs, see
    :data:`_OFFSET_BRACKET`) and arrival times do not jump between batches, while a step
    is followed from the next batch on. A datagram stamped before a step and read after
    it is off by the step; one that lands further than :data:`_STAMP_TRUST` from the
    read gets the read time. (SO_TIMESTAMPING offers no monotonic software stamp.)
    Without kernel timestamps (or for a datagram without one) the arrival time is trio's
    clock read as ``recvmsg`` returns it. Neither costs a task switch or an allocation
    beyond ``recvmsg``'s own; reading the kernel's stamp costs under a microsecond per
    datagram more than a bare ``recvfrom`` (measured: 0.8 µs in bursts of 32).
    """

    def __init__(
        self,
        sock: stdlib_socket.socket,
        *,
        buffer_size: int = 1 << 20,
        batch: int = 64,
    ) -> None:
        if sock.type != stdlib_socket.SOCK_DGRAM:
            raise ValueError("UdpListener needs a datagram socket")
        sock.setblocking(False)
        _grow_buffers(sock, buffer_size)
        self._sock = sock
        self._v6 = sock.family == stdlib_socket.AF_INET6
        self._batch = batch
        #: The kernel stamps every datagram's arrival (else the read time is used).
        self.kernel_timestamps = enable_receive_timestamps(sock)
        #: CLOCK_REALTIME minus trio's clock, as last measured (see the class docstring).
        self._offset: float | None = None
        self.closed = False
        self.local_address: Address = sock.getsockname()[:2]
        self.send_would_block = 0
        self.send_errors = 0
        self.receive_errors = 0

    @classmethod
    def bind(
        cls, ip: str, port_range: tuple[int, int], *, rng: random.Random | None = None
    ) -> UdpListener:
        return cls(bind_in_range(ip, stdlib_socket.SOCK_DGRAM, port_range, rng=rng))

    def sendto_nowait(self, data: bytes | bytearray, address: Address) -> bool:
        """Send one datagram if the kernel takes it now; ``False`` (counted) otherwise."""
        try:
            self._sock.sendto(data, address)
        except BlockingIOError:
            self.send_would_block += 1
            return False
        except OSError:
            if self.closed:
                return False
            self.send_errors += 1
            return False
        return True

    def try_sendto(self, data: bytes, address: Address) -> int:
        """Send one datagram now: :data:`SENT`; :data:`SEND_WOULD_BLOCK` when the kernel's
        buffer is full (nothing counted: the caller queues it for :meth:`sendto_many`);
        :data:`SEND_FAILED` when the kernel refused it (counted in :attr:`send_errors`,
        unless the socket is closed)."""
        try:
            self._sock.sendto(data, address)
        except BlockingIOError:
            return SEND_WOULD_BLOCK
        except OSError:
            if not self.closed:
                self.send_errors += 1
            return SEND_FAILED
        return SENT

    async def sendto(self, data: bytes, address: Address) -> bool:
        """Send one datagram, waiting for the socket to become writable if needed.

        Returns ``False`` (counted) when the kernel refuses the datagram (e.g. no route).
        Cancellation: a cancelled call sent nothing.
        """
        sock = self._sock
        while True:
            try:
                sock.sendto(data, address)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            except OSError:
                if self.closed:
                    raise trio.ClosedResourceError("socket closed") from None
                self.send_errors += 1
                return False
            return True

    async def sendto_many(self, datagrams: list[bytes], address: Address) -> int:
        """Send datagrams in order, waiting for writability only when the kernel pushes
        back (one await per batch otherwise). Returns how many were sent; refused ones are
        counted in :attr:`send_errors`. Cancellation: a cancelled call may have sent a
        prefix of ``datagrams``.
        """
        sendto = self._sock.sendto
        sent = 0
        for data in datagrams:
            try:
                sendto(data, address)
            except BlockingIOError:
                if not await self.sendto(data, address):
                    continue
            except OSError:
                if self.closed:
                    raise trio.ClosedResourceError("socket closed") from None
                self.send_errors += 1
                continue
            sent += 1
        await trio.lowlevel.checkpoint()
        return sent

    async def serve(
        self,
        handler: DatagramHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``handler(data, address, arrival)`` for every datagram until closed or
        cancelled (``arrival``: see the class docstring).

        ``handler`` runs synchronously in this task and must not block; exceptions from it
        propagate (and end the loop): it is expected to turn bad input into counters.
        """
        sock = self._sock
        recvmsg = sock.recvmsg
        wait_readable = trio.lowlevel.wait_readable
        checkpoint = trio.lowlevel.checkpoint
        current_time = trio.current_time
        unpack = _TIMESPEC.unpack
        stamp_size = _TIMESPEC.size
        stamp_kind = SO_TIMESTAMPNS
        sol_socket = stdlib_socket.SOL_SOCKET
        timestamped = self.kernel_timestamps
        ancillary_size = _TIMESTAMP_ANCILLARY_SIZE if timestamped else 0
        batch = self._batch
        v6 = self._v6
        task_status.started()
        count = 0
        offset, earliest, latest = 0.0, 0.0, 0.0
        if timestamped:
            offset, earliest, latest = self._measure_offset()
        while True:
            try:
                data, ancillary, _flags, address = recvmsg(65535, ancillary_size)
            except BlockingIOError:
                count = 0
                try:
                    await wait_readable(sock)
                except (trio.ClosedResourceError, OSError):
                    if self.closed:
                        return
                    raise
                if timestamped:
                    offset, earliest, latest = self._measure_offset()
                continue
            except (ConnectionRefusedError, ConnectionResetError):
                # An ICMP error for an earlier send: not about this socket's health.
                self.receive_errors += 1
                continue
            except OSError:
                if self.closed:
                    return
                raise
            if ancillary:
                level, kind, value = ancillary[0]
                if kind == stamp_kind and level == sol_socket and len(value) == stamp_size:
                    seconds, nanoseconds = unpack(value)
                    arrival = seconds - offset + nanoseconds * 1e-9
                    if not earliest <= arrival <= latest:
                        arrival = current_time()
                else:
                    arrival = current_time()
            else:
                arrival = current_time()
            handler(data, address[:2] if v6 else address, arrival)
            count += 1
            if count >= batch:
                count = 0
                await checkpoint()
                if timestamped:
                    offset, earliest, latest = self._measure_offset()

    def _measure_offset(self) -> tuple[float, float, float]:
        """CLOCK_REALTIME minus trio's clock, and the span of arrival times believed.

        A measurement whose two reads of trio's clock lie further apart than
        :data:`_OFFSET_BRACKET` (this process was preempted between them) is not taken:
        the last one stands (the first is tried three times, then taken anyway)."""
        offset = self._offset
        for _ in range(3 if offset is None else 1):
            before = trio.current_time()
            realtime = time.time()  # the kernel's stamps are on this clock
            after = trio.current_time()
            if after - before <= _OFFSET_BRACKET:
                offset = realtime - (before + after) / 2
                break
        if offset is None:
            offset = realtime - (before + after) / 2
        self._offset = offset
        return offset, before - _STAMP_TRUST, after + _STAMP_TRUST

    def close(self) -> None:
        """Close the socket now (idempotent); a task waiting in :meth:`serve` wakes up."""
        if self.closed:
            return
        self.closed = True
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()


# ---- TCP (RFC 6544 passive candidates) -------------------------------------------------


@final
class TcpConnection:
    """One accepted ICE-TCP connection: RFC 4571 frames in and out.

    Outgoing frames go through a bounded queue drained by a writer task, so
    :meth:`send_nowait` never blocks (a full queue drops and counts).
    """

    def __init__(self, stream: trio.SocketStream, address: Address, queue_size: int) -> None:
        self.stream = stream
        self.address = address
        self._send_channel, self._receive_channel = trio.open_memory_channel[bytes](queue_size)
        self.closed = False
        self.frames_dropped = 0
        #: When it was accepted (trio's clock).
        self.opened_at = trio.current_time()

    def send_nowait(self, data: bytes) -> bool:
        """Frame ``data`` and queue it; ``False`` (counted) when the queue is full or closed."""
        if len(data) > MAX_FRAME:
            self.frames_dropped += 1
            return False
        try:
            self._send_channel.send_nowait(_LENGTH.pack(len(data)) + data)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.frames_dropped += 1
            return False
        return True

    async def _write_loop(self) -> None:
        receive_nowait = self._receive_channel.receive_nowait
        send_all = self.stream.send_all
        try:
            async for first in self._receive_channel:
                chunks = [first]
                # Batch whatever else is queued into one write.
                while len(chunks) < 256:
                    try:
                        chunks.append(receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await send_all(b"".join(chunks))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # A reset, or our own close(): the connection is over; wake the reader too.
            self.close()

    async def _read_loop(self, handler: DatagramHandler) -> None:
        decoder = FrameDecoder()
        address = self.address
        receive_some = self.stream.receive_some
        current_time = trio.current_time
        try:
            while True:
                data = await receive_some(65536)
                if not data:
                    return
                # One time for every frame this read completed: a stream has no arrival
                # time per frame (the kernel's stamp would be the last segment's).
                arrival = current_time()
                for item in decoder.feed_untrusted(data):
                    handler(item, address, arrival)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def run(self, handler: DatagramHandler) -> None:
        """Read frames into ``handler`` and write queued frames until EOF, error or close."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                await self._read_loop(handler)
                nursery.cancel_scope.cancel()
        finally:
            self.close()

    def close(self) -> None:
        """Close the socket now (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._send_channel.close()
        self.stream.socket.close()


@final
class TcpListener:
    """A listening TCP socket accepting ICE-TCP connections (tcptype passive).

    Each connection gets a task under :meth:`serve`; frames are handed to ``handler`` with
    the connection's remote address. At most ``max_connections`` are open at once: further
    connections are closed at once (counted).
    """

    def __init__(
        self,
        sock: stdlib_socket.socket,
        *,
        max_connections: int = 16,
        queue_size: int = 512,
        backlog: int = 16,
    ) -> None:
        if sock.type != stdlib_socket.SOCK_STREAM:
            raise ValueError("TcpListener needs a stream socket")
        sock.setblocking(False)
        sock.listen(backlog)
        self._sock = trio.socket.from_stdlib_socket(sock)
        self.local_address: Address = sock.getsockname()[:2]
        self._max_connections = max_connections
        self._queue_size = queue_size
        self.connections: dict[Address, TcpConnection] = {}
        self.closed = False
        self.connections_refused = 0
        self._frames_dropped_closed = 0
        self.on_connection_closed: Callable[[Address], None] | None = None

    @classmethod
    def bind(
        cls,
        ip: str,
        port_range: tuple[int, int],
        *,
        preferred_port: int | None = None,
        rng: random.Random | None = None,
        max_connections: int = 16,
    ) -> TcpListener:
        return cls(
            bind_in_range(
                ip, stdlib_socket.SOCK_STREAM, port_range, preferred_port=preferred_port, rng=rng
            ),
            max_connections=max_connections,
            backlog=min(max_connections, 1024),
        )

    @property
    def frames_dropped(self) -> int:
        """Frames dropped by full queues, over every connection so far."""
        live = sum(connection.frames_dropped for connection in self.connections.values())
        return self._frames_dropped_closed + live

    def send_nowait(self, data: bytes, address: Address) -> bool:
        """Queue one frame to the connection from ``address``; ``False`` if none or full."""
        connection = self.connections.get(address)
        if connection is None:
            return False
        return connection.send_nowait(data)

    async def serve(
        self,
        handler: DatagramHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until closed or cancelled; each one runs in a child task."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    sock, remote = await self._sock.accept()
                except (trio.ClosedResourceError, OSError):
                    if self.closed:
                        return
                    raise
                address: Address = remote[:2]
                if len(self.connections) >= self._max_connections or address in self.connections:
                    self.connections_refused += 1
                    sock.close()
                    continue
                sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
                connection = TcpConnection(trio.SocketStream(sock), address, self._queue_size)
                self.connections[address] = connection
                nursery.start_soon(self._run_connection, connection, handler)

    async def _run_connection(self, connection: TcpConnection, handler: DatagramHandler) -> None:
        try:
            await connection.run(handler)
        finally:
            self._frames_dropped_closed += connection.frames_dropped
            if self.connections.get(connection.address) is connection:
                del self.connections[connection.address]
            if self.on_connection_closed is not None and not self.closed:
                self.on_connection_closed(connection.address)

    def close(self) -> None:
        """Close the listening socket and every connection now (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._sock.close()
        for connection in list(self.connections.values()):
            connection.close()
