"""mediasoup v3 parameter types against real Chromium + mediasoup-client captures.

Every JSON object in the fixtures that the protocol carries must structure into our types
and unstructure back to exactly the same JSON.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import pytest

from trio_sfu.errors import InvalidMessageError
from trio_sfu.ortc.types import (
    DtlsParameters,
    IceCandidate,
    IceParameters,
    NativeRtpCapabilities,
    NumSctpStreams,
    RtcpParameters,
    RtpCapabilities,
    RtpCodecParameters,
    RtpEncodingParameters,
    RtpParameters,
    SctpCapabilities,
    SctpParameters,
    SctpStreamParameters,
)
from trio_sfu.wire import structure_untrusted, unstructure


def _find_fixtures() -> pathlib.Path | None:
    candidates = [
        os.environ.get("TRIO_SFU_FIXTURES", ""),
        str(pathlib.Path(__file__).parent / "fixtures" / "mediasoup-client"),
        "/work/shared/fixtures/mediasoup-client",
    ]
    for candidate in candidates:
        if candidate and (pathlib.Path(candidate) / "router-rtp-capabilities.json").is_file():
            return pathlib.Path(candidate)
    return None


FIXTURES = _find_fixtures()
needs_fixtures = pytest.mark.skipif(
    FIXTURES is None, reason="mediasoup-client fixtures not found (set TRIO_SFU_FIXTURES)"
)


def load(name: str) -> Any:
    assert FIXTURES is not None
    return json.loads((FIXTURES / name).read_text())


def round_trip(data: Any, cls: type[Any]) -> Any:
    obj = structure_untrusted(data, cls)
    assert unstructure(obj) == data
    return obj


PRODUCE = ["produce-audio-opus.json", "produce-video-vp8-simulcast.json"]
PRODUCE.append("produce-video-h264-simulcast.json")
CONSUME = ["consume-audio-opus.json", "consume-video-vp8.json", "consume-video-h264.json"]
CAPABILITIES = [
    "router-rtp-capabilities.json",
    "device-rtp-capabilities.chromium.json",
    "device-send-rtp-capabilities.chromium.json",
]
TRANSPORTS = ["send-transport-params.fake-server.json", "recv-transport-params.fake-server.json"]
CONNECTS = ["send-transport-connect.json", "recv-transport-connect.json"]


@needs_fixtures
@pytest.mark.parametrize("name", CAPABILITIES)
def test_rtp_capabilities_round_trip(name: str) -> None:
    caps = round_trip(load(name), RtpCapabilities)
    assert caps.codecs and caps.header_extensions
    assert {c.mime_type for c in caps.codecs} >= {"audio/opus", "video/VP8", "video/rtx"}


@needs_fixtures
def test_router_capabilities_fields() -> None:
    caps: RtpCapabilities = structure_untrusted(
        load("router-rtp-capabilities.json"), RtpCapabilities
    )
    opus, vp8, rtx = caps.codecs[:3]
    assert (opus.kind, opus.clock_rate, opus.channels, opus.preferred_payload_type) == (
        "audio",
        48000,
        2,
        100,
    )
    assert vp8.channels is None and vp8.rtcp_feedback[1].parameter == "pli"
    assert rtx.parameters == {"apt": 101}
    dd = [e for e in caps.header_extensions if e.preferred_id == 8]
    assert len(dd) == 1 and dd[0].direction == "recvonly" and dd[0].preferred_encrypt is False


@needs_fixtures
@pytest.mark.parametrize("name", PRODUCE)
def test_produce_rtp_parameters_round_trip(name: str) -> None:
    data = load(name)
    assert set(data) == {"kind", "rtpParameters", "appData"}
    params: RtpParameters = round_trip(data["rtpParameters"], RtpParameters)
    assert params.msid and params.mid is not None
    if data["kind"] == "audio":
        assert [e.ssrc is not None for e in params.encodings] == [True]
        assert params.encodings[0].dtx is False
    else:
        assert [e.rid for e in params.encodings] == ["r0", "r1", "r2"]
        assert all(e.ssrc is None and e.active is True for e in params.encodings)
        assert params.rtcp == RtcpParameters(cname="", reduced_size=True)


@needs_fixtures
@pytest.mark.parametrize("name", CONSUME)
def test_consume_rtp_parameters_round_trip(name: str) -> None:
    data = load(name)
    assert data["ok"] is True
    round_trip(data["request"]["rtpParameters"], RtpParameters)
    round_trip(data["consumerRtpParametersAfter"], RtpParameters)


@needs_fixtures
def test_consume_experiments_round_trip() -> None:
    experiments = load("consume-experiments.json")
    assert len(experiments) >= 5
    for experiment in experiments:
        round_trip(experiment["rtpParameters"], RtpParameters)


@needs_fixtures
@pytest.mark.parametrize("name", TRANSPORTS)
def test_transport_parameters_round_trip(name: str) -> None:
    data = load(name)
    ice = round_trip(data["iceParameters"], IceParameters)
    assert ice.ice_lite is True
    candidates = [round_trip(c, IceCandidate) for c in data["iceCandidates"]]
    assert candidates[0].ip == candidates[0].address == "127.0.0.1"
    assert candidates[0].tcp_type is None
    dtls = round_trip(data["dtlsParameters"], DtlsParameters)
    assert dtls.role == "auto" and dtls.fingerprints[0].algorithm == "sha-256"
    sctp = round_trip(data["sctpParameters"], SctpParameters)
    assert (sctp.os, sctp.mis, sctp.max_message_size) == (1024, 1024, 262144)


@needs_fixtures
@pytest.mark.parametrize("name", CONNECTS)
def test_connect_dtls_parameters_round_trip(name: str) -> None:
    dtls = round_trip(load(name)["dtlsParameters"], DtlsParameters)
    assert dtls.role == "client" and len(dtls.fingerprints) == 1


@needs_fixtures
def test_sctp_round_trips() -> None:
    caps = round_trip(load("device-sctp-capabilities.chromium.json"), SctpCapabilities)
    assert caps.num_streams == NumSctpStreams(os=1024, mis=1024)
    produce = round_trip(load("produce-data.json")["sctpStreamParameters"], SctpStreamParameters)
    assert produce.ordered is False and produce.max_retransmits == 1
    round_trip(load("consume-data.json")["sctpStreamParameters"], SctpStreamParameters)


@needs_fixtures
def test_native_capabilities_round_trip() -> None:
    native = load("native-rtp-capabilities.chromium.json")
    for side in ("sender", "receiver"):
        for kind in ("audio", "video"):
            caps = round_trip(native[side][kind], NativeRtpCapabilities)
            assert caps.codecs
    # The browser's own shape is not mediasoup's: no kind, no preferredPayloadType.
    with pytest.raises(InvalidMessageError, match=r"codecs\[0\]"):
        structure_untrusted(native["sender"]["audio"], RtpCapabilities)


def test_sctp_wire_names_are_upper_case() -> None:
    assert unstructure(NumSctpStreams(os=16, mis=32)) == {"OS": 16, "MIS": 32}
    with pytest.raises(InvalidMessageError, match=r"'numStreams\.OS': required field missing"):
        structure_untrusted({"numStreams": {"os": 1, "mis": 2}}, SctpCapabilities)


def test_defaults_unstructure_like_mediasoup() -> None:
    codec = RtpCodecParameters(mime_type="video/VP8", payload_type=101, clock_rate=90000)
    params = RtpParameters(codecs=[codec], encodings=[RtpEncodingParameters(ssrc=1)])
    assert unstructure(params) == {
        "codecs": [
            {
                "mimeType": "video/VP8",
                "payloadType": 101,
                "clockRate": 90000,
                "parameters": {},
                "rtcpFeedback": [],
            }
        ],
        "headerExtensions": [],
        "encodings": [{"ssrc": 1}],
        "rtcp": {},
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {
                "codecs": [{"mimeType": "audio/opus", "payloadType": 100, "clockRate": 48000}],
                "x": 1,
            },
            "unknown field(s): x",
        ),
        (
            {"codecs": [{"mimeType": "audio/opus", "payloadType": "100", "clockRate": 48000}]},
            "'codecs[0].payloadType': expected an integer, got a string",
        ),
        (
            {
                "codecs": [{"mimeType": "video/VP8", "payloadType": 101, "clockRate": 90000}],
                "encodings": [{"rid": "r0", "unknownEncodingField": True}],
            },
            "'encodings[0]': unknown field(s): unknownEncodingField",
        ),
        (
            {
                "codecs": [{"mimeType": "video/VP8", "payloadType": 101, "clockRate": 90000}],
                "encodings": [{"ssrc": 1, "rtx": {"ssrc": None}}],
            },
            "'encodings[0].rtx.ssrc': expected an integer, got null",
        ),
        (
            {
                "codecs": [
                    {
                        "mimeType": "video/VP8",
                        "payloadType": 101,
                        "clockRate": 90000,
                        "rtcpFeedback": [{"type": "nack", "parameter": 1}],
                    }
                ]
            },
            "'codecs[0].rtcpFeedback[0].parameter': expected a string",
        ),
        ({"codecs": [], "rtcp": {"reducedSize": "yes"}}, "'rtcp.reducedSize': expected a boolean"),
    ],
)
def test_rtp_parameters_schema_errors(data: Any, message: str) -> None:
    with pytest.raises(InvalidMessageError) as info:
        structure_untrusted(data, RtpParameters)
    assert message in info.value.message


def test_dtls_role_and_algorithm_are_checked() -> None:
    fingerprint = {"algorithm": "sha-256", "value": "AB"}
    with pytest.raises(InvalidMessageError, match="'role': must be one of 'auto'"):
        structure_untrusted({"fingerprints": [fingerprint], "role": "both"}, DtlsParameters)
    with pytest.raises(InvalidMessageError, match=r"'fingerprints\[0\].algorithm'"):
        structure_untrusted({"fingerprints": [{"algorithm": "md5", "value": "AB"}]}, DtlsParameters)
