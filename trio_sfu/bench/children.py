"""The fan-out benchmark's child processes: each speaks JSON lines on stdin/stdout and
logs to a file of its own."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any, final

import trio

__all__ = ["Child", "open_child"]


@final
class Child:
    """A child process speaking JSON lines on stdin/stdout; stderr goes to a log file."""

    def __init__(self, process: trio.Process, log: Path, name: str) -> None:
        self.process = process
        self.log = log
        self.name = name
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(message).encode() + b"\n")

    async def line(self) -> str:
        stdout = self.process.stdout
        assert stdout is not None
        while b"\n" not in self._buffer:
            data = await stdout.receive_some(1 << 20)
            if not data:
                tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
                raise RuntimeError(f"{self.name} exited early; its log ends:\n{tail}")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace")

    async def event(self, name: str) -> dict[str, Any]:
        while True:
            text = await self.line()
            if not text.startswith("{"):
                continue
            message: dict[str, Any] = json.loads(text)
            if message.get("event") == name:
                return message

    async def stop(self, grace: float = 5.0, leaving: float = 0.0) -> None:
        """Close its stdin and give it ``leaving`` seconds to exit by itself (a load
        generator does; a signal in the middle of its leaving can hold it up for the whole
        grace), then SIGINT, SIGTERM and SIGKILL, each after ``grace`` seconds."""
        process = self.process
        if process.stdin is not None:
            await process.stdin.aclose()
        if leaving:
            with trio.move_on_after(leaving):
                await process.wait()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if process.returncode is not None:
                break
            process.send_signal(sig)
            with trio.move_on_after(grace):
                await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


async def open_child(command: list[str], log: Path, name: str, env: dict[str, str]) -> Child:
    log_file = open(log, "wb")  # noqa: ASYNC230, SIM115 - a local file, closed below
    try:
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=env,
        )
    finally:
        log_file.close()
    return Child(process, log, name)
