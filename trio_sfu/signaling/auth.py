"""Access tokens (JWT through PyJWT) and TURN credentials.

A token admits one user to one meeting (PROTOCOL.md, "Access tokens"): claims ``sub``
(user id), ``meetingId`` and ``exp`` are required; ``name``, ``canPublish`` and
``canSubscribe`` (both default true) and ``canPlainTransport`` (default false: who may
create a PlainTransport, docs/protocol-additions.md) are optional. HS256 with the server's secret by
default; RS256/ES256 with a public key as an option. Tokens are checked once, on
``rtc:join``: a token that expires later does not end the call.

PyJWT checks the signature and that the required claims are there; the claims' types and
the times are checked here, so that an ill-typed claim is ``token_invalid`` whatever its
value: PyJWT reads ``"exp": "9999999999"`` as the number, ``"exp": true`` as 1 (expired).

TURN credentials follow coturn's ``use-auth-secret`` (the "TURN REST API" draft):
username ``"<unix expiry>:<userId>"``, password ``base64(HMAC-SHA1(secret, username))``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
from typing import Any, Final, final

import attrs
import jwt

from trio_sfu.config import ServerConfig
from trio_sfu.signaling.errors import ForbiddenError, UnauthorizedError
from trio_sfu.signaling.messages import IceServer, is_representable

__all__ = ["Grant", "TokenVerifier", "ice_servers_for", "issue_token", "turn_credentials"]

#: Clock skew tolerated on ``exp`` (seconds).
LEEWAY: Final = 5.0


@final
@attrs.frozen
class Grant:
    """What a verified token allows."""

    user_id: str
    meeting_id: str
    name: str | None = None
    can_publish: bool = True
    can_subscribe: bool = True
    #: May create PlainTransports (``rtc:createPlainTransport``): claim
    #: ``canPlainTransport``, false unless given.
    can_plain_transport: bool = False


def issue_token(
    key: str,
    *,
    meeting_id: str,
    user_id: str,
    ttl: float = 3600,
    name: str | None = None,
    can_publish: bool = True,
    can_subscribe: bool = True,
    can_plain_transport: bool = False,
    algorithm: str = "HS256",
    now: float | None = None,
) -> str:
    """A signed access token. ``key`` is the HS256 secret (or a PEM private key)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": user_id,
        "meetingId": meeting_id,
        "iat": issued,
        "exp": issued + int(ttl),
        "canPublish": can_publish,
        "canSubscribe": can_subscribe,
    }
    if name is not None:
        claims["name"] = name
    if can_plain_transport:
        claims["canPlainTransport"] = True
    return jwt.encode(claims, key, algorithm=algorithm)


_OPTIONAL_CLAIMS: Final = {
    "name": str,
    "canPublish": bool,
    "canSubscribe": bool,
    "canPlainTransport": bool,
}

#: Claims that are times: NumericDate (RFC 7519 section 2), a JSON number of seconds.
_TIME_CLAIMS: Final = ("exp", "nbf", "iat")


def _invalid(claim: str, problem: str) -> UnauthorizedError:
    return UnauthorizedError(f"invalid token: claim {claim!r} {problem}", refusal="token_invalid")


def _grant_from_claims(claims: dict[str, Any]) -> Grant:
    """The grant of well-typed ``claims``; UnauthorizedError (``token_invalid``) for an
    ill-typed one (not their values: see :func:`_check_times`)."""
    for claim in ("sub", "meetingId"):
        value = claims.get(claim)
        if not isinstance(value, str) or not value:
            raise _invalid(claim, "must be a non-empty string")
    for claim, kind in _OPTIONAL_CLAIMS.items():
        value = claims.get(claim)
        if value is not None and type(value) is not kind:
            raise _invalid(claim, f"must be a {kind.__name__}")
    for claim in ("sub", "meetingId", "name"):
        value = claims.get(claim)
        if isinstance(value, str) and not is_representable(value):
            raise _invalid(claim, "holds a lone UTF-16 surrogate, which UTF-8 cannot represent")
    for claim in _TIME_CLAIMS:
        if claim in claims:
            value = claims[claim]
            if type(value) not in (int, float) or not math.isfinite(value):
                raise _invalid(claim, "must be a number (NumericDate: seconds since 1970)")
    return Grant(
        user_id=claims["sub"],
        meeting_id=claims["meetingId"],
        name=claims.get("name"),
        can_publish=claims.get("canPublish", True),
        can_subscribe=claims.get("canSubscribe", True),
        can_plain_transport=claims.get("canPlainTransport", False),
    )


@final
class TokenVerifier:
    """Checks join tokens. In dev mode every join is admitted (and that is logged loudly
    by the CLI): a token, if any, is read without checking its signature."""

    def __init__(self, *, key: str | None, algorithm: str = "HS256", dev: bool = False) -> None:
        if key is None and not dev:
            raise ValueError("a key is required outside dev mode")
        self._key = key
        self._algorithm = algorithm
        self.dev = dev

    @classmethod
    def from_config(cls, config: ServerConfig) -> TokenVerifier:
        key = config.jwt_secret if config.jwt_algorithm == "HS256" else config.jwt_public_key
        return cls(key=key, algorithm=config.jwt_algorithm, dev=config.dev)

    def verify(self, token: str | None, meeting_id: str) -> Grant:
        """The grant of ``token`` for ``meeting_id``.

        Raises :class:`UnauthorizedError` (no token, bad signature, expired, missing or
        ill-typed claims) or :class:`ForbiddenError` (a token for another meeting); their
        ``refusal`` says which (``token_missing``, ``token_invalid``, ``token_expired``,
        ``token_wrong_meeting``).
        """
        if self.dev:
            return self._dev_grant(token, meeting_id)
        if not token:
            raise UnauthorizedError(
                "a token is required (data.token or ?token= on the URL)", refusal="token_missing"
            )
        assert self._key is not None
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                # The times are checked by _check_times, after their types.
                options={
                    "require": ["exp", "sub", "meetingId"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(exc.claim, "is missing") from None
        except jwt.InvalidTokenError as exc:
            raise UnauthorizedError(f"invalid token: {exc}", refusal="token_invalid") from None
        grant = _grant_from_claims(claims)
        _check_times(claims, time.time())
        if grant.meeting_id != meeting_id:
            raise ForbiddenError(
                f"the token does not admit to meeting {meeting_id!r}",
                refusal="token_wrong_meeting",
            )
        return grant

    def _dev_grant(self, token: str | None, meeting_id: str) -> Grant:
        # Not verified, times included: a dev token is read as given.
        if token:
            try:
                claims = jwt.decode(token, options={"verify_signature": False})
                grant = _grant_from_claims(claims)
                return attrs.evolve(grant, meeting_id=meeting_id)
            except (jwt.InvalidTokenError, UnauthorizedError):
                pass
        # No authentication: everything is allowed, plain transports too.
        return Grant(
            user_id=f"dev-{secrets.token_hex(4)}", meeting_id=meeting_id, can_plain_transport=True
        )


def _check_times(claims: dict[str, Any], now: float) -> None:
    """The time claims (numbers: see :func:`_grant_from_claims`) against ``now``, with
    :data:`LEEWAY` for clock skew: expired is ``token_expired``; not yet valid (``nbf``)
    or issued in the future (``iat``) is ``token_invalid``."""
    if claims["exp"] <= now - LEEWAY:
        raise UnauthorizedError("token expired", refusal="token_expired")
    nbf = claims.get("nbf")
    if nbf is not None and nbf > now + LEEWAY:
        raise _invalid("nbf", "says the token is not valid yet")
    iat = claims.get("iat")
    if iat is not None and iat > now + LEEWAY:
        raise _invalid("iat", "says the token was issued in the future")


def turn_credentials(secret: str, user_id: str, *, ttl: int, now: float) -> tuple[str, str]:
    """coturn ``use-auth-secret`` credentials valid until ``now + ttl``."""
    username = f"{int(now) + ttl}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers_for(config: ServerConfig, user_id: str, *, now: float) -> list[IceServer]:
    """The ``iceServers`` of ``rtc:joined``: the static ones, then TURN with fresh
    credentials when a TURN secret is configured."""
    servers = [
        IceServer(urls=list(s.urls), username=s.username, credential=s.credential)
        for s in config.ice_servers
    ]
    turn = config.turn
    if turn.secret and turn.urls:
        username, credential = turn_credentials(turn.secret, user_id, ttl=turn.ttl, now=now)
        servers.append(IceServer(urls=list(turn.urls), username=username, credential=credential))
    return servers
