"""SRTP/SRTCP through trio_sfu.srtp, checked against the RFCs.

The known-answer tests compute the expected SRTP bytes with a second, independent
implementation of the RFC transforms written here on top of ``cryptography`` (AES-CTR,
AES-GCM, HMAC-SHA1), whose key derivation is itself pinned to RFC 3711 appendix B.3.
libsrtp has to produce exactly those bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.errors import BadPacket
from trio_sfu.srtp import (
    REPLAY_WINDOW,
    SRTP_PROFILE_PARAMETERS,
    SRTP_PROFILES,
    SrtpKeys,
    SrtpSession,
)

GCM = "SRTP_AEAD_AES_128_GCM"
CM = "SRTP_AES128_CM_SHA1_80"

# RFC 3711 appendix B.3: the master key and master salt of the key derivation example.
MASTER_KEY = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139")
MASTER_SALT_112 = bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6")  # 14 bytes for AES-CM
MASTER_SALT_96 = MASTER_SALT_112[:12]  # AES-GCM takes a 96-bit master salt (RFC 7714)

# An RTP packet (RFC 3550 section 5.1), written out field by field.
RTP_HEADER = bytes.fromhex(
    "80"  # V=2, P=0, X=0, CC=0
    "0f"  # M=0, PT=15
    "1234"  # sequence number 0x1234
    "decafbad"  # timestamp
    "cafebabe"  # SSRC
)
RTP_PAYLOAD = bytes.fromhex("ab" * 16)
RTP_PACKET = RTP_HEADER + RTP_PAYLOAD

# A receiver report (RFC 3550 section 6.4.2) with one report block.
RTCP_PACKET = bytes.fromhex(
    "81"  # V=2, P=0, RC=1
    "c9"  # PT=201 receiver report
    "0007"  # length: 7 words after this one (32 bytes total)
    "cafebabe"  # SSRC of the sender of this report
    "11223344"  # SSRC of the source reported on
    "05000010"  # fraction lost 5/256, cumulative lost 16
    "00001234"  # extended highest sequence number
    "00000020"  # interarrival jitter
    "00000000"  # LSR
    "00000000"  # DLSR
)


# --- an independent reference implementation of the RFC transforms -----------------


def kdf(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    """RFC 3711 section 4.3.1 with key_derivation_rate 0: x = label<<48 XOR salt, keystream
    of AES-CM(master_key) at IV x*2^16. A 96-bit (GCM) salt is padded to 112 bits with
    zero bytes on the right, as libsrtp does."""
    x = bytearray(master_salt.ljust(14, b"\0"))
    x[7] ^= label  # the label sits in byte 7 of the 112-bit value (48 index bits follow)
    iv = bytes(x) + b"\0\0"
    encryptor = Cipher(algorithms.AES(master_key), modes.CTR(iv)).encryptor()
    return encryptor.update(bytes(length))


def aes_cm(key: bytes, iv: int, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv.to_bytes(16, "big"))).encryptor()
    return encryptor.update(data)


def reference_srtp_cm(packet: bytes, roc: int = 0) -> bytes:
    """RFC 3711 sections 3.1, 4.1.1, 4.2: AES_CM_128_HMAC_SHA1_80 over an RTP packet
    without CSRCs or extension."""
    key = kdf(MASTER_KEY, MASTER_SALT_112, 0x00, 16)
    auth = kdf(MASTER_KEY, MASTER_SALT_112, 0x01, 20)
    salt = kdf(MASTER_KEY, MASTER_SALT_112, 0x02, 14)
    (seq,) = struct.unpack_from("!H", packet, 2)
    (ssrc,) = struct.unpack_from("!I", packet, 8)
    index = (roc << 16) | seq
    iv = (int.from_bytes(salt, "big") << 16) ^ (ssrc << 64) ^ (index << 16)
    body = packet[:12] + aes_cm(key, iv, packet[12:])
    tag = hmac.new(auth, body + struct.pack("!I", roc), hashlib.sha1).digest()[:10]
    return body + tag


def reference_srtp_gcm(packet: bytes, roc: int = 0) -> bytes:
    """RFC 7714 sections 8.1-8.2: IV = (00 00 || SSRC || ROC || SEQ) XOR salt, the header
    is the associated data, a 16-byte tag follows the ciphertext."""
    key = kdf(MASTER_KEY, MASTER_SALT_96, 0x00, 16)
    salt = kdf(MASTER_KEY, MASTER_SALT_96, 0x02, 12)
    iv_input = b"\0\0" + packet[8:12] + struct.pack("!I", roc) + packet[2:4]
    iv = bytes(a ^ b for a, b in zip(iv_input, salt, strict=True))
    return packet[:12] + AESGCM(key).encrypt(iv, packet[12:], packet[:12])


def reference_srtcp_cm(packet: bytes, index: int) -> bytes:
    """RFC 3711 section 3.4: encrypted after the first 8 bytes, then E=1 || 31-bit
    SRTCP index, then the 80-bit tag over everything before it."""
    key = kdf(MASTER_KEY, MASTER_SALT_112, 0x03, 16)
    auth = kdf(MASTER_KEY, MASTER_SALT_112, 0x04, 20)
    salt = kdf(MASTER_KEY, MASTER_SALT_112, 0x05, 14)
    (ssrc,) = struct.unpack_from("!I", packet, 4)
    iv = (int.from_bytes(salt, "big") << 16) ^ (ssrc << 64) ^ (index << 16)
    body = packet[:8] + aes_cm(key, iv, packet[8:]) + struct.pack("!I", 0x80000000 | index)
    return body + hmac.new(auth, body, hashlib.sha1).digest()[:10]


def reference_srtcp_gcm(packet: bytes, index: int) -> bytes:
    """RFC 7714 section 9: IV = (00 00 || SSRC || 00 00 || 0 || index) XOR salt; the
    associated data is the 8-byte header plus E || index, which follows the tag."""
    key = kdf(MASTER_KEY, MASTER_SALT_96, 0x03, 16)
    salt = kdf(MASTER_KEY, MASTER_SALT_96, 0x05, 12)
    trailer = struct.pack("!I", 0x80000000 | index)
    iv_input = b"\0\0" + packet[4:8] + b"\0\0" + struct.pack("!I", index)
    iv = bytes(a ^ b for a, b in zip(iv_input, salt, strict=True))
    return packet[:8] + AESGCM(key).encrypt(iv, packet[8:], packet[:8] + trailer) + trailer


def test_reference_kdf_matches_rfc3711_appendix_b3() -> None:
    # RFC 3711 B.3: cipher key, cipher salt and the first 160 bits of the auth key.
    assert kdf(MASTER_KEY, MASTER_SALT_112, 0x00, 16) == bytes.fromhex(
        "C61E7A93744F39EE10734AFE3FF7A087"
    )
    assert kdf(MASTER_KEY, MASTER_SALT_112, 0x02, 14) == bytes.fromhex(
        "30CBBC08863D8C85D49DB34A9AE1"
    )
    assert kdf(MASTER_KEY, MASTER_SALT_112, 0x01, 20) == bytes.fromhex(
        "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"
    )


# --- the session under test -----------------------------------------------------------


def sender(profile: str) -> SrtpSession:
    master = MASTER_KEY + (MASTER_SALT_96 if profile == GCM else MASTER_SALT_112)
    other = bytes(len(master))
    return SrtpSession(SrtpKeys(profile=profile, local_master=master, remote_master=other))


def receiver(profile: str) -> SrtpSession:
    master = MASTER_KEY + (MASTER_SALT_96 if profile == GCM else MASTER_SALT_112)
    other = bytes(len(master))
    return SrtpSession(SrtpKeys(profile=profile, local_master=other, remote_master=master))


def rtp(seq: int, ssrc: int = 0xCAFEBABE, size: int = 100) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq * 3000, ssrc) + bytes(size)


def test_profiles_in_preference_order_with_rfc_sizes() -> None:
    assert SRTP_PROFILES == (GCM, CM)
    assert (SRTP_PROFILE_PARAMETERS[GCM].key_len, SRTP_PROFILE_PARAMETERS[GCM].salt_len) == (
        16,
        12,
    )
    assert (SRTP_PROFILE_PARAMETERS[CM].key_len, SRTP_PROFILE_PARAMETERS[CM].salt_len) == (16, 14)


def test_protect_rtp_aes_cm_matches_rfc3711() -> None:
    protected = sender(CM).protect_rtp(RTP_PACKET)
    # header in clear, 16 encrypted payload bytes, 10-byte HMAC-SHA1-80 tag
    assert len(protected) == 12 + 16 + 10
    assert protected[:12] == RTP_HEADER
    assert protected == reference_srtp_cm(RTP_PACKET)
    assert receiver(CM).unprotect_rtp_untrusted(protected) == RTP_PACKET


def test_protect_rtp_aes_gcm_matches_rfc7714() -> None:
    protected = sender(GCM).protect_rtp(RTP_PACKET)
    assert len(protected) == 12 + 16 + 16  # header, ciphertext, 16-byte GCM tag
    assert protected[:12] == RTP_HEADER
    assert protected == reference_srtp_gcm(RTP_PACKET)
    assert receiver(GCM).unprotect_rtp_untrusted(protected) == RTP_PACKET


@pytest.mark.parametrize(
    ("profile", "reference"), [(CM, reference_srtcp_cm), (GCM, reference_srtcp_gcm)]
)
def test_protect_rtcp_matches_the_rfcs(profile: str, reference: object) -> None:
    assert callable(reference)
    session = sender(profile)
    first = session.protect_rtcp(RTCP_PACKET)
    second = session.protect_rtcp(RTCP_PACKET)
    # libsrtp numbers SRTCP packets from 1, with the E (encrypted) bit set
    assert first == reference(RTCP_PACKET, 1)
    assert second == reference(RTCP_PACKET, 2)
    tail = second[-4:] if profile == GCM else second[-14:-10]
    assert tail == bytes.fromhex("80000002")
    rx = receiver(profile)
    assert rx.unprotect_rtcp_untrusted(first) == RTCP_PACKET
    assert rx.unprotect_rtcp_untrusted(second) == RTCP_PACKET


@pytest.mark.parametrize("profile", SRTP_PROFILES)
def test_both_directions_any_ssrc(profile: str) -> None:
    size = SRTP_PROFILE_PARAMETERS[profile].master_len
    a_master, b_master = bytes(range(size)), bytes(range(100, 100 + size))
    a = SrtpSession(SrtpKeys(profile, local_master=a_master, remote_master=b_master))
    b = SrtpSession(SrtpKeys(profile, local_master=b_master, remote_master=a_master))
    for ssrc in (1, 0xFFFFFFFF, 0x12345678):  # each new SSRC just works, both ways
        for seq in (0, 1, 2):
            packet = rtp(seq, ssrc)
            assert b.unprotect_rtp_untrusted(a.protect_rtp(packet)) == packet
            assert a.unprotect_rtp_untrusted(b.protect_rtp(packet)) == packet
    report = RTCP_PACKET
    assert b.unprotect_rtcp_untrusted(a.protect_rtcp(report)) == report
    assert a.unprotect_rtcp_untrusted(b.protect_rtcp(report)) == report
    # A session cannot read its own output: the directions have different keys.
    with pytest.raises(BadPacket):
        a.unprotect_rtp_untrusted(a.protect_rtp(rtp(9, 77)))


@pytest.mark.parametrize("profile", SRTP_PROFILES)
def test_tampering_and_truncation_are_bad_packets(profile: str) -> None:
    tx, rx = sender(profile), receiver(profile)
    packet = tx.protect_rtp(rtp(10))
    flipped_tag = packet[:-1] + bytes([packet[-1] ^ 1])
    flipped_payload = packet[:20] + bytes([packet[20] ^ 0x80]) + packet[21:]
    flipped_header = packet[:3] + bytes([packet[3] ^ 1]) + packet[4:]  # sequence number
    for bad in (flipped_tag, flipped_payload, flipped_header, packet[:-1], packet[:12], b""):
        with pytest.raises(BadPacket):
            rx.unprotect_rtp_untrusted(bad)
    # the genuine packet still passes after all that
    assert rx.unprotect_rtp_untrusted(packet) == rtp(10)

    report = tx.protect_rtcp(RTCP_PACKET)
    for bad in (report[:-1], report[:-1] + bytes([report[-1] ^ 1]), report[:8], b"\x81"):
        with pytest.raises(BadPacket):
            rx.unprotect_rtcp_untrusted(bad)
    assert rx.unprotect_rtcp_untrusted(report) == RTCP_PACKET


@pytest.mark.parametrize("profile", SRTP_PROFILES)
def test_replay_window(profile: str) -> None:
    tx, rx = sender(profile), receiver(profile)
    packets = [tx.protect_rtp(rtp(seq)) for seq in range(REPLAY_WINDOW + 200)]
    newest = len(packets) - 1
    assert rx.unprotect_rtp_untrusted(packets[newest]) == rtp(newest)
    with pytest.raises(BadPacket):  # the same packet again: a replay
        rx.unprotect_rtp_untrusted(packets[newest])
    # reordered by a few hundred packets: still inside the window, accepted once
    late = newest - 300
    assert rx.unprotect_rtp_untrusted(packets[late]) == rtp(late)
    with pytest.raises(BadPacket):
        rx.unprotect_rtp_untrusted(packets[late])
    # older than the window: refused
    with pytest.raises(BadPacket):
        rx.unprotect_rtp_untrusted(packets[newest - REPLAY_WINDOW - 50])

    report = tx.protect_rtcp(RTCP_PACKET)
    assert rx.unprotect_rtcp_untrusted(report) == RTCP_PACKET
    with pytest.raises(BadPacket):
        rx.unprotect_rtcp_untrusted(report)


@pytest.mark.parametrize("profile", SRTP_PROFILES)
def test_retransmission_on_the_same_ssrc_protects(profile: str) -> None:
    # A NACK answered without RTX: the same sequence number sent again on one SSRC.
    tx, rx = sender(profile), receiver(profile)
    first = [tx.protect_rtp(rtp(seq)) for seq in range(500)]
    again = tx.protect_rtp(rtp(100))
    assert again == first[100]  # same key stream index: byte-identical
    for seq in range(500):
        if seq != 100:
            rx.unprotect_rtp_untrusted(first[seq])
    assert rx.unprotect_rtp_untrusted(again) == rtp(100)  # the original was lost


def test_protect_refuses_what_libsrtp_cannot_handle() -> None:
    session = sender(GCM)
    for bad in (b"", b"\x80\x60", rtp(1, size=1500)):
        with pytest.raises(BadPacket):
            session.protect_rtp(bad)
    with pytest.raises(BadPacket):
        session.protect_rtcp(b"\x81")


def test_wrong_key_material_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unsupported SRTP profile"):
        SrtpSession(SrtpKeys("SRTP_NULL", bytes(30), bytes(30)))
    with pytest.raises(ValueError, match="needs 28"):
        SrtpSession(SrtpKeys(GCM, bytes(30), bytes(28)))
    with pytest.raises(ValueError, match="needs 30"):
        SrtpSession(SrtpKeys(CM, bytes(30), bytes(28)))


def test_keys_do_not_print() -> None:
    assert "local_master" not in repr(SrtpKeys(GCM, bytes(28), bytes(28)))


def test_unprotect_accepts_other_buffers() -> None:
    tx, rx = sender(CM), receiver(CM)
    packet = tx.protect_rtp(rtp(5))
    assert rx.unprotect_rtp_untrusted(memoryview(bytearray(packet))) == rtp(5)  # type: ignore[arg-type]


GARBAGE_RX = {profile: receiver(profile) for profile in SRTP_PROFILES}


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=1600), profile=st.sampled_from(SRTP_PROFILES))
def test_garbage_is_only_ever_bad_packet(data: bytes, profile: str) -> None:
    rx = GARBAGE_RX[profile]
    for unprotect in (rx.unprotect_rtp_untrusted, rx.unprotect_rtcp_untrusted):
        try:
            unprotect(data)
        except BadPacket:
            pass
        else:  # pragma: no cover - a forgery would be a libsrtp bug
            raise AssertionError("garbage authenticated")


@settings(max_examples=200, deadline=None)
@given(
    profile=st.sampled_from(SRTP_PROFILES),
    seq=st.integers(0, 0xFFFF),
    position=st.integers(0, 200),
    xor=st.integers(1, 255),
)
def test_any_flipped_byte_is_bad_packet(profile: str, seq: int, position: int, xor: int) -> None:
    packet = sender(profile).protect_rtp(rtp(seq))
    position %= len(packet)
    mutated = packet[:position] + bytes([packet[position] ^ xor]) + packet[position + 1 :]
    with pytest.raises(BadPacket):
        receiver(profile).unprotect_rtp_untrusted(mutated)


@pytest.mark.parametrize("profile", SRTP_PROFILES)
def test_packet_path_uses_libsrtp_directly_and_agrees_with_pylibsrtp(profile: str) -> None:
    # The RFC vectors above go through the direct binding (the packet path); the public
    # pylibsrtp wrapper, forced on a twin session, gives the same bytes both ways.
    direct, public = sender(profile), sender(profile)
    assert direct._outbound_raw is not None and direct._inbound_raw is not None
    public._outbound_raw = None
    inbound_direct, inbound_public = receiver(profile), receiver(profile)
    inbound_public._inbound_raw = None
    for seq in (1, 2, 3, 0x1234):
        packet = rtp(seq, size=1200)
        protected = direct.protect_rtp(packet)
        assert protected == public.protect_rtp(packet)
        assert inbound_direct.unprotect_rtp_untrusted(protected) == packet
        assert inbound_public.unprotect_rtp_untrusted(protected) == packet
    # Refusals are BadPacket on both paths, with libsrtp's reason (here: a replay).
    with pytest.raises(BadPacket, match="replay"):
        inbound_direct.unprotect_rtp_untrusted(direct.protect_rtp(rtp(1)))


@pytest.mark.parametrize("profile", SRTP_PROFILES)
def test_sessions_share_one_packet_buffer_and_results_stay_their_own(profile: str) -> None:
    # One buffer serves every session: each result is a copy, so interleaving sessions
    # (and RTP with SRTCP, which goes through pylibsrtp's own methods) changes nothing.
    senders = [sender(profile) for _ in range(3)]
    assert len({id(s._outbound._cdata) for s in senders}) == 1
    outputs = []
    for seq in range(5):
        for index, session in enumerate(senders):
            outputs.append((seq, index, session.protect_rtp(rtp(seq, 100 + index, size=1000))))
            outputs.append((seq, index, session.protect_rtcp(RTCP_PACKET)))
    for index in range(3):
        rx = receiver(profile)
        mine = [(seq, out) for seq, i, out in outputs if i == index]
        for number, (seq, out) in enumerate(mine):
            if number % 2 == 0:
                assert rx.unprotect_rtp_untrusted(out) == rtp(seq, 100 + index, size=1000)
            else:
                assert rx.unprotect_rtcp_untrusted(out) == RTCP_PACKET
