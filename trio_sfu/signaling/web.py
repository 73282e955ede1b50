"""HTTP handlers of the demo page: ``GET /``, ``GET /static/<file>`` and ``GET /dev/token``.

::

    if await handle_web_request(scope, receive, send, config=config):
        return                      # answered: the demo page, a bundle file or a dev token
    ...                             # not a demo path: the app's own routing goes on

* ``GET /`` (and ``/index.html``): ``trio_sfu/web/index.html``, told whether the server runs
  in dev mode (``<body data-dev="true">``): the page then fetches its token from
  ``/dev/token``; with authentication on it shows a token field instead.
* ``GET /static/<file>``: a file of the esbuild output ``trio_sfu/web/dist/`` (the bundle,
  its source map, the stylesheet). Only plain file names of known types are served; anything
  else is 404. A missing file is 404 with a hint to run ``scripts/build_web``.
* ``GET /dev/token?meeting=M&user=U[&name=N]``: ``{"token", "meetingId", "userId"}``, a
  token for that meeting. Only in ``--dev`` mode; 404 otherwise, so a production server
  never mints tokens for anyone who asks.

``HEAD`` is answered like ``GET`` without the body; other methods get 405. The handlers
never read the request body (GET has none), so the caller may already have drained it.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs

import trio

from trio_sfu.config import ServerConfig
from trio_sfu.signaling.auth import issue_token

__all__ = [
    "DIST_DIR",
    "WEB_DIR",
    "MintToken",
    "handle_web_request",
    "mint_dev_token",
]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: ``(meeting_id, user_id, display_name) -> token``.
MintToken = Callable[[str, str, str | None], str]

#: The web sources (index.html, demo.css, src/, package.json) and the built bundle.
WEB_DIR: Final = Path(__file__).resolve().parent.parent / "web"
DIST_DIR: Final = WEB_DIR / "dist"
STATIC_PREFIX: Final = "/static/"
TOKEN_PATH: Final = "/dev/token"

#: Content types of what /static/ serves; any other suffix is 404.
CONTENT_TYPES: Final[dict[str, str]] = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
#: A plain file name: no separators, no leading dot (so no "..", no hidden files).
_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: Meeting and user ids the dev endpoint accepts.
_SAFE_ID: Final = re.compile(r"[A-Za-z0-9_.@:-]{1,64}")
_MAX_NAME: Final = 64
#: The dev tokens' validity.
DEV_TOKEN_TTL: Final = 12 * 3600
#: Signs dev tokens when the server has no HS256 secret: dev mode never checks signatures.
_DEV_SECRET: Final = secrets.token_hex(32)
BUILD_HINT: Final = "the web bundle is not built: run scripts/build_web"


def mint_dev_token(config: ServerConfig, meeting_id: str, user_id: str, name: str | None) -> str:
    """A token for the demo in dev mode: signed with the server's HS256 secret when it has
    one (so it also passes a signature check), else with a per-process random secret."""
    secret = config.jwt_secret if config.jwt_algorithm == "HS256" and config.jwt_secret else None
    return issue_token(
        secret or _DEV_SECRET,
        meeting_id=meeting_id,
        user_id=user_id,
        ttl=DEV_TOKEN_TTL,
        name=name,
    )


async def handle_web_request(
    scope: dict[str, Any],
    receive: Receive,
    send: Send,
    *,
    config: ServerConfig,
    mint_token: MintToken | None = None,
) -> bool:
    """Answer ``scope`` if it is one of the demo's paths; ``False`` (nothing sent) if not.

    ``mint_token`` makes the dev tokens (default: :func:`mint_dev_token` with ``config``).
    ``receive`` is not used: these are GET requests without a body.
    """
    if scope.get("type") != "http":
        return False
    path: str = scope["path"]
    if path not in ("/", "/index.html", TOKEN_PATH) and not path.startswith(STATIC_PREFIX):
        return False
    method = scope.get("method", "GET")
    if method not in ("GET", "HEAD"):
        answer = _json(405, {"error": "use GET"}, [(b"allow", b"GET, HEAD")])
    elif path.startswith(STATIC_PREFIX):
        answer = await _static(path[len(STATIC_PREFIX) :])
    elif path == TOKEN_PATH:
        query = scope.get("query_string", b"").decode("latin-1")
        if mint_token is None:
            answer = _dev_token(config, query, partial(mint_dev_token, config))
        else:
            answer = _dev_token(config, query, mint_token)
    else:
        answer = await _index(config)
    await _send(send, answer, head=method == "HEAD")
    return True


# ---- handlers ------------------------------------------------------------------------

_Answer = tuple[int, bytes, str, list[tuple[bytes, bytes]]]


def _json(
    status: int, payload: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> _Answer:
    return status, json.dumps(payload).encode(), "application/json", extra or []


async def _index(config: ServerConfig) -> _Answer:
    try:
        html = await trio.Path(WEB_DIR / "index.html").read_text(encoding="utf-8")
    except OSError:
        return _json(404, {"error": "trio_sfu/web/index.html is missing from this install"})
    dev = "true" if config.dev else "false"
    html = html.replace('data-dev="false"', f'data-dev="{dev}"', 1)
    return 200, html.encode(), CONTENT_TYPES[".html"], []


async def _static(name: str) -> _Answer:
    suffix = Path(name).suffix
    if not _SAFE_NAME.fullmatch(name) or suffix not in CONTENT_TYPES:
        return _json(404, {"error": "not found"})
    try:
        body = await trio.Path(DIST_DIR / name).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return _json(404, {"error": f"{name} not found: {BUILD_HINT}"})
    return 200, body, CONTENT_TYPES[suffix], []


def _dev_token(config: ServerConfig, query: str, mint: MintToken) -> _Answer:
    if not config.dev:
        return _json(404, {"error": "not found (dev tokens exist only in --dev mode)"})
    params = parse_qs(query, keep_blank_values=True, max_num_fields=8)
    meeting = params.get("meeting", [""])[0]
    user = params.get("user", [""])[0] or f"dev-{secrets.token_hex(4)}"
    name = params.get("name", [None])[0]
    if not _SAFE_ID.fullmatch(meeting):
        return _json(400, {"error": "meeting: 1-64 characters of A-Z a-z 0-9 _ . @ : -"})
    if not _SAFE_ID.fullmatch(user):
        return _json(400, {"error": "user: 1-64 characters of A-Z a-z 0-9 _ . @ : -"})
    if name is not None and (not name or len(name) > _MAX_NAME):
        return _json(400, {"error": f"name: 1-{_MAX_NAME} characters"})
    token = mint(meeting, user, name)
    return _json(200, {"token": token, "meetingId": meeting, "userId": user})


async def _send(send: Send, answer: _Answer, *, head: bool) -> None:
    status, body, content_type, extra = answer
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
