"""H.264 ``profile-level-id`` (RFC 6184 section 8.1): parsing, matching, answering.

``profile-level-id`` is three bytes in hex: ``profile_idc``, ``profile-iop`` and
``level_idc``. ``profile-iop`` holds the flags ``constraint_set0_flag`` (MSB) to
``constraint_set5_flag`` and two reserved zero bits. A profile is the pair
(profile_idc, profile-iop pattern) from RFC 6184 table 5, where one sub-profile may be spelt
several ways (Constrained Baseline is ``42`` with constraint_set1, ``4D`` with constraint_set0
or ``58`` with constraint_set0 and constraint_set1). Constrained High is High (``64``) with
constraint_set4 and constraint_set5 (H.264 annex A.2.4.2).

Level 1b is spelt ``level_idc`` 11 with constraint_set3_flag for the Baseline, Main and
Extended profiles and ``level_idc`` 9 for the others; it sits between levels 1 and 1.1.

When ``profile-level-id`` is absent, RFC 6184 infers Baseline level 1, but every WebRTC
stack (libwebrtc, mediasoup) infers Constrained Baseline level 3.1 (``42e01f``) instead;
we do what the browsers do.

Sans-IO: pure functions, no trio import.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import final

import attrs

from trio_sfu.errors import UnsupportedError

__all__ = [
    "DEFAULT_PROFILE_LEVEL_ID",
    "LEVEL_1B",
    "H264Profile",
    "ProfileLevelId",
    "h264_codecs_match",
    "h264_level_rank",
    "h264_packetization_mode",
    "h264_profile_level_id",
    "h264_profile_level_id_for_answer",
    "parse_profile_level_id",
]

DEFAULT_PROFILE_LEVEL_ID = "42e01f"

#: Our number for level 1b (it has no level_idc of its own).
LEVEL_1B = 0

# level_idc values H.264 table A-1 defines (10 = level 1.0, 11 = level 1.1, ...).
_LEVELS = frozenset({10, 11, 12, 13, 20, 21, 22, 30, 31, 32, 40, 41, 42, 50, 51, 52, 60, 61, 62})

_CONSTRAINT_SET3 = 0x10


class H264Profile(enum.Enum):
    """The H.264 (sub-)profiles that RFC 6184 table 5 and annex A name."""

    CONSTRAINED_BASELINE = "constrained-baseline"
    BASELINE = "baseline"
    MAIN = "main"
    EXTENDED = "extended"
    HIGH = "high"
    CONSTRAINED_HIGH = "constrained-high"
    HIGH_10 = "high-10"
    HIGH_422 = "high-422"
    HIGH_444 = "high-444"
    HIGH_10_INTRA = "high-10-intra"
    HIGH_422_INTRA = "high-422-intra"
    HIGH_444_INTRA = "high-444-intra"
    CAVLC_444_INTRA = "cavlc-444-intra"


def _pattern(bits: str) -> tuple[int, int]:
    """``"x1xx0000"`` -> (mask, value) over profile-iop; ``x`` is "either"."""
    mask = value = 0
    for char in bits:
        mask <<= 1
        value <<= 1
        if char != "x":
            mask |= 1
            value |= int(char)
    return mask, value


# RFC 6184 table 5, in the order it must be tried (Constrained Baseline before Baseline).
_PROFILE_TABLE: tuple[tuple[int, tuple[int, int], H264Profile], ...] = (
    (0x42, _pattern("x1xx0000"), H264Profile.CONSTRAINED_BASELINE),
    (0x4D, _pattern("1xxx0000"), H264Profile.CONSTRAINED_BASELINE),
    (0x58, _pattern("11xx0000"), H264Profile.CONSTRAINED_BASELINE),
    (0x42, _pattern("x0xx0000"), H264Profile.BASELINE),
    (0x58, _pattern("10xx0000"), H264Profile.BASELINE),
    (0x4D, _pattern("0x0x0000"), H264Profile.MAIN),
    (0x58, _pattern("00xx0000"), H264Profile.EXTENDED),
    (0x64, _pattern("00000000"), H264Profile.HIGH),
    (0x64, _pattern("00001100"), H264Profile.CONSTRAINED_HIGH),
    (0x6E, _pattern("00000000"), H264Profile.HIGH_10),
    (0x7A, _pattern("00000000"), H264Profile.HIGH_422),
    (0xF4, _pattern("00000000"), H264Profile.HIGH_444),
    (0x6E, _pattern("00010000"), H264Profile.HIGH_10_INTRA),
    (0x7A, _pattern("00010000"), H264Profile.HIGH_422_INTRA),
    (0xF4, _pattern("00010000"), H264Profile.HIGH_444_INTRA),
    (0x2C, _pattern("00010000"), H264Profile.CAVLC_444_INTRA),
)

# How each profile is spelt when we write a profile-level-id (profile_idc, profile-iop).
_SPELLING: dict[H264Profile, tuple[int, int]] = {
    H264Profile.CONSTRAINED_BASELINE: (0x42, 0xE0),
    H264Profile.BASELINE: (0x42, 0x00),
    H264Profile.MAIN: (0x4D, 0x00),
    H264Profile.EXTENDED: (0x58, 0x00),
    H264Profile.HIGH: (0x64, 0x00),
    H264Profile.CONSTRAINED_HIGH: (0x64, 0x0C),
    H264Profile.HIGH_10: (0x6E, 0x00),
    H264Profile.HIGH_422: (0x7A, 0x00),
    H264Profile.HIGH_444: (0xF4, 0x00),
    H264Profile.HIGH_10_INTRA: (0x6E, 0x10),
    H264Profile.HIGH_422_INTRA: (0x7A, 0x10),
    H264Profile.HIGH_444_INTRA: (0xF4, 0x10),
    H264Profile.CAVLC_444_INTRA: (0x2C, 0x10),
}

# Profiles whose level 1b is level_idc 11 + constraint_set3_flag (profile_idc 66, 77, 88).
_LEVEL_1B_BY_FLAG = frozenset({0x42, 0x4D, 0x58})


@final
@attrs.frozen
class ProfileLevelId:
    """A parsed ``profile-level-id``: the profile and the level (``level_idc``, or LEVEL_1B)."""

    profile: H264Profile
    level: int

    def __str__(self) -> str:
        profile_idc, iop = _SPELLING[self.profile]
        level_idc = self.level
        if self.level == LEVEL_1B:
            if profile_idc in _LEVEL_1B_BY_FLAG:
                iop |= _CONSTRAINT_SET3
                level_idc = 11
            else:
                level_idc = 9
        return f"{profile_idc:02x}{iop:02x}{level_idc:02x}"


def parse_profile_level_id(text: str) -> ProfileLevelId | None:
    """Parse six hex digits; None if they name no profile or level that H.264 defines."""
    if len(text) != 6:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    profile_idc, iop, level_idc = raw
    profile = next(
        (
            name
            for idc, (mask, value), name in _PROFILE_TABLE
            if idc == profile_idc and iop & mask == value
        ),
        None,
    )
    if profile is None:
        return None
    if level_idc == 11 and profile_idc in _LEVEL_1B_BY_FLAG and iop & _CONSTRAINT_SET3:
        return ProfileLevelId(profile, LEVEL_1B)
    if level_idc == 9 and profile_idc not in _LEVEL_1B_BY_FLAG:
        return ProfileLevelId(profile, LEVEL_1B)
    if level_idc not in _LEVELS:
        return None
    return ProfileLevelId(profile, level_idc)


def h264_level_rank(level: int) -> float:
    """A number that orders levels by capability (1b lies between 1 and 1.1)."""
    return 10.5 if level == LEVEL_1B else float(level)


def _param_text(parameters: Mapping[str, object], name: str) -> str | None:
    value = parameters.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        # mediasoup-client's SDP parser turns an all-digit value such as 640032 into a number.
        return f"{value:06d}"
    return str(value)


def h264_profile_level_id(parameters: Mapping[str, object]) -> ProfileLevelId | None:
    """The profile-level-id of H264 codec ``parameters`` (default 42e01f); None if invalid."""
    text = _param_text(parameters, "profile-level-id")
    return parse_profile_level_id(DEFAULT_PROFILE_LEVEL_ID if text is None else text)


def h264_packetization_mode(parameters: Mapping[str, object]) -> int | None:
    """``packetization-mode`` (default 0); None if it is not 0, 1 or 2."""
    value = parameters.get("packetization-mode", 0)
    if isinstance(value, str) and value in ("0", "1", "2"):
        return int(value)
    if type(value) is int and value in (0, 1, 2):
        return value
    return None


def _level_asymmetry_allowed(parameters: Mapping[str, object]) -> bool:
    return parameters.get("level-asymmetry-allowed") in (1, "1")


def h264_codecs_match(a: Mapping[str, object], b: Mapping[str, object]) -> bool:
    """Whether two H264 codecs' parameters can describe one stream.

    They must have the same packetization-mode and the same profile (RFC 6184 section
    8.2.2: the profile is negotiated symmetrically, the level is not).
    """
    mode_a = h264_packetization_mode(a)
    if mode_a is None or mode_a != h264_packetization_mode(b):
        return False
    profile_a = h264_profile_level_id(a)
    profile_b = h264_profile_level_id(b)
    return (
        profile_a is not None and profile_b is not None and profile_a.profile == profile_b.profile
    )


def h264_profile_level_id_for_answer(
    local: Mapping[str, object], remote: Mapping[str, object]
) -> str | None:
    """The profile-level-id an answerer with ``local`` parameters puts in its answer.

    None when neither side gave one. Same profile required (else UnsupportedError). With
    ``level-asymmetry-allowed=1`` on both sides the answer carries the local level (what we
    can receive); otherwise the lower of the two levels, which both sides then use.
    """
    if _param_text(local, "profile-level-id") is None and (
        _param_text(remote, "profile-level-id") is None
    ):
        return None
    local_id = h264_profile_level_id(local)
    remote_id = h264_profile_level_id(remote)
    if local_id is None or remote_id is None:
        raise UnsupportedError("invalid H264 profile-level-id")
    if local_id.profile != remote_id.profile:
        raise UnsupportedError(
            f"H264 profiles differ: {local_id.profile.value} and {remote_id.profile.value}"
        )
    if _level_asymmetry_allowed(local) and _level_asymmetry_allowed(remote):
        level = local_id.level
    else:
        level = min(local_id.level, remote_id.level, key=h264_level_rank)
    return str(ProfileLevelId(local_id.profile, level))
