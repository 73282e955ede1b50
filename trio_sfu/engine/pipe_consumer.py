"""PipeConsumer: a consumer that feeds a pipe transport (mediasoup's PipeConsumer).

Every stream of the producer goes to another router as it is; see :class:`PipeConsumer`.
The rest of a consumer's machinery (sequence numbers, Sender Report counts, the shared
header template, pause and close) is :class:`~trio_sfu.engine.consumer.Consumer`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, final

from trio_sfu.engine.consumer import Consumer
from trio_sfu.engine.producer import Producer, ProducerStream
from trio_sfu.ortc.types import RtpParameters
from trio_sfu.rtcp import SenderReport
from trio_sfu.rtp import vp8
from trio_sfu.rtp.egress import write_header

_TS_MASK: Final = 0xFFFFFFFF


@final
class PipeConsumer(Consumer):
    """A consumer that feeds a pipe transport: every stream of the producer, as it is.

    mediasoup's PipeConsumer. The other router's pipe producer (same producer id) is made
    from :attr:`rtp_parameters` (``negotiation.get_pipe_consumer_rtp_parameters``): every
    simulcast stream is an encoding with its consumable SSRC, and every packet of every
    stream goes out, with the router's payload type and header extension ids (the
    consumer's shared :class:`~trio_sfu.rtp.egress.HeaderTemplate`), under its stream's
    SSRC. No layer selection, no temporal filtering, no VP8 rewrite: the other router's
    consumers do that. Timestamps pass unchanged (so the Sender Reports of the publisher
    keep describing them); sequence numbers keep their own stream's numbering and are
    spliced only after a pause, so that each stream goes on without a gap.

    PLI/FIR from the other router name a stream by SSRC and go to the producer for that
    stream (:meth:`request_keyframe`). Each stream gets a Sender Report
    (:meth:`sender_reports`) once its publisher sent one. No NACK / RTX: the pipe runs on
    a loopback or a LAN.
    """

    __slots__ = (
        "_next_seqs",
        "_resync",
        "_seq_offsets",
        "_stream_of_ssrc",
        "stream_octets",
        "stream_packets",
        "stream_ssrcs",
    )

    def __init__(
        self,
        *,
        consumer_id: str,
        producer: Producer,
        transport_id: str,
        rtp_parameters: RtpParameters,
        send_rtp: Callable[[bytes | bytearray], bool],
        now: float,
        on_closed: Callable[[Consumer, str], None] | None = None,
    ) -> None:
        super().__init__(
            consumer_id=consumer_id,
            producer=producer,
            transport_id=transport_id,
            rtp_parameters=rtp_parameters,
            paused=False,
            send_rtp=send_rtp,
            now=now,
            on_closed=on_closed,
        )
        count = len(producer.streams)
        ssrcs = tuple(e.ssrc for e in rtp_parameters.encodings if e.ssrc is not None)
        if len(ssrcs) != count:
            raise ValueError("a pipe consumer needs one encoding with an SSRC per stream")
        #: Our SSRC of each producer stream (by stream index).
        self.stream_ssrcs = ssrcs
        self._stream_of_ssrc = {ssrc: index for index, ssrc in enumerate(ssrcs)}
        #: Per stream: what is added to the incoming sequence number, the next one out
        #: (None: nothing sent yet), and whether the offset is chosen again at the next
        #: packet (after a pause).
        self._seq_offsets = [0] * count
        self._next_seqs: list[int | None] = [None] * count
        self._resync = [True] * count
        self.stream_packets = [0] * count
        self.stream_octets = [0] * count
        # Every codec of the producer, not only the first one.
        self._payload_types = producer.payload_types
        self.spatial_layers = count
        self.preferred_spatial_layer = count - 1
        self.temporal_filtering = False
        self.send_rtp = self._send_pipe

    def _send_pipe(
        self,
        stream: ProducerStream,
        packet: bytes,
        seq: int,
        ts: int,
        payload_start: int,
        info: vp8.Vp8Info | None,
        keyframe: bool,
        now: float,
    ) -> None:
        if not self._forwarding:
            return
        index = stream.index
        if self._resync[index]:
            self._resync[index] = False
            following = self._next_seqs[index]
            self._seq_offsets[index] = 0 if following is None else (following - seq) & 0xFFFF
        payload_type = self._payload_types.get(packet[1] & 0x7F)
        if payload_type is None:
            return
        built = self._template.build(packet)
        if built is None:
            return
        out_seq = (seq + self._seq_offsets[index]) & 0xFFFF
        out = built[0][:]
        write_header(out, payload_type, out_seq, ts, self.stream_ssrcs[index])
        following = self._next_seqs[index]
        if following is None or (out_seq - following) & 0xFFFF < 0x8000:
            self._next_seqs[index] = (out_seq + 1) & 0xFFFF
        size = len(out) - 12
        self.packets_sent += 1
        self.octets_sent += size
        self.stream_packets[index] += 1
        self.stream_octets[index] += size
        self.last_sent_at = now
        self._send(out)

    # ---- what differs from a consumer of one stream ------------------------------------

    def _request_sync(self, now: float) -> None:
        # Resumed: each stream's numbering goes on from where it stopped.
        self._resync = [True] * len(self._resync)

    def update_layers(self, now: float) -> None:
        self._update_forwarding()  # no target: every stream goes

    def layer_options_cap(self) -> tuple[int, int] | None:
        """Every layer (the other router's consumers choose), unless paused."""
        if not self._forwarding:
            return None
        return self.spatial_layers - 1, self.temporal_layers - 1

    def set_preferred_layers(
        self, spatial: int, temporal: int | None, now: float
    ) -> tuple[int, int]:
        """Ignored: a pipe consumer forwards every layer."""
        return self.spatial_layers - 1, self.temporal_layers - 1

    def request_keyframe(self, now: float, ssrc: int | None = None) -> None:
        """PLI/FIR from the other router for stream ``ssrc`` (None: every stream).

        The other router's producer throttled its requests already (1 s, or 300 ms while
        one of its consumers waits to switch): passed on under the shorter bound, so that
        a switch there waits no longer than one here."""
        if ssrc is None:
            for stream_index in range(len(self.stream_ssrcs)):
                self.producer.request_keyframe(stream_index, now, waiting=True)
            return
        index = self._stream_of_ssrc.get(ssrc)
        if index is not None:
            self.producer.request_keyframe(index, now, waiting=True)

    def receive_report(
        self,
        fraction_lost: int,
        cumulative_lost: int,
        rtt: float | None,
        highest_seq: int | None = None,
    ) -> None:
        # Blocks of several streams arrive: their sequence numbers are not one series.
        super().receive_report(fraction_lost, cumulative_lost, rtt, None)

    def sender_reports(self, ntp: int, now: float) -> list[SenderReport]:
        """A Sender Report for each stream sent whose publisher sent one: NTP time ``ntp``
        (now) and the RTP time of now extrapolated from the publisher's last report (the
        pipe keeps its timestamps)."""
        reports = []
        clock = self.clock_rate
        for stream, ssrc, packets, octets in zip(
            self.producer.streams,
            self.stream_ssrcs,
            self.stream_packets,
            self.stream_octets,
            strict=True,
        ):
            if packets == 0 or stream.last_sr_arrival < 0 or not stream.last_sr_ntp:
                continue
            rtp = stream.last_sr_rtp + round((now - stream.last_sr_arrival) * clock)
            reports.append(
                SenderReport(
                    ssrc=ssrc,
                    ntp_timestamp=ntp,
                    rtp_timestamp=rtp & _TS_MASK,
                    packet_count=packets & 0xFFFFFFFF,
                    octet_count=octets & 0xFFFFFFFF,
                )
            )
        return reports

    def stats(self) -> dict[str, Any]:
        return {
            "type": "outbound-rtp",
            "kind": self.kind,
            "pipe": True,
            "packetCount": self.packets_sent,
            "byteCount": self.octets_sent,
            "fractionLost": self.fraction_lost / 256,
            "roundTripTime": self.rtt,
            "streams": [
                {"ssrc": ssrc, "packetCount": packets, "byteCount": octets}
                for ssrc, packets, octets in zip(
                    self.stream_ssrcs, self.stream_packets, self.stream_octets, strict=True
                )
            ],
        }

    def dump(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "producerId": self.producer_id,
            "kind": self.kind,
            "type": "pipe",
            "paused": self.paused,
            "producerPaused": self.producer_paused,
            "ssrcs": list(self.stream_ssrcs),
        }
