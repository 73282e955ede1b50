"""Access tokens (PyJWT) and coturn TURN credentials."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trio_sfu.config import IceServerConfig, ServerConfig, TurnConfig
from trio_sfu.signaling.auth import (
    Grant,
    TokenVerifier,
    ice_servers_for,
    issue_token,
    turn_credentials,
)
from trio_sfu.signaling.errors import ForbiddenError, UnauthorizedError

SECRET = "auth-tests-secret-0123456789abcdef0123"


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, decoded by hand (base64url JSON, RFC 7519 section 3)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def test_issue_token_claims() -> None:
    token = issue_token(SECRET, meeting_id="m1", user_id="alice", ttl=120, name="Alice", now=1000)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert unverified_claims(token) == {
        "sub": "alice",
        "meetingId": "m1",
        "iat": 1000,
        "exp": 1120,
        "name": "Alice",
        "canPublish": True,
        "canSubscribe": True,
    }


def test_verify_grants_what_the_token_says() -> None:
    verifier = TokenVerifier(key=SECRET)
    token = issue_token(SECRET, meeting_id="m", user_id="u", can_publish=False, name="N")
    assert verifier.verify(token, "m") == Grant(
        user_id="u", meeting_id="m", name="N", can_publish=False, can_subscribe=True
    )


def test_optional_claims_default_to_allowed() -> None:
    token = jwt.encode({"sub": "u", "meetingId": "m", "exp": time.time() + 60}, SECRET)
    assert TokenVerifier(key=SECRET).verify(token, "m") == Grant("u", "m", None, True, True)


def test_expired() -> None:
    token = issue_token(SECRET, meeting_id="m", user_id="u", ttl=10, now=time.time() - 60)
    with pytest.raises(UnauthorizedError, match="expired"):
        TokenVerifier(key=SECRET).verify(token, "m")


def test_wrong_meeting_is_forbidden() -> None:
    token = issue_token(SECRET, meeting_id="m1", user_id="u")
    with pytest.raises(ForbiddenError, match="'m2'"):
        TokenVerifier(key=SECRET).verify(token, "m2")


def test_wrong_signature() -> None:
    token = issue_token("some-other-secret-of-32-bytes-or-more", meeting_id="m", user_id="u")
    with pytest.raises(UnauthorizedError, match="invalid token"):
        TokenVerifier(key=SECRET).verify(token, "m")
    head, _, signature = issue_token(SECRET, meeting_id="m", user_id="u").split(".")
    tampered = base64.urlsafe_b64encode(
        json.dumps({"sub": "admin", "meetingId": "m", "exp": 2**40}).encode()
    )
    with pytest.raises(UnauthorizedError):
        TokenVerifier(key=SECRET).verify(f"{head}.{tampered.decode().rstrip('=')}.{signature}", "m")


def test_the_none_algorithm_is_refused() -> None:
    token = jwt.encode({"sub": "u", "meetingId": "m", "exp": time.time() + 60}, None, "none")
    with pytest.raises(UnauthorizedError):
        TokenVerifier(key=SECRET).verify(token, "m")


@pytest.mark.parametrize("missing", ["sub", "meetingId", "exp"])
def test_missing_claims(missing: str) -> None:
    claims: dict[str, Any] = {"sub": "u", "meetingId": "m", "exp": time.time() + 60}
    del claims[missing]
    with pytest.raises(UnauthorizedError, match=repr(missing)):
        TokenVerifier(key=SECRET).verify(jwt.encode(claims, SECRET), "m")


@pytest.mark.parametrize(
    ("claim", "value"),
    [("sub", 5), ("sub", ""), ("meetingId", ["m"]), ("canPublish", "no"), ("name", 3)],
)
def test_ill_typed_claims(claim: str, value: Any) -> None:
    claims: dict[str, Any] = {"sub": "u", "meetingId": "m", "exp": time.time() + 60}
    claims[claim] = value
    with pytest.raises(UnauthorizedError, match="invalid token"):
        TokenVerifier(key=SECRET).verify(jwt.encode(claims, SECRET), "m")


def test_no_token() -> None:
    for token in (None, ""):
        with pytest.raises(UnauthorizedError, match="token is required"):
            TokenVerifier(key=SECRET).verify(token, "m")


def test_es256_with_a_public_key() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    config = ServerConfig(jwt_algorithm="ES256", jwt_public_key=public_pem)
    assert config.check() == []
    verifier = TokenVerifier.from_config(config)
    token = issue_token(private_pem, meeting_id="m", user_id="u", algorithm="ES256")
    assert verifier.verify(token, "m").user_id == "u"
    # an HS256 token signed with the public key text must not pass (algorithm confusion)
    with pytest.raises(UnauthorizedError):
        verifier.verify(issue_token(SECRET, meeting_id="m", user_id="u"), "m")


def test_dev_mode_admits_everyone() -> None:
    verifier = TokenVerifier(key=None, dev=True)
    anonymous = verifier.verify(None, "m")
    assert anonymous.user_id.startswith("dev-")
    assert (anonymous.can_publish, anonymous.can_subscribe) == (True, True)
    # a token is read for its claims, signature and meeting unchecked
    token = issue_token("whatever-key-0123456789abcdef0123456", meeting_id="x", user_id="bob")
    assert verifier.verify(token, "m") == Grant("bob", "m", None, True, True)
    with pytest.raises(ValueError):
        TokenVerifier(key=None)


def test_turn_credentials_vector() -> None:
    # coturn use-auth-secret: username "<expiry>:<user>", password base64(HMAC-SHA1).
    # Computed independently with:
    #   printf '1700000600:alice' | openssl dgst -sha1 -hmac north -binary | base64
    assert turn_credentials("north", "alice", ttl=600, now=1700000000.9) == (
        "1700000600:alice",
        "gthUwOpcRoLI0MMCziCEBOWYnpo=",
    )


def test_ice_servers_for_join() -> None:
    config = ServerConfig(
        ice_servers=(IceServerConfig(("stun:s.example:3478",)),),
        turn=TurnConfig(
            urls=("turn:t.example:3478", "turns:t.example:5349"), secret="north", ttl=600
        ),
    )
    stun, turn = ice_servers_for(config, "alice", now=1700000000)
    assert stun.urls == ["stun:s.example:3478"]
    assert (stun.username, stun.credential) == (None, None)
    assert turn.urls == ["turn:t.example:3478", "turns:t.example:5349"]
    assert (turn.username, turn.credential) == ("1700000600:alice", "gthUwOpcRoLI0MMCziCEBOWYnpo=")
    assert ice_servers_for(ServerConfig(), "alice", now=0) == []
