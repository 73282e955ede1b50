"""Header extensions by meaning: trio_sfu.rtp.extensions."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_ortc_types import load, needs_fixtures
from tests.test_rtp_packet import CHROMIUM_OPUS, CHROMIUM_VP8_R2, h
from trio_sfu.errors import BadPacket
from trio_sfu.rtp import extensions as ext
from trio_sfu.rtp.extensions import (
    AudioLevel,
    ExtensionMap,
    PlayoutDelay,
    VideoOrientation,
)
from trio_sfu.rtp.packet import RtpPacket, find_extension_untrusted, rewrite_extensions_untrusted

# -- URIs and id maps against the mediasoup-client fixtures -------------------------------------


def extension_map(rtp_parameters: dict[str, Any]) -> ExtensionMap:
    return ExtensionMap({e["id"]: e["uri"] for e in rtp_parameters["headerExtensions"]})


ALL_URIS = {
    ext.MID_URI,
    ext.RID_URI,
    ext.REPAIRED_RID_URI,
    ext.ABS_SEND_TIME_URI,
    ext.TRANSPORT_WIDE_CC_URI,
    ext.SSRC_AUDIO_LEVEL_URI,
    ext.VIDEO_ORIENTATION_URI,
    ext.TOFFSET_URI,
    ext.ABS_CAPTURE_TIME_URI,
    ext.PLAYOUT_DELAY_URI,
    ext.DEPENDENCY_DESCRIPTOR_URI,
}


@needs_fixtures
def test_uris_are_the_routers() -> None:
    router = load("router-rtp-capabilities.json")
    assert {e["uri"] for e in router["headerExtensions"]} == ALL_URIS


# The ids tests/test_rtp_packet.py's Chromium-shaped packets use, from the fixtures.
VP8_PRODUCER_IDS = {
    ext.ABS_SEND_TIME_URI: 2,
    ext.TRANSPORT_WIDE_CC_URI: 3,
    ext.MID_URI: 4,
    ext.RID_URI: 10,
    ext.REPAIRED_RID_URI: 11,
    ext.VIDEO_ORIENTATION_URI: 13,
    ext.TOFFSET_URI: 14,
    ext.PLAYOUT_DELAY_URI: 5,
}
VP8_CONSUMER_IDS = {
    ext.MID_URI: 1,
    ext.ABS_SEND_TIME_URI: 4,
    ext.TRANSPORT_WIDE_CC_URI: 5,
    ext.VIDEO_ORIENTATION_URI: 11,
    ext.TOFFSET_URI: 12,
    ext.PLAYOUT_DELAY_URI: 14,
}
OPUS_PRODUCER_IDS = {
    ext.SSRC_AUDIO_LEVEL_URI: 1,
    ext.ABS_SEND_TIME_URI: 2,
    ext.TRANSPORT_WIDE_CC_URI: 3,
    ext.MID_URI: 4,
}


@needs_fixtures
def test_packet_ids_match_the_fixtures() -> None:
    vp8 = extension_map(load("produce-video-vp8-simulcast.json")["rtpParameters"])
    for uri, ext_id in VP8_PRODUCER_IDS.items():
        assert vp8.id_of(uri) == ext_id
    consumer = extension_map(load("consume-video-vp8.json")["request"]["rtpParameters"])
    assert dict((uri, i) for i, uri in consumer.items()) == VP8_CONSUMER_IDS
    opus = extension_map(load("produce-audio-opus.json")["rtpParameters"])
    for uri, ext_id in OPUS_PRODUCER_IDS.items():
        assert opus.id_of(uri) == ext_id
    # Chromium also lists abs-capture-time with id 15 (two-byte form only; never sent).
    assert vp8.id_of(ext.ABS_CAPTURE_TIME_URI) == 15


def test_chromium_video_packet_by_meaning() -> None:
    producer = ExtensionMap({i: uri for uri, i in VP8_PRODUCER_IDS.items()})
    consumer = ExtensionMap({i: uri for uri, i in VP8_CONSUMER_IDS.items()})

    def value(uri: str) -> bytes:
        ext_id = producer.id_of(uri)
        assert ext_id is not None
        found = find_extension_untrusted(CHROMIUM_VP8_R2, ext_id)
        assert found is not None
        return found

    assert ext.decode_sdes_item_untrusted(value(ext.MID_URI)) == "1"
    assert ext.decode_sdes_item_untrusted(value(ext.RID_URI)) == "r2"
    assert ext.decode_abs_send_time_untrusted(value(ext.ABS_SEND_TIME_URI)) == 0x123456 / 2**18
    assert ext.decode_transport_wide_seq_untrusted(value(ext.TRANSPORT_WIDE_CC_URI)) == 7
    assert ext.decode_video_orientation_untrusted(
        value(ext.VIDEO_ORIENTATION_URI)
    ) == VideoOrientation(back_facing=False, flip=False, rotation=0)

    id_map = producer.id_map_to(consumer)
    assert id_map == {2: 4, 3: 5, 4: 1, 13: 11, 14: 12, 5: 14}
    forwarded = rewrite_extensions_untrusted(
        CHROMIUM_VP8_R2, id_map, {1: ext.encode_sdes_item("0")}
    )
    by_uri = {
        consumer.uri_of(i): v for i, v in RtpPacket.parse_untrusted(forwarded).extensions.items()
    }
    assert by_uri == {
        ext.MID_URI: b"0",
        ext.ABS_SEND_TIME_URI: h("123456"),
        ext.TRANSPORT_WIDE_CC_URI: h("0007"),
        ext.VIDEO_ORIENTATION_URI: b"\x00",
    }


def test_chromium_audio_packet_by_meaning() -> None:
    producer = ExtensionMap({i: uri for uri, i in OPUS_PRODUCER_IDS.items()})
    level_id = producer.id_of(ext.SSRC_AUDIO_LEVEL_URI)
    assert level_id is not None
    level = find_extension_untrusted(CHROMIUM_OPUS, level_id)
    assert level is not None
    assert ext.decode_audio_level_untrusted(level) == AudioLevel(voice=True, level=42)


# -- ExtensionMap ------------------------------------------------------------------------------


def test_extension_map() -> None:
    ids = ExtensionMap({4: ext.MID_URI, 10: ext.RID_URI, 15: ext.ABS_CAPTURE_TIME_URI})
    assert ids.uri_of(4) == ext.MID_URI
    assert ids.uri_of(5) is None
    assert ids.id_of(ext.RID_URI) == 10
    assert ids.id_of(ext.TOFFSET_URI) is None
    assert 15 in ids
    assert 1 not in ids
    assert len(ids) == 3
    assert list(ids) == [4, 10, 15]
    assert list(ids.items()) == [
        (4, ext.MID_URI),
        (10, ext.RID_URI),
        (15, ext.ABS_CAPTURE_TIME_URI),
    ]
    assert ids == ExtensionMap({15: ext.ABS_CAPTURE_TIME_URI, 4: ext.MID_URI, 10: ext.RID_URI})
    assert ids != ExtensionMap({})
    assert "ExtensionMap(" in repr(ids)
    other = ExtensionMap({1: ext.MID_URI, 3: ext.TOFFSET_URI})
    assert ids.id_map_to(other) == {4: 1}
    assert other.id_map_to(ids) == {1: 4}


@pytest.mark.parametrize(
    "uris_by_id",
    [
        {0: ext.MID_URI},
        {256: ext.MID_URI},
        {1: ext.MID_URI, 2: ext.MID_URI},
    ],
)
def test_extension_map_refuses(uris_by_id: dict[int, str]) -> None:
    with pytest.raises(ValueError):
        ExtensionMap(uris_by_id)


def test_extension_map_does_not_keep_the_callers_dict() -> None:
    source = {1: ext.MID_URI}
    ids = ExtensionMap(source)
    source[2] = ext.RID_URI
    assert 2 not in ids


# -- Value vectors -----------------------------------------------------------------------------


def test_sdes_items() -> None:
    assert ext.encode_sdes_item("r0") == b"r0"
    assert ext.decode_sdes_item_untrusted(b"r0") == "r0"
    assert ext.decode_sdes_item_untrusted(memoryview(b"probator")) == "probator"
    assert ext.decode_sdes_item_untrusted(b"1\x00\x00") == "1"  # NUL-padded, as libwebrtc
    for bad in (b"", b"\x00", b"\x00r0", b"r 0", b"\xc3\xa9", b"\x7f"):
        with pytest.raises(BadPacket):
            ext.decode_sdes_item_untrusted(bad)
    for text in ("", "é", "a b", "x" * 256):
        with pytest.raises(ValueError):
            ext.encode_sdes_item(text)


def test_abs_send_time() -> None:
    assert ext.encode_abs_send_time(1.5) == h("060000")  # 1.5 * 2**18 = 0x060000
    assert ext.encode_abs_send_time(64.25) == h("010000")  # wraps at 64 s: 0.25 * 2**18
    assert ext.encode_abs_send_time(0.0) == h("000000")
    assert ext.encode_abs_send_time(2**-18 * 0.99) == h("000000")  # truncated, not rounded
    assert ext.decode_abs_send_time_untrusted(h("060000")) == 1.5
    assert ext.decode_abs_send_time_untrusted(h("ffffff")) == (2**24 - 1) / 2**18
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            ext.encode_abs_send_time(bad)


def test_transport_wide_seq() -> None:
    assert ext.encode_transport_wide_seq(0x1234) == h("1234")
    assert ext.encode_transport_wide_seq(65536 + 1) == h("0001")  # wraps
    assert ext.decode_transport_wide_seq_untrusted(h("ffff")) == 65535


def test_audio_level() -> None:
    # RFC 6464 section 3: V (1 bit) then the level in -dBov (7 bits).
    assert ext.encode_audio_level(AudioLevel(voice=True, level=42)) == h("aa")  # 1 0101010
    assert ext.encode_audio_level(AudioLevel(voice=False, level=127)) == h("7f")  # silence
    assert ext.decode_audio_level_untrusted(h("80")) == AudioLevel(voice=True, level=0)
    for level in (-1, 128):
        with pytest.raises(ValueError):
            ext.encode_audio_level(AudioLevel(voice=False, level=level))


def test_video_orientation() -> None:
    # 3GPP TS 26.114 CVO byte: 0 0 0 0 C F R1 R0.
    assert ext.encode_video_orientation(VideoOrientation(True, True, 270)) == h("0f")
    assert ext.encode_video_orientation(VideoOrientation(False, False, 90)) == h("01")
    assert ext.encode_video_orientation(VideoOrientation(True, False, 180)) == h("0a")
    assert ext.decode_video_orientation_untrusted(h("06")) == VideoOrientation(False, True, 180)
    # The reserved high bits are ignored.
    assert ext.decode_video_orientation_untrusted(h("f1")) == VideoOrientation(False, False, 90)
    with pytest.raises(ValueError):
        ext.encode_video_orientation(VideoOrientation(False, False, 45))


def test_playout_delay() -> None:
    # Two 12-bit counts of 10 ms: min 100 ms = 10 = 0x00a, max 1 s = 100 = 0x064.
    assert ext.encode_playout_delay(PlayoutDelay(100, 1000)) == h("00a064")
    assert ext.encode_playout_delay(PlayoutDelay(0, 40950)) == h("000fff")
    assert ext.encode_playout_delay(PlayoutDelay(19, 19)) == h("001001")  # truncated to 10 ms
    assert ext.decode_playout_delay_untrusted(h("00a064")) == PlayoutDelay(100, 1000)
    with pytest.raises(BadPacket):
        ext.decode_playout_delay_untrusted(h("06400a"))  # min above max
    for bad in (PlayoutDelay(-10, 0), PlayoutDelay(20, 10), PlayoutDelay(0, 40960)):
        with pytest.raises(ValueError):
            ext.encode_playout_delay(bad)


def test_toffset() -> None:
    assert ext.encode_toffset(-1) == h("ffffff")
    assert ext.encode_toffset(0x7FFFFF) == h("7fffff")
    assert ext.decode_toffset_untrusted(h("800000")) == -0x800000
    for bad in (0x800000, -0x800001):
        with pytest.raises(ValueError):
            ext.encode_toffset(bad)


# -- Hypothesis: round trips and garbage -------------------------------------------------------

visible_ascii = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)


@given(visible_ascii.filter(lambda s: len(s) <= 255))
def test_sdes_round_trip(text: str) -> None:
    assert ext.decode_sdes_item_untrusted(ext.encode_sdes_item(text)) == text


@given(st.integers(0, 2**24 - 1), st.integers(0, 10))
def test_abs_send_time_round_trip(ticks: int, wraps: int) -> None:
    seconds = ticks / 2**18
    encoded = ext.encode_abs_send_time(seconds + 64 * wraps)
    assert ext.decode_abs_send_time_untrusted(encoded) == seconds


@given(st.integers(0, 65535))
def test_transport_wide_seq_round_trip(seq: int) -> None:
    assert ext.decode_transport_wide_seq_untrusted(ext.encode_transport_wide_seq(seq)) == seq


@given(st.builds(AudioLevel, st.booleans(), st.integers(0, 127)))
def test_audio_level_round_trip(level: AudioLevel) -> None:
    assert ext.decode_audio_level_untrusted(ext.encode_audio_level(level)) == level


@given(
    st.builds(VideoOrientation, st.booleans(), st.booleans(), st.sampled_from([0, 90, 180, 270]))
)
def test_video_orientation_round_trip(orientation: VideoOrientation) -> None:
    encoded = ext.encode_video_orientation(orientation)
    assert ext.decode_video_orientation_untrusted(encoded) == orientation


@given(st.integers(0, 4095), st.integers(0, 4095))
def test_playout_delay_round_trip(a: int, b: int) -> None:
    delay = PlayoutDelay(min(a, b) * 10, max(a, b) * 10)
    assert ext.decode_playout_delay_untrusted(ext.encode_playout_delay(delay)) == delay


@given(st.integers(-0x800000, 0x7FFFFF))
def test_toffset_round_trip(offset: int) -> None:
    assert ext.decode_toffset_untrusted(ext.encode_toffset(offset)) == offset


DECODERS: list[Callable[[bytes], object]] = [
    ext.decode_sdes_item_untrusted,
    ext.decode_abs_send_time_untrusted,
    ext.decode_transport_wide_seq_untrusted,
    ext.decode_audio_level_untrusted,
    ext.decode_video_orientation_untrusted,
    ext.decode_playout_delay_untrusted,
    ext.decode_toffset_untrusted,
]


@pytest.mark.parametrize("decode", DECODERS)
@given(value=st.binary(max_size=20))
def test_decoders_raise_only_bad_packet(decode: Callable[[bytes], object], value: bytes) -> None:
    with contextlib.suppress(BadPacket):
        decode(value)


@pytest.mark.parametrize(
    "decode",
    [d for d in DECODERS if d is not ext.decode_sdes_item_untrusted],
)
def test_decoders_check_the_length(decode: Callable[[bytes], object]) -> None:
    with pytest.raises(BadPacket):
        decode(b"")
    with pytest.raises(BadPacket):
        decode(bytes(4))
