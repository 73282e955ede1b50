"""Router: the media plane of one meeting.

A router is a Trio nursery (its :meth:`Router.run` task) that owns the meeting's
WebRtcTransports, their Producers and Consumers, and one RTCP task. The maps from id to
object live here, never in a global. ``close()`` is synchronous and idempotent: it closes
every transport (their sockets at once), producers and consumers, then cancels the nursery.

The packet path runs in the transports' receive loops:
``send transport -> on_rtp -> RtpListener (by SSRC, else MID/RID) -> Producer ->
Consumer -> receiving transport's egress channel``.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any, final

import trio

from trio_sfu.dtls import DtlsCertificate
from trio_sfu.engine.api import (
    ConsumerClosed,
    ConsumerInfo,
    ConsumerProducerPaused,
    EventCallback,
    TransportClosed,
    TransportInfo,
)
from trio_sfu.engine.consumer import Consumer
from trio_sfu.engine.producer import ROUTER_RTCP_SSRC, Producer, ProducerStream
from trio_sfu.engine.webrtc_transport import WebRtcTransport
from trio_sfu.errors import BadPacket, InvalidStateError, NotFoundError, UnsupportedError
from trio_sfu.ortc import negotiation
from trio_sfu.ortc.types import (
    DtlsParameters,
    IceParameters,
    MediaKind,
    RtpCapabilities,
    RtpParameters,
)
from trio_sfu.rtcp import (
    Fir,
    GenericNack,
    Pli,
    ReceiverReport,
    Sdes,
    SdesChunk,
    SenderReport,
    build_rtcp,
    ntp_to_compact,
    parse_rtcp_untrusted,
    unix_to_ntp,
)
from trio_sfu.rtp.extensions import MID_URI, REPAIRED_RID_URI, RID_URI
from trio_sfu.rtp.packet import find_extension_untrusted, rtp_ssrc
from trio_sfu.rtp.stats import round_trip_time

logger = logging.getLogger(__name__)

#: How often Sender and Receiver Reports go out (RFC 3550 suggests 5 s; WebRTC uses ~1 s).
RTCP_INTERVAL = 1.0
#: SSRC the router uses as sender of RRs and feedback toward publishers.


def new_id() -> str:
    return secrets.token_hex(8)


@final
class RtpListener:
    """Finds the producer stream of an incoming packet on one send transport."""

    __slots__ = ("producers", "ssrc_table")

    def __init__(self) -> None:
        #: ssrc -> (producer, stream, is_rtx)
        self.ssrc_table: dict[int, tuple[Producer, ProducerStream, bool]] = {}
        self.producers: list[Producer] = []

    def add(self, producer: Producer) -> None:
        for stream in producer.streams:
            if stream.ssrc is not None:
                self._claim(stream.ssrc, producer, stream, False)
            if stream.rtx_ssrc is not None:
                self._claim(stream.rtx_ssrc, producer, stream, True)
        self.producers.append(producer)

    def remove(self, producer: Producer) -> None:
        self.producers.remove(producer)
        for ssrc in [s for s, entry in self.ssrc_table.items() if entry[0] is producer]:
            del self.ssrc_table[ssrc]

    def ssrc_in_use(self, ssrc: int) -> bool:
        return ssrc in self.ssrc_table

    def _claim(self, ssrc: int, producer: Producer, stream: ProducerStream, rtx: bool) -> None:
        self.ssrc_table[ssrc] = (producer, stream, rtx)

    def learn_untrusted(
        self, packet: bytes, ssrc: int
    ) -> tuple[Producer, ProducerStream, bool] | None:
        """An unknown SSRC: match it by the MID and RID / repaired-RID header extensions."""
        for producer in self.producers:
            ids = producer.extension_ids
            mid_id = ids.get(MID_URI)
            if producer.rtp_parameters.mid is not None and mid_id is not None:
                mid = find_extension_untrusted(packet, mid_id)
                if mid is None or mid.decode("ascii", "replace") != producer.rtp_parameters.mid:
                    continue
            elif len(self.producers) > 1:
                continue
            rid_id = ids.get(RID_URI)
            rrid_id = ids.get(REPAIRED_RID_URI)
            rid = find_extension_untrusted(packet, rid_id) if rid_id is not None else None
            if rid is not None:
                stream = producer.streams_by_rid.get(rid.decode("ascii", "replace"))
                if stream is None or stream.ssrc is not None:
                    return None
                stream.ssrc = ssrc
                self._claim(ssrc, producer, stream, False)
                return producer, stream, False
            rrid = find_extension_untrusted(packet, rrid_id) if rrid_id is not None else None
            if rrid is not None:
                stream = producer.streams_by_rid.get(rrid.decode("ascii", "replace"))
                if stream is None or stream.rtx_ssrc is not None:
                    return None
                stream.rtx_ssrc = ssrc
                self._claim(ssrc, producer, stream, True)
                return producer, stream, True
            if not producer.is_simulcast and producer.streams[0].rid is None:
                stream = producer.streams[0]
                is_rtx = (packet[1] & 0x7F) in producer.rtx_payload_types
                if is_rtx and stream.rtx_ssrc is None:
                    stream.rtx_ssrc = ssrc
                elif not is_rtx and stream.ssrc is None:
                    stream.ssrc = ssrc
                else:
                    return None
                self._claim(ssrc, producer, stream, is_rtx)
                return producer, stream, is_rtx
        return None


@final
class _TransportEntry:
    __slots__ = (
        "cname",
        "consumers",
        "consumers_by_ssrc",
        "listener",
        "next_mid",
        "producers",
        "transport",
    )

    def __init__(self, transport: WebRtcTransport) -> None:
        self.transport = transport
        self.listener = RtpListener()
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        self.consumers_by_ssrc: dict[int, Consumer] = {}
        self.cname: str | None = None
        self.next_mid = 0


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
    ) -> None:
        self.id = router_id
        self.rtp_capabilities = rtp_capabilities
        self.closed = False
        self._certificate = certificate
        self._on_event = on_event
        self._transport_options = transport_options
        self._rtcp_interval = rtcp_interval
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self.transports: dict[str, _TransportEntry] = {}
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
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

    def ntp_now(self, now: float) -> int:
        return unix_to_ntp(now + self._epoch_offset)

    # ---- transports --------------------------------------------------------------------

    async def create_webrtc_transport(
        self, *, force_tcp: bool = False, app_data: dict[str, Any] | None = None
    ) -> TransportInfo:
        nursery = self._nursery_or_fail()
        options = dict(self._transport_options)
        if force_tcp:
            options["enable_udp"] = False
            options["enable_tcp"] = True
        transport = WebRtcTransport(
            transport_id=new_id(), certificate=self._certificate, app_data=app_data, **options
        )
        entry = _TransportEntry(transport)
        transport.on_rtp = lambda packet: self._on_rtp(entry, packet)
        transport.on_rtcp = lambda packet: self._on_rtcp(entry, packet)
        transport.on_closed = lambda reason: self._on_transport_closed(transport.id, reason)
        await nursery.start(transport.run)
        if transport.closed:
            raise InvalidStateError(f"transport {transport.id} closed while starting")
        self.transports[transport.id] = entry
        return TransportInfo(
            transport_id=transport.id,
            ice_parameters=transport.ice_parameters,
            ice_candidates=list(transport.ice_candidates),
            dtls_parameters=transport.dtls_parameters,
        )

    def _entry(self, transport_id: str) -> _TransportEntry:
        entry = self.transports.get(transport_id)
        if entry is None:
            raise NotFoundError(f"transport {transport_id!r} not found")
        return entry

    def connect_transport(self, transport_id: str, dtls_parameters: DtlsParameters) -> None:
        self._entry(transport_id).transport.connect(dtls_parameters)

    def restart_ice(self, transport_id: str) -> IceParameters:
        return self._entry(transport_id).transport.restart_ice()

    def close_transport(self, transport_id: str) -> None:
        if transport_id in self.transports:
            self._close_transport(transport_id, "closed", notify=False)

    def _on_transport_closed(self, transport_id: str, reason: str) -> None:
        if transport_id in self.transports:
            self._close_transport(transport_id, reason, notify=True)

    def _close_transport(self, transport_id: str, reason: str, *, notify: bool) -> None:
        entry = self.transports.pop(transport_id)
        for producer in list(entry.producers.values()):
            self._close_producer(producer)
        for consumer in list(entry.consumers.values()):
            self._close_consumer(consumer, "transport_closed")
        entry.transport.close(reason)
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
        entry = self._entry(transport_id)
        mapping = negotiation.get_producer_rtp_mapping(
            rtp_parameters, self.rtp_capabilities, kind=kind
        )
        for encoding in rtp_parameters.encodings:
            for ssrc in (encoding.ssrc, encoding.rtx.ssrc if encoding.rtx else None):
                if ssrc is not None and entry.listener.ssrc_in_use(ssrc):
                    raise UnsupportedError(
                        f"rtpParameters.encodings: ssrc {ssrc} is already in use on this transport"
                    )
        mid = rtp_parameters.mid
        if mid is not None and any(p.rtp_parameters.mid == mid for p in entry.producers.values()):
            raise UnsupportedError(f"rtpParameters.mid: mid {mid!r} is already in use")
        entry.cname = negotiation.pick_transport_cname(entry.cname, rtp_parameters)
        rtp_parameters = negotiation.fill_cname(rtp_parameters, entry.cname)
        consumable = negotiation.get_consumable_rtp_parameters(
            kind, rtp_parameters, self.rtp_capabilities, mapping
        )
        transport = entry.transport
        producer = Producer(
            producer_id=new_id(),
            transport_id=transport_id,
            kind=kind,
            rtp_parameters=rtp_parameters,
            consumable_rtp_parameters=consumable,
            mapping=mapping,
            paused=paused,
            send_rtcp=transport.send_rtcp_nowait,
        )
        entry.producers[producer.id] = producer
        entry.listener.add(producer)
        self.producers[producer.id] = producer
        return producer.id

    def _producer(self, producer_id: str) -> Producer:
        producer = self.producers.get(producer_id)
        if producer is None:
            raise NotFoundError(f"producer {producer_id!r} not found")
        return producer

    def close_producer(self, producer_id: str) -> None:
        producer = self.producers.get(producer_id)
        if producer is not None:
            self._close_producer(producer)

    def _close_producer(self, producer: Producer) -> None:
        if producer.closed:
            return
        producer.closed = True
        for consumer in list(producer.consumers):
            self._close_consumer(consumer, "producer_closed")
        self.producers.pop(producer.id, None)
        entry = self.transports.get(producer.transport_id)
        if entry is not None:
            entry.producers.pop(producer.id, None)
            entry.listener.remove(producer)

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
        entry = self._entry(transport_id)
        producer = self._producer(producer_id)
        if not negotiation.can_consume(producer.consumable_rtp_parameters, rtp_capabilities):
            raise UnsupportedError(
                f"rtpCapabilities: no codec in common with producer {producer_id!r}"
            )
        mid = str(entry.next_mid)
        entry.next_mid += 1
        rtp_parameters = negotiation.get_consumer_rtp_parameters(
            producer.consumable_rtp_parameters, rtp_capabilities, mid=mid
        )
        now = trio.current_time()
        consumer = Consumer(
            consumer_id=new_id(),
            producer=producer,
            transport_id=transport_id,
            rtp_parameters=rtp_parameters,
            paused=paused,
            send_rtp=entry.transport.send_rtp_nowait,
            now=now,
        )
        producer.consumers.add(consumer)
        entry.consumers[consumer.id] = consumer
        entry.consumers_by_ssrc[consumer.ssrc] = consumer
        self.consumers[consumer.id] = consumer
        if not paused:
            consumer._request_sync(now)
        return ConsumerInfo(
            consumer_id=consumer.id,
            producer_id=producer.id,
            kind=producer.kind,
            rtp_parameters=rtp_parameters,
            type=consumer.type,
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
            self._close_consumer(consumer, None)

    def _close_consumer(self, consumer: Consumer, reason: str | None) -> None:
        if consumer.closed:
            return
        consumer.closed = True
        consumer.producer.consumers.discard(consumer)
        self.consumers.pop(consumer.id, None)
        entry = self.transports.get(consumer.transport_id)
        if entry is not None:
            entry.consumers.pop(consumer.id, None)
            entry.consumers_by_ssrc.pop(consumer.ssrc, None)
        if reason is not None and not self.closed:
            self._on_event(ConsumerClosed(self.id, consumer.id, consumer.producer_id, reason))

    def pause_consumer(self, consumer_id: str) -> None:
        self._consumer(consumer_id).pause()

    def resume_consumer(self, consumer_id: str) -> None:
        self._consumer(consumer_id).resume(trio.current_time())

    def set_consumer_preferred_layers(
        self, consumer_id: str, spatial_layer: int, temporal_layer: int | None
    ) -> tuple[int, int]:
        consumer = self._consumer(consumer_id)
        return consumer.set_preferred_layers(spatial_layer, temporal_layer, trio.current_time())

    # ---- the packet path ---------------------------------------------------------------

    def _on_rtp(self, entry: _TransportEntry, packet: bytes) -> None:
        if len(packet) < 12:
            return
        ssrc = rtp_ssrc(packet)
        found = entry.listener.ssrc_table.get(ssrc)
        if found is None:
            try:
                found = entry.listener.learn_untrusted(packet, ssrc)
            except BadPacket:
                return
            if found is None:
                return
        producer, stream, is_rtx = found
        if is_rtx:
            return  # retransmissions from publishers are not requested yet
        producer.receive_rtp(stream, packet, trio.current_time())

    def _on_rtcp(self, entry: _TransportEntry, data: bytes) -> None:
        try:
            packets = parse_rtcp_untrusted(data)
        except BadPacket:
            return
        now = trio.current_time()
        for packet in packets:
            if isinstance(packet, (SenderReport, ReceiverReport)):
                if isinstance(packet, SenderReport):
                    self._on_sender_report(entry, packet, now)
                for block in packet.reports:
                    consumer = entry.consumers_by_ssrc.get(block.ssrc)
                    if consumer is not None:
                        rtt = round_trip_time(
                            block.lsr, block.dlsr, ntp_to_compact(self.ntp_now(now))
                        )
                        consumer.receive_report(block.fraction_lost, block.cumulative_lost, rtt)
            elif isinstance(packet, GenericNack):
                consumer = entry.consumers_by_ssrc.get(packet.media_ssrc)
                if consumer is not None:
                    consumer.retransmit(packet.lost_seqs(), now)
            elif isinstance(packet, Pli):
                consumer = entry.consumers_by_ssrc.get(packet.media_ssrc)
                if consumer is not None:
                    consumer.request_keyframe(now)
            elif isinstance(packet, Fir):
                for ssrc, _seq in packet.entries:
                    consumer = entry.consumers_by_ssrc.get(ssrc)
                    if consumer is not None:
                        consumer.request_keyframe(now)

    def _on_sender_report(self, entry: _TransportEntry, report: SenderReport, now: float) -> None:
        found = entry.listener.ssrc_table.get(report.ssrc)
        if found is not None and not found[2]:
            producer, stream, _ = found
            producer.receive_sender_report(stream, report.ntp_timestamp, report.rtp_timestamp, now)

    # ---- RTCP reports ------------------------------------------------------------------

    async def _rtcp_loop(self) -> None:
        while True:
            await trio.sleep(self._rtcp_interval)
            self.send_reports(trio.current_time())

    def send_reports(self, now: float) -> None:
        """Receiver Reports for every producer stream, Sender Reports for every consumer."""
        ntp = self.ntp_now(now)
        for entry in list(self.transports.values()):
            blocks = []
            for producer in entry.producers.values():
                for stream in producer.streams:
                    if stream.ssrc is None or stream.packets == 0:
                        continue
                    blocks.append(
                        stream.stats.make_report_block(
                            stream.ssrc,
                            now,
                            ntp_to_compact(stream.last_sr_ntp) if stream.last_sr_ntp else 0,
                            stream.last_sr_arrival if stream.last_sr_ntp else None,
                        )
                    )
            packets: list[Any] = []
            for start in range(0, len(blocks), 31):
                packets.append(ReceiverReport(ROUTER_RTCP_SSRC, tuple(blocks[start : start + 31])))
            chunks = []
            for consumer in entry.consumers.values():
                if consumer.packets_sent == 0:
                    continue
                packets.append(
                    SenderReport(
                        ssrc=consumer.ssrc,
                        ntp_timestamp=ntp,
                        rtp_timestamp=consumer.sender_report_timestamp(now),
                        packet_count=consumer.packets_sent & 0xFFFFFFFF,
                        octet_count=consumer.octets_sent & 0xFFFFFFFF,
                    )
                )
                chunks.append(SdesChunk.with_cname(consumer.ssrc, consumer.cname))
            if chunks:
                packets.append(Sdes(tuple(chunks)))
            if packets:
                # Keep each compound under a typical MTU: SRs are 28 bytes, blocks 24.
                for start in range(0, len(packets), 16):
                    entry.transport.send_rtcp_nowait(build_rtcp(packets[start : start + 16]))
            for consumer in entry.consumers.values():
                consumer.update_target(now)

    # ---- introspection -----------------------------------------------------------------

    def get_stats(self, entity_id: str) -> list[dict[str, Any]]:
        if entity_id in self.transports:
            return [{"type": "transport", **self.transports[entity_id].transport.stats()}]
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
                    "fractionLost": s.stats.fraction_lost / 256,
                    "jitter": s.stats.jitter / s.clock_rate,
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
            "transports": [
                {
                    "id": tid,
                    "producerIds": sorted(e.producers),
                    "consumerIds": sorted(e.consumers),
                    "iceState": e.transport.ice_state,
                    "dtlsState": e.transport.dtls_state,
                }
                for tid, e in self.transports.items()
            ],
        }
