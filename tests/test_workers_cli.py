"""`trio-sfu serve --workers 2` as a real process tree: no orphan worker, ever.

A graceful shutdown (SIGTERM) tells the peers ``server_shutdown``, closes their sockets
(1001) and drains the workers; a server killed with SIGKILL leaves workers that notice
their channel's end and exit by themselves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import trio

from tests.test_cli import read_until
from trio_sfu.client.signaling import open_signaling

ADMIN = "adm-workers"


def process_gone(pid: int) -> bool:
    """No such process, or a zombie waiting for init (it runs no more)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            state = file.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


async def wait_gone(pids: list[int]) -> None:
    while not all(process_gone(pid) for pid in pids):  # noqa: ASYNC110 (no event)
        await trio.sleep(0.05)


async def get_json(port: int, path: str) -> Any:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        headers = [("host", "127.0.0.1"), ("authorization", f"Bearer {ADMIN}")]
        await stream.send_all(conn.send(h11.Request(method="GET", target=path, headers=headers)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return json.loads(body)


@asynccontextmanager
async def serve_process(*extra: str) -> AsyncIterator[tuple[trio.Process, str, int]]:
    """``trio-sfu serve --dev --workers 2``: the process, its WebSocket URL and HTTP port."""
    command = [sys.executable, "-m", "trio_sfu", "serve", "--dev", "--port", "0"]
    command += ["--workers", "2", "--log-level", "warning", *extra]
    env = {**os.environ, "TRIO_SFU_ADMIN_TOKEN": ADMIN}
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        assert process.stdout is not None
        out = await read_until(process.stdout, b"/ws)\n", bytearray())
        url = out.decode().split("(WebSocket ")[1].split(")")[0]
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        yield process, url, port
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                await pipe.aclose()


async def test_sigterm_closes_meetings_then_drains_the_workers() -> None:
    with trio.fail_after(30):
        async with serve_process() as (process, url, port):
            workers = (await get_json(port, "/v1/workers"))["workers"]
            pids = [w["pid"] for w in workers]
            assert len(pids) == 2 and all(w["alive"] for w in workers)
            assert all(pid != process.pid and not process_gone(pid) for pid in pids)
            async with open_signaling(url) as client:
                await client.join("m")
                created = await client.create_transport("recv")
                ports = {c["port"] for c in created["iceCandidates"]}
                assert ports <= {w["udpPort"] for w in workers}
                process.send_signal(signal.SIGTERM)
                note = await client.next_notification("rtc:roomClosed")
                assert note.data == {"meetingId": "m", "reason": "server_shutdown"}
                assert (await client.wait_closed()).code == 1001
            assert await process.wait() == 0
            with trio.fail_after(5):
                await wait_gone(pids)
            assert process.stderr is not None
            err = bytearray()
            while chunk := await process.stderr.receive_some(4096):
                err += chunk
            assert b"Traceback" not in err
            assert b"died" not in err  # the workers were drained, not lost


async def test_workers_exit_by_themselves_when_the_server_is_killed() -> None:
    with trio.fail_after(30):
        async with serve_process() as (process, url, port):
            pids = [w["pid"] for w in (await get_json(port, "/v1/workers"))["workers"]]
            async with open_signaling(url) as client:
                await client.join("m")
                await client.create_transport("send")
                process.kill()
                assert await process.wait() == -signal.SIGKILL
                # The end of their channel is the parent's death: within a second.
                with trio.fail_after(1.5):
                    await wait_gone(pids)
