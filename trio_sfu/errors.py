"""The error types every layer of trio-sfu raises.

Two families:

* :class:`BadPacket` is the one error that any function reading untrusted network
  bytes may raise (RTP, RTCP, STUN, DTLS records, SRTP, payload descriptors). Those
  functions end in ``_untrusted`` or say so in their docstring. A receive loop catches
  ``BadPacket``, counts it and carries on: one bad packet never ends a loop.

* :class:`SfuError` and its subclasses are refusals of a request. Each carries the
  signaling error ``code`` from PROTOCOL.md, so that the signaling layer can answer
  with ``rtc:error`` without a translation table. A refusal of a trespass (a token that
  does not verify, another peer's id, ...) also names its ``refusal`` reason, which the
  server counts in ``/metrics`` (``trio_sfu_refused_total{reason=...}``) and logs at a
  limited rate. The engine's own refusals, of packets and handshakes rather than requests,
  are :data:`ENGINE_REFUSALS`.

This module imports nothing but the standard library.
"""

from __future__ import annotations

from typing import ClassVar


class BadPacket(Exception):
    """Malformed or unacceptable bytes from the network."""


class SfuError(Exception):
    """A request that cannot be carried out; ``code`` is PROTOCOL.md's error code."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str, *, refusal: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: The trespass this refuses (``"token_expired"``, ``"foreign_id"``, ...), if any.
        self.refusal = refusal


class InvalidMessageError(SfuError):
    """The message or one of its fields fails the schema; the message names the field."""

    code = "invalid_message"


class UnsupportedError(SfuError):
    """Codecs or parameters the router cannot handle."""

    code = "unsupported"


class InvalidStateError(SfuError):
    """The object is not in a state that allows the request (closed, connected twice...)."""

    code = "invalid_state"


class NotFoundError(SfuError):
    """No such id, or the id belongs to another peer or meeting."""

    code = "not_found"


class LimitExceededError(SfuError):
    """A configured limit (peers per meeting, transports per peer, ...) is reached."""

    code = "limit_exceeded"


#: Trespasses the engine refuses, each counted as the media counter ``refused_<reason>``
#: (``/metrics``: ``trio_sfu_refused_total{reason=...}``):
#:
#: - ``stun_unauthenticated``: STUN that names no transport, or fails its transport's
#:   check (wrong username, bad or missing MESSAGE-INTEGRITY or FINGERPRINT);
#: - ``not_validated``: RTP, RTCP or DTLS from an address ICE never validated;
#: - ``dtls_fingerprint``: a DTLS handshake whose certificate matches no fingerprint the
#:   peer signaled (the transport closes);
#: - ``ssrc_in_use``, ``mid_in_use``, ``rid_in_use``: a produce announcing an SSRC that
#:   another producer of the router holds, a MID another producer of its transport has,
#:   or RIDs that would make its transport's streams ambiguous. (A packet whose SSRC
#:   another producer holds is never taken over by a RID/MID match either: dropped.)
ENGINE_REFUSALS = (
    "stun_unauthenticated",
    "not_validated",
    "dtls_fingerprint",
    "ssrc_in_use",
    "mid_in_use",
    "rid_in_use",
)
