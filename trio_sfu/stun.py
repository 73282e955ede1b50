"""STUN messages (RFC 8489) for ICE connectivity checks, sans-IO.

This module frames and checks STUN messages itself and borrows aioice's attribute codecs
(``aioice.stun.ATTRIBUTES_BY_TYPE`` / ``ATTRIBUTES_BY_NAME``), its HMAC-SHA1
``message_integrity`` and its CRC-32 ``message_fingerprint``. It is stricter than
``aioice.stun.parse_message`` on purpose: the magic cookie, the length field, attribute
bounds and padding, the size of MESSAGE-INTEGRITY and FINGERPRINT, and "FINGERPRINT comes
last" are all checked, and every failure is :class:`~trio_sfu.errors.BadPacket`.

Only what ICE needs is here: Binding requests, success and error responses, short-term
credentials (the key is the ICE password), and Chromium's ``NOMINATION`` attribute (0xC001,
used for ICE renomination). Long-term credentials can be checked too (pass the MD5 key as
``integrity_key``), which the RFC 5769 test vectors use.

Nothing here does I/O, reads a clock or imports trio.
"""

from __future__ import annotations

import hmac
import secrets
import struct
from typing import Any, Final, final

from aioice.stun import (
    ATTRIBUTES_BY_NAME,
    ATTRIBUTES_BY_TYPE,
    COOKIE,
    Class,
    Method,
    message_fingerprint,
    message_integrity,
    pack_xor_address,
    unpack_xor_address,
)

from trio_sfu.errors import BadPacket

__all__ = [
    "HEADER_LENGTH",
    "NOMINATION",
    "Class",
    "Method",
    "StunMessage",
    "build_binding_error",
    "build_binding_request",
    "build_binding_success",
    "is_stun",
    "parse_stun_untrusted",
    "request_ufrag_untrusted",
]

HEADER_LENGTH: Final = 20
"""Every STUN message starts with a 20-byte header (type, length, cookie, transaction id)."""

NOMINATION: Final = 0xC001
"""Chromium's NOMINATION attribute (draft-thatcher-ice-renomination): a 32-bit counter."""

_USERNAME: Final = 0x0006
_MESSAGE_INTEGRITY: Final = 0x0008
_FINGERPRINT: Final = 0x8028
_BINDING_REQUEST: Final = 0x0001
_INTEGRITY_LENGTH: Final = 20  # HMAC-SHA1
_TRANSACTION_ID_LENGTH: Final = 12

_HEADER = struct.Struct("!HHI12s")
_HEADER_START = struct.Struct("!HHI")
_ATTRIBUTE_HEADER = struct.Struct("!HH")
_U32 = struct.Struct("!I")

# What a hostile datagram can make aioice's attribute decoders raise. UnicodeDecodeError is a
# ValueError; struct.error comes from short integer attributes.
_DECODE_ERRORS = (ValueError, struct.error, IndexError, KeyError, TypeError, OverflowError)


def is_stun(data: bytes) -> bool:
    """RFC 7983 demultiplexing: a first byte of 0..3 and at least a STUN header's length.

    Cheap enough for the per-datagram path; it does not look at the magic cookie (the parser
    does).
    """
    return len(data) >= HEADER_LENGTH and data[0] < 4


@final
class StunMessage:
    """One STUN message: method, class, 12-byte transaction id and decoded attributes.

    ``attributes`` maps aioice's attribute names (``"USERNAME"``, ``"PRIORITY"``,
    ``"XOR-MAPPED-ADDRESS"``, ``"USE-CANDIDATE"`` (value ``None``), ``"MESSAGE-INTEGRITY"``,
    ``"FINGERPRINT"``, ...) to decoded values. Chromium's NOMINATION attribute, unknown to
    aioice, is the separate ``nomination`` field. Attributes aioice does not know are dropped
    by the parser.

    ``method`` and ``message_class`` are aioice's :class:`Method` and :class:`Class` enums;
    ``message_method`` is an alias of ``method`` so that code written for
    ``aioice.stun.Message`` reads the same.
    """

    __slots__ = (
        "_integrity_input",
        "attributes",
        "message_class",
        "method",
        "nomination",
        "transaction_id",
    )

    def __init__(
        self,
        method: Method,
        message_class: Class,
        transaction_id: bytes | None = None,
        attributes: dict[str, Any] | None = None,
        *,
        nomination: int | None = None,
    ) -> None:
        if transaction_id is None:
            transaction_id = secrets.token_bytes(_TRANSACTION_ID_LENGTH)
        elif len(transaction_id) != _TRANSACTION_ID_LENGTH:
            raise ValueError("a STUN transaction id is 12 bytes")
        self.method = method
        self.message_class = message_class
        self.transaction_id = transaction_id
        self.attributes: dict[str, Any] = {} if attributes is None else attributes
        self.nomination = nomination
        # The bytes MESSAGE-INTEGRITY covers, when the message was parsed and carries one.
        self._integrity_input: bytes | None = None

    @property
    def message_method(self) -> Method:
        """Alias of :attr:`method` (aioice's spelling)."""
        return self.method

    def check_integrity(self, key: bytes) -> bool:
        """Whether this parsed message's MESSAGE-INTEGRITY matches ``key``.

        False for a message without MESSAGE-INTEGRITY or one that was not parsed.
        """
        if self._integrity_input is None:
            return False
        expected = message_integrity(self._integrity_input, key)
        return hmac.compare_digest(expected, self.attributes["MESSAGE-INTEGRITY"])

    def encode(self, *, integrity_key: bytes | None = None, fingerprint: bool = True) -> bytes:
        """Serialize; MESSAGE-INTEGRITY (when ``integrity_key`` is given) and FINGERPRINT are
        computed here and appended last, whatever ``attributes`` holds for them.

        Raises ValueError for an attribute name aioice does not know (a programming error).
        """
        parts: list[bytes] = []
        for name, value in self.attributes.items():
            if name in ("MESSAGE-INTEGRITY", "FINGERPRINT"):
                continue
            entry = ATTRIBUTES_BY_NAME.get(name)
            if entry is None:
                raise ValueError(f"unknown STUN attribute {name!r}")
            attr_type, _, pack, _ = entry
            xor = pack is pack_xor_address
            packed = pack(value, self.transaction_id) if xor else pack(value)
            parts.append(_attribute(attr_type, packed))
        if self.nomination is not None:
            parts.append(_attribute(NOMINATION, _U32.pack(self.nomination)))
        data = self._header(b"".join(parts))
        if integrity_key is not None:
            data += _attribute(_MESSAGE_INTEGRITY, message_integrity(data, integrity_key))
        if fingerprint:
            data += _attribute(_FINGERPRINT, _U32.pack(message_fingerprint(data)))
        return _set_length(data)

    def _header(self, body: bytes) -> bytes:
        message_type = int(self.method) | int(self.message_class)
        return _HEADER.pack(message_type, len(body), COOKIE, self.transaction_id) + body

    def __repr__(self) -> str:
        nomination = "" if self.nomination is None else f", nomination={self.nomination}"
        return (
            f"StunMessage(method={self.method.name}, message_class={self.message_class.name}, "
            f"transaction_id={self.transaction_id.hex()}, attributes={self.attributes}"
            f"{nomination})"
        )


def _attribute(attr_type: int, value: bytes) -> bytes:
    return _ATTRIBUTE_HEADER.pack(attr_type, len(value)) + value + bytes(-len(value) % 4)


def _set_length(data: bytes) -> bytes:
    return data[:2] + struct.pack("!H", len(data) - HEADER_LENGTH) + data[4:]


def request_ufrag_untrusted(data: bytes) -> str | None:
    """The recipient's ICE ufrag named by a Binding request: the part of its USERNAME
    (``"recipient:sender"``) before the colon; ``None`` for anything else.

    Only a lookup key for demultiplexing several ICE agents on one socket: nothing is
    verified (no MESSAGE-INTEGRITY, no FINGERPRINT); the agent the key names parses and
    checks the message itself. Never raises.
    """
    size = len(data)
    if size < HEADER_LENGTH or size % 4:
        return None
    message_type, length, cookie = _HEADER_START.unpack_from(data)
    if message_type != _BINDING_REQUEST or cookie != COOKIE or length != size - HEADER_LENGTH:
        return None
    pos = HEADER_LENGTH
    while pos + 4 <= size:
        attr_type, attr_len = _ATTRIBUTE_HEADER.unpack_from(data, pos)
        start = pos + 4
        if start + attr_len > size:
            return None
        if attr_type == _USERNAME:
            recipient, colon, _ = bytes(data[start : start + attr_len]).partition(b":")
            if not colon or not recipient:
                return None
            try:
                return recipient.decode("ascii")
            except UnicodeDecodeError:
                return None
        if attr_type == _MESSAGE_INTEGRITY:
            return None  # USERNAME comes before it, or not at all
        pos = start + attr_len + (-attr_len % 4)
    return None


def parse_stun_untrusted(
    data: bytes,
    *,
    integrity_key: bytes | None = None,
    require_fingerprint: bool = False,
) -> StunMessage:
    """Parse one STUN message from the network. Raises only :class:`BadPacket`.

    The whole of ``data`` must be the message (a UDP datagram, or one RFC 4571 frame).
    A FINGERPRINT, when present, must be the last attribute and correct. With
    ``integrity_key``, MESSAGE-INTEGRITY must be present and match (short-term credentials:
    the key is the peer's ICE password, as bytes). With ``require_fingerprint``,
    FINGERPRINT must be present (ICE requires it, RFC 8445 section 7.3).

    Attributes after MESSAGE-INTEGRITY other than FINGERPRINT are not authenticated and are
    ignored (RFC 8489 section 14.5). Of a repeated attribute, the first counts.
    """
    try:
        message = _parse(bytes(data))
    except BadPacket:
        raise
    except _DECODE_ERRORS as exc:
        raise BadPacket(f"malformed STUN message: {exc}") from exc
    if integrity_key is not None and not message.check_integrity(integrity_key):
        if message._integrity_input is None:
            raise BadPacket("STUN message has no MESSAGE-INTEGRITY")
        raise BadPacket("STUN MESSAGE-INTEGRITY does not match")
    if require_fingerprint and "FINGERPRINT" not in message.attributes:
        raise BadPacket("STUN message has no FINGERPRINT")
    return message


def _parse(data: bytes) -> StunMessage:
    size = len(data)
    if size < HEADER_LENGTH:
        raise BadPacket("shorter than a STUN header")
    message_type, length, cookie, transaction_id = _HEADER.unpack_from(data)
    if message_type & 0xC000:
        raise BadPacket("not STUN: the two top bits of the type are set")
    if cookie != COOKIE:
        raise BadPacket("not STUN: wrong magic cookie")
    if length != size - HEADER_LENGTH or length % 4:
        raise BadPacket("STUN length field does not match the message")
    try:
        method = Method(message_type & 0x3EEF)
    except ValueError:
        raise BadPacket(f"unknown STUN method in type {message_type:#06x}") from None
    message_class = Class(message_type & 0x0110)  # all four values exist

    attributes: dict[str, Any] = {}
    nomination: int | None = None
    integrity_at: int | None = None
    fingerprint_seen = False
    pos = HEADER_LENGTH
    while pos < size:
        if fingerprint_seen:
            raise BadPacket("STUN attribute after FINGERPRINT")
        # pos and size are multiples of 4, so the 4-byte attribute header fits.
        attr_type, attr_len = _ATTRIBUTE_HEADER.unpack_from(data, pos)
        start = pos + 4
        end = start + attr_len
        following = end + (-attr_len % 4)
        if following > size:
            raise BadPacket(f"STUN attribute {attr_type:#06x} overruns the message")
        if attr_type == _FINGERPRINT:
            if attr_len != 4:
                raise BadPacket("STUN FINGERPRINT is not 4 bytes")
            value = _U32.unpack_from(data, start)[0]
            if value != message_fingerprint(data[:pos]):
                raise BadPacket("STUN FINGERPRINT does not match")
            attributes["FINGERPRINT"] = value
            fingerprint_seen = True
        elif integrity_at is not None:
            pass  # not covered by MESSAGE-INTEGRITY: ignored
        elif attr_type == _MESSAGE_INTEGRITY:
            if attr_len != _INTEGRITY_LENGTH:
                raise BadPacket("STUN MESSAGE-INTEGRITY is not 20 bytes")
            attributes["MESSAGE-INTEGRITY"] = data[start:end]
            integrity_at = pos
        elif attr_type == NOMINATION:
            if attr_len != 4:
                raise BadPacket("STUN NOMINATION is not 4 bytes")
            if nomination is None:
                nomination = _U32.unpack_from(data, start)[0]
        else:
            entry = ATTRIBUTES_BY_TYPE.get(attr_type)
            if entry is not None and entry[1] not in attributes:
                _, name, _, unpack = entry
                raw = data[start:end]
                if unpack is unpack_xor_address:
                    attributes[name] = unpack(raw, transaction_id)
                else:
                    attributes[name] = unpack(raw)
        pos = following

    message = StunMessage(method, message_class, transaction_id, attributes, nomination=nomination)
    if integrity_at is not None:
        message._integrity_input = data[:integrity_at]
    return message


def _key(password: str | bytes) -> bytes:
    """Short-term credential key: the password itself (ICE passwords are ASCII ice-chars,
    which SASLprep / OpaqueString leave unchanged)."""
    return password.encode() if isinstance(password, str) else bytes(password)


def build_binding_request(
    *,
    username: str,
    password: str | bytes,
    priority: int,
    ice_controlling_tiebreaker: int | None,
    use_candidate: bool,
    transaction_id: bytes | None = None,
    ice_controlled_tiebreaker: int | None = None,
    nomination: int | None = None,
) -> tuple[bytes, bytes]:
    """An ICE connectivity check (RFC 8445 section 7.2.2): a Binding request with USERNAME,
    PRIORITY, ICE-CONTROLLING (or ICE-CONTROLLED), USE-CANDIDATE when nominating, NOMINATION
    when given, then MESSAGE-INTEGRITY keyed with ``password`` and FINGERPRINT.

    ``username`` is ``"{remote ufrag}:{local ufrag}"``. Returns ``(bytes, transaction_id)``;
    a random transaction id is drawn unless one is given (retransmissions reuse theirs).
    """
    attributes: dict[str, Any] = {"USERNAME": username, "PRIORITY": priority}
    if ice_controlling_tiebreaker is not None:
        attributes["ICE-CONTROLLING"] = ice_controlling_tiebreaker
    if ice_controlled_tiebreaker is not None:
        attributes["ICE-CONTROLLED"] = ice_controlled_tiebreaker
    if use_candidate:
        attributes["USE-CANDIDATE"] = None
    message = StunMessage(
        Method.BINDING, Class.REQUEST, transaction_id, attributes, nomination=nomination
    )
    return message.encode(integrity_key=_key(password)), message.transaction_id


def build_binding_success(
    request: StunMessage, *, address: tuple[str, int], password: str | bytes
) -> bytes:
    """The success response to ``request``: XOR-MAPPED-ADDRESS ``address`` (where the request
    came from), MESSAGE-INTEGRITY keyed with ``password`` (our own ICE password) and
    FINGERPRINT. An IPv6 zone suffix (``%eth0``) in ``address`` is left out."""
    host = address[0].partition("%")[0]
    response = StunMessage(
        Method.BINDING,
        Class.RESPONSE,
        request.transaction_id,
        {"XOR-MAPPED-ADDRESS": (host, address[1])},
    )
    return response.encode(integrity_key=_key(password))


def build_binding_error(
    request: StunMessage, code: int, reason: str, password: str | bytes | None = None
) -> bytes:
    """An error response to ``request`` (400 Bad Request, 401 Unauthenticated, 487 Role
    Conflict, ...): ERROR-CODE, MESSAGE-INTEGRITY when ``password`` is given (RFC 8489: not
    for 400 and 401, which answer requests that failed authentication), and FINGERPRINT."""
    if not 300 <= code <= 699:
        raise ValueError(f"STUN error code {code} is outside 300..699")
    response = StunMessage(
        Method.BINDING, Class.ERROR, request.transaction_id, {"ERROR-CODE": (code, reason)}
    )
    return response.encode(integrity_key=None if password is None else _key(password))
