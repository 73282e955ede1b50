"""STUN parsing and building: RFC 5769 test vectors, hand-checked layouts, hostile input.

MESSAGE-INTEGRITY and FINGERPRINT are recomputed here with ``hmac`` and ``zlib`` straight
from RFC 8489 sections 14.5 and 14.7, independently of the code under test.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.errors import BadPacket
from trio_sfu.stun import (
    Class,
    Method,
    StunMessage,
    build_binding_error,
    build_binding_request,
    build_binding_success,
    is_stun,
    parse_stun_untrusted,
    request_ufrag_untrusted,
)


def unhex(listing: str) -> bytes:
    """Bytes from a hex listing; ``#`` starts a comment that runs to the end of the line."""
    return bytes.fromhex("".join(line.partition("#")[0] for line in listing.splitlines()))


# RFC 5769 section 2.1, "Sample Request". Short-term credentials.
RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
RFC5769_REQUEST = unhex(
    """
    00 01 00 58   # Binding request (0x0001), body length 88
    21 12 a4 42   # magic cookie
    b7 e7 a7 01 bc 34 d6 86 fa 87 df ae   # transaction id
    80 22 00 10   # SOFTWARE, 16 bytes
    53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74   # "STUN test client"
    00 24 00 04   # PRIORITY, 4 bytes
    6e 00 01 ff   # 0x6e0001ff
    80 29 00 08   # ICE-CONTROLLED, 8 bytes
    93 2f f9 b1 51 26 3b 36   # tie-breaker
    00 06 00 09   # USERNAME, 9 bytes
    65 76 74 6a 3a 68 36 76 59   # "evtj:h6vY"
    20 20 20      # padding (the RFC pads with spaces here, which receivers must accept)
    00 08 00 14   # MESSAGE-INTEGRITY, 20 bytes
    9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2   # HMAC-SHA1
    80 28 00 04   # FINGERPRINT, 4 bytes
    e5 7a 3b cf   # CRC-32 xor 0x5354554e
    """
)

# RFC 5769 section 2.2, "Sample IPv4 Response": 192.0.2.1 port 32853.
RFC5769_IPV4_RESPONSE = unhex(
    """
    01 01 00 3c   # Binding success response (0x0101), body length 60
    21 12 a4 42   # magic cookie
    b7 e7 a7 01 bc 34 d6 86 fa 87 df ae   # transaction id
    80 22 00 0b   # SOFTWARE, 11 bytes
    74 65 73 74 20 76 65 63 74 6f 72 20   # "test vector" + 1 padding space
    00 20 00 08   # XOR-MAPPED-ADDRESS, 8 bytes
    00 01 a1 47   # reserved, family IPv4, port 32853 xor 0x2112 = 0xa147
    e1 12 a6 43   # 192.0.2.1 (c0 00 02 01) xor the cookie 21 12 a4 42
    00 08 00 14   # MESSAGE-INTEGRITY
    2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04   # FINGERPRINT
    c0 7d 4c 96
    """
)

# RFC 5769 section 2.3, "Sample IPv6 Response": 2001:db8:1234:5678:11:2233:4455:6677 port 32853.
RFC5769_IPV6_RESPONSE = unhex(
    """
    01 01 00 48   # Binding success response, body length 72
    21 12 a4 42   # magic cookie
    b7 e7 a7 01 bc 34 d6 86 fa 87 df ae   # transaction id
    80 22 00 0b   # SOFTWARE, 11 bytes
    74 65 73 74 20 76 65 63 74 6f 72 20   # "test vector" + padding
    00 20 00 14   # XOR-MAPPED-ADDRESS, 20 bytes
    00 02 a1 47   # reserved, family IPv6, xor'd port
    01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9   # address xor cookie + transaction id
    00 08 00 14   # MESSAGE-INTEGRITY
    a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04   # FINGERPRINT
    c8 fb 0b 4c
    """
)

# RFC 5769 section 2.4, "Sample Request with Long-Term Authentication". No FINGERPRINT.
RFC5769_LONG_TERM_REQUEST = unhex(
    """
    00 01 00 60   # Binding request, body length 96
    21 12 a4 42   # magic cookie
    78 ad 34 33 c6 ad 72 c0 29 da 41 2e   # transaction id
    00 06 00 12   # USERNAME, 18 bytes
    e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9   # "マトリックス" in UTF-8
    00 00         # padding
    00 15 00 1c   # NONCE, 28 bytes
    66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
    00 14 00 0b   # REALM, 11 bytes
    65 78 61 6d 70 6c 65 2e 6f 72 67   # "example.org"
    00            # padding
    00 08 00 14   # MESSAGE-INTEGRITY
    f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66
    """
)
# Key = MD5(username ":" realm ":" SASLprep(password)); the RFC's password
# "The<U+00AD>M<U+00AA>tr<U+2168>" is "TheMatrIX" after SASLprep.
RFC5769_LONG_TERM_KEY = hashlib.md5("マトリックス:example.org:TheMatrIX".encode()).digest()


def independent_integrity(message: bytes, integrity_at: int, key: bytes) -> bytes:
    """RFC 8489 14.5: HMAC-SHA1 over the message up to MESSAGE-INTEGRITY, with the header's
    length field set as if the message ended right after MESSAGE-INTEGRITY."""
    length = integrity_at - 20 + 24
    covered = message[:2] + struct.pack("!H", length) + message[4:integrity_at]
    return hmac.new(key, covered, hashlib.sha1).digest()


def independent_fingerprint(message_before_fingerprint: bytes) -> int:
    """RFC 8489 14.7: CRC-32 of the message up to FINGERPRINT (length field counting the
    FINGERPRINT attribute) xor 0x5354554e."""
    data = message_before_fingerprint
    covered = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:]
    return zlib.crc32(covered) ^ 0x5354554E


# -- RFC 5769 vectors --------------------------------------------------------------------------


def test_rfc5769_sample_request_decodes_and_verifies() -> None:
    message = parse_stun_untrusted(
        RFC5769_REQUEST, integrity_key=RFC5769_PASSWORD, require_fingerprint=True
    )
    assert message.method is Method.BINDING
    assert message.message_class is Class.REQUEST
    assert message.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert message.attributes["SOFTWARE"] == "STUN test client"
    assert message.attributes["PRIORITY"] == 0x6E0001FF
    assert message.attributes["ICE-CONTROLLED"] == 0x932FF9B151263B36
    assert message.attributes["USERNAME"] == "evtj:h6vY"
    assert message.attributes["FINGERPRINT"] == 0xE57A3BCF
    assert message.nomination is None
    assert message.check_integrity(RFC5769_PASSWORD)
    assert not message.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBT")
    # The vector's own MESSAGE-INTEGRITY and FINGERPRINT agree with the RFC 8489 formulas.
    integrity_at = len(RFC5769_REQUEST) - 8 - 24
    assert RFC5769_REQUEST[integrity_at + 4 : integrity_at + 24] == independent_integrity(
        RFC5769_REQUEST, integrity_at, RFC5769_PASSWORD
    )
    assert independent_fingerprint(RFC5769_REQUEST[:-8]) == 0xE57A3BCF


def test_rfc5769_sample_request_with_the_wrong_password_is_bad() -> None:
    with pytest.raises(BadPacket, match="MESSAGE-INTEGRITY"):
        parse_stun_untrusted(RFC5769_REQUEST, integrity_key=b"not the password")


@pytest.mark.parametrize(
    ("vector", "address"),
    [
        (RFC5769_IPV4_RESPONSE, ("192.0.2.1", 32853)),
        (RFC5769_IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_rfc5769_responses_decode_xor_mapped_address(
    vector: bytes, address: tuple[str, int]
) -> None:
    message = parse_stun_untrusted(vector, integrity_key=RFC5769_PASSWORD, require_fingerprint=True)
    assert message.message_class is Class.RESPONSE
    assert message.attributes["SOFTWARE"] == "test vector"
    assert message.attributes["XOR-MAPPED-ADDRESS"] == address


def test_rfc5769_long_term_request_verifies_with_the_md5_key() -> None:
    message = parse_stun_untrusted(RFC5769_LONG_TERM_REQUEST, integrity_key=RFC5769_LONG_TERM_KEY)
    assert message.attributes["USERNAME"] == "マトリックス"
    assert message.attributes["NONCE"] == b"f//499k954d6OL34oL9FSTvy64sA"
    assert message.attributes["REALM"] == "example.org"
    assert "FINGERPRINT" not in message.attributes
    with pytest.raises(BadPacket, match="FINGERPRINT"):
        parse_stun_untrusted(
            RFC5769_LONG_TERM_REQUEST, integrity_key=RFC5769_LONG_TERM_KEY, require_fingerprint=True
        )
    with pytest.raises(BadPacket):
        parse_stun_untrusted(RFC5769_LONG_TERM_REQUEST, integrity_key=b"TheMatrIX")


def test_success_response_to_the_rfc5769_request_has_the_rfc_xor_mapped_address() -> None:
    request = parse_stun_untrusted(RFC5769_REQUEST)
    response = build_binding_success(
        request, address=("192.0.2.1", 32853), password="VOkJxbRl1RmTxUk/WvJxBt"
    )
    expected_start = unhex(
        """
        01 01 00 2c   # Binding success response, body 8+4 + 20+4 + 4+4 = 44
        21 12 a4 42   # magic cookie
        b7 e7 a7 01 bc 34 d6 86 fa 87 df ae   # the request's transaction id
        00 20 00 08   # XOR-MAPPED-ADDRESS, 8 bytes: the same bytes as RFC 5769 section 2.2
        00 01 a1 47 e1 12 a6 43
        00 08 00 14   # MESSAGE-INTEGRITY, 20 bytes follow
        """
    )
    assert len(response) == 20 + 44
    assert response.startswith(expected_start)
    assert response[36:56] == independent_integrity(response, 32, RFC5769_PASSWORD)
    assert response[56:60] == bytes.fromhex("80280004")
    assert struct.unpack("!I", response[60:])[0] == independent_fingerprint(response[:56])


def test_success_response_ipv6_matches_rfc5769_layout() -> None:
    request = parse_stun_untrusted(RFC5769_REQUEST)
    response = build_binding_success(
        request, address=("2001:db8:1234:5678:11:2233:4455:6677%eth0", 32853), password="x"
    )
    # RFC 5769 section 2.3's XOR-MAPPED-ADDRESS attribute, byte for byte (zone id dropped).
    assert response[20:44] == unhex(
        """
        00 20 00 14  00 02 a1 47
        01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
        """
    )


# -- building ----------------------------------------------------------------------------------


def test_binding_request_layout() -> None:
    data, transaction_id = build_binding_request(
        username="srvr:clnt",
        password="p" * 22,
        priority=0x6EFFFFFF,
        ice_controlling_tiebreaker=0x0102030405060708,
        use_candidate=True,
        transaction_id=bytes(range(12)),
    )
    assert transaction_id == bytes(range(12))
    body_before_integrity = unhex(
        """
        00 01 00 48   # Binding request; 16 + 8 + 12 + 4 + 24 + 8 = 72
        21 12 a4 42   # magic cookie
        00 01 02 03 04 05 06 07 08 09 0a 0b   # transaction id
        00 06 00 09   # USERNAME, 9 bytes
        73 72 76 72 3a 63 6c 6e 74 00 00 00   # "srvr:clnt" + 3 zero padding bytes
        00 24 00 04   # PRIORITY
        6e ff ff ff
        80 2a 00 08   # ICE-CONTROLLING, tie-breaker
        01 02 03 04 05 06 07 08
        00 25 00 00   # USE-CANDIDATE, empty
        00 08 00 14   # MESSAGE-INTEGRITY
        """
    )
    assert data.startswith(body_before_integrity)
    assert len(data) == 20 + 72
    assert data[64:84] == independent_integrity(data, 60, b"p" * 22)
    assert data[84:88] == bytes.fromhex("80280004")
    assert struct.unpack("!I", data[88:])[0] == independent_fingerprint(data[:84])


def test_binding_request_round_trip_with_nomination() -> None:
    data, transaction_id = build_binding_request(
        username="a:b",
        password=b"q" * 22,
        priority=1,
        ice_controlling_tiebreaker=None,
        ice_controlled_tiebreaker=9,
        use_candidate=False,
        nomination=0x00ABCDEF,
    )
    # NOMINATION (0xc001), 4 bytes, comes right before MESSAGE-INTEGRITY.
    assert data[-8 - 24 - 8 : -8 - 24] == unhex("c0 01 00 04  00 ab cd ef")
    message = parse_stun_untrusted(data, integrity_key=b"q" * 22, require_fingerprint=True)
    assert message.transaction_id == transaction_id
    assert message.nomination == 0x00ABCDEF
    assert message.attributes["USERNAME"] == "a:b"
    assert message.attributes["PRIORITY"] == 1
    assert message.attributes["ICE-CONTROLLED"] == 9
    assert "ICE-CONTROLLING" not in message.attributes
    assert "USE-CANDIDATE" not in message.attributes


def test_two_requests_draw_different_transaction_ids() -> None:
    first, second = (
        build_binding_request(
            username="a:b",
            password="p",
            priority=1,
            ice_controlling_tiebreaker=1,
            use_candidate=True,
        )[1]
        for _ in range(2)
    )
    assert len(first) == 12
    assert first != second


def test_binding_errors() -> None:
    request = parse_stun_untrusted(RFC5769_REQUEST)
    unauthenticated = build_binding_error(request, 401, "Unauthenticated")
    assert unauthenticated[:20] == unhex(
        """
        01 11 00 20   # Binding error response (0x0111); ERROR-CODE 4+19+1 = 24, FINGERPRINT 8
        21 12 a4 42  b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        """
    )
    assert unauthenticated[20:44] == unhex(
        """
        00 09 00 13   # ERROR-CODE, 19 bytes
        00 00 04 01   # reserved, class 4, number 1
        55 6e 61 75 74 68 65 6e 74 69 63 61 74 65 64 00   # "Unauthenticated" + padding
        """
    )
    parsed = parse_stun_untrusted(unauthenticated, require_fingerprint=True)
    assert parsed.attributes["ERROR-CODE"] == (401, "Unauthenticated")
    assert "MESSAGE-INTEGRITY" not in parsed.attributes

    conflict = build_binding_error(request, 487, "Role Conflict", "VOkJxbRl1RmTxUk/WvJxBt")
    parsed = parse_stun_untrusted(conflict, integrity_key=RFC5769_PASSWORD)
    assert parsed.message_class is Class.ERROR
    assert parsed.attributes["ERROR-CODE"] == (487, "Role Conflict")
    with pytest.raises(ValueError):
        build_binding_error(request, 200, "OK")


def test_message_encode_and_repr() -> None:
    message = StunMessage(Method.BINDING, Class.INDICATION, b"\x07" * 12, nomination=3)
    assert message.message_method is Method.BINDING
    assert "nomination=3" in repr(message)
    assert not message.check_integrity(b"k")  # not parsed: nothing to check
    assert message.encode(fingerprint=False) == unhex(
        """
        00 11 00 08   # Binding indication (0x0011)
        21 12 a4 42  07 07 07 07 07 07 07 07 07 07 07 07
        c0 01 00 04  00 00 00 03   # NOMINATION 3
        """
    )
    with pytest.raises(ValueError):
        StunMessage(Method.BINDING, Class.REQUEST, b"short")
    with pytest.raises(ValueError, match="unknown STUN attribute"):
        StunMessage(Method.BINDING, Class.REQUEST, attributes={"NO-SUCH": 1}).encode()


# -- demultiplexing ----------------------------------------------------------------------------


def test_is_stun_demultiplexes_by_first_byte() -> None:
    assert is_stun(RFC5769_REQUEST)
    assert is_stun(b"\x03" + bytes(19))
    assert not is_stun(b"\x00" * 19)  # shorter than a header
    assert not is_stun(b"\x04" + bytes(19))  # 4..19 is reserved by RFC 7983
    assert not is_stun(b"\x16\xfe\xfd" + bytes(30))  # DTLS handshake
    assert not is_stun(b"\x80\x60" + bytes(30))  # RTP


# -- hostile input -----------------------------------------------------------------------------


def signed(attributes: bytes, key: bytes = b"k", *, fingerprint: bool = True) -> bytes:
    """A Binding request with the given raw attributes, then MESSAGE-INTEGRITY (+ FINGERPRINT)
    computed with the independent formulas."""
    header = struct.pack("!HHI12s", 0x0001, len(attributes), 0x2112A442, b"T" * 12)
    data = header + attributes
    integrity_at = len(data)
    with_room = data[:2] + struct.pack("!H", len(attributes) + 24) + data[4:]
    data = with_room + b"\x00\x08\x00\x14" + independent_integrity(with_room, integrity_at, key)
    if fingerprint:
        data = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:]
        data += b"\x80\x28\x00\x04" + struct.pack("!I", independent_fingerprint(data))
    return data


def raw(message_type: int, attributes: bytes, *, cookie: int = 0x2112A442) -> bytes:
    return struct.pack("!HHI12s", message_type, len(attributes), cookie, b"T" * 12) + attributes


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter"),
        (RFC5769_REQUEST[:19], "shorter"),
        (raw(0x0001, b"", cookie=0x2112A443), "cookie"),
        (raw(0x4001, b""), "top bits"),
        (raw(0x0001, b"")[:2] + b"\x00\x04" + raw(0x0001, b"")[4:], "length"),  # says 4, has 0
        (raw(0x0001, b"\x00\x06\x00\x01a\x00\x00")[:-1], "length"),  # not a multiple of 4
        (raw(0x0001, b"\x00\x06\x00\x09abcd"), "overruns"),
        (raw(0x0001, b"\x00\x06\x00\x05abcd"), "overruns"),  # 5 declared, 4 there
        (raw(0x0005, b""), "method"),  # method 5 is not defined
        (raw(0x0001, b"\x00\x24\x00\x02\x00\x01\x00\x00"), "malformed"),  # PRIORITY of 2 bytes
        (raw(0x0001, b"\x00\x06\x00\x02\xff\xfe\x00\x00"), "malformed"),  # USERNAME not UTF-8
        (raw(0x0001, b"\x00\x20\x00\x08\x00\x03\x00\x00\x00\x00\x00\x00"), "malformed"),  # family 3
        (raw(0x0001, b"\x00\x08\x00\x10" + bytes(16)), "not 20 bytes"),
        (raw(0x0001, b"\x80\x28\x00\x08" + bytes(8)), "not 4 bytes"),
        (raw(0x0001, b"\xc0\x01\x00\x02\x00\x01\x00\x00"), "NOMINATION"),
        (RFC5769_REQUEST[:-4] + b"\xe5\x7a\x3b\xce", "FINGERPRINT does not match"),
        (
            RFC5769_REQUEST[:2] + b"\x00\x5c" + RFC5769_REQUEST[4:] + b"\x80\x22\x00\x00",
            "after FINGERPRINT",
        ),
    ],
)
def test_malformed_messages_are_bad_packets(data: bytes, reason: str) -> None:
    with pytest.raises(BadPacket, match=reason):
        parse_stun_untrusted(data)


def test_missing_integrity_with_a_key_is_a_bad_packet() -> None:
    data = raw(0x0001, b"\x00\x24\x00\x04\x00\x00\x00\x01")
    assert parse_stun_untrusted(data).attributes == {"PRIORITY": 1}
    with pytest.raises(BadPacket, match="no MESSAGE-INTEGRITY"):
        parse_stun_untrusted(data, integrity_key=b"k")


def test_attributes_after_integrity_are_ignored_and_first_duplicate_wins() -> None:
    priority_1 = b"\x00\x24\x00\x04\x00\x00\x00\x01"
    priority_2 = b"\x00\x24\x00\x04\x00\x00\x00\x02"
    data = signed(priority_1 + priority_2, fingerprint=False)
    assert parse_stun_untrusted(data, integrity_key=b"k").attributes["PRIORITY"] == 1
    # A PRIORITY slipped in after MESSAGE-INTEGRITY (and a FINGERPRINT that covers it).
    tail = signed(b"", fingerprint=False) + priority_2
    tail = tail[:2] + struct.pack("!H", len(tail) - 20 + 8) + tail[4:]
    tail += b"\x80\x28\x00\x04" + struct.pack("!I", independent_fingerprint(tail))
    message = parse_stun_untrusted(tail, integrity_key=b"k", require_fingerprint=True)
    assert "PRIORITY" not in message.attributes
    # Unknown comprehension-optional attributes (here Chromium's GOOG-NETWORK-INFO) are skipped.
    unknown = b"\xc0\x57\x00\x04\x00\x01\x00\x0a"
    assert "PRIORITY" in parse_stun_untrusted(signed(unknown + priority_1)).attributes


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_raise_only_bad_packet(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        parse_stun_untrusted(data, integrity_key=b"k")


ATTRIBUTE_TYPES = [
    0x0001,
    0x0006,
    0x0008,
    0x0009,
    0x0012,
    0x0020,
    0x0024,
    0x0025,
    0x8028,
    0x802A,
    0xC001,
    0x7777,
]


@st.composite
def header_shaped(draw: st.DrawFn) -> bytes:
    """A well-framed header followed by attributes of plausible types and random contents,
    so that the attribute decoders are reached."""
    body = b""
    for _ in range(draw(st.integers(0, 4))):
        value = draw(st.binary(max_size=24))
        attr_type = draw(st.sampled_from(ATTRIBUTE_TYPES))
        declared = draw(st.one_of(st.just(len(value)), st.integers(0, 40)))
        body += struct.pack("!HH", attr_type, declared) + value + bytes(-len(value) % 4)
    message_type = draw(st.sampled_from([0x0001, 0x0101, 0x0111, 0x0011, 0x0003, 0x0002]))
    return raw(message_type, body)


@settings(max_examples=300, deadline=None)
@given(header_shaped())
def test_header_shaped_garbage_raises_only_bad_packet(data: bytes) -> None:
    try:
        message = parse_stun_untrusted(data)
    except BadPacket:
        return
    assert message.method in set(Method)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_single_byte_change_of_a_signed_request_is_rejected(data: st.DataObject) -> None:
    request, _ = build_binding_request(
        username="server:client",
        password="p" * 22,
        priority=0x6EFFFFFF,
        ice_controlling_tiebreaker=12345,
        use_candidate=True,
    )
    index = data.draw(st.integers(0, len(request) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = bytearray(request)
    tampered[index] ^= flip
    with pytest.raises(BadPacket):
        parse_stun_untrusted(bytes(tampered), integrity_key=b"p" * 22, require_fingerprint=True)


@settings(max_examples=100, deadline=None)
@given(
    username=st.text(min_size=1, max_size=60),
    priority=st.integers(0, 2**32 - 1),
    tiebreaker=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    use_candidate=st.booleans(),
    nomination=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    password=st.binary(min_size=1, max_size=40),
)
def test_request_round_trip(
    username: str,
    priority: int,
    tiebreaker: int | None,
    use_candidate: bool,
    nomination: int | None,
    password: bytes,
) -> None:
    data, transaction_id = build_binding_request(
        username=username,
        password=password,
        priority=priority,
        ice_controlling_tiebreaker=tiebreaker,
        use_candidate=use_candidate,
        nomination=nomination,
    )
    assert is_stun(data)
    message = parse_stun_untrusted(data, integrity_key=password, require_fingerprint=True)
    assert message.transaction_id == transaction_id
    assert message.attributes["USERNAME"] == username
    assert message.attributes["PRIORITY"] == priority
    assert message.attributes.get("ICE-CONTROLLING") == tiebreaker
    assert ("USE-CANDIDATE" in message.attributes) == use_candidate
    assert message.nomination == nomination
    response = build_binding_success(message, address=("10.0.0.1", 40000), password=password)
    answer = parse_stun_untrusted(response, integrity_key=password, require_fingerprint=True)
    assert answer.transaction_id == transaction_id
    assert answer.attributes["XOR-MAPPED-ADDRESS"] == ("10.0.0.1", 40000)


# -- request_ufrag_untrusted: the demultiplexing key of a shared socket ----------------------


CHECK = {"priority": 1, "ice_controlling_tiebreaker": 7, "use_candidate": False}


def test_request_ufrag_is_the_recipients_part_of_username() -> None:
    # RFC 5769's request carries USERNAME "evtj:h6vY" after a SOFTWARE attribute.
    assert request_ufrag_untrusted(RFC5769_REQUEST) == "evtj"
    data, _ = build_binding_request(username="srvr:clnt", password="p" * 22, **CHECK)
    assert request_ufrag_untrusted(data) == "srvr"
    # It agrees with the full parser on every request we build.
    for username in ("a:b", "ufrag0123456789ab:x", "x" * 40 + ":" + "y" * 7):
        data, _ = build_binding_request(username=username, password="p" * 22, **CHECK)
        assert (
            request_ufrag_untrusted(data)
            == parse_stun_untrusted(data).attributes["USERNAME"].partition(":")[0]
        )


def test_request_ufrag_is_none_for_anything_but_a_binding_request_with_username() -> None:
    request, _ = build_binding_request(username="srvr:clnt", password="p" * 22, **CHECK)
    message = parse_stun_untrusted(request)
    response = build_binding_success(message, address=("127.0.0.1", 5000), password="p" * 22)
    assert request_ufrag_untrusted(response) is None
    no_colon, _ = build_binding_request(username="srvrclnt", password="p" * 22, **CHECK)
    assert request_ufrag_untrusted(no_colon) is None
    empty_recipient, _ = build_binding_request(username=":clnt", password="p" * 22, **CHECK)
    assert request_ufrag_untrusted(empty_recipient) is None
    assert request_ufrag_untrusted(raw(0x0001, b"")) is None  # no USERNAME at all
    assert request_ufrag_untrusted(request[:-4]) is None  # length field disagrees
    assert request_ufrag_untrusted(b"") is None
    assert request_ufrag_untrusted(b"\x80" + request[1:]) is None  # not STUN
    # A USERNAME after MESSAGE-INTEGRITY is not the request's.
    late = struct.pack("!HH", 0x0008, 20) + bytes(20) + struct.pack("!HH", 0x0006, 3) + b"a:b\0"
    assert request_ufrag_untrusted(raw(0x0001, late)) is None


@settings(max_examples=300, deadline=None)
@given(header_shaped())
def test_request_ufrag_never_raises_on_garbage(data: bytes) -> None:
    ufrag = request_ufrag_untrusted(data)
    assert ufrag is None or (ufrag and ":" not in ufrag)
