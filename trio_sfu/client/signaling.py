"""The client side of the signaling protocol (PROTOCOL.md) over trio-websocket.

::

    async with open_signaling("ws://127.0.0.1:8080/ws", token=token) as sig:
        joined = await sig.join("meeting-1")
        send = await sig.create_transport("send")
        ...
        note = await sig.next_notification("rtc:newProducer")

:meth:`SignalingClient.request` sends a request with a fresh ``requestId`` and returns the
answer's ``data``, or raises :class:`SignalingError` (``code``, ``message``) on ``rtc:error``.
Notifications are queued (bounded) and read with :meth:`SignalingClient.next_notification`.
When the server closes the socket, waiting calls raise :class:`SignalingClosed`.

Shared by the tests, bots and the load generator.
"""

from __future__ import annotations

import itertools
import json
import ssl
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, final
from urllib.parse import quote, urlsplit

import attrs
import trio
import trio_websocket

__all__ = [
    "Notification",
    "SignalingClient",
    "SignalingClosed",
    "SignalingError",
    "open_signaling",
]


class SignalingError(Exception):
    """An ``rtc:error`` answer: ``code`` is PROTOCOL.md's error code."""

    def __init__(self, code: str, message: str, request: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request = request


class SignalingClosed(Exception):
    """The WebSocket is closed; ``code``/``reason`` are the close frame's (1006: none)."""

    def __init__(self, code: int, reason: str | None) -> None:
        super().__init__(f"signaling connection closed ({code} {reason or ''})".rstrip())
        self.code = code
        self.reason = reason


@final
@attrs.frozen
class Notification:
    type: str
    data: dict[str, Any]


@final
class _Pending:
    __slots__ = ("answer", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.answer: dict[str, Any] | None = None


@final
class SignalingClient:
    """One signaling connection. Use :func:`open_signaling` to get one."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, max_notifications: int) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._backlog: deque[Notification] = deque()
        self._max_notifications = max_notifications
        self._arrived = trio.Event()
        self.closed: SignalingClosed | None = None
        self.meeting_id: str | None = None
        self.peer_id: str | None = None
        #: ``rtc:error`` frames that answered no request of ours (``invalid_json``...).
        self.unmatched_errors: list[dict[str, Any]] = []
        #: Notifications dropped because ``max_notifications`` were unread.
        self.dropped_notifications = 0
        self._stream: trio.abc.Stream | None = None

    # ---- the connection -----------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                text = await self._ws.get_message()
                self._on_frame(text)
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            self._close(
                SignalingClosed(reason.code, reason.reason)
                if reason is not None
                else SignalingClosed(1006, None)
            )

    def _on_frame(self, text: str | bytes) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        request_id = frame.get("requestId")
        pending = self._pending.get(request_id) if isinstance(request_id, str) else None
        if pending is not None:
            pending.answer = frame
            pending.event.set()
        elif frame.get("type") == "rtc:error" or "requestId" in frame:
            self.unmatched_errors.append(frame)
        else:
            data = frame.get("data")
            self._backlog.append(
                Notification(str(frame.get("type")), data if isinstance(data, dict) else {})
            )
            if len(self._backlog) > self._max_notifications:
                self._backlog.popleft()
                self.dropped_notifications += 1
            self._arrived.set()

    def _close(self, closed: SignalingClosed) -> None:
        if self.closed is None:
            self.closed = closed
        for pending in self._pending.values():
            pending.event.set()
        self._arrived.set()

    async def send_raw(self, message: str | bytes) -> None:
        """Send a frame as is (for tests of the server's input checks)."""
        await self._ws.send_message(message)

    async def abort(self) -> None:
        """Drop the TCP connection without a WebSocket close (a crash, a lost network)."""
        if self._stream is not None:
            await trio.aclose_forcefully(self._stream)

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        await self._ws.aclose(code, reason)

    # ---- requests and notifications -------------------------------------------------------------

    async def request(self, rtype: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and return its answer's ``data``.

        Raises :class:`SignalingError` on ``rtc:error``, :class:`SignalingClosed` if the
        connection closes first. Cancelling forgets the answer (it is discarded on arrival).
        """
        if self.closed is not None:
            raise self.closed
        request_id = str(next(self._ids))
        pending = _Pending()
        self._pending[request_id] = pending
        try:
            frame = {"type": rtype, "requestId": request_id, "data": data or {}}
            try:
                await self._ws.send_message(json.dumps(frame))
            except trio_websocket.ConnectionClosed:
                await pending.event.wait()  # the reader records why
            await pending.event.wait()
        finally:
            del self._pending[request_id]
        answer = pending.answer
        if answer is None:
            assert self.closed is not None
            raise self.closed
        if answer.get("type") == "rtc:error":
            raise SignalingError(
                str(answer.get("code")), str(answer.get("error")), answer.get("request")
            )
        result = answer.get("data")
        return result if isinstance(result, dict) else {}

    async def next_notification(self, *types: str) -> Notification:
        """The oldest queued notification of one of ``types`` (any type if none given);
        others stay queued in order. Raises :class:`SignalingClosed` once the connection
        is closed and nothing matching is queued."""
        while True:
            for index, note in enumerate(self._backlog):
                if not types or note.type in types:
                    del self._backlog[index]
                    return note
            if self.closed is not None:
                raise self.closed
            self._arrived = trio.Event()
            await self._arrived.wait()

    def pending_notifications(self) -> list[Notification]:
        """What is queued now (without consuming it)."""
        return list(self._backlog)

    async def wait_closed(self) -> SignalingClosed:
        """Wait until the server closes the connection."""
        while self.closed is None:
            self._arrived = trio.Event()
            await self._arrived.wait()
        return self.closed

    # ---- helpers, one per request type --------------------------------------------------------

    def _meeting(self) -> str:
        if self.meeting_id is None:
            raise RuntimeError("join a meeting first")
        return self.meeting_id

    async def join(
        self, meeting_id: str, *, token: str | None = None, display_name: str | None = None
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"meetingId": meeting_id}
        if token is not None:
            data["token"] = token
        if display_name is not None:
            data["displayName"] = display_name
        joined = await self.request("rtc:join", data)
        self.meeting_id = meeting_id
        self.peer_id = joined.get("peerId")
        return joined

    async def get_router_rtp_capabilities(self) -> dict[str, Any]:
        answer = await self.request("rtc:getRouterRtpCapabilities", {"meetingId": self._meeting()})
        caps: dict[str, Any] = answer["rtpCapabilities"]
        return caps

    async def create_transport(
        self,
        direction: str,
        *,
        force_tcp: bool | None = None,
        sctp_capabilities: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"meetingId": self._meeting(), "direction": direction}
        if force_tcp is not None:
            data["forceTcp"] = force_tcp
        if sctp_capabilities is not None:
            data["sctpCapabilities"] = sctp_capabilities
        return await self.request("rtc:createTransport", data)

    async def connect_transport(self, transport_id: str, dtls_parameters: dict[str, Any]) -> None:
        await self.request(
            "rtc:connectTransport",
            {
                "meetingId": self._meeting(),
                "transportId": transport_id,
                "dtlsParameters": dtls_parameters,
            },
        )

    async def create_plain_transport(
        self,
        *,
        rtcp_mux: bool | None = None,
        comedia: bool | None = None,
        enable_srtp: bool | None = None,
        srtp_crypto_suite: str | None = None,
        direction: str | None = None,
    ) -> dict[str, Any]:
        """``rtc:createPlainTransport`` (options left out take the server's defaults)."""
        data: dict[str, Any] = {"meetingId": self._meeting()}
        for key, value in (
            ("rtcpMux", rtcp_mux),
            ("comedia", comedia),
            ("enableSrtp", enable_srtp),
            ("srtpCryptoSuite", srtp_crypto_suite),
            ("direction", direction),
        ):
            if value is not None:
                data[key] = value
        return await self.request("rtc:createPlainTransport", data)

    async def connect_plain_transport(
        self,
        transport_id: str,
        *,
        ip: str | None = None,
        port: int | None = None,
        rtcp_port: int | None = None,
        srtp_parameters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``rtc:connectPlainTransport``; returns the answer (the transport's tuples)."""
        data: dict[str, Any] = {"meetingId": self._meeting(), "transportId": transport_id}
        for key, value in (
            ("ip", ip),
            ("port", port),
            ("rtcpPort", rtcp_port),
            ("srtpParameters", srtp_parameters),
        ):
            if value is not None:
                data[key] = value
        return await self.request("rtc:connectPlainTransport", data)

    async def restart_ice(self, transport_id: str) -> dict[str, Any]:
        answer = await self.request(
            "rtc:restartIce", {"meetingId": self._meeting(), "transportId": transport_id}
        )
        params: dict[str, Any] = answer["iceParameters"]
        return params

    async def produce(
        self,
        transport_id: str,
        kind: str,
        rtp_parameters: dict[str, Any],
        *,
        app_data: dict[str, Any] | None = None,
        paused: bool | None = None,
    ) -> str:
        data: dict[str, Any] = {
            "meetingId": self._meeting(),
            "transportId": transport_id,
            "kind": kind,
            "rtpParameters": rtp_parameters,
        }
        if app_data is not None:
            data["appData"] = app_data
        if paused is not None:
            data["paused"] = paused
        answer = await self.request("rtc:produce", data)
        return str(answer["producerId"])

    async def _producer_request(self, rtype: str, producer_id: str) -> None:
        await self.request(rtype, {"meetingId": self._meeting(), "producerId": producer_id})

    async def close_producer(self, producer_id: str) -> None:
        await self._producer_request("rtc:closeProducer", producer_id)

    async def pause_producer(self, producer_id: str) -> None:
        await self._producer_request("rtc:pauseProducer", producer_id)

    async def resume_producer(self, producer_id: str) -> None:
        await self._producer_request("rtc:resumeProducer", producer_id)

    async def consume(
        self,
        producer_id: str,
        rtp_capabilities: dict[str, Any],
        *,
        transport_id: str | None = None,
        paused: bool | None = None,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "meetingId": self._meeting(),
            "producerId": producer_id,
            "rtpCapabilities": rtp_capabilities,
        }
        if transport_id is not None:
            data["transportId"] = transport_id
        if paused is not None:
            data["paused"] = paused
        return await self.request("rtc:consume", data)

    async def _consumer_request(self, rtype: str, consumer_id: str) -> None:
        await self.request(rtype, {"meetingId": self._meeting(), "consumerId": consumer_id})

    async def resume_consumer(self, consumer_id: str) -> None:
        await self._consumer_request("rtc:resumeConsumer", consumer_id)

    async def pause_consumer(self, consumer_id: str) -> None:
        await self._consumer_request("rtc:pauseConsumer", consumer_id)

    async def close_consumer(self, consumer_id: str) -> None:
        await self._consumer_request("rtc:closeConsumer", consumer_id)

    async def set_preferred_layers(
        self, consumer_id: str, spatial_layer: int, temporal_layer: int | None = None
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "meetingId": self._meeting(),
            "consumerId": consumer_id,
            "spatialLayer": spatial_layer,
        }
        if temporal_layer is not None:
            data["temporalLayer"] = temporal_layer
        answer = await self.request("rtc:setPreferredLayers", data)
        layers: dict[str, Any] = answer["preferredLayers"]
        return layers

    async def get_stats(self, entity_id: str) -> list[dict[str, Any]]:
        answer = await self.request("rtc:getStats", {"meetingId": self._meeting(), "id": entity_id})
        stats: list[dict[str, Any]] = answer["stats"]
        return stats

    async def leave(self) -> None:
        await self.request("rtc:leave", {"meetingId": self._meeting()})
        self.meeting_id = None
        self.peer_id = None


@asynccontextmanager
async def open_signaling(
    url: str,
    *,
    token: str | None = None,
    max_notifications: int = 10_000,
    connect_timeout: float = 10.0,
    max_message_size: int = 4 * 1024 * 1024,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[SignalingClient]:
    """Connect to a trio-sfu signaling WebSocket (``ws://host:port/ws`` or ``wss://``).

    ``token`` goes on the URL (``?token=``); it can instead be given to
    :meth:`SignalingClient.join`. At most ``max_notifications`` unread notifications are
    kept (past that the oldest are dropped, and counted). Leaving the block closes the
    socket (which the server treats as ``rtc:leave``); the TCP connection is closed even
    when the server closed the WebSocket first.
    """
    if token is not None:
        url += ("&" if "?" in url else "?") + "token=" + quote(token, safe="")
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or parts.hostname is None:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    with trio.fail_after(connect_timeout):
        tcp = await trio.open_tcp_stream(parts.hostname, port)
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
    try:
        if secure:
            context = ssl_context or ssl.create_default_context()
            stream = trio.SSLStream(tcp, context, server_hostname=parts.hostname)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(connect_timeout):
                ws = await trio_websocket.wrap_client_stream(
                    nursery, stream, host_header, resource, max_message_size=max_message_size
                )
            client = SignalingClient(ws, max_notifications)
            client._stream = stream
            nursery.start_soon(client._read)
            try:
                yield client
            finally:
                with trio.move_on_after(5.0, shield=True):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)
