"""The channel between the signaling process and a worker process.

Frames are length-prefixed MessagePack: a 4-byte big-endian length, then that many bytes of
one MessagePack value. Three kinds of message travel in them::

    [REQUEST, id, method, args]        parent -> worker; ``args`` is a list
    [RESPONSE, id, True, result]       worker -> parent, exactly one per request
    [RESPONSE, id, False, [code, text, refusal]]  a refusal (an SfuError code and, for a
                                       trespass, its ``refusal`` reason) or ``internal``
    [NOTIFY, name, payload]            worker -> parent: ``event`` (an EngineEvent),
                                       ``load`` (the worker's periodic report)

A worker answers requests one at a time, in arrival order, and writes the notifications an
answer caused before the answer: the parent sees the same order of events and results as an
in-process engine gives. :class:`FrameDecoder` is the sans-IO half (bytes in, messages out);
:class:`Channel` puts it on a trio stream.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterator
from typing import Any, Final, final

import attrs
import msgpack
import trio

from trio_sfu.engine import api
from trio_sfu.errors import (
    BadPacket,
    InvalidMessageError,
    InvalidStateError,
    LimitExceededError,
    NotFoundError,
    SfuError,
    UnsupportedError,
)

REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFY: Final = 2

#: No legitimate message comes near this (an RtpParameters is a few KiB).
MAX_FRAME: Final = 16 << 20

_LENGTH = struct.Struct(">I")


#: The integers MessagePack carries: 64 bits, signed or unsigned.
_MIN_INT = -(2**63)
_MAX_INT = 2**64 - 1


def encode_frame(message: Any) -> bytes:
    """One frame of ``message``.

    Raises :class:`InvalidMessageError`, naming where in ``message``, for a value that
    MessagePack cannot carry (an integer beyond 64 bits, a string with a lone surrogate,
    an object of another type): a refusal of that one request, never a broken channel.
    Raises ``ValueError`` for a frame over :data:`MAX_FRAME`.
    """
    try:
        body: bytes = msgpack.packb(message, use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:
        raise InvalidMessageError(
            f"cannot be sent to a worker process: {_unpackable(message) or exc}"
        ) from None
    if len(body) > MAX_FRAME:
        raise ValueError(f"channel message of {len(body)} bytes is over {MAX_FRAME}")
    return _LENGTH.pack(len(body)) + body


def _unpackable(message: Any) -> str | None:
    """Where in ``message`` the first value MessagePack cannot carry is, and what it is
    (``[3][2].encodings[0].ssrc is an integer beyond 64 bits``); None if not found. Only
    on the error path: it walks the whole message."""
    stack: list[tuple[Any, str]] = [(message, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, (bool, float, bytes, type(None))):
            continue
        if isinstance(value, int):
            if not _MIN_INT <= value <= _MAX_INT:
                return f"{where or 'the message'} is an integer beyond 64 bits"
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"{where or 'the message'} is a string that UTF-8 cannot represent"
        elif isinstance(value, (list, tuple)):
            stack.extend((item, f"{where}[{index}]") for index, item in enumerate(value))
        elif isinstance(value, dict):
            for key, item in value.items():
                # ascii(): a key that cannot be carried is named by its escapes.
                name = f".{ascii(key)[1:-1]}" if isinstance(key, str) else f"[{key!r}]"
                stack.append((key, f"{where}{name} (the key)"))
                stack.append((item, f"{where}{name}"))
        else:
            return f"{where or 'the message'} is of type {type(value).__name__}"
    return None


@final
class FrameDecoder:
    """Sans-IO: feed it bytes as they come, take whole messages out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed_untrusted(self, data: bytes | bytearray) -> Iterator[Any]:
        """Yield every message completed by ``data``. Raises :class:`BadPacket` for a frame
        over :data:`MAX_FRAME` or one that is not MessagePack (the channel is then dead)."""
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4:
            (length,) = _LENGTH.unpack_from(buffer)
            if length > MAX_FRAME:
                raise BadPacket(f"channel frame of {length} bytes is over {MAX_FRAME}")
            if len(buffer) < 4 + length:
                return
            body = bytes(buffer[4 : 4 + length])
            del buffer[: 4 + length]
            try:
                yield msgpack.unpackb(body, raw=False, strict_map_key=False)
            except Exception as exc:  # msgpack raises several unrelated types
                raise BadPacket(f"channel frame is not MessagePack: {exc}") from None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held."""
        return len(self._buffer)


@final
class Channel:
    """Messages over a trio stream. Sends may come from many tasks (they are serialized);
    one task receives. ``receive`` returns None at end of stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder()
        self._ready: deque[Any] = deque()
        self._send_lock = trio.StrictFIFOLock()

    async def send(self, message: Any) -> None:
        """Send one message. Cancelling it mid-write breaks the stream, like any partial
        write; the peer then sees a broken frame or end of stream."""
        frame = encode_frame(message)
        async with self._send_lock:
            await self.stream.send_all(frame)

    async def receive(self) -> Any | None:
        """The next message, or None once the other side closed its end. Raises
        :class:`BadPacket` for a broken frame, ``trio.BrokenResourceError`` for a broken
        stream."""
        while not self._ready:
            data = await self.stream.receive_some(1 << 16)
            if not data:
                if self._decoder.pending:
                    raise BadPacket("channel closed in the middle of a frame")
                return None
            self._ready.extend(self._decoder.feed_untrusted(data))
        return self._ready.popleft()

    async def aclose(self) -> None:
        await self.stream.aclose()


# ---- errors and events on the wire ----------------------------------------------------------

_ERRORS: Final[dict[str, type[SfuError]]] = {
    cls.code: cls
    for cls in (
        InvalidMessageError,
        UnsupportedError,
        InvalidStateError,
        NotFoundError,
        LimitExceededError,
    )
}


class WorkerInternalError(SfuError):
    """A bug in a worker while it served a request (its log has the traceback)."""

    code = "internal"


def encode_error(exc: SfuError) -> list[str | None]:
    return [exc.code, exc.message, exc.refusal]


def decode_error(value: Any) -> SfuError:
    code, message, *rest = value
    refusal = rest[0] if rest and isinstance(rest[0], str) else None
    return _ERRORS.get(code, WorkerInternalError)(str(message), refusal=refusal)


_EVENTS: Final[dict[str, type[Any]]] = {
    cls.__name__: cls
    for cls in (
        api.RouterClosed,
        api.TransportClosed,
        api.ConsumerClosed,
        api.ConsumerProducerPaused,
        api.ConsumerLayersChanged,
        api.NetworkQuality,
        api.ActiveSpeaker,
    )
}


def encode_event(event: api.EngineEvent) -> list[Any]:
    """An engine event as ``[class name, field values...]`` (all fields are plain values)."""
    return [type(event).__name__, *attrs.astuple(event, recurse=False)]


def decode_event(value: Any) -> api.EngineEvent:
    """Raises :class:`BadPacket` for an unknown event or wrong field count."""
    try:
        name, *fields = value
        event: api.EngineEvent = _EVENTS[name](*fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadPacket(f"not an engine event: {value!r} ({exc})") from None
    return event
