"""Helpers of the signaling tests: a real server on 127.0.0.1 (port 0), tokens, a raw
WebSocket (for frames the client library would never send, and abrupt closes) and HTTP for
the admin API, /healthz and /metrics. The server and HTTP pieces are the pytest plugin's
(:mod:`trio_sfu.testing.server`, :mod:`trio_sfu.testing.http`), with a fixed secret and
admin token."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import trio
import trio.testing
import wsproto
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from tests.fake_engine import load_fixture
from trio_sfu.client.signaling import SignalingClient, open_signaling
from trio_sfu.config import ServerConfig
from trio_sfu.server import SfuServer
from trio_sfu.signaling.auth import issue_token
from trio_sfu.testing.http import HttpAnswer, http_request
from trio_sfu.testing.server import SfuTestServer, make_server_config, running_server

__all__ = ["HttpAnswer", "running_server"]

SECRET = "signaling-tests-secret-0123456789abcdef"
ADMIN_TOKEN = "admin-token-for-tests"

AUDIO = load_fixture("produce-audio-opus.json")
VIDEO = load_fixture("produce-video-vp8-simulcast.json")
DEVICE_CAPS = load_fixture("device-rtp-capabilities.chromium.json")
DTLS_CLIENT = load_fixture("send-transport-connect.json")["dtlsParameters"]


def make_config(**overrides: Any) -> ServerConfig:
    """A test server config (:func:`trio_sfu.testing.server.make_server_config`: port 0,
    short timeouts; ``limits`` fields may be given flat) with this module's secret and
    admin token."""
    return make_server_config(**{"jwt_secret": SECRET, "admin_token": ADMIN_TOKEN, **overrides})


def token(meeting: str, user: str, **claims: Any) -> str:
    return issue_token(SECRET, meeting_id=meeting, user_id=user, **claims)


@asynccontextmanager
async def peer(
    server: SfuServer | SfuTestServer, meeting: str, user: str, **claims: Any
) -> AsyncIterator[SignalingClient]:
    """A client joined to ``meeting`` as ``user`` (with a token of the plugin's server,
    or of this module's secret)."""
    mint = server.token if isinstance(server, SfuTestServer) else token
    async with open_signaling(server.ws_url) as client:
        await client.join(meeting, token=mint(meeting, user, **claims), display_name=user)
        yield client


def fresh_ssrcs(rtp_parameters: dict[str, Any]) -> dict[str, Any]:
    """A copy of captured ``rtpParameters`` with new random SSRCs: a router refuses an SSRC
    that another of its producers has, and one capture may be published by several
    clients of a test."""
    copy: dict[str, Any] = json.loads(json.dumps(rtp_parameters))
    for encoding in copy["encodings"]:
        if "ssrc" in encoding:
            encoding["ssrc"] = secrets.randbelow(0xFFFF_FFFF) + 1
        if "rtx" in encoding:
            encoding["rtx"]["ssrc"] = secrets.randbelow(0xFFFF_FFFF) + 1
    return copy


async def publish_audio(client: SignalingClient) -> tuple[str, str]:
    """Create a send transport and produce the captured Opus track (with SSRCs of its own):
    (transport, producer)."""
    send = await client.create_transport("send")
    producer_id = await client.produce(
        send["transportId"],
        "audio",
        fresh_ssrcs(AUDIO["rtpParameters"]),
        app_data={"label": "mic"},
    )
    return send["transportId"], producer_id


def live_tasks(*name_parts: str) -> list[str]:
    """Names of the running trio tasks whose name contains one of ``name_parts``."""
    found: list[str] = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if any(part in task.name for part in name_parts):
            found.append(task.name)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


async def assert_no_room_tasks(server: SfuServer) -> None:
    """Every room has closed, and no Room or Peer task is left in the task tree."""
    await server.app.rooms.wait_all_closed()
    await trio.testing.wait_all_tasks_blocked()
    assert live_tasks("Room.run", "Peer.run") == []


# ---- raw WebSocket ------------------------------------------------------------------------


class RawWebSocket:
    """A bare wsproto client over TCP: any frame, and a close without a close frame."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.close_code: int | None = None
        self._text: list[str] = []
        self._events: list[Any] = []

    @classmethod
    @asynccontextmanager
    async def connect(cls, server: SfuServer, path: str = "/ws") -> AsyncIterator[RawWebSocket]:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        raw = cls(stream)
        try:
            await raw._send(raw.ws.send(Request(host="127.0.0.1", target=path)))
            while not any(isinstance(e, AcceptConnection) for e in raw._events):
                if not await raw._pump():
                    raise ConnectionError("handshake refused")
            yield raw
        finally:
            await stream.aclose()

    async def _send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _pump(self) -> bool:
        data = await self.stream.receive_some(65536)
        if not data:
            self.ws.receive_data(None)
            return False
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                self._text.append(event.data)
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                with suppress(Exception):  # the server may be gone already
                    await self._send(self.ws.send(event.response()))
            elif isinstance(event, Ping):
                await self._send(self.ws.send(event.response()))
            self._events.append(event)
        return True

    async def send_text(self, text: str) -> None:
        await self._send(self.ws.send(TextMessage(data=text)))

    async def send_json(self, obj: Any) -> None:
        await self.send_text(json.dumps(obj))

    async def send_bytes(self, data: bytes) -> None:
        await self._send(self.ws.send(BytesMessage(data=data)))

    async def receive_json(self) -> dict[str, Any]:
        """The next text frame as JSON; raises ConnectionError once the server closed."""
        while not self._text:
            if self.close_code is not None or not await self._pump():
                raise ConnectionError(f"closed ({self.close_code})")
        result: dict[str, Any] = json.loads(self._text.pop(0))
        return result

    async def wait_closed(self) -> int | None:
        """Read until the server closes; returns its close code."""
        while self.close_code is None and await self._pump():
            pass
        return self.close_code

    async def request(self, rtype: str, data: dict[str, Any], request_id: str = "1") -> Any:
        await self.send_json({"type": rtype, "requestId": request_id, "data": data})
        return await self.receive_json()

    async def abort(self) -> None:
        """Close the TCP connection without a WebSocket close frame."""
        await self.stream.aclose()


# ---- HTTP -----------------------------------------------------------------------------------


async def http(
    server: SfuServer,
    method: str,
    path: str,
    *,
    bearer: str | None = None,
    body: bytes = b"",
) -> HttpAnswer:
    """One HTTP/1.1 request on a fresh connection (:func:`trio_sfu.testing.http.http_request`)."""
    return await http_request(server.host, server.port, method, path, bearer=bearer, body=body)
