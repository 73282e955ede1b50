"""Router: the media plane of one meeting, and the owner of everything in it.

A router is a Trio nursery (its :meth:`Router.run` task) that owns the meeting's
transports (WebRTC, plain and pipe), their Producers and Consumers, and the periodic
tasks. The maps from id to object live here, never in a global: ``transports`` (each a
:class:`~trio_sfu.engine.leg.TransportLeg`), ``producers``, ``consumers``. It creates
every entity, installs itself as its owner (``on_closed``), and forgets it when it
closes, telling its own owner (``on_entity_closed``). ``close()`` is synchronous and
idempotent: it closes every transport (their sockets at once), producers and consumers,
then cancels the nursery.

What is not the owner's lives elsewhere, one concept per module:

* the packet path: :mod:`trio_sfu.engine.leg` (a transport's packets in, RTCP from the
  other end), :mod:`~trio_sfu.engine.rtp_listener`, :mod:`~trio_sfu.engine.producer`,
  :mod:`~trio_sfu.engine.consumer`;
* bandwidth, reports, probing and the loss policy of each transport:
  :mod:`trio_sfu.engine.control` (sans-IO), driven from here by three periodic tasks
  (reports, feedback, policy) and a task per probe; the ICE/DTLS timers of every
  transport fire from one more task (a :class:`~trio_sfu.timers.TimerQueue`).

Pipes (mediasoup's ``pipeToRouter``, orchestrated by :mod:`trio_sfu.engine.pipe`): a
:class:`~trio_sfu.engine.pipe_transport.PipeTransport` takes the place of a WebRtcTransport
in the same bookkeeping; a :class:`~trio_sfu.engine.pipe_consumer.PipeConsumer` on it
sends every stream of a producer to another router, where :meth:`Router.pipe_produce`
makes a producer with the same id that its consumers consume like any other.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, final

import trio

from trio_sfu.dtls import DtlsCertificate
from trio_sfu.engine.api import (
    ActiveSpeaker,
    ConsumerClosed,
    ConsumerInfo,
    ConsumerLayersChanged,
    ConsumerProducerPaused,
    EventCallback,
    NetworkQuality,
    PipeConsumerInfo,
    PipeTransportInfo,
    PlainTransportInfo,
    TransportClosed,
    TransportInfo,
)
from trio_sfu.engine.consumer import Consumer
from trio_sfu.engine.layers import PolicySettings
from trio_sfu.engine.leg import AnyTransport, TransportLeg
from trio_sfu.engine.pipe_consumer import PipeConsumer
from trio_sfu.engine.pipe_transport import PipeTransport
from trio_sfu.engine.plain_transport import PlainTransport
from trio_sfu.engine.producer import Producer
from trio_sfu.engine.rtc_sockets import is_unspecified
from trio_sfu.engine.speaker import ActiveSpeakerDetector
from trio_sfu.engine.webrtc_transport import WebRtcTransport
from trio_sfu.errors import ENGINE_REFUSALS, InvalidStateError, NotFoundError, UnsupportedError
from trio_sfu.ortc import negotiation
from trio_sfu.ortc.types import (
    DtlsParameters,
    IceParameters,
    MediaKind,
    RtpCapabilities,
    RtpParameters,
    SrtpParameters,
)
from trio_sfu.timers import TimerQueue

logger = logging.getLogger(__name__)

#: How often Sender and Receiver Reports go out (RFC 3550 suggests 5 s; WebRTC uses ~1 s).
RTCP_INTERVAL = 1.0
#: How often NACKs and transport-cc feedback go to publishers and bandwidth is re-planned.
FEEDBACK_INTERVAL = 0.05
#: How often the dominant speaker is re-evaluated.
SPEAKER_INTERVAL = 0.3
#: Periodic passes (reports, feedback, policy) handle this many transports between two
#: checkpoints, so that the packet path runs in between.
TICK_SLICE = 16


def new_id(prefix: str = "") -> str:
    """A fresh entity id. A worker process puts its own ``prefix`` in front, so that the
    signaling side can tell from an id alone which worker holds the entity."""
    return prefix + secrets.token_hex(8)


#: The media counters the engine reports (``Worker.dump()["counters"]``, ``/metrics``).
MEDIA_COUNTERS = (
    "packets_in",
    "packets_out",
    "bytes_in",
    "bytes_out",
    "drops",
    *(f"refused_{reason}" for reason in ENGINE_REFUSALS),
)


def new_media_counters() -> dict[str, int]:
    return dict.fromkeys(MEDIA_COUNTERS, 0)


def add_transport_counters(into: dict[str, int], transport: AnyTransport) -> None:
    """Add one transport's traffic (and every packet it dropped) to ``into``."""
    stats = transport.stats()
    for key in ("packets_in", "packets_out", "bytes_in", "bytes_out"):
        into[key] += stats[key]
    into["drops"] += sum(stats["dropped"].values())
    for reason, count in stats.get("refused", {}).items():
        into[f"refused_{reason}"] += count


@final
class Router:
    """One meeting's media: transports, producers, consumers. Run it in a nursery."""

    def __init__(
        self,
        *,
        router_id: str,
        rtp_capabilities: RtpCapabilities,
        certificate: DtlsCertificate,
        on_event: EventCallback,
        transport_options: dict[str, Any],
        rtcp_interval: float = RTCP_INTERVAL,
        policy: PolicySettings | None = None,
        feedback_interval: float = FEEDBACK_INTERVAL,
        retired_counters: dict[str, int] | None = None,
        id_prefix: str = "",
        on_entity_closed: Callable[[str], None] | None = None,
    ) -> None:
        self.id = router_id
        #: Put in front of every transport, producer and consumer id (see :func:`new_id`).
        self.id_prefix = id_prefix
        #: Where a closing transport leaves its traffic counters (the worker's totals).
        self.retired_counters = (
            retired_counters if retired_counters is not None else new_media_counters()
        )
        self.rtp_capabilities = rtp_capabilities
        self.closed = False
        self._certificate = certificate
        self._on_event = on_event
        #: Told the id of every transport, producer and consumer that closed, once the
        #: router has forgotten it (the worker keeps its index of ids with it).
        self._on_entity_closed = on_entity_closed
        self._transport_options = transport_options
        self._rtcp_interval = rtcp_interval
        self.policy = policy or PolicySettings()
        self._feedback_interval = feedback_interval
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        #: Fires every transport's ICE/DTLS timer from one task.
        self._timers = TimerQueue()
        #: Every transport's leg, by transport id.
        self.transports: dict[str, TransportLeg] = {}
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        #: Every SSRC a producer of this router has (announced or learned), by producer.
        self.ssrc_owners: dict[int, Producer] = {}
        self.speakers = ActiveSpeakerDetector()
        self._speaker_at = -1e9
        # NTP timestamps in reports come from trio's clock, offset to the wall clock once.
        self._epoch_offset = time.time() - trio.current_time()

    # ---- life cycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The router's nursery. Returns when the router is closed; closes it when cancelled."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._rtcp_loop)
                    nursery.start_soon(self._feedback_loop)
                    nursery.start_soon(self._policy_loop)
                    nursery.start_soon(self._timers.run)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self.close()

    def close(self) -> None:
        """Close every transport (sockets at once), producer and consumer. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for transport_id in list(self.transports):
            self._close_transport(transport_id, "router_closed", notify=False)
        self._scope.cancel()

    def _nursery_or_fail(self) -> trio.Nursery:
        if self.closed or self._nursery is None:
            raise InvalidStateError(f"router {self.id} is closed")
        return self._nursery

    def _emit(self, event: Any) -> None:
        if not self.closed:
            self._on_event(event)

    def _forgotten(self, entity_id: str) -> None:
        if self._on_entity_closed is not None:
            self._on_entity_closed(entity_id)

    # ---- transports --------------------------------------------------------------------

    def _new_leg(self, transport: AnyTransport) -> TransportLeg:
        """A new transport's leg: its packets go to the leg, its end to this router."""
        return TransportLeg(
            transport,
            self.ssrc_owners,
            policy=self.policy,
            epoch_offset=self._epoch_offset,
            on_streams_changed=self._on_streams_changed,
            on_closed=self._on_transport_closed,
        )

    async def _start_plain(self, nursery: trio.Nursery, transport: PlainTransport) -> None:
        """Start a plain (or pipe) transport's receive task(s) in the router's nursery and
        register it. Cancellation, or no free port: nothing stays bound."""
        leg = self._new_leg(transport)
        try:
            await nursery.start(transport.run)
        except BaseException:
            transport.close()
            raise
        if transport.closed:
            raise InvalidStateError(f"transport {transport.id} closed while starting")
        self.transports[transport.id] = leg

    async def create_webrtc_transport(
        self, *, force_tcp: bool = False, app_data: dict[str, Any] | None = None
    ) -> TransportInfo:
        nursery = self._nursery_or_fail()
        options = dict(self._transport_options)
        if force_tcp:
            options["enable_udp"] = False
            options["enable_tcp"] = True
        transport = WebRtcTransport(
            transport_id=new_id(self.id_prefix),
            certificate=self._certificate,
            app_data=app_data,
            timers=self._timers,
            **options,
        )
        leg = self._new_leg(transport)
        if options.get("server") is not None:
            transport.start(nursery)  # on the worker's sockets: no task of its own
        else:
            await nursery.start(transport.run)
        if transport.closed:
            raise InvalidStateError(f"transport {transport.id} closed while starting")
        self.transports[transport.id] = leg
        return TransportInfo(
            transport_id=transport.id,
            ice_parameters=transport.ice_parameters,
            ice_candidates=list(transport.ice_candidates),
            dtls_parameters=transport.dtls_parameters,
        )

    async def create_pipe_transport(
        self, *, app_data: dict[str, Any] | None = None
    ) -> PipeTransportInfo:
        """A pipe transport on the worker's listen IP (loopback when that is 0.0.0.0 / ::),
        on a free port of its RTC range.

        Its receive task runs in the router's nursery; the router closes it (and it
        closes with the router). Cancellation: a cancelled call leaves no transport.
        """
        nursery = self._nursery_or_fail()
        options = self._transport_options
        listen_ip = options.get("listen_ip", "127.0.0.1")
        if is_unspecified(listen_ip):
            # Every interface: the pipe takes loopback (an announced public address may
            # not be where the other end's datagrams come from).
            listen_ip = "::1" if ":" in listen_ip else "127.0.0.1"
        transport = PipeTransport(
            transport_id=new_id(self.id_prefix),
            listen_ip=listen_ip,
            port_range=options.get("port_range", (40000, 49999)),
            app_data=app_data,
        )
        await self._start_plain(nursery, transport)
        return PipeTransportInfo(transport_id=transport.id, ip=transport.ip, port=transport.port)

    async def create_plain_transport(
        self,
        *,
        rtcp_mux: bool = True,
        comedia: bool = False,
        enable_srtp: bool = False,
        srtp_crypto_suite: str = "AES_CM_128_HMAC_SHA1_80",
        app_data: dict[str, Any] | None = None,
    ) -> PlainTransportInfo:
        """A plain transport (mediasoup's PlainTransport) on the worker's listen IP, its
        tuple announcing the announced IP when there is one; free port(s) of the RTC
        range. Its receive task(s) run in the router's nursery, as a pipe transport's.
        Cancellation: a cancelled call leaves no transport."""
        nursery = self._nursery_or_fail()
        options = self._transport_options
        transport = PlainTransport(
            transport_id=new_id(self.id_prefix),
            listen_ip=options.get("listen_ip", "127.0.0.1"),
            announced_ip=options.get("announced_ip"),
            port_range=options.get("port_range", (40000, 49999)),
            rtcp_mux=rtcp_mux,
            comedia=comedia,
            enable_srtp=enable_srtp,
            srtp_crypto_suite=srtp_crypto_suite,
            app_data=app_data,
        )
        await self._start_plain(nursery, transport)
        return plain_transport_info(transport)

    def connect_plain_transport(
        self,
        transport_id: str,
        *,
        ip: str | None = None,
        port: int | None = None,
        rtcp_port: int | None = None,
        srtp_parameters: SrtpParameters | None = None,
    ) -> PlainTransportInfo:
        """The other end of a plain transport (InvalidStateError the second time)."""
        transport = self._leg(transport_id).transport
        if not isinstance(transport, PlainTransport) or isinstance(transport, PipeTransport):
            raise UnsupportedError(f"transport {transport_id!r} is not a plain transport")
        transport.connect(ip=ip, port=port, rtcp_port=rtcp_port, srtp_parameters=srtp_parameters)
        return plain_transport_info(transport)

    def connect_pipe_transport(self, transport_id: str, ip: str, port: int) -> None:
        """Where the other end of the pipe is (InvalidStateError the second time)."""
        transport = self._pipe_leg(transport_id).transport
        assert isinstance(transport, PipeTransport)
        transport.connect(ip, port)

    def _leg(self, transport_id: str) -> TransportLeg:
        leg = self.transports.get(transport_id)
        if leg is None:
            raise NotFoundError(f"transport {transport_id!r} not found")
        return leg

    def _webrtc_transport(self, transport_id: str) -> WebRtcTransport:
        transport = self._leg(transport_id).transport
        if not isinstance(transport, WebRtcTransport):
            raise UnsupportedError(f"transport {transport_id!r} is a {transport.kind} transport")
        return transport

    def _pipe_leg(self, transport_id: str) -> TransportLeg:
        leg = self._leg(transport_id)
        if not isinstance(leg.transport, PipeTransport):
            raise UnsupportedError(f"transport {transport_id!r} is not a pipe transport")
        return leg

    def connect_transport(self, transport_id: str, dtls_parameters: DtlsParameters) -> None:
        self._webrtc_transport(transport_id).connect(dtls_parameters)

    def restart_ice(self, transport_id: str) -> IceParameters:
        return self._webrtc_transport(transport_id).restart_ice()

    def close_transport(self, transport_id: str) -> None:
        if transport_id in self.transports:
            self._close_transport(transport_id, "closed", notify=False)

    def _on_transport_closed(self, transport_id: str, reason: str) -> None:
        if transport_id in self.transports:
            self._close_transport(transport_id, reason, notify=True)

    def _close_transport(self, transport_id: str, reason: str, *, notify: bool) -> None:
        leg = self.transports.pop(transport_id)
        for producer in list(leg.producers.values()):
            producer.close("transport_closed")
        for consumer in list(leg.consumers.values()):
            consumer.close("transport_closed")
        leg.transport.close(reason)
        add_transport_counters(self.retired_counters, leg.transport)
        self._forgotten(transport_id)
        if notify and not self.closed:
            self._on_event(TransportClosed(self.id, transport_id, reason))

    # ---- producers ---------------------------------------------------------------------

    def produce(
        self,
        transport_id: str,
        kind: MediaKind,
        rtp_parameters: RtpParameters,
        *,
        paused: bool = False,
    ) -> str:
        leg = self._leg(transport_id)
        if isinstance(leg.transport, PipeTransport):
            raise UnsupportedError(f"transport {transport_id!r} is a pipe transport")
        return self._produce(
            leg, new_id(self.id_prefix), kind, rtp_parameters, paused=paused, pipe=False
        )

    def pipe_produce(
        self,
        transport_id: str,
        producer_id: str,
        kind: MediaKind,
        rtp_parameters: RtpParameters,
        *,
        paused: bool = False,
    ) -> None:
        """The pipe producer of another router's producer ``producer_id``, made from the
        parameters its pipe consumer announced (:meth:`pipe_consume`). Raises
        InvalidStateError when this router holds a producer of that id already."""
        leg = self._pipe_leg(transport_id)
        if producer_id in self.producers:
            raise InvalidStateError(f"producer {producer_id!r} is in router {self.id} already")
        self._produce(leg, producer_id, kind, rtp_parameters, paused=paused, pipe=True)

    def _produce(
        self,
        leg: TransportLeg,
        producer_id: str,
        kind: MediaKind,
        rtp_parameters: RtpParameters,
        *,
        paused: bool,
        pipe: bool,
    ) -> str:
        mapping = negotiation.get_producer_rtp_mapping(
            rtp_parameters, self.rtp_capabilities, kind=kind
        )
        self._check_claims(leg, rtp_parameters)
        if not pipe:
            # One endpoint, one CNAME; a pipe carries many endpoints' producers.
            leg.cname = negotiation.pick_transport_cname(leg.cname, rtp_parameters)
            rtp_parameters = negotiation.fill_cname(rtp_parameters, leg.cname)
        consumable = negotiation.get_consumable_rtp_parameters(
            kind, rtp_parameters, self.rtp_capabilities, mapping
        )
        transport = leg.transport
        producer = Producer(
            producer_id=producer_id,
            transport_id=leg.transport.id,
            kind=kind,
            rtp_parameters=rtp_parameters,
            consumable_rtp_parameters=consumable,
            mapping=mapping,
            paused=paused,
            send_rtcp=transport.send_rtcp_nowait,
            on_audio_level=self.speakers.add_level if kind == "audio" else None,
            on_streams_changed=self._on_streams_changed,
            on_closed=self._forget_producer,
        )
        leg.add_producer(producer)
        self.producers[producer.id] = producer
        if kind == "audio":
            self.speakers.add(producer.id)
        return producer.id

    def _check_claims(self, leg: TransportLeg, rtp_parameters: RtpParameters) -> None:
        """Refuse (counted) a producer whose packets could be taken for another's: an SSRC
        any producer of the router holds; a MID another producer of the transport has;
        RIDs another producer of the transport uses where either has no MID to tell
        them apart. mediasoup checks the transport only; SSRCs are checked router-wide so
        that no producer can even announce another's stream."""
        seen: set[int] = set()
        for encoding in rtp_parameters.encodings:
            for ssrc in (encoding.ssrc, encoding.rtx.ssrc if encoding.rtx else None):
                if ssrc is None:
                    continue
                if ssrc in seen or leg.listener.ssrc_in_use(ssrc):
                    self._refuse("ssrc_in_use")
                    raise UnsupportedError(
                        f"rtpParameters.encodings: ssrc {ssrc} is already in use",
                        refusal="ssrc_in_use",
                    )
                seen.add(ssrc)
        mid = rtp_parameters.mid
        others = list(leg.producers.values())
        if mid is not None and any(p.rtp_parameters.mid == mid for p in others):
            self._refuse("mid_in_use")
            raise UnsupportedError(
                f"rtpParameters.mid: mid {mid!r} is already in use", refusal="mid_in_use"
            )
        rids = {e.rid for e in rtp_parameters.encodings if e.rid is not None}
        for other in others if rids else ():
            if mid is not None and other.rtp_parameters.mid is not None:
                continue  # told apart by their MIDs
            shared = rids & {e.rid for e in other.rtp_parameters.encodings if e.rid is not None}
            if shared:
                self._refuse("rid_in_use")
                raise UnsupportedError(
                    f"rtpParameters.encodings: rid {min(shared)!r} is already in use on this "
                    "transport by a producer it cannot be told from by MID",
                    refusal="rid_in_use",
                )

    def _refuse(self, reason: str) -> None:
        self.retired_counters[f"refused_{reason}"] += 1

    def _producer(self, producer_id: str) -> Producer:
        producer = self.producers.get(producer_id)
        if producer is None:
            raise NotFoundError(f"producer {producer_id!r} not found")
        return producer

    def close_producer(self, producer_id: str) -> None:
        producer = self.producers.get(producer_id)
        if producer is not None:
            producer.close()

    def _forget_producer(self, producer: Producer, reason: str) -> None:
        """A producer closed (its ``on_closed``; its consumers closed before): out of the
        router's maps and its transport's."""
        self.producers.pop(producer.id, None)
        self.speakers.remove(producer.id)
        owners = self.ssrc_owners
        for stream in producer.streams:
            for ssrc in (stream.ssrc, stream.rtx_ssrc):
                if ssrc is not None and owners.get(ssrc) is producer:
                    del owners[ssrc]
        leg = self.transports.get(producer.transport_id)
        if leg is not None:
            leg.remove_producer(producer)
        self._forgotten(producer.id)

    def pause_producer(self, producer_id: str) -> None:
        self._set_producer_paused(self._producer(producer_id), True)

    def resume_producer(self, producer_id: str) -> None:
        self._set_producer_paused(self._producer(producer_id), False)

    def _set_producer_paused(self, producer: Producer, paused: bool) -> None:
        if producer.paused == paused:
            return
        producer.paused = paused
        now = trio.current_time()
        for consumer in producer.consumers:
            consumer.set_producer_paused(paused, now)
            self._on_event(ConsumerProducerPaused(self.id, consumer.id, paused))

    def _on_streams_changed(self, producer: Producer, now: float) -> None:
        for consumer in producer.consumers:
            consumer.on_streams_changed(now)
            leg = self.transports.get(consumer.transport_id)
            if leg is not None:
                leg.control.planned = False

    # ---- consumers ---------------------------------------------------------------------

    def can_consume(self, producer_id: str, rtp_capabilities: RtpCapabilities) -> bool:
        producer = self._producer(producer_id)
        return negotiation.can_consume(producer.consumable_rtp_parameters, rtp_capabilities)

    def consume(
        self,
        transport_id: str,
        producer_id: str,
        rtp_capabilities: RtpCapabilities,
        *,
        paused: bool = True,
    ) -> ConsumerInfo:
        leg = self._leg(transport_id)
        if isinstance(leg.transport, PipeTransport):
            raise UnsupportedError(f"transport {transport_id!r} is a pipe transport")
        producer = self._producer(producer_id)
        if not negotiation.can_consume(producer.consumable_rtp_parameters, rtp_capabilities):
            raise UnsupportedError(
                f"rtpCapabilities: no codec in common with producer {producer_id!r}"
            )
        mid = str(leg.next_mid)
        leg.next_mid += 1
        rtp_parameters = negotiation.get_consumer_rtp_parameters(
            producer.consumable_rtp_parameters, rtp_capabilities, mid=mid
        )
        now = trio.current_time()
        consumer = Consumer(
            consumer_id=new_id(self.id_prefix),
            producer=producer,
            transport_id=transport_id,
            rtp_parameters=rtp_parameters,
            paused=paused,
            send_rtp=leg.transport.send_rtp_nowait,
            now=now,
            on_layers_changed=self._on_layers_changed,
            on_closed=self._forget_consumer,
            estimator=leg.control.estimator,
        )
        producer.consumers.add(consumer)
        leg.add_consumer(consumer)
        leg.control.add_consumer(consumer)
        self.consumers[consumer.id] = consumer
        leg.control.plan(now)
        if not paused:
            consumer.start(now)
        return ConsumerInfo(
            consumer_id=consumer.id,
            producer_id=producer.id,
            kind=producer.kind,
            rtp_parameters=rtp_parameters,
            type=consumer.type,
            producer_paused=producer.paused,
        )

    def pipe_consume(self, transport_id: str, producer_id: str) -> PipeConsumerInfo:
        """A pipe consumer of ``producer_id`` on pipe transport ``transport_id``: every
        stream of the producer goes to the other end, which makes the pipe producer from
        the returned parameters. Raises InvalidStateError when the producer is piped on
        this transport already."""
        leg = self._pipe_leg(transport_id)
        producer = self._producer(producer_id)
        rtp_parameters = negotiation.get_pipe_consumer_rtp_parameters(
            producer.consumable_rtp_parameters
        )
        if any(encoding.ssrc in leg.consumers_by_ssrc for encoding in rtp_parameters.encodings):
            raise InvalidStateError(
                f"producer {producer_id!r} is piped on transport {transport_id!r} already"
            )
        now = trio.current_time()
        consumer = PipeConsumer(
            consumer_id=new_id(self.id_prefix),
            producer=producer,
            transport_id=transport_id,
            rtp_parameters=rtp_parameters,
            send_rtp=leg.transport.send_rtp_nowait,
            now=now,
            on_closed=self._forget_consumer,
        )
        producer.consumers.add(consumer)
        leg.add_consumer(consumer)
        self.consumers[consumer.id] = consumer
        leg.control.planned = False
        consumer.start(now)
        return PipeConsumerInfo(
            consumer_id=consumer.id,
            producer_id=producer.id,
            kind=producer.kind,
            rtp_parameters=rtp_parameters,
            producer_paused=producer.paused,
        )

    def _consumer(self, consumer_id: str) -> Consumer:
        consumer = self.consumers.get(consumer_id)
        if consumer is None:
            raise NotFoundError(f"consumer {consumer_id!r} not found")
        return consumer

    def close_consumer(self, consumer_id: str) -> None:
        consumer = self.consumers.get(consumer_id)
        if consumer is not None:
            consumer.close()

    def _forget_consumer(self, consumer: Consumer, reason: str) -> None:
        """A consumer closed (its ``on_closed``): out of its producer's fan-out and the
        maps; ``ConsumerClosed`` unless it was asked for."""
        consumer.producer.consumers.discard(consumer)
        self.consumers.pop(consumer.id, None)
        leg = self.transports.get(consumer.transport_id)
        if leg is not None:
            leg.remove_consumer(consumer, reason)
        self._forgotten(consumer.id)
        if reason != "closed":
            self._emit(ConsumerClosed(self.id, consumer.id, consumer.producer_id, reason))

    def pause_consumer(self, consumer_id: str) -> None:
        consumer = self._consumer(consumer_id)
        consumer.pause()
        self._replan(consumer)

    def resume_consumer(self, consumer_id: str) -> None:
        consumer = self._consumer(consumer_id)
        consumer.resume(trio.current_time())
        self._replan(consumer)

    def set_consumer_preferred_layers(
        self, consumer_id: str, spatial_layer: int, temporal_layer: int | None
    ) -> tuple[int, int]:
        consumer = self._consumer(consumer_id)
        now = trio.current_time()
        layers = consumer.set_preferred_layers(spatial_layer, temporal_layer, now)
        leg = self.transports.get(consumer.transport_id)
        if leg is not None:
            leg.control.plan(now)
        return layers

    def _replan(self, consumer: Consumer) -> None:
        leg = self.transports.get(consumer.transport_id)
        if leg is not None:
            leg.control.planned = False

    def _on_layers_changed(self, consumer: Consumer) -> None:
        self._emit(
            ConsumerLayersChanged(
                self.id, consumer.id, consumer.current_spatial, consumer.current_temporal
            )
        )

    # ---- RTCP reports ------------------------------------------------------------------

    async def _rtcp_loop(self) -> None:
        while True:
            await trio.sleep(self._rtcp_interval)
            await self._in_slices(self._send_reports_to)

    async def _in_slices(self, tick: Callable[[TransportLeg, float], None]) -> None:
        """Run ``tick`` for every transport, ``TICK_SLICE`` at a time with a checkpoint in
        between: a periodic pass over hundreds of transports in one go would hold the
        packets arriving meanwhile for milliseconds."""
        legs = list(self.transports.items())
        for start in range(0, len(legs), TICK_SLICE):
            if start:
                await trio.lowlevel.checkpoint()
            now = trio.current_time()
            for transport_id, leg in legs[start : start + TICK_SLICE]:
                if self.transports.get(transport_id) is leg:  # not closed meanwhile
                    tick(leg, now)

    def _send_reports_to(self, leg: TransportLeg, now: float) -> None:
        """Receiver Reports (and REMB) toward the transport's publisher, Sender Reports
        for its consumers (see :meth:`TransportControl.reports`)."""
        for packet in leg.control.reports(now, leg.ntp_now(now)):
            leg.transport.send_rtcp_nowait(packet)

    # ---- feedback, bandwidth, speakers -------------------------------------------------

    async def _feedback_loop(self) -> None:
        while True:
            await trio.sleep(self._feedback_interval)
            await self._in_slices(self._feedback_to)
            self._speaker_tick(trio.current_time())

    def _speaker_tick(self, now: float) -> None:
        if now - self._speaker_at >= SPEAKER_INTERVAL:
            self._speaker_at = now
            change = self.speakers.tick(now)
            if change is not None:
                self._emit(ActiveSpeaker(self.id, change[0], change[1]))

    def _feedback_to(self, leg: TransportLeg, now: float) -> None:
        """NACKs and transport-cc feedback to a publisher; rates; bandwidth plan; a probe
        when the control wants one (see :meth:`TransportControl.feedback`)."""
        packets, probe_rate, recovery_rate = leg.control.feedback(now)
        for packet in packets:
            leg.transport.send_rtcp_nowait(packet)
        if probe_rate is not None:
            self._nursery_or_fail().start_soon(self._probe, leg, probe_rate)
        if recovery_rate is not None:
            self._nursery_or_fail().start_soon(self._probe, leg, recovery_rate, True)

    async def _probe(self, leg: TransportLeg, rate: float, recovery: bool = False) -> None:
        """One probe cluster at ``rate``: a burst of packets every 10 ms, for as long as
        the control asks for them: RTX copies to find more bandwidth
        (:meth:`TransportControl.probe_burst`), or with ``recovery`` padding for video the
        loss policy paused (:meth:`TransportControl.recovery_burst`)."""
        control = leg.control
        transport = leg.transport
        if recovery:
            begin, burst, end = (
                control.start_recovery_probe,
                control.recovery_burst,
                control.end_recovery_probe,
            )
        else:
            begin, burst, end = control.start_probe, control.probe_burst, control.end_probe
        start = trio.current_time()
        begin(start)
        try:
            now = start
            while not transport.closed:
                packets = burst(rate, start, now)
                if packets is None:
                    break
                for packet in packets:
                    transport.send_rtp_nowait(packet)
                await trio.sleep(0.01)
                now = trio.current_time()
        finally:
            end(trio.current_time())

    # ---- the weak-network policy -------------------------------------------------------

    async def _policy_loop(self) -> None:
        while True:
            await trio.sleep(self.policy.interval)
            await self._in_slices(self._policy_for)

    def _policy_for(self, leg: TransportLeg, now: float) -> None:
        """Once per policy interval: the loss policy of the transport's video consumers;
        network quality goes out when it changed (see :meth:`TransportControl.policy`)."""
        change = leg.control.policy(now)
        if change is not None:
            loss, rtt, quality = change
            self._emit(
                NetworkQuality(
                    self.id,
                    leg.transport.id,
                    round(loss, 4),
                    round((rtt or 0.0) * 1000, 1),
                    quality,
                )
            )

    # ---- introspection -----------------------------------------------------------------

    def get_stats(self, entity_id: str) -> list[dict[str, Any]]:
        if entity_id in self.transports:
            leg = self.transports[entity_id]
            estimate = leg.control.estimator.estimate(trio.current_time())
            return [
                {
                    "type": "transport",
                    **leg.transport.stats(),
                    "availableOutgoingBitrate": estimate,
                    "networkQuality": leg.control.quality,
                }
            ]
        if entity_id in self.producers:
            producer = self.producers[entity_id]
            return [
                {
                    "type": "inbound-rtp",
                    "kind": producer.kind,
                    "ssrc": s.ssrc,
                    "rid": s.rid,
                    "packetCount": s.packets,
                    "packetsLost": s.stats.cumulative_lost,
                    "packetsRetransmitted": s.retransmitted,
                    "keyframeRequests": s.keyframe_requests,
                    "fractionLost": s.stats.fraction_lost / 256,
                    "jitter": s.stats.jitter / s.clock_rate,
                    "bitrate": s.bitrate,
                }
                for s in producer.streams
            ]
        if entity_id in self.consumers:
            return [self.consumers[entity_id].stats()]
        raise NotFoundError(f"{entity_id!r} is not a transport, producer or consumer here")

    def dump(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "closed": self.closed,
            "transportIds": sorted(self.transports),
            "producerIds": sorted(self.producers),
            "consumerIds": sorted(self.consumers),
            "transports": [_dump_transport(tid, e) for tid, e in self.transports.items()],
        }


def _dump_transport(transport_id: str, leg: TransportLeg) -> dict[str, Any]:
    transport = leg.transport
    out: dict[str, Any] = {
        "id": transport_id,
        "producerIds": sorted(leg.producers),
        "consumerIds": sorted(leg.consumers),
    }
    if isinstance(transport, PlainTransport):
        out["type"] = transport.kind
        out["tuple"] = {
            "localIp": transport.ip,
            "localPort": transport.port,
            "remote": list(transport.remote_address) if transport.remote_address else None,
        }
        if transport.kind == "plain":
            rtcp = transport.rtcp_remote_address
            out["rtcpMux"] = transport.rtcp_mux
            out["comedia"] = transport.comedia
            out["rtcpTuple"] = {
                "localIp": transport.ip,
                "localPort": transport.rtcp_port,
                "remote": list(rtcp) if rtcp else None,
            }
            out["srtpCryptoSuite"] = transport.srtp_crypto_suite
    else:
        out["iceState"] = transport.ice_state
        out["dtlsState"] = transport.dtls_state
    return out


def plain_transport_info(transport: PlainTransport) -> PlainTransportInfo:
    return PlainTransportInfo(
        transport_id=transport.id,
        tuple=transport.tuple,
        rtcp_mux=transport.rtcp_mux,
        comedia=transport.comedia,
        rtcp_tuple=transport.rtcp_tuple,
        srtp_parameters=transport.srtp_parameters,
    )
