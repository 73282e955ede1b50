"""``trio-sfu ingest``: publish a media file into a meeting through PlainTransports.

Joins the meeting as a peer (its token needs ``canPlainTransport``), creates one plain
transport per stream (comedia, RTCP on its own port: what ffmpeg's RTP muxer sends),
produces VP8 and Opus with fixed SSRCs and payload types, then runs Debian's ffmpeg to send
the file in real time (VP8 / Opus are sent as they are, anything else is encoded). When
ffmpeg ends (the file is over, unless ``--loop``) the peer leaves; Ctrl-C stops ffmpeg and
leaves. ``--print-command`` prints the ffmpeg command line instead of running it and holds
the transports open until interrupted: run it yourself, or adapt it to GStreamer (the
ports, SSRCs and payload types are all on it).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import trio

from trio_sfu.client.signaling import SignalingClient, open_signaling
from trio_sfu.media_tools import IngestOutput, ingest_command, probe, stop_ffmpeg
from trio_sfu.ortc.plain import opus_plain_rtp_parameters, vp8_plain_rtp_parameters
from trio_sfu.wire import unstructure

logger = logging.getLogger(__name__)

#: SSRCs and payload types of the ingested streams (those of mediasoup's ffmpeg example).
VIDEO_SSRC = 22222222
VIDEO_PT = 101
AUDIO_SSRC = 11111111
AUDIO_PT = 100


def file_streams(path: str) -> dict[str, str]:
    """The kinds of ``path``'s first video and audio streams and their codec names."""
    found: dict[str, str] = {}
    for stream in probe(path).get("streams", []):
        kind = stream.get("codec_type")
        if kind in ("video", "audio") and kind not in found:
            found[kind] = str(stream.get("codec_name", ""))
    return found


async def publish_plain(
    signaling: SignalingClient, kinds: Sequence[str]
) -> tuple[list[IngestOutput], dict[str, str]]:
    """For each kind: a plain transport (comedia, RTCP port of its own) and a producer on
    it. Returns where ffmpeg must send, and the producer id of each kind."""
    outputs = []
    producers = {}
    for kind in kinds:
        info = await signaling.create_plain_transport(
            rtcp_mux=False, comedia=True, direction="send"
        )
        await signaling.connect_plain_transport(info["transportId"])
        if kind == "video":
            ssrc, pt = VIDEO_SSRC, VIDEO_PT
            params = vp8_plain_rtp_parameters(ssrc=ssrc, payload_type=pt, cname="ingest")
        else:
            ssrc, pt = AUDIO_SSRC, AUDIO_PT
            params = opus_plain_rtp_parameters(ssrc=ssrc, payload_type=pt, cname="ingest")
        producers[kind] = await signaling.produce(
            info["transportId"], kind, unstructure(params), app_data={"source": "ingest"}
        )
        outputs.append(
            IngestOutput(
                kind=kind,
                ip=info["tuple"]["localIp"],
                port=info["tuple"]["localPort"],
                rtcp_port=info["rtcpTuple"]["localPort"],
                ssrc=ssrc,
                payload_type=pt,
            )
        )
    return outputs, producers


async def run_ingest(
    url: str,
    meeting: str,
    path: str,
    *,
    token: str | None = None,
    display_name: str = "ingest",
    loop: bool = False,
    print_command: TextIO | None = None,
    task_status: trio.TaskStatus[dict[str, str]] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Publish ``path`` into ``meeting``; report the producer ids (by kind) once
    published. Returns ffmpeg's exit code (0 with ``print_command``, which holds the
    transports until cancelled). Cancellation stops ffmpeg (and waits for it) and leaves."""
    streams = await trio.to_thread.run_sync(file_streams, path)
    if not streams:
        raise ValueError(f"{path}: no audio or video stream")
    copy = [kind for kind, codec in streams.items() if codec in ("vp8", "opus")]
    kinds = [kind for kind in ("video", "audio") if kind in streams]
    async with open_signaling(url) as signaling:
        await signaling.join(meeting, token=token, display_name=display_name)
        outputs, producers = await publish_plain(signaling, kinds)
        command = ingest_command(path, outputs, loop=loop, copy=copy)
        task_status.started(producers)
        if print_command is not None:
            print(subprocess.list2cmdline(command), file=print_command)
            print_command.flush()
            await trio.sleep_forever()
        logger.info("publishing %s into %s: %s", path, meeting, producers)
        process = await trio.lowlevel.open_process(command, stdin=subprocess.PIPE)
        try:
            code = await process.wait()
        finally:
            code = await stop_ffmpeg(process)
        await signaling.leave()
        return code


def main_ingest(args: Any) -> int:
    """The ``trio-sfu ingest`` command (arguments from :mod:`trio_sfu.cli`)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = trio.run(
            lambda: run_ingest(
                args.url,
                args.meeting,
                args.file,
                token=args.token,
                display_name=args.name,
                loop=args.loop,
                print_command=sys.stdout if args.print_command else None,
            )
        )
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"trio-sfu ingest: {exc}", file=sys.stderr)
        return 1
    return code
