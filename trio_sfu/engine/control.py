"""TransportControl: the media control of one transport, sans-IO.

What the router decides about one transport every few tens of milliseconds, apart from
the packet path. Toward the publisher (the transport's producers): Receiver Reports,
REMB, NACKs and transport-cc feedback. Toward the subscriber (its consumers): the
send-side bandwidth estimate, the plan that shares it among the video consumers' layers,
probing for more, the weak-network loss policy and the network quality of the link.

Nothing here imports trio or reads a clock: every call takes ``now`` (and the RTCP
calls the NTP time of now), and answers with what the router is to carry out — RTCP
compound packets to send on the transport, the rate of a probe to run, a change of
network quality to report. Its decisions about layers it hands straight to the
consumers it plans for (:attr:`Consumer.allocated_layers
<trio_sfu.engine.consumer.Consumer.allocated_layers>`, ``set_network_level``), which are
sans-IO objects too.

The router's tasks drive it (see :class:`~trio_sfu.engine.router.Router`):

* every ``rtcp_interval``: :meth:`TransportControl.reports`;
* every ``feedback_interval``: :meth:`TransportControl.feedback` (rates, NACKs,
  transport-cc feedback, the plan when the estimate moved, the probe decision), and a
  probe task that asks :meth:`TransportControl.probe_burst` for packets every 10 ms;
* every policy interval: :meth:`TransportControl.policy`.

Its inputs between those calls: transport-cc feedback and REMB from the subscriber
(:meth:`TransportControl.on_feedback`, :meth:`TransportControl.on_remb`), and every
packet its consumers send (they count them into :attr:`TransportControl.estimator`,
their :class:`~trio_sfu.engine.consumer.SendMeter`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple, final

from trio_sfu.engine.bandwidth import SendSideEstimator, TwccRecorder
from trio_sfu.engine.consumer import Consumer
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
from trio_sfu.engine.pipe_consumer import PipeConsumer
from trio_sfu.engine.producer import ROUTER_RTCP_SSRC, Producer
from trio_sfu.engine.recovery import RecoveryProber
from trio_sfu.rtcp import (
    ReceiverReport,
    Remb,
    RtcpPacket,
    Sdes,
    SdesChunk,
    SenderReport,
    TransportCcFeedback,
    build_rtcp,
    ntp_to_compact,
)

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
#: Bitrates assumed for streams not measured yet, by simulcast index (bps).
_DEFAULT_LAYER_BITRATES = (150_000.0, 500_000.0, 1_500_000.0)


class QualityChange(NamedTuple):
    """The network quality of a transport changed: the loss (0-1) and the mean RTT
    (seconds, None: not measured) it was graded from."""

    loss: float
    rtt: float | None
    quality: Quality


@final
class TransportControl:
    """The bandwidth and policy state of one transport, and the periodic decisions made
    from it. ``producers`` and ``consumers`` are its transport's (the leg's maps, shared:
    the router adds and removes, this reads)."""

    __slots__ = (
        "_on_streams_changed",
        "_policy",
        "_probe_sent_at_start",
        "_recovery_sent",
        "_recovery_stalled",
        "allocated_at",
        "consumers",
        "desired_bitrate",
        "estimator",
        "last_estimate",
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
        "twcc_recorder",
        "uplink_prior",
    )

    def __init__(
        self,
        producers: dict[str, Producer],
        consumers: dict[str, Consumer],
        policy: PolicySettings,
        on_streams_changed: Callable[[Producer, float], None],
    ) -> None:
        self.producers = producers
        self.consumers = consumers
        self._policy = policy
        #: A producer's stream started or stopped (found by its rates): the router tells
        #: every consumer of it, on every transport.
        self._on_streams_changed = on_streams_changed
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
        self._probe_sent_at_start = 0
        #: Probes for video the loss policy paused (trio_sfu.engine.recovery).
        self.recovery = RecoveryProber()
        self._recovery_sent = 0
        self._recovery_stalled = False
        self.quality: Quality | None = None
        # Uplink (what the router receives): transport-cc toward the publisher.
        #: Arrivals of the publisher's transport-wide sequence numbers (the leg records
        #: them; None until a producer negotiated transport-cc).
        self.twcc_recorder: TwccRecorder | None = None
        #: Per producer stream: (expected, received) at the last policy tick.
        self.uplink_prior: dict[tuple[str, int], tuple[int, int]] = {}
        #: The last REMB sent toward the publisher, and when.
        self.remb_bitrate: float | None = None
        self.remb_at = 0.0

    # ---- consumers ---------------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        """A consumer of the transport (not a pipe consumer): its feedback is awaited, its
        video follows the loss policy."""
        if consumer.bandwidth_feedback:
            self.estimator.expect_feedback = True
        if consumer.kind == "video":
            self.policies[consumer.id] = LossPolicy(self._policy)

    def remove_consumer(self, consumer: Consumer) -> None:
        self.policies.pop(consumer.id, None)
        self.planned = False

    # ---- from the subscriber -----------------------------------------------------------

    def on_feedback(self, packet: TransportCcFeedback, now: float) -> None:
        self.estimator.on_feedback(packet, now)

    def on_remb(self, bitrate: float, now: float) -> None:
        self.estimator.on_remb(bitrate, now)

    # ---- RTCP reports ------------------------------------------------------------------

    def reports(self, now: float, ntp: int) -> list[bytes]:
        """Receiver Reports (and REMB) for every producer stream of the transport, Sender
        Reports for every consumer: the compound packets to send (``ntp``: now)."""
        blocks = []
        for producer in self.producers.values():
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
        remb = self._remb_for(now)
        if remb is not None:
            packets.append(remb)
        chunks = []
        for consumer in self.consumers.values():
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
        # Keep each compound under a typical MTU: SRs are 28 bytes, blocks 24.
        return [build_rtcp(packets[start : start + 16]) for start in range(0, len(packets), 16)]

    def _remb_for(self, now: float) -> Remb | None:
        """REMB toward a publisher: what the consumers of its producers can take, going
        down no faster than ``REMB_DECREASE_PER_SECOND`` (up at once)."""
        total = 0.0
        ssrcs: list[int] = []
        wanted = False
        for producer in self.producers.values():
            if producer.remb_enabled or producer.transport_cc_id is not None:
                wanted = True
            ssrcs += [s.ssrc for s in producer.streams if s.ssrc is not None]
            total += _producer_demand(producer)
        if not wanted or not ssrcs:
            return None
        last = self.remb_bitrate
        if last is not None and total < last:
            elapsed = max(0.0, now - self.remb_at)
            total = max(total, last * REMB_DECREASE_PER_SECOND**elapsed)
        self.remb_bitrate = total
        self.remb_at = now
        return Remb(ROUTER_RTCP_SSRC, int(total), tuple(ssrcs[:255]))

    # ---- feedback, bandwidth -----------------------------------------------------------

    def feedback(self, now: float) -> tuple[list[bytes], float | None, float | None]:
        """NACKs and transport-cc feedback to a publisher; rates; bandwidth plan; probes.

        Returns the compound packets to send, the rate of a bandwidth probe to run now
        (None: none; see :meth:`probe_burst`), and the rate of a recovery probe for
        paused video to run now (None: none; see :meth:`recovery_burst`)."""
        packets: list[RtcpPacket] = []
        for producer in self.producers.values():
            if producer.update_rates(now):
                self._on_streams_changed(producer, now)
            if producer.nack_enabled:
                packets += producer.nack_feedback(now)
        recorder = self.twcc_recorder
        if recorder is not None:
            media_ssrc = next(
                (s.ssrc for p in self.producers.values() for s in p.streams if s.ssrc is not None),
                0,
            )
            packets += recorder.feedback(ROUTER_RTCP_SSRC, media_ssrc)
        out = [build_rtcp(packets[start : start + 8]) for start in range(0, len(packets), 8)]
        if not self.consumers:
            return out, None, None
        estimate = self.estimator.estimate(now)
        last = self.last_estimate
        if (
            not self.planned
            or (estimate is None) != (last is None)
            or (estimate is not None and last is not None and abs(estimate - last) > 0.05 * last)
            or now - self.allocated_at >= 1.0
        ):
            self.plan(now)
        probe = self._maybe_probe(now)
        return out, probe, self._maybe_recover(now)

    def plan(self, now: float) -> None:
        """Share the transport's estimated bandwidth among its video consumers."""
        self.planned = True
        self.allocated_at = now
        estimator = self.estimator
        estimate = estimator.estimate(now)
        self.last_estimate = estimate
        audio = 0.0
        video: list[Consumer] = []
        demands = []
        for consumer in self.consumers.values():
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
        self.desired_bitrate = audio + sum(o[-1].bitrate for o in demands if o)
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

    def _maybe_probe(self, now: float) -> float | None:
        """The rate to probe at now, if the consumers want more than the estimate allows
        (None: no probe); the probe is then under way (:meth:`start_probe`)."""
        estimator = self.estimator
        if estimator.probes_finished > self.probe_results_seen and estimator.probe_results:
            self.probe_results_seen = estimator.probes_finished
            if estimator.probe_results[-1].success:
                self.probe_backoff = PROBE_BACKOFF
                self.planned = False
            else:
                self.probe_backoff = min(PROBE_BACKOFF_MAX, self.probe_backoff * 2)
            self.next_probe_at = now + self.probe_backoff
        if self.probing or estimator.probing or not estimator.expect_feedback:
            return None
        estimate = estimator.estimate(now)
        if estimate is not None and self.desired_bitrate <= estimate * BUDGET_SHARE:
            self.probe_to_peak = False  # the estimate covers the climb: nothing to catch up
            return None
        if (
            estimate is None
            or now < self.next_probe_at
            or now - estimator.last_overuse < 1.0
            or estimator.feedback_packets == 0
        ):
            return None
        # Step up at most to twice what arrives (or 1.5 times the estimate): a probe into a
        # bottleneck costs the media behind it in the queue. Once the loss policy took
        # video up again, the path likely carries what it carried before the loss.
        acked = estimator.acked_bitrate() or 0.0
        step = max(2 * acked, 1.5 * estimate, 300_000.0)
        if self.probe_to_peak:
            self.probe_to_peak = False
            step = max(step, 1.25 * (estimator.recent_peak(now) or 0.0))
        rate = min(self.desired_bitrate * 1.2, step)
        self.probing = True
        self.next_probe_at = now + self.probe_backoff
        return rate

    # ---- a probe -------------------------------------------------------------------------
    #
    # RTX copies of recent packets on top of the media, to reach a rate for
    # ``PROBE_DURATION``: the feedback tells whether the path carries it. The router's
    # probe task calls start_probe(), then probe_burst() every 10 ms until it returns
    # None, then end_probe().

    def start_probe(self, now: float) -> None:
        self.estimator.start_probe(now)
        self._probe_sent_at_start = self.estimator.bytes_sent

    def probe_burst(self, rate: float, start: float, now: float) -> list[bytearray] | None:
        """The packets that bring what went out since the probe started (at ``start``) up
        to ``rate``; None when the probe is over (its time is up, or no consumer can
        send a copy)."""
        if now - start >= PROBE_DURATION:
            return None
        estimator = self.estimator
        due = rate * (now - start + 0.01) / 8
        candidates = [
            c
            for c in self.consumers.values()
            if c.kind == "video" and c.rtx_ssrc is not None and c.packets_sent
        ]
        if not candidates:
            return None
        out = []
        turn = 0
        while estimator.bytes_sent - self._probe_sent_at_start < due:
            packet = candidates[turn % len(candidates)].probe_packet(now)
            turn += 1
            if packet is None:
                if turn > len(candidates):
                    break
                continue
            out.append(packet)
        return out

    def end_probe(self, now: float) -> None:
        self.estimator.end_probe(now)
        self.probing = False

    # ---- recovery from audio-only --------------------------------------------------------
    #
    # While the loss policy holds video of this transport paused, :class:`RecoveryProber`
    # decides when to probe the link with padding at the first layer's bitrate, and brings
    # video back when the probe arrives clean. The router's recovery task calls
    # start_recovery_probe(), then recovery_burst() every 10 ms until it returns None,
    # then end_recovery_probe().

    def _maybe_recover(self, now: float) -> float | None:
        """The rate of a recovery probe to run now (None: none); or video resumed at once
        when the prober says the link has healed."""
        recovery = self.recovery
        audio = self._nacked_audio() if recovery.paused else None
        action = recovery.tick(now, self.estimator, audio, can_probe=not self.probing)
        if action == "probe":
            rate = sum(
                _first_layer_bitrate(c.producer)
                for c in self._paused_for_network()
                if c.rtx_ssrc is not None
            )
            if rate <= 0:
                recovery.probe_failed(now)
                return None
            self.probing = True
            return rate
        if action == "resume":
            for consumer_id, policy in self.policies.items():
                consumer = self.consumers.get(consumer_id)
                if consumer is not None and policy.level <= LEVEL_PAUSED:
                    consumer.set_network_level(policy.resume(), now)
            self.planned = False
            self._probe_soon(now)
        return None

    def start_recovery_probe(self, now: float) -> None:
        self.recovery.probe_started(self.estimator.start_probe(now))
        self._recovery_sent = 0
        self._recovery_stalled = False

    def recovery_burst(self, rate: float, start: float, now: float) -> list[bytearray] | None:
        """Padding-only RTX packets on the paused video consumers' RTX streams that bring
        what the probe sent since ``start`` up to ``rate``; None when the probe is over
        (its time is up, or no paused consumer has padding to send)."""
        recovery = self.recovery
        if self._recovery_stalled or now - start >= recovery.settings.probe_duration:
            return None
        candidates = [c for c in self._paused_for_network() if c.rtx_ssrc is not None]
        if not candidates:
            return None
        due = rate * (now - start + 0.01) / 8
        size = recovery.settings.padding_size
        out: list[bytearray] = []
        while self._recovery_sent < due:
            stalled = True  # unless some consumer has padding to send
            for consumer in candidates:
                packet = consumer.padding_packet(now, size)
                if packet is not None:
                    stalled = False
                    out.append(packet)
                    self._recovery_sent += len(packet)
                    if self._recovery_sent >= due:
                        break
            if stalled:
                self._recovery_stalled = True
                break
        return out

    def end_recovery_probe(self, now: float) -> None:
        self.estimator.end_probe(now)
        self.recovery.probe_sent(now)
        self.probing = False

    def _probe_soon(self, now: float) -> None:
        """The loss policy took video up a level: the bandwidth probes start over (those
        that failed in the loss backed off for up to 30 s), and the next may go straight
        back to what the path carried before the loss (the estimate may have fallen
        meanwhile)."""
        self.probe_backoff = PROBE_BACKOFF
        self.next_probe_at = now
        self.probe_to_peak = True

    def _paused_for_network(self) -> Iterator[Consumer]:
        """The transport's video consumers the loss policy pauses (and nothing else does)."""
        for consumer_id, policy in self.policies.items():
            if policy.level <= LEVEL_PAUSED:
                consumer = self.consumers.get(consumer_id)
                if consumer is not None and consumer.active:
                    yield consumer

    def _nacked_audio(self) -> tuple[int, int] | None:
        """``(sent, NACKed)`` so far of the transport's audio consumers whose receiver has
        NACKed them (one that NACKs at all); ``None`` when there is none."""
        sent = nacked = 0
        for consumer in self.consumers.values():
            if consumer.kind == "audio" and consumer.nacks_total and consumer.active:
                sent += consumer.packets_sent
                nacked += consumer.nacks_total
        return (sent, nacked) if sent else None

    # ---- the weak-network policy -------------------------------------------------------

    def policy(self, now: float) -> QualityChange | None:
        """Once per policy interval: the loss of the transport's downlink sets its video
        consumers' levels; the network quality, when it changed."""
        down_loss, rtt = self._downlink_loss()
        for consumer_id, policy in self.policies.items():
            consumer = self.consumers.get(consumer_id)
            if consumer is None:
                continue
            started = consumer.first_sent_at
            if started is None or now - started < self._policy.interval:
                # The first interval of a consumer is the bandwidth estimate's to
                # settle in (what it lost meanwhile says little about the link).
                continue
            level = policy.update(down_loss)
            if level != consumer.network_level:
                if level > consumer.network_level:
                    self._probe_soon(now)
                consumer.set_network_level(level, now)
                self.planned = False
        self.recovery.set_paused(next(self._paused_for_network(), None) is not None, now)
        if not self.planned:
            self.plan(now)
        up_loss = self._uplink_loss()
        losses = [x for x in (down_loss, up_loss) if x is not None]
        if not losses:
            return None
        loss = max(losses)
        quality = network_quality(loss, None if rtt is None else rtt * 1000)
        if quality == self.quality:
            return None
        self.quality = quality
        return QualityChange(loss, rtt, quality)

    def _downlink_loss(self) -> tuple[float | None, float | None]:
        """Loss of what the router sent on this transport over the last interval, from
        the subscriber's receiver reports and NACKs of every stream
        (:func:`~trio_sfu.engine.layers.interval_loss`); and the mean RTT."""
        samples = []
        rtts = []
        for consumer in self.consumers.values():
            samples.append(consumer.loss_sample())
            if consumer.rtt is not None:
                rtts.append(consumer.rtt)
        loss = interval_loss(samples, MIN_LOSS_PACKETS)
        rtt = sum(rtts) / len(rtts) if rtts else None
        return loss, rtt

    def _uplink_loss(self) -> float | None:
        """Loss of what the publisher sent on this transport since the last interval."""
        expected = received = 0
        prior = self.uplink_prior
        for producer in self.producers.values():
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


def _first_layer_bitrate(producer: Producer) -> float:
    """What the lowest stream received of a producer costs, every temporal layer."""
    rates = _layer_rates(producer)
    return next((sum(r) for r in rates if r is not None), 0.0) or float(
        producer.rtp_parameters.encodings[0].max_bitrate or _DEFAULT_LAYER_BITRATES[0]
    )


def _producer_demand(producer: Producer) -> float:
    """What a publisher should send for a producer: every stream up to the highest one a
    consumer wants or still forwards (all of them while nobody consumes), with 20 %
    headroom.

    "Wants" is the preference under the loss policy (:meth:`Consumer.layer_options_cap`),
    not the target: the target falls back to the streams that arrive, and which streams
    arrive follows this demand (Chromium drops the simulcast streams its estimate does not
    cover), so a demand from targets could never bring back a stream once it stopped.
    "Still forwards": a switch down waits for the lower stream's keyframe and forwards
    the higher stream until then; a publisher that stopped that stream early would leave
    the subscriber with nothing to decode (Firefox did, for up to 0.9 s).
    """
    streams = producer.streams
    if producer.kind == "audio":
        return max(producer.bitrate(), 64_000.0) * 1.2
    consumers = [c for c in producer.consumers if c.active]
    if consumers:
        wanted = []
        for consumer in consumers:
            cap = consumer.layer_options_cap()
            if cap is not None:
                current = consumer.current_spatial
                wanted.append(cap[0] if current is None else max(cap[0], current))
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
