"""The demo page's HTTP handlers (trio_sfu/signaling/web.py), called as ASGI directly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest

from trio_sfu.config import ServerConfig
from trio_sfu.signaling import web
from trio_sfu.signaling.auth import TokenVerifier
from trio_sfu.signaling.web import handle_web_request


class Answer:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages
        start = messages[0]
        assert start["type"] == "http.response.start"
        self.status: int = start["status"]
        self.headers = {k.decode(): v.decode() for k, v in start["headers"]}
        assert [m["type"] for m in messages[1:]] == ["http.response.body"]
        self.body: bytes = messages[1]["body"]

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)


async def never_called() -> dict[str, Any]:
    raise AssertionError("the web handlers never read the request body")


async def request(
    config: ServerConfig, path: str, *, method: str = "GET", query: bytes = b"", **kw: Any
) -> Answer | None:
    """The answer to one request, or None when the handler declined the path."""
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": query}
    handled = await handle_web_request(scope, never_called, send, config=config, **kw)
    if not handled:
        assert messages == []
        return None
    return Answer(messages)


DEV = ServerConfig(dev=True)
PROD = ServerConfig(jwt_secret="a-production-secret-of-enough-length")


@pytest.fixture
def dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake esbuild output directory, and a file beside it that must never be served."""
    out = tmp_path / "dist"
    out.mkdir()
    (out / "demo.js").write_text("console.log('demo');")
    (out / "demo.css").write_text("body{}")
    (out / "demo.js.map").write_text("{}")
    (out / "notes.txt").write_text("not a served type")
    (out / "sub").mkdir()
    (out / "sub" / "x.js").write_text("nested")
    (tmp_path / "secret.js").write_text("outside dist")
    monkeypatch.setattr(web, "DIST_DIR", out)
    return out


# ---- routing ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws", "/healthz", "/v1/rooms", "/staticx", "/dev", "/index"])
async def test_other_paths_are_left_to_the_app(path: str) -> None:
    assert await request(DEV, path) is None


async def test_websocket_scopes_are_left_to_the_app() -> None:
    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing is sent")

    scope = {"type": "websocket", "path": "/"}
    assert not await handle_web_request(scope, never_called, send, config=DEV)


@pytest.mark.parametrize("path", ["/", "/static/demo.js", "/dev/token"])
async def test_only_get_and_head(path: str) -> None:
    answer = await request(DEV, path, method="POST")
    assert answer is not None and answer.status == 405
    assert answer.headers["allow"] == "GET, HEAD"


# ---- the page ----------------------------------------------------------------------------


async def test_index_tells_the_page_about_dev_mode() -> None:
    dev = await request(DEV, "/")
    prod = await request(PROD, "/index.html")
    assert dev is not None and prod is not None
    assert dev.status == prod.status == 200
    assert dev.headers["content-type"] == "text/html; charset=utf-8"
    assert b'<body data-dev="true">' in dev.body
    assert b'<body data-dev="false">' in prod.body
    # The page loads the bundle and the stylesheet from /static/.
    assert b'src="/static/demo.js"' in dev.body and b'href="/static/demo.css"' in dev.body
    assert dev.headers["content-length"] == str(len(dev.body))


async def test_head_has_the_length_but_no_body() -> None:
    get = await request(DEV, "/")
    head = await request(DEV, "/", method="HEAD")
    assert get is not None and head is not None
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(len(get.body))


# ---- /static/ ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type", "body"),
    [
        ("demo.js", "text/javascript; charset=utf-8", b"console.log('demo');"),
        ("demo.css", "text/css; charset=utf-8", b"body{}"),
        ("demo.js.map", "application/json", b"{}"),
    ],
)
async def test_static_serves_the_bundle(
    dist: Path, name: str, content_type: str, body: bytes
) -> None:
    answer = await request(DEV, f"/static/{name}")
    assert answer is not None and answer.status == 200
    assert answer.headers["content-type"] == content_type
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.body == body


@pytest.mark.parametrize(
    "name",
    [
        "../secret.js",  # out of dist
        "..%2fsecret.js",
        "sub/x.js",  # no subdirectories
        "sub",
        ".hidden.js",
        "notes.txt",  # not a served type
        "",
        "demo.js/",
        "/etc/passwd",
        "demo.js\x00.css",
    ],
)
async def test_static_refuses_anything_but_plain_names(dist: Path, name: str) -> None:
    answer = await request(DEV, f"/static/{name}")
    assert answer is not None and answer.status == 404
    assert answer.json() == {"error": "not found"}


async def test_missing_bundle_says_how_to_build_it(dist: Path) -> None:
    answer = await request(DEV, "/static/other.js")
    assert answer is not None and answer.status == 404
    assert "scripts/build_web" in answer.json()["error"]


# ---- /dev/token --------------------------------------------------------------------------


async def test_dev_token_admits_to_the_meeting() -> None:
    answer = await request(DEV, "/dev/token", query=b"meeting=m-1&user=alice-1&name=Alice%20A")
    assert answer is not None and answer.status == 200
    data = answer.json()
    assert (data["meetingId"], data["userId"]) == ("m-1", "alice-1")
    claims = jwt.decode(data["token"], options={"verify_signature": False})
    assert (claims["sub"], claims["meetingId"], claims["name"]) == ("alice-1", "m-1", "Alice A")
    assert claims["exp"] > claims["iat"]
    grant = TokenVerifier.from_config(DEV).verify(data["token"], "m-1")
    assert (grant.user_id, grant.name) == ("alice-1", "Alice A")


async def test_dev_token_is_signed_with_the_servers_secret_when_it_has_one() -> None:
    config = ServerConfig(dev=True, jwt_secret="the-servers-hs256-secret-0123456789")
    answer = await request(config, "/dev/token", query=b"meeting=m-2&user=bob")
    assert answer is not None and answer.status == 200
    token = answer.json()["token"]
    # A server with authentication on and the same secret accepts it as well.
    strict = TokenVerifier(key="the-servers-hs256-secret-0123456789")
    assert strict.verify(token, "m-2").user_id == "bob"


async def test_dev_token_makes_up_a_user_id() -> None:
    answer = await request(DEV, "/dev/token", query=b"meeting=m-3")
    assert answer is not None and answer.status == 200
    assert answer.json()["userId"].startswith("dev-")


async def test_custom_minter() -> None:
    calls: list[tuple[str, str, str | None]] = []

    def mint(meeting: str, user: str, name: str | None) -> str:
        calls.append((meeting, user, name))
        return "minted"

    answer = await request(DEV, "/dev/token", query=b"meeting=m&user=u", mint_token=mint)
    assert answer is not None and answer.json()["token"] == "minted"
    assert calls == [("m", "u", None)]


async def test_no_dev_tokens_outside_dev_mode() -> None:
    answer = await request(PROD, "/dev/token", query=b"meeting=m-1&user=alice")
    assert answer is not None and answer.status == 404
    assert "token" not in answer.json()


@pytest.mark.parametrize(
    "query",
    [
        b"",  # no meeting
        b"meeting=",
        b"meeting=a%20b",  # a space
        b"meeting=" + b"m" * 65,
        b"meeting=m&user=%3Cscript%3E",
        b"meeting=m&user=u&name=",
        b"meeting=m&user=u&name=" + b"n" * 65,
    ],
)
async def test_dev_token_checks_its_parameters(query: bytes) -> None:
    answer = await request(DEV, "/dev/token", query=query)
    assert answer is not None and answer.status == 400
    assert "error" in answer.json()
