"""ffmpeg at the edges of a PlainTransport: command lines, SDP, and running it.

Debian's ``ffmpeg`` package (``scripts/install_media_tools``) publishes files into a
meeting (``trio-sfu ingest``) and records producers (the admin API's ``record``). This
module knows its command lines and the SDP that tells it what arrives where; the callers
own the processes (a child is always waited for: :func:`stop_ffmpeg`).

ffmpeg's RTP muxer sends RTCP from a second socket (its RTP port + 1), so the plain
transports facing it run without rtcp-mux; its RTP demuxer listens on the SDP's port for
RTP and the next one for RTCP.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
import socket
import subprocess
from collections.abc import Sequence
from typing import Any, Final

import attrs
import trio

logger = logging.getLogger(__name__)

#: RTP payload size ffmpeg's muxer is told to keep under (the server's MTU budget).
PACKET_SIZE: Final = 1200


def ffmpeg_path() -> str:
    """The ffmpeg binary; FileNotFoundError naming the install script when it is missing."""
    found = shutil.which("ffmpeg")
    if found is None:
        raise FileNotFoundError("ffmpeg is not installed (scripts/install_media_tools)")
    return found


# ---- SDP for ffmpeg's RTP demuxer --------------------------------------------------------


@attrs.frozen
class SdpStream:
    """One RTP stream ffmpeg receives: its port (RTCP on the next), payload type, codec."""

    kind: str
    port: int
    payload_type: int
    encoding_name: str
    clock_rate: int
    channels: int | None = None


def recording_sdp(streams: Sequence[SdpStream], ip: str = "127.0.0.1") -> str:
    """An SDP that makes ffmpeg listen for ``streams`` on ``ip``."""
    family = "IP6" if ":" in ip else "IP4"
    lines = [
        "v=0",
        f"o=- 0 0 IN {family} {ip}",
        "s=trio-sfu",
        f"c=IN {family} {ip}",
        "t=0 0",
    ]
    for stream in streams:
        rtpmap = f"{stream.encoding_name}/{stream.clock_rate}"
        if stream.channels and stream.channels > 1:
            rtpmap += f"/{stream.channels}"
        lines += [
            f"m={stream.kind} {stream.port} RTP/AVP {stream.payload_type}",
            f"a=rtpmap:{stream.payload_type} {rtpmap}",
            "a=recvonly",
        ]
    return "\r\n".join(lines) + "\r\n"


def record_command(sdp_path: str, out_path: str) -> list[str]:
    """ffmpeg reading RTP as ``sdp_path`` describes, writing it unchanged (no transcoding)
    to a WebM file. ``q`` on its standard input ends it cleanly."""
    return [
        ffmpeg_path(),
        "-hide_banner",
        "-loglevel",
        "warning",
        "-y",
        "-protocol_whitelist",
        "file,udp,rtp",
        "-i",
        sdp_path,
        "-map",
        "0",
        "-c",
        "copy",
        "-f",
        "webm",
        out_path,
    ]


# ---- ingest: a file to plain transports --------------------------------------------------


@attrs.frozen
class IngestOutput:
    """Where ffmpeg sends one stream: the transport's RTP and RTCP ports, the SSRC and
    payload type the producer was given."""

    kind: str
    ip: str
    port: int
    rtcp_port: int
    ssrc: int
    payload_type: int


def ingest_command(
    path: str, outputs: Sequence[IngestOutput], *, loop: bool = False, copy: Sequence[str] = ()
) -> list[str]:
    """ffmpeg sending ``path``'s first video and first audio stream as RTP, in real time,
    to plain transports (mediasoup's broadcaster example: the tee muxer, one RTP output
    per stream). Kinds in ``copy`` are sent as they are (VP8, Opus); others are encoded
    with libvpx / libopus."""
    command = [ffmpeg_path(), "-hide_banner", "-loglevel", "warning", "-re"]
    if loop:
        command += ["-stream_loop", "-1"]
    command += ["-i", path]
    targets = []
    for output in outputs:
        if output.kind == "video":
            command += ["-map", "0:v:0"]
            if "video" in copy:
                command += ["-c:v", "copy"]
            else:
                command += [
                    "-c:v",
                    "libvpx",
                    "-deadline",
                    "realtime",
                    "-cpu-used",
                    "8",
                    "-b:v",
                    "1M",
                    "-g",
                    "60",
                ]
        else:
            command += ["-map", "0:a:0"]
            if "audio" in copy:
                command += ["-c:a", "copy"]
            else:
                command += ["-c:a", "libopus", "-ac", "2", "-ar", "48000", "-b:a", "64k"]
        select = "v" if output.kind == "video" else "a"
        targets.append(
            f"[select={select}:f=rtp:ssrc={output.ssrc}:payload_type={output.payload_type}]"
            f"rtp://{output.ip}:{output.port}?rtcpport={output.rtcp_port}"
            f"&pkt_size={PACKET_SIZE}"
        )
    return [*command, "-f", "tee", "|".join(targets)]


def probe(path: str) -> dict[str, Any]:
    """``ffprobe``'s streams and format of a file (blocking: run it in a thread)."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        raise FileNotFoundError("ffprobe is not installed (scripts/install_media_tools)")
    result = subprocess.run(
        [ffprobe, "-v", "error", "-show_streams", "-show_format", "-of", "json", path],
        capture_output=True,
        check=True,
        timeout=30,
    )
    info: dict[str, Any] = json.loads(result.stdout)
    return info


# ---- ports and processes -------------------------------------------------------------------


def free_udp_port_pair(ip: str = "127.0.0.1", attempts: int = 50) -> int:
    """An even UDP port ``p`` with ``p`` and ``p + 1`` free on ``ip`` now (ffmpeg takes
    RTP on ``p``, RTCP on ``p + 1``). Another program may take them before ffmpeg does:
    callers check that ffmpeg bound them (:func:`wait_udp_bound`)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    for _ in range(attempts):
        with socket.socket(family, socket.SOCK_DGRAM) as probe_sock:
            probe_sock.bind((ip, 0))
            port = probe_sock.getsockname()[1] & ~1
        if port < 1024:
            continue
        try:
            with (
                socket.socket(family, socket.SOCK_DGRAM) as first,
                socket.socket(family, socket.SOCK_DGRAM) as second,
            ):
                first.bind((ip, port))
                second.bind((ip, port + 1))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        return int(port)
    raise OSError(errno.EADDRINUSE, "no free UDP port pair")


def udp_ports_bound() -> set[int]:
    """Local UDP ports with a bound socket on this host (IPv4 and IPv6)."""
    ports: set[int] = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as file:
                next(file, None)
                for line in file:
                    fields = line.split()
                    if len(fields) > 1:
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


async def wait_udp_bound(
    ports: Sequence[int], process: trio.Process, *, interval: float = 0.02
) -> None:
    """Return once every port of ``ports`` is bound (ffmpeg is listening); raise
    RuntimeError if ``process`` exits first. The caller bounds the wait."""
    while True:
        if set(ports) <= await trio.to_thread.run_sync(udp_ports_bound):
            return
        if process.returncode is not None:
            raise RuntimeError(f"ffmpeg exited ({process.returncode}) before listening")
        await trio.sleep(interval)


#: Seconds ffmpeg gets to finish its file once asked to stop. ffmpeg reads ``q`` between
#: two packets: while media flows it stops at once; once media stopped it is blocked in
#: its RTP read until that times out (10 s, ffmpeg's own), then ends the file normally.
STOP_TIMEOUT: Final = 15.0


async def stop_ffmpeg(process: trio.Process) -> int:
    """End ffmpeg cleanly (``q`` on its standard input: it finishes the file; see
    :data:`STOP_TIMEOUT` for when it reads it), kill it
    if it has not exited :data:`STOP_TIMEOUT` seconds later, and wait for it (so it is
    reaped). Runs shielded: safe in ``finally`` blocks of cancelled tasks. Returns its
    exit code."""
    with trio.CancelScope(shield=True):
        if process.returncode is None and process.stdin is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await process.stdin.send_all(b"q")
        with trio.move_on_after(STOP_TIMEOUT):
            await process.wait()
        if process.returncode is None:
            logger.warning("ffmpeg (pid %d) did not stop: killing it", process.pid)
            process.kill()
            await process.wait()
        if process.stdin is not None:
            await process.stdin.aclose()
    code = process.returncode
    assert code is not None
    return code


__all__ = [
    "IngestOutput",
    "SdpStream",
    "ffmpeg_path",
    "free_udp_port_pair",
    "ingest_command",
    "probe",
    "record_command",
    "recording_sdp",
    "stop_ffmpeg",
    "udp_ports_bound",
    "wait_udp_bound",
]
