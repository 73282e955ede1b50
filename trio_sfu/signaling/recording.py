"""Recording a meeting's producers to WebM: PlainTransport consumers feeding ffmpeg.

``POST /v1/rooms/{meetingId}/record`` (admin API) starts a :class:`Recording` of some or
all of the meeting's producers: for each producer a plain transport (no rtcp-mux, RTCP to
ffmpeg's RTCP port) with a consumer on it, created paused; ffmpeg (Debian's) reads the RTP
as an SDP describes it and writes every stream unchanged into one WebM file. Once ffmpeg
listens, the consumers are resumed, which asks each video publisher for a keyframe, so the
file starts with one.

A recording ends when it is asked to (``POST .../record/{recordingId}/stop``), when every
producer it records has closed (their consumers close: ``producer_closed``), when ffmpeg
exits by itself, or when its meeting closes. However it ends, ffmpeg is told to finish the
file (``q``), killed if it does not within seconds, and always waited for; the plain
transports are closed.

Ownership: a recording is a task in its room's nursery (:meth:`Room.start_recording`);
closing the room cancels it, and its ``finally`` does the above (shielded, bounded).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import time
from typing import Any, Final, Protocol, final

import attrs
import trio

from trio_sfu.engine.api import ConsumerInfo, MediaEngine
from trio_sfu.errors import InvalidStateError, NotFoundError, SfuError
from trio_sfu.media_tools import (
    SdpStream,
    free_udp_port_pair,
    record_command,
    recording_sdp,
    stop_ffmpeg,
    wait_udp_bound,
)
from trio_sfu.ortc.plain import plain_rtp_capabilities

logger = logging.getLogger(__name__)

#: How long ffmpeg may take to start listening.
START_TIMEOUT: Final = 10.0
#: Where ffmpeg listens (the plain transports send there).
FFMPEG_IP: Final = "127.0.0.1"


class RecordingHost(Protocol):
    """What a recording needs of its meeting (the room that starts it, in its nursery).

    The recording enters its plain transports and consumers in the two maps, so that the
    host hands it their engine events (:meth:`Recording.consumer_closed`,
    :meth:`Recording.stop`), and takes them out when it ends; then it calls
    :meth:`recording_finished`.
    """

    meeting_id: str
    engine: MediaEngine
    router_id: str | None
    recording_of_consumer: dict[str, Recording]
    recording_of_transport: dict[str, Recording]

    @property
    def cleanup_timeout(self) -> float:
        """The bound on closing what the recording opened."""
        ...

    def producer_router(self, producer_id: str) -> str | None:
        """The router of the meeting's producer ``producer_id``; None if there is none."""
        ...

    def recording_finished(self, recording: Recording) -> None:
        """``recording`` ended (its ``end_reason`` says why)."""
        ...


@final
@attrs.define(eq=False)
class _Stream:
    producer_id: str
    kind: str
    transport_id: str
    consumer: ConsumerInfo
    port: int
    closed: bool = False


@final
class Recording:
    """One recording: its file, its producers, its plain transports and its ffmpeg."""

    def __init__(self, room: RecordingHost, producer_ids: list[str], directory: str) -> None:
        self.room = room
        self.recording_id = secrets.token_hex(6)
        self.producer_ids = producer_ids
        self.path = os.path.abspath(
            os.path.join(directory, f"{room.meeting_id}-{self.recording_id}.webm")
        )
        self.state = "starting"
        self.end_reason: str | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.exit_code: int | None = None
        self._streams: list[_Stream] = []
        self._stop = trio.Event()
        self.finished = trio.Event()

    # ---- seen by the admin API ---------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "recordingId": self.recording_id,
            "meetingId": self.room.meeting_id,
            "file": self.path,
            "state": self.state,
            "producerIds": list(self.producer_ids),
            "startedAt": self.started_at,
            "endedAt": self.ended_at,
            "endReason": self.end_reason,
            "exitCode": self.exit_code,
        }

    def stop(self, reason: str = "stopped") -> None:
        """Ask the recording to end (idempotent, never blocks); wait on :attr:`finished`."""
        if self.end_reason is None:
            self.end_reason = reason
        self._stop.set()

    # ---- engine events -----------------------------------------------------------------

    @property
    def consumer_ids(self) -> list[str]:
        return [s.consumer.consumer_id for s in self._streams]

    @property
    def transport_ids(self) -> list[str]:
        return [s.transport_id for s in self._streams]

    def consumer_closed(self, consumer_id: str, reason: str) -> None:
        """A consumer of ours closed (its producer closed, or its transport): once none is
        left, the recording ends."""
        for stream in self._streams:
            if stream.consumer.consumer_id == consumer_id:
                stream.closed = True
        if self._streams and all(s.closed for s in self._streams):
            self.stop(reason)

    # ---- the task ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Set up and record until asked to stop (in the room's nursery). Reports started
        once ffmpeg listens and the consumers run; a failure before that goes to the
        caller (nothing is left behind), one after it ends the recording (logged)."""
        process: trio.Process | None = None
        sdp_path = self.path[: -len(".webm")] + ".sdp"
        started = False
        try:
            process = await self._start(sdp_path)
            self.state = "recording"
            self.started_at = time.time()
            logger.info(
                "[meeting=%s] recording %s of %s to %s",
                self.room.meeting_id,
                self.recording_id,
                self.producer_ids,
                self.path,
            )
            task_status.started()
            started = True
            async with trio.open_nursery() as nursery:

                async def ffmpeg_exited() -> None:
                    assert process is not None
                    await process.wait()
                    self.stop("ffmpeg_exited")

                nursery.start_soon(ffmpeg_exited)
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        except Exception:
            if not started:
                raise
            logger.exception(
                "[meeting=%s] recording %s failed", self.room.meeting_id, self.recording_id
            )
            self.stop("failed")
        finally:
            if self.end_reason is None:
                self.end_reason = "meeting_closed"
            if process is not None:
                self.exit_code = await stop_ffmpeg(process)
            await self._close_transports()
            with contextlib.suppress(OSError):
                os.unlink(sdp_path)
            self.state = "finished" if started else "failed"
            self.ended_at = time.time()
            logger.info(
                "[meeting=%s] recording %s ended (%s), ffmpeg exit %s",
                self.room.meeting_id,
                self.recording_id,
                self.end_reason,
                self.exit_code,
            )
            self.room.recording_finished(self)
            self.finished.set()

    async def _start(self, sdp_path: str) -> trio.Process:
        room = self.room
        engine = room.engine
        router_id = room.router_id
        if router_id is None:
            raise InvalidStateError("the meeting has no router")
        caps = plain_rtp_capabilities(engine.router_rtp_capabilities(router_id), feedback=True)
        for producer_id in self.producer_ids:
            producer_router = room.producer_router(producer_id)
            if producer_router is None:
                raise NotFoundError(f"producer {producer_id!r} not found")
            if producer_router != router_id:  # the meeting spans workers: pipe it here
                await engine.pipe_to_router(
                    producer_id, from_router=producer_router, to_router=router_id
                )
            port = await trio.to_thread.run_sync(free_udp_port_pair, FFMPEG_IP)
            info = await engine.create_plain_transport(
                router_id, rtcp_mux=False, app_data={"recordingId": self.recording_id}
            )
            room.recording_of_transport[info.transport_id] = self
            try:
                await engine.connect_plain_transport(
                    info.transport_id, ip=FFMPEG_IP, port=port, rtcp_port=port + 1
                )
                consumer = await engine.consume(info.transport_id, producer_id, caps, paused=True)
            except BaseException:
                await _close_transport(engine, info.transport_id, room.cleanup_timeout)
                room.recording_of_transport.pop(info.transport_id, None)
                raise
            self._streams.append(
                _Stream(producer_id, consumer.kind, info.transport_id, consumer, port)
            )
            room.recording_of_consumer[consumer.consumer_id] = self
        streams = []
        for stream in self._streams:
            codec = stream.consumer.rtp_parameters.codecs[0]
            streams.append(
                SdpStream(
                    kind=stream.kind,
                    port=stream.port,
                    payload_type=codec.payload_type,
                    encoding_name=codec.mime_type.split("/", 1)[1],
                    clock_rate=codec.clock_rate,
                    channels=codec.channels,
                )
            )
        directory = os.path.dirname(self.path)
        await trio.to_thread.run_sync(lambda: os.makedirs(directory, exist_ok=True))
        await trio.Path(sdp_path).write_text(recording_sdp(streams, FFMPEG_IP))
        process = await trio.lowlevel.open_process(
            record_command(sdp_path, self.path),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        try:
            ports = [p for s in self._streams for p in (s.port, s.port + 1)]
            with trio.fail_after(START_TIMEOUT):
                await wait_udp_bound(ports, process)
            # ffmpeg listens: let media flow (a resumed video consumer asks its publisher
            # for a keyframe, so the file starts with one).
            for stream in self._streams:
                await engine.resume_consumer(stream.consumer.consumer_id)
        except BaseException:
            await stop_ffmpeg(process)
            raise
        return process

    async def _close_transports(self) -> None:
        room = self.room
        with trio.move_on_after(room.cleanup_timeout, shield=True):
            for stream in self._streams:
                await _close_transport(room.engine, stream.transport_id, room.cleanup_timeout)
        for stream in self._streams:
            room.recording_of_transport.pop(stream.transport_id, None)
            room.recording_of_consumer.pop(stream.consumer.consumer_id, None)


async def _close_transport(engine: MediaEngine, transport_id: str, bound: float) -> None:
    """Close a transport of ours even while cancelled, for at most ``bound`` seconds."""
    with trio.move_on_after(bound, shield=True):
        try:
            await engine.close_transport(transport_id)
        except SfuError as exc:
            logger.debug("closing recording transport %s: %s", transport_id, exc)
        except Exception:
            logger.exception("closing recording transport %s failed", transport_id)
