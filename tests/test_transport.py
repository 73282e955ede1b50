"""WebRtcTransport over 127.0.0.1 with real sockets, driven by the trio client.

Every test is bounded with ``trio.fail_after``; the timer tests run on trio's MockClock
(the ``autojump_clock`` fixture), so they take virtual, not real, seconds.
"""

from __future__ import annotations

import os
import socket as stdlib_socket
import struct
from typing import Any

import pytest
import trio
import trio.testing

from tests.conftest import open_sockets
from tests.transport_helpers import (
    attach,
    open_pair,
    rtcp_receiver_report,
    rtp_packet,
    task_names,
)
from trio_sfu.dtls import DtlsCertificate, DtlsEndpoint, Fingerprint
from trio_sfu.engine.rtc_sockets import SEND_WOULD_BLOCK
from trio_sfu.engine.webrtc_transport import WebRtcTransport
from trio_sfu.errors import InvalidStateError
from trio_sfu.ice import IceControllingClient, host_candidate_priority
from trio_sfu.ortc.types import DtlsFingerprint, DtlsParameters
from trio_sfu.srtp import SrtpSession
from trio_sfu.stun import build_binding_request

GCM = "SRTP_AEAD_AES_128_GCM"
AES_CM = "SRTP_AES128_CM_SHA1_80"


@pytest.fixture(scope="module")
def certificate() -> DtlsCertificate:
    return DtlsCertificate.generate()


def dropped(transport: WebRtcTransport, cause: str) -> int:
    value: int = transport.stats()["dropped"][cause]
    return value


async def exchange_media(pair: Any, *, rtp: int, rtcp: int, base: int = 0) -> None:
    """Send ``rtp`` RTP and ``rtcp`` RTCP packets each way; assert every one arrives intact
    and in order. Sends in bursts and waits for each burst (loopback buffers are finite)."""
    server, client, received = pair.server, pair.client, pair.server_received
    start_rtp, start_rtcp = len(received.rtp), len(received.rtcp)

    # Client -> server.
    for first in range(0, rtp, 50):
        sent = [rtp_packet(base + i) for i in range(first, min(first + 50, rtp))]
        for packet in sent:
            assert client.send_rtp(packet)
        goal = start_rtp + first + len(sent)
        await received.wait_for(lambda goal=goal: len(received.rtp) >= goal)
    for first in range(0, rtcp, 20):
        sent = [rtcp_receiver_report(base + i) for i in range(first, min(first + 20, rtcp))]
        for packet in sent:
            assert client.send_rtcp(packet)
        goal = start_rtcp + first + len(sent)
        await received.wait_for(lambda goal=goal: len(received.rtcp) >= goal)
    assert received.rtp[start_rtp:] == [rtp_packet(base + i) for i in range(rtp)]
    assert received.rtcp[start_rtcp:] == [rtcp_receiver_report(base + i) for i in range(rtcp)]

    # Server -> client.
    for first in range(0, rtp, 100):
        expected = [rtp_packet(base + i, ssrc=0xCAFE) for i in range(first, min(first + 100, rtp))]
        for packet in expected:
            assert server.send_rtp_nowait(packet)
        for packet in expected:
            assert await client.receive_rtp() == packet
    expected = [rtcp_receiver_report(base + i, ssrc=0xBEEF) for i in range(rtcp)]
    for packet in expected:
        assert server.send_rtcp_nowait(packet)
    for packet in expected:
        assert await client.receive_rtcp() == packet


# ---- media -------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
async def test_media_flows_both_ways(protocol: str, certificate: DtlsCertificate) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate, protocol=protocol) as pair:
                server, client = pair.server, pair.client
                assert server.ice_state == "connected"
                assert server.dtls_state == "connected"
                assert server.ice_selected_tuple == (protocol, client.local_address)
                assert server.selected_srtp_profile == GCM
                assert client.selected_srtp_profile == GCM
                await exchange_media(pair, rtp=1000, rtcp=100)
                stats = server.stats()
                assert stats["rtp_packets_in"] == 1000
                assert stats["rtcp_packets_in"] == 100
                assert stats["rtp_packets_out"] == 1000
                assert stats["rtcp_packets_out"] == 100
                assert stats["srtp_profile"] == GCM
                assert all(count == 0 for count in stats["dropped"].values()), stats
                assert client.rtp_packets_in == 1000
                assert client.rtcp_packets_in == 100
                assert client.stats()["dropped"]["srtp"] == 0
                # connect() and the first check race; the handshake needs both.
                states = pair.server_received.states
                assert sorted(states[:2]) == [("dtls", "connecting"), ("ice", "connected")]
                assert states[2:] == [("dtls", "connected")]
            nursery.cancel_scope.cancel()


async def test_dtls_is_released_once_the_peer_sends_srtp_and_still_says_goodbye(
    certificate: DtlsCertificate,
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate) as pair:
                server, client = pair.server, pair.client
                assert not server.stats()["dtls_released"]  # nothing from the peer yet
                await exchange_media(pair, rtp=3, rtcp=1)
                assert server.stats()["dtls_released"]  # the peer's keys worked
                assert server.dtls_state == "connected"
                await exchange_media(pair, rtp=50, rtcp=5, base=3)  # media unaffected
                server.close("bye")
                # The close_notify made at the release reaches the client.
                with trio.fail_after(5):
                    while client.dtls_state != "closed":  # noqa: ASYNC110 (no event for it)
                        await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


async def test_dtls_is_released_after_a_while_without_media(
    certificate: DtlsCertificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_sfu.engine import webrtc_transport

    monkeypatch.setattr(webrtc_transport, "DTLS_RELEASE_AFTER", 0.2)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate) as pair:
                assert not pair.server.stats()["dtls_released"]
                await trio.sleep(0.5)  # nothing from the client: the timer releases it
                assert pair.server.stats()["dtls_released"]
                await exchange_media(pair, rtp=20, rtcp=2)  # and media is unaffected
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
async def test_aes_cm_when_the_client_offers_only_that(
    protocol: str, certificate: DtlsCertificate
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(
                nursery, certificate, protocol=protocol, client_profiles=[AES_CM]
            ) as pair:
                assert pair.server.selected_srtp_profile == AES_CM
                assert pair.client.selected_srtp_profile == AES_CM
                await exchange_media(pair, rtp=100, rtcp=10)
            nursery.cancel_scope.cancel()


async def test_dtls_before_connect_is_kept_for_connect(certificate: DtlsCertificate) -> None:
    # The browser's ClientHello often beats rtc:connectTransport to the server.
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate, connect=False) as pair:
                server, received = pair.server, pair.server_received
                await received.wait_for(lambda: ("ice", "connected") in received.states)
                for _ in range(2000):
                    if server.stats()["dtls_in"]:
                        break
                    await trio.sleep(0.001)
                assert server.stats()["dtls_in"] >= 1
                assert server.dtls_state == "new"
                server.connect(pair.client.dtls_parameters)
                await pair.client.wait_connected()
                await exchange_media(pair, rtp=10, rtcp=2)
            nursery.cancel_scope.cancel()


async def test_egress_before_srtp_and_when_full_drops_and_counts(
    certificate: DtlsCertificate,
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate, connect=False, egress_queue_size=4) as pair:
                server = pair.server
                assert not server.send_rtp_nowait(rtp_packet(1))
                assert not server.send_rtcp_nowait(rtcp_receiver_report(1))
                assert dropped(server, "egress_not_ready") == 2
                server.connect(pair.client.dtls_parameters)
                await pair.client.wait_connected()
                await pair.server_received.wait_for(lambda: server.dtls_state == "connected")
                # A kernel buffer that takes nothing now: packets go through the queue.
                udp = server._udp
                assert udp is not None
                udp.try_sendto = lambda data, address: SEND_WOULD_BLOCK  # type: ignore[method-assign]
                # No checkpoint in between: the egress task that the first one starts has
                # not run yet, so 4 fill the queue and the rest are dropped.
                results = [server.send_rtp_nowait(rtp_packet(i)) for i in range(7)]
                assert results == [True] * 4 + [False] * 3
                assert dropped(server, "egress_full") == 3
                for i in range(4):
                    assert await pair.client.receive_rtp() == rtp_packet(i)
            nursery.cancel_scope.cancel()


async def test_egress_sends_at_once_and_keeps_order_behind_a_queue(
    certificate: DtlsCertificate,
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate, egress_queue_size=16) as pair:
                server = pair.server
                await pair.client.wait_connected()
                await pair.server_received.wait_for(lambda: server.dtls_state == "connected")
                udp = server._udp
                assert udp is not None
                sent_before = udp.send_would_block
                await trio.testing.wait_all_tasks_blocked()
                tasks_before = task_names()
                # The socket takes the datagram: it is protected and sent in this call,
                # nothing is queued (the client can read it before any checkpoint of ours).
                assert server.send_rtp_nowait(rtp_packet(100))
                assert server._queued == 0 and server._egress_send is None
                assert server.stats()["rtp_packets_out"] == 1
                assert await pair.client.receive_rtp() == rtp_packet(100)
                # The kernel refuses the next one: it waits in the queue, protected. The
                # socket takes datagrams again at once, yet the four after it queue behind
                # it instead of overtaking (the socket is not even asked).
                real = udp.try_sendto
                refusals = [SEND_WOULD_BLOCK]
                udp.try_sendto = lambda data, address: (  # type: ignore[method-assign]
                    refusals.pop() if refusals else real(data, address)
                )
                assert all(server.send_rtp_nowait(rtp_packet(101 + i)) for i in range(5))
                assert server._queued == 5 and not refusals
                assert server._egress_send is not None  # a queue, and a task to drain it
                for i in range(5):
                    assert await pair.client.receive_rtp() == rtp_packet(101 + i)
                await trio.testing.wait_all_tasks_blocked()
                assert server._queued == 0
                # Drained: the queue and its task are gone again.
                assert server._egress_send is None
                assert task_names() == tasks_before
                assert server.stats()["rtp_packets_out"] == 6
                assert udp.send_would_block == sent_before
                # Once the queue is empty, packets go out at once again.
                assert server.send_rtp_nowait(rtp_packet(106))
                assert server._queued == 0
                assert await pair.client.receive_rtp() == rtp_packet(106)
            nursery.cancel_scope.cancel()


# ---- bad input ----------------------------------------------------------------------------


async def test_wrong_fingerprint_closes_the_transport(certificate: DtlsCertificate) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate, connect=False) as pair:
                server, received = pair.server, pair.server_received
                real = pair.client.dtls_parameters.fingerprints[0]
                # Same algorithm, last byte changed: the client's certificate cannot match.
                wrong = real.value[:-2] + ("00" if real.value[-2:] != "00" else "01")
                server.connect(
                    DtlsParameters(
                        fingerprints=[DtlsFingerprint(algorithm=real.algorithm, value=wrong)],
                        role="client",
                    )
                )
                await received.wait_for(lambda: received.closed)
                assert len(received.closed) == 1
                reason = received.closed[0]
                assert reason.startswith("dtls_failed")
                assert "fingerprint" in reason.lower()
                assert server.closed
                assert server.dtls_state == "failed"
                assert ("dtls", "failed") in received.states
                # No SRTP keys were ever derived: media from the client goes nowhere.
                assert not pair.client.connected
            nursery.cancel_scope.cancel()


async def test_stun_with_bad_integrity_gets_no_answer(certificate: DtlsCertificate) -> None:
    with trio.fail_after(10):
        server = WebRtcTransport(transport_id="t1", certificate=certificate)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            udp = server.ice_candidates[0]
            assert udp.protocol == "udp"
            ufrag = server.ice_parameters.username_fragment
            with trio.socket.socket(type=stdlib_socket.SOCK_DGRAM) as sock:
                await sock.bind(("127.0.0.1", 0))
                # Right USERNAME, integrity keyed with a wrong password.
                bad, _ = build_binding_request(
                    username=f"{ufrag}:peer",
                    password=b"not-the-password-of-this-transport",
                    priority=host_candidate_priority("udp"),
                    ice_controlling_tiebreaker=1,
                    use_candidate=True,
                )
                await sock.sendto(bad, (udp.ip, udp.port))
                with trio.move_on_after(0.3) as waited:
                    await sock.recv(2048)
                assert waited.cancelled_caught, "a request with bad integrity was answered"
                assert dropped(server, "bad_stun") == 1
                assert server.stats()["stun_answered"] == 0
                assert server.ice_state == "new"
                # The same request with the right password is answered: the test can fail.
                good, transaction_id = build_binding_request(
                    username=f"{ufrag}:peer",
                    password=server.ice_parameters.password,
                    priority=host_candidate_priority("udp"),
                    ice_controlling_tiebreaker=1,
                    use_candidate=True,
                )
                await sock.sendto(good, (udp.ip, udp.port))
                answer = await sock.recv(2048)
                # Binding success response (0x0101), magic cookie, our transaction id.
                assert answer[:2] == b"\x01\x01"
                assert answer[4:8] == bytes.fromhex("2112a442")
                assert answer[8:20] == transaction_id
            server.close()


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
async def test_garbage_is_counted_and_media_keeps_flowing(
    protocol: str, certificate: DtlsCertificate
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate, protocol=protocol) as pair:
                server, client, received = pair.server, pair.client, pair.server_received
                await exchange_media(pair, rtp=10, rtcp=2)
                before = server.stats()["packets_in"]

                # From the client's own (validated) address:
                unknown = [
                    b"A" + os.urandom(99),  # random bytes, first byte 65: no RFC 7983 range
                    b"\xff" + os.urandom(50),
                ]
                if protocol == "udp":
                    unknown.append(b"")  # an empty datagram (TCP skips empty frames)
                bad_stun = [
                    # A Binding request header claiming 80 bytes of attributes, 6 present.
                    bytes.fromhex("0001 0050 2112a442") + os.urandom(6),
                    bytes.fromhex("0001 0000 2112a442"),  # cut inside the transaction id
                ]
                dtls_noise = [
                    # An application_data record (23), DTLS 1.2, epoch 1, seq 99, whose
                    # length field says 32 bytes where 10 follow.
                    bytes.fromhex("17 fefd 0001 000000000063 0020") + os.urandom(10),
                    # A record header cut short.
                    bytes.fromhex("16 fefd 0000"),
                ]
                # A well-framed application_data record that decrypts to nothing: OpenSSL
                # discards it silently (RFC 6347 §4.1.2.7), so it is not counted as noise.
                dtls_discarded = bytes.fromhex("17 fefd 0001 000000000064 0020") + os.urandom(32)
                # Random bytes in the SRTP range (V=2, PT 96): authentication fails.
                srtp_garbage = [b"\x80\x60" + os.urandom(100)]
                dtls_before = server.stats()["dtls_in"]
                for item in [*unknown, *bad_stun, *dtls_noise, dtls_discarded, *srtp_garbage]:
                    client.send_raw(item)

                # SRTP with a bad tag: a real protected packet, last byte flipped.
                protected = client._srtp.protect_rtp(rtp_packet(7, ssrc=0x77777777))
                client.send_raw(protected[:-1] + bytes([protected[-1] ^ 0x01]))
                # SRTCP with a bad tag.
                protected_rtcp = client._srtp.protect_rtcp(rtcp_receiver_report(3, ssrc=0x7777))
                client.send_raw(protected_rtcp[:-1] + bytes([protected_rtcp[-1] ^ 0x80]))

                # Then the intact packet: accepted, so the tag flip alone was the problem.
                client.send_raw(protected)
                await received.wait_for(lambda: rtp_packet(7, ssrc=0x77777777) in received.rtp)

                count = len(unknown + bad_stun + dtls_noise + srtp_garbage) + 1 + 3
                assert server.stats()["packets_in"] - before == count
                assert server.stats()["dtls_in"] - dtls_before == len(dtls_noise) + 1
                assert dropped(server, "unknown") == len(unknown)
                assert dropped(server, "bad_stun") == len(bad_stun)
                assert dropped(server, "dtls_noise") == len(dtls_noise)
                assert dropped(server, "srtp_auth") == 2 + len(srtp_garbage)
                assert not server.closed
                assert server.dtls_state == "connected"
                await exchange_media(pair, rtp=100, rtcp=10, base=1000)
            nursery.cancel_scope.cancel()


async def test_media_from_unvalidated_addresses_is_dropped(certificate: DtlsCertificate) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate) as pair:
                server, client, received = pair.server, pair.client, pair.server_received
                udp = server.ice_candidates[0]
                protected = client._srtp.protect_rtp(rtp_packet(1, ssrc=0x12121212))
                with trio.socket.socket(type=stdlib_socket.SOCK_DGRAM) as sock:
                    await sock.bind(("127.0.0.1", 0))
                    # A valid SRTP packet, a DTLS record and garbage from a stranger.
                    await sock.sendto(protected, (udp.ip, udp.port))
                    await sock.sendto(
                        bytes.fromhex("16 fefd 0000 000000000000 0000"), (udp.ip, udp.port)
                    )
                    await sock.sendto(b"\x80\x60" + os.urandom(30), (udp.ip, udp.port))
                    # Then the client's media, which arrives after them (one socket, FIFO).
                    client.send_rtp(rtp_packet(2))
                    await received.wait_for(lambda: rtp_packet(2) in received.rtp)
                assert rtp_packet(1, ssrc=0x12121212) not in received.rtp
                assert dropped(server, "not_validated") == 3
            nursery.cancel_scope.cancel()


async def test_media_to_a_closed_tcp_tuple_is_dropped_not_sent_over_udp(
    certificate: DtlsCertificate,
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate, protocol="tcp") as pair:
                server, client = pair.server, pair.client
                await exchange_media(pair, rtp=5, rtcp=1)
                address = client.local_address
                assert server.ice_selected_tuple == ("tcp", address)
                client._tcp.close()  # the connection drops (no DTLS close_notify)
                for _ in range(2000):
                    if server.stats()["tcp_connections"] == 0:
                        break
                    await trio.sleep(0.001)
                assert server.stats()["tcp_connections"] == 0
                # The selected tuple is gone: ICE is disconnected at once (not 30 s later).
                assert server.ice_state == "disconnected"
                # A UDP socket on the TCP tuple's port: nothing may arrive there.
                with trio.socket.socket(type=stdlib_socket.SOCK_DGRAM) as sock:
                    await sock.bind(address)
                    drops = sum(server.stats()["dropped"].values())
                    server.send_rtp_nowait(rtp_packet(1))
                    with trio.move_on_after(0.2) as waited:
                        await sock.recv(2048)
                    assert waited.cancelled_caught
                    assert sum(server.stats()["dropped"].values()) == drops + 1
            nursery.cancel_scope.cancel()


async def test_selected_tuple_follows_the_latest_nomination(certificate: DtlsCertificate) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate) as pair:
                server, client = pair.server, pair.client
                udp = server.ice_candidates[0]
                with trio.socket.socket(type=stdlib_socket.SOCK_DGRAM) as other:
                    await other.bind(("127.0.0.1", 0))
                    # A valid nominating check from another address (a NAT rebinding, say).
                    request, _ = build_binding_request(
                        username=f"{server.ice_parameters.username_fragment}:peer",
                        password=server.ice_parameters.password,
                        priority=host_candidate_priority("udp"),
                        ice_controlling_tiebreaker=1,
                        use_candidate=True,
                    )
                    await other.sendto(request, (udp.ip, udp.port))
                    answer = await other.recv(2048)
                    assert answer[:2] == b"\x01\x01"  # Binding success
                    assert server.ice_selected_tuple == ("udp", other.getsockname())
                    # Media now goes there (SRTP: V=2 first byte, 1200 + 16-byte GCM tag).
                    assert server.send_rtp_nowait(rtp_packet(1))
                    media = await other.recv(2048)
                    assert media[0] == 0x80 and len(media) == 1200 + 16
                    # The client's next check nominates its own address again.
                    client.restart_ice(server.ice_parameters)  # same credentials: a new check
                    for _ in range(2000):
                        if server.ice_selected_tuple == ("udp", client.local_address):
                            break
                        await trio.sleep(0.001)
                    assert server.ice_selected_tuple == ("udp", client.local_address)
                    await exchange_media(pair, rtp=10, rtcp=2)
            nursery.cancel_scope.cancel()


async def test_a_bug_in_a_callback_closes_only_the_transport(certificate: DtlsCertificate) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate) as pair:
                server, client, received = pair.server, pair.client, pair.server_received

                def broken(packet: bytes, arrival: float) -> None:
                    raise RuntimeError("bug in the owner's callback")

                server.on_rtp = broken
                client.send_rtp(rtp_packet(1))
                await received.wait_for(lambda: received.closed)
                assert received.closed == ["internal_error"]
                assert server.closed
            # The owner's nursery did not crash: we got here.
            nursery.cancel_scope.cancel()


async def test_ipv6(certificate: DtlsCertificate) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate, listen_ip="::1") as pair:
                assert pair.server.ice_candidates[0].ip == "::1"
                assert pair.server.ice_selected_tuple == ("udp", pair.client.local_address)
                await exchange_media(pair, rtp=20, rtcp=2)
            nursery.cancel_scope.cancel()


async def test_we_are_the_dtls_client_when_the_peer_is_the_server(
    certificate: DtlsCertificate,
) -> None:
    # A peer that answers with role "server" (e.g. a browser answering with
    # a=setup:passive): our transport starts the handshake once ICE selected its tuple.
    with trio.fail_after(20):
        server = WebRtcTransport(transport_id="t1", certificate=certificate, enable_tcp=False)
        received = attach(server)
        peer_certificate = DtlsCertificate.generate()
        peer_dtls = DtlsEndpoint(certificate=peer_certificate, role="server")
        peer_dtls.set_remote_fingerprints(
            [Fingerprint(fp.algorithm, fp.value) for fp in server.dtls_parameters.fingerprints]
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            server.connect(
                DtlsParameters(
                    fingerprints=[
                        DtlsFingerprint(algorithm="sha-256", value=fp.value)
                        for fp in peer_certificate.fingerprints()
                        if fp.algorithm == "sha-256"
                    ],
                    role="server",
                )
            )
            assert server.dtls_state == "connecting"
            udp = server.ice_candidates[0]
            target = (udp.ip, udp.port)
            ice = IceControllingClient(
                remote_ufrag=server.ice_parameters.username_fragment,
                remote_password=server.ice_parameters.password,
            )
            with trio.socket.socket(type=stdlib_socket.SOCK_DGRAM) as sock:
                await sock.bind(("127.0.0.1", 0))
                await sock.sendto(ice.start_check(trio.current_time()), target)
                while peer_dtls.state != "connected":
                    data = await sock.recv(4096)
                    now = trio.current_time()
                    if data[0] <= 3:
                        assert ice.receive_stun_untrusted(data, now)
                    else:
                        assert 20 <= data[0] <= 63  # our transport sent DTLS first
                        for datagram in peer_dtls.receive_untrusted(data, now):
                            await sock.sendto(datagram, target)
                await received.wait_for(lambda: server.dtls_state == "connected")
                assert peer_dtls.srtp_keys is not None
                peer_srtp = SrtpSession(peer_dtls.srtp_keys)
                await sock.sendto(peer_srtp.protect_rtp(rtp_packet(5)), target)
                await received.wait_for(lambda: received.rtp)
                assert received.rtp == [rtp_packet(5)]
                assert server.send_rtp_nowait(rtp_packet(6))
                assert peer_srtp.unprotect_rtp_untrusted(await sock.recv(4096)) == rtp_packet(6)
            server.close()


# ---- timers (MockClock) ---------------------------------------------------------------------


async def test_consent_timeout_disconnects_then_closes(
    certificate: DtlsCertificate, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate) as pair:
                server, client, received = pair.server, pair.client, pair.server_received
                # Consent checks go out every 5 s: a minute of virtual time stays connected.
                await trio.sleep(60)
                assert server.ice_state == "connected"
                assert not received.closed
                await exchange_media(pair, rtp=5, rtcp=1)

                client.consent_refresh = False
                stopped = trio.current_time()
                await received.wait_for(lambda: ("ice", "disconnected") in received.states)
                disconnected = trio.current_time()
                # The last check got through at most 5 s before we stopped; 30 s from there.
                assert 25 <= disconnected - stopped <= 30.5
                assert not server.closed
                await received.wait_for(lambda: received.closed)
                closed = trio.current_time()
                assert 9.5 <= closed - disconnected <= 10.5  # close_timeout 40 s
                assert received.closed == ["consent_timeout"]
                assert "consent" in received.closed[0]
                assert server.closed
                assert received.states[-2:] == [("ice", "disconnected"), ("ice", "closed")]
                assert not server.send_rtp_nowait(rtp_packet(1))
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
async def test_ice_restart_keeps_media_on_the_old_tuple(
    protocol: str, certificate: DtlsCertificate, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate, protocol=protocol) as pair:
                server, client = pair.server, pair.client
                old = server.ice_parameters
                new = server.restart_ice()
                assert new == server.ice_parameters
                assert new.username_fragment != old.username_fragment
                assert new.password != old.password
                assert new.ice_lite

                # The client still checks with the old credentials: dropped, but media
                # keeps flowing on the old tuple meanwhile.
                dropped_before = dropped(server, "bad_stun")
                for _ in range(12):  # the next consent check comes within 5 s
                    if dropped(server, "bad_stun") > dropped_before:
                        break
                    await trio.sleep(0.5)
                assert dropped(server, "bad_stun") > dropped_before
                await exchange_media(pair, rtp=50, rtcp=5)
                assert server.ice_state == "connected"

                answered = server.stats()["stun_answered"]
                client.restart_ice(new)
                await trio.sleep(1)
                assert server.stats()["stun_answered"] > answered
                await exchange_media(pair, rtp=50, rtcp=5, base=100)
                # Consent is refreshed with the new credentials: still up long after 40 s.
                await trio.sleep(60)
                assert server.ice_state == "connected"
                assert not server.closed
                await exchange_media(pair, rtp=20, rtcp=2, base=200)
            nursery.cancel_scope.cancel()


# ---- life cycle -----------------------------------------------------------------------------


async def test_close_leaves_no_task_and_no_socket(certificate: DtlsCertificate) -> None:
    with trio.fail_after(20):
        tasks_before = task_names()
        sockets_before = open_sockets()
        # No cancel at the end: the nursery exits only if server.run() returned by itself.
        async with (
            trio.open_nursery() as nursery,
            open_pair(nursery, certificate, protocol="tcp") as pair,
        ):
            server, received = pair.server, pair.server_received
            await exchange_media(pair, rtp=5, rtcp=1)
            assert len(open_sockets() - sockets_before) >= 4  # udp, listener, 2 tcp ends
            server.close("bye")
            server.close("again")  # idempotent
            assert received.closed == ["bye"]
            assert server.closed
            # Closed at once, before any checkpoint: only the client's socket remains.
            assert len(open_sockets() - sockets_before) == 1
            assert server.dtls_state == "closed"
            with pytest.raises(InvalidStateError):
                server.connect(pair.client.dtls_parameters)
            with pytest.raises(InvalidStateError):
                server.restart_ice()
        assert open_sockets() == sockets_before
        assert task_names() == tasks_before


async def test_cancelling_the_owner_closes_everything(certificate: DtlsCertificate) -> None:
    with trio.fail_after(20):
        tasks_before = task_names()
        sockets_before = open_sockets()
        server = WebRtcTransport(transport_id="t2", certificate=certificate)
        received = attach(server)
        with trio.CancelScope() as owner:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                assert len(open_sockets() - sockets_before) == 2
                owner.cancel()
        assert owner.cancelled_caught
        assert server.closed
        assert received.closed == ["cancelled"]
        assert open_sockets() == sockets_before
        assert task_names() == tasks_before


async def test_close_before_run(certificate: DtlsCertificate) -> None:
    with trio.fail_after(5):
        server = WebRtcTransport(transport_id="t3", certificate=certificate)
        received = attach(server)
        server.close()
        assert received.closed == ["closed"]
        async with trio.open_nursery() as nursery:
            with pytest.raises(InvalidStateError):
                await nursery.start(server.run)


# ---- parameters and configuration -----------------------------------------------------------


async def test_parameters_and_candidates(certificate: DtlsCertificate) -> None:
    with trio.fail_after(5):
        server = WebRtcTransport(
            transport_id="t4",
            certificate=certificate,
            listen_ip="0.0.0.0",
            announced_ip="203.0.113.7",
            port_range=(41000, 41999),
            app_data={"peer": "p1"},
        )
        assert server.id == "t4"
        assert server.app_data == {"peer": "p1"}
        assert server.ice_parameters.ice_lite is True
        assert len(server.ice_parameters.username_fragment) >= 4
        assert len(server.ice_parameters.password) >= 22
        assert server.dtls_parameters.role == "auto"
        assert [fp.algorithm for fp in server.dtls_parameters.fingerprints] == [
            "sha-256",
            "sha-384",
            "sha-512",
        ]
        # sha-256: 32 bytes as upper-case colon-separated hex.
        sha256 = server.dtls_parameters.fingerprints[0].value
        assert len(sha256) == 32 * 3 - 1 and sha256 == sha256.upper() and sha256[2] == ":"
        assert server.ice_candidates == []
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            udp, tcp = server.ice_candidates
            assert (udp.protocol, udp.type, udp.tcp_type) == ("udp", "host", None)
            assert (tcp.protocol, tcp.type, tcp.tcp_type) == ("tcp", "host", "passive")
            for candidate in (udp, tcp):
                assert candidate.ip == candidate.address == "203.0.113.7"
                assert 41000 <= candidate.port <= 41999
            # RFC 8445 §5.1.2.1 with type preference 126 (host), component 1:
            # UDP local preference 65535, TCP 32767 - UDP first.
            assert udp.priority == (126 << 24) + (65535 << 8) + 255 == 2130706431
            assert tcp.priority == (126 << 24) + (32767 << 8) + 255
            assert udp.priority > tcp.priority
            server.close()


async def test_tcp_preferred_and_single_protocol(certificate: DtlsCertificate) -> None:
    with trio.fail_after(5):
        prefer_tcp = WebRtcTransport(transport_id="a", certificate=certificate, prefer_udp=False)
        udp_only = WebRtcTransport(transport_id="b", certificate=certificate, enable_tcp=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(prefer_tcp.run)
            await nursery.start(udp_only.run)
            udp, tcp = prefer_tcp.ice_candidates
            assert tcp.priority > udp.priority
            assert [c.protocol for c in udp_only.ice_candidates] == ["udp"]
            prefer_tcp.close()
            udp_only.close()


def test_configuration_errors(certificate: DtlsCertificate) -> None:
    with pytest.raises(ValueError, match="announced_ip"):
        WebRtcTransport(transport_id="x", certificate=certificate, listen_ip="0.0.0.0")
    with pytest.raises(ValueError, match="announced_ip"):
        WebRtcTransport(transport_id="x", certificate=certificate, listen_ip="::")
    with pytest.raises(ValueError, match="not an IP"):
        WebRtcTransport(transport_id="x", certificate=certificate, listen_ip="localhost")
    with pytest.raises(ValueError):
        WebRtcTransport(
            transport_id="x", certificate=certificate, enable_udp=False, enable_tcp=False
        )
    with pytest.raises(ValueError):
        WebRtcTransport(transport_id="x", certificate=certificate, port_range=(5000, 10))


async def test_no_free_port_is_a_start_up_error(certificate: DtlsCertificate) -> None:
    with trio.fail_after(5):
        first = WebRtcTransport(
            transport_id="a", certificate=certificate, port_range=(42000, 42000)
        )
        second = WebRtcTransport(
            transport_id="b", certificate=certificate, port_range=(42000, 42000)
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            with pytest.raises(OSError):
                await nursery.start(second.run)
            assert second.closed
            first.close()


async def test_connect_twice_is_an_invalid_state(certificate: DtlsCertificate) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_pair(nursery, certificate) as pair:
                with pytest.raises(InvalidStateError):
                    pair.server.connect(pair.client.dtls_parameters)
            nursery.cancel_scope.cancel()


def test_rtcp_receiver_report_helper_layout() -> None:
    # The helper's RR against RFC 3550 §6.4.2 by hand: 8 words, RC=1, PT=201.
    packet = rtcp_receiver_report(5, ssrc=0x01020304)
    assert packet[:8] == bytes.fromhex("81 c9 0007 01020304")
    assert len(packet) == 32
    assert struct.unpack("!I", packet[8:12])[0] == 0xA0000005
    assert rtp_packet(3)[:12] == bytes.fromhex("80 60 0003 0000010e 11223344")


def test_per_transport_objects_have_no_instance_dict(certificate: DtlsCertificate) -> None:
    # One of each per transport: slots keep them small (an instance dict of some 60
    # attributes costs a transport over 1 KiB). What owners assign still works.
    transport = WebRtcTransport(transport_id="t", certificate=certificate)
    assert not hasattr(transport, "__dict__")
    transport.on_rtp = transport.on_rtcp = lambda packet, arrival: None
    transport.on_state = lambda layer, state: None
    transport.on_closed = lambda reason: None
    transport.app_data["peer"] = "p"
    with pytest.raises(AttributeError):
        transport.not_an_attribute = 1  # type: ignore[attr-defined]
    endpoint = DtlsEndpoint(certificate=certificate, role="server")
    assert not hasattr(endpoint, "__dict__")
    assert not hasattr(transport._ice, "__dict__")
