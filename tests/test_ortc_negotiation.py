"""Codec negotiation against what real Chromium + mediasoup-client sent and accepted."""

from __future__ import annotations

import random
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_ortc_types import load, needs_fixtures
from trio_sfu.errors import InvalidMessageError, UnsupportedError
from trio_sfu.ortc.negotiation import (
    DEFAULT_MEDIA_CODECS,
    URI_ABS_SEND_TIME,
    URI_MID,
    URI_RID,
    URI_TRANSPORT_CC,
    RtpMapping,
    ScalabilityMode,
    can_consume,
    consumer_type,
    fill_cname,
    generate_router_rtp_capabilities,
    get_consumable_rtp_parameters,
    get_consumer_rtp_parameters,
    get_producer_rtp_mapping,
    parse_scalability_mode,
    pick_transport_cname,
)
from trio_sfu.ortc.types import (
    MediaKind,
    RtcpFeedback,
    RtcpParameters,
    RtpCapabilities,
    RtpCodecCapability,
    RtpCodecParameters,
    RtpEncodingParameters,
    RtpHeaderExtensionParameters,
    RtpParameters,
    RtxParameters,
)
from trio_sfu.wire import structure_untrusted, unstructure

# The media codecs router-rtp-capabilities.json was written for (its README).
FIXTURE_MEDIA_CODECS = [
    RtpCodecCapability(kind="audio", mime_type="audio/opus", clock_rate=48000, channels=2),
    RtpCodecCapability(kind="video", mime_type="video/VP8", clock_rate=90000),
    RtpCodecCapability(
        kind="video",
        mime_type="video/H264",
        clock_rate=90000,
        parameters={
            "packetization-mode": 1,
            "profile-level-id": "42e01f",
            "level-asymmetry-allowed": 1,
        },
    ),
]

PAIRS = [
    ("produce-audio-opus.json", "consume-audio-opus.json"),
    ("produce-video-vp8-simulcast.json", "consume-video-vp8.json"),
    ("produce-video-h264-simulcast.json", "consume-video-h264.json"),
]


def router_caps() -> RtpCapabilities:
    return generate_router_rtp_capabilities(FIXTURE_MEDIA_CODECS)


def device_caps() -> RtpCapabilities:
    return structure_untrusted(load("device-rtp-capabilities.chromium.json"), RtpCapabilities)


def produced(name: str) -> tuple[MediaKind, RtpParameters]:
    data = load(name)
    return data["kind"], structure_untrusted(data["rtpParameters"], RtpParameters)


def opus(pt: int = 111) -> RtpCodecParameters:
    return RtpCodecParameters(mime_type="audio/opus", payload_type=pt, clock_rate=48000, channels=2)


def vp8(pt: int = 96) -> RtpCodecParameters:
    return RtpCodecParameters(mime_type="video/VP8", payload_type=pt, clock_rate=90000)


def rtx(pt: int, apt: Any) -> RtpCodecParameters:
    return RtpCodecParameters(
        mime_type="video/rtx", payload_type=pt, clock_rate=90000, parameters={"apt": apt}
    )


def simulcast(*codecs: RtpCodecParameters, rids: tuple[str, ...] = ("r0", "r1", "r2")) -> Any:
    return RtpParameters(
        codecs=list(codecs),
        encodings=[
            RtpEncodingParameters(rid=rid, scalability_mode="L1T3", max_bitrate=100_000 * (i + 1))
            for i, rid in enumerate(rids)
        ],
        header_extensions=[
            RtpHeaderExtensionParameters(uri=URI_MID, id=4),
            RtpHeaderExtensionParameters(uri=URI_RID, id=10),
        ],
        rtcp=RtcpParameters(cname="", reduced_size=True),
    )


# --------------------------------------------------------------------------------------
# Router capabilities


@needs_fixtures
def test_router_capabilities_equal_the_fixture() -> None:
    assert unstructure(router_caps()) == load("router-rtp-capabilities.json")


def test_default_media_codecs() -> None:
    caps = generate_router_rtp_capabilities()
    assert caps == generate_router_rtp_capabilities(DEFAULT_MEDIA_CODECS)
    summary = [
        (c.mime_type, c.preferred_payload_type, c.parameters.get("profile-level-id"))
        for c in caps.codecs
    ]
    assert summary == [
        ("audio/opus", 100, None),
        ("video/VP8", 101, None),
        ("video/rtx", 102, None),
        ("video/H264", 103, "4d0032"),
        ("video/rtx", 104, None),
        ("video/H264", 105, "42e01f"),
        ("video/rtx", 106, None),
    ]
    assert [c.parameters.get("apt") for c in caps.codecs if c.mime_type == "video/rtx"] == [
        101,
        103,
        105,
    ]
    audio_fb = [(f.type, f.parameter) for f in caps.codecs[0].rtcp_feedback]
    assert audio_fb == [("nack", ""), ("transport-cc", "")]
    video_fb = [(f.type, f.parameter) for f in caps.codecs[1].rtcp_feedback]
    assert video_fb == [
        ("nack", ""),
        ("nack", "pli"),
        ("ccm", "fir"),
        ("goog-remb", ""),
        ("transport-cc", ""),
    ]
    assert caps.codecs[2].rtcp_feedback == [] and caps.codecs[2].channels is None
    ids = {e.preferred_id for e in caps.header_extensions}
    assert sorted(ids) == [1, 2, 3, 4, 5, 8, 10, 11, 12, 13, 14]
    # One id per URI, whatever the kind.
    assert len({(e.uri, e.preferred_id) for e in caps.header_extensions}) == len(ids)


def test_preferred_payload_types_are_kept_and_skipped() -> None:
    caps = generate_router_rtp_capabilities(
        [
            attrs.evolve(FIXTURE_MEDIA_CODECS[0], preferred_payload_type=101),
            FIXTURE_MEDIA_CODECS[1],
            RtpCodecCapability(kind="audio", mime_type="audio/pcmu", clock_rate=8000),
        ]
    )
    assert [(c.mime_type, c.preferred_payload_type) for c in caps.codecs] == [
        ("audio/opus", 101),
        ("video/VP8", 100),
        ("video/rtx", 102),
        ("audio/PCMU", 0),  # the static payload type, canonical spelling, channels 1
    ]
    assert caps.codecs[3].channels == 1


@pytest.mark.parametrize(
    ("codec", "message"),
    [
        (
            RtpCodecCapability(kind="video", mime_type="video/XYZ", clock_rate=90000),
            "mediaCodecs[1].mimeType",
        ),
        (
            RtpCodecCapability(kind="audio", mime_type="audio/opus", clock_rate=44100),
            "clockRate 44100",
        ),
        (
            RtpCodecCapability(kind="audio", mime_type="audio/opus", clock_rate=48000, channels=1),
            "channels",
        ),
        (
            RtpCodecCapability(kind="video", mime_type="video/VP8", clock_rate=90000, channels=2),
            "channels",
        ),
        (RtpCodecCapability(kind="audio", mime_type="video/VP8", clock_rate=90000), "kind"),
        (RtpCodecCapability(kind="video", mime_type="video/rtx", clock_rate=90000), "RTX"),
        (
            RtpCodecCapability(
                kind="video",
                mime_type="video/H264",
                clock_rate=90000,
                parameters={"profile-level-id": "ff0000"},
            ),
            "profile-level-id",
        ),
        (
            RtpCodecCapability(
                kind="video",
                mime_type="video/H264",
                clock_rate=90000,
                parameters={"packetization-mode": 7},
            ),
            "packetization-mode",
        ),
        (
            RtpCodecCapability(
                kind="video", mime_type="video/VP8", clock_rate=90000, preferred_payload_type=128
            ),
            "0-127",
        ),
        (
            RtpCodecCapability(
                kind="video", mime_type="video/VP8", clock_rate=90000, preferred_payload_type=5
            ),
            "duplicated",
        ),
    ],
)
def test_bad_media_codecs(codec: RtpCodecCapability, message: str) -> None:
    first = attrs.evolve(FIXTURE_MEDIA_CODECS[0], preferred_payload_type=5)
    with pytest.raises(UnsupportedError) as info:
        generate_router_rtp_capabilities([first, codec])
    assert message in info.value.message


# --------------------------------------------------------------------------------------
# Producer mapping


@needs_fixtures
@pytest.mark.parametrize(
    ("name", "codecs", "rids", "extensions"),
    [
        (
            "produce-audio-opus.json",
            {111: 100},
            [None],
            {4: URI_MID, 2: URI_ABS_SEND_TIME, 3: URI_TRANSPORT_CC},
        ),
        (
            "produce-video-vp8-simulcast.json",
            {96: 101, 97: 102},
            ["r0", "r1", "r2"],
            {4: URI_MID, 10: URI_RID, 3: URI_TRANSPORT_CC},
        ),
        (
            "produce-video-h264-simulcast.json",
            {108: 103, 109: 104},
            ["r0", "r1", "r2"],
            {4: URI_MID, 10: URI_RID, 2: URI_ABS_SEND_TIME},
        ),
    ],
)
def test_producer_mapping_of_chromium_parameters(
    name: str, codecs: dict[int, int], rids: list[str | None], extensions: dict[int, str]
) -> None:
    kind, params = produced(name)
    before = unstructure(params)
    mapping = get_producer_rtp_mapping(params, router_caps(), kind=kind, rng=random.Random(7))
    assert unstructure(params) == before  # the input is not modified
    assert mapping.codecs == codecs
    assert [e.rid for e in mapping.encodings] == rids
    if kind == "audio":
        assert mapping.encodings[0].ssrc == params.encodings[0].ssrc
    else:
        assert all(e.ssrc is None and e.scalability_mode == "L1T3" for e in mapping.encodings)
    mapped = [e.mapped_ssrc for e in mapping.encodings]
    assert len(set(mapped)) == len(mapped) and all(0 < s < 2**32 for s in mapped)
    assert extensions.items() <= mapping.header_extensions.items()
    assert len(mapping.header_extensions) == len(params.header_extensions)


@needs_fixtures
def test_h264_producer_maps_to_the_router_codec_with_its_profile() -> None:
    # The default router has H264 Main (103) and Constrained Baseline (105): Chromium's
    # 42e01f is Constrained Baseline.
    kind, params = produced("produce-video-h264-simulcast.json")
    mapping = get_producer_rtp_mapping(params, generate_router_rtp_capabilities(), kind=kind)
    assert mapping.codecs == {108: 105, 109: 106}
    baseline = attrs.evolve(
        params.codecs[0], parameters={"packetization-mode": 1, "profile-level-id": "42001f"}
    )
    with pytest.raises(UnsupportedError, match="video/H264"):
        get_producer_rtp_mapping(attrs.evolve(params, codecs=[baseline]), router_caps())
    mode0 = attrs.evolve(params.codecs[0], parameters={"profile-level-id": "42e01f"})
    with pytest.raises(UnsupportedError):
        get_producer_rtp_mapping(attrs.evolve(params, codecs=[mode0]), router_caps())


def test_unsupported_codec_and_missing_router_rtx() -> None:
    vp9 = RtpCodecParameters(mime_type="video/VP9", payload_type=98, clock_rate=90000)
    with pytest.raises(UnsupportedError, match=r"codecs\[0\].*video/VP9"):
        get_producer_rtp_mapping(simulcast(vp9), router_caps())
    no_rtx_router = attrs.evolve(
        router_caps(), codecs=[c for c in router_caps().codecs if c.mime_type != "video/rtx"]
    )
    with pytest.raises(UnsupportedError, match=r"codecs\[1\].*no RTX"):
        get_producer_rtp_mapping(simulcast(vp8(), rtx(97, 96)), no_rtx_router)


def audio_params(**changes: Any) -> RtpParameters:
    params = RtpParameters(
        codecs=[opus()],
        encodings=[RtpEncodingParameters(ssrc=1234)],
        header_extensions=[RtpHeaderExtensionParameters(uri=URI_MID, id=4)],
        rtcp=RtcpParameters(cname="abc"),
    )
    return attrs.evolve(params, **changes)


@pytest.mark.parametrize(
    ("params", "field", "text"),
    [
        (audio_params(codecs=[]), "rtpParameters.codecs", "at least one"),
        (simulcast(vp8(96), rtx(96, 96)), "rtpParameters.codecs[1].payloadType", "two codecs"),
        (simulcast(vp8(96), rtx(97, 95)), "rtpParameters.codecs[1].parameters.apt", "no media"),
        (simulcast(vp8(96), rtx(97, None)), "rtpParameters.codecs[1].parameters.apt", "needs apt"),
        (simulcast(vp8(96), rtx(97, "x")), "rtpParameters.codecs[1].parameters.apt", "needs apt"),
        (simulcast(rtx(97, 96)), "rtpParameters.codecs", "only RTX"),
        (audio_params(codecs=[opus(128)]), "rtpParameters.codecs[0].payloadType", "0-127"),
        (audio_params(codecs=[opus(72)]), "rtpParameters.codecs[0].payloadType", "RTCP"),
        (audio_params(codecs=[opus(), vp8()]), "rtpParameters.codecs[1].mimeType", "audio codec"),
        (
            audio_params(codecs=[attrs.evolve(opus(), mime_type="opus")]),
            "rtpParameters.codecs[0].mimeType",
            "MIME",
        ),
        (
            audio_params(codecs=[attrs.evolve(opus(), clock_rate=0)]),
            "rtpParameters.codecs[0].clockRate",
            "positive",
        ),
        (
            audio_params(header_extensions=[RtpHeaderExtensionParameters(uri=URI_MID, id=0)]),
            "rtpParameters.headerExtensions[0].id",
            "1-255",
        ),
        (
            audio_params(
                header_extensions=[
                    RtpHeaderExtensionParameters(uri=URI_MID, id=3),
                    RtpHeaderExtensionParameters(uri=URI_TRANSPORT_CC, id=3),
                ]
            ),
            "rtpParameters.headerExtensions[1].id",
            "two header extensions",
        ),
        (
            audio_params(header_extensions=[RtpHeaderExtensionParameters(uri="", id=3)]),
            "rtpParameters.headerExtensions[0].uri",
            "empty",
        ),
        (audio_params(encodings=[]), "rtpParameters.encodings", "at least one"),
        (
            audio_params(encodings=[RtpEncodingParameters()]),
            "rtpParameters.encodings[0]",
            "ssrc or a rid",
        ),
        (
            audio_params(encodings=[RtpEncodingParameters(ssrc=1), RtpEncodingParameters(rid="a")]),
            "rtpParameters.encodings",
            "every encoding has a rid or none",
        ),
        (simulcast(vp8(), rids=("r0", "r0")), "rtpParameters.encodings[1].rid", "two encodings"),
        (simulcast(vp8(), rids=("r 0",)), "rtpParameters.encodings[0].rid", "letters"),
        (
            audio_params(encodings=[RtpEncodingParameters(ssrc=5, rtx=RtxParameters(ssrc=5))]),
            "rtpParameters.encodings[0].rtx.ssrc",
            "used twice",
        ),
        (
            audio_params(encodings=[RtpEncodingParameters(ssrc=2**32)]),
            "rtpParameters.encodings[0].ssrc",
            "32-bit",
        ),
        (
            audio_params(encodings=[RtpEncodingParameters(ssrc=1, codec_payload_type=100)]),
            "rtpParameters.encodings[0].codecPayloadType",
            "no media codec",
        ),
        (
            audio_params(encodings=[RtpEncodingParameters(ssrc=1, scalability_mode="X3")]),
            "rtpParameters.encodings[0].scalabilityMode",
            "L<n>T<n>",
        ),
        (audio_params(mid=""), "rtpParameters.mid", "empty"),
    ],
)
def test_invalid_producer_parameters(params: RtpParameters, field: str, text: str) -> None:
    with pytest.raises(InvalidMessageError) as info:
        get_producer_rtp_mapping(params, router_caps())
    assert info.value.message.startswith(f"invalid field {field!r}: "), info.value.message
    assert text in info.value.message


def test_producer_kind_must_match() -> None:
    with pytest.raises(InvalidMessageError, match=r"codecs\[0\].mimeType.*video codec"):
        get_producer_rtp_mapping(audio_params(), router_caps(), kind="video")


# --------------------------------------------------------------------------------------
# CNAME


@needs_fixtures
def test_transport_cname_rule() -> None:
    _, audio = produced("produce-audio-opus.json")
    _, video = produced("produce-video-vp8-simulcast.json")
    rng = random.Random(3)
    # Audio first: its CNAME becomes the transport's, and simulcast video gets it.
    cname = pick_transport_cname(None, audio, rng=rng)
    assert cname == "S3n16FnH2Ej7txms"
    assert pick_transport_cname(cname, video, rng=rng) == cname
    assert fill_cname(video, cname).rtcp == RtcpParameters(cname=cname, reduced_size=True)
    assert video.rtcp.cname == ""  # not modified
    assert fill_cname(audio, cname) is audio
    # Video first: no CNAME to take, so a random one, and later audio is overridden too.
    first = pick_transport_cname(None, video, rng=rng)
    assert first and first != cname
    assert fill_cname(audio, first).rtcp.cname == first
    # Without a transport CNAME the producer's own stays.
    assert fill_cname(video, None) is video


# --------------------------------------------------------------------------------------
# Consumable and consumer parameters


def consumable_for(
    name: str, caps: RtpCapabilities | None = None
) -> tuple[RtpParameters, RtpMapping]:
    kind, params = produced(name)
    caps = caps or router_caps()
    params = fill_cname(params, "S3n16FnH2Ej7txms")
    mapping = get_producer_rtp_mapping(params, caps, kind=kind, rng=random.Random(11))
    return get_consumable_rtp_parameters(kind, params, caps, mapping), mapping


@needs_fixtures
def test_consumable_parameters_of_simulcast_vp8() -> None:
    consumable, mapping = consumable_for("produce-video-vp8-simulcast.json")
    assert [(c.mime_type, c.payload_type, c.parameters) for c in consumable.codecs] == [
        ("video/VP8", 101, {}),
        ("video/rtx", 102, {"apt": 101}),
    ]
    # Router ids of the video extensions the router can send (rid/rrid/DD are recvonly).
    assert [e.id for e in consumable.header_extensions] == [1, 4, 5, 11, 12, 13, 14]
    assert [e.ssrc for e in consumable.encodings] == [e.mapped_ssrc for e in mapping.encodings]
    assert all(e.rid is None and e.rtx is None for e in consumable.encodings)
    assert [e.max_bitrate for e in consumable.encodings] == [100000, 300000, 1500000]
    assert consumable.rtcp == RtcpParameters(cname="S3n16FnH2Ej7txms", reduced_size=True)
    assert consumable.msid is not None
    assert consumer_type(consumable) == "simulcast"


@needs_fixtures
def test_consumable_parameters_of_opus_keep_the_producer_fmtp() -> None:
    consumable, _ = consumable_for("produce-audio-opus.json")
    (codec,) = consumable.codecs
    assert (codec.payload_type, codec.channels) == (100, 2)
    assert codec.parameters == {"minptime": 10, "useinbandfec": 1, "sprop-stereo": 1, "usedtx": 1}
    # transport-cc is recvonly for audio: not forwarded.
    assert [e.id for e in consumable.header_extensions] == [1, 4, 10, 13, 14]
    assert consumer_type(consumable) == "simple"


def structure_of(params: dict[str, Any]) -> dict[str, Any]:
    """What must agree with what Chromium accepted, random values left out."""
    (encoding,) = params["encodings"]
    return {
        "codecs": [
            (c["mimeType"], c["payloadType"], c["clockRate"], c["parameters"])
            for c in params["codecs"]
        ],
        "headerExtensions": [(e["uri"], e["id"]) for e in params["headerExtensions"]],
        "encodingKeys": sorted(encoding),
        "rtx": "rtx" in encoding,
        "scalabilityMode": encoding.get("scalabilityMode"),
        "maxBitrate": encoding.get("maxBitrate"),
        "rtcp": params["rtcp"],
    }


@needs_fixtures
@pytest.mark.parametrize(("produce", "consume"), PAIRS)
def test_consumer_parameters_have_the_structure_chromium_accepted(
    produce: str, consume: str
) -> None:
    consumable, _ = consumable_for(produce)
    expected = load(consume)["request"]["rtpParameters"]
    caps = device_caps()
    assert can_consume(consumable, caps)
    consumer = get_consumer_rtp_parameters(
        consumable, caps, mid=expected["mid"], rng=random.Random(5)
    )
    ours = unstructure(consumer)
    assert structure_of(ours) == structure_of(expected)
    assert ours["mid"] == expected["mid"]
    assert ours["msid"] == consumable.msid  # passed through
    (encoding,) = consumer.encodings
    assert encoding.ssrc is not None and encoding.ssrc not in {e.ssrc for e in consumable.encodings}
    if encoding.rtx is not None:
        assert encoding.rtx.ssrc != encoding.ssrc
    # mediasoup-client only accepts payload types from its own (router-derived) capabilities.
    assert {c.payload_type for c in consumer.codecs} <= {
        c.preferred_payload_type for c in caps.codecs
    }
    # RTCP feedback: what both sides support, one bandwidth estimator.
    for ours_codec, their_codec in zip(ours["codecs"], expected["codecs"], strict=True):
        if consumer.codecs[0].mime_type.startswith("video"):
            assert ours_codec["rtcpFeedback"] == their_codec["rtcpFeedback"]
        else:
            # No transport-cc extension on audio consumers (recvonly in the router), so
            # mediasoup's rule leaves REMB-style abs-send-time and drops transport-cc.
            assert ours_codec["rtcpFeedback"] == [{"type": "nack", "parameter": ""}]
    assert structure_untrusted(ours, RtpParameters) == consumer


@needs_fixtures
def test_audio_consumer_gets_mid_although_the_device_lists_it_as_video() -> None:
    caps = device_caps()
    assert [e.kind for e in caps.header_extensions if e.uri == URI_MID] == ["video"]
    consumable, _ = consumable_for("produce-audio-opus.json")
    consumer = get_consumer_rtp_parameters(consumable, caps)
    assert (URI_MID, 1) in {(e.uri, e.id) for e in consumer.header_extensions}


@needs_fixtures
def test_header_extensions_need_the_same_id_and_a_receiving_direction() -> None:
    consumable, _ = consumable_for("produce-video-vp8-simulcast.json")
    caps = device_caps()
    moved = [
        attrs.evolve(e, preferred_id=9) if e.uri == URI_TRANSPORT_CC else e
        for e in caps.header_extensions
    ]
    sendonly = [
        attrs.evolve(e, direction="sendonly") if e.uri == URI_MID else e
        for e in caps.header_extensions
    ]
    consumer = get_consumer_rtp_parameters(consumable, attrs.evolve(caps, header_extensions=moved))
    uris = [e.uri for e in consumer.header_extensions]
    assert URI_TRANSPORT_CC not in uris and URI_ABS_SEND_TIME in uris
    # Without the transport-cc extension, REMB (with abs-send-time) replaces transport-cc.
    assert [f.type for f in consumer.codecs[0].rtcp_feedback] == [
        "goog-remb",
        "ccm",
        "nack",
        "nack",
    ]
    consumer = get_consumer_rtp_parameters(
        consumable, attrs.evolve(caps, header_extensions=sendonly)
    )
    assert URI_MID not in [e.uri for e in consumer.header_extensions]
    # Neither extension: no bandwidth feedback at all.
    bare = get_consumer_rtp_parameters(consumable, attrs.evolve(caps, header_extensions=[]))
    assert bare.header_extensions == []
    assert {f.type for f in bare.codecs[0].rtcp_feedback} == {"ccm", "nack"}


@needs_fixtures
def test_rtx_is_dropped_when_the_endpoint_lacks_it() -> None:
    consumable, _ = consumable_for("produce-video-vp8-simulcast.json")
    caps = device_caps()
    no_rtx = attrs.evolve(caps, codecs=[c for c in caps.codecs if c.mime_type != "video/rtx"])
    consumer = get_consumer_rtp_parameters(consumable, no_rtx)
    assert [c.mime_type for c in consumer.codecs] == ["video/VP8"]
    assert consumer.encodings[0].rtx is None


@needs_fixtures
def test_no_common_codec() -> None:
    vp8_consumable, _ = consumable_for("produce-video-vp8-simulcast.json")
    h264_consumable, _ = consumable_for("produce-video-h264-simulcast.json")
    caps = device_caps()
    only_h264 = attrs.evolve(caps, codecs=[c for c in caps.codecs if c.mime_type != "video/VP8"])
    # RTX still matches (apt is not compared), but the first match must be a media codec.
    assert not can_consume(vp8_consumable, only_h264)
    with pytest.raises(UnsupportedError, match="no compatible media codecs"):
        get_consumer_rtp_parameters(vp8_consumable, only_h264)
    main_only = attrs.evolve(
        caps,
        codecs=[
            attrs.evolve(c, parameters={**c.parameters, "profile-level-id": "4d001f"})
            if c.mime_type == "video/H264"
            else c
            for c in caps.codecs
        ],
    )
    assert can_consume(vp8_consumable, main_only)
    assert not can_consume(h264_consumable, main_only)
    with pytest.raises(UnsupportedError):
        get_consumer_rtp_parameters(h264_consumable, main_only)
    assert not can_consume(vp8_consumable, RtpCapabilities())


@needs_fixtures
def test_invalid_endpoint_capabilities() -> None:
    consumable, _ = consumable_for("produce-audio-opus.json")
    caps = device_caps()
    wrong_kind = attrs.evolve(
        caps, codecs=[attrs.evolve(caps.codecs[0], kind="video"), *caps.codecs[1:]]
    )
    with pytest.raises(InvalidMessageError, match=r"'rtpCapabilities\.codecs\[0\]\.kind'"):
        can_consume(consumable, wrong_kind)
    rtx_without_apt = attrs.evolve(
        caps, codecs=[*caps.codecs, attrs.evolve(caps.codecs[2], parameters={})]
    )
    with pytest.raises(InvalidMessageError, match=r"codecs\[5\]\.parameters\.apt"):
        get_consumer_rtp_parameters(consumable, rtx_without_apt)


def test_single_stream_consumers() -> None:
    caps = generate_router_rtp_capabilities(FIXTURE_MEDIA_CODECS)
    endpoint = attrs.evolve(caps, header_extensions=[])
    one_layer = attrs.evolve(
        simulcast(vp8(), rids=("r0",)),
        encodings=[RtpEncodingParameters(ssrc=9, scalability_mode="L1T3", dtx=True)],
    )
    mapping = get_producer_rtp_mapping(one_layer, caps)
    consumable = get_consumable_rtp_parameters("video", one_layer, caps, mapping)
    consumer = get_consumer_rtp_parameters(consumable, endpoint)
    (encoding,) = consumer.encodings
    assert (
        encoding.scalability_mode == "L1T3"
        and encoding.dtx is True
        and encoding.max_bitrate is None
    )
    no_mode = attrs.evolve(one_layer, encodings=[RtpEncodingParameters(ssrc=9)])
    consumable = get_consumable_rtp_parameters(
        "video", no_mode, caps, get_producer_rtp_mapping(no_mode, caps)
    )
    (encoding,) = get_consumer_rtp_parameters(consumable, endpoint).encodings
    assert encoding.scalability_mode is None
    # A producer without a CNAME still gives consumers one (Chromium rejects an empty one
    # without msid).
    assert consumable.rtcp.cname == ""
    assert get_consumer_rtp_parameters(consumable, endpoint).rtcp.cname


def test_simulcast_scalability_mode_counts_streams_and_temporal_layers() -> None:
    caps = router_caps()
    params = simulcast(vp8(), rids=("a", "b"))
    params = attrs.evolve(
        params, encodings=[attrs.evolve(e, scalability_mode="L1T2") for e in params.encodings]
    )
    consumable = get_consumable_rtp_parameters(
        "video", params, caps, get_producer_rtp_mapping(params, caps)
    )
    consumer = get_consumer_rtp_parameters(consumable, caps)
    assert consumer.encodings[0].scalability_mode == "L2T2"
    assert consumer.encodings[0].max_bitrate == 200_000


def test_consumer_ssrcs_come_from_rng() -> None:
    caps = router_caps()
    params = simulcast(vp8(), rtx(97, 96))
    consumable = get_consumable_rtp_parameters(
        "video", params, caps, get_producer_rtp_mapping(params, caps, rng=random.Random(1))
    )
    a = get_consumer_rtp_parameters(consumable, caps, rng=random.Random(2))
    b = get_consumer_rtp_parameters(consumable, caps, rng=random.Random(2))
    c = get_consumer_rtp_parameters(consumable, caps)
    assert a == b
    assert a.encodings[0].ssrc != c.encodings[0].ssrc


def test_pipe_consumer_keeps_every_stream() -> None:
    caps = router_caps()
    params = simulcast(vp8(), rtx(97, 96))
    consumable = get_consumable_rtp_parameters(
        "video", params, caps, get_producer_rtp_mapping(params, caps)
    )
    pipe = get_consumer_rtp_parameters(
        consumable, RtpCapabilities(), pipe=True, rng=random.Random(4)
    )
    assert [c.payload_type for c in pipe.codecs] == [101, 102]
    assert [(f.type, f.parameter) for f in pipe.codecs[0].rtcp_feedback] == [
        ("nack", ""),
        ("nack", "pli"),
        ("ccm", "fir"),
    ]
    uris = {e.uri for e in pipe.header_extensions}
    assert uris.isdisjoint({URI_MID, URI_ABS_SEND_TIME, URI_TRANSPORT_CC}) and uris
    assert len(pipe.encodings) == 3
    ssrcs = [e.ssrc for e in pipe.encodings] + [e.rtx.ssrc for e in pipe.encodings if e.rtx]
    assert len(set(ssrcs)) == 6
    assert [e.max_bitrate for e in pipe.encodings] == [100_000, 200_000, 300_000]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("L1T3", ScalabilityMode(1, 3)),
        ("L3T3_KEY", ScalabilityMode(3, 3, ksvc=True)),
        ("S2T1", ScalabilityMode(2, 1)),
        ("L1T3h", ScalabilityMode(1, 3)),
        (None, ScalabilityMode(1, 1)),
        ("bogus", ScalabilityMode(1, 1)),
        ("L0T1", ScalabilityMode(1, 1)),
    ],
)
def test_parse_scalability_mode(mode: str | None, expected: ScalabilityMode) -> None:
    assert parse_scalability_mode(mode) == expected


def test_consumer_type_svc() -> None:
    params = RtpParameters(
        codecs=[vp8()], encodings=[RtpEncodingParameters(ssrc=1, scalability_mode="L3T3")]
    )
    assert consumer_type(params) == "svc"


def test_feedback_must_be_supported_by_both_sides() -> None:
    caps = router_caps()
    params = audio_params()
    consumable = get_consumable_rtp_parameters(
        "audio", params, caps, get_producer_rtp_mapping(params, caps)
    )
    endpoint = attrs.evolve(
        caps,
        codecs=[
            attrs.evolve(
                caps.codecs[0], rtcp_feedback=[RtcpFeedback("nack"), RtcpFeedback("nack", "sli")]
            )
        ],
    )
    consumer = get_consumer_rtp_parameters(consumable, endpoint)
    assert consumer.codecs[0].rtcp_feedback == [RtcpFeedback("nack")]


# --------------------------------------------------------------------------------------
# Untrusted input: whatever JSON a client sends, only our two refusals come out.

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


def _produce_untrusted(data: Any, caps: RtpCapabilities) -> None:
    try:
        params = structure_untrusted(data, RtpParameters)
        get_producer_rtp_mapping(params, caps)
    except (InvalidMessageError, UnsupportedError):
        pass


@needs_fixtures
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_mutated_produce_parameters_raise_only_refusals(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from([p for p, _ in PAIRS]))
    original = load(name)["rtpParameters"]
    path = data.draw(st.sampled_from(_paths(original)))
    mutated = _replace(original, path, data.draw(json_values))
    _produce_untrusted(mutated, router_caps())


@settings(max_examples=150, deadline=None)
@given(value=json_values)
def test_arbitrary_json_raises_only_refusals(value: Any) -> None:
    _produce_untrusted(value, router_caps())
    try:
        caps = structure_untrusted(value, RtpCapabilities)
        params = audio_params()
        consumable = get_consumable_rtp_parameters(
            "audio", params, router_caps(), get_producer_rtp_mapping(params, router_caps())
        )
        if can_consume(consumable, caps):
            get_consumer_rtp_parameters(consumable, caps)
    except (InvalidMessageError, UnsupportedError):
        pass
