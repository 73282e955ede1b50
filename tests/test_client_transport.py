"""The trio client transport: candidate choice, its DTLS parameters, and its failures.

The happy paths (media both ways over UDP and TCP, ICE restart) are in test_transport.py,
where the client talks to a real WebRtcTransport.
"""

from __future__ import annotations

import socket as stdlib_socket

import pytest
import trio
import trio.testing

from tests.transport_helpers import open_pair, rtcp_receiver_report, rtp_packet, task_names
from trio_sfu.client import ClientTransportError, open_client_transport, pick_candidate
from trio_sfu.dtls import DtlsCertificate
from trio_sfu.engine.webrtc_transport import WebRtcTransport
from trio_sfu.ortc.types import DtlsFingerprint, DtlsParameters, IceCandidate, IceParameters

ICE = IceParameters(
    username_fragment="serverufrag00001",
    password="serverpassword0123456789abcdefgh",
    ice_lite=True,
)


def candidate(protocol: str, port: int, priority: int, tcp_type: str | None = None) -> IceCandidate:
    return IceCandidate(
        foundation=f"{protocol}candidate",
        priority=priority,
        address="127.0.0.1",
        ip="127.0.0.1",
        port=port,
        type="host",
        protocol=protocol,  # type: ignore[arg-type]
        tcp_type=tcp_type,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def certificate() -> DtlsCertificate:
    return DtlsCertificate.generate()


def test_pick_candidate() -> None:
    candidates = [
        candidate("udp", 1000, 100),
        candidate("udp", 1001, 300),
        candidate("tcp", 1002, 500, "passive"),
        candidate("tcp", 1003, 900, "active"),  # we connect actively: unusable
        candidate("tcp", 1004, 200, "so"),
    ]
    assert pick_candidate(candidates, "udp").port == 1001
    assert pick_candidate(candidates, "tcp").port == 1002
    with pytest.raises(ValueError, match="tcp"):
        pick_candidate(candidates[:2], "tcp")
    with pytest.raises(ValueError, match="udp"):
        pick_candidate([], "udp")


async def test_client_dtls_parameters(certificate: DtlsCertificate) -> None:
    with trio.fail_after(5):
        server_dtls = DtlsParameters(
            fingerprints=[DtlsFingerprint(algorithm="sha-256", value="00:" * 31 + "00")],
            role="auto",
        )
        with trio.socket.socket(type=stdlib_socket.SOCK_DGRAM) as silent:
            await silent.bind(("127.0.0.1", 0))
            port = silent.getsockname()[1]
            async with open_client_transport(
                ICE, [candidate("udp", port, 1)], server_dtls, certificate=certificate
            ) as client:
                assert client.dtls_parameters.role == "client"
                [fingerprint] = client.dtls_parameters.fingerprints
                expected = [fp for fp in certificate.fingerprints() if fp.algorithm == "sha-256"]
                assert (fingerprint.algorithm, fingerprint.value) == (
                    expected[0].algorithm,
                    expected[0].value,
                )
                assert not client.connected
                # Nothing is sent before SRTP is up.
                assert not client.send_rtp(rtp_packet(1))
                assert client.stats()["dropped"]["not_ready"] == 1
                # The first check went out at once: a STUN Binding request (0x0001).
                request = await silent.recv(2048)
                assert request[:2] == b"\x00\x01"
                assert request[4:8] == bytes.fromhex("2112a442")


async def test_client_refuses_a_server_role_client() -> None:
    with trio.fail_after(5), pytest.raises(ValueError, match="client"):
        async with open_client_transport(
            ICE,
            [candidate("udp", 9, 1)],
            DtlsParameters(fingerprints=[], role="client"),
        ):
            pass  # pragma: no cover


async def test_ice_failure_when_nobody_answers(
    certificate: DtlsCertificate, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        tasks_before = task_names()
        with trio.socket.socket(type=stdlib_socket.SOCK_DGRAM) as silent:
            await silent.bind(("127.0.0.1", 0))
            port = silent.getsockname()[1]
            server_dtls = DtlsParameters(
                fingerprints=[DtlsFingerprint(algorithm="sha-256", value="00:" * 31 + "00")],
                role="auto",
            )
            async with open_client_transport(
                ICE, [candidate("udp", port, 1)], server_dtls, certificate=certificate
            ) as client:
                started = trio.current_time()
                with pytest.raises(ClientTransportError) as info:
                    await client.wait_connected()
                assert info.value.reason == "ice_failed"
                # RFC 8489 retransmissions: 7 sends, 0.1 s doubling, then 16 x RTO.
                assert 7.9 <= trio.current_time() - started <= 8.0
                assert client.closed
                # The silent server got exactly the 7 sends of the one check.
                sent = 0
                with trio.move_on_after(0.01):
                    while True:
                        await silent.recv(2048)
                        sent += 1
                assert sent == 7
        assert task_names() == tasks_before


async def test_client_refuses_a_server_with_another_certificate(
    certificate: DtlsCertificate,
) -> None:
    with trio.fail_after(20):
        server = WebRtcTransport(transport_id="t1", certificate=DtlsCertificate.generate())
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            # The client expects `certificate`'s fingerprint; the server has another one.
            pinned = DtlsParameters(
                fingerprints=[
                    DtlsFingerprint(algorithm=fp.algorithm, value=fp.value)  # type: ignore[arg-type]
                    for fp in certificate.fingerprints()
                    if fp.algorithm == "sha-256"
                ],
                role="auto",
            )
            async with open_client_transport(
                server.ice_parameters, server.ice_candidates, pinned
            ) as client:
                server.connect(client.dtls_parameters)
                with pytest.raises(ClientTransportError) as info:
                    await client.wait_connected()
                assert info.value.reason.startswith("dtls_failed")
                assert client.closed
                assert not client.send_rtp(rtp_packet(1))
            server.close()


async def test_client_close_is_idempotent_and_leaves_nothing(
    certificate: DtlsCertificate,
) -> None:
    with trio.fail_after(20):
        tasks_before = task_names()
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate) as pair:
                client = pair.client
                client.close()
                client.close()
                assert client.closed
                assert not client.connected
                assert not client.send_rtp(rtp_packet(1))
                with pytest.raises(ClientTransportError):
                    await client.wait_connected()
                with pytest.raises(trio.EndOfChannel):
                    await client.receive_rtp()
            nursery.cancel_scope.cancel()
        assert task_names() == tasks_before


async def test_client_on_rtp_callback_replaces_the_queue(certificate: DtlsCertificate) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate) as pair:
                got: list[bytes] = []
                done = trio.Event()

                def on_rtp(packet: bytes) -> None:
                    got.append(packet)
                    if len(got) == 10:
                        done.set()

                pair.client.on_rtp = on_rtp
                for i in range(10):
                    assert pair.server.send_rtp_nowait(rtp_packet(i))
                await done.wait()
                assert got == [rtp_packet(i) for i in range(10)]
                assert pair.client.stats()["rtp_packets_in"] == 10
            nursery.cancel_scope.cancel()


async def test_detached_receive_is_fed_by_the_caller(certificate: DtlsCertificate) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate) as pair:
                client = pair.client
                got: list[bytes] = []
                client.on_rtp = got.append
                sock = client.detach_receive()
                await trio.testing.wait_all_tasks_blocked()
                assert pair.server.send_rtp_nowait(rtp_packet(1))
                # Nobody reads for the transport any more: the datagram waits in the socket.
                await trio.lowlevel.wait_readable(sock)
                await trio.testing.wait_all_tasks_blocked()
                assert got == []
                client.receive_datagram(sock.recv(2048))
                assert got == [rtp_packet(1)]
                # Garbage fed the same way is counted, never raised.
                client.receive_datagram(b"\xff\x00")
                assert client.stats()["dropped"]["noise"] == 1
            nursery.cancel_scope.cancel()


async def test_send_counts_each_kind_and_each_drop(certificate: DtlsCertificate) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate, connect=False) as pair:
                client = pair.client
                assert not client.send_rtp(rtp_packet(0))
                assert not client.send_rtcp(rtcp_receiver_report(0))
                assert client.stats()["dropped"]["not_ready"] == 2
                pair.server.connect(client.dtls_parameters)
                await client.wait_connected()
                assert all(client.send_rtp(rtp_packet(i)) for i in range(3))
                assert all(client.send_rtcp(rtcp_receiver_report(i)) for i in range(2))
                # Bytes SRTP refuses are a counted drop, never an exception.
                assert not client.send_rtp(rtp_packet(0, size=70_000))
                assert not client.send_rtcp(b"\x81")
                stats = client.stats()
                assert stats["rtp_packets_out"] == 3
                assert stats["rtcp_packets_out"] == 2
                assert stats["dropped"]["not_ready"] == 2
                assert stats["dropped"]["send"] == 2
                await pair.server_received.wait_for(
                    lambda: (
                        len(pair.server_received.rtp) == 3 and len(pair.server_received.rtcp) == 2
                    )
                )
            nursery.cancel_scope.cancel()
