"""DTLS 1.2 for DTLS-SRTP (RFC 6347, RFC 5763, RFC 5764), sans-IO, over OpenSSL.

Driving OpenSSL through memory buffers
--------------------------------------

OpenSSL never sees a socket here. A :class:`DtlsEndpoint` owns one ``SSL`` object
whose read and write sides are memory BIOs: a received datagram is written into the
read BIO, the handshake (or ``SSL_read``) is stepped, and whatever OpenSSL wrote into
the write BIO is collected and handed back to the caller as datagrams to send. The
caller (the transport) owns the socket, the clock and the timer task; this module owns
none of them and never imports trio.

Two things OpenSSL cannot do well through a memory BIO are done here instead:

* **Datagram boundaries.** A memory BIO is a byte stream, so OpenSSL's output is cut
  back into records (every DTLS record carries its length) and the records are packed
  into datagrams of at most ``mtu`` bytes. On input, a datagram must frame exactly into
  well-formed records before OpenSSL sees it: a truncated or malformed record would
  otherwise sit in the stream buffer and corrupt the next datagram. Such input is
  :class:`~trio_sfu.errors.BadPacket` and OpenSSL never sees it.

* **Retransmission timers.** OpenSSL's DTLS timer reads the wall clock itself, which a
  sans-IO module must not depend on (the caller's clock is trio's, possibly a
  ``MockClock``). So the handshake timers are our own (RFC 6347 section 4.2.4.1: 1 s,
  doubling up to 60 s, on the caller's ``now``), and retransmission re-sends our last
  flight ourselves: the plaintext (epoch 0) handshake messages are re-fragmented into
  records with fresh record sequence numbers -- they carry no MAC, so that is allowed,
  and it keeps the peer's replay window from discarding them -- while the encrypted
  Finished record is resent as it is. ``DTLSv1_handle_timeout`` is never called; when
  OpenSSL retransmits on its own timer inside a read, that output is recognised (same
  handshake message sequence numbers as our current flight) and dropped. The server
  answers a retransmission of the client's last flight, after the handshake, with its own
  last flight (RFC 6347 section 4.2.4), without handing those records to OpenSSL.

Peer authentication is by certificate fingerprint only (RFC 5763): the verify callback
accepts the self-signed certificate when its fingerprint matches one that signaling gave
us, and the check is repeated, authoritatively, when the handshake finishes and before
any key is exported.

A server may receive the ClientHello before signaling has told it the client's
fingerprints (the DTLS packets can overtake the ``connectTransport`` request). It then
runs the handshake -- nothing in it needs the fingerprints until the client's
Certificate arrives -- and accepts the certificate provisionally. If OpenSSL finishes
the handshake before the fingerprints are known, the endpoint stays in ``"connecting"``
(no keys exported, no SRTP) and :meth:`DtlsEndpoint.set_remote_fingerprints` completes
the check: it moves the endpoint to ``"connected"`` or raises :class:`DtlsError`. The
association is never completed without the check.
"""

from __future__ import annotations

import contextlib
import datetime
import struct
import weakref
from collections.abc import Sequence
from typing import Any, Final, Literal, NoReturn, TypeAlias, final

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from trio_sfu.errors import BadPacket, InvalidStateError
from trio_sfu.srtp import SRTP_PROFILE_PARAMETERS, SRTP_PROFILES, SrtpKeys

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "DtlsCertificate",
    "DtlsEndpoint",
    "DtlsError",
    "DtlsRole",
    "DtlsState",
    "Fingerprint",
    "split_srtp_keying_material",
]

DtlsRole: TypeAlias = Literal["client", "server"]
DtlsState: TypeAlias = Literal["new", "connecting", "connected", "failed", "closed"]

#: Give up on a handshake that has not finished this many seconds after it began.
HANDSHAKE_TIMEOUT: Final = 30.0
#: RFC 6347 section 4.2.4.1: initial retransmission timer and its upper bound.
INITIAL_RETRANSMIT_INTERVAL: Final = 1.0
MAX_RETRANSMIT_INTERVAL: Final = 60.0
MIN_MTU: Final = 200
_OPENSSL_MTU: Final = 1200

_DTLS1_2_VERSION: Final = 0xFEFD
# ECDHE only (forward secrecy); ECDSA first since our certificate is ECDSA P-256. The
# RSA suites only matter when we are the client of a peer with an RSA certificate. These
# are the DTLS 1.2 suites Chromium and Firefox offer.
_CIPHER_LIST: Final = b":".join(
    [
        b"ECDHE-ECDSA-AES128-GCM-SHA256",
        b"ECDHE-ECDSA-AES256-GCM-SHA384",
        b"ECDHE-ECDSA-CHACHA20-POLY1305",
        b"ECDHE-RSA-AES128-GCM-SHA256",
        b"ECDHE-RSA-AES256-GCM-SHA384",
        b"ECDHE-RSA-CHACHA20-POLY1305",
        b"ECDHE-ECDSA-AES128-SHA",
        b"ECDHE-ECDSA-AES256-SHA",
        b"ECDHE-RSA-AES128-SHA",
        b"ECDHE-RSA-AES256-SHA",
    ]
)
_SRTP_EXPORTER_LABEL: Final = b"EXTRACTOR-dtls_srtp"  # RFC 5764 section 4.2

# Hash function textual names of RFC 8122 section 5 (SDP a=fingerprint).
_FINGERPRINT_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "sha-1": hashes.SHA1,
    "sha-224": hashes.SHA224,
    "sha-256": hashes.SHA256,
    "sha-384": hashes.SHA384,
    "sha-512": hashes.SHA512,
}
_ADVERTISED_HASHES: Final = ("sha-256", "sha-384", "sha-512")

# --- DTLS record layer framing (RFC 6347 section 4.1, 4.2.2) --------------------------

_CHANGE_CIPHER_SPEC: Final = 20
_ALERT: Final = 21
_HANDSHAKE: Final = 22
_APPLICATION_DATA: Final = 23
_CONTENT_TYPES: Final = frozenset({_CHANGE_CIPHER_SPEC, _ALERT, _HANDSHAKE, _APPLICATION_DATA})
_CLIENT_HELLO: Final = 1

# type, version, epoch (16 bits) + sequence number (48 bits), length
_RECORD_HEADER: Final = struct.Struct("!BHQH")
# msg_type, length (24 bits), message_seq, fragment_offset (24), fragment_length (24)
_FRAGMENT_HEADER: Final = struct.Struct("!B3sH3s3s")
_MAX_RECORD_PAYLOAD: Final = 2**14 + 2048  # RFC 6347 section 4.1 (TLSCiphertext bound)
_SEQ_MASK: Final = (1 << 48) - 1


@final
@attrs.frozen
class _Record:
    content_type: int
    version: int
    epoch: int
    payload: bytes
    raw: bytes


@final
@attrs.frozen
class _Fragment:
    msg_type: int
    msg_len: int
    msg_seq: int
    offset: int
    body: bytes


def _fragments_untrusted(payload: bytes) -> list[_Fragment]:
    """The handshake fragments of one plaintext handshake record (several may share it)."""
    fragments = []
    position = 0
    while position < len(payload):
        if len(payload) - position < _FRAGMENT_HEADER.size:
            raise BadPacket("truncated DTLS handshake fragment header")
        msg_type, length, msg_seq, offset, frag_len = _FRAGMENT_HEADER.unpack_from(
            payload, position
        )
        msg_len = int.from_bytes(length, "big")
        frag_offset = int.from_bytes(offset, "big")
        frag_length = int.from_bytes(frag_len, "big")
        start = position + _FRAGMENT_HEADER.size
        end = start + frag_length
        if end > len(payload) or frag_offset + frag_length > msg_len:
            raise BadPacket("DTLS handshake fragment overruns its record or message")
        fragments.append(_Fragment(msg_type, msg_len, msg_seq, frag_offset, payload[start:end]))
        position = end
    return fragments


def _records_untrusted(data: bytes) -> list[_Record]:
    """Split one datagram into DTLS records; BadPacket unless it frames exactly.

    Plaintext (epoch 0) handshake, alert and ChangeCipherSpec records are also checked
    for internal consistency; encrypted records are left to OpenSSL (which drops those
    that fail authentication, as RFC 6347 section 4.1.2.7 asks).
    """
    if not data:
        raise BadPacket("empty DTLS datagram")
    records = []
    position = 0
    while position < len(data):
        if len(data) - position < _RECORD_HEADER.size:
            raise BadPacket("truncated DTLS record header")
        content_type, version, epoch_seq, length = _RECORD_HEADER.unpack_from(data, position)
        if content_type not in _CONTENT_TYPES:
            raise BadPacket(f"not a DTLS record (content type {content_type})")
        if version >> 8 != 0xFE:
            raise BadPacket(f"not a DTLS record (version {version:#06x})")
        start = position + _RECORD_HEADER.size
        end = start + length
        if end > len(data) or length > _MAX_RECORD_PAYLOAD:
            raise BadPacket("truncated DTLS record")
        payload = data[start:end]
        epoch = epoch_seq >> 48
        if epoch == 0:
            if content_type == _HANDSHAKE:
                _fragments_untrusted(payload)
            elif content_type == _ALERT and length != 2:
                raise BadPacket("malformed DTLS alert")
            elif content_type == _CHANGE_CIPHER_SPEC and payload != b"\x01":
                raise BadPacket("malformed ChangeCipherSpec")
        records.append(_Record(content_type, version, epoch, payload, data[position:end]))
        position = end
    return records


def _encode_record(content_type: int, version: int, epoch_seq: int, payload: bytes) -> bytes:
    return _RECORD_HEADER.pack(content_type, version, epoch_seq, len(payload)) + payload


def _pack_datagrams(records: Sequence[bytes], mtu: int) -> list[bytes]:
    """Whole records, packed in order into datagrams of at most ``mtu`` bytes."""
    datagrams: list[bytes] = []
    current = b""
    for record in records:
        if current and len(current) + len(record) > mtu:
            datagrams.append(current)
            current = b""
        current += record
    if current:
        datagrams.append(current)
    return datagrams


# Our own outgoing flight, decoded from what OpenSSL wrote, so that it can be re-encoded.


@final
@attrs.frozen
class _HandshakeMessage:
    """A whole plaintext handshake message (reassembled from OpenSSL's fragments)."""

    version: int
    msg_type: int
    msg_seq: int
    body: bytes


@final
@attrs.frozen
class _PlainRecord:
    """A plaintext ChangeCipherSpec or alert: re-encoded with a fresh sequence number."""

    content_type: int
    version: int
    payload: bytes


@final
@attrs.frozen
class _OpaqueRecord:
    """An encrypted record (epoch > 0), resent byte for byte."""

    raw: bytes


_FlightItem: TypeAlias = _HandshakeMessage | _PlainRecord | _OpaqueRecord


def _decode_flight_trusted(data: bytes) -> list[_FlightItem]:
    """OpenSSL's output (trusted) as a list of messages, fragments reassembled."""
    items: list[_FlightItem] = []
    bodies: dict[int, tuple[int, int, int, bytearray]] = {}
    order: list[int | _FlightItem] = []
    for record in _records_untrusted(data):
        if record.epoch != 0:
            order.append(_OpaqueRecord(record.raw))
        elif record.content_type != _HANDSHAKE:
            order.append(_PlainRecord(record.content_type, record.version, record.payload))
        else:
            for fragment in _fragments_untrusted(record.payload):
                if fragment.msg_seq not in bodies:
                    body = bytearray(fragment.msg_len)
                    bodies[fragment.msg_seq] = (record.version, fragment.msg_type, 0, body)
                    order.append(fragment.msg_seq)
                body = bodies[fragment.msg_seq][3]
                body[fragment.offset : fragment.offset + len(fragment.body)] = fragment.body
    for entry in order:
        if isinstance(entry, int):
            version, msg_type, _, body = bodies[entry]
            items.append(_HandshakeMessage(version, msg_type, entry, bytes(body)))
        else:
            items.append(entry)
    return items


# --- certificates and fingerprints -----------------------------------------------------


@attrs.frozen
class Fingerprint:
    """A certificate fingerprint as in SDP ``a=fingerprint`` and mediasoup's DtlsParameters.

    ``algorithm`` is an RFC 8122 hash name (``"sha-256"``); ``value`` is the digest of the
    DER certificate as uppercase hex bytes joined by ``:``.
    """

    algorithm: str
    value: str


def _fingerprint_of(certificate: x509.Certificate, algorithm: str) -> Fingerprint:
    algorithm = algorithm.lower()
    try:
        hash_type = _FINGERPRINT_HASHES[algorithm]
    except KeyError:
        raise ValueError(f"unsupported fingerprint algorithm {algorithm!r}") from None
    digest = certificate.fingerprint(hash_type())
    return Fingerprint(algorithm, digest.hex(":").upper())


def _matching_fingerprint(
    certificate: x509.Certificate, fingerprints: Sequence[Fingerprint]
) -> Fingerprint | None:
    for fingerprint in fingerprints:
        algorithm = fingerprint.algorithm.lower()
        if algorithm not in _FINGERPRINT_HASHES:
            continue  # an algorithm we cannot compute cannot vouch for the peer
        ours = _fingerprint_of(certificate, algorithm)
        if ours.value.replace(":", "") == fingerprint.value.replace(":", "").upper():
            return ours
    return None


@final
class DtlsCertificate:
    """Our DTLS identity: an ECDSA P-256 key and a self-signed certificate.

    Generate it once at start-up and share it between all transports; the OpenSSL
    contexts built from it are cached here (one per role and SRTP profile list).
    """

    __slots__ = ("_contexts", "certificate", "private_key")

    def __init__(
        self, private_key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate
    ) -> None:
        self.private_key: Final = private_key
        self.certificate: Final = certificate
        self._contexts: dict[tuple[DtlsRole, tuple[str, ...]], SSL.Context] = {}

    @classmethod
    def generate(
        cls, *, common_name: str = "trio-sfu", not_before: datetime.datetime | None = None
    ) -> DtlsCertificate:
        """A new key and certificate, valid for 30 days from ``not_before``.

        ``not_before`` defaults to yesterday by the system calendar (a certificate date,
        not protocol timing: peers check the fingerprint, not the dates).
        """
        if not_before is None:
            now = datetime.datetime.now(datetime.UTC)
            not_before = now - datetime.timedelta(days=1)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def fingerprint(self, algorithm: str) -> Fingerprint:
        """Our certificate's fingerprint with one RFC 8122 hash (``"sha-256"``...)."""
        return _fingerprint_of(self.certificate, algorithm)

    def fingerprints(self) -> list[Fingerprint]:
        """Our fingerprints for signaling: sha-256, sha-384 and sha-512."""
        return [self.fingerprint(algorithm) for algorithm in _ADVERTISED_HASHES]

    def der(self) -> bytes:
        """The certificate, DER-encoded."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def _context(self, role: DtlsRole, profiles: tuple[str, ...]) -> SSL.Context:
        context = self._contexts.get((role, profiles))
        if context is None:
            context = SSL.Context(
                SSL.DTLS_CLIENT_METHOD if role == "client" else SSL.DTLS_SERVER_METHOD
            )
            context.set_min_proto_version(_DTLS1_2_VERSION)
            context.set_max_proto_version(_DTLS1_2_VERSION)
            context.use_certificate(self.certificate)
            context.use_privatekey(self.private_key)
            context.check_privatekey()
            context.set_cipher_list(_CIPHER_LIST)
            context.set_tlsext_use_srtp(":".join(profiles).encode("ascii"))
            context.set_options(
                SSL.OP_NO_QUERY_MTU
                | SSL.OP_NO_TICKET
                | SSL.OP_NO_RENEGOTIATION
                | SSL.OP_NO_COMPRESSION
                | SSL.OP_CIPHER_SERVER_PREFERENCE
            )
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            # Media goes through SRTP, not through this connection: once the handshake is
            # over its record buffers (tens of KiB per transport) are given back.
            context.set_mode(SSL.MODE_RELEASE_BUFFERS)
            context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify)
            self._contexts[(role, profiles)] = context
        return context


def _verify(connection: SSL.Connection, certificate: Any, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's verify callback: accept a self-signed peer certificate by fingerprint."""
    reference = connection.get_app_data()
    endpoint = reference() if reference is not None else None
    if not isinstance(endpoint, DtlsEndpoint):
        return False
    if depth != 0:
        return True  # only the peer's own certificate is checked (RFC 5763 section 5)
    try:
        peer_certificate = certificate.to_cryptography()
    except ValueError:
        # DER that OpenSSL took but cryptography cannot read (a malformed validity time,
        # found by fuzzing): refused. Raising here would escape do_handshake() as a
        # ValueError instead of failing the handshake.
        endpoint._fingerprint_rejected = True
        return False
    return endpoint._verify_peer_certificate(peer_certificate)


# --- the association ---------------------------------------------------------------------


class DtlsError(Exception):
    """The DTLS association failed for good; ``reason`` says why.

    Raised by the call that discovered the failure (fingerprint mismatch, an alert from
    the peer, no common SRTP profile, handshake timeout); the endpoint is then in state
    ``"failed"``. ``datagrams`` holds what OpenSSL wrote on the way out (typically a fatal
    alert for the peer); sending them is courteous, not required.

    This is not :class:`~trio_sfu.errors.BadPacket`: a bad packet is dropped and the
    association carries on, a DtlsError ends it.
    """

    def __init__(self, reason: str, datagrams: Sequence[bytes] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.datagrams = tuple(datagrams)


@final
class DtlsEndpoint:
    """One DTLS 1.2 association for DTLS-SRTP, driven through memory buffers.

    Inputs are received datagrams (:meth:`receive_untrusted`) and the passage of time
    (:meth:`handle_timeout` at :meth:`next_deadline`); outputs are datagrams to send,
    returned by those calls. ``now`` is always the caller's clock, in seconds.

    States: ``"new"`` -> ``"connecting"`` (client: :meth:`start`; server: the first
    ClientHello) -> ``"connected"`` (``srtp_keys``, ``selected_srtp_profile`` and
    ``remote_fingerprint`` are set) -> ``"closed"`` (:meth:`close`, or the peer's
    close_notify). Any terminal failure raises :class:`DtlsError` and leaves ``"failed"``.
    After ``"failed"`` or ``"closed"`` every input is ignored.
    """

    # One per transport, kept after the handshake: slots, not an instance dict. The SSL
    # connection refers back to it through a weak reference (_new_connection).
    __slots__ = (
        "__weakref__",
        "_certificate",
        "_closing",
        "_fingerprint_rejected",
        "_flight",
        "_flight_retransmitted",
        "_give_up_at",
        "_handshake_done",
        "_profiles",
        "_record_seq",
        "_remote_fingerprints",
        "_retransmit_at",
        "_retransmit_interval",
        "_ssl",
        "ignored_after_release",
        "mtu",
        "remote_fingerprint",
        "role",
        "selected_srtp_profile",
        "srtp_keys",
        "state",
    )

    def __init__(
        self,
        *,
        certificate: DtlsCertificate,
        role: DtlsRole,
        srtp_profiles: Sequence[str] = SRTP_PROFILES,
        mtu: int = 1200,
    ) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"DTLS role must be 'client' or 'server', not {role!r}")
        profiles = tuple(srtp_profiles)
        if not profiles:
            raise ValueError("at least one SRTP profile is needed")
        for profile in profiles:
            if profile not in SRTP_PROFILE_PARAMETERS:
                raise ValueError(f"unsupported SRTP profile {profile!r}")
        if mtu < MIN_MTU:
            raise ValueError(f"mtu must be at least {MIN_MTU}")
        self.role: Final[DtlsRole] = role
        self.mtu: Final = mtu
        self._certificate: Final = certificate
        self._profiles: Final = profiles

        self.state: DtlsState = "new"
        self.srtp_keys: SrtpKeys | None = None
        self.selected_srtp_profile: str | None = None
        self.remote_fingerprint: Fingerprint | None = None

        self._remote_fingerprints: tuple[Fingerprint, ...] | None = None
        self._fingerprint_rejected = False
        self._handshake_done = False  # OpenSSL finished; we may still await fingerprints
        self._flight: list[_FlightItem] = []  # our last flight, for retransmission
        self._flight_retransmitted = False
        self._record_seq = 0  # sequence numbers of the epoch 0 records we encode
        self._retransmit_interval = INITIAL_RETRANSMIT_INTERVAL
        self._retransmit_at: float | None = None
        self._give_up_at: float | None = None
        self._ssl: SSL.Connection | None = self._new_connection()
        #: close_notify made at :meth:`release`, sent by :meth:`close`.
        self._closing: list[bytes] = []
        #: DTLS datagrams ignored because the connection was released.
        self.ignored_after_release = 0

    def _new_connection(self) -> SSL.Connection:
        connection = SSL.Connection(self._certificate._context(self.role, self._profiles), None)
        connection.set_app_data(weakref.ref(self))
        # OpenSSL refuses MTUs under 256 and its fragments are re-cut to self.mtu by
        # _encode_flight anyway, so it gets at least a comfortable size of its own.
        connection.set_ciphertext_mtu(max(self.mtu, _OPENSSL_MTU))
        if self.role == "client":
            connection.set_connect_state()
        else:
            connection.set_accept_state()
        return connection

    def __repr__(self) -> str:
        return f"<DtlsEndpoint {self.role} {self.state}>"

    # --- public API ------------------------------------------------------------------

    def set_remote_fingerprints(self, fingerprints: Sequence[Fingerprint]) -> None:
        """Give the peer's certificate fingerprints (from signaling); the peer must match one.

        May be called before or during the handshake. If the handshake has already
        finished (a server whose ClientHello overtook the signaling), this call completes
        the association: afterwards ``state`` is ``"connected"``, or DtlsError("fingerprint
        mismatch") is raised and the state is ``"failed"``. Check ``state`` after calling.
        Raises InvalidStateError once the peer has been verified, failed or closed.
        """
        fingerprints = tuple(fingerprints)
        if not fingerprints:
            raise ValueError("at least one remote fingerprint is needed")
        if self.state in ("connected", "failed", "closed"):
            raise InvalidStateError(f"DTLS endpoint is {self.state}")
        self._remote_fingerprints = fingerprints
        if self._handshake_done:
            self._complete()

    def start(self, now: float) -> list[bytes]:
        """Begin the association. Client: returns flight 1 (ClientHello). Server: []."""
        if self.state != "new":
            raise InvalidStateError(f"DTLS endpoint is {self.state}, not new")
        if self.role == "server":
            return []
        self.state = "connecting"
        self._give_up_at = now + HANDSHAKE_TIMEOUT
        return self._step_handshake(now)

    def receive_untrusted(self, data: bytes, now: float) -> list[bytes]:
        """Feed one received DTLS datagram; returns the datagrams to send in answer.

        Raises BadPacket for a datagram that is not well-formed DTLS (it is dropped and the
        association carries on), DtlsError for a terminal failure. Ignored (returns [])
        once ``"failed"`` or ``"closed"``.
        """
        if self.state in ("failed", "closed"):
            return []
        if type(data) is not bytes:
            data = bytes(data)
        records = _records_untrusted(data)
        if self.state == "new":
            if self.role == "client":
                raise BadPacket("DTLS client has not started")
            first = records[0]
            if not (
                first.epoch == 0
                and first.content_type == _HANDSHAKE
                and _fragments_untrusted(first.payload)
                and first.payload[0] == _CLIENT_HELLO
            ):
                raise BadPacket("a DTLS server expects a ClientHello first")
            self.state = "connecting"
            self._give_up_at = now + HANDSHAKE_TIMEOUT
            self._conn().bio_write(data)
            try:
                return self._step_handshake(now)
            except DtlsError:
                # A ClientHello that OpenSSL refuses is unauthenticated noise, not the end
                # of an association that has not begun: start over with a clean SSL object.
                self.state = "new"
                self._give_up_at = None
                self._retransmit_at = None
                self._flight = []
                self._ssl = self._new_connection()
                raise BadPacket("ClientHello refused") from None
        if not self._handshake_done:
            self._conn().bio_write(data)
            return self._step_handshake(now)
        # Handshake finished (connected, or awaiting fingerprints).
        if any(record.epoch == 0 for record in records):
            # Plaintext records now can only be the peer retransmitting its last flight
            # because our last flight was lost: resend it (RFC 6347 section 4.2.4).
            # They never reach OpenSSL, which would answer with its own retransmission.
            if self._flight and any(r.content_type == _HANDSHAKE for r in records):
                return self._encode_flight(self._flight)
            return []
        ssl = self._ssl
        if ssl is None:  # released (connected): what OpenSSL would read is ignored
            self.ignored_after_release += 1
            return []
        ssl.bio_write(data)
        return self._read_records()

    def next_deadline(self, now: float) -> float | None:
        """When :meth:`handle_timeout` must next be called (caller's clock), or None."""
        if self.state != "connecting":
            return None
        deadlines = [t for t in (self._retransmit_at, self._give_up_at) if t is not None]
        return min(deadlines) if deadlines else None

    def handle_timeout(self, now: float) -> list[bytes]:
        """Retransmit our last handshake flight if its timer expired; returns datagrams.

        Raises DtlsError("handshake timeout") once the handshake has run for
        HANDSHAKE_TIMEOUT seconds without completing.
        """
        if self.state != "connecting":
            return []
        if self._give_up_at is not None and now >= self._give_up_at:
            self._fail("handshake timeout")
        if self._retransmit_at is None or now < self._retransmit_at or not self._flight:
            return []
        self._retransmit_interval = min(2 * self._retransmit_interval, MAX_RETRANSMIT_INTERVAL)
        self._retransmit_at = now + self._retransmit_interval
        self._flight_retransmitted = True
        return self._encode_flight(self._flight)

    def close(self) -> list[bytes]:
        """End the association; returns close_notify datagrams if it was connected.

        Idempotent. A failed endpoint stays ``"failed"``; any other becomes ``"closed"``.
        """
        if self.state in ("failed", "closed"):
            return []
        was_connected = self.state == "connected"
        self.state = "closed"
        self._retransmit_at = self._give_up_at = None
        self._flight = []
        ssl = self._ssl
        if ssl is None:  # released: the close_notify was made then
            closing, self._closing = self._closing, []
            return closing
        if not was_connected:
            return []
        try:
            ssl.shutdown()
        except SSL.Error:
            return []
        return self._drain_verbatim()

    @property
    def released(self) -> bool:
        """Whether :meth:`release` freed the OpenSSL connection."""
        return self._ssl is None

    def release(self) -> bool:
        """Free the OpenSSL connection of an established association (some 60 KiB each).

        Once connected, OpenSSL is needed only to read the peer's alerts: our last flight
        (kept, a server's) answers a retransmission of the peer's last flight without it.
        The close_notify that :meth:`close` will send is made now. Afterwards the encrypted
        records OpenSSL would have read are ignored (counted in
        ``ignored_after_release``): an alert from the peer can no longer be read, and the
        owner learns of the end from signaling or ICE consent instead. Returns True if it
        released the connection (False: not connected, or released already).
        """
        ssl = self._ssl
        if self.state != "connected" or ssl is None:
            return False
        try:
            ssl.shutdown()
            self._closing = self._drain_verbatim()
        except SSL.Error:
            self._closing = []
        self._ssl = None  # _flight stays: a server answers a retransmitted last flight
        return True

    def _conn(self) -> SSL.Connection:
        ssl = self._ssl
        if ssl is None:
            raise InvalidStateError("the DTLS connection was released")
        return ssl

    # --- internals --------------------------------------------------------------------

    def _verify_peer_certificate(self, certificate: x509.Certificate) -> bool:
        """Verify callback, during the handshake. Without fingerprints yet: provisionally
        accept (checked again at the end of the handshake, before any key exists)."""
        if self._remote_fingerprints is None:
            return True
        if _matching_fingerprint(certificate, self._remote_fingerprints) is None:
            self._fingerprint_rejected = True
            return False
        return True

    def _fail(self, reason: str, datagrams: Sequence[bytes] = ()) -> NoReturn:
        self.state = "failed"
        self._retransmit_at = self._give_up_at = None
        self._flight = []
        self.srtp_keys = None
        raise DtlsError(reason, datagrams)

    def _read_output(self) -> bytes:
        chunks = []
        while True:
            try:
                chunks.append(self._conn().bio_read(65536))
            except SSL.WantReadError:
                return b"".join(chunks)

    def _drain_verbatim(self) -> list[bytes]:
        output = self._read_output()
        if not output:
            return []
        return _pack_datagrams([record.raw for record in _records_untrusted(output)], self.mtu)

    def _step_handshake(self, now: float) -> list[bytes]:
        try:
            self._conn().do_handshake()
        except SSL.WantReadError:
            finished = False
        except SSL.Error as exc:
            alert = self._encode_flight(self._new_output())
            if self._fingerprint_rejected:
                self._fail("fingerprint mismatch", alert)
            self._fail(f"handshake failed: {_openssl_reason(exc)}", alert)
        else:
            finished = True

        items = self._new_output()
        if finished:
            self._handshake_done = True
            self._retransmit_at = None
            # The server's last flight (ChangeCipherSpec, Finished) is kept to answer a
            # retransmission of the client's last flight; a client's is done with.
            self._flight = items if self.role == "server" else []
            datagrams = self._encode_flight(items)
            if self._remote_fingerprints is not None:
                self._complete()
            return datagrams
        if not items:
            return []
        if all(isinstance(item, _PlainRecord) and item.content_type == _ALERT for item in items):
            return self._encode_flight(items)  # a warning alert: sent once, not kept
        if not self._flight_retransmitted:
            self._retransmit_interval = INITIAL_RETRANSMIT_INTERVAL
        self._flight = items
        self._flight_retransmitted = False
        self._retransmit_at = now + self._retransmit_interval
        return self._encode_flight(items)

    def _new_output(self) -> list[_FlightItem]:
        """What OpenSSL wrote, minus its own retransmissions of our current flight.

        OpenSSL retransmits on its wall-clock timer when a read finds that timer expired:
        it writes the whole current flight again (same handshake messages; the Finished
        re-encrypted) before any new output. Our own timer does retransmission, so that
        copy is dropped.
        """
        output = self._read_output()
        items = _decode_flight_trusted(output) if output else []
        return _strip_retransmission(items, self._flight)

    def _complete(self) -> None:
        """The handshake is done and the fingerprints are known: check, then export keys."""
        assert self._remote_fingerprints is not None
        try:
            certificate = self._conn().get_peer_certificate(as_cryptography=True)
        except ValueError:
            self._fail("fingerprint mismatch")  # a certificate that cannot be read
        if certificate is None:
            self._fail("peer sent no certificate")
        matched = _matching_fingerprint(certificate, self._remote_fingerprints)
        if matched is None:
            self._fail("fingerprint mismatch")
        profile_name = self._conn().get_selected_srtp_profile().decode("ascii", "replace")
        profile = SRTP_PROFILE_PARAMETERS.get(profile_name)
        if profile is None or profile_name not in self._profiles:
            self._fail("no common SRTP profile")
        key_len, salt_len = profile.key_len, profile.salt_len
        material = self._conn().export_keying_material(
            _SRTP_EXPORTER_LABEL, 2 * (key_len + salt_len)
        )
        client_master, server_master = split_srtp_keying_material(material, key_len, salt_len)
        if self.role == "client":
            local, remote = client_master, server_master
        else:
            local, remote = server_master, client_master
        self.srtp_keys = SrtpKeys(profile=profile_name, local_master=local, remote_master=remote)
        self.selected_srtp_profile = profile_name
        self.remote_fingerprint = matched
        self._give_up_at = None
        self.state = "connected"

    def _read_records(self) -> list[bytes]:
        """After the handshake: let OpenSSL process records (alerts, close_notify)."""
        while True:
            try:
                self._conn().recv(65536)  # application data is not used (no DataChannels)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                # The peer's close_notify: answer with ours (RFC 5246 section 7.2.1).
                with contextlib.suppress(SSL.Error):  # a courtesy; the peer has gone
                    self._conn().shutdown()
                datagrams = self._drain_verbatim()
                self.state = "closed"
                self._flight = []
                return datagrams
            except SSL.Error as exc:
                self._fail(f"alert: {_openssl_reason(exc)}", self._drain_verbatim())
        return self._drain_verbatim()

    def _encode_flight(self, items: Sequence[_FlightItem]) -> list[bytes]:
        """Our flight as datagrams <= mtu; plaintext records get fresh sequence numbers
        and handshake messages are fragmented to fill each datagram."""
        datagrams: list[bytes] = []
        current = bytearray()
        overhead = _RECORD_HEADER.size + _FRAGMENT_HEADER.size
        for item in items:
            if not isinstance(item, _HandshakeMessage):
                if isinstance(item, _OpaqueRecord):
                    record = item.raw
                else:
                    seq = self._next_seq()
                    record = _encode_record(item.content_type, item.version, seq, item.payload)
                if current and len(current) + len(record) > self.mtu:
                    datagrams.append(bytes(current))
                    current = bytearray()
                current += record
                continue
            body = item.body
            length = len(body).to_bytes(3, "big")
            offset = 0
            while True:
                space = self.mtu - len(current) - overhead
                remaining = len(body) - offset
                if current and (space < 0 or (space < remaining and space < 64)):
                    datagrams.append(bytes(current))  # no room worth a fragment here
                    current = bytearray()
                    continue
                chunk = body[offset : offset + space]
                header = _FRAGMENT_HEADER.pack(
                    item.msg_type,
                    length,
                    item.msg_seq,
                    offset.to_bytes(3, "big"),
                    len(chunk).to_bytes(3, "big"),
                )
                current += _encode_record(
                    _HANDSHAKE, item.version, self._next_seq(), header + chunk
                )
                offset += len(chunk)
                if offset >= len(body):
                    break
        if current:
            datagrams.append(bytes(current))
        return datagrams

    def _next_seq(self) -> int:
        seq = self._record_seq
        self._record_seq = seq + 1
        return seq & _SEQ_MASK  # epoch 0


def _same_flight_item(a: _FlightItem, b: _FlightItem) -> bool:
    if isinstance(a, _OpaqueRecord):
        return isinstance(b, _OpaqueRecord)  # re-encrypted: only its place can match
    return a == b


def _strip_retransmission(
    items: list[_FlightItem], flight: Sequence[_FlightItem]
) -> list[_FlightItem]:
    """``items`` without leading copies of ``flight``."""
    size = len(flight)
    while size and len(items) >= size and all(map(_same_flight_item, items[:size], flight)):
        items = items[size:]
    return items


def _openssl_reason(exc: SSL.Error) -> str:
    """The reason strings of an OpenSSL error queue, e.g. 'sslv3 alert bad certificate'."""
    reasons = []
    for entry in exc.args[0] if exc.args and isinstance(exc.args[0], list) else ():
        if isinstance(entry, tuple) and entry:
            reasons.append(str(entry[-1]))
    return "; ".join(reasons) or str(exc) or type(exc).__name__


def split_srtp_keying_material(material: bytes, key_len: int, salt_len: int) -> tuple[bytes, bytes]:
    """RFC 5764 section 4.2: the exporter output is client_write_SRTP_master_key,
    server_write_SRTP_master_key, client_write_SRTP_master_salt,
    server_write_SRTP_master_salt. Returns (client key+salt, server key+salt)."""
    if len(material) != 2 * (key_len + salt_len):
        raise ValueError("keying material has the wrong length")
    client_key = material[:key_len]
    server_key = material[key_len : 2 * key_len]
    client_salt = material[2 * key_len : 2 * key_len + salt_len]
    server_salt = material[2 * key_len + salt_len :]
    return client_key + client_salt, server_key + server_salt
