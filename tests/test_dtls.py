"""DTLS-SRTP through trio_sfu.dtls: a client and a server endpoint paired in memory.

No sockets and no mocks: datagrams are shuttled between two real endpoints (as h11's
tests pair a client and a server), and time is a number the test advances by hand.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_sfu.dtls import (
    HANDSHAKE_TIMEOUT,
    DtlsCertificate,
    DtlsEndpoint,
    DtlsError,
    Fingerprint,
    _decode_flight_trusted,
    _fragments_untrusted,
    _HandshakeMessage,
    _OpaqueRecord,
    _PlainRecord,
    _records_untrusted,
    _strip_retransmission,
    split_srtp_keying_material,
)
from trio_sfu.errors import BadPacket, InvalidStateError
from trio_sfu.srtp import SrtpSession

GCM = "SRTP_AEAD_AES_128_GCM"
CM = "SRTP_AES128_CM_SHA1_80"

CLIENT_CERT = DtlsCertificate.generate(common_name="test-client")
SERVER_CERT = DtlsCertificate.generate(common_name="test-server")
OTHER_CERT = DtlsCertificate.generate(common_name="somebody-else")

Drop = Callable[[str, int, bytes], bool]  # (sender role, flight number, datagram) -> drop?


class Pair:
    """A client and a server endpoint and the link between them."""

    def __init__(
        self,
        *,
        client_profiles: tuple[str, ...] = (GCM, CM),
        server_profiles: tuple[str, ...] = (GCM, CM),
        client_knows: list[Fingerprint] | None = None,
        server_knows: list[Fingerprint] | None = None,
        server_fingerprints_late: bool = False,
        mtu: int = 1200,
    ) -> None:
        self.client = DtlsEndpoint(
            certificate=CLIENT_CERT, role="client", srtp_profiles=client_profiles, mtu=mtu
        )
        self.server = DtlsEndpoint(
            certificate=SERVER_CERT, role="server", srtp_profiles=server_profiles, mtu=mtu
        )
        self.client.set_remote_fingerprints(client_knows or SERVER_CERT.fingerprints())
        if not server_fingerprints_late:
            self.server.set_remote_fingerprints(server_knows or CLIENT_CERT.fingerprints())
        self.now = 0.0
        self.sent: list[tuple[str, bytes]] = []

    def other(self, endpoint: DtlsEndpoint) -> DtlsEndpoint:
        return self.server if endpoint is self.client else self.client

    def deliver(
        self, sender: DtlsEndpoint, datagrams: list[bytes], drop: Drop | None = None
    ) -> None:
        """Send datagrams from ``sender`` and shuttle every answer until the link is quiet."""
        queue = [(sender, datagram) for datagram in datagrams]
        flight = 0
        while queue:
            flight += 1
            next_queue = []
            for source, datagram in queue:
                self.sent.append((source.role, datagram))
                assert len(datagram) <= source.mtu
                if drop is not None and drop(source.role, flight, datagram):
                    continue
                target = self.other(source)
                next_queue += [
                    (target, answer) for answer in target.receive_untrusted(datagram, self.now)
                ]
            queue = next_queue

    def handshake(self, drop: Drop | None = None) -> None:
        self.deliver(self.client, self.client.start(self.now), drop)

    def tick(self, now: float) -> None:
        """Advance time; run both endpoints' timers and deliver what they send."""
        self.now = now
        for endpoint in (self.client, self.server):
            deadline = endpoint.next_deadline(now)
            if deadline is not None and deadline <= now:
                self.deliver(endpoint, endpoint.handle_timeout(now))


def rtp(seq: int, ssrc: int = 0x11223344) -> bytes:
    return struct.pack("!BBHII", 0x80, 111, seq, seq * 960, ssrc) + os.urandom(60)


RTCP_RR = bytes.fromhex("80c9000111223344")  # empty receiver report (RFC 3550 6.4.2)


def assert_srtp_works(pair: Pair) -> None:
    assert pair.client.srtp_keys is not None and pair.server.srtp_keys is not None
    client = SrtpSession(pair.client.srtp_keys)
    server = SrtpSession(pair.server.srtp_keys)
    for seq in range(3):
        packet = rtp(seq)
        assert server.unprotect_rtp_untrusted(client.protect_rtp(packet)) == packet
        assert client.unprotect_rtp_untrusted(server.protect_rtp(packet)) == packet
    assert server.unprotect_rtcp_untrusted(client.protect_rtcp(RTCP_RR)) == RTCP_RR
    assert client.unprotect_rtcp_untrusted(server.protect_rtcp(RTCP_RR)) == RTCP_RR


# --- record framing, checked by hand against RFC 6347 -----------------------------------


def test_record_framing_vectors() -> None:
    datagram = bytes.fromhex(
        # ChangeCipherSpec record (RFC 6347 4.1)
        "14"  # content type 20 change_cipher_spec
        "fefd"  # version DTLS 1.2
        "0000"  # epoch 0
        "000000000005"  # sequence number 5
        "0001"  # length 1
        "01"  # the ChangeCipherSpec message
        # An encrypted record in epoch 1: opaque to us
        "17"  # content type 23 application_data
        "fefd"  # version
        "0001"  # epoch 1
        "000000000000"  # sequence number 0
        "0004"  # length 4
        "deadbeef"
    )
    ccs, data = _records_untrusted(datagram)
    assert (ccs.content_type, ccs.version, ccs.epoch, ccs.payload) == (20, 0xFEFD, 0, b"\x01")
    assert (data.content_type, data.epoch, data.payload) == (23, 1, bytes.fromhex("deadbeef"))
    assert data.raw == datagram[14:]


def test_handshake_fragment_vector() -> None:
    payload = bytes.fromhex(
        # first fragment: ClientHello (RFC 6347 4.2.2 Handshake header)
        "01"  # msg_type 1 client_hello
        "000010"  # length 16 (the whole message)
        "0000"  # message_seq 0
        "000000"  # fragment_offset 0
        "000004"  # fragment_length 4
        "fefd0102"  # 4 body bytes
        # second fragment in the same record: the next 12 bytes of the same message
        "01"
        "000010"
        "0000"
        "000004"
        "00000c" + "ab" * 12
    )
    first, second = _fragments_untrusted(payload)
    assert (first.msg_type, first.msg_len, first.msg_seq, first.offset) == (1, 16, 0, 0)
    assert first.body == bytes.fromhex("fefd0102")
    assert (second.offset, second.body) == (4, b"\xab" * 12)
    # a fragment that claims more bytes than the message has
    with pytest.raises(BadPacket):
        _fragments_untrusted(bytes.fromhex("01000004000000000200000400000000"))


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        bytes.fromhex("14fefd0000000000000005"),  # header cut short
        bytes.fromhex("14fefd000000000000000500020101"[:-2]),  # payload shorter than length
        bytes.fromhex("18fefd0000000000000005000101"),  # content type 24: not ours
        bytes.fromhex("1403030000000000000005000101"),  # TLS 1.2 version, not DTLS
        bytes.fromhex("15fefd0000000000000005000102"),  # a one-byte alert in epoch 0
        bytes.fromhex("14fefd0000000000000005000102"),  # ChangeCipherSpec must be 1
        bytes.fromhex("16fefd00000000000000050003010000"),  # cut handshake header
    ],
)
def test_malformed_framing_is_bad_packet(datagram: bytes) -> None:
    with pytest.raises(BadPacket):
        _records_untrusted(datagram)


def test_split_srtp_keying_material_rfc5764() -> None:
    # RFC 5764 4.2: client key | server key | client salt | server salt.
    material = bytes(range(56))  # 2 * (16 + 12) for AEAD_AES_128_GCM
    client, server = split_srtp_keying_material(material, 16, 12)
    assert client == bytes(range(0, 16)) + bytes(range(32, 44))
    assert server == bytes(range(16, 32)) + bytes(range(44, 56))
    material = bytes(range(60))  # 2 * (16 + 14) for AES128_CM_HMAC_SHA1_80
    client, server = split_srtp_keying_material(material, 16, 14)
    assert client == bytes(range(0, 16)) + bytes(range(32, 46))
    assert server == bytes(range(16, 32)) + bytes(range(46, 60))
    with pytest.raises(ValueError):
        split_srtp_keying_material(material, 16, 12)


# --- certificates -------------------------------------------------------------------------


def test_certificate_fingerprints_match_the_der_digest() -> None:
    der = SERVER_CERT.certificate.public_bytes(serialization.Encoding.DER)
    assert SERVER_CERT.der() == der
    fingerprints = SERVER_CERT.fingerprints()
    assert [f.algorithm for f in fingerprints] == ["sha-256", "sha-384", "sha-512"]
    for fingerprint, name in zip(fingerprints, ("sha256", "sha384", "sha512"), strict=True):
        digest = hashlib.new(name, der).digest()
        assert fingerprint.value == ":".join(f"{byte:02X}" for byte in digest)
    assert SERVER_CERT.fingerprint("SHA-1").value.count(":") == 19
    with pytest.raises(ValueError):
        SERVER_CERT.fingerprint("md5")


def test_certificate_is_ecdsa_p256_self_signed_for_30_days() -> None:
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    certificate = DtlsCertificate.generate(common_name="bob", not_before=start)
    x509 = certificate.certificate
    assert isinstance(certificate.private_key, ec.EllipticCurvePrivateKey)
    assert certificate.private_key.curve.name == "secp256r1"
    assert x509.subject == x509.issuer
    assert x509.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bob"
    assert x509.not_valid_before_utc == start
    assert x509.not_valid_after_utc - x509.not_valid_before_utc == datetime.timedelta(days=30)
    default = DtlsCertificate.generate().certificate
    age = datetime.datetime.now(datetime.UTC) - default.not_valid_before_utc
    assert datetime.timedelta(hours=23) < age < datetime.timedelta(hours=25)


# --- the handshake -------------------------------------------------------------------------


def test_handshake_derives_mirrored_keys_and_srtp_works() -> None:
    pair = Pair()
    assert pair.client.state == pair.server.state == "new"
    pair.handshake()
    assert pair.client.state == pair.server.state == "connected"
    assert pair.client.selected_srtp_profile == pair.server.selected_srtp_profile == GCM
    client_keys, server_keys = pair.client.srtp_keys, pair.server.srtp_keys
    assert client_keys is not None and server_keys is not None
    assert client_keys.local_master == server_keys.remote_master
    assert client_keys.remote_master == server_keys.local_master
    assert client_keys.local_master != client_keys.remote_master
    assert len(client_keys.local_master) == 16 + 12
    assert pair.client.remote_fingerprint == SERVER_CERT.fingerprint("sha-256")
    assert pair.server.remote_fingerprint == CLIENT_CERT.fingerprint("sha-256")
    assert pair.client.next_deadline(pair.now) is None
    assert pair.server.next_deadline(pair.now) is None
    # Four flights: ClientHello; server hello..done; client cert..Finished; CCS+Finished.
    assert [role for role, _ in pair.sent] == ["client", "server", "client", "server"]
    assert_srtp_works(pair)


def test_keys_are_the_rfc5764_split_of_the_exporter() -> None:
    pair = Pair()
    pair.handshake()
    material = pair.client._ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", 56)
    assert pair.server._ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", 56) == material
    keys = pair.client.srtp_keys
    assert keys is not None
    assert keys.local_master == material[0:16] + material[32:44]  # client key + salt
    assert keys.remote_master == material[16:32] + material[44:56]  # server key + salt


def test_dtls_1_2_with_ecdhe_ecdsa_aes_gcm() -> None:
    pair = Pair()
    pair.handshake()
    assert pair.server._ssl.get_protocol_version_name() == "DTLSv1.2"
    assert pair.server._ssl.get_cipher_name() == "ECDHE-ECDSA-AES128-GCM-SHA256"


@pytest.mark.parametrize(
    ("client_profiles", "server_profiles", "selected"),
    [
        ((GCM, CM), (GCM, CM), GCM),
        ((CM,), (GCM, CM), CM),
        ((GCM, CM), (CM,), CM),
        ((GCM, CM), (CM, GCM), CM),  # the server's preference decides
    ],
)
def test_srtp_profile_negotiation(
    client_profiles: tuple[str, ...], server_profiles: tuple[str, ...], selected: str
) -> None:
    pair = Pair(client_profiles=client_profiles, server_profiles=server_profiles)
    pair.handshake()
    assert pair.client.selected_srtp_profile == pair.server.selected_srtp_profile == selected
    assert_srtp_works(pair)


def test_no_common_srtp_profile_fails() -> None:
    pair = Pair(client_profiles=(CM,), server_profiles=(GCM,))
    with pytest.raises(DtlsError) as error:
        pair.handshake()
    assert error.value.reason == "no common SRTP profile"
    assert pair.server.state == "failed"
    assert pair.server.srtp_keys is None
    assert pair.client.state == "connecting"


def test_client_rejects_wrong_server_fingerprint() -> None:
    pair = Pair(client_knows=OTHER_CERT.fingerprints())
    with pytest.raises(DtlsError) as error:
        pair.handshake()
    assert error.value.reason == "fingerprint mismatch"
    assert pair.client.state == "failed" and pair.client.srtp_keys is None
    assert pair.client.next_deadline(pair.now) is None
    # The client's fatal alert (epoch 0, level 2 fatal) ends the server's side too.
    assert error.value.datagrams
    alert = _records_untrusted(error.value.datagrams[0])[-1]
    assert alert.content_type == 21 and alert.payload[0] == 2
    with pytest.raises(DtlsError) as server_error:
        pair.server.receive_untrusted(error.value.datagrams[0], pair.now)
    assert "alert" in server_error.value.reason
    assert pair.server.state == "failed"


def test_server_rejects_wrong_client_fingerprint() -> None:
    wrong = [Fingerprint("sha-256", OTHER_CERT.fingerprint("sha-256").value)]
    pair = Pair(server_knows=wrong)
    with pytest.raises(DtlsError) as error:
        pair.handshake()
    assert error.value.reason == "fingerprint mismatch"
    assert pair.server.state == "failed" and pair.server.srtp_keys is None
    assert pair.client.state == "connecting"


def test_fingerprint_match_ignores_case_and_unknown_algorithms() -> None:
    good = CLIENT_CERT.fingerprint("sha-512")
    pair = Pair(
        server_knows=[
            Fingerprint("md5", "00:11"),  # cannot be computed: ignored, not trusted
            Fingerprint("SHA-512", good.value.lower()),
        ]
    )
    pair.handshake()
    assert pair.server.state == "connected"
    assert pair.server.remote_fingerprint == good


def test_server_fingerprints_arriving_after_the_handshake() -> None:
    pair = Pair(server_fingerprints_late=True)
    pair.handshake()
    # The client is done; the server has finished OpenSSL's handshake but must not
    # complete the association before it has checked the client's certificate.
    assert pair.client.state == "connected"
    assert pair.server.state == "connecting"
    assert pair.server.srtp_keys is None and pair.server.remote_fingerprint is None
    assert pair.server.next_deadline(pair.now) == HANDSHAKE_TIMEOUT
    pair.server.set_remote_fingerprints(CLIENT_CERT.fingerprints())
    assert pair.server.state == "connected"
    assert pair.server.remote_fingerprint == CLIENT_CERT.fingerprint("sha-256")
    assert_srtp_works(pair)
    with pytest.raises(InvalidStateError):
        pair.server.set_remote_fingerprints(CLIENT_CERT.fingerprints())


def test_late_server_fingerprints_that_do_not_match() -> None:
    pair = Pair(server_fingerprints_late=True)
    pair.handshake()
    with pytest.raises(DtlsError) as error:
        pair.server.set_remote_fingerprints(OTHER_CERT.fingerprints())
    assert error.value.reason == "fingerprint mismatch"
    assert pair.server.state == "failed" and pair.server.srtp_keys is None


def test_late_server_fingerprints_never_arriving_time_out() -> None:
    pair = Pair(server_fingerprints_late=True)
    pair.handshake()
    assert pair.server.handle_timeout(HANDSHAKE_TIMEOUT - 0.1) == []
    with pytest.raises(DtlsError) as error:
        pair.server.handle_timeout(HANDSHAKE_TIMEOUT)
    assert error.value.reason == "handshake timeout"


def test_small_mtu_fragments_the_flights() -> None:
    pair = Pair(mtu=250)
    pair.handshake()
    assert pair.client.state == pair.server.state == "connected"
    assert all(len(datagram) <= 250 for _, datagram in pair.sent)
    server_flight = [d for role, d in pair.sent if role == "server"]
    assert len(server_flight) > 3  # certificate and the rest did not fit in one datagram
    assert_srtp_works(pair)


# --- loss and retransmission -------------------------------------------------------------


def drop_flight(role: str, number: int, times: int = 1) -> Drop:
    """Drop the first ``times`` deliveries of flight ``number`` sent by ``role``."""
    dropped = {"count": 0}

    def drop(sender: str, flight: int, datagram: bytes) -> bool:
        del datagram
        if sender == role and flight == number and dropped["count"] < times:
            dropped["count"] += 1
            return True
        return False

    return drop


def test_lost_client_hello_is_retransmitted() -> None:
    pair = Pair()
    pair.handshake(drop=drop_flight("client", 1))
    assert pair.server.state == "new"
    assert pair.client.next_deadline(0.0) == 1.0
    pair.tick(0.5)
    assert pair.client.state == "connecting"  # not yet
    pair.tick(1.0)
    assert pair.client.state == pair.server.state == "connected"
    assert_srtp_works(pair)


def test_lost_server_flight_is_retransmitted_with_fresh_record_numbers() -> None:
    pair = Pair()
    pair.handshake(drop=drop_flight("server", 2))
    assert pair.client.state == pair.server.state == "connecting"
    first = [d for role, d in pair.sent if role == "server"]
    pair.sent.clear()
    # Both timers expire at 1 s: the client resends its ClientHello (the server ignores
    # the duplicate), the server its flight.
    assert pair.server.next_deadline(0.0) == 1.0
    pair.now = 1.0
    again = pair.server.handle_timeout(1.0)
    assert [len(d) for d in again] == [len(d) for d in first]
    assert again != first
    first_records = _records_untrusted(first[0])
    again_records = _records_untrusted(again[0])
    assert [r.payload for r in again_records] == [r.payload for r in first_records]
    # same messages, new 48-bit record sequence numbers (bytes 5-10 of each header)
    assert [r.raw[5:11] for r in again_records] != [r.raw[5:11] for r in first_records]
    pair.deliver(pair.server, again)
    assert pair.client.state == pair.server.state == "connected"
    assert_srtp_works(pair)


def test_lost_final_flight_is_resent_when_the_client_retransmits() -> None:
    pair = Pair()
    pair.handshake(drop=drop_flight("server", 4))
    assert pair.server.state == "connected"
    assert pair.client.state == "connecting"
    pair.tick(1.0)  # the client resends its last flight; the server answers with its own
    assert pair.client.state == "connected"
    assert_srtp_works(pair)


def test_retransmission_backs_off_and_the_handshake_gives_up() -> None:
    client = DtlsEndpoint(certificate=CLIENT_CERT, role="client")
    client.set_remote_fingerprints(SERVER_CERT.fingerprints())
    first = client.start(100.0)
    deadlines = []
    now = 100.0
    while True:
        deadline = client.next_deadline(now)
        assert deadline is not None
        deadlines.append(round(deadline - 100.0, 6))
        now = deadline
        try:
            resent = client.handle_timeout(now)
        except DtlsError as error:
            assert error.reason == "handshake timeout"
            break
        # a retransmitted ClientHello: same message, new record sequence number
        assert [r.payload for r in _records_untrusted(resent[0])] == [
            r.payload for r in _records_untrusted(first[0])
        ]
    # RFC 6347 4.2.4.1: 1 s, doubled each time (1, 3, 7, 15), until the 30 s limit
    assert deadlines == [1.0, 3.0, 7.0, 15.0, 30.0]
    assert client.state == "failed"
    assert client.next_deadline(now) is None
    assert client.handle_timeout(now + 100) == []


def test_openssl_own_retransmission_is_recognised() -> None:
    # OpenSSL retransmits on its wall-clock timer inside a read (not reproducible here
    # without a real one-second sleep), writing the whole current flight again before
    # any new output: same handshake messages, the Finished re-encrypted.
    pair = Pair()
    pair.handshake()
    client_flights = [d for role, d in pair.sent if role == "client"]
    server_flights = [d for role, d in pair.sent if role == "server"]
    flight5 = _decode_flight_trusted(client_flights[1])
    flight6 = _decode_flight_trusted(server_flights[1])
    assert [type(item) for item in flight5] == [
        _HandshakeMessage,  # Certificate
        _HandshakeMessage,  # ClientKeyExchange
        _HandshakeMessage,  # CertificateVerify
        _PlainRecord,  # ChangeCipherSpec
        _OpaqueRecord,  # Finished, encrypted in epoch 1
    ]
    assert [item.msg_seq for item in flight5 if isinstance(item, _HandshakeMessage)] == [1, 2, 3]
    reencrypted = [*flight5[:4], _OpaqueRecord(b"another encryption of Finished")]
    assert _strip_retransmission([*reencrypted, *flight6], flight5) == flight6
    assert _strip_retransmission(reencrypted, flight5) == []
    assert _strip_retransmission(flight6, flight5) == flight6
    assert _strip_retransmission(flight5[:3], flight5) == flight5[:3]  # not a whole flight
    assert _strip_retransmission(flight6, []) == flight6


def test_handle_timeout_before_the_deadline_sends_nothing() -> None:
    client = DtlsEndpoint(certificate=CLIENT_CERT, role="client")
    client.start(0.0)
    assert client.handle_timeout(0.999) == []
    assert client.next_deadline(0.999) == 1.0


# --- garbage --------------------------------------------------------------------------------


def test_garbage_during_the_handshake_is_dropped() -> None:
    pair = Pair()
    flight1 = pair.client.start(0.0)
    for junk in (os.urandom(40), b"\x16\xfe\xfd" + os.urandom(5), flight1[0][:-7]):
        with pytest.raises(BadPacket):
            pair.server.receive_untrusted(junk, 0.0)
    assert pair.server.state == "new"
    flight2 = pair.server.receive_untrusted(flight1[0], 0.0)
    assert pair.server.state == "connecting"
    for junk in (os.urandom(100), flight2[0][:-1], flight2[0] + b"\x16"):
        with pytest.raises(BadPacket):
            pair.client.receive_untrusted(junk, 0.0)
    pair.deliver(pair.server, flight2)
    assert pair.client.state == pair.server.state == "connected"
    assert_srtp_works(pair)


def test_a_server_expects_a_client_hello_first() -> None:
    server = DtlsEndpoint(certificate=SERVER_CERT, role="server")
    ccs = bytes.fromhex("14fefd0000000000000000000101")
    with pytest.raises(BadPacket):
        server.receive_untrusted(ccs, 0.0)
    # a well-framed ClientHello that OpenSSL refuses: dropped, the server starts over
    bogus_hello = bytes.fromhex(
        "16fefd0000000000000000"
        "0016"  # handshake record, epoch 0, 22 bytes
        "01"
        "00000a"
        "0000"
        "000000"
        "00000a" + "00" * 10  # ClientHello, 10 bytes, one fragment
    )
    with pytest.raises(BadPacket):
        server.receive_untrusted(bogus_hello, 0.0)
    assert server.state == "new"
    assert server.next_deadline(0.0) is None
    server.set_remote_fingerprints(CLIENT_CERT.fingerprints())
    client = DtlsEndpoint(certificate=CLIENT_CERT, role="client")
    client.set_remote_fingerprints(SERVER_CERT.fingerprints())
    pair = Pair()
    pair.client, pair.server = client, server
    pair.handshake()
    assert client.state == server.state == "connected"


def test_a_client_that_has_not_started_drops_input() -> None:
    client = DtlsEndpoint(certificate=CLIENT_CERT, role="client")
    with pytest.raises(BadPacket):
        client.receive_untrusted(bytes.fromhex("14fefd0000000000000000000101"), 0.0)


def test_garbage_after_connect_is_dropped_and_the_association_keeps_working() -> None:
    pair = Pair()
    pair.handshake()
    forged = bytes.fromhex("17fefd00010000000000630020") + os.urandom(32)  # epoch 1
    forged_alert = bytes.fromhex("15fefd0001000000000064001a") + os.urandom(26)
    plain_alert = bytes.fromhex("15fefd000000000000009900020200")  # epoch 0 fatal
    for endpoint in (pair.client, pair.server):
        for junk in (os.urandom(64), b"\x17\xfe\xfd\x00\x01", forged[:-3]):
            with pytest.raises(BadPacket):
                endpoint.receive_untrusted(junk, pair.now)
        # well framed but unauthenticated: silently discarded
        assert endpoint.receive_untrusted(forged, pair.now) == []
        assert endpoint.receive_untrusted(forged_alert, pair.now) == []
        assert endpoint.receive_untrusted(plain_alert, pair.now) == []
        assert endpoint.state == "connected"
    assert_srtp_works(pair)


@pytest.fixture(scope="module")
def connected() -> Pair:
    pair = Pair()
    pair.handshake()
    return pair


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=1500))
def test_arbitrary_bytes_after_connect(connected: Pair, data: bytes) -> None:
    for endpoint in (connected.client, connected.server):
        try:
            answer = endpoint.receive_untrusted(data, connected.now)
        except BadPacket:
            continue
        assert isinstance(answer, list)
        assert endpoint.state == "connected"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    records=st.lists(
        st.tuples(
            st.sampled_from([20, 21, 22, 23]),
            st.sampled_from([0xFEFD, 0xFEFF]),
            st.integers(0, 3),  # epoch
            st.integers(0, 2**48 - 1),
            st.binary(max_size=200),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_well_framed_junk_records_after_connect(
    connected: Pair, records: list[tuple[int, int, int, int, bytes]]
) -> None:
    datagram = b"".join(
        struct.pack("!BHHHIH", ctype, version, epoch, seq >> 32, seq & 0xFFFFFFFF, len(body)) + body
        for ctype, version, epoch, seq, body in records
    )
    for endpoint in (connected.client, connected.server):
        with contextlib.suppress(BadPacket):
            endpoint.receive_untrusted(datagram, connected.now)
        assert endpoint.state == "connected"


def test_connected_pair_still_works_after_the_junk(connected: Pair) -> None:
    assert connected.client.state == connected.server.state == "connected"
    assert_srtp_works(connected)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_to_a_new_server_are_bad_packets(data: bytes) -> None:
    server = DtlsEndpoint(certificate=SERVER_CERT, role="server")
    try:
        server.receive_untrusted(data, 0.0)
    except BadPacket:
        assert server.state == "new"


@settings(max_examples=150, deadline=None)
@given(
    body=st.binary(max_size=300),
    missing=st.integers(0, 5),
    version=st.sampled_from([0xFEFF, 0xFEFD]),
)
def test_junk_client_hellos_never_end_a_new_server(body: bytes, missing: int, version: int) -> None:
    fragment = (
        b"\x01"  # ClientHello
        + (len(body) + missing).to_bytes(3, "big")  # message length
        + b"\x00\x00"  # message_seq 0
        + b"\x00\x00\x00"  # fragment_offset 0
        + len(body).to_bytes(3, "big")
        + body
    )
    datagram = struct.pack("!BHHHIH", 22, version, 0, 0, 0, len(fragment)) + fragment
    server = DtlsEndpoint(certificate=SERVER_CERT, role="server")
    try:
        server.receive_untrusted(datagram, 0.0)
    except BadPacket:
        assert server.state == "new"
    else:  # an incomplete message: OpenSSL waits for the rest
        assert server.state == "connecting"


# --- closing ----------------------------------------------------------------------------------


def test_close_notify_closes_both_sides() -> None:
    pair = Pair()
    pair.handshake()
    goodbye = pair.client.close()
    assert pair.client.state == "closed"
    assert goodbye and _records_untrusted(goodbye[0])[0].content_type == 21  # alert
    assert _records_untrusted(goodbye[0])[0].epoch == 1  # encrypted
    answer = pair.server.receive_untrusted(goodbye[0], pair.now)
    assert pair.server.state == "closed"
    assert answer  # the server's own close_notify
    assert pair.client.receive_untrusted(answer[0], pair.now) == []  # ignored once closed
    assert pair.client.close() == [] and pair.server.close() == []  # idempotent
    assert pair.client.state == pair.server.state == "closed"


def test_close_before_connect_sends_nothing() -> None:
    client = DtlsEndpoint(certificate=CLIENT_CERT, role="client")
    client.start(0.0)
    assert client.close() == []
    assert client.state == "closed"
    assert client.next_deadline(0.0) is None
    assert client.handle_timeout(5.0) == []


def test_failed_stays_failed() -> None:
    pair = Pair(client_knows=OTHER_CERT.fingerprints())
    with pytest.raises(DtlsError):
        pair.handshake()
    assert pair.client.close() == []
    assert pair.client.state == "failed"
    with pytest.raises(InvalidStateError):
        pair.client.set_remote_fingerprints(SERVER_CERT.fingerprints())


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(ValueError):
        DtlsEndpoint(certificate=CLIENT_CERT, role="client", srtp_profiles=())
    with pytest.raises(ValueError):
        DtlsEndpoint(certificate=CLIENT_CERT, role="client", srtp_profiles=("SRTP_NULL",))
    with pytest.raises(ValueError):
        DtlsEndpoint(certificate=CLIENT_CERT, role="client", mtu=100)
    with pytest.raises(ValueError):
        DtlsEndpoint(certificate=CLIENT_CERT, role="peer")  # type: ignore[arg-type]
    client = DtlsEndpoint(certificate=CLIENT_CERT, role="client")
    with pytest.raises(ValueError):
        client.set_remote_fingerprints([])
    client.start(0.0)
    with pytest.raises(InvalidStateError):
        client.start(0.0)


def test_release_frees_the_connection_and_close_still_says_goodbye() -> None:
    pair = Pair()
    assert not pair.server.release()  # not connected yet: nothing to release
    pair.handshake()
    assert_srtp_works(pair)
    assert not pair.server.released
    assert pair.server.release()
    assert pair.server.released and pair.server._ssl is None
    assert not pair.server.release()  # once
    # What the peer sends now is not read: a well-formed record is ignored, counted;
    # a malformed one is still BadPacket.
    junk_alert = pair.client.close()
    assert pair.server.receive_untrusted(junk_alert[0], pair.now) == []
    assert pair.server.ignored_after_release == 1 and pair.server.state == "connected"
    with pytest.raises(BadPacket):
        pair.server.receive_untrusted(b"\x16\xfe\xfd\x00\x00", pair.now)
    # close() sends the close_notify made at release, which a peer reads as one.
    other = Pair()
    other.handshake()
    assert other.server.release()
    goodbye = other.server.close()
    assert other.server.state == "closed"
    assert goodbye and _records_untrusted(goodbye[0])[0].content_type == 21  # alert
    other.client.receive_untrusted(goodbye[0], other.now)
    assert other.client.state == "closed"
    assert other.server.close() == []  # idempotent


def test_a_released_server_still_answers_a_retransmitted_last_flight() -> None:
    pair = Pair()
    pair.handshake(drop=drop_flight("server", 4))
    assert pair.server.state == "connected" and pair.client.state == "connecting"
    assert pair.server.release()  # released before the client got our Finished
    pair.tick(1.0)  # the client resends its last flight; the kept flight answers it
    assert pair.client.state == "connected"
    assert_srtp_works(pair)


def test_a_certificate_cryptography_cannot_read_fails_the_handshake_cleanly() -> None:
    """Found by scripts/fuzz: a client Certificate whose validity time is not a valid
    UTCTime passed OpenSSL's parsing, and reading it in the verify callback raised
    ValueError out of receive_untrusted (the transport then logged a crash)."""
    server_cert, client_cert = DtlsCertificate.generate(), DtlsCertificate.generate()
    server = DtlsEndpoint(certificate=server_cert, role="server")
    client = DtlsEndpoint(certificate=client_cert, role="client")
    server.set_remote_fingerprints([client_cert.fingerprint("sha-256")])
    client.set_remote_fingerprints([server_cert.fingerprint("sha-256")])
    flight2 = [d for x in client.start(0.0) for d in server.receive_untrusted(x, 0.0)]
    flight3 = [d for x in flight2 for d in client.receive_untrusted(x, 0.0)]
    datagram = next(d for d in flight3 if b"\x17\x0d" in d)  # the one with the Certificate
    not_after = datagram.index(b"\x17\x0d", datagram.index(b"\x17\x0d") + 1) + 2
    broken = datagram[:not_after] + b"\x00\xff" + datagram[not_after + 2 :]
    with pytest.raises(DtlsError) as info:
        for data in flight3:
            server.receive_untrusted(broken if data == datagram else data, 0.0)
    assert info.value.reason == "fingerprint mismatch"
    assert server.state == "failed"
