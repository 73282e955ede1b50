"""RTP header extensions by meaning: URIs, negotiated id maps, and value codecs. Sans-IO.

:mod:`trio_sfu.rtp.packet` moves extension elements as ``{id: bytes}``; this module says
which id means what for one stream (:class:`ExtensionMap`, from the negotiated
``headerExtensions``) and turns the values into numbers and strings and back.

Every ``decode_*_untrusted`` function takes the value bytes of one element, as received,
and raises :class:`~trio_sfu.errors.BadPacket` and nothing else if they are malformed.
Every ``encode_*`` function raises ``ValueError`` for a value its field cannot hold.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Final, final

import attrs

from trio_sfu.errors import BadPacket
from trio_sfu.rtp.packet import Buffer

__all__ = [
    "ABS_CAPTURE_TIME_URI",
    "ABS_SEND_TIME_URI",
    "DEPENDENCY_DESCRIPTOR_URI",
    "MID_URI",
    "PLAYOUT_DELAY_URI",
    "REPAIRED_RID_URI",
    "RID_URI",
    "SSRC_AUDIO_LEVEL_URI",
    "TOFFSET_URI",
    "TRANSPORT_WIDE_CC_URI",
    "VIDEO_ORIENTATION_URI",
    "AudioLevel",
    "ExtensionMap",
    "PlayoutDelay",
    "VideoOrientation",
    "decode_abs_send_time_untrusted",
    "decode_audio_level_untrusted",
    "decode_playout_delay_untrusted",
    "decode_sdes_item_untrusted",
    "decode_toffset_untrusted",
    "decode_transport_wide_seq_untrusted",
    "decode_video_orientation_untrusted",
    "encode_abs_send_time",
    "encode_audio_level",
    "encode_playout_delay",
    "encode_sdes_item",
    "encode_toffset",
    "encode_transport_wide_seq",
    "encode_video_orientation",
]

# The URIs exactly as mediasoup's supportedRtpCapabilities and Chromium spell them.
MID_URI: Final = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_URI: Final = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI: Final = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
ABS_SEND_TIME_URI: Final = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TRANSPORT_WIDE_CC_URI: Final = (
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
)
SSRC_AUDIO_LEVEL_URI: Final = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
VIDEO_ORIENTATION_URI: Final = "urn:3gpp:video-orientation"
TOFFSET_URI: Final = "urn:ietf:params:rtp-hdrext:toffset"
ABS_CAPTURE_TIME_URI: Final = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"
PLAYOUT_DELAY_URI: Final = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
DEPENDENCY_DESCRIPTOR_URI: Final = (
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"
)


@final
class ExtensionMap:
    """The negotiated header extensions of one stream: id <-> URI.

    Built from ``{id: uri}``, as in ``{e.id: e.uri for e in rtp_parameters.header_extensions}``.
    Ids are 1-255 (1-14 fit the one-byte form; Chromium may negotiate 15 and up). Each URI
    may have one id only. Raises ``ValueError`` otherwise. The map is read-only.
    """

    __slots__ = ("_by_id", "_by_uri")

    def __init__(self, uris_by_id: Mapping[int, str]) -> None:
        by_uri: dict[str, int] = {}
        for ext_id, uri in uris_by_id.items():
            if not 1 <= ext_id <= 255:
                raise ValueError(f"header extension id {ext_id} for {uri}: must be 1-255")
            if uri in by_uri:
                raise ValueError(f"{uri} has two ids, {by_uri[uri]} and {ext_id}")
            by_uri[uri] = ext_id
        self._by_id = dict(uris_by_id)
        self._by_uri = by_uri

    def uri_of(self, ext_id: int) -> str | None:
        """The URI negotiated for ``ext_id``, or ``None``."""
        return self._by_id.get(ext_id)

    def id_of(self, uri: str) -> int | None:
        """The id negotiated for ``uri``, or ``None``."""
        return self._by_uri.get(uri)

    def id_map_to(self, other: ExtensionMap) -> dict[int, int]:
        """``{our id: other's id}`` for each URI both maps have: the ``id_map`` for
        :func:`~trio_sfu.rtp.packet.rewrite_extensions_untrusted` from our streams to theirs.
        """
        by_uri = other._by_uri
        return {ext_id: by_uri[uri] for ext_id, uri in self._by_id.items() if uri in by_uri}

    def items(self) -> Iterator[tuple[int, str]]:
        """``(id, uri)`` pairs in the order given."""
        return iter(self._by_id.items())

    def __contains__(self, ext_id: object) -> bool:
        return ext_id in self._by_id

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExtensionMap):
            return NotImplemented
        return self._by_id == other._by_id

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ExtensionMap({self._by_id!r})"


# -- mid, rid, repaired-rid (RFC 8843, RFC 8852) -----------------------------------------------


def encode_sdes_item(text: str) -> bytes:
    """A mid, rid or repaired-rid value: 1-255 visible ASCII characters.

    (Values longer than 16 bytes need the two-byte extension form.)
    """
    if not 1 <= len(text) <= 255 or not all("!" <= ch <= "~" for ch in text):
        raise ValueError(f"SDES item {text!r}: must be 1-255 visible ASCII characters")
    return text.encode("ascii")


def decode_sdes_item_untrusted(value: Buffer) -> str:
    """A mid, rid or repaired-rid as text.

    A NUL byte ends the string (libwebrtc reads it the same way; some senders pad with
    NULs). Empty, or anything but visible ASCII before the NUL, is a ``BadPacket``.
    """
    raw = bytes(value)
    nul = raw.find(0)
    if nul >= 0:
        raw = raw[:nul]
    if not raw or not all(0x21 <= byte <= 0x7E for byte in raw):
        raise BadPacket(f"SDES item {raw!r}: not 1 or more visible ASCII characters")
    return raw.decode("ascii")


# -- abs-send-time (webrtc.org) ----------------------------------------------------------------


def encode_abs_send_time(now: float) -> bytes:
    """abs-send-time for ``now`` (seconds, from any epoch, >= 0): 24-bit 6.18 fixed point.

    The value wraps every 64 s; fractions below 2**-18 s are truncated, as libwebrtc does.
    """
    if not 0.0 <= now < math.inf:
        raise ValueError(f"abs-send-time of {now} s: must be finite and >= 0")
    return (int(now * 262144.0) & 0xFFFFFF).to_bytes(3, "big")


def decode_abs_send_time_untrusted(value: Buffer) -> float:
    """abs-send-time in seconds, 0 <= t < 64 (the sender's clock modulo 64 s)."""
    if len(value) != 3:
        raise BadPacket(f"abs-send-time of {len(value)} bytes, expected 3")
    return int.from_bytes(value, "big") / 262144.0


# -- transport-wide-cc-01 (draft-holmer-rmcat-transport-wide-cc-extensions-01) -----------------


def encode_transport_wide_seq(seq: int) -> bytes:
    """The 16-bit transport-wide sequence number, taken modulo 2**16."""
    return (seq & 0xFFFF).to_bytes(2, "big")


def decode_transport_wide_seq_untrusted(value: Buffer) -> int:
    if len(value) != 2:
        raise BadPacket(f"transport-wide sequence number of {len(value)} bytes, expected 2")
    return int.from_bytes(value, "big")


# -- ssrc-audio-level (RFC 6464) ---------------------------------------------------------------


@attrs.frozen
class AudioLevel:
    """RFC 6464: ``voice`` is the V bit; ``level`` is 0-127, in -dBov (0 loudest, 127 silence)."""

    voice: bool
    level: int


def encode_audio_level(audio_level: AudioLevel) -> bytes:
    if not 0 <= audio_level.level <= 127:
        raise ValueError(f"audio level {audio_level.level}: must be 0-127 (-dBov)")
    return bytes(((0x80 if audio_level.voice else 0) | audio_level.level,))


def decode_audio_level_untrusted(value: Buffer) -> AudioLevel:
    if len(value) != 1:
        raise BadPacket(f"audio level of {len(value)} bytes, expected 1")
    byte = value[0]
    return AudioLevel(voice=byte >= 0x80, level=byte & 0x7F)


# -- video-orientation (3GPP TS 26.114, section 7.4.5: CVO) ------------------------------------


@attrs.frozen
class VideoOrientation:
    """The CVO byte ``0 0 0 0 C F R1 R0``.

    ``back_facing`` is C (camera: 0 front, 1 back), ``flip`` is F (horizontal flip),
    ``rotation`` is R1R0 times 90 degrees: 0, 90, 180 or 270.
    """

    back_facing: bool
    flip: bool
    rotation: int


def encode_video_orientation(orientation: VideoOrientation) -> bytes:
    if orientation.rotation not in (0, 90, 180, 270):
        raise ValueError(f"rotation {orientation.rotation}: must be 0, 90, 180 or 270")
    return bytes(
        (
            (0x08 if orientation.back_facing else 0)
            | (0x04 if orientation.flip else 0)
            | orientation.rotation // 90,
        )
    )


def decode_video_orientation_untrusted(value: Buffer) -> VideoOrientation:
    """The CVO byte; its 4 reserved high bits are ignored."""
    if len(value) != 1:
        raise BadPacket(f"video orientation of {len(value)} bytes, expected 1")
    byte = value[0]
    return VideoOrientation(
        back_facing=bool(byte & 0x08), flip=bool(byte & 0x04), rotation=(byte & 0x03) * 90
    )


# -- playout-delay (webrtc.org) ----------------------------------------------------------------


@attrs.frozen
class PlayoutDelay:
    """Minimum and maximum playout delay in milliseconds, each 0-40950 in 10 ms steps."""

    min_ms: int
    max_ms: int


def encode_playout_delay(delay: PlayoutDelay) -> bytes:
    """Two 12-bit counts of 10 ms; milliseconds below 10 are truncated."""
    if not 0 <= delay.min_ms <= delay.max_ms <= 40950:
        raise ValueError(f"playout delay {delay}: need 0 <= min <= max <= 40950 ms")
    return (((delay.min_ms // 10) << 12) | (delay.max_ms // 10)).to_bytes(3, "big")


def decode_playout_delay_untrusted(value: Buffer) -> PlayoutDelay:
    """Rejects a minimum above the maximum, as libwebrtc does."""
    if len(value) != 3:
        raise BadPacket(f"playout delay of {len(value)} bytes, expected 3")
    raw = int.from_bytes(value, "big")
    delay = PlayoutDelay(min_ms=(raw >> 12) * 10, max_ms=(raw & 0xFFF) * 10)
    if delay.min_ms > delay.max_ms:
        raise BadPacket(f"playout delay minimum {delay.min_ms} ms above maximum {delay.max_ms}")
    return delay


# -- toffset (RFC 5450) ------------------------------------------------------------------------


def encode_toffset(offset: int) -> bytes:
    """Transmission time offset in RTP timestamp units: a signed 24-bit integer."""
    if not -0x800000 <= offset <= 0x7FFFFF:
        raise ValueError(f"transmission time offset {offset}: must fit 24 bits, signed")
    return (offset & 0xFFFFFF).to_bytes(3, "big")


def decode_toffset_untrusted(value: Buffer) -> int:
    if len(value) != 3:
        raise BadPacket(f"transmission time offset of {len(value)} bytes, expected 3")
    return int.from_bytes(value, "big", signed=True)
