"""A TEST DOUBLE of the media engine: :class:`MediaEngine`'s bookkeeping with no media.

It exists so that signaling can be tested before (and apart from) the real engine: ids,
connect-once, pause state, close cascades (router -> transport -> producer/consumer) and the
events those cascades emit (``ConsumerClosed`` with reason ``producer_closed`` or
``transport_closed``). It opens no socket and moves no packet. Codec checks are deliberately
simple: a producer is consumable when the consumer's capabilities list one of its codecs'
MIME types.

The signaling tests get their engine from :func:`make_test_engine`: the real engine by
default (``TRIO_SFU_TEST_ENGINE=fake`` runs them against this fake instead). Tests that need
the fake's controls (recorded calls, injected events, a stuck or buggy engine) use it
directly.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from trio_sfu.engine.api import (
    ConsumerClosed,
    ConsumerInfo,
    ConsumerProducerPaused,
    EngineEvent,
    EventCallback,
    Kind,
    MediaEngine,
    TransportClosed,
    TransportInfo,
)
from trio_sfu.errors import InvalidStateError, LimitExceededError, NotFoundError, UnsupportedError
from trio_sfu.ortc.types import (
    DtlsFingerprint,
    DtlsParameters,
    IceCandidate,
    IceParameters,
    RtcpParameters,
    RtpCapabilities,
    RtpEncodingParameters,
    RtpParameters,
)
from trio_sfu.wire import converter

FIXTURES = Path(__file__).parent / "fixtures" / "mediasoup-client"


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


ROUTER_CAPS: RtpCapabilities = converter.structure(
    load_fixture("router-rtp-capabilities.json"), RtpCapabilities
)


@attrs.define(eq=False)
class _Router:
    router_id: str
    on_event: EventCallback
    transports: set[str] = attrs.field(factory=set)


@attrs.define(eq=False)
class _Transport:
    transport_id: str
    router_id: str
    connected: bool = False
    producers: set[str] = attrs.field(factory=set)
    consumers: set[str] = attrs.field(factory=set)


@attrs.define(eq=False)
class _Producer:
    producer_id: str
    transport_id: str
    kind: Kind
    rtp_parameters: RtpParameters
    paused: bool
    consumers: set[str] = attrs.field(factory=set)


@attrs.define(eq=False)
class _Consumer:
    consumer_id: str
    transport_id: str
    producer_id: str
    paused: bool
    producer_paused: bool
    layers: tuple[int, int] = (2, 2)


class FakeEngine:
    """In-memory :class:`MediaEngine`: bookkeeping and events only (see module doc)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.routers: dict[str, _Router] = {}
        self.transports: dict[str, _Transport] = {}
        self.producers: dict[str, _Producer] = {}
        self.consumers: dict[str, _Consumer] = {}
        #: Every event emitted, in order (for assertions).
        self.events: list[EngineEvent] = []
        #: Every call, as (method name, first argument).
        self.calls: list[tuple[str, Any]] = []

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def _emit(self, router_id: str, event: EngineEvent) -> None:
        self.events.append(event)
        router = self.routers.get(router_id)
        if router is not None:
            router.on_event(event)

    def _transport(self, transport_id: str) -> _Transport:
        found = self.transports.get(transport_id)
        if found is None:
            raise NotFoundError(f"transport {transport_id!r} not found")
        return found

    def _producer(self, producer_id: str) -> _Producer:
        found = self.producers.get(producer_id)
        if found is None:
            raise NotFoundError(f"producer {producer_id!r} not found")
        return found

    def _consumer(self, consumer_id: str) -> _Consumer:
        found = self.consumers.get(consumer_id)
        if found is None:
            raise NotFoundError(f"consumer {consumer_id!r} not found")
        return found

    # ---- MediaEngine --------------------------------------------------------------------------

    async def create_router(self, on_event: EventCallback, *, avoid: Any = ()) -> str:
        await trio.lowlevel.checkpoint()
        if avoid:
            raise LimitExceededError("the fake engine is one worker")
        router_id = self._new_id("router")
        self.routers[router_id] = _Router(router_id, on_event)
        self.calls.append(("create_router", router_id))
        return router_id

    async def close_router(self, router_id: str) -> None:
        self.calls.append(("close_router", router_id))
        router = self.routers.get(router_id)
        if router is not None:
            for transport_id in list(router.transports):
                self._close_transport(transport_id, emit=False)
            del self.routers[router_id]
        await trio.lowlevel.checkpoint()

    def router_overloaded(self, router_id: str) -> bool:
        return False

    def workers_info(self) -> list[dict[str, Any]]:
        return [{"index": 0, "alive": True, "routers": len(self.routers)}]

    async def pipe_to_router(self, producer_id: str, *, from_router: str, to_router: str) -> None:
        raise UnsupportedError("the fake engine has one router per meeting")

    def router_rtp_capabilities(self, router_id: str) -> RtpCapabilities:
        if router_id not in self.routers:
            raise NotFoundError(f"router {router_id!r} not found")
        return ROUTER_CAPS

    async def create_webrtc_transport(
        self, router_id: str, *, force_tcp: bool = False, app_data: dict[str, Any] | None = None
    ) -> TransportInfo:
        await trio.lowlevel.checkpoint()
        router = self.routers.get(router_id)
        if router is None:
            raise NotFoundError(f"router {router_id!r} not found")
        transport_id = self._new_id("transport")
        self.transports[transport_id] = _Transport(transport_id, router_id)
        router.transports.add(transport_id)
        self.calls.append(("create_webrtc_transport", router_id))
        protocol = "tcp" if force_tcp else "udp"
        return TransportInfo(
            transport_id=transport_id,
            ice_parameters=IceParameters(f"ufrag{transport_id}", "p" * 24, ice_lite=True),
            ice_candidates=[
                IceCandidate(
                    foundation="udpcandidate",
                    priority=1076302079,
                    address="127.0.0.1",
                    ip="127.0.0.1",
                    port=40000,
                    type="host",
                    protocol=protocol,
                    tcp_type="passive" if force_tcp else None,
                )
            ],
            dtls_parameters=DtlsParameters(
                fingerprints=[DtlsFingerprint("sha-256", ":".join(["AB"] * 32))], role="auto"
            ),
        )

    async def connect_transport(self, transport_id: str, dtls_parameters: DtlsParameters) -> None:
        await trio.lowlevel.checkpoint()
        transport = self._transport(transport_id)
        if transport.connected:
            raise InvalidStateError(f"transport {transport_id!r} is already connected")
        transport.connected = True
        self.calls.append(("connect_transport", transport_id))

    async def restart_ice(self, transport_id: str) -> IceParameters:
        await trio.lowlevel.checkpoint()
        self._transport(transport_id)
        return IceParameters(f"ufrag{self._new_id('restart')}", "q" * 24, ice_lite=True)

    async def close_transport(self, transport_id: str) -> None:
        self.calls.append(("close_transport", transport_id))
        self._close_transport(transport_id, emit=True)
        await trio.lowlevel.checkpoint()

    def _close_transport(self, transport_id: str, *, emit: bool) -> None:
        transport = self.transports.pop(transport_id, None)
        if transport is None:
            return
        router = self.routers.get(transport.router_id)
        if router is not None:
            router.transports.discard(transport_id)
        for producer_id in list(transport.producers):
            self._close_producer(producer_id, emit=emit)
        for consumer_id in list(transport.consumers):
            self._close_consumer(consumer_id, emit=emit, reason="transport_closed")

    async def produce(
        self, transport_id: str, kind: Kind, rtp_parameters: RtpParameters, *, paused: bool = False
    ) -> str:
        await trio.lowlevel.checkpoint()
        transport = self._transport(transport_id)
        router_mimes = {c.mime_type.lower() for c in ROUTER_CAPS.codecs if c.kind == kind}
        if not any(c.mime_type.lower() in router_mimes for c in rtp_parameters.codecs):
            raise UnsupportedError("no codec of the producer is supported by the router")
        producer_id = self._new_id("producer")
        self.producers[producer_id] = _Producer(
            producer_id, transport_id, kind, rtp_parameters, paused
        )
        transport.producers.add(producer_id)
        self.calls.append(("produce", transport_id))
        return producer_id

    async def close_producer(self, producer_id: str) -> None:
        self.calls.append(("close_producer", producer_id))
        self._producer(producer_id)
        self._close_producer(producer_id, emit=True)
        await trio.lowlevel.checkpoint()

    def _close_producer(self, producer_id: str, *, emit: bool) -> None:
        producer = self.producers.pop(producer_id, None)
        if producer is None:
            return
        transport = self.transports.get(producer.transport_id)
        if transport is not None:
            transport.producers.discard(producer_id)
        for consumer_id in list(producer.consumers):
            self._close_consumer(consumer_id, emit=emit, reason="producer_closed")

    async def pause_producer(self, producer_id: str) -> None:
        await self._set_producer_paused(producer_id, True)

    async def resume_producer(self, producer_id: str) -> None:
        await self._set_producer_paused(producer_id, False)

    async def _set_producer_paused(self, producer_id: str, paused: bool) -> None:
        await trio.lowlevel.checkpoint()
        producer = self._producer(producer_id)
        if producer.paused == paused:
            return
        producer.paused = paused
        router_id = self.transports[producer.transport_id].router_id
        for consumer_id in producer.consumers:
            self.consumers[consumer_id].producer_paused = paused
            self._emit(router_id, ConsumerProducerPaused(router_id, consumer_id, paused))

    async def can_consume(
        self, router_id: str, producer_id: str, rtp_capabilities: RtpCapabilities
    ) -> bool:
        producer = self._producer(producer_id)
        wanted = {c.mime_type.lower() for c in rtp_capabilities.codecs}
        return any(c.mime_type.lower() in wanted for c in producer.rtp_parameters.codecs)

    async def consume(
        self,
        transport_id: str,
        producer_id: str,
        rtp_capabilities: RtpCapabilities,
        *,
        paused: bool = True,
    ) -> ConsumerInfo:
        await trio.lowlevel.checkpoint()
        transport = self._transport(transport_id)
        producer = self._producer(producer_id)
        if not await self.can_consume(transport.router_id, producer_id, rtp_capabilities):
            raise UnsupportedError("cannot consume this producer")
        consumer_id = self._new_id("consumer")
        self.consumers[consumer_id] = _Consumer(
            consumer_id, transport_id, producer_id, paused, producer.paused
        )
        transport.consumers.add(consumer_id)
        producer.consumers.add(consumer_id)
        simulcast = len(producer.rtp_parameters.encodings) > 1
        ssrc = 100000 + int(consumer_id.rsplit("-", 1)[1])
        return ConsumerInfo(
            consumer_id=consumer_id,
            producer_id=producer_id,
            kind=producer.kind,
            rtp_parameters=RtpParameters(
                codecs=[producer.rtp_parameters.codecs[0]],
                encodings=[RtpEncodingParameters(ssrc=ssrc)],
                rtcp=RtcpParameters(cname="fake", reduced_size=True),
                mid=str(len(transport.consumers) - 1),
            ),
            type="simulcast" if simulcast else "simple",
            producer_paused=producer.paused,
        )

    async def close_consumer(self, consumer_id: str) -> None:
        self.calls.append(("close_consumer", consumer_id))
        self._consumer(consumer_id)
        self._close_consumer(consumer_id, emit=False, reason="closed")
        await trio.lowlevel.checkpoint()

    def _close_consumer(self, consumer_id: str, *, emit: bool, reason: str) -> None:
        consumer = self.consumers.pop(consumer_id, None)
        if consumer is None:
            return
        transport = self.transports.get(consumer.transport_id)
        if transport is not None:
            transport.consumers.discard(consumer_id)
        producer = self.producers.get(consumer.producer_id)
        if producer is not None:
            producer.consumers.discard(consumer_id)
        router_id = transport.router_id if transport is not None else None
        if emit and router_id is not None:
            self._emit(
                router_id, ConsumerClosed(router_id, consumer_id, consumer.producer_id, reason)
            )

    async def pause_consumer(self, consumer_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self._consumer(consumer_id).paused = True

    async def resume_consumer(self, consumer_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self._consumer(consumer_id).paused = False

    async def set_consumer_preferred_layers(
        self, consumer_id: str, spatial_layer: int, temporal_layer: int | None
    ) -> tuple[int, int]:
        await trio.lowlevel.checkpoint()
        consumer = self._consumer(consumer_id)
        consumer.layers = (spatial_layer, 2 if temporal_layer is None else temporal_layer)
        return consumer.layers

    async def get_stats(self, entity_id: str) -> list[dict[str, Any]]:
        await trio.lowlevel.checkpoint()
        if not (
            entity_id in self.transports
            or entity_id in self.producers
            or entity_id in self.consumers
        ):
            raise NotFoundError(f"{entity_id!r} not found")
        return [{"type": "fake-stats", "id": entity_id, "packetCount": 0}]

    def media_counters(self) -> dict[str, int]:
        """No media moves through the fake."""
        return dict.fromkeys(("packets_in", "packets_out", "bytes_in", "bytes_out", "drops"), 0)

    def dump(self) -> dict[str, Any]:
        return {
            "routers": [
                {
                    "routerId": router.router_id,
                    "transports": sorted(router.transports),
                    "producers": sorted(
                        p.producer_id
                        for p in self.producers.values()
                        if p.transport_id in router.transports
                    ),
                    "consumers": sorted(
                        c.consumer_id
                        for c in self.consumers.values()
                        if c.transport_id in router.transports
                    ),
                }
                for router in self.routers.values()
            ],
            "counters": {"packets_in": 0, "packets_out": 0, "bytes_in": 0, "bytes_out": 0},
        }

    # ---- test controls ------------------------------------------------------------------------

    def close_transport_by_itself(self, transport_id: str, reason: str) -> None:
        """Simulate the engine closing a transport on its own (ICE consent timeout...)."""
        transport = self._transport(transport_id)
        router_id = transport.router_id
        self._close_transport(transport_id, emit=True)
        self._emit(router_id, TransportClosed(router_id, transport_id, reason))

    def emit(self, event: EngineEvent) -> None:
        """Deliver an arbitrary event to its router's callback."""
        self._emit(event.router_id, event)

    def is_empty(self) -> bool:
        return not (self.routers or self.transports or self.producers or self.consumers)


@asynccontextmanager
async def make_test_engine() -> AsyncIterator[MediaEngine]:
    """The engine the signaling tests run against: the real in-process Worker, or with
    ``TRIO_SFU_TEST_ENGINE=fake`` this fake (tests that need the fake's controls construct a
    :class:`FakeEngine` themselves and are unaffected)."""
    if os.environ.get("TRIO_SFU_TEST_ENGINE", "worker") != "fake":
        from trio_sfu.engine.worker import open_worker

        async with open_worker() as worker:
            yield worker
    else:
        yield FakeEngine()
