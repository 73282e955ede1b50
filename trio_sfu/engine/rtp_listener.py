"""RtpListener: which producer stream an incoming RTP packet of a send transport belongs to.

mediasoup's RtpListener. Each transport's :class:`~trio_sfu.engine.leg.TransportLeg` has
one: a packet is found by its SSRC, and a packet with an SSRC not seen yet is matched once
by its MID and RID (or repaired-RID) header extensions, after which its SSRC is known. An
SSRC that another producer of the router holds is never taken over.
"""

from __future__ import annotations

from typing import final

from trio_sfu.engine.producer import Producer, ProducerStream
from trio_sfu.rtp.extensions import MID_URI, REPAIRED_RID_URI, RID_URI
from trio_sfu.rtp.packet import find_extension_untrusted


@final
class RtpListener:
    """Finds the producer stream of an incoming packet on one send transport.

    ``ssrc_owners`` is the router's map of every SSRC any of its producers has (announced
    or learned): an SSRC another producer of the router holds is never learned here.
    """

    __slots__ = ("producers", "ssrc_owners", "ssrc_table")

    def __init__(self, ssrc_owners: dict[int, Producer] | None = None) -> None:
        #: ssrc -> (producer, stream, is_rtx)
        self.ssrc_table: dict[int, tuple[Producer, ProducerStream, bool]] = {}
        self.producers: list[Producer] = []
        self.ssrc_owners: dict[int, Producer] = {} if ssrc_owners is None else ssrc_owners

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
            if self.ssrc_owners.get(ssrc) is producer:
                del self.ssrc_owners[ssrc]

    def ssrc_in_use(self, ssrc: int) -> bool:
        return ssrc in self.ssrc_table or ssrc in self.ssrc_owners

    def _claim(self, ssrc: int, producer: Producer, stream: ProducerStream, rtx: bool) -> None:
        self.ssrc_table[ssrc] = (producer, stream, rtx)
        self.ssrc_owners[ssrc] = producer

    def learn_untrusted(
        self, packet: bytes, ssrc: int
    ) -> tuple[Producer, ProducerStream, bool] | None:
        """An unknown SSRC: match it by the MID and RID / repaired-RID header extensions.
        None for an SSRC that another producer of the router holds (never taken over)."""
        if ssrc in self.ssrc_owners:
            return None
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
