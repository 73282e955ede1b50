"""The server under test of a fan-out run: ``trio-sfu serve --dev`` (with its admin API,
``GET /v1/workers``) or the reference relay, started pinned as the options say."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from typing import Any

import trio

from trio_sfu.bench.children import Child, open_child
from trio_sfu.bench.options import Options, pinned

__all__ = ["admin_workers", "start_target"]


def _server_env(admin_token: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRIO_SFU_WORKERS", None)  # --workers says it
    env.update(
        {
            "TRIO_SFU_MAX_PEERS_PER_MEETING": "100000",
            "TRIO_SFU_MAX_CONSUMERS_PER_PEER": "100000",
            "TRIO_SFU_REQUESTS_PER_SECOND": "100000",
            "TRIO_SFU_REQUEST_BURST": "100000",
            "TRIO_SFU_OUTGOING_QUEUE": "100000",
            "TRIO_SFU_ADMIN_TOKEN": admin_token,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


async def start_target(
    target: str, opts: Options, name: str, workers: int
) -> tuple[Child, dict[str, Any]]:
    """The SFU with ``workers`` workers (``target="sfu"``) or the relay, once it listens;
    and the load generators' job, what they need to reach it."""
    python = sys.executable
    log = opts.workdir / f"{name}-{target}-{workers}w-server.log"
    if target == "sfu":
        command = [python, "-m", "trio_sfu", "serve", "--dev", "--port", "0"]
        command += ["--workers", str(workers), "--log-level", "warning"]
    else:
        command = [python, "-m", "trio_sfu.bench.relay", "--max-seconds", "600"]
    child = await open_child(
        pinned(opts.server_cpu, command, opts.nice),
        log,
        f"{target} server",
        _server_env(opts.admin_token),
    )
    with trio.fail_after(60):
        while True:
            text = await child.line()
            if target == "sfu" and "(WebSocket " in text:
                url = text.split("(WebSocket ", 1)[1].rstrip(")")
                http = text.split("listening on ", 1)[1].split(" ", 1)[0]
                return child, {"mode": "sfu", "url": url, "http": http, "meeting": "bench"}
            if target == "relay" and text.startswith("{"):
                port = json.loads(text)["port"]
                return child, {"mode": "relay", "relay": ["127.0.0.1", port]}


def _get_workers_blocking(http_url: str, token: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        f"{http_url.rstrip('/')}/v1/workers", headers={"Authorization": f"Bearer {token}"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only
    with opener.open(request, timeout=10) as answer:
        workers: list[dict[str, Any]] = json.loads(answer.read())["workers"]
    return workers


async def admin_workers(base_job: dict[str, Any], opts: Options) -> list[dict[str, Any]]:
    """The server's ``GET /v1/workers``: each worker's pid, load, counters and meetings."""
    return await trio.to_thread.run_sync(_get_workers_blocking, base_job["http"], opts.admin_token)
