"""``trio-sfu token`` and ``trio-sfu serve``: options, environment, refusal to start without
a secret, and a real ``serve`` process shut down by a signal."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
import trio

import trio_sfu.engine
from trio_sfu.cli import build_parser, main, serve_config
from trio_sfu.client.signaling import open_signaling
from trio_sfu.config import ConfigError, ServerConfig, config_from_env

SECRET = "cli-tests-secret-0123456789abcdef0123456"
ROOT = Path(__file__).resolve().parent.parent


def test_token_prints_a_token_with_the_right_claims(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["token", "--meeting", "standup", "--user", "alice", "--ttl", "90", "--name", "Alice"]
    assert main(argv, {"TRIO_SFU_JWT_SECRET": SECRET}) == 0
    out = capsys.readouterr().out.strip()
    claims = jwt.decode(out, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["meetingId"] == "standup"
    assert claims["name"] == "Alice"
    assert (claims["canPublish"], claims["canSubscribe"]) == (True, True)
    assert claims["exp"] - claims["iat"] == 90
    assert abs(claims["iat"] - time.time()) < 5


def test_token_rights_and_secret_option(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["token", "--meeting", "m", "--user", "u", "--no-publish", "--no-subscribe"]
    assert main([*argv, "--jwt-secret", SECRET], {}) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert (claims["canPublish"], claims["canSubscribe"]) == (False, False)
    assert "name" not in claims


def test_token_plain_transport_claim(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["token", "--meeting", "m", "--user", "bot", "--jwt-secret", SECRET]
    assert main([*argv, "--plain-transport"], {}) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert claims["canPlainTransport"] is True
    assert main(argv, {}) == 0  # without the option the claim is left out (false)
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert "canPlainTransport" not in claims


def test_token_needs_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--meeting", "m", "--user", "u"], {}) == 2
    assert "TRIO_SFU_JWT_SECRET" in capsys.readouterr().err


def test_serve_refuses_to_start_without_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "0"], {}) == 2
    err = capsys.readouterr().err
    assert "no JWT secret" in err
    assert "--dev" in err
    assert "refusing to start" in err


def test_serve_refuses_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"TRIO_SFU_JWT_SECRET": SECRET}
    assert main(["serve", "--rtc-min-port", "50000", "--rtc-max-port", "40000"], env) == 2
    assert "rtc_min_port 50000 is above rtc_max_port 40000" in capsys.readouterr().err
    assert main(["serve"], {**env, "TRIO_SFU_PORT": "eighty"}) == 2
    assert "TRIO_SFU_PORT" in capsys.readouterr().err
    assert main(["serve", "--log-level", "loud"], env) == 2
    assert "log_level" in capsys.readouterr().err


def test_serve_without_an_engine_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(trio_sfu.engine, "create_engine", raising=False)
    assert main(["serve", "--dev", "--port", "0"], {}) == 1
    err = capsys.readouterr().err
    assert "DEV MODE" in err
    assert "create_engine" in err


def test_options_override_the_environment() -> None:
    env = {
        "TRIO_SFU_HOST": "0.0.0.0",
        "TRIO_SFU_PORT": "7000",
        "TRIO_SFU_DEV": "yes",
        "TRIO_SFU_ANNOUNCED_IP": "203.0.113.7",
        "TRIO_SFU_ADMIN_TOKEN": "adm",
        "TRIO_SFU_MAX_PEERS_PER_MEETING": "5",
        "TRIO_SFU_REQUESTS_PER_SECOND": "2.5",
        "TRIO_SFU_TURN_URLS": "turn:a.example:3478, turns:a.example:5349",
        "TRIO_SFU_TURN_SECRET": "north",
        "TRIO_SFU_ICE_SERVERS": '[{"urls": "stun:s.example:3478"}]',
    }
    args = build_parser().parse_args(["serve", "--port", "9000", "--listen-ip", "10.0.0.2"])
    config = serve_config(args, env)
    assert (config.host, config.port, config.listen_ip) == ("0.0.0.0", 9000, "10.0.0.2")
    assert config.announced_ip == "203.0.113.7"
    assert config.dev is True
    assert config.admin_token == "adm"
    assert config.limits.peers_per_meeting == 5
    assert config.limits.requests_per_second == 2.5
    assert config.turn.urls == ("turn:a.example:3478", "turns:a.example:5349")
    assert config.turn.secret == "north"
    assert config.ice_servers[0].urls == ("stun:s.example:3478",)
    assert config.check() == []
    assert ServerConfig().port == 8080
    # One shared RTC port by default (0: a free one of the range); empty: one per transport.
    assert ServerConfig().rtc_port == 0
    assert config_from_env({"TRIO_SFU_RTC_PORT": "40000"}).rtc_port == 40000
    assert config_from_env({"TRIO_SFU_RTC_PORT": ""}).rtc_port is None
    assert (
        serve_config(build_parser().parse_args(["serve", "--rtc-port", "41000"]), {}).rtc_port
        == 41000
    )
    with pytest.raises(ConfigError, match="TRIO_SFU_RTC_PORT"):
        config_from_env({"TRIO_SFU_RTC_PORT": "any"})
    assert (
        "rtc_port 70000 is not a port number"
        in config_from_env({"TRIO_SFU_RTC_PORT": "70000"}).check()
    )
    with pytest.raises(ConfigError, match="TRIO_SFU_DEV"):
        config_from_env({"TRIO_SFU_DEV": "maybe"})
    assert config_from_env({"TRIO_SFU_DEV": "0"}).dev is False


# ---- a real process ---------------------------------------------------------------------------

# Runs the CLI with the test double as the engine (the one seam: trio_sfu.engine.create_engine).
LAUNCHER = """
import sys
sys.path.insert(0, {root!r})
import trio_sfu.engine
from tests.fake_engine import FakeEngine
trio_sfu.engine.create_engine = lambda config: FakeEngine()
from trio_sfu.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes, seen: bytearray) -> bytes:
    while marker not in seen:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise AssertionError(f"process output ended before {marker!r}: {bytes(seen)!r}")
        seen += chunk
    return bytes(seen)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_serve_process_shuts_down_gracefully_on_a_signal(signum: signal.Signals) -> None:
    command = [sys.executable, "-c", LAUNCHER.format(root=str(ROOT))]
    command += ["serve", "--dev", "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"]
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert process.stdout is not None and process.stderr is not None
            out = await read_until(process.stdout, b"/ws)\n", bytearray())
            url = out.decode().split("(WebSocket ")[1].split(")")[0]
            async with open_signaling(url) as client:
                joined = await client.join("m")  # dev mode: no token needed
                assert joined["userId"].startswith("dev-")
                process.send_signal(signum)
                note = await client.next_notification("rtc:roomClosed")
                assert note.data == {"meetingId": "m", "reason": "server_shutdown"}
                assert (await client.wait_closed()).code == 1001
            assert await process.wait() == 0
            err = bytearray()
            while chunk := await process.stderr.receive_some(4096):
                err += chunk
            assert b"AUTHENTICATION IS DISABLED" in err
            assert b"Traceback" not in err
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()
