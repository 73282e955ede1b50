"""TransportLeg: one transport of a router, and what the router does with its packets.

A router keeps one leg per transport (``Router.transports``, by transport id). The leg
holds the transport's producers and consumers (consumers also by SSRC, for RTCP from
the subscriber), its :class:`~trio_sfu.engine.rtp_listener.RtpListener`, and its
:class:`~trio_sfu.engine.control.TransportControl` (bandwidth, reports, the loss policy).

A leg attaches to its transport when it is made: the transport's ``on_rtp`` and
``on_rtcp`` are the leg's :meth:`TransportLeg.on_rtp` and :meth:`TransportLeg.on_rtcp`,
called synchronously from the transport's receive path, and its ``on_closed`` reaches
the router through the leg.

The packet path through here (one RTP packet, in the receive task of its socket)::

    transport.handle_datagram -> TransportLeg.on_rtp -> RtpListener (by SSRC, else
    MID/RID) -> Producer.receive_rtp -> Consumer.send_rtp (each) -> the receiving
    transport's send_rtp_nowait (its egress channel)

RTCP from the other end (:meth:`TransportLeg.on_rtcp`): Sender Reports go to the
producer of their stream; report blocks, NACK, PLI and FIR to the consumer of the SSRC
they name; transport-cc feedback and REMB to the control.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import final

import trio

from trio_sfu.engine.bandwidth import TwccRecorder
from trio_sfu.engine.consumer import Consumer
from trio_sfu.engine.control import TransportControl
from trio_sfu.engine.layers import PolicySettings
from trio_sfu.engine.pipe_consumer import PipeConsumer
from trio_sfu.engine.plain_transport import PlainTransport
from trio_sfu.engine.producer import Producer
from trio_sfu.engine.rtp_listener import RtpListener
from trio_sfu.engine.webrtc_transport import WebRtcTransport
from trio_sfu.errors import BadPacket
from trio_sfu.rtcp import (
    Bye,
    Fir,
    GenericNack,
    Pli,
    ReceiverReport,
    Remb,
    SenderReport,
    TransportCcFeedback,
    build_rtcp,
    ntp_to_compact,
    parse_rtcp_untrusted,
    unix_to_ntp,
)
from trio_sfu.rtp.packet import find_extension_untrusted, rtp_ssrc
from trio_sfu.rtp.stats import round_trip_time

#: What a leg holds: the kinds share what the router uses (``on_rtp``, ``on_rtcp``,
#: ``on_closed``, ``send_rtp_nowait``, ``send_rtcp_nowait``, ``stats()``, ``close()``,
#: ``id``, ``closed``).
AnyTransport = WebRtcTransport | PlainTransport  # PipeTransport is a PlainTransport


@final
class TransportLeg:
    """A transport and what the router keeps about it: its producers and consumers, the
    uplink's transport-cc arrivals, the control of both directions."""

    __slots__ = (
        "_epoch_offset",
        "_on_closed",
        "cname",
        "consumers",
        "consumers_by_ssrc",
        "control",
        "listener",
        "next_mid",
        "producers",
        "transport",
        "twcc_id",
        "twcc_recorder",
    )

    def __init__(
        self,
        transport: AnyTransport,
        ssrc_owners: dict[int, Producer],
        *,
        policy: PolicySettings,
        epoch_offset: float,
        on_streams_changed: Callable[[Producer, float], None],
        on_closed: Callable[[str, str], None],
    ) -> None:
        self.transport = transport
        self.listener = RtpListener(ssrc_owners)
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        self.consumers_by_ssrc: dict[int, Consumer] = {}
        self.cname: str | None = None
        self.next_mid = 0
        self.control = TransportControl(self.producers, self.consumers, policy, on_streams_changed)
        # Uplink (what the router receives): transport-cc toward the publisher.
        self.twcc_id: int | None = None
        self.twcc_recorder: TwccRecorder | None = None
        #: Trio's clock to the wall clock, for the NTP times of RTCP (the router's).
        self._epoch_offset = epoch_offset
        #: The router's: ``on_closed(transport_id, reason)`` when the transport closed.
        self._on_closed = on_closed
        transport.on_rtp = self.on_rtp
        transport.on_rtcp = self.on_rtcp
        transport.on_closed = self._transport_closed

    def _transport_closed(self, reason: str) -> None:
        self._on_closed(self.transport.id, reason)

    def ntp_now(self, now: float) -> int:
        return unix_to_ntp(now + self._epoch_offset)

    # ---- producers and consumers ---------------------------------------------------------

    def add_producer(self, producer: Producer) -> None:
        self.producers[producer.id] = producer
        self.listener.add(producer)
        if producer.transport_cc_id is not None and self.twcc_id is None:
            self.twcc_id = producer.transport_cc_id
            self.twcc_recorder = self.control.twcc_recorder = TwccRecorder()

    def remove_producer(self, producer: Producer) -> None:
        self.producers.pop(producer.id, None)
        self.listener.remove(producer)

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers[consumer.id] = consumer
        if isinstance(consumer, PipeConsumer):
            for ssrc in consumer.stream_ssrcs:
                self.consumers_by_ssrc[ssrc] = consumer
        else:
            self.consumers_by_ssrc[consumer.ssrc] = consumer

    def remove_consumer(self, consumer: Consumer, reason: str) -> None:
        self.consumers.pop(consumer.id, None)
        self.consumers_by_ssrc.pop(consumer.ssrc, None)
        if isinstance(consumer, PipeConsumer):
            for ssrc in consumer.stream_ssrcs:
                self.consumers_by_ssrc.pop(ssrc, None)
        self.control.remove_consumer(consumer)
        if reason == "producer_closed" and type(self.transport) is PlainTransport:
            # Its source left: say so (RFC 3550 BYE) to a plain receiver, which
            # would otherwise wait for more (ffmpeg ends its input on the BYE of
            # every stream at once, instead of after its read timeout).
            ssrcs = (consumer.ssrc,) + ((consumer.rtx_ssrc,) if consumer.rtx_ssrc else ())
            self.transport.send_rtcp_nowait(build_rtcp((ReceiverReport(consumer.ssrc), Bye(ssrcs))))

    # ---- the packet path ---------------------------------------------------------------

    def on_rtp(self, packet: bytes, arrival: float) -> None:
        """One RTP packet from the transport (decrypted): to the producer of its stream.
        ``arrival``: when its datagram reached the host (transport-cc feedback and the
        jitter report it); ``now``: when it is forwarded."""
        if len(packet) < 12:
            return
        now = trio.current_time()
        recorder = self.twcc_recorder
        if recorder is not None and self.twcc_id is not None:
            try:
                value = find_extension_untrusted(packet, self.twcc_id)
            except BadPacket:
                return
            if value is not None and len(value) == 2:
                recorder.record((value[0] << 8) | value[1], arrival)
        ssrc = rtp_ssrc(packet)
        found = self.listener.ssrc_table.get(ssrc)
        if found is None:
            try:
                found = self.listener.learn_untrusted(packet, ssrc)
            except BadPacket:
                return
            if found is None:
                return
        producer, stream, is_rtx = found
        if is_rtx:
            producer.receive_rtx(stream, packet, now)
        else:
            producer.receive_rtp(stream, packet, now, arrival=arrival)

    def on_rtcp(self, data: bytes, arrival: float) -> None:
        """One RTCP compound packet from the transport (decrypted): reports are timed by
        their ``arrival`` (round-trip times, the delay since the last SR), what they make
        the router do by ``now``."""
        try:
            packets = parse_rtcp_untrusted(data)
        except BadPacket:
            return
        now = trio.current_time()
        for packet in packets:
            if isinstance(packet, (SenderReport, ReceiverReport)):
                if isinstance(packet, SenderReport):
                    self._on_sender_report(packet, arrival)
                for block in packet.reports:
                    consumer = self.consumers_by_ssrc.get(block.ssrc)
                    if consumer is not None:
                        rtt = round_trip_time(
                            block.lsr, block.dlsr, ntp_to_compact(self.ntp_now(arrival))
                        )
                        consumer.receive_report(
                            block.fraction_lost, block.cumulative_lost, rtt, block.highest_seq
                        )
            elif isinstance(packet, TransportCcFeedback):
                self.control.on_feedback(packet, now)
            elif isinstance(packet, Remb):
                self.control.on_remb(packet.bitrate, now)
            elif isinstance(packet, GenericNack):
                consumer = self.consumers_by_ssrc.get(packet.media_ssrc)
                if consumer is not None:
                    consumer.retransmit(packet.lost_seqs(), now)
            elif isinstance(packet, Pli):
                consumer = self.consumers_by_ssrc.get(packet.media_ssrc)
                if consumer is not None:
                    consumer.request_keyframe(now, packet.media_ssrc)
            elif isinstance(packet, Fir):
                for ssrc, _seq in packet.entries:
                    consumer = self.consumers_by_ssrc.get(ssrc)
                    if consumer is not None:
                        consumer.request_keyframe(now, ssrc)

    def _on_sender_report(self, report: SenderReport, arrival: float) -> None:
        found = self.listener.ssrc_table.get(report.ssrc)
        if found is not None and not found[2]:
            producer, stream, _ = found
            producer.receive_sender_report(
                stream, report.ntp_timestamp, report.rtp_timestamp, arrival
            )
