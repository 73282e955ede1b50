"""The VP8 RTP payload descriptor, RFC 7741 section 4.2 (sans-IO).

Layout, one line per octet; every octet after the first is present only when flagged::

         0 1 2 3 4 5 6 7
        +-+-+-+-+-+-+-+-+
        |X|R|N|S|R| PID |   X: extension octet follows, N: non-reference frame,
        +-+-+-+-+-+-+-+-+   S: start of a partition, PID: partition index (0-7)
   X:   |I|L|T|K| RSV   |   I: PictureID, L: TL0PICIDX, T: TID/Y, K: KEYIDX present
        +-+-+-+-+-+-+-+-+
   I:   |M| PictureID   |   M=1: 15-bit PictureID (two octets), M=0: 7-bit (one octet)
        +-+-+-+-+-+-+-+-+
   M:   |   PictureID   |
        +-+-+-+-+-+-+-+-+
   L:   |   TL0PICIDX   |   running index of the base (TID 0) layer frames
        +-+-+-+-+-+-+-+-+
   T/K: |TID|Y| KEYIDX  |   temporal layer id, layer sync, temporal key frame index
        +-+-+-+-+-+-+-+-+

The VP8 payload follows; the first octet of a frame's first partition carries the
inverse key frame flag P in its lowest bit (RFC 7741 section 4.3): P=0 is a key frame.

Every function that takes payload bytes treats them as untrusted network input and raises
only :class:`~trio_sfu.errors.BadPacket`. A payload must hold at least one octet after the
descriptor. Reserved bits are ignored when reading and written as zero.

Rewriting never changes the descriptor's layout: fields present stay present at the same
width (a 7-bit PictureID stays 7-bit and gets the low 7 bits of the new value), absent
fields stay absent. So the packet keeps its length, and the RTP header offsets computed
for it stay valid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple, final

import attrs

from trio_sfu.errors import BadPacket
from trio_sfu.rtp.rewriter import Splicer

Buffer = bytes | bytearray | memoryview

#: How far behind the newest PictureID a late picture is still forwarded (34 s at 30 fps).
PICTURE_ID_MAX_AGE: Final = 1024

_X = 0x80
_N = 0x20
_S = 0x10
_PID = 0x07
_I = 0x80
_L = 0x40
_T = 0x20
_K = 0x10
_M = 0x80
_Y = 0x20
_KEYIDX = 0x1F

_new_tuple = tuple.__new__


class Vp8Info(NamedTuple):
    """What the packet path needs from a VP8 packet; fields absent from the descriptor are None.

    Built by :func:`summarize_untrusted`. It is a plain tuple underneath (cheap to make).
    """

    picture_id: int | None
    #: 7 or 15 for a present PictureID, 0 when absent.
    picture_id_bits: int
    tl0picidx: int | None
    #: Temporal layer id (T bit set), else None.
    tid: int | None
    #: Y bit: this frame depends only on TID-0 frames (False without the T bit).
    layer_sync: bool
    #: A key frame starts in this packet.
    keyframe: bool
    #: S=1 and PID=0: the first packet of a frame.
    start_of_frame: bool
    #: Bytes of payload descriptor before the VP8 payload.
    header_length: int


def summarize_untrusted(payload: Buffer) -> Vp8Info:
    """Parse the payload descriptor of an RTP payload (untrusted: raises only BadPacket)."""
    # Hot path: bit masks are written as literals (a global lookup each costs more than the
    # test); they are the _X, _I, _M, _L, _T, _K, _Y, _S and _PID constants above.
    picture_id: int | None
    tl0picidx: int | None
    tid: int | None
    try:
        b0 = payload[0]
        if b0 & 0x80:  # X
            x = payload[1]
            if x & 0x80:  # I
                p = payload[2]
                if p & 0x80:  # M: 15-bit PictureID
                    picture_id = (p & 0x7F) << 8 | payload[3]
                    picture_id_bits = 15
                    pos = 4
                else:
                    picture_id = p
                    picture_id_bits = 7
                    pos = 3
            else:
                picture_id = None
                picture_id_bits = 0
                pos = 2
            if x & 0x40:  # L
                tl0picidx = payload[pos]
                pos += 1
            else:
                tl0picidx = None
            if x & 0x30:  # T or K: the TID/Y/KEYIDX octet
                if x & 0x20:  # T
                    tk = payload[pos]
                    tid = tk >> 6
                    layer_sync = tk & 0x20 != 0  # Y
                else:
                    tid = None
                    layer_sync = False
                pos += 1
            else:
                tid = None
                layer_sync = False
        else:
            picture_id = tl0picidx = tid = None
            picture_id_bits = 0
            layer_sync = False
            pos = 1
        first_payload_octet = payload[pos]
    except IndexError:
        raise BadPacket("VP8 payload descriptor truncated") from None
    start_of_frame = b0 & 0x17 == 0x10  # S=1, PID=0
    return _new_tuple(
        Vp8Info,
        (
            picture_id,
            picture_id_bits,
            tl0picidx,
            tid,
            layer_sync,
            start_of_frame and not first_payload_octet & 0x01,  # P=0: key frame
            start_of_frame,
            pos,
        ),
    )


def is_keyframe(payload: Buffer) -> bool:
    """Whether a key frame starts in this RTP payload (untrusted: raises only BadPacket).

    True when S=1, PID=0 and the P bit of the first VP8 payload octet is 0.
    """
    return summarize_untrusted(payload).keyframe


def _opt_int(bits: int) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    """An attrs validator: None or an int of at most ``bits`` bits."""

    def check(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not (isinstance(value, int) and 0 <= value < 1 << bits):
            raise ValueError(f"{attribute.name} must be an int in 0..{(1 << bits) - 1}")

    return check


@final
@attrs.frozen
class Vp8Descriptor:
    """Every field of a VP8 payload descriptor; for tests, tools and building packets.

    The hot path uses :func:`summarize_untrusted` instead. ``extended`` (X) is forced on
    when any optional field is present.
    """

    start_of_partition: bool = False
    partition_index: int = attrs.field(default=0, validator=_opt_int(3))
    non_reference: bool = False
    extended: bool = False
    picture_id: int | None = attrs.field(default=None, validator=_opt_int(15))
    #: M bit: two-octet PictureID. A PictureID of 128 or more needs it.
    long_picture_id: bool = True
    tl0picidx: int | None = attrs.field(default=None, validator=_opt_int(8))
    tid: int | None = attrs.field(default=None, validator=_opt_int(2))
    layer_sync: bool = False
    key_idx: int | None = attrs.field(default=None, validator=_opt_int(5))

    def __attrs_post_init__(self) -> None:
        if self.picture_id is not None and not self.long_picture_id and self.picture_id > 0x7F:
            raise ValueError("a 7-bit PictureID must be below 128")
        if self.layer_sync and self.tid is None:
            raise ValueError("layer_sync needs a tid (the T bit)")
        has_ext = (
            self.picture_id is not None
            or self.tl0picidx is not None
            or self.tid is not None
            or self.key_idx is not None
        )
        if has_ext and not self.extended:
            object.__setattr__(self, "extended", True)

    @property
    def header_length(self) -> int:
        if not self.extended:
            return 1
        n = 2
        if self.picture_id is not None:
            n += 2 if self.long_picture_id else 1
        if self.tl0picidx is not None:
            n += 1
        if self.tid is not None or self.key_idx is not None:
            n += 1
        return n

    def to_bytes(self) -> bytes:
        """The descriptor's octets (without any VP8 payload)."""
        b0 = self.partition_index
        if self.start_of_partition:
            b0 |= _S
        if self.non_reference:
            b0 |= _N
        if not self.extended:
            return bytes((b0,))
        out = bytearray((b0 | _X, 0))
        x = 0
        if self.picture_id is not None:
            x |= _I
            if self.long_picture_id:
                out += bytes((_M | self.picture_id >> 8, self.picture_id & 0xFF))
            else:
                out.append(self.picture_id)
        if self.tl0picidx is not None:
            x |= _L
            out.append(self.tl0picidx)
        if self.tid is not None or self.key_idx is not None:
            tk = 0
            if self.tid is not None:
                x |= _T
                tk = self.tid << 6 | (_Y if self.layer_sync else 0)
            if self.key_idx is not None:
                x |= _K
                tk |= self.key_idx
            out.append(tk)
        out[1] = x
        return bytes(out)

    @classmethod
    def parse_untrusted(cls, payload: Buffer) -> Vp8Descriptor:
        """Parse every field (untrusted: raises only BadPacket)."""
        info = summarize_untrusted(payload)
        b0 = payload[0]
        extended = bool(b0 & _X)
        key_idx = None
        if extended and payload[1] & _K:
            key_idx = payload[info.header_length - 1] & _KEYIDX
        return cls(
            start_of_partition=bool(b0 & _S),
            partition_index=b0 & _PID,
            non_reference=bool(b0 & _N),
            extended=extended,
            picture_id=info.picture_id,
            long_picture_id=info.picture_id_bits != 7,
            tl0picidx=info.tl0picidx,
            tid=info.tid,
            layer_sync=info.layer_sync,
            key_idx=key_idx,
        )


def _field_offsets(payload: Buffer) -> tuple[int, int, int]:
    """(PictureID offset or -1, PictureID octets 0/1/2, TL0PICIDX offset or -1)."""
    try:
        pos = 1
        pid_at = -1
        pid_len = 0
        tl0_at = -1
        if payload[0] & _X:
            x = payload[1]
            pos = 2
            if x & _I:
                pid_at = 2
                pid_len = 2 if payload[2] & _M else 1
                pos += pid_len
            if x & _L:
                tl0_at = pos
                pos += 1
            if x & (_T | _K):
                pos += 1
    except IndexError:
        raise BadPacket("VP8 payload descriptor truncated") from None
    if pos >= len(payload):
        raise BadPacket("VP8 payload descriptor truncated")
    return pid_at, pid_len, tl0_at


def write_picture_id(
    buf: bytearray | memoryview, picture_id: int | None, tl0picidx: int | None
) -> None:
    """Set PictureID and TL0PICIDX in place in ``buf``, a writable VP8 RTP payload.

    ``buf`` is untrusted (raises only BadPacket). ``None`` leaves a field unchanged; a value
    for a field the descriptor lacks is ignored (see the module docstring).
    """
    pid_at, pid_len, tl0_at = _field_offsets(buf)
    if picture_id is not None:
        if pid_len == 2:
            buf[pid_at] = _M | (picture_id >> 8) & 0x7F
            buf[pid_at + 1] = picture_id & 0xFF
        elif pid_len == 1:
            buf[pid_at] = picture_id & 0x7F
    if tl0picidx is not None and tl0_at >= 0:
        buf[tl0_at] = tl0picidx & 0xFF


def rewrite_picture_id(payload: Buffer, picture_id: int | None, tl0picidx: int | None) -> bytes:
    """A copy of the VP8 RTP ``payload`` with PictureID and TL0PICIDX replaced.

    ``payload`` is untrusted (raises only BadPacket). ``None`` leaves a field unchanged;
    present fields keep their width (a 7-bit PictureID gets ``picture_id & 0x7F``) and
    absent fields stay absent, so the result has the payload's length.
    """
    buf = bytearray(payload)
    write_picture_id(buf, picture_id, tl0picidx)
    return bytes(buf)


@final
class Vp8Continuity:
    """Map PictureID and TL0PICIDX of spliced VP8 streams into one continuous sequence.

    Used with :class:`~trio_sfu.rtp.rewriter.SeqTsRewriter` when a consumer switches
    simulcast streams: call :meth:`switch_to` with the summary of the new stream's first
    forwarded packet (a key frame), then :meth:`map` for each forwarded packet. Outgoing
    PictureIDs are 15-bit (wrapping at 2**15), TL0PICIDX 8-bit (wrapping at 2**8); the new
    stream's first picture follows the last outgoing picture by one, and its TL0PICIDX the
    last outgoing one by one (a key frame is a TID 0 frame). A 7-bit source PictureID is
    unwrapped modulo 2**7 and spliced into the 15-bit sequence.

    :meth:`drop_picture` leaves a whole picture out (a skipped temporal layer frame)
    without a PictureID gap. TID 0 frames are never dropped on their own, so TL0PICIDX
    has no drop.
    """

    __slots__ = ("_has_pid", "_has_tl0", "_pid", "_tl0")

    def __init__(
        self, initial_picture_id: int | None = None, initial_tl0picidx: int | None = None
    ) -> None:
        # A late picture more than PICTURE_ID_MAX_AGE behind is not forwarded: that
        # bounds the drops a temporal-layer filter has to remember.
        self._pid = Splicer(15, initial_picture_id, max_age=PICTURE_ID_MAX_AGE)
        self._tl0 = Splicer(8, initial_tl0picidx)
        self._has_pid = False
        self._has_tl0 = False

    def switch_to(self, first: Vp8Info) -> None:
        """Start a new source stream whose first forwarded packet is summarised by ``first``."""
        self._has_pid = first.picture_id is not None
        if first.picture_id is not None:
            self._pid.switch_to(first.picture_id, in_bits=first.picture_id_bits)
        self._has_tl0 = first.tl0picidx is not None
        if first.tl0picidx is not None:
            self._tl0.switch_to(first.tl0picidx)

    def map(self, info: Vp8Info) -> tuple[int | None, int | None] | None:
        """Outgoing ``(picture_id, tl0picidx)`` for a packet; ``None``: do not forward it.

        A field absent from the packet, or absent from the stream's first packet, maps to
        ``None`` (leave it unchanged). ``None`` as a whole means the picture was dropped or
        is from before the switch.
        """
        picture_id = info.picture_id
        if picture_id is not None and self._has_pid:
            picture_id = self._pid.map(picture_id)
            if picture_id is None:
                return None
        else:
            picture_id = None
        tl0picidx = info.tl0picidx
        if tl0picidx is not None and self._has_tl0:
            tl0picidx = self._tl0.map(tl0picidx)
            if tl0picidx is None:
                return None
        else:
            tl0picidx = None
        return picture_id, tl0picidx

    def drop_picture(self, info: Vp8Info) -> bool:
        """Leave the picture of this packet out; later PictureIDs shift down to fill it.

        Call it for every packet of the dropped picture (it is idempotent). Returns False
        when a gap stays (see :meth:`~trio_sfu.rtp.rewriter.Splicer.drop`) or the packet
        has no PictureID.
        """
        if info.picture_id is None or not self._has_pid:
            return False
        return self._pid.drop(info.picture_id)
