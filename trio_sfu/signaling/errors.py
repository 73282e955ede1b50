"""Signaling-only refusals, each with its PROTOCOL.md error code.

The media engine's refusals (``invalid_message``, ``unsupported``, ``invalid_state``,
``not_found``, ``limit_exceeded``) live in :mod:`trio_sfu.errors`; these are the codes only
the signaling layer produces. A session answers any :class:`~trio_sfu.errors.SfuError` with
``rtc:error`` carrying its ``code``.
"""

from __future__ import annotations

from typing import final

from trio_sfu.errors import SfuError

__all__ = [
    "AlreadyJoinedError",
    "ForbiddenError",
    "InvalidJsonError",
    "NotJoinedError",
    "RateLimitedError",
    "UnauthorizedError",
    "UnknownTypeError",
]


@final
class InvalidJsonError(SfuError):
    """The frame is not valid UTF-8 JSON."""

    code = "invalid_json"


@final
class UnknownTypeError(SfuError):
    """The envelope's ``type`` is not a request type of the protocol."""

    code = "unknown_type"


@final
class UnauthorizedError(SfuError):
    """No token, or an invalid or expired one."""

    code = "unauthorized"


@final
class ForbiddenError(SfuError):
    """The token is valid but lacks the right (publish, subscribe, this meeting)."""

    code = "forbidden"


@final
class NotJoinedError(SfuError):
    """The connection is not in the meeting the request names."""

    code = "not_joined"


@final
class AlreadyJoinedError(SfuError):
    """``rtc:join`` on a connection that is already in a meeting."""

    code = "already_joined"


@final
class RateLimitedError(SfuError):
    """Too many requests per second on this connection."""

    code = "rate_limited"
