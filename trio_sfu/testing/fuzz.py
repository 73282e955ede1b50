"""Fuzzing every input trio-sfu reads from the network (``scripts/fuzz``, ``tests/test_fuzz.py``).

A mutation fuzzer in the manner of atheris / libFuzzer, without their coverage feedback:
each target has seeds (valid inputs made with the project's own builders: signed STUN
checks, a real DTLS flight, RTP with header extensions, RTCP of every type, VP8 and H264
payloads, RFC 4571 streams, signaling requests of every type) and a check that runs the
input through the code that reads it. Each case is a seed put through one to eight random
mutations (bit flips, "interesting" bytes, 16/32-bit lengths and counts, insertions,
deletions, duplicated or spliced ranges, truncation); JSON is also mutated as a structure
(values of every JSON type, huge and negative numbers, long and odd unicode strings, deep
nesting, missing and unknown fields). A case fails when the code raises anything but the
target's documented errors (``BadPacket``; ``SfuError`` for signaling; nothing at all for
the functions documented never to raise).

Pure targets run in a plain loop; the ``router`` target drives a real Router (through an
in-process Worker) with what an *authenticated* malicious client could send after SRTP:
mutated RTP into its producers, mutated RTCP feedback about its consumers, and fuzzed
``produce``/``consume`` parameters through the engine API, with the router's periodic
work (reports, feedback, layer policy) run in between. ``live`` (see
:func:`fuzz_live_call`) sprays a running server from strangers' sockets and a malicious
peer while a real call goes on, and checks that the call keeps getting packets.

Run ``python -m trio_sfu.testing.fuzz --seconds N`` (``scripts/fuzz``): every target for
``N`` seconds, a table of cases run and failures, reproducers written to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import logging
import random
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Literal, final

import attrs

from trio_sfu.errors import BadPacket, SfuError

__all__ = [
    "FuzzResult",
    "Target",
    "fuzz_target",
    "main",
    "mutate",
    "mutate_json",
    "pure_targets",
]

# ---- mutation ---------------------------------------------------------------------------

_BYTES: Final = (0x00, 0x01, 0x02, 0x03, 0x10, 0x14, 0x16, 0x17, 0x3F, 0x40, 0x7F, 0x80, 0x81,
                 0xBF, 0xC0, 0xC8, 0xC9, 0xCD, 0xCE, 0xFE, 0xFF)  # fmt: skip
_U16: Final = (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0x3FFF, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
_U32: Final = (0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x2112_A442, 0x0001_0000)
MAX_SIZE: Final = 4096


def mutate(data: bytes, rng: random.Random, corpus: Sequence[bytes] = ()) -> bytes:
    """``data`` after one to eight random mutations (at most :data:`MAX_SIZE` bytes)."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        size = len(buf)
        op = rng.randrange(12)
        pos = rng.randrange(size) if size else 0
        if op == 0 and size:  # flip a bit
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and size:  # an interesting byte
            buf[pos] = rng.choice(_BYTES)
        elif op == 2 and size >= 2:  # an interesting 16-bit value (lengths, counts)
            pos = rng.randrange(size - 1)
            value = rng.choice(_U16)
            if rng.random() < 0.3:
                value = (size - pos + rng.randrange(-8, 9)) & 0xFFFF  # a length near the rest
            buf[pos : pos + 2] = struct.pack("!H", value)
        elif op == 3 and size >= 4:
            pos = rng.randrange(size - 3)
            buf[pos : pos + 4] = struct.pack("!I", rng.choice(_U32))
        elif op == 4:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.choice((1, 2, 4, 16, 64)))
        elif op == 5 and size:  # delete a range
            del buf[pos : pos + rng.choice((1, 2, 4, 16, 64))]
        elif op == 6 and size:  # duplicate a range
            end = min(size, pos + rng.choice((1, 4, 16, 256)))
            at = rng.randrange(size + 1)
            buf[at:at] = buf[pos:end]
        elif op == 7:  # truncate
            del buf[rng.randrange(size + 1) :]
        elif op == 8 and corpus:  # splice with another seed
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:pos] + bytearray(other[cut:])
        elif op == 9:  # append garbage
            buf += rng.randbytes(rng.choice((1, 3, 8, 100)))
        elif op == 10 and size:  # random byte
            buf[pos] = rng.randrange(256)
        elif op == 11 and size >= 2:  # swap two bytes
            other_pos = rng.randrange(size)
            buf[pos], buf[other_pos] = buf[other_pos], buf[pos]
    return bytes(buf[:MAX_SIZE])


_JSON_VALUES: Final[tuple[Any, ...]] = (
    None,
    True,
    False,
    0,
    -1,
    1,
    255,
    256,
    65536,
    2**31,
    -(2**31) - 1,
    2**32,
    2**53 + 1,
    2**63,
    -(2**63) - 1,
    2**64 + 7,
    10**40,
    0.5,
    -0.0,
    1e308,
    -1e-300,
    "",
    "0",
    "x",
    "audio",
    "video",
    "video/VP8",
    "audio/opus",
    "sha-256",
    "client",
    "server",
    "r0",
    "\u0000",
    "\ud800",
    "\U0001f3a5" * 50,
    "\u202e\u0301\ufeff",
    "a" * 70,
    "b" * 5000,
    "ü" * 300,
    [],
    {},
    [None],
    [[[]]],
    {"": None},
    {"a": [1, {"b": "c"}]},
)


def _deep(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value] if depth % 2 else {"k": value}
    return value


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            yield from _paths(value, (*prefix, index))


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        obj = obj[part]
    return obj


def _random_value(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.05:
        return _deep(rng.choice((50, 300)))
    if roll < 0.1:
        return [copy.deepcopy(rng.choice(_JSON_VALUES)) for _ in range(rng.choice((10, 1000)))]
    if roll < 0.15:
        return {
            f"k{i}": copy.deepcopy(rng.choice(_JSON_VALUES)) for i in range(rng.choice((5, 500)))
        }
    return copy.deepcopy(rng.choice(_JSON_VALUES))


def mutate_json(obj: Any, rng: random.Random, corpus: Sequence[Any] = ()) -> Any:
    """A deep copy of ``obj`` after one to four structural mutations."""
    out = copy.deepcopy(obj)
    for _ in range(rng.choice((1, 1, 2, 4))):
        paths = list(_paths(out))
        path = rng.choice(paths)
        if not path:
            if rng.random() < 0.5 and corpus:
                out = copy.deepcopy(rng.choice(corpus))
            elif isinstance(out, dict):
                out[rng.choice(("type", "requestId", "data", "extra"))] = _random_value(rng)
            continue
        parent = _get(out, path[:-1])
        key = path[-1]
        op = rng.randrange(6)
        if op <= 2:  # a value of another type or size
            parent[key] = _random_value(rng)
        elif op == 3:  # remove it
            del parent[key]
        elif op == 4 and isinstance(parent, dict):  # an unknown sibling
            parent[rng.choice(("zz", "", "type", "ssrc", "id", "Ssrc", "__proto__"))] = (
                _random_value(rng)
            )
        elif op == 5:  # the value of another path of the object (types mixed up)
            source = rng.choice(paths)
            if source and source[: len(path)] != path:
                parent[key] = copy.deepcopy(_get(out, source))
    return out


# ---- targets ------------------------------------------------------------------------------


@final
@attrs.define
class Target:
    """One input class: its seeds, the check of one case, the errors it may raise."""

    name: str
    seeds: list[bytes]
    check: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...] = (BadPacket,)
    mutate: Callable[[bytes, random.Random, Sequence[bytes]], bytes] = mutate


@final
@attrs.define
class FuzzResult:
    target: str
    cases: int = 0
    seconds: float = 0.0
    #: Distinct failures: (exception type and where it was raised) -> (input, traceback).
    failures: dict[str, tuple[bytes, str]] = attrs.Factory(dict)


def _failure_key(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else "?"
    return f"{type(exc).__name__} at {where}"


def fuzz_target(
    target: Target, *, seconds: float | None = None, cases: int | None = None, seed: int = 0
) -> FuzzResult:
    """Run ``target`` for ``seconds`` or ``cases`` (whichever comes first); seeds are
    checked first, unmutated."""
    rng = random.Random(seed)
    result = FuzzResult(target.name)
    start = time.monotonic()
    deadline = start + seconds if seconds is not None else float("inf")
    inputs = iter(target.seeds)
    while (cases is None or result.cases < cases) and time.monotonic() < deadline:
        data = next(inputs, None)
        if data is None:
            data = target.mutate(rng.choice(target.seeds), rng, target.seeds)
        result.cases += 1
        try:
            target.check(data)
        except target.allowed:
            pass
        except Exception as exc:
            key = _failure_key(exc)
            if key not in result.failures:
                result.failures[key] = (data, traceback.format_exc())
    result.seconds = time.monotonic() - start
    return result


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


def _rtp_seeds() -> list[bytes]:
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

    return Target("rtp", _rtp_seeds(), check)


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


def _rtcp_seeds() -> list[bytes]:
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

    return Target("rtcp", _rtcp_seeds(), check)


def _vp8_target() -> Target:
    from trio_sfu.rtp import vp8
    from trio_sfu.rtp.packet import RtpPacket

    seeds = [RtpPacket.parse_untrusted(p).payload for p in _rtp_seeds() if p[1] & 0x7F == 96]
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

    payloads = [*_rtp_seeds()[:3], *_rtcp_seeds()[:3]]
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


def _json_mutate(data: bytes, rng: random.Random, corpus: Sequence[bytes]) -> bytes:
    if rng.random() < 0.25:
        return mutate(data, rng, corpus)  # byte level: broken JSON, odd UTF-8
    try:
        obj = json.loads(data)
    except ValueError:
        return mutate(data, rng, corpus)
    if rng.random() < 0.02:  # nesting deeper than any decoder recursion limit
        depth = rng.choice((2000, 100_000))
        return b'{"type": "rtc:join", "data": ' + b"[" * depth + b"]" * depth + b"}"
    objects = [json.loads(seed) for seed in corpus[:40]]
    try:
        text = json.dumps(mutate_json(obj, rng, objects))
    except (RecursionError, ValueError):  # nested past the encoder's limit
        return mutate(data, rng, corpus)
    return text.encode("utf-8", "surrogatepass")


def _signaling_target() -> Target:
    from trio_sfu.signaling.messages import (
        decode_frame_untrusted,
        frame_context,
        parse_envelope_untrusted,
        parse_request_untrusted,
    )

    seeds = [json.dumps(s).encode() for s in signaling_seeds()]

    def check(data: bytes) -> None:
        text = data.decode("utf-8", "surrogatepass" if b"\\ud" not in data else "replace")
        obj = decode_frame_untrusted(text)
        frame_context(obj)
        parse_request_untrusted(parse_envelope_untrusted(obj))

    return Target("signaling-json", seeds, check, allowed=(SfuError, UnicodeDecodeError),
                  mutate=_json_mutate)  # fmt: skip


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

    return Target("ortc", seeds, check, allowed=(SfuError, ValueError), mutate=_json_mutate)


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


# ---- the router (trio) --------------------------------------------------------------------


async def fuzz_router(*, seconds: float | None = None, cases: int | None = None,
                      seed: int = 0) -> FuzzResult:  # fmt: skip
    """A real Router of an in-process Worker, fed what an authenticated client could send
    after SRTP, and fuzzed produce/consume parameters. Nothing may raise but SfuError from
    the API calls; the packet handlers and the periodic work must never raise."""
    import trio

    from trio_sfu.client.synthetic import audio_rtp_parameters, vp8_simulcast_rtp_parameters
    from trio_sfu.engine.worker import WorkerSettings, open_worker
    from trio_sfu.ortc.types import RtpCapabilities, RtpParameters
    from trio_sfu.rtcp import GenericNack, Pli, ReceiverReport, ReportBlock, build_rtcp
    from trio_sfu.wire import structure_untrusted

    rng = random.Random(seed)
    result = FuzzResult("router")
    settings = WorkerSettings(rtc_port=0, transport_connect_timeout=None)
    start = time.monotonic()
    deadline = start + seconds if seconds is not None else float("inf")
    async with open_worker(settings) as worker:
        router_id = await worker.create_router(lambda event: None)
        router = worker._routers[router_id]
        send = (await worker.create_webrtc_transport(router_id)).transport_id
        recv = (await worker.create_webrtc_transport(router_id)).transport_id
        caps = worker.rtp_capabilities
        await worker.produce(send, "audio", audio_rtp_parameters(ssrc=1111, audio_level=True,
                                                                transport_cc=True))  # fmt: skip
        video_id = await worker.produce(send, "video", vp8_simulcast_rtp_parameters())
        producers = list(router.producers)
        consumer_ssrcs = []
        for producer_id in producers:
            info = await worker.consume(recv, producer_id, caps, paused=False)
            consumer_ssrcs += [e.ssrc for e in info.rtp_parameters.encodings if e.ssrc]
        await worker.set_consumer_preferred_layers(
            next(iter(router.transports[recv].consumers)), 2, 2
        )
        send_entry, recv_entry = router.transports[send], router.transports[recv]
        rtp_seeds = _rtp_seeds()
        rtcp_seeds = _rtcp_seeds()
        for ssrc in consumer_ssrcs:  # feedback about the consumers, as a subscriber sends
            rtcp_seeds.append(build_rtcp([GenericNack.from_seqs(9, ssrc, [1, 2, 3, 40])]))
            rtcp_seeds.append(build_rtcp([Pli(9, ssrc)]))
            rtcp_seeds.append(
                build_rtcp([ReceiverReport(9, (ReportBlock(ssrc, 80, 3, 100, 9, 0, 0),))])
            )
        api_seeds = [
            json.dumps(s["data"]).encode()
            for s in signaling_seeds()
            if s["type"] in ("rtc:produce", "rtc:consume")
        ]

        async def api_case(data: bytes) -> None:
            try:
                obj = json.loads(data)
            except (ValueError, RecursionError):
                return
            if not isinstance(obj, dict):
                return
            if "rtpParameters" in obj:
                params = structure_untrusted(obj["rtpParameters"], RtpParameters)
                kind: Literal["audio", "video"] = "audio" if obj.get("kind") == "audio" else "video"
                producer_id = await worker.produce(send, kind, params)
                await worker.consume(recv, producer_id, caps, paused=False)
                router._on_rtp(send_entry, rng.choice(rtp_seeds), trio.current_time())
                await worker.close_producer(producer_id)
            elif "rtpCapabilities" in obj:
                theirs = structure_untrusted(obj["rtpCapabilities"], RtpCapabilities)
                info = await worker.consume(recv, video_id, theirs, paused=False)
                await worker.close_consumer(info.consumer_id)

        while (cases is None or result.cases < cases) and time.monotonic() < deadline:
            result.cases += 1
            roll = rng.random()
            if roll < 0.5:
                data, kind = mutate(rng.choice(rtp_seeds), rng, rtp_seeds), "rtp"
            elif roll < 0.9:
                data, kind = mutate(rng.choice(rtcp_seeds), rng, rtcp_seeds), "rtcp"
            else:
                data, kind = _json_mutate(rng.choice(api_seeds), rng, api_seeds), "api"
            try:
                if kind == "rtp":
                    router._on_rtp(send_entry, data, trio.current_time())
                elif kind == "rtcp":
                    router._on_rtcp(
                        recv_entry if rng.random() < 0.7 else send_entry, data, trio.current_time()
                    )
                else:
                    with contextlib.suppress(SfuError, ValueError):
                        await api_case(data)
                if result.cases % 64 == 0:
                    now = trio.current_time()
                    for entry in (send_entry, recv_entry):
                        router._feedback_to(entry, now)
                        router._send_reports_to(entry, now)
                        router._policy_for(entry, now)
                    await trio.lowlevel.checkpoint()
            except Exception as exc:
                key = f"{kind}: {_failure_key(exc)}"
                if key not in result.failures:
                    result.failures[key] = (data, traceback.format_exc())
        worker.close()
    result.seconds = time.monotonic() - start
    return result


# ---- the command ------------------------------------------------------------------------


def _report(results: Sequence[FuzzResult], out: Path | None) -> int:
    print(f"{'target':<16} {'cases':>10} {'cases/s':>9} {'failures':>9}")
    failed = 0
    for result in results:
        rate = result.cases / result.seconds if result.seconds else 0.0
        print(f"{result.target:<16} {result.cases:>10} {rate:>9.0f} {len(result.failures):>9}")
        for key, (data, text) in result.failures.items():
            failed += 1
            digest = hashlib.sha256(data).hexdigest()[:12]
            print(f"\n--- {result.target}: {key} (input {digest}: {data[:80].hex()})\n{text}")
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{result.target}-{digest}.bin").write_bytes(data)
    total = sum(r.cases for r in results)
    print(f"{'total':<16} {total:>10} {'':>9} {failed:>9}")
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per target [10]")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="random seed")
    parser.add_argument("--target", action="append", help="only these targets (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("fuzz-failures"),
                        help="where reproducers go [fuzz-failures/]")  # fmt: skip
    parser.add_argument("--live-seconds", type=float, default=None,
                        help="the live call target's length [--seconds]")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    import trio

    wanted = set(args.target or [])
    print(f"fuzz: {args.seconds:g} s per target, seed {args.seed}")
    results: list[FuzzResult] = []
    for target in pure_targets():
        if not wanted or target.name in wanted:
            results.append(fuzz_target(target, seconds=args.seconds, seed=args.seed))
            print(f"  {target.name}: {results[-1].cases} cases", file=sys.stderr)
    if not wanted or "router" in wanted:
        results.append(trio.run(lambda: fuzz_router(seconds=args.seconds, seed=args.seed)))
    if not wanted or "live" in wanted:
        from trio_sfu.testing.fuzz_live import fuzz_live_call

        live = args.live_seconds if args.live_seconds is not None else args.seconds
        results.extend(trio.run(lambda: fuzz_live_call(seconds=live, seed=args.seed)))
    return 1 if _report(results, args.out) else 0


if __name__ == "__main__":
    sys.exit(main())
