"""Router: the media plane of one meeting.

A router is a Trio nursery (its :meth:`Router.run` task) that owns the meeting's
WebRtcTransports and PipeTransports, their Producers and Consumers, and one RTCP task. The
maps from id to object live here, never in a global. ``close()`` is synchronous and
idempotent: it closes every transport (their sockets at once), producers and consumers,
then cancels the nursery.

The packet path runs in the transports' receive loops:
``send transport -> on_rtp -> RtpListener (by SSRC, else MID/RID) -> Producer ->
Consumer -> receiving transport's egress channel``.

Pipes (mediasoup's ``pipeToRouter``, orchestrated by :mod:`trio_sfu.engine.pipe`): a
:class:`~trio_sfu.engine.pipe_transport.PipeTransport` takes the place of a WebRtcTransport
in the same bookkeeping; a :class:`~trio_sfu.engine.consumer.PipeConsumer` on it sends every
stream of a producer to another router, where :meth:`Router.pipe_produce` makes a producer
with the same id that its consumers consume like any other.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
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
from trio_sfu.engine.bandwidth import SendSideEstimator, TwccRecorder
from trio_sfu.engine.consumer import Consumer, PipeConsumer
from trio_sfu.engine.layers import (
    LEVEL_PAUSED,
    LossPolicy,
    PolicySettings,
    Quality,
    allocate,
    interval_loss,
    layer_options,
    network_quality,
)
from trio_sfu.engine.pipe_transport import PipeTransport
from trio_sfu.engine.plain_transport import PlainTransport
from trio_sfu.engine.producer import ROUTER_RTCP_SSRC, Producer, ProducerStream
from trio_sfu.engine.recovery import RecoveryProber
from trio_sfu.engine.rtc_sockets import is_unspecified
from trio_sfu.engine.speaker import ActiveSpeakerDetector
from trio_sfu.engine.webrtc_transport import WebRtcTransport
from trio_sfu.errors import BadPacket, InvalidStateError, NotFoundError, UnsupportedError
from trio_sfu.ortc import negotiation
from trio_sfu.ortc.types import (
    DtlsParameters,
    IceParameters,
    MediaKind,
    RtpCapabilities,
    RtpParameters,
    SrtpParameters,
)
from trio_sfu.rtcp import (
    Bye,
    Fir,
    GenericNack,
    Pli,
    ReceiverReport,
    Remb,
    RtcpPacket,
    Sdes,
    SdesChunk,
    SenderReport,
    TransportCcFeedback,
    build_rtcp,
    ntp_to_compact,
    parse_rtcp_untrusted,
    unix_to_ntp,
)
from trio_sfu.rtp.extensions import MID_URI, REPAIRED_RID_URI, RID_URI
from trio_sfu.rtp.packet import find_extension_untrusted, rtp_ssrc
from trio_sfu.rtp.stats import round_trip_time
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
#: A receiver report must cover this many packets before its loss counts.
MIN_LOSS_PACKETS = 10
#: Probing: the first wait after a failed probe, and the longest.
PROBE_BACKOFF = 2.0
PROBE_BACKOFF_MAX = 30.0
#: The share of a transport's estimated bandwidth its consumers are planned to use.
BUDGET_SHARE = 0.95
#: How long one probe cluster lasts.
PROBE_DURATION = 0.2
#: The REMB toward a publisher falls at most to this share of itself per second. Cut at
#: once (from what three streams need to what one needs), Chromium's pacer is left with a
#: queue of frames encoded for the old rate and sends even the stream still wanted seconds
#: late; the keyframe that ends such a queue jumps its timestamps forward and the
#: subscribers' jitter buffers hold their frames until they catch up.
REMB_DECREASE_PER_SECOND = 0.5


#: What the router's transport bookkeeping holds: the kinds share what the router uses
#: (``on_rtp``, ``on_rtcp``, ``on_closed``, ``send_rtp_nowait``, ``send_rtcp_nowait``,
#: ``stats()``, ``close()``, ``id``, ``closed``).
AnyTransport = WebRtcTransport | PlainTransport  # PipeTransport is a PlainTransport


def new_id(prefix: str = "") -> str:
    """A fresh entity id. A worker process puts its own ``prefix`` in front, so that the
    signaling side can tell from an id alone which worker holds the entity."""
    return prefix + secrets.token_hex(8)


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


@final
class _TransportEntry:
    """A transport and what the router keeps about it: its producers and consumers, the
    bandwidth state of each direction, the loss policy of its video consumers."""

    __slots__ = (
        "allocated_at",
        "cname",
        "consumers",
        "consumers_by_ssrc",
        "desired_bitrate",
        "estimator",
        "last_estimate",
        "listener",
        "next_mid",
        "next_probe_at",
        "planned",
        "policies",
        "probe_backoff",
        "probe_results_seen",
        "probe_to_peak",
        "probing",
        "producers",
        "quality",
        "recovery",
        "remb_at",
        "remb_bitrate",
        "transport",
        "twcc_id",
        "twcc_recorder",
        "uplink_prior",
    )

    def __init__(self, transport: AnyTransport, ssrc_owners: dict[int, Producer]) -> None:
        self.transport = transport
        self.listener = RtpListener(ssrc_owners)
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        self.consumers_by_ssrc: dict[int, Consumer] = {}
        self.cname: str | None = None
        self.next_mid = 0
        # Downlink (what the router sends on this transport).
        self.estimator = SendSideEstimator()
        self.last_estimate: float | None = None
        self.planned = False
        self.allocated_at = -1e9
        self.desired_bitrate = 0.0
        self.policies: dict[str, LossPolicy] = {}
        self.next_probe_at = 0.0
        self.probe_backoff = PROBE_BACKOFF
        self.probe_results_seen = 0
        #: The next bandwidth probe may go straight to what the path carried before a
        #: loss episode (set when the loss policy takes video up a level).
        self.probe_to_peak = False
        self.probing = False
        #: Probes for video the loss policy paused (trio_sfu.engine.recovery).
        self.recovery = RecoveryProber()
        # Uplink (what the router receives): transport-cc toward the publisher.
        self.twcc_id: int | None = None
        self.twcc_recorder: TwccRecorder | None = None
        #: Per producer stream: (expected, received) at the last policy tick.
        self.uplink_prior: dict[tuple[str, int], tuple[int, int]] = {}
        #: The last REMB sent toward the publisher, and when.
        self.remb_bitrate: float | None = None
        self.remb_at = 0.0
        self.quality: Quality | None = None


#: Trespasses the engine refuses, each counted as the media counter ``refused_<reason>``
#: (``/metrics``: ``trio_sfu_refused_total{reason=...}``):
#:
#: - ``stun_unauthenticated``: STUN that names no transport, or fails its transport's
#:   check (wrong username, bad or missing MESSAGE-INTEGRITY or FINGERPRINT);
#: - ``not_validated``: RTP, RTCP or DTLS from an address ICE never validated;
#: - ``dtls_fingerprint``: a DTLS handshake whose certificate matches no fingerprint the
#:   peer signaled (the transport closes);
#: - ``ssrc_in_use``, ``mid_in_use``, ``rid_in_use``: a produce announcing an SSRC that
#:   another producer of the router holds, a MID another producer of its transport has,
#:   or RIDs that would make its transport's streams ambiguous. (A packet whose SSRC
#:   another producer holds is never taken over by a RID/MID match either: dropped.)
ENGINE_REFUSALS = (
    "stun_unauthenticated",
    "not_validated",
    "dtls_fingerprint",
    "ssrc_in_use",
    "mid_in_use",
    "rid_in_use",
)

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
        self._transport_options = transport_options
        self._rtcp_interval = rtcp_interval
        self.policy = policy or PolicySettings()
        self._feedback_interval = feedback_interval
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        #: Fires every transport's ICE/DTLS timer from one task.
        self._timers = TimerQueue()
        self.transports: dict[str, _TransportEntry] = {}
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

    def ntp_now(self, now: float) -> int:
        return unix_to_ntp(now + self._epoch_offset)

    def _emit(self, event: Any) -> None:
        if not self.closed:
            self._on_event(event)

    # ---- transports --------------------------------------------------------------------

    def _hook(self, transport: AnyTransport) -> _TransportEntry:
        """A new transport's entry, its packets and its end wired to this router."""
        entry = _TransportEntry(transport, self.ssrc_owners)
        transport.on_rtp = lambda packet: self._on_rtp(entry, packet)
        transport.on_rtcp = lambda packet: self._on_rtcp(entry, packet)
        transport.on_closed = lambda reason: self._on_transport_closed(transport.id, reason)
        return entry

    async def _start_plain(self, nursery: trio.Nursery, transport: PlainTransport) -> None:
        """Start a plain (or pipe) transport's receive task(s) in the router's nursery and
        register it. Cancellation, or no free port: nothing stays bound."""
        entry = self._hook(transport)
        try:
            await nursery.start(transport.run)
        except BaseException:
            transport.close()
            raise
        if transport.closed:
            raise InvalidStateError(f"transport {transport.id} closed while starting")
        self.transports[transport.id] = entry

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
        entry = self._hook(transport)
        if options.get("server") is not None:
            transport.start(nursery)  # on the worker's sockets: no task of its own
        else:
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
        transport = self._entry(transport_id).transport
        if not isinstance(transport, PlainTransport) or isinstance(transport, PipeTransport):
            raise UnsupportedError(f"transport {transport_id!r} is not a plain transport")
        transport.connect(ip=ip, port=port, rtcp_port=rtcp_port, srtp_parameters=srtp_parameters)
        return plain_transport_info(transport)

    def connect_pipe_transport(self, transport_id: str, ip: str, port: int) -> None:
        """Where the other end of the pipe is (InvalidStateError the second time)."""
        transport = self._pipe_entry(transport_id).transport
        assert isinstance(transport, PipeTransport)
        transport.connect(ip, port)

    def _entry(self, transport_id: str) -> _TransportEntry:
        entry = self.transports.get(transport_id)
        if entry is None:
            raise NotFoundError(f"transport {transport_id!r} not found")
        return entry

    def _webrtc_transport(self, transport_id: str) -> WebRtcTransport:
        transport = self._entry(transport_id).transport
        if not isinstance(transport, WebRtcTransport):
            raise UnsupportedError(f"transport {transport_id!r} is a {transport.kind} transport")
        return transport

    def _pipe_entry(self, transport_id: str) -> _TransportEntry:
        entry = self._entry(transport_id)
        if not isinstance(entry.transport, PipeTransport):
            raise UnsupportedError(f"transport {transport_id!r} is not a pipe transport")
        return entry

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
        entry = self.transports.pop(transport_id)
        for producer in list(entry.producers.values()):
            self._close_producer(producer)
        for consumer in list(entry.consumers.values()):
            self._close_consumer(consumer, "transport_closed")
        entry.transport.close(reason)
        add_transport_counters(self.retired_counters, entry.transport)
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
        if isinstance(entry.transport, PipeTransport):
            raise UnsupportedError(f"transport {transport_id!r} is a pipe transport")
        return self._produce(
            entry, new_id(self.id_prefix), kind, rtp_parameters, paused=paused, pipe=False
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
        entry = self._pipe_entry(transport_id)
        if producer_id in self.producers:
            raise InvalidStateError(f"producer {producer_id!r} is in router {self.id} already")
        self._produce(entry, producer_id, kind, rtp_parameters, paused=paused, pipe=True)

    def _produce(
        self,
        entry: _TransportEntry,
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
        self._check_claims(entry, rtp_parameters)
        if not pipe:
            # One endpoint, one CNAME; a pipe carries many endpoints' producers.
            entry.cname = negotiation.pick_transport_cname(entry.cname, rtp_parameters)
            rtp_parameters = negotiation.fill_cname(rtp_parameters, entry.cname)
        consumable = negotiation.get_consumable_rtp_parameters(
            kind, rtp_parameters, self.rtp_capabilities, mapping
        )
        transport = entry.transport
        producer = Producer(
            producer_id=producer_id,
            transport_id=entry.transport.id,
            kind=kind,
            rtp_parameters=rtp_parameters,
            consumable_rtp_parameters=consumable,
            mapping=mapping,
            paused=paused,
            send_rtcp=transport.send_rtcp_nowait,
            on_audio_level=self.speakers.add_level if kind == "audio" else None,
            on_streams_changed=self._on_streams_changed,
        )
        entry.producers[producer.id] = producer
        entry.listener.add(producer)
        self.producers[producer.id] = producer
        if kind == "audio":
            self.speakers.add(producer.id)
        if producer.transport_cc_id is not None and entry.twcc_id is None:
            entry.twcc_id = producer.transport_cc_id
            entry.twcc_recorder = TwccRecorder()
        return producer.id

    def _check_claims(self, entry: _TransportEntry, rtp_parameters: RtpParameters) -> None:
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
                if ssrc in seen or entry.listener.ssrc_in_use(ssrc):
                    self._refuse("ssrc_in_use")
                    raise UnsupportedError(
                        f"rtpParameters.encodings: ssrc {ssrc} is already in use",
                        refusal="ssrc_in_use",
                    )
                seen.add(ssrc)
        mid = rtp_parameters.mid
        others = list(entry.producers.values())
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
            self._close_producer(producer)

    def _close_producer(self, producer: Producer) -> None:
        if producer.closed:
            return
        producer.closed = True
        for consumer in list(producer.consumers):
            self._close_consumer(consumer, "producer_closed")
        self.producers.pop(producer.id, None)
        self.speakers.remove(producer.id)
        owners = self.ssrc_owners
        for stream in producer.streams:
            for ssrc in (stream.ssrc, stream.rtx_ssrc):
                if ssrc is not None and owners.get(ssrc) is producer:
                    del owners[ssrc]
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

    def _on_streams_changed(self, producer: Producer, now: float) -> None:
        for consumer in producer.consumers:
            consumer.on_streams_changed(now)
            entry = self.transports.get(consumer.transport_id)
            if entry is not None:
                entry.planned = False

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
        if isinstance(entry.transport, PipeTransport):
            raise UnsupportedError(f"transport {transport_id!r} is a pipe transport")
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
            consumer_id=new_id(self.id_prefix),
            producer=producer,
            transport_id=transport_id,
            rtp_parameters=rtp_parameters,
            paused=paused,
            send_rtp=entry.transport.send_rtp_nowait,
            now=now,
            on_layers_changed=self._on_layers_changed,
            estimator=entry.estimator,
        )
        if consumer.bandwidth_feedback:
            entry.estimator.expect_feedback = True
        producer.consumers.add(consumer)
        entry.consumers[consumer.id] = consumer
        entry.consumers_by_ssrc[consumer.ssrc] = consumer
        if consumer.kind == "video":
            entry.policies[consumer.id] = LossPolicy(self.policy)
        self.consumers[consumer.id] = consumer
        self._plan(entry, now)
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
        entry = self._pipe_entry(transport_id)
        producer = self._producer(producer_id)
        rtp_parameters = negotiation.get_pipe_consumer_rtp_parameters(
            producer.consumable_rtp_parameters
        )
        if any(encoding.ssrc in entry.consumers_by_ssrc for encoding in rtp_parameters.encodings):
            raise InvalidStateError(
                f"producer {producer_id!r} is piped on transport {transport_id!r} already"
            )
        now = trio.current_time()
        consumer = PipeConsumer(
            consumer_id=new_id(self.id_prefix),
            producer=producer,
            transport_id=transport_id,
            rtp_parameters=rtp_parameters,
            send_rtp=entry.transport.send_rtp_nowait,
            now=now,
        )
        producer.consumers.add(consumer)
        entry.consumers[consumer.id] = consumer
        for ssrc in consumer.stream_ssrcs:
            entry.consumers_by_ssrc[ssrc] = consumer
        self.consumers[consumer.id] = consumer
        entry.planned = False
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
            if isinstance(consumer, PipeConsumer):
                for ssrc in consumer.stream_ssrcs:
                    entry.consumers_by_ssrc.pop(ssrc, None)
            entry.policies.pop(consumer.id, None)
            entry.planned = False
            if reason == "producer_closed" and type(entry.transport) is PlainTransport:
                # Its source left: say so (RFC 3550 BYE) to a plain receiver, which
                # would otherwise wait for more (ffmpeg ends its input on the BYE of
                # every stream at once, instead of after its read timeout).
                ssrcs = (consumer.ssrc,) + ((consumer.rtx_ssrc,) if consumer.rtx_ssrc else ())
                entry.transport.send_rtcp_nowait(
                    build_rtcp((ReceiverReport(consumer.ssrc), Bye(ssrcs)))
                )
        if reason is not None and not self.closed:
            self._on_event(ConsumerClosed(self.id, consumer.id, consumer.producer_id, reason))

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
        entry = self.transports.get(consumer.transport_id)
        if entry is not None:
            self._plan(entry, now)
        return layers

    def _replan(self, consumer: Consumer) -> None:
        entry = self.transports.get(consumer.transport_id)
        if entry is not None:
            entry.planned = False

    def _on_layers_changed(self, consumer: Consumer) -> None:
        self._emit(
            ConsumerLayersChanged(
                self.id, consumer.id, consumer.current_spatial, consumer.current_temporal
            )
        )

    # ---- the packet path ---------------------------------------------------------------

    def _on_rtp(self, entry: _TransportEntry, packet: bytes) -> None:
        if len(packet) < 12:
            return
        now = trio.current_time()
        recorder = entry.twcc_recorder
        if recorder is not None and entry.twcc_id is not None:
            try:
                value = find_extension_untrusted(packet, entry.twcc_id)
            except BadPacket:
                return
            if value is not None and len(value) == 2:
                recorder.record((value[0] << 8) | value[1], now)
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
            producer.receive_rtx(stream, packet, now)
        else:
            producer.receive_rtp(stream, packet, now)

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
                        consumer.receive_report(
                            block.fraction_lost, block.cumulative_lost, rtt, block.highest_seq
                        )
            elif isinstance(packet, TransportCcFeedback):
                entry.estimator.on_feedback(packet, now)
            elif isinstance(packet, Remb):
                entry.estimator.on_remb(packet.bitrate, now)
            elif isinstance(packet, GenericNack):
                consumer = entry.consumers_by_ssrc.get(packet.media_ssrc)
                if consumer is not None:
                    consumer.retransmit(packet.lost_seqs(), now)
            elif isinstance(packet, Pli):
                consumer = entry.consumers_by_ssrc.get(packet.media_ssrc)
                if consumer is not None:
                    consumer.request_keyframe(now, packet.media_ssrc)
            elif isinstance(packet, Fir):
                for ssrc, _seq in packet.entries:
                    consumer = entry.consumers_by_ssrc.get(ssrc)
                    if consumer is not None:
                        consumer.request_keyframe(now, ssrc)

    def _on_sender_report(self, entry: _TransportEntry, report: SenderReport, now: float) -> None:
        found = entry.listener.ssrc_table.get(report.ssrc)
        if found is not None and not found[2]:
            producer, stream, _ = found
            producer.receive_sender_report(stream, report.ntp_timestamp, report.rtp_timestamp, now)

    # ---- RTCP reports ------------------------------------------------------------------

    async def _rtcp_loop(self) -> None:
        while True:
            await trio.sleep(self._rtcp_interval)
            await self._in_slices(self._send_reports_to)

    async def _in_slices(self, tick: Callable[[_TransportEntry, float], None]) -> None:
        """Run ``tick`` for every transport, ``TICK_SLICE`` at a time with a checkpoint in
        between: a periodic pass over hundreds of transports in one go would hold the
        packets arriving meanwhile for milliseconds."""
        entries = list(self.transports.items())
        for start in range(0, len(entries), TICK_SLICE):
            if start:
                await trio.lowlevel.checkpoint()
            now = trio.current_time()
            for transport_id, entry in entries[start : start + TICK_SLICE]:
                if self.transports.get(transport_id) is entry:  # not closed meanwhile
                    tick(entry, now)

    def _send_reports_to(self, entry: _TransportEntry, now: float) -> None:
        """Receiver Reports (and REMB) for every producer stream of the transport, Sender
        Reports for every consumer."""
        ntp = self.ntp_now(now)
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
        packets: list[RtcpPacket] = []
        for start in range(0, len(blocks), 31):
            packets.append(ReceiverReport(ROUTER_RTCP_SSRC, tuple(blocks[start : start + 31])))
        remb = self._remb_for(entry, now)
        if remb is not None:
            packets.append(remb)
        chunks = []
        for consumer in entry.consumers.values():
            if consumer.packets_sent == 0:
                continue
            if isinstance(consumer, PipeConsumer):
                for report in consumer.sender_reports(ntp, now):
                    packets.append(report)
                    chunks.append(SdesChunk.with_cname(report.ssrc, consumer.cname))
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

    def _remb_for(self, entry: _TransportEntry, now: float) -> Remb | None:
        """REMB toward a publisher: what the consumers of its producers can take, going
        down no faster than ``REMB_DECREASE_PER_SECOND`` (up at once)."""
        total = 0.0
        ssrcs: list[int] = []
        wanted = False
        for producer in entry.producers.values():
            if producer.remb_enabled or producer.transport_cc_id is not None:
                wanted = True
            ssrcs += [s.ssrc for s in producer.streams if s.ssrc is not None]
            total += _producer_demand(producer)
        if not wanted or not ssrcs:
            return None
        last = entry.remb_bitrate
        if last is not None and total < last:
            elapsed = max(0.0, now - entry.remb_at)
            total = max(total, last * REMB_DECREASE_PER_SECOND**elapsed)
        entry.remb_bitrate = total
        entry.remb_at = now
        return Remb(ROUTER_RTCP_SSRC, int(total), tuple(ssrcs[:255]))

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

    def _feedback_to(self, entry: _TransportEntry, now: float) -> None:
        """NACKs and transport-cc feedback to a publisher; rates; bandwidth plan; probes."""
        packets: list[RtcpPacket] = []
        for producer in entry.producers.values():
            if producer.update_rates(now):
                self._on_streams_changed(producer, now)
            if producer.nack_enabled:
                packets += producer.nack_feedback(now)
        recorder = entry.twcc_recorder
        if recorder is not None:
            media_ssrc = next(
                (s.ssrc for p in entry.producers.values() for s in p.streams if s.ssrc is not None),
                0,
            )
            packets += recorder.feedback(ROUTER_RTCP_SSRC, media_ssrc)
        for start in range(0, len(packets), 8):
            entry.transport.send_rtcp_nowait(build_rtcp(packets[start : start + 8]))
        if entry.consumers:
            estimate = entry.estimator.estimate(now)
            last = entry.last_estimate
            if (
                not entry.planned
                or (estimate is None) != (last is None)
                or (
                    estimate is not None and last is not None and abs(estimate - last) > 0.05 * last
                )
                or now - entry.allocated_at >= 1.0
            ):
                self._plan(entry, now)
            self._maybe_probe(entry, now)
            self._maybe_recover(entry, now)

    def _plan(self, entry: _TransportEntry, now: float) -> None:
        """Share the transport's estimated bandwidth among its video consumers."""
        entry.planned = True
        entry.allocated_at = now
        estimator = entry.estimator
        estimate = estimator.estimate(now)
        entry.last_estimate = estimate
        audio = 0.0
        video: list[Consumer] = []
        demands = []
        for consumer in entry.consumers.values():
            if not consumer.active:
                continue
            if consumer.kind == "audio":
                audio += consumer.producer.bitrate()
                continue
            cap = consumer.layer_options_cap()
            options = []
            if cap is not None:
                options = layer_options(
                    _layer_rates(consumer.producer),
                    max_spatial=cap[0],
                    max_temporal=cap[1],
                    temporal_filtering=consumer.temporal_filtering,
                )
            video.append(consumer)
            demands.append(options)
        entry.desired_bitrate = audio + sum(o[-1].bitrate for o in demands if o)
        budget = None if estimate is None else estimate * BUDGET_SHARE
        for consumer, options, index in zip(
            video, demands, allocate(budget, audio, demands), strict=True
        ):
            consumer.allocated_layers = (
                None
                if index < 0 or budget is None
                else (options[index].spatial, options[index].temporal)
            )
            consumer.update_layers(now)

    def _maybe_probe(self, entry: _TransportEntry, now: float) -> None:
        estimator = entry.estimator
        if estimator.probes_finished > entry.probe_results_seen and estimator.probe_results:
            entry.probe_results_seen = estimator.probes_finished
            if estimator.probe_results[-1].success:
                entry.probe_backoff = PROBE_BACKOFF
                entry.planned = False
            else:
                entry.probe_backoff = min(PROBE_BACKOFF_MAX, entry.probe_backoff * 2)
            entry.next_probe_at = now + entry.probe_backoff
        if entry.probing or estimator.probing or not estimator.expect_feedback:
            return
        estimate = estimator.estimate(now)
        if estimate is not None and entry.desired_bitrate <= estimate * BUDGET_SHARE:
            entry.probe_to_peak = False  # the estimate covers the climb: nothing to catch up
            return
        if (
            estimate is None
            or now < entry.next_probe_at
            or now - estimator.last_overuse < 1.0
            or estimator.feedback_packets == 0
        ):
            return
        # Step up at most to twice what arrives (or 1.5 times the estimate): a probe into a
        # bottleneck costs the media behind it in the queue. Once the loss policy took
        # video up again, the path likely carries what it carried before the loss.
        acked = estimator.acked_bitrate() or 0.0
        step = max(2 * acked, 1.5 * estimate, 300_000.0)
        if entry.probe_to_peak:
            entry.probe_to_peak = False
            step = max(step, 1.25 * (estimator.recent_peak(now) or 0.0))
        rate = min(entry.desired_bitrate * 1.2, step)
        entry.probing = True
        entry.next_probe_at = now + entry.probe_backoff
        self._nursery_or_fail().start_soon(self._probe, entry, rate)

    async def _probe(self, entry: _TransportEntry, rate: float) -> None:
        """Send RTX copies of recent packets on top of the media, to reach ``rate`` for
        ``PROBE_DURATION``: the feedback tells whether the path carries it."""
        estimator = entry.estimator
        start = trio.current_time()
        estimator.start_probe(start)
        sent_at_start = estimator.bytes_sent
        try:
            now = start
            while now - start < PROBE_DURATION and not entry.transport.closed:
                due = rate * (now - start + 0.01) / 8
                candidates = [
                    c
                    for c in entry.consumers.values()
                    if c.kind == "video" and c.rtx_ssrc is not None and c.packets_sent
                ]
                if not candidates:
                    break
                turn = 0
                while estimator.bytes_sent - sent_at_start < due:
                    packet = candidates[turn % len(candidates)].probe_packet(now)
                    turn += 1
                    if packet is None:
                        if turn > len(candidates):
                            break
                        continue
                    entry.transport.send_rtp_nowait(packet)
                await trio.sleep(0.01)
                now = trio.current_time()
        finally:
            estimator.end_probe(trio.current_time())
            entry.probing = False

    def _maybe_recover(self, entry: _TransportEntry, now: float) -> None:
        """While the loss policy holds video of this transport paused: probe the link
        with padding at the first layer's bitrate, and bring video back when the probe
        arrives clean (:class:`~trio_sfu.engine.recovery.RecoveryProber`)."""
        recovery = entry.recovery
        audio = _nacked_audio(entry) if recovery.paused else None
        action = recovery.tick(now, entry.estimator, audio, can_probe=not entry.probing)
        if action == "probe":
            rate = sum(
                _first_layer_bitrate(c.producer)
                for c in _paused_for_network(entry)
                if c.rtx_ssrc is not None
            )
            if rate <= 0:
                recovery.probe_failed(now)
                return
            entry.probing = True
            self._nursery_or_fail().start_soon(self._recovery_probe, entry, rate)
        elif action == "resume":
            for consumer_id, policy in entry.policies.items():
                consumer = entry.consumers.get(consumer_id)
                if consumer is not None and policy.level <= LEVEL_PAUSED:
                    consumer.set_network_level(policy.resume(), now)
            entry.planned = False
            _probe_soon(entry, now)

    async def _recovery_probe(self, entry: _TransportEntry, rate: float) -> None:
        """Padding-only RTX packets on the paused video consumers' RTX streams at
        ``rate`` for the prober's ``probe_duration``, counted as one probe cluster."""
        estimator = entry.estimator
        recovery = entry.recovery
        size = recovery.settings.padding_size
        start = trio.current_time()
        recovery.probe_started(estimator.start_probe(start))
        sent = 0
        try:
            now = start
            stalled = False
            while (
                now - start < recovery.settings.probe_duration
                and not stalled
                and not entry.transport.closed
            ):
                due = rate * (now - start + 0.01) / 8
                candidates = [c for c in _paused_for_network(entry) if c.rtx_ssrc is not None]
                stalled = not candidates
                while sent < due and not stalled:
                    stalled = True  # unless some consumer has padding to send
                    for consumer in candidates:
                        packet = consumer.padding_packet(now, size)
                        if packet is not None:
                            stalled = False
                            entry.transport.send_rtp_nowait(packet)
                            sent += len(packet)
                            if sent >= due:
                                break
                await trio.sleep(0.01)
                now = trio.current_time()
        finally:
            now = trio.current_time()
            estimator.end_probe(now)
            recovery.probe_sent(now)
            entry.probing = False

    # ---- the weak-network policy -------------------------------------------------------

    async def _policy_loop(self) -> None:
        while True:
            await trio.sleep(self.policy.interval)
            await self._in_slices(self._policy_for)

    def _policy_for(self, entry: _TransportEntry, now: float) -> None:
        """Once per policy interval: the loss of the transport's downlink sets its video
        consumers' levels; network quality goes out when it changed."""
        transport_id = entry.transport.id
        down_loss, rtt = self._downlink_loss(entry)
        for consumer_id, policy in entry.policies.items():
            consumer = entry.consumers.get(consumer_id)
            if consumer is None:
                continue
            started = consumer.first_sent_at
            if started is None or now - started < self.policy.interval:
                # The first interval of a consumer is the bandwidth estimate's to
                # settle in (what it lost meanwhile says little about the link).
                continue
            level = policy.update(down_loss)
            if level != consumer.network_level:
                if level > consumer.network_level:
                    _probe_soon(entry, now)
                consumer.set_network_level(level, now)
                entry.planned = False
        entry.recovery.set_paused(next(_paused_for_network(entry), None) is not None, now)
        if not entry.planned:
            self._plan(entry, now)
        up_loss = self._uplink_loss(entry)
        losses = [x for x in (down_loss, up_loss) if x is not None]
        if not losses:
            return
        loss = max(losses)
        quality = network_quality(loss, None if rtt is None else rtt * 1000)
        if quality != entry.quality:
            entry.quality = quality
            self._emit(
                NetworkQuality(
                    self.id,
                    transport_id,
                    round(loss, 4),
                    round((rtt or 0.0) * 1000, 1),
                    quality,
                )
            )

    def _downlink_loss(self, entry: _TransportEntry) -> tuple[float | None, float | None]:
        """Loss of what the router sent on this transport over the last interval, from
        the subscriber's receiver reports and NACKs of every stream
        (:func:`~trio_sfu.engine.layers.interval_loss`); and the mean RTT."""
        samples = []
        rtts = []
        for consumer in entry.consumers.values():
            samples.append(consumer.loss_sample())
            if consumer.rtt is not None:
                rtts.append(consumer.rtt)
        loss = interval_loss(samples, MIN_LOSS_PACKETS)
        rtt = sum(rtts) / len(rtts) if rtts else None
        return loss, rtt

    def _uplink_loss(self, entry: _TransportEntry) -> float | None:
        """Loss of what the publisher sent on this transport since the last interval."""
        expected = received = 0
        prior = entry.uplink_prior
        for producer in entry.producers.values():
            for stream in producer.streams:
                if stream.ssrc is None:
                    continue
                key = (producer.id, stream.index)
                now_e, now_r = stream.stats.expected, stream.stats.received
                before = prior.get(key)
                prior[key] = (now_e, now_r)
                if before is not None:
                    expected += max(0, now_e - before[0])
                    received += max(0, now_r - before[1])
        if expected < MIN_LOSS_PACKETS:
            return None
        return max(0.0, min(1.0, (expected - received) / expected))

    # ---- introspection -----------------------------------------------------------------

    def get_stats(self, entity_id: str) -> list[dict[str, Any]]:
        if entity_id in self.transports:
            entry = self.transports[entity_id]
            estimate = entry.estimator.estimate(trio.current_time())
            return [
                {
                    "type": "transport",
                    **entry.transport.stats(),
                    "availableOutgoingBitrate": estimate,
                    "networkQuality": entry.quality,
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


def _dump_transport(transport_id: str, entry: _TransportEntry) -> dict[str, Any]:
    transport = entry.transport
    out: dict[str, Any] = {
        "id": transport_id,
        "producerIds": sorted(entry.producers),
        "consumerIds": sorted(entry.consumers),
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


#: Bitrates assumed for streams not measured yet, by simulcast index (bps).
_DEFAULT_LAYER_BITRATES = (150_000.0, 500_000.0, 1_500_000.0)


def _layer_rates(producer: Producer) -> list[list[float] | None]:
    """Measured bitrate per stream and temporal layer; a stream received but not measured
    yet counts at its ``maxBitrate`` (or a default), all under temporal layer 0."""
    rates = producer.layer_rates()
    for index, per_tid in enumerate(rates):
        if per_tid is not None and sum(per_tid) <= 0:
            encoding = producer.rtp_parameters.encodings[index]
            fallback = encoding.max_bitrate or _DEFAULT_LAYER_BITRATES[min(index, 2)]
            rates[index] = [float(fallback)]
    return rates


def _probe_soon(entry: _TransportEntry, now: float) -> None:
    """The loss policy took video up a level: the bandwidth probes start over (those that
    failed in the loss backed off for up to 30 s), and the next may go straight back to
    what the path carried before the loss (the estimate may have fallen meanwhile)."""
    entry.probe_backoff = PROBE_BACKOFF
    entry.next_probe_at = now
    entry.probe_to_peak = True


def _first_layer_bitrate(producer: Producer) -> float:
    """What the lowest stream received of a producer costs, every temporal layer."""
    rates = _layer_rates(producer)
    return next((sum(r) for r in rates if r is not None), 0.0) or float(
        producer.rtp_parameters.encodings[0].max_bitrate or _DEFAULT_LAYER_BITRATES[0]
    )


def _paused_for_network(entry: _TransportEntry) -> Iterator[Consumer]:
    """The transport's video consumers the loss policy pauses (and nothing else does)."""
    for consumer_id, policy in entry.policies.items():
        if policy.level <= LEVEL_PAUSED:
            consumer = entry.consumers.get(consumer_id)
            if consumer is not None and consumer.active:
                yield consumer


def _nacked_audio(entry: _TransportEntry) -> tuple[int, int] | None:
    """``(sent, NACKed)`` so far of the transport's audio consumers whose receiver has
    NACKed them (one that NACKs at all); ``None`` when there is none."""
    sent = nacked = 0
    for consumer in entry.consumers.values():
        if consumer.kind == "audio" and consumer.nacks_total and consumer.active:
            sent += consumer.packets_sent
            nacked += consumer.nacks_total
    return (sent, nacked) if sent else None


def _producer_demand(producer: Producer) -> float:
    """What a publisher should send for a producer: every stream up to the highest one a
    consumer wants (all of them while nobody consumes), with 20 % headroom.

    "Wants" is the preference under the loss policy (:meth:`Consumer.layer_options_cap`),
    not the target: the target falls back to the streams that arrive, and which streams
    arrive follows this demand (Chromium drops the simulcast streams its estimate does not
    cover), so a demand from targets could never bring back a stream once it stopped.
    """
    streams = producer.streams
    if producer.kind == "audio":
        return max(producer.bitrate(), 64_000.0) * 1.2
    consumers = [c for c in producer.consumers if c.active]
    if consumers:
        wanted = [cap[0] for c in consumers if (cap := c.layer_options_cap()) is not None]
        top = max(wanted, default=0)
    else:
        top = len(streams) - 1
    total = 0.0
    for stream in streams[: top + 1]:
        encoding = producer.rtp_parameters.encodings[stream.index]
        total += (
            max(stream.bitrate, float(encoding.max_bitrate or 0))
            or _DEFAULT_LAYER_BITRATES[min(stream.index, 2)]
        )
    return total * 1.2
