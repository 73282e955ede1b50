"""NTP timestamps as RTCP uses them (RFC 3550 section 4, RFC 5905 era rules).

A 64-bit NTP timestamp holds seconds since 1900-01-01 in its high 32 bits and the binary
fraction of a second in its low 32 bits. RTCP's LSR field and report-block DLSR use the
"compact" 32-bit form: the middle 32 bits, i.e. seconds and fraction in 16.16 fixed point.

Sans-IO and clock-free: callers pass the time in.
"""

from __future__ import annotations

__all__ = [
    "NTP_UNIX_OFFSET",
    "compact_to_seconds",
    "ntp_to_compact",
    "ntp_to_unix",
    "seconds_to_compact",
    "unix_to_ntp",
]

#: Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
NTP_UNIX_OFFSET = 2_208_988_800

_MASK32 = 0xFFFF_FFFF
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
_ERA = 1 << 32


def unix_to_ntp(unix_seconds: float) -> int:
    """A Unix time (seconds, float) as a 64-bit NTP timestamp.

    Times after 2036-02-07 wrap into NTP era 1, as on the wire (RFC 5905 section 6).
    """
    seconds = unix_seconds + NTP_UNIX_OFFSET
    whole = int(seconds // 1)
    fraction = int((seconds - whole) * _ERA)
    if fraction >= _ERA:  # float rounding just below the next second
        whole += 1
        fraction = 0
    return ((whole << 32) | fraction) & _MASK64


def ntp_to_unix(ntp: int) -> float:
    """A 64-bit NTP timestamp as Unix seconds.

    A timestamp whose top bit is clear is read as NTP era 1 (2036-2104), as RFC 4330
    section 3 suggests, so that Unix times from 1970 to 2104 survive a round trip.
    """
    seconds = (ntp >> 32) & _MASK32
    if not seconds & 0x8000_0000:
        seconds += _ERA
    return seconds - NTP_UNIX_OFFSET + (ntp & _MASK32) / _ERA


def ntp_to_compact(ntp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp (RTCP's LSR, RFC 3550 section 6.4.1)."""
    return (ntp >> 16) & _MASK32


def compact_to_seconds(compact: int) -> float:
    """A 16.16 fixed-point compact NTP value (or a DLSR) in seconds."""
    return (compact & _MASK32) / 65536.0


def seconds_to_compact(seconds: float) -> int:
    """Seconds as a 16.16 fixed-point value (DLSR units: 1/65536 s), wrapped to 32 bits.

    Negative durations count as zero.
    """
    if seconds <= 0.0:
        return 0
    return int(seconds * 65536.0) & _MASK32
