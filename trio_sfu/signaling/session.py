"""One signaling WebSocket (ASGI): frames in, answers and notifications out.

A session runs in the connection's task (hypercorn's), with tasks of its own in a
per-connection nursery:

* the receiver reads the socket into a small frame queue and notices a disconnect at once;
* the processor takes one frame at a time, checks it (size, text, JSON, envelope, schema,
  rate) and answers it, handing requests of a joined peer to the peer's task and waiting
  until they are answered, so answers leave in arrival order, exactly one per request;
* the writer drains the bounded outgoing channel onto the socket.

The processor and the writer, and their queues, exist only while frames or messages wait:
a connection that is quiet (most of a call, while media flows) keeps just the receiver.

Everything queued for the client goes through :meth:`Session.send_message`, which never
blocks: a client too slow to drain its queue is disconnected (1008) and its peer ends.
Closing the socket ends the peer (same as ``rtc:leave``); the peer's cleanup runs in the
room, not here, and never waits for the client.

Once the receiver stops (the client is gone, or the session is ending), a drain task in
the server's nursery takes and drops whatever hypercorn still hands over. hypercorn (0.18)
passes a connection's frames to the app through a queue of ten and waits, without a
timeout, for room in it: in the task that reads the socket, and in the one that tells the
app the client is gone. A session that stopped taking frames while a client that reads
nothing kept sending (its answers and notifications fill the socket, the session ends it
as too slow, the client drops the connection) would leave both waiting forever: the
connection, its socket and its buffers were never freed. The drain takes frames until
hypercorn says the client is gone, then as long as it still has some (the rest of what it
had read, handed over back to back), and at most ``CLOSE_TIMEOUT`` after the session ends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Final, final
from urllib.parse import parse_qs

import attrs
import trio

from trio_sfu.errors import InvalidMessageError, SfuError
from trio_sfu.signaling.context import SignalingContext
from trio_sfu.signaling.errors import AlreadyJoinedError, NotJoinedError, RateLimitedError
from trio_sfu.signaling.limits import TokenBucket
from trio_sfu.signaling.messages import (
    Envelope,
    JoinRequest,
    Request,
    answer_message,
    decode_frame_untrusted,
    encode_message,
    error_message,
    frame_context,
    parse_envelope_untrusted,
    parse_request_untrusted,
)
from trio_sfu.signaling.peer import ContextLogger, Job, Peer

logger = logging.getLogger(__name__)

__all__ = ["Session"]

CLOSE_POLICY_VIOLATION: Final = 1008
#: Bound on sending the close frame and on the final flush.
CLOSE_TIMEOUT: Final = 2.0
#: Frames read ahead of the one being served (then the socket is not read: backpressure).
FRAME_QUEUE: Final = 64

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@final
@attrs.frozen
class _Close:
    code: int
    reason: str


@final
@attrs.frozen
class _Frame:
    """A received frame: its text (``None`` for a binary frame) and whether the rate
    limit allowed it when it arrived."""

    text: str | None
    allowed: bool


class _InternalError(SfuError):
    code = "internal"


@final
class Session:
    """A WebSocket connection of the signaling protocol; the :class:`PeerLink` of its
    peer while it is in a meeting."""

    def __init__(self, app: SignalingContext, scope: dict[str, Any], receive: Receive, send: Send):
        self.app = app
        self._receive = receive
        self._send = send
        limits = app.config.limits
        self._limits = limits
        # The outgoing queue, while the writer task drains it (see _queue_out).
        self._out_tx: trio.MemorySendChannel[dict[str, Any] | _Close] | None = None
        # The frame queue, while the processor task serves it (see _receiver).
        self._frames_tx: trio.MemorySendChannel[_Frame] | None = None
        self._bucket = TokenBucket(limits.requests_per_second, limits.request_burst, 0.0)
        self._bad_frames = 0
        self._closing = False
        self._abort: _Close | None = None
        self._nursery: trio.Nursery | None = None
        #: hypercorn said the client is gone (``websocket.disconnect``).
        self._disconnected = False
        #: The drain task's scopes (see _drain): all of it, and its wait for the disconnect.
        self._drain_scope = trio.CancelScope()
        self._drain_until_end = trio.CancelScope()
        self.peer: Peer | None = None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        tokens = query.get("token")
        self._query_token = tokens[0] if tokens else None
        client = scope.get("client")
        self.remote = f"{client[0]}:{client[1]}" if client else "?"
        self.log = ContextLogger(logger, {"remote": self.remote})

    # ---- PeerLink -------------------------------------------------------------------------

    def send_message(self, message: dict[str, Any]) -> None:
        """Queue a message for the client without blocking (see the module docstring)."""
        if self._closing:
            return
        self._queue_out(message)

    def close_connection(self, code: int, reason: str) -> None:
        """Close the socket after the messages queued so far."""
        if self._closing:
            return
        self._closing = True
        self._queue_out(_Close(code, reason))

    def _queue_out(self, item: dict[str, Any] | _Close) -> None:
        out = self._out_tx
        if out is None:
            # Nothing waits: open the queue and start the writer that drains it.
            nursery = self._nursery
            if nursery is None:
                return  # not serving (yet, or any more)
            out, out_rx = trio.open_memory_channel[dict[str, Any] | _Close](
                self._limits.outgoing_queue
            )
            try:
                nursery.start_soon(self._writer, out, out_rx)
            except RuntimeError:  # the nursery is closing: the connection is ending
                out.close()
                out_rx.close()
                return
            self._out_tx = out
        try:
            out.send_nowait(item)
        except trio.WouldBlock:
            self._overflow()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _overflow(self) -> None:
        self.log.warning("outgoing queue full: closing the connection of a client too slow")
        self.app.metrics.slow_disconnects.inc()
        self._closing = True
        self._abort = _Close(CLOSE_POLICY_VIOLATION, "outgoing queue full")
        if self.peer is not None:
            self.peer.end("too_slow")
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # ---- tasks --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until either side closes it."""
        first = await self._receive()
        if first.get("type") != "websocket.connect":
            return
        await self._send({"type": "websocket.accept"})
        self._bucket = TokenBucket(
            self._limits.requests_per_second, self._limits.request_burst, trio.current_time()
        )
        self.app.sessions.add(self)
        self.app.metrics.connections.inc()
        self.log.debug("connected")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._receiver(nursery)
                self._nursery = None  # what is queued from now on would not be sent
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self.app.sessions.discard(self)
            self.app.metrics.connections.dec()
            self._closing = True
            for queue in (self._out_tx, self._frames_tx):
                if queue is not None:
                    queue.close()
            self._out_tx = self._frames_tx = None
            if self.peer is not None:
                self.peer.end("connection_closed")
                self.peer = None
            if self._abort is not None:
                with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                    try:
                        await self._send(
                            {
                                "type": "websocket.close",
                                "code": self._abort.code,
                                "reason": self._abort.reason,
                            }
                        )
                    except Exception:
                        self.log.debug("close after abort failed", exc_info=True)
            self._drain_until_end.cancel()
            self._drain_scope.deadline = trio.current_time() + CLOSE_TIMEOUT
            self.log.debug("disconnected")

    async def _writer(
        self,
        out: trio.MemorySendChannel[dict[str, Any] | _Close],
        out_rx: trio.MemoryReceiveChannel[dict[str, Any] | _Close],
    ) -> None:
        """Send what is queued, in order; end when the queue is empty (the next message
        starts a new writer) or after the close frame."""
        with out_rx:
            try:
                while True:
                    try:
                        item = out_rx.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        # Drained, with no await since the check: nothing is left behind.
                        if self._out_tx is out:
                            self._out_tx = None
                        out.close()
                        return
                    if isinstance(item, _Close):
                        with trio.move_on_after(CLOSE_TIMEOUT):
                            await self._send(
                                {
                                    "type": "websocket.close",
                                    "code": item.code,
                                    "reason": item.reason,
                                }
                            )
                        break
                    await self._send({"type": "websocket.send", "text": encode_message(item)})
            except Exception:
                self.log.debug("sending failed; closing", exc_info=True)
        # The socket is closed (or broken): stop reading too.
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _receiver(self, nursery: trio.Nursery) -> None:
        """Read the socket. A disconnect ends the peer at once, even while one of its
        requests is still being served (that request is cancelled with it). However it
        stops, the drain task takes over (see the module docstring)."""
        try:
            while True:
                message = await self._receive()
                kind = message.get("type")
                if kind == "websocket.disconnect":
                    self._disconnected = True
                    if self.peer is not None:
                        self.peer.end("connection_closed")
                    return
                if kind == "websocket.receive":
                    allowed = self._bucket.take(trio.current_time())
                    frames = self._frames_tx
                    if frames is None:
                        frames, frames_rx = trio.open_memory_channel[_Frame](FRAME_QUEUE)
                        self._frames_tx = frames
                        nursery.start_soon(self._processor, frames, frames_rx)
                    # Blocks while FRAME_QUEUE frames wait: the socket is not read meanwhile.
                    await frames.send(_Frame(message.get("text"), allowed))
        finally:
            with suppress(RuntimeError):  # the server's nursery is closed: hypercorn too
                self.app.nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        """Take and drop what hypercorn still hands over once the receiver has stopped:
        everything while the session winds down, until the disconnect; after the session's
        end, as long as hypercorn has more (once the app returns it hands over the
        disconnect, unless it did or never will: a send that found the socket broken in a
        cancelled task loses it; and the rest of what it had read, back to back). At most
        ``CLOSE_TIMEOUT`` after the session's end."""
        with self._drain_scope:
            with self._drain_until_end:
                while not self._disconnected:
                    message = await self._receive()
                    self._disconnected = message.get("type") == "websocket.disconnect"
            while await _more_to_take(self._receive):
                await self._receive()

    async def _processor(
        self, frames: trio.MemorySendChannel[_Frame], frames_rx: trio.MemoryReceiveChannel[_Frame]
    ) -> None:
        """Serve frames one at a time, in arrival order; end when none waits (the next
        frame starts a new processor)."""
        with frames_rx:
            while True:
                try:
                    frame = frames_rx.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    if self._frames_tx is frames:
                        self._frames_tx = None
                    frames.close()
                    return
                await self._on_frame(frame.text, frame.allowed)

    # ---- frames -------------------------------------------------------------------------------

    async def _on_frame(self, text: str | None, allowed: bool) -> None:
        if text is None:
            self._bad_frame(InvalidMessageError("binary frames are not accepted: send JSON text"))
            return
        limit = self._limits.max_frame_bytes
        if len(text) > limit // 4:
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > limit:
                self._bad_frame(
                    InvalidMessageError(f"frame of {size} bytes is over the {limit}-byte limit")
                )
                return
        try:
            obj = decode_frame_untrusted(text)
        except SfuError as exc:
            self._bad_frame(exc)
            return
        self._bad_frames = 0
        request_id, rtype = frame_context(obj)
        self.app.metrics.count_request(rtype or "unknown")
        try:
            if not allowed:
                raise RateLimitedError(
                    f"more than {self._limits.requests_per_second:g} requests per second"
                )
            envelope = parse_envelope_untrusted(obj)
            await self._dispatch(envelope, parse_request_untrusted(envelope))
        except SfuError as exc:
            self._error(exc, request_id, rtype)
        except Exception:
            self.log.exception("internal error handling %s", rtype)
            self._error(_InternalError("internal server error (logged)"), request_id, rtype)

    def _bad_frame(self, exc: SfuError) -> None:
        self._bad_frames += 1
        self._error(exc, None, None)
        if self._bad_frames > self._limits.max_bad_frames:
            self.log.info("closing after %d invalid frames in a row", self._bad_frames)
            self.close_connection(CLOSE_POLICY_VIOLATION, "too many invalid frames")

    def _error(self, exc: SfuError, request_id: str | None, request: str | None) -> None:
        self.app.metrics.count_error(exc.code)
        if exc.refusal is not None:
            self.app.note_refusal(exc, self.log)
        self.send_message(
            error_message(exc.code, exc.message, request_id=request_id, request=request)
        )

    async def _dispatch(self, envelope: Envelope, request: Request) -> None:
        if isinstance(request, JoinRequest):
            await self._join(envelope, request)
            return
        peer = self.peer
        if peer is None or peer.ending:
            self.peer = None
            raise NotJoinedError("not in a meeting: send rtc:join first")
        if request.meeting_id != peer.room.meeting_id:
            raise NotJoinedError(
                f"not joined to meeting {request.meeting_id!r}", refusal="foreign_meeting"
            )
        try:
            await peer.submit(Job(envelope.type, envelope.request_id, request))
        finally:
            if peer.ending and self.peer is peer:
                self.peer = None

    async def _join(self, envelope: Envelope, request: JoinRequest) -> None:
        if self.peer is not None and not self.peer.ending:
            raise AlreadyJoinedError(f"already in meeting {self.peer.room.meeting_id!r}")
        if self._closing:
            raise NotJoinedError("the connection is closing")
        token = request.token or self._query_token
        grant = self.app.verifier.verify(token, request.meeting_id)
        peer, answer = await self.app.rooms.join(grant, request.display_name, self)
        # No checkpoint between join() and queueing the answer: rtc:joined goes out before
        # any notification about the meeting.
        self.peer = peer
        self.log = ContextLogger(logger, {"meeting": request.meeting_id, "peer": peer.peer_id})
        self.send_message(answer_message(envelope.type, envelope.request_id, answer))


async def _more_to_take(receive: Receive) -> bool:
    """Whether hypercorn has more to hand over on ``receive`` (a trio memory channel's):
    events wait in the channel, or its reading task waits for room there. That task puts
    what it had read back to back, so once it was woken (by the last take) it has put its
    next event, or finished, after two scheduling rounds. Behind any other ``receive``,
    waits for the drain's deadline."""
    channel = getattr(receive, "__self__", None)
    if not isinstance(channel, trio.MemoryReceiveChannel):
        await trio.sleep_forever()  # until the drain's deadline
    for _ in range(2):
        await trio.lowlevel.checkpoint()
    statistics = channel.statistics()
    return statistics.current_buffer_used > 0 or statistics.tasks_waiting_send > 0
