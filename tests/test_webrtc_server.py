"""WebRtcServer: many WebRtcTransports on one UDP port and one TCP port, over 127.0.0.1
with real sockets, DTLS and SRTP, driven by the trio client."""

from __future__ import annotations

import socket as stdlib_socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import trio.testing

from tests.conftest import open_sockets
from tests.test_transport import dropped, exchange_media
from tests.transport_helpers import Pair, attach, rtp_packet, task_names
from trio_sfu.client import open_client_transport
from trio_sfu.dtls import DtlsCertificate
from trio_sfu.engine.rtc_sockets import SEND_WOULD_BLOCK
from trio_sfu.engine.webrtc_server import UNCLAIMED_TCP_TIMEOUT, WebRtcServer
from trio_sfu.engine.webrtc_transport import WebRtcTransport
from trio_sfu.errors import InvalidStateError
from trio_sfu.srtp import SRTP_PROFILES
from trio_sfu.stun import build_binding_request
from trio_sfu.timers import TimerQueue


@pytest.fixture(scope="module")
def certificate() -> DtlsCertificate:
    return DtlsCertificate.generate()


@asynccontextmanager
async def open_shared_pairs(
    nursery: trio.Nursery,
    certificate: DtlsCertificate,
    server: WebRtcServer,
    count: int,
    *,
    protocol: str = "udp",
    timers: TimerQueue | None = None,
) -> AsyncIterator[list[Pair]]:
    """``count`` connected transport/client pairs, every transport on ``server``."""
    async with AsyncExitStack() as stack:
        pairs = []
        for i in range(count):
            transport = WebRtcTransport(
                transport_id=f"t{i}", certificate=certificate, server=server, timers=timers
            )
            received = attach(transport)
            await nursery.start(transport.run)
            stack.callback(transport.close)
            client = await stack.enter_async_context(
                open_client_transport(
                    transport.ice_parameters,
                    transport.ice_candidates,
                    transport.dtls_parameters,
                    protocol=protocol,  # type: ignore[arg-type]
                    srtp_profiles=SRTP_PROFILES,
                )
            )
            transport.connect(client.dtls_parameters)
            await client.wait_connected()
            await received.wait_for(lambda t=transport: t.dtls_state == "connected")
            pairs.append(Pair(transport, client, received))
        yield pairs


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
async def test_transports_share_one_port_and_each_gets_only_its_own_media(
    protocol: str, certificate: DtlsCertificate
) -> None:
    with trio.fail_after(30):
        tasks_before = task_names()
        sockets_before = open_sockets()
        server = WebRtcServer()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            assert len(open_sockets() - sockets_before) == 2  # one UDP socket, one listener
            timers = TimerQueue()
            nursery.start_soon(timers.run)
            async with open_shared_pairs(
                nursery, certificate, server, 3, protocol=protocol, timers=timers
            ) as pairs:
                # One candidate port per protocol for all of them.
                ports = {(c.protocol, c.port) for p in pairs for c in p.server.ice_candidates}
                assert ports == {("udp", server.udp_port), ("tcp", server.tcp_port)}
                # Sockets: one per client (plus the server's end of each TCP connection).
                per_client = 2 if protocol == "tcp" else 1
                assert len(open_sockets() - sockets_before) == 2 + 3 * per_client
                # Each transport receives what its own client sends, and only that.
                for i, pair in enumerate(pairs):
                    await exchange_media(pair, rtp=30, rtcp=3, base=1000 * i)
                for i, pair in enumerate(pairs):
                    assert all(
                        p in [rtp_packet(1000 * i + k) for k in range(30)]
                        for p in pair.server_received.rtp
                    )
                    assert pair.server.stats()["rtp_packets_in"] == 30
                stats = server.stats()
                key = "tcp_connections" if protocol == "tcp" else "udp_tuples"
                assert stats[key] == 3
                assert stats["transports"] == 3
                assert [p.server.stats()["tcp_connections"] for p in pairs] == (
                    [1, 1, 1] if protocol == "tcp" else [0, 0, 0]
                )
                # No socket, timer or egress task per transport: its run task has no
                # children; the sockets are served by the server's tasks.
                runs = [t for t in task_names() if t.name.endswith("WebRtcTransport.run")]
                assert len(runs) == 3
                assert all(not _descendants(t) for t in runs)
                (server_task,) = (t for t in task_names() if t.name.endswith("WebRtcServer.run"))
                served = sorted(t.name.rsplit(".", 2)[-2] for t in _descendants(server_task))
                if protocol == "udp":
                    assert served == ["TcpListener", "UdpListener", "WebRtcServer"]
                else:  # and a reader and a writer per ICE-TCP connection
                    assert served == (
                        ["TcpConnection"] * 3
                        + ["TcpListener"] * 4
                        + ["UdpListener", "WebRtcServer"]
                    )

                # One transport closes: its tuples are forgotten, the others go on.
                gone = pairs[0]
                gone.server.close()
                assert server.stats()["transports"] == 2
                assert server.stats()["udp_tuples" if protocol == "udp" else "tcp_tuples"] == 2
                # Its ICE-TCP connection is closed with it (the task ends at its next turn).
                await trio.testing.wait_all_tasks_blocked()
                assert server.stats()[key] == 2
                for pair in pairs[1:]:
                    await exchange_media(pair, rtp=10, rtcp=1, base=5000)
                assert gone.server.stats()["rtp_packets_in"] == 30
            nursery.cancel_scope.cancel()
        assert server.closed
        assert open_sockets() == sockets_before
        assert task_names() == tasks_before


def _descendants(task: trio.lowlevel.Task) -> list[trio.lowlevel.Task]:
    found = []
    stack = [task]
    while stack:
        for nursery in stack.pop().child_nurseries:
            found.extend(nursery.child_tasks)
            stack.extend(nursery.child_tasks)
    return found


async def test_strangers_and_unknown_ufrags_are_dropped_and_counted(
    certificate: DtlsCertificate,
) -> None:
    with trio.fail_after(30):
        server = WebRtcServer()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            async with open_shared_pairs(nursery, certificate, server, 1) as pairs:
                (pair,) = pairs
                port = server.udp_port
                assert port is not None
                protected = pair.client._srtp.protect_rtp(rtp_packet(1, ssrc=0x12121212))
                request, _ = build_binding_request(
                    username="nosuchufrag:x",
                    password="p" * 22,
                    priority=1,
                    ice_controlling_tiebreaker=1,
                    use_candidate=True,
                )
                with trio.socket.socket(type=stdlib_socket.SOCK_DGRAM) as sock:
                    await sock.bind(("127.0.0.1", 0))
                    # Valid SRTP from a stranger, a check for nobody, DTLS and garbage.
                    await sock.sendto(protected, ("127.0.0.1", port))
                    await sock.sendto(request, ("127.0.0.1", port))
                    await sock.sendto(
                        bytes.fromhex("16 fefd 0000 000000000000 0000"), ("127.0.0.1", port)
                    )
                    await sock.sendto(b"\x80\x60garbage", ("127.0.0.1", port))
                    pair.client.send_rtp(rtp_packet(2))
                    await pair.server_received.wait_for(
                        lambda: rtp_packet(2) in pair.server_received.rtp
                    )
                    with trio.move_on_after(0.2):
                        await sock.recv(1500)
                        pytest.fail("a stranger got an answer")
                assert server.dropped_unknown == 4
                assert rtp_packet(1, ssrc=0x12121212) not in pair.server_received.rtp
                assert pair.server.stats()["stun_in"] >= 1  # only its own client's checks
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
async def test_ice_restart_routes_the_new_ufrag(
    protocol: str, certificate: DtlsCertificate, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        server = WebRtcServer()
        timers = TimerQueue()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            nursery.start_soon(timers.run)
            async with open_shared_pairs(
                nursery, certificate, server, 2, protocol=protocol, timers=timers
            ) as pairs:
                pair = pairs[0]
                transport, client = pair.server, pair.client
                new = transport.restart_ice()
                # Checks with the old ufrag still reach it (by address) and are refused.
                dropped_before = dropped(transport, "bad_stun")
                for _ in range(12):
                    if dropped(transport, "bad_stun") > dropped_before:
                        break
                    await trio.sleep(0.5)
                assert dropped(transport, "bad_stun") > dropped_before
                answered = transport.stats()["stun_answered"]
                client.restart_ice(new)
                await trio.sleep(1)
                assert transport.stats()["stun_answered"] > answered
                # Consent holds with the new credentials, on one shared port, for both.
                await trio.sleep(60)
                for p in pairs:
                    assert p.server.ice_state == "connected"
                    await exchange_media(p, rtp=20, rtcp=2, base=300)
            nursery.cancel_scope.cancel()


async def test_the_server_outlives_its_transports_and_closes_once(
    certificate: DtlsCertificate,
) -> None:
    with trio.fail_after(30):
        sockets_before = open_sockets()
        server = WebRtcServer()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            for round_ in range(2):
                async with open_shared_pairs(nursery, certificate, server, 2) as pairs:
                    for pair in pairs:
                        await exchange_media(pair, rtp=5, rtcp=1, base=round_ * 100)
                # Every transport closed: nothing of theirs is left in the server.
                assert server.stats()["transports"] == 0
                assert server.stats()["udp_tuples"] == 0
                assert server._owned == {}
                assert len(open_sockets() - sockets_before) == 2
            server.close()
            server.close()  # idempotent
            # A transport cannot start on a closed server.
            late = WebRtcTransport(transport_id="late", certificate=certificate, server=server)
            with pytest.raises(InvalidStateError):
                await nursery.start(late.run)
        assert open_sockets() == sockets_before
        with pytest.raises(InvalidStateError):
            await server.run()


async def test_a_tcp_only_transport_on_a_udp_and_tcp_server(certificate: DtlsCertificate) -> None:
    with trio.fail_after(30):
        server = WebRtcServer()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            transport = WebRtcTransport(
                transport_id="tcp-only", certificate=certificate, server=server, enable_udp=False
            )
            await nursery.start(transport.run)
            assert [(c.protocol, c.port) for c in transport.ice_candidates] == [
                ("tcp", server.tcp_port)
            ]
            transport.close()
            udp_only = WebRtcServer(enable_tcp=False)
            await nursery.start(udp_only.run)
            orphan = WebRtcTransport(
                transport_id="x", certificate=certificate, server=udp_only, enable_udp=False
            )
            with pytest.raises(InvalidStateError):
                await nursery.start(orphan.run)
            nursery.cancel_scope.cancel()


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="announced_ip"):
        WebRtcServer(listen_ip="0.0.0.0")
    with pytest.raises(ValueError):
        WebRtcServer(listen_ip="localhost")
    with pytest.raises(ValueError):
        WebRtcServer(enable_udp=False, enable_tcp=False)
    with pytest.raises(ValueError):
        WebRtcServer(port=70000)
    with pytest.raises(ValueError):
        WebRtcServer(port_range=(5000, 4000))


async def test_a_taken_port_is_a_start_up_error() -> None:
    with trio.fail_after(10):
        first = WebRtcServer()
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            port = first.udp_port
            assert port is not None and first.tcp_port == port
            second = WebRtcServer(port=port)
            with pytest.raises(OSError):
                await nursery.start(second.run)
            assert second.closed
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
async def test_a_bug_in_one_transport_closes_only_that_transport(
    protocol: str, certificate: DtlsCertificate
) -> None:
    with trio.fail_after(30):
        server = WebRtcServer()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            async with open_shared_pairs(
                nursery, certificate, server, 2, protocol=protocol
            ) as pairs:
                broken, healthy = pairs

                def bug(packet: bytes, arrival: float) -> None:
                    raise RuntimeError("bug in the owner's callback")

                broken.server.on_rtp = bug
                broken.client.send_rtp(rtp_packet(1))
                await broken.server_received.wait_for(lambda: broken.server_received.closed)
                assert broken.server_received.closed == ["internal_error"]
                # The shared sockets still serve the other transport.
                assert not server.closed
                await exchange_media(healthy, rtp=20, rtcp=2)
            nursery.cancel_scope.cancel()


async def test_a_transport_started_without_a_task_of_its_own(certificate: DtlsCertificate) -> None:
    with trio.fail_after(30):
        tasks_before = task_names()
        server = WebRtcServer()
        timers = TimerQueue()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            nursery.start_soon(timers.run)
            await trio.testing.wait_all_tasks_blocked()
            tasks_with_server = task_names()
            transport = WebRtcTransport(
                transport_id="no-task", certificate=certificate, server=server, timers=timers
            )
            received = attach(transport)
            transport.start(nursery)
            assert task_names() == tasks_with_server  # nothing started
            with pytest.raises(InvalidStateError):
                transport.start(nursery)
            async with open_client_transport(
                transport.ice_parameters,
                transport.ice_candidates,
                transport.dtls_parameters,
                srtp_profiles=SRTP_PROFILES,
            ) as client:
                transport.connect(client.dtls_parameters)
                await client.wait_connected()
                await received.wait_for(lambda: transport.dtls_state == "connected")
                pair = Pair(transport, client, received)
                await exchange_media(pair, rtp=30, rtcp=3)
                # A socket that pushes back: the egress task runs in the owner's nursery,
                # and close() cancels it.
                udp = server.udp
                assert udp is not None
                real = udp.try_sendto
                udp.try_sendto = lambda data, address: SEND_WOULD_BLOCK  # type: ignore[method-assign]
                assert transport.send_rtp_nowait(rtp_packet(1))
                udp.try_sendto = real  # type: ignore[method-assign]
                assert transport._egress_send is not None
                assert await client.receive_rtp() == rtp_packet(1)
                await trio.testing.wait_all_tasks_blocked()
                assert transport._egress_send is None
                transport.close()
                assert received.closed == ["closed"]
                assert server.stats()["transports"] == 0
            await trio.testing.wait_all_tasks_blocked()
            assert task_names() == tasks_with_server
            # Without a server and a queue there is no one to receive and time for it.
            alone = WebRtcTransport(transport_id="alone", certificate=certificate)
            with pytest.raises(InvalidStateError, match="run"):
                alone.start(nursery)
            nursery.cancel_scope.cancel()
        assert task_names() == tasks_before


async def test_an_ice_tcp_connection_no_transport_claims_is_closed(
    certificate: DtlsCertificate, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        server = WebRtcServer()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            async with open_shared_pairs(nursery, certificate, server, 1, protocol="tcp") as pairs:
                assert server.tcp_port is not None
                idle = await trio.open_tcp_stream("127.0.0.1", server.tcp_port)
                async with idle:
                    await trio.sleep(UNCLAIMED_TCP_TIMEOUT / 2)
                    assert server.stats()["tcp_connections"] == 2
                    with trio.fail_after(UNCLAIMED_TCP_TIMEOUT):
                        assert await idle.receive_some(100) == b""  # closed by the server
                assert server.stats()["tcp_unclaimed_closed"] == 1
                # The claimed connection of the transport stays, and carries media.
                await exchange_media(pairs[0], rtp=5, rtcp=1)
                assert server.stats()["tcp_connections"] == 1
            nursery.cancel_scope.cancel()
