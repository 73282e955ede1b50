"""H.264 profile-level-id (RFC 6184 section 8.1, table 5).

Each vector is decoded by hand in its comment: profile_idc, profile-iop bits
(constraint_set0..5, then two reserved zero bits), level_idc.
"""

from __future__ import annotations

import pytest

from trio_sfu.errors import UnsupportedError
from trio_sfu.ortc.h264 import (
    LEVEL_1B,
    H264Profile,
    ProfileLevelId,
    h264_codecs_match,
    h264_level_rank,
    h264_packetization_mode,
    h264_profile_level_id,
    h264_profile_level_id_for_answer,
    parse_profile_level_id,
)

P = H264Profile


@pytest.mark.parametrize(
    ("text", "profile", "level"),
    [
        # 0x42 = 66 (Baseline idc), iop 1110 0000 (set0, set1, set2), 0x1f = 31: CB 3.1
        ("42e01f", P.CONSTRAINED_BASELINE, 31),
        # 0x42, iop 0100 0000 (set1 only) is still Constrained Baseline (x1xx0000)
        ("42400a", P.CONSTRAINED_BASELINE, 10),
        # 0x42, iop 0000 0000: plain Baseline; 0x1f: level 3.1
        ("42001f", P.BASELINE, 31),
        # 0x4d = 77 (Main), iop 0: Main; 0x32 = 50: level 5.0
        ("4d0032", P.MAIN, 50),
        # 0x4d with set0 (1000 0000): Main decodable by Baseline decoders = CB; 0x0a: 1.0
        ("4d800a", P.CONSTRAINED_BASELINE, 10),
        # 0x58 = 88 (Extended): set0+set1 -> CB, set0 only -> Baseline, none -> Extended
        ("58c01e", P.CONSTRAINED_BASELINE, 30),
        ("58801e", P.BASELINE, 30),
        ("58001e", P.EXTENDED, 30),
        # 0x64 = 100 (High), iop 0: High; iop 0000 1100 (set4, set5): Constrained High
        ("64001f", P.HIGH, 31),
        ("640c34", P.CONSTRAINED_HIGH, 52),
        # 0xf4 = 244 (High 4:4:4 Predictive), iop 0 / iop 0001 0000 (set3: intra)
        ("f4001f", P.HIGH_444, 31),
        ("f4101f", P.HIGH_444_INTRA, 31),
        # 0x2c = 44 (CAVLC 4:4:4 Intra) needs set3
        ("2c1028", P.CAVLC_444_INTRA, 40),
        # Upper-case hex is the same number.
        ("42E01F", P.CONSTRAINED_BASELINE, 31),
        # Level 1b: level_idc 11 + constraint_set3 (iop 1111 0000) for Baseline-family...
        ("42f00b", P.CONSTRAINED_BASELINE, LEVEL_1B),
        # ...but level_idc 11 without set3 is level 1.1...
        ("42e00b", P.CONSTRAINED_BASELINE, 11),
        # ...and level_idc 9 for the High family.
        ("640009", P.HIGH, LEVEL_1B),
    ],
)
def test_parse(text: str, profile: H264Profile, level: int) -> None:
    assert parse_profile_level_id(text) == ProfileLevelId(profile, level)


@pytest.mark.parametrize(
    "text",
    [
        "42e0ff",  # level_idc 255 is no H.264 level
        "42e009",  # level_idc 9 means 1b only outside the Baseline family
        "ff001f",  # profile_idc 255 is no profile
        "42e81f",  # reserved_zero_2bits... and set4 set: 1110 1000 matches no pattern
        "640400",  # High with only set5: no pattern
        "42e01",  # five digits
        "42e01f0",  # seven digits
        "zz0000",  # not hex
        "",
    ],
)
def test_parse_rejects(text: str) -> None:
    assert parse_profile_level_id(text) is None


@pytest.mark.parametrize(
    ("profile", "level", "text"),
    [
        (P.CONSTRAINED_BASELINE, 31, "42e01f"),
        (P.MAIN, 50, "4d0032"),
        (P.CONSTRAINED_HIGH, 40, "640c28"),
        (P.CONSTRAINED_BASELINE, LEVEL_1B, "42f00b"),  # 1b: set3 + level_idc 11
        (P.HIGH, LEVEL_1B, "640009"),  # 1b: level_idc 9
    ],
)
def test_format(profile: H264Profile, level: int, text: str) -> None:
    assert str(ProfileLevelId(profile, level)) == text
    assert parse_profile_level_id(text) == ProfileLevelId(profile, level)


def test_level_1b_sits_between_1_and_1_1() -> None:
    assert h264_level_rank(10) < h264_level_rank(LEVEL_1B) < h264_level_rank(11)


def test_parameters_defaults_and_numbers() -> None:
    # Absent: what browsers assume, Constrained Baseline 3.1.
    assert h264_profile_level_id({}) == ProfileLevelId(P.CONSTRAINED_BASELINE, 31)
    # mediasoup-client parses an all-digit fmtp value into a number.
    assert h264_profile_level_id({"profile-level-id": 640032}) == ProfileLevelId(P.HIGH, 50)
    assert h264_profile_level_id({"profile-level-id": "nonsense"}) is None
    assert h264_packetization_mode({}) == 0
    assert h264_packetization_mode({"packetization-mode": "1"}) == 1
    assert h264_packetization_mode({"packetization-mode": 3}) is None
    assert h264_packetization_mode({"packetization-mode": True}) is None
    assert h264_packetization_mode({"packetization-mode": 1.0}) is None
    assert h264_packetization_mode({"packetization-mode": "\u0661"}) is None  # Arabic-Indic 1


CB31 = {"packetization-mode": 1, "profile-level-id": "42e01f", "level-asymmetry-allowed": 1}


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        ({"packetization-mode": 1, "profile-level-id": "42e034"}, True),  # level differs only
        ({"packetization-mode": 1, "profile-level-id": "4d800a"}, True),  # CB spelt as Main+set0
        ({"packetization-mode": 1, "profile-level-id": "42001f"}, False),  # Baseline != CB
        ({"packetization-mode": 1, "profile-level-id": "4d001f"}, False),  # Main
        ({"packetization-mode": 0, "profile-level-id": "42e01f"}, False),  # mode differs
        ({"profile-level-id": "42e01f"}, False),  # mode defaults to 0
        ({"packetization-mode": 1}, True),  # profile defaults to CB
        ({"packetization-mode": 1, "profile-level-id": "bad"}, False),
    ],
)
def test_codecs_match(other: dict[str, str | int], expected: bool) -> None:
    assert h264_codecs_match(CB31, other) is expected
    assert h264_codecs_match(other, CB31) is expected


def test_answer_level_with_and_without_asymmetry() -> None:
    remote_high_level = {"profile-level-id": "42e034", "level-asymmetry-allowed": 1}
    # Both allow asymmetry: we answer with our own (receive) level.
    assert h264_profile_level_id_for_answer(CB31, remote_high_level) == "42e01f"
    # Only one side allows it: the lower level for both directions.
    assert h264_profile_level_id_for_answer(CB31, {"profile-level-id": "42e00a"}) == "42e00a"
    assert (
        h264_profile_level_id_for_answer(
            {"profile-level-id": "42e034"}, {"profile-level-id": "42e01f"}
        )
        == "42e01f"
    )
    # Level 1.0 is below level 1b.
    assert (
        h264_profile_level_id_for_answer(
            {"profile-level-id": "42e00a"}, {"profile-level-id": "42f00b"}
        )
        == "42e00a"
    )
    # Neither side gave one: nothing to put in the answer.
    assert h264_profile_level_id_for_answer({}, {"packetization-mode": 1}) is None
    with pytest.raises(UnsupportedError, match="profiles differ"):
        h264_profile_level_id_for_answer(CB31, {"profile-level-id": "4d001f"})
    with pytest.raises(UnsupportedError, match="invalid"):
        h264_profile_level_id_for_answer(CB31, {"profile-level-id": "xyz"})
