"""The ``trio-sfu`` command line (also ``python -m trio_sfu``).

    trio-sfu serve [--host H] [--port P] [--listen-ip IP] [--announced-ip IP]
                   [--rtc-min-port N] [--rtc-max-port N] [--log-level L] [--dev]
                   [--jwt-secret S] [--jwt-public-key FILE] [--jwt-algorithm A]
                   [--webhook-urls URL,URL...]
    trio-sfu token --meeting M --user U [--ttl S] [--no-publish] [--no-subscribe] [--name N]
                   [--plain-transport]
    trio-sfu ingest --meeting M --file clip.webm [--url ws://...] [--token T] [--loop]
                   [--print-command]

Every ``serve`` option also reads a ``TRIO_SFU_*`` environment variable (the option wins);
see :data:`trio_sfu.config.ENV_VARS` for the whole list (limits, TURN, admin token...).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import trio

from trio_sfu.config import ConfigError, ServerConfig, config_from_env, with_setting

logger = logging.getLogger("trio_sfu")

# ``serve`` options that map one to one onto a ServerConfig attribute (and so onto its
# TRIO_SFU_* variable in trio_sfu.config.ENV_VARS).
_SERVE_OPTIONS = (
    "host",
    "port",
    "listen_ip",
    "announced_ip",
    "rtc_min_port",
    "rtc_max_port",
    "rtc_port",
    "workers",
    "pipe_threshold",
    "log_level",
    "jwt_secret",
    "jwt_algorithm",
)

DEV_BANNER = """\
************************************************************************
*  trio-sfu is running in DEV MODE: AUTHENTICATION IS DISABLED.        *
*  Anyone who can reach this port can join any meeting.                *
*  Never use --dev (TRIO_SFU_DEV) in production.                       *
************************************************************************"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-sfu", description="trio-sfu: a WebRTC selective forwarding unit on Trio."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the SFU",
        description="Run the SFU. Each option also reads its TRIO_SFU_* environment variable.",
    )
    serve.add_argument("--host", help="HTTP/WebSocket bind address [TRIO_SFU_HOST, 127.0.0.1]")
    serve.add_argument("--port", help="HTTP/WebSocket port; 0 picks one [TRIO_SFU_PORT, 8080]")
    serve.add_argument(
        "--listen-ip", help="IP the RTC sockets bind to [TRIO_SFU_LISTEN_IP, 127.0.0.1]"
    )
    serve.add_argument(
        "--announced-ip", help="IP announced in ICE candidates (NAT) [TRIO_SFU_ANNOUNCED_IP]"
    )
    serve.add_argument("--rtc-min-port", help="lowest RTC port [TRIO_SFU_RTC_MIN_PORT, 40000]")
    serve.add_argument("--rtc-max-port", help="highest RTC port [TRIO_SFU_RTC_MAX_PORT, 49999]")
    serve.add_argument(
        "--rtc-port",
        help="one UDP+TCP port for every transport; 0 picks one of the range; empty: a port "
        "pair per transport [TRIO_SFU_RTC_PORT, unset]",
    )
    serve.add_argument(
        "--workers",
        help="media worker processes; 1 runs the media in this process "
        "[TRIO_SFU_WORKERS, the number of cores]",
    )
    serve.add_argument(
        "--pipe-threshold",
        help="consumers on a worker past which its meetings take new peers on another "
        "worker [TRIO_SFU_PIPE_THRESHOLD, 400]",
    )
    serve.add_argument(
        "--log-level",
        help="debug, info, warning, error or critical [TRIO_SFU_LOG_LEVEL, info]",
    )
    serve.add_argument(
        "--dev",
        action="store_true",
        default=None,
        help="development mode: NO AUTHENTICATION [TRIO_SFU_DEV]",
    )
    serve.add_argument(
        "--jwt-secret", help="HS256 secret of the access tokens [TRIO_SFU_JWT_SECRET]"
    )
    serve.add_argument(
        "--jwt-public-key",
        metavar="FILE",
        help="PEM public key file for RS256/ES256 tokens [TRIO_SFU_JWT_PUBLIC_KEY: the PEM text]",
    )
    serve.add_argument(
        "--jwt-algorithm", help="HS256, RS256 or ES256 [TRIO_SFU_JWT_ALGORITHM, HS256]"
    )
    serve.add_argument(
        "--webhook-urls",
        metavar="URLS",
        help="comma-separated URLs that get a POST for every meeting event, signed with "
        "TRIO_SFU_WEBHOOK_SECRET [TRIO_SFU_WEBHOOK_URLS]",
    )

    token = sub.add_parser(
        "token",
        help="print an access token",
        description="Print a signed access token (HS256 with TRIO_SFU_JWT_SECRET or --jwt-secret).",
    )
    token.add_argument("--meeting", required=True, help="the meeting id it admits to")
    token.add_argument("--user", required=True, help="the user id (the 'sub' claim)")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds of validity [3600]")
    token.add_argument("--name", help="display name (the 'name' claim)")
    token.add_argument("--no-publish", action="store_true", help="canPublish: false")
    token.add_argument("--no-subscribe", action="store_true", help="canSubscribe: false")
    token.add_argument(
        "--plain-transport",
        action="store_true",
        help="canPlainTransport: true (may create PlainTransports: ingest, bots)",
    )
    token.add_argument("--jwt-secret", help="HS256 secret [TRIO_SFU_JWT_SECRET]")

    ingest = sub.add_parser(
        "ingest",
        help="publish a media file into a meeting (ffmpeg over PlainTransports)",
        description="Publish a file's video (VP8) and audio (Opus) into a meeting through "
        "PlainTransports, sent by Debian's ffmpeg in real time. The token needs "
        "canPlainTransport (trio-sfu token --plain-transport).",
    )
    ingest.add_argument("--meeting", required=True, help="the meeting id")
    ingest.add_argument("--file", required=True, help="the media file (e.g. clip.webm)")
    ingest.add_argument(
        "--url", default="ws://127.0.0.1:8080/ws", help="signaling URL [ws://127.0.0.1:8080/ws]"
    )
    ingest.add_argument("--token", help="access token [TRIO_SFU_TOKEN]")
    ingest.add_argument("--name", default="ingest", help="display name [ingest]")
    ingest.add_argument("--loop", action="store_true", help="loop the file until interrupted")
    ingest.add_argument(
        "--print-command",
        action="store_true",
        help="print the ffmpeg command line instead of running it; hold the transports "
        "until interrupted",
    )
    return parser


def serve_config(args: argparse.Namespace, environ: Mapping[str, str]) -> ServerConfig:
    """The serve configuration: defaults, then the environment, then the options."""
    config = config_from_env(environ)
    for dest in _SERVE_OPTIONS:
        value = getattr(args, dest)
        if value is not None:
            config = with_setting(config, dest, str(value), source=f"--{dest.replace('_', '-')}")
    if args.dev:
        config = with_setting(config, "dev", "1", source="--dev")
    if args.jwt_public_key is not None:
        try:
            with open(args.jwt_public_key, encoding="ascii") as file:
                pem = file.read()
        except OSError as exc:
            raise ConfigError(f"--jwt-public-key: {exc}") from None
        config = with_setting(config, "jwt_public_key", pem, source="--jwt-public-key")
    if args.webhook_urls is not None:
        config = with_setting(config, "webhooks.urls", args.webhook_urls, source="--webhook-urls")
    return config


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx (the webhooks' client) logs every request with its whole URL, which may carry
    # the receiver's key; the webhooks log what matters themselves, without it.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def _load_engine_factory() -> Any:
    """``trio_sfu.engine.create_engine``: the one seam between the CLI and the media engine."""
    try:
        module = importlib.import_module("trio_sfu.engine")
    except ImportError as exc:
        print(f"trio-sfu serve: cannot import the media engine: {exc}", file=sys.stderr)
        return None
    factory = getattr(module, "create_engine", None)
    if factory is None:
        print(
            "trio-sfu serve: the media engine is not available yet "
            "(trio_sfu.engine.create_engine is missing), so the server cannot run media.",
            file=sys.stderr,
        )
    return factory


async def _watch_signals(
    signals: Any, server: Any, cancel_scope: trio.CancelScope, grace: float
) -> None:
    async for signum in signals:
        if not server.shutting_down:
            logger.warning(
                "%s: shutting down (peers get rtc:roomClosed); again to quit at once",
                signal.Signals(signum).name,
            )
            server.shutdown()
            cancel_scope.deadline = trio.current_time() + grace + 2.0
        else:
            logger.warning("second signal: exiting now")
            cancel_scope.cancel()


async def _serve_main(config: ServerConfig, factory: Any, out: TextIO) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        made = factory(config)
        if hasattr(made, "__aenter__"):
            async with made as engine:
                await _serve_with(config, engine, signals, out)
        else:
            engine = await made if hasattr(made, "__await__") else made
            await _serve_with(config, engine, signals, out)


async def _serve_with(config: ServerConfig, engine: Any, signals: Any, out: TextIO) -> None:
    from trio_sfu.server import serve_sfu

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_sfu, config, engine)
        # Everything made so far (modules, classes, generated converters: most of the
        # heap) lives as long as the process: keep it out of the cyclic collector's full
        # passes, which otherwise scan it again and again while media flows.
        gc.freeze()
        print(f"trio-sfu: listening on {server.http_url} (WebSocket {server.ws_url})", file=out)
        out.flush()
        nursery.start_soon(
            _watch_signals, signals, server, nursery.cancel_scope, config.shutdown_timeout
        )
        await server.finished.wait()
        nursery.cancel_scope.cancel()
    logger.info("stopped")


def _serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        config = serve_config(args, environ)
    except ConfigError as exc:
        print(f"trio-sfu serve: {exc}", file=sys.stderr)
        return 2
    problems = config.check()
    if problems:
        for problem in problems:
            print(f"trio-sfu serve: {problem}", file=sys.stderr)
        print("trio-sfu serve: refusing to start", file=sys.stderr)
        return 2
    _configure_logging(config.log_level)
    if config.dev:
        print(DEV_BANNER, file=sys.stderr)
        logger.warning("DEV MODE: authentication is disabled")
    factory = _load_engine_factory()
    if factory is None:
        return 1
    trio.run(_serve_main, config, factory, sys.stdout)
    return 0


def _token(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from trio_sfu.signaling.auth import issue_token

    secret = args.jwt_secret or environ.get("TRIO_SFU_JWT_SECRET")
    if not secret:
        print("trio-sfu token: set TRIO_SFU_JWT_SECRET or --jwt-secret", file=sys.stderr)
        return 2
    if args.ttl <= 0:
        print("trio-sfu token: --ttl must be positive", file=sys.stderr)
        return 2
    print(
        issue_token(
            secret,
            meeting_id=args.meeting,
            user_id=args.user,
            ttl=args.ttl,
            name=args.name,
            can_publish=not args.no_publish,
            can_subscribe=not args.no_subscribe,
            can_plain_transport=args.plain_transport,
        )
    )
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    if args.command == "serve":
        return _serve(args, env)
    if args.command == "token":
        return _token(args, env)
    if args.command == "ingest":
        from trio_sfu.ingest import main_ingest

        if args.token is None:
            args.token = env.get("TRIO_SFU_TOKEN")
        return main_ingest(args)
    return 2
