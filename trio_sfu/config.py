"""Server configuration: one frozen :class:`ServerConfig`, from the environment and the CLI.

Every setting has a ``TRIO_SFU_*`` environment variable (see :data:`ENV_VARS`); the
command line overrides the environment. :meth:`ServerConfig.check` lists what stops the
server from starting (no JWT key outside dev mode, a bad port range, ...).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Final, final
from urllib.parse import urlsplit

import attrs

__all__ = [
    "ENV_VARS",
    "ConfigError",
    "IceServerConfig",
    "Limits",
    "ServerConfig",
    "TurnConfig",
    "WebhookConfig",
]

JWT_ALGORITHMS: Final = ("HS256", "RS256", "ES256")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """A setting has a value the server cannot run with."""


@final
@attrs.frozen
class Limits:
    """Per-server limits; a request past one is refused with ``limit_exceeded`` or
    ``rate_limited``."""

    peers_per_meeting: int = 100
    transports_per_peer: int = 8
    producers_per_peer: int = 32
    consumers_per_peer: int = 500
    #: Largest accepted text frame in bytes (PROTOCOL.md: 256 KiB).
    max_frame_bytes: int = 256 * 1024
    #: Token bucket per connection: sustained requests per second, and the burst size.
    requests_per_second: float = 100.0
    request_burst: int = 200
    #: Outgoing messages queued per connection; a peer this far behind is disconnected.
    outgoing_queue: int = 1024
    #: Consecutive bad frames (binary, oversize, not JSON, not an object) before 1008.
    max_bad_frames: int = 10


@final
@attrs.frozen
class IceServerConfig:
    """A static ``RTCIceServer`` handed to every peer in ``rtc:joined``."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


@final
@attrs.frozen
class TurnConfig:
    """TURN with coturn's ``use-auth-secret``: credentials minted per join.

    With ``secret`` set, ``rtc:joined`` carries an ICE server with ``urls``, username
    ``"<expiry>:<userId>"`` and credential ``base64(HMAC-SHA1(secret, username))``.
    """

    urls: tuple[str, ...] = ()
    secret: str | None = None
    ttl: int = 24 * 3600


@final
@attrs.frozen
class WebhookConfig:
    """Webhooks: a signed POST to each of ``urls`` for every meeting event (see
    :mod:`trio_sfu.signaling.webhooks`).

    Each event is retried with exponential backoff for up to ``retry_for`` seconds (each
    attempt bounded by ``timeout``), then dropped; at most ``queue`` events wait per URL,
    and an event past that is dropped at once.
    """

    urls: tuple[str, ...] = ()
    #: HMAC-SHA256 key of the signature; without it ``serve`` refuses URLs unless ``dev``.
    secret: str | None = None
    timeout: float = 5.0
    retry_for: float = 30.0
    queue: int = 1000


@final
@attrs.frozen
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    #: Where RTC (UDP/TCP) sockets bind, and the address announced in ICE candidates.
    listen_ip: str = "127.0.0.1"
    announced_ip: str | None = None
    rtc_min_port: int = 40000
    rtc_max_port: int = 49999
    #: One UDP and one TCP port shared by every WebRTC transport (mediasoup's
    #: WebRtcServer): that port, or 0 for a free one of rtc_min_port..rtc_max_port.
    #: None: each transport binds a port pair of its own from that range.
    rtc_port: int | None = 0
    #: Media worker processes; None: one per core. 1 runs the media in the server's
    #: own process. With several, worker i's shared RTC port is ``rtc_port + i``.
    workers: int | None = None
    #: Consumers on a worker past which a meeting on it takes new peers on a router of
    #: another worker, producers piped to it on demand (pipe-to-router).
    pipe_threshold: int = 400
    log_level: str = "info"
    #: Development mode: no token checks at all. Never in production.
    dev: bool = False
    jwt_secret: str | None = None
    #: PEM public key for RS256/ES256 tokens (instead of the HS256 secret).
    jwt_public_key: str | None = None
    jwt_algorithm: str = "HS256"
    #: Bearer token of the admin HTTP API; without it the admin API answers 403.
    admin_token: str | None = None
    #: Where the admin API's recordings (``POST /v1/rooms/{id}/record``) are written.
    recording_dir: str = "recordings"
    ice_servers: tuple[IceServerConfig, ...] = ()
    turn: TurnConfig = TurnConfig()
    limits: Limits = Limits()
    webhooks: WebhookConfig = WebhookConfig()
    #: A WebRTC transport not connected (DTLS) this many seconds after it was created is
    #: closed, and its peer told (``rtc:transportClosed``, reason ``connect_timeout``).
    transport_connect_timeout: float = 30.0
    #: A peer that has had no transport for this many seconds (joined and never created
    #: one, or all of them were closed) is ended; its socket closes with 4003.
    peer_idle_timeout: float = 60.0
    #: Bound on each peer's cleanup (closing its transports through the engine).
    cleanup_timeout: float = 5.0
    #: Bound on a graceful shutdown, after which everything left is cancelled.
    shutdown_timeout: float = 10.0

    def worker_count(self) -> int:
        """How many media workers run: ``workers``, or one per core."""
        return self.workers if self.workers is not None else (os.cpu_count() or 1)

    def check(self) -> list[str]:
        """Everything that keeps this configuration from running (empty: all good)."""
        problems: list[str] = []
        for name in ("port", "rtc_min_port", "rtc_max_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                problems.append(f"{name} {value} is not a port number")
        if self.rtc_port is not None and not 0 <= self.rtc_port <= 65535:
            problems.append(f"rtc_port {self.rtc_port} is not a port number")
        if self.workers is not None and self.workers < 1:
            problems.append(f"workers {self.workers} must be at least 1")
        if self.pipe_threshold < 1:
            problems.append(f"pipe_threshold {self.pipe_threshold} must be at least 1")
        if self.rtc_port and self.rtc_port + self.worker_count() - 1 > 65535:
            problems.append(
                f"rtc_port {self.rtc_port} + {self.worker_count()} workers passes port 65535"
            )
        if self.rtc_min_port > self.rtc_max_port:
            problems.append(
                f"rtc_min_port {self.rtc_min_port} is above rtc_max_port {self.rtc_max_port}"
            )
        if self.log_level.lower() not in LOG_LEVELS:
            problems.append(f"log_level {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        if self.jwt_algorithm not in JWT_ALGORITHMS:
            problems.append(
                f"jwt_algorithm {self.jwt_algorithm!r} is not one of {', '.join(JWT_ALGORITHMS)}"
            )
        elif not self.dev:
            if self.jwt_algorithm == "HS256" and not self.jwt_secret:
                problems.append(
                    "no JWT secret: set TRIO_SFU_JWT_SECRET or --jwt-secret "
                    "(or run with --dev, which disables authentication)"
                )
            if self.jwt_algorithm != "HS256" and not self.jwt_public_key:
                problems.append(
                    f"{self.jwt_algorithm} needs a public key (TRIO_SFU_JWT_PUBLIC_KEY)"
                )
        if self.turn.secret and not self.turn.urls:
            problems.append("TRIO_SFU_TURN_SECRET is set but TRIO_SFU_TURN_URLS is empty")
        if self.turn.ttl <= 0:
            problems.append("the TURN credential ttl must be positive")
        problems.extend(_webhook_problems(self.webhooks, dev=self.dev))
        for name in ("transport_connect_timeout", "peer_idle_timeout"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive")
        limits = attrs.asdict(self.limits)
        problems.extend(f"limit {k} must be positive" for k, v in limits.items() if v <= 0)
        return problems


def _webhook_problems(webhooks: WebhookConfig, *, dev: bool) -> list[str]:
    problems = []
    for url in webhooks.urls:
        try:
            parts = urlsplit(url)
            # .port raises ValueError for a port that is not a number up to 65535.
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:
            valid = False
        if not valid:
            problems.append(f"webhook URL {url!r} is not an http:// or https:// URL")
    if webhooks.urls and not webhooks.secret and not dev:
        problems.append(
            "webhook URLs but no TRIO_SFU_WEBHOOK_SECRET to sign the events with "
            "(or run with --dev, which sends them unsigned)"
        )
    if not webhooks.timeout > 0:
        problems.append("the webhook timeout must be positive")
    if not webhooks.retry_for >= 0:
        problems.append("the webhook retry time must not be negative")
    if webhooks.queue < 1:
        problems.append("the webhook queue must hold at least one event")
    return problems


#: Environment variable -> ServerConfig attribute (``limits.x`` and ``turn.x`` nest).
ENV_VARS: Final[dict[str, str]] = {
    "TRIO_SFU_HOST": "host",
    "TRIO_SFU_PORT": "port",
    "TRIO_SFU_LISTEN_IP": "listen_ip",
    "TRIO_SFU_ANNOUNCED_IP": "announced_ip",
    "TRIO_SFU_RTC_MIN_PORT": "rtc_min_port",
    "TRIO_SFU_RTC_MAX_PORT": "rtc_max_port",
    "TRIO_SFU_RTC_PORT": "rtc_port",
    "TRIO_SFU_WORKERS": "workers",
    "TRIO_SFU_PIPE_THRESHOLD": "pipe_threshold",
    "TRIO_SFU_LOG_LEVEL": "log_level",
    "TRIO_SFU_DEV": "dev",
    "TRIO_SFU_JWT_SECRET": "jwt_secret",
    "TRIO_SFU_JWT_PUBLIC_KEY": "jwt_public_key",
    "TRIO_SFU_JWT_ALGORITHM": "jwt_algorithm",
    "TRIO_SFU_ADMIN_TOKEN": "admin_token",
    "TRIO_SFU_RECORDING_DIR": "recording_dir",
    "TRIO_SFU_ICE_SERVERS": "ice_servers",
    "TRIO_SFU_TURN_URLS": "turn.urls",
    "TRIO_SFU_TURN_SECRET": "turn.secret",
    "TRIO_SFU_TURN_TTL": "turn.ttl",
    "TRIO_SFU_WEBHOOK_URLS": "webhooks.urls",
    "TRIO_SFU_WEBHOOK_SECRET": "webhooks.secret",
    "TRIO_SFU_WEBHOOK_TIMEOUT": "webhooks.timeout",
    "TRIO_SFU_WEBHOOK_RETRY_FOR": "webhooks.retry_for",
    "TRIO_SFU_WEBHOOK_QUEUE": "webhooks.queue",
    "TRIO_SFU_TRANSPORT_CONNECT_TIMEOUT": "transport_connect_timeout",
    "TRIO_SFU_PEER_IDLE_TIMEOUT": "peer_idle_timeout",
    "TRIO_SFU_MAX_PEERS_PER_MEETING": "limits.peers_per_meeting",
    "TRIO_SFU_MAX_TRANSPORTS_PER_PEER": "limits.transports_per_peer",
    "TRIO_SFU_MAX_PRODUCERS_PER_PEER": "limits.producers_per_peer",
    "TRIO_SFU_MAX_CONSUMERS_PER_PEER": "limits.consumers_per_peer",
    "TRIO_SFU_MAX_FRAME_BYTES": "limits.max_frame_bytes",
    "TRIO_SFU_REQUESTS_PER_SECOND": "limits.requests_per_second",
    "TRIO_SFU_REQUEST_BURST": "limits.request_burst",
    "TRIO_SFU_OUTGOING_QUEUE": "limits.outgoing_queue",
}

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{text!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def parse_ice_servers(text: str) -> tuple[IceServerConfig, ...]:
    """``TRIO_SFU_ICE_SERVERS``: a JSON list of RTCIceServer objects, or comma-separated
    URLs (``stun:stun.example.org:3478,turn:...``)."""
    text = text.strip()
    if not text:
        return ()
    if not text.startswith("["):
        return (IceServerConfig(urls=tuple(u.strip() for u in text.split(",") if u.strip())),)
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"TRIO_SFU_ICE_SERVERS is not JSON: {exc}") from None
    servers = []
    for entry in raw if isinstance(raw, list) else [None]:
        if not isinstance(entry, dict) or "urls" not in entry:
            raise ConfigError("TRIO_SFU_ICE_SERVERS entries must be objects with 'urls'")
        urls = entry["urls"]
        urls = [urls] if isinstance(urls, str) else urls
        if not (isinstance(urls, list) and all(isinstance(u, str) for u in urls)):
            raise ConfigError("TRIO_SFU_ICE_SERVERS 'urls' must be a string or strings")
        username, credential = entry.get("username"), entry.get("credential")
        if not all(v is None or isinstance(v, str) for v in (username, credential)):
            raise ConfigError("TRIO_SFU_ICE_SERVERS username/credential must be strings")
        servers.append(IceServerConfig(tuple(urls), username, credential))
    return tuple(servers)


def _convert(target: Any, name: str, text: str) -> Any:
    """Turn the text of an environment variable into the type of ``target.<name>``."""
    current = getattr(target, name)
    field_type = str(attrs.fields_dict(type(target))[name].type)
    if isinstance(current, bool):
        return parse_bool(text)
    if field_type == "int | None":
        if not text.strip():
            return None
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{name}: {text!r} is not a number") from None
    try:
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a number") from None
    if name == "ice_servers":
        return parse_ice_servers(text)
    if name == "urls":
        return tuple(u.strip() for u in text.split(",") if u.strip())
    if "None" in field_type and not text:
        return None
    return text


def config_from_env(environ: Mapping[str, str], base: ServerConfig | None = None) -> ServerConfig:
    """A config with every ``TRIO_SFU_*`` variable in ``environ`` applied to ``base``.

    Raises :class:`ConfigError` for a value of the wrong type.
    """
    config = base if base is not None else ServerConfig()
    for var, path in ENV_VARS.items():
        if var not in environ:
            continue
        config = with_setting(config, path, environ[var], source=var)
    return config


def with_setting(config: ServerConfig, path: str, text: str, *, source: str) -> ServerConfig:
    """``config`` with the setting at ``path`` (``port``, ``limits.x``) parsed from text."""
    try:
        if "." in path:
            group_name, name = path.split(".", 1)
            group = getattr(config, group_name)
            group = attrs.evolve(group, **{name: _convert(group, name, text)})
            return attrs.evolve(config, **{group_name: group})
        return attrs.evolve(config, **{path: _convert(config, path, text)})
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
