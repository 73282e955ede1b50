"""Every input trio-sfu reads from the network, as a fuzz target that needs no event loop
(:class:`~trio_sfu.testing.fuzzer.Target`): seeds, valid inputs made with the project's own
builders (signed STUN checks, a real DTLS flight, RTP with header extensions, RTCP of every
type, VP8 and H264 payloads, RFC 4571 streams, signaling requests of every type), and the
check that runs a case through the code that reads it. The seeds serve the other targets
too (:func:`~trio_sfu.testing.fuzz.fuzz_router`, :mod:`trio_sfu.testing.fuzz_live`).
"""

from __future__ import annotations

import contextlib
import json
import random
from typing import Any

from trio_sfu.errors import BadPacket, SfuError
from trio_sfu.testing.fuzzer import Target, mutate_json_bytes

__all__ = ["pure_targets", "rtcp_seed_packets", "rtp_seed_packets", "signaling_seeds"]


def _stun_target() -> Target:
    from trio_sfu.ice import IceLiteServer
    from trio_sfu.stun import (
        Method,
        StunMessage,
        build_binding_error,
        build_binding_request,
        build_binding_success,
        parse_stun_untrusted,
        request_ufrag_untrusted,
    )

    server = IceLiteServer(ufrag="fuzzufrag0000000", password="fuzzpassword0000000000000000")
    seeds = []
    for use_candidate, nomination in ((True, None), (False, None), (True, 7)):
        request, _ = build_binding_request(
            username=f"{server.ufrag}:client",
            password=server.password,
            priority=0x6E7F_00FF,
            ice_controlling_tiebreaker=0x1234_5678_9ABC_DEF0,
            use_candidate=use_candidate,
            nomination=nomination,
        )
        seeds.append(request)
    parsed = parse_stun_untrusted(seeds[0])
    seeds.append(build_binding_success(parsed, address=("127.0.0.1", 5000), password="p" * 22))
    seeds.append(build_binding_success(parsed, address=("::1", 5000), password="p" * 22))
    seeds.append(build_binding_error(parsed, 487, "Role Conflict", "p" * 22))
    seeds.append(StunMessage(Method.BINDING, parsed.message_class).encode(fingerprint=False))
    key = server.password.encode()
    now = [0.0]

    def check(data: bytes) -> None:
        request_ufrag_untrusted(data)  # never raises
        now[0] += 0.01
        server.receive_stun_untrusted(data, ("127.0.0.1", 5000), now[0])  # never raises
        server.poll(now[0])
        parse_stun_untrusted(data)
        parse_stun_untrusted(data, integrity_key=key, require_fingerprint=True)

    return Target("stun", seeds, check)


def _dtls_target() -> Target:
    from trio_sfu.dtls import DtlsCertificate, DtlsEndpoint, DtlsError, Fingerprint

    server_cert = DtlsCertificate.generate()
    client_cert = DtlsCertificate.generate()

    def pair() -> tuple[DtlsEndpoint, DtlsEndpoint]:
        server = DtlsEndpoint(certificate=server_cert, role="server")
        client = DtlsEndpoint(certificate=client_cert, role="client")
        server.set_remote_fingerprints(
            [Fingerprint("sha-256", client_cert.fingerprint("sha-256").value)]
        )
        client.set_remote_fingerprints(
            [Fingerprint("sha-256", server_cert.fingerprint("sha-256").value)]
        )
        return server, client

    # A real exchange: flight 1 (ClientHello), the server's flight, the client's last.
    server, client = pair()
    flight1 = client.start(0.0)
    flight2 = [d for data in flight1 for d in server.receive_untrusted(data, 0.0)]
    flight3 = [d for data in flight2 for d in client.receive_untrusted(data, 0.0)]
    flight4 = [d for data in flight3 for d in server.receive_untrusted(data, 0.0)]
    seeds = [*flight1, *flight2, *flight3, *flight4]
    state: dict[str, Any] = {"fresh": None, "waiting": None, "count": 0}

    def check(data: bytes) -> None:
        state["count"] += 1
        # A new server (most cases): only a ClientHello may start it.
        if state["fresh"] is None or state["fresh"].state != "new":
            state["fresh"] = DtlsEndpoint(certificate=server_cert, role="server")
        # A server in the middle of a handshake (waits for the client's last flight).
        if state["waiting"] is None or state["waiting"].state != "connecting":
            waiting, client = pair()
            for datagram in client.start(0.0):
                waiting.receive_untrusted(datagram, 0.0)
            state["waiting"] = waiting
        endpoint = state["fresh"] if state["count"] % 2 else state["waiting"]
        try:
            endpoint.receive_untrusted(data, 1.0)
            endpoint.handle_timeout(2.0)
        except DtlsError:
            pass  # a terminal failure of that association is documented

    return Target("dtls", seeds, check)


def rtp_seed_packets() -> list[bytes]:
    from trio_sfu.client.synthetic import (
        SyntheticPublisher,
        TransportWideCounter,
        audio_rtp_parameters,
        vp8_simulcast_rtp_parameters,
    )
    from trio_sfu.rtp.packet import RtpPacket

    rng = random.Random(1)
    seeds: list[bytes] = []
    counter = TransportWideCounter()
    audio = SyntheticPublisher(
        audio_rtp_parameters(ssrc=1111, audio_level=True, transport_cc=True),
        rng=rng,
        transport_counter=counter,
    )
    video = SyntheticPublisher(
        vp8_simulcast_rtp_parameters(transport_cc=True), rng=rng, transport_counter=counter
    )
    for index in range(3):
        seeds.append(audio.streams[0].opus_frame(now=index * 0.02, level=30))
    for stream in video.streams:
        seeds += stream.vp8_frame(keyframe=True, size=300, packets=2, now=0.0)
        seeds += stream.vp8_frame(keyframe=False, size=120, tid=1, layer_sync=True, now=0.03)
    seeds += [p for p in _h264_packets()]
    # Odd but valid layouts: CSRCs, two-byte extension profile, padding.
    seeds.append(
        RtpPacket(
            payload_type=96,
            sequence_number=65535,
            timestamp=0xFFFF_FFFF,
            ssrc=42,
            marker=True,
            csrcs=(1, 2, 3),
            extension_profile=0x1000,
            extension=bytes([1, 2, 0xAA, 0xBB, 3, 0, 0, 0]),
            payload=b"\x90\x80\x80\x01" + bytes(20),
            padding=bytes(3) + b"\x04",
        ).serialize()
    )
    return seeds


def _h264_packets() -> list[bytes]:
    from trio_sfu.rtp import h264
    from trio_sfu.rtp.packet import RtpPacket

    sps, pps = b"\x67\x42\xc0\x1f" + bytes(8), b"\x68\xce\x3c\x80"
    idr = b"\x65" + bytes(range(256)) * 4
    payloads = [h264.build_stap_a([sps, pps]), *h264.build_fu_a(idr, 400), b"\x41" + bytes(50)]
    return [
        RtpPacket(payload_type=102, sequence_number=i, timestamp=90, ssrc=7, payload=p).serialize()
        for i, p in enumerate(payloads)
    ]


def _rtp_target() -> Target:
    from trio_sfu.rtp.packet import (
        ExtensionRewriter,
        RtpPacket,
        find_extension_untrusted,
        rtp_layout_untrusted,
    )
    from trio_sfu.rtp.rtx import rtx_unwrap_untrusted

    rewriter = ExtensionRewriter({1: 4, 2: 2, 4: 1}, {3: b"\x01\x02"})

    def check(data: bytes) -> None:
        for ext_id in (1, 2, 3, 4, 9, 14):
            find_extension_untrusted(data, ext_id)
        rewriter.rewrite_untrusted(data)
        rtx_unwrap_untrusted(data, payload_type=96, ssrc=5)
        rtp_layout_untrusted(data)
        packet = RtpPacket.parse_untrusted(data)
        packet.extensions  # noqa: B018 (parses the block)
        if packet.serialize() != data:
            raise AssertionError("parse -> serialize is not the identity")

    return Target("rtp", rtp_seed_packets(), check)


def _extensions_target() -> Target:
    from trio_sfu.rtp import extensions as ext
    from trio_sfu.rtp.packet import parse_extensions_untrusted

    decoders = [
        ext.decode_sdes_item_untrusted,
        ext.decode_abs_send_time_untrusted,
        ext.decode_transport_wide_seq_untrusted,
        ext.decode_audio_level_untrusted,
        ext.decode_video_orientation_untrusted,
        ext.decode_playout_delay_untrusted,
        ext.decode_toffset_untrusted,
    ]
    seeds = [
        b"\xbe\xde" + bytes([0x10, ord("0"), 0x21, ord("r"), ord("0"), 0]) + bytes(2),
        b"\x10\x00" + bytes([1, 2, ord("r"), ord("1"), 3, 0, 4, 1, 0xFF, 0, 0, 0]),
        ext.encode_abs_send_time(12.5),
        ext.encode_transport_wide_seq(65000),
        ext.encode_sdes_item("mid-0"),
    ]

    def check(data: bytes) -> None:
        for profile in (0xBEDE, 0x1000, 0x1005):
            with contextlib.suppress(BadPacket):
                parse_extensions_untrusted(profile, data[2:] if len(data) > 2 else data)
        for decode in decoders:
            with contextlib.suppress(BadPacket):
                decode(data)

    return Target("rtp-extensions", seeds, check)


def rtcp_seed_packets() -> list[bytes]:
    from trio_sfu.rtcp import (
        Bye,
        Fir,
        GenericNack,
        Pli,
        ReceiverReport,
        Remb,
        ReportBlock,
        RtcpPacket,
        Sdes,
        SdesChunk,
        SenderReport,
        TransportCcFeedback,
        build_rtcp,
    )

    block = ReportBlock(ssrc=1111, fraction_lost=30, cumulative_lost=-5, highest_seq=70000,
                        jitter=40, lsr=0x1234_5678, dlsr=6553)  # fmt: skip
    packets: list[RtcpPacket] = [
        SenderReport(
            ssrc=1111,
            ntp_timestamp=0xE000_0000_0000_0000,
            rtp_timestamp=9000,
            packet_count=10,
            octet_count=1000,
            reports=(block,),
        ),
        ReceiverReport(ssrc=2222, reports=(block, block)),
        Sdes((SdesChunk.with_cname(1111, "cname"), SdesChunk.with_cname(2222, ""))),
        Bye((1111, 2222), b"gone"),
        GenericNack.from_seqs(2222, 1111, [1, 2, 5, 17, 65535, 0]),
        Pli(2222, 1111),
        Fir(2222, ((1111, 3), (3333, 255))),
        Remb(2222, 1_500_000, (1111, 3333)),
        TransportCcFeedback.from_arrivals(
            2222, 1111, 65530, 7, [0, 250, None, None, 1000, 9000, None, 70_000]
        ),
    ]
    seeds = [build_rtcp([packet]) for packet in packets]
    seeds.append(build_rtcp(packets[:4]))
    seeds.append(build_rtcp(packets[4:]))
    return seeds


def _rtcp_target() -> Target:
    from trio_sfu.rtcp import GenericNack, TransportCcFeedback, parse_rtcp_untrusted

    def check(data: bytes) -> None:
        for packet in parse_rtcp_untrusted(data):
            if isinstance(packet, GenericNack):
                packet.lost_seqs()
            elif isinstance(packet, TransportCcFeedback):
                packet.arrivals_us()

    return Target("rtcp", rtcp_seed_packets(), check)


def _vp8_target() -> Target:
    from trio_sfu.rtp import vp8
    from trio_sfu.rtp.packet import RtpPacket

    seeds = [RtpPacket.parse_untrusted(p).payload for p in rtp_seed_packets() if p[1] & 0x7F == 96]
    seeds += [bytes([0x10]), bytes([0x90, 0xE0, 0x80, 0x01, 0x05, 0x20]) + bytes(10)]

    def check(data: bytes) -> None:
        vp8.is_keyframe(data)
        info = vp8.summarize_untrusted(data)
        vp8.Vp8Descriptor.parse_untrusted(data)
        if info.picture_id is not None:
            vp8.rewrite_picture_id(data, 0x7ABC, 200)

    return Target("vp8", seeds, check)


def _h264_target() -> Target:
    from trio_sfu.rtp import h264
    from trio_sfu.rtp.packet import RtpPacket

    seeds = [RtpPacket.parse_untrusted(p).payload for p in _h264_packets()]

    def check(data: bytes) -> None:
        h264.is_keyframe(data)
        h264.parse_payload_untrusted(data)

    return Target("h264", seeds, check)


def _framing_target() -> Target:
    from trio_sfu.engine.rtc_sockets import FrameDecoder, classify_untrusted, frame

    payloads = [*rtp_seed_packets()[:3], *rtcp_seed_packets()[:3]]
    seeds = [b"".join(frame(p) for p in payloads), frame(b""), frame(bytes(300)) * 3]
    chunking = random.Random(2)

    def check(data: bytes) -> None:
        decoder = FrameDecoder()
        frames: list[bytes] = []
        pos = 0
        while pos < len(data):  # arbitrary TCP segmentation
            step = chunking.choice((1, 2, 3, 7, 64, 1500, 65536))
            frames += decoder.feed_untrusted(data[pos : pos + step])
            pos += step
        for item in frames:
            classify_untrusted(item)
        # The same frames as one read gives (reassembly independent of segmentation).
        if FrameDecoder().feed_untrusted(data) != frames:
            raise AssertionError("frames depend on how the stream was cut")
        if decoder.pending > 2 + 0xFFFF:
            raise AssertionError("the decoder buffers more than one frame")

    return Target("rfc4571", seeds, check, allowed=())


def signaling_seeds() -> list[dict[str, Any]]:
    """One valid request of every type (JSON objects, as a client would send)."""
    from trio_sfu.client.synthetic import audio_rtp_parameters, vp8_simulcast_rtp_parameters
    from trio_sfu.dtls import DtlsCertificate
    from trio_sfu.ortc import negotiation
    from trio_sfu.wire import unstructure

    caps = unstructure(
        negotiation.generate_router_rtp_capabilities(list(negotiation.DEFAULT_MEDIA_CODECS))
    )
    fp = DtlsCertificate.generate().fingerprint("sha-256")
    dtls = {"role": "client", "fingerprints": [{"algorithm": "sha-256", "value": fp.value}]}
    audio = unstructure(audio_rtp_parameters(ssrc=1234, audio_level=True))
    video = unstructure(vp8_simulcast_rtp_parameters(transport_cc=True))
    m = {"meetingId": "m"}
    t = {"transportId": "w0g1-0123456789abcdef"}
    data: list[tuple[str, dict[str, Any]]] = [
        ("rtc:join", {**m, "token": "a.b.c", "displayName": "Ann"}),
        ("rtc:getRouterRtpCapabilities", m),
        ("rtc:createTransport", {**m, "direction": "send", "forceTcp": False}),
        ("rtc:connectTransport", {**m, **t, "dtlsParameters": dtls}),
        ("rtc:restartIce", {**m, **t}),
        ("rtc:produce", {**m, **t, "kind": "audio", "rtpParameters": audio, "appData": {}}),
        ("rtc:produce", {**m, **t, "kind": "video", "rtpParameters": video, "paused": True}),
        ("rtc:closeProducer", {**m, "producerId": "p"}),
        ("rtc:pauseProducer", {**m, "producerId": "p"}),
        ("rtc:resumeProducer", {**m, "producerId": "p"}),
        ("rtc:consume", {**m, "producerId": "p", "rtpCapabilities": caps, "paused": False}),
        ("rtc:resumeConsumer", {**m, "consumerId": "c"}),
        ("rtc:pauseConsumer", {**m, "consumerId": "c"}),
        ("rtc:closeConsumer", {**m, "consumerId": "c"}),
        ("rtc:setPreferredLayers", {**m, "consumerId": "c", "spatialLayer": 1, "temporalLayer": 2}),
        ("rtc:getStats", {**m, "id": "x"}),
        ("rtc:leave", m),
    ]
    return [{"type": k, "requestId": str(i), "data": d} for i, (k, d) in enumerate(data)]


def _signaling_target() -> Target:
    from trio_sfu.signaling.messages import (
        decode_frame_untrusted,
        encode_message,
        error_message,
        frame_context,
        parse_envelope_untrusted,
        parse_request_untrusted,
    )

    seeds = [json.dumps(s).encode() for s in signaling_seeds()]

    def check(data: bytes) -> None:
        text = data.decode("utf-8", "surrogatepass" if b"\\ud" not in data else "replace")
        obj = decode_frame_untrusted(text)
        request_id, rtype = frame_context(obj)
        # An error answer to any frame can be sent.
        answer = error_message("invalid_message", "x", request_id=request_id, request=rtype)
        encode_message(answer).encode("utf-8")
        parse_request_untrusted(parse_envelope_untrusted(obj))
        # What was accepted can be relayed to other peers as it is: strict UTF-8 JSON
        # (a lone surrogate, a non-finite number or a nesting json cannot write fails here).
        json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8")

    return Target("signaling-json", seeds, check, allowed=(SfuError, UnicodeDecodeError),
                  mutate=mutate_json_bytes)  # fmt: skip


def _ortc_target() -> Target:
    """Produce and consume parameters that pass the schema, through negotiation (what the
    engine runs on them)."""
    from trio_sfu.ortc import negotiation
    from trio_sfu.ortc.types import RtpCapabilities, RtpParameters
    from trio_sfu.wire import structure_untrusted

    caps = negotiation.generate_router_rtp_capabilities(list(negotiation.DEFAULT_MEDIA_CODECS))
    seeds = [
        json.dumps(s["data"]).encode()
        for s in signaling_seeds()
        if s["type"] in ("rtc:produce", "rtc:consume")
    ]
    producer_params = structure_untrusted(json.loads(seeds[0])["rtpParameters"], RtpParameters)
    mapping = negotiation.get_producer_rtp_mapping(producer_params, caps, kind="audio")
    consumable = negotiation.get_consumable_rtp_parameters("audio", producer_params, caps, mapping)

    def check(data: bytes) -> None:
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return  # not JSON: the signaling-json target's business
        if not isinstance(obj, dict):
            return
        if "rtpParameters" in obj:
            params = structure_untrusted(obj["rtpParameters"], RtpParameters)
            for kind in ("audio", "video"):
                try:
                    mapped = negotiation.get_producer_rtp_mapping(params, caps, kind=kind)
                except SfuError:
                    continue
                negotiation.get_consumable_rtp_parameters(kind, params, caps, mapped)
                negotiation.get_pipe_consumer_rtp_parameters(params)
        if "rtpCapabilities" in obj:
            their = structure_untrusted(obj["rtpCapabilities"], RtpCapabilities)
            if negotiation.can_consume(consumable, their):
                negotiation.get_consumer_rtp_parameters(consumable, their, mid="3")

    return Target("ortc", seeds, check, allowed=(SfuError, ValueError), mutate=mutate_json_bytes)


def pure_targets() -> list[Target]:
    """Every target that needs no event loop."""
    return [
        _stun_target(),
        _dtls_target(),
        _rtp_target(),
        _extensions_target(),
        _rtcp_target(),
        _vp8_target(),
        _h264_target(),
        _framing_target(),
        _signaling_target(),
        _ortc_target(),
    ]
