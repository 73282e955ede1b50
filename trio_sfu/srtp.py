"""SRTP and SRTCP protection (RFC 3711, RFC 7714) on top of libsrtp, sans-IO.

One :class:`SrtpSession` per DTLS association: an outbound libsrtp session keyed with
our master key (protects every SSRC we send, ``ssrc_any_outbound``) and an inbound one
keyed with the peer's (``ssrc_any_inbound``). Keys come from the DTLS-SRTP exporter
(:mod:`trio_sfu.dtls`, RFC 5764 section 4.2) as :class:`SrtpKeys`.

Error contract: the ``*_untrusted`` methods read network bytes and raise only
:class:`~trio_sfu.errors.BadPacket` (authentication failure, replay, truncation,
garbage, oversize). The protect methods raise ``BadPacket`` too when libsrtp refuses
the packet (shorter than an RTP/RTCP header, too large for libsrtp's 1500-byte buffer),
so that an egress loop has one exception to count and drop.

This module never imports trio and never reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, final

import attrs
import pylibsrtp

from trio_sfu.errors import BadPacket

__all__ = [
    "REPLAY_WINDOW",
    "SRTP_CRYPTO_SUITES",
    "SRTP_PROFILES",
    "SRTP_PROFILE_PARAMETERS",
    "SrtpKeys",
    "SrtpProfile",
    "SrtpSession",
]


@final
@attrs.frozen
class SrtpProfile:
    """One DTLS-SRTP protection profile: OpenSSL's name, key sizes, libsrtp's constant."""

    name: str
    key_len: int
    salt_len: int
    libsrtp_profile: int

    @property
    def master_len(self) -> int:
        """Length of master key + master salt, as libsrtp takes them."""
        return self.key_len + self.salt_len


#: Every profile we can run, by OpenSSL's name (the name ``use_srtp`` negotiates).
#: RFC 7714 section 12 (AEAD_AES_128_GCM: 128-bit key, 96-bit salt) and RFC 5764
#: section 4.1.2 (AES128_CM_HMAC_SHA1_80: 128-bit key, 112-bit salt).
SRTP_PROFILE_PARAMETERS: Final[Mapping[str, SrtpProfile]] = {
    "SRTP_AEAD_AES_128_GCM": SrtpProfile(
        name="SRTP_AEAD_AES_128_GCM",
        key_len=16,
        salt_len=12,
        libsrtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    ),
    "SRTP_AES128_CM_SHA1_80": SrtpProfile(
        name="SRTP_AES128_CM_SHA1_80",
        key_len=16,
        salt_len=14,
        libsrtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    ),
    # Only for keys exchanged in signaling (PlainTransport): DTLS never offers these two.
    "SRTP_AEAD_AES_256_GCM": SrtpProfile(
        name="SRTP_AEAD_AES_256_GCM",
        key_len=32,
        salt_len=12,
        libsrtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
    ),
    "SRTP_AES128_CM_SHA1_32": SrtpProfile(
        name="SRTP_AES128_CM_SHA1_32",
        key_len=16,
        salt_len=14,
        libsrtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    ),
}

#: mediasoup's ``SrtpCryptoSuite`` names (a PlainTransport's ``srtpParameters``; also
#: ffmpeg's ``-srtp_out_suite``) -> the profile.
SRTP_CRYPTO_SUITES: Final[Mapping[str, str]] = {
    "AEAD_AES_256_GCM": "SRTP_AEAD_AES_256_GCM",
    "AEAD_AES_128_GCM": "SRTP_AEAD_AES_128_GCM",
    "AES_CM_128_HMAC_SHA1_80": "SRTP_AES128_CM_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32": "SRTP_AES128_CM_SHA1_32",
}

#: Our preference order. GCM first: it authenticates and encrypts in one AEAD pass and
#: costs about half of AES-CM + HMAC-SHA1 here (see scripts/bench_srtp.py).
SRTP_PROFILES: Final[tuple[str, ...]] = ("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80")

#: Replay window in packets (libsrtp's default is 128). A video stream at 1000 packets/s
#: that is reordered or repaired over a 300 ms path easily lands more than 128 indexes
#: behind the newest packet; 1024 is what browsers use, and it still rejects true replays.
REPLAY_WINDOW: Final = 1024


@attrs.frozen
class SrtpKeys:
    """The SRTP master keys of one association.

    ``local_master`` protects what we send, ``remote_master`` checks what we receive;
    each is master key + master salt concatenated, as libsrtp expects.
    """

    profile: str
    local_master: bytes = attrs.field(repr=False)
    remote_master: bytes = attrs.field(repr=False)


@final
class SrtpSession:
    """SRTP/SRTCP protect (outbound) and unprotect (inbound) for one association.

    Any SSRC is accepted both ways: a new outbound SSRC (a new consumer, an RTX stream)
    gets its libsrtp stream on its first protect, an inbound one on its first packet that
    authenticates (garbage never allocates a stream). Protecting the same sequence number
    twice on one SSRC (a NACK answered without RTX) is allowed.
    """

    __slots__ = (
        "_inbound",
        "_inbound_raw",
        "_length",
        "_outbound",
        "_outbound_raw",
        "profile",
    )

    def __init__(self, keys: SrtpKeys) -> None:
        try:
            profile = SRTP_PROFILE_PARAMETERS[keys.profile]
        except KeyError:
            raise ValueError(f"unsupported SRTP profile {keys.profile!r}") from None
        for which, master in (("local", keys.local_master), ("remote", keys.remote_master)):
            if len(master) != profile.master_len:
                raise ValueError(
                    f"{which} master key+salt is {len(master)} bytes, "
                    f"{profile.name} needs {profile.master_len}"
                )
        self.profile: Final = profile.name

        outbound = pylibsrtp.Policy(
            key=bytes(keys.local_master),
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=profile.libsrtp_profile,
        )
        outbound.allow_repeat_tx = True
        outbound.window_size = REPLAY_WINDOW
        inbound = pylibsrtp.Policy(
            key=bytes(keys.remote_master),
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
            srtp_profile=profile.libsrtp_profile,
        )
        inbound.window_size = REPLAY_WINDOW
        self._outbound: Final = pylibsrtp.Session(outbound)
        self._inbound: Final = pylibsrtp.Session(inbound)
        # The packet path calls libsrtp through pylibsrtp's own cffi binding and buffers,
        # without pylibsrtp's per-call wrapper (a Python frame, a type check and an int*
        # allocated per packet: about a fifth of a 1200-byte protect). Same functions, same
        # limits, same errors; the public API where that binding is not what we expect.
        self._outbound_raw = _raw_session(self._outbound)
        self._inbound_raw = _raw_session(self._inbound)
        self._length = _SHARED_LENGTH

    def protect_rtp(self, packet: bytes | bytearray) -> bytes:
        """Encrypt and authenticate one RTP packet; BadPacket if libsrtp refuses it."""
        raw = self._outbound_raw
        if raw is None:
            try:
                return self._outbound.protect(bytes(packet))
            except (pylibsrtp.Error, ValueError, TypeError) as exc:
                raise BadPacket(f"SRTP protect failed: {exc}") from None
        # _call() inlined: this runs once per forwarded packet.
        handle, cdata, buffer = raw
        size = len(packet)
        if size > _BUFFER_SIZE - _RTP_TRAILER:
            raise BadPacket("SRTP protect failed: packet is too long")
        length: Any = self._length
        length[0] = size
        buffer[0:size] = packet
        rc = _lib.srtp_protect(handle, cdata, length)
        if rc:
            raise BadPacket(f"SRTP protect failed: {_error(rc)}")
        result: bytes = buffer[0 : length[0]]
        return result

    def protect_rtcp(self, packet: bytes | bytearray) -> bytes:
        """Encrypt and authenticate one (compound) RTCP packet into SRTCP."""
        try:
            return self._outbound.protect_rtcp(bytes(packet))
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise BadPacket(f"SRTCP protect failed: {exc}") from None

    def unprotect_rtp_untrusted(self, data: bytes) -> bytes:
        """Check and decrypt one SRTP packet from the network.

        Raises BadPacket (only) for a bad tag, a replayed or too old index, a truncated
        or oversized packet or any other garbage.
        """
        raw = self._inbound_raw
        if raw is None:
            if type(data) is not bytes:
                data = bytes(data)
            try:
                return self._inbound.unprotect(data)
            except (pylibsrtp.Error, ValueError, TypeError) as exc:
                raise BadPacket(f"SRTP unprotect failed: {exc}") from None
        return self._call(raw, _lib.srtp_unprotect, data, 0, "SRTP unprotect")

    def unprotect_rtcp_untrusted(self, data: bytes) -> bytes:
        """Check and decrypt one SRTCP packet from the network (BadPacket only)."""
        if type(data) is not bytes:
            data = bytes(data)
        try:
            return self._inbound.unprotect_rtcp(data)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise BadPacket(f"SRTCP unprotect failed: {exc}") from None

    def _call(
        self, raw: tuple[Any, Any, Any], function: Any, data: bytes, trailer: int, what: str
    ) -> bytes:
        handle, cdata, buffer = raw
        size = len(data)
        if size > _BUFFER_SIZE - trailer:
            raise BadPacket(f"{what} failed: packet is too long")
        length: Any = self._length
        length[0] = size
        buffer[0:size] = data
        rc = function(handle, cdata, length)
        if rc:
            raise BadPacket(f"{what} failed: {_error(rc)}")
        result: bytes = buffer[0 : length[0]]
        return result


def _error(rc: int) -> str:
    return _ERRORS[rc] if 0 <= rc < len(_ERRORS) else f"libsrtp error {rc}"


def _raw_session(session: pylibsrtp.Session) -> tuple[Any, Any, Any] | None:
    """(srtp_t, buffer pointer, buffer view) of a pylibsrtp session, or None if this
    pylibsrtp keeps them otherwise."""
    if _lib is None:
        return None
    try:
        handle, _, buffer = session._srtp[0], session._cdata, session._buffer
    except (AttributeError, TypeError, IndexError):
        return None
    if len(buffer) != _BUFFER_SIZE:
        return None
    # Every call copies the packet in, runs libsrtp and copies the result out without
    # yielding, so one buffer serves every session of the process: pylibsrtp's own
    # methods (used for SRTCP) take it too, and the session's 1.5 KB buffer is freed.
    session._cdata, session._buffer = _SHARED_CDATA, _SHARED_BUFFER
    return handle, _SHARED_CDATA, _SHARED_BUFFER


try:
    from pylibsrtp import _binding

    _ffi: Any = _binding.ffi
    _lib: Any = _binding.lib
    _ERRORS: list[str] = list(pylibsrtp.ERRORS)
    _RTP_TRAILER: int = pylibsrtp.SRTP_MAX_TRAILER_LEN
except (ImportError, AttributeError):  # another pylibsrtp: the public API only
    _ffi = _lib = None
    _ERRORS = []
    _RTP_TRAILER = 0
#: pylibsrtp's buffer per session: the largest packet it protects is this minus the trailer.
_BUFFER_SIZE: Final = 1500
#: The one packet buffer (and length cell) of every session (see _raw_session).
_SHARED_CDATA: Any = _ffi.new("char[]", _BUFFER_SIZE) if _ffi is not None else None
_SHARED_BUFFER: Any = _ffi.buffer(_SHARED_CDATA) if _ffi is not None else None
_SHARED_LENGTH: Any = _ffi.new("int *") if _ffi is not None else None
