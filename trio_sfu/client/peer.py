"""A Python peer: signaling plus real WebRTC transports, for tests, bots and load.

``open_peer`` joins a meeting over the WebSocket protocol and gives the peer a send and a
receive transport (ICE, DTLS, SRTP over UDP or TCP); ``publish`` creates a producer and
returns a :class:`~trio_sfu.client.synthetic.SyntheticPublisher` shaped from its
parameters; ``consume`` subscribes (and resumes) a remote producer.

Everything the peer opens lives in its own nursery and closes when the block ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Literal, final

import attrs
import trio

from trio_sfu.client.signaling import SignalingClient, open_signaling
from trio_sfu.client.synthetic import SyntheticPublisher
from trio_sfu.client.transport import ClientTransport, open_client_transport
from trio_sfu.ortc.types import (
    DtlsParameters,
    IceCandidate,
    IceParameters,
    RtpCapabilities,
    RtpParameters,
)
from trio_sfu.wire import structure_untrusted, unstructure

#: What :meth:`MediaPeer.open_transport` may do with the server's candidates first.
CandidateRoute = Callable[[list[IceCandidate]], Awaitable[Sequence[IceCandidate]]]


@attrs.frozen
class RemoteConsumer:
    """A subscription as the server described it."""

    consumer_id: str
    producer_id: str
    kind: str
    type: str
    rtp_parameters: RtpParameters

    @property
    def ssrc(self) -> int:
        ssrc = self.rtp_parameters.encodings[0].ssrc
        assert ssrc is not None
        return ssrc


@final
class MediaPeer:
    """One joined participant with its transports. Made by :func:`open_peer`."""

    def __init__(
        self, signaling: SignalingClient, joined: dict[str, Any], nursery: trio.Nursery
    ) -> None:
        self.signaling = signaling
        self.peer_id: str = joined["peerId"]
        self.joined = joined
        self._nursery = nursery
        self.rtp_capabilities: RtpCapabilities | None = None
        self.send_transport: ClientTransport | None = None
        self.send_transport_id: str | None = None
        self.recv_transport: ClientTransport | None = None
        self.recv_transport_id: str | None = None

    async def load_capabilities(self) -> RtpCapabilities:
        """The router's capabilities, used as this peer's (it can receive all of them)."""
        if self.rtp_capabilities is None:
            caps = await self.signaling.get_router_rtp_capabilities()
            self.rtp_capabilities = structure_untrusted(caps, RtpCapabilities)
        return self.rtp_capabilities

    async def open_transport(
        self,
        direction: Literal["send", "recv"],
        *,
        protocol: Literal["udp", "tcp"] = "udp",
        route: CandidateRoute | None = None,
        **client_options: Any,
    ) -> tuple[str, ClientTransport]:
        """Create a server transport, connect a client transport to it, wait for SRTP.

        ``route``, if given, gets the server's ICE candidates and answers those to connect
        to instead (a relay's: :meth:`trio_sfu.testing.impairment.UdpRelay.rewrite_candidates`).
        """
        info = await self.signaling.create_transport(direction, force_tcp=protocol == "tcp")
        candidates = [structure_untrusted(c, IceCandidate) for c in info["iceCandidates"]]
        if route is not None:
            candidates = list(await route(candidates))
        client: ClientTransport = await self._nursery.start(
            partial(
                _hold_transport,
                structure_untrusted(info["iceParameters"], IceParameters),
                candidates,
                structure_untrusted(info["dtlsParameters"], DtlsParameters),
                protocol=protocol,
                **client_options,
            )
        )
        transport_id: str = info["transportId"]
        await self.signaling.connect_transport(transport_id, unstructure(client.dtls_parameters))
        await client.wait_connected()
        if direction == "send":
            self.send_transport, self.send_transport_id = client, transport_id
        else:
            self.recv_transport, self.recv_transport_id = client, transport_id
        return transport_id, client

    async def publish(
        self,
        kind: Literal["audio", "video"],
        rtp_parameters: RtpParameters,
        *,
        app_data: dict[str, Any] | None = None,
        paused: bool | None = None,
    ) -> tuple[str, SyntheticPublisher]:
        """Produce ``rtp_parameters``; returns the producer id and a synthetic source."""
        if self.send_transport_id is None:
            await self.open_transport("send")
        assert self.send_transport_id is not None
        producer_id = await self.signaling.produce(
            self.send_transport_id,
            kind,
            unstructure(rtp_parameters),
            app_data=app_data,
            paused=paused,
        )
        return producer_id, SyntheticPublisher(rtp_parameters)

    async def consume(self, producer_id: str, *, resume: bool = True) -> RemoteConsumer:
        """Subscribe to ``producer_id`` on the receive transport (opened on first use)."""
        caps = await self.load_capabilities()
        if self.recv_transport_id is None:
            await self.open_transport("recv")
        answer = await self.signaling.consume(producer_id, unstructure(caps))
        consumer = RemoteConsumer(
            consumer_id=answer["consumerId"],
            producer_id=answer["producerId"],
            kind=answer["kind"],
            type=answer["type"],
            rtp_parameters=structure_untrusted(answer["rtpParameters"], RtpParameters),
        )
        if resume:
            await self.signaling.resume_consumer(consumer.consumer_id)
        return consumer


async def _hold_transport(
    *args: Any, task_status: trio.TaskStatus[ClientTransport], **kwargs: Any
) -> None:
    """Keep a client transport open until the peer's nursery is cancelled."""
    async with open_client_transport(*args, **kwargs) as client:
        task_status.started(client)
        await trio.sleep_forever()


@asynccontextmanager
async def open_peer(
    url: str,
    meeting_id: str,
    *,
    token: str | None = None,
    display_name: str | None = None,
) -> AsyncIterator[MediaPeer]:
    """Join ``meeting_id`` at ``url`` (``ws://host:port/ws``); leave and close all on exit."""
    async with open_signaling(url) as signaling, trio.open_nursery() as nursery:
        joined = await signaling.join(meeting_id, token=token, display_name=display_name)
        try:
            yield MediaPeer(signaling, joined, nursery)
        finally:
            nursery.cancel_scope.cancel()
