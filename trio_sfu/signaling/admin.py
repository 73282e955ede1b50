"""The admin HTTP API, behind ``Authorization: Bearer <TRIO_SFU_ADMIN_TOKEN>``.

    GET    /v1/workers                        media workers: pid, ports, load, meetings
    GET    /v1/rooms                          open rooms with their counts
    GET    /v1/rooms/{meetingId}              one room: peers, transports, producers, consumers
    POST   /v1/rooms/{meetingId}/close        peers get rtc:roomClosed, then their sockets close
                                              (optional JSON body {"reason": "..."})
    DELETE /v1/rooms/{meetingId}/peers/{peerId}   kick a peer (its socket closes with 4001)
    POST   /v1/rooms/{meetingId}/record       record producers to WebM (ffmpeg): body
                                              {"producerId": id} or {"producerIds": [...]},
                                              none: every producer of the meeting
    GET    /v1/rooms/{meetingId}/record       the meeting's recordings
    GET    /v1/rooms/{meetingId}/record/{recordingId}
    POST   /v1/rooms/{meetingId}/record/{recordingId}/stop   stop; answers once the file is
                                              complete

Answers are JSON. 401 without the right token, 403 when no admin token is configured.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Final

import trio

from trio_sfu.errors import InvalidStateError, NotFoundError
from trio_sfu.signaling.context import SignalingContext
from trio_sfu.signaling.peer import CLOSE_KICKED, CLOSE_ROOM_CLOSED

__all__ = ["handle_admin"]

#: rtc:roomClosed reason of an admin close without its own reason.
ADMIN_CLOSE_REASON: Final = "closed_by_admin"
KICK_REASON: Final = "kicked"

Answer = tuple[int, dict[str, Any]]


def _authorized(app: SignalingContext, headers: dict[bytes, bytes]) -> Answer | None:
    expected = app.config.admin_token
    if not expected:
        return 403, {"error": "the admin API is disabled: set TRIO_SFU_ADMIN_TOKEN"}
    value = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        return 401, {"error": "a valid 'Authorization: Bearer <admin token>' header is required"}
    return None


def _workers(app: SignalingContext) -> list[dict[str, Any]]:
    """The engine's workers, each with the meetings that have a router on it."""
    routers = {
        router_id: room.meeting_id
        for room in app.rooms.rooms.values()
        for router_id in room.router_ids
    }
    located = {r["id"]: r.get("worker", 0) for r in app.engine.dump()["routers"]}
    workers = app.engine.workers_info()
    for info in workers:
        info["meetings"] = sorted(
            {
                meeting
                for router_id, meeting in routers.items()
                if located.get(router_id) == info["index"]
            }
        )
    return workers


async def handle_admin(
    app: SignalingContext,
    method: str,
    segments: list[str],
    headers: dict[bytes, bytes],
    body: bytes,
) -> Answer:
    """Answer an admin request; ``segments`` is the path after ``/v1`` split on ``/``."""
    refused = _authorized(app, headers)
    if refused is not None:
        return refused
    rooms = app.rooms.rooms
    match segments:
        case ["workers"]:
            if method != "GET":
                return 405, {"error": "use GET"}
            return 200, {"workers": _workers(app)}
        case ["rooms"]:
            if method != "GET":
                return 405, {"error": "use GET"}
            return 200, {"rooms": [r.describe(with_peers=False) for r in rooms.values()]}
        case ["rooms", meeting_id]:
            if method != "GET":
                return 405, {"error": "use GET"}
            room = rooms.get(meeting_id)
            if room is None:
                return 404, {"error": f"no open meeting {meeting_id!r}"}
            return 200, room.describe(with_peers=True)
        case ["rooms", meeting_id, "close"]:
            if method != "POST":
                return 405, {"error": "use POST"}
            reason = ADMIN_CLOSE_REASON
            if body.strip():
                try:
                    parsed = json.loads(body)
                except ValueError:
                    return 400, {"error": "the body must be JSON"}
                if not isinstance(parsed, dict) or not isinstance(
                    parsed.get("reason", reason), str
                ):
                    return 400, {"error": 'the body must be {"reason": string}'}
                reason = parsed.get("reason", reason)
            room = rooms.get(meeting_id)
            if room is None:
                return 404, {"error": f"no open meeting {meeting_id!r}"}
            room.close(reason, code=CLOSE_ROOM_CLOSED)
            with trio.move_on_after(2 * app.config.cleanup_timeout):
                await room.finished.wait()
            return 200, {"meetingId": meeting_id, "closed": True, "reason": reason}
        case ["rooms", meeting_id, "peers", peer_id]:
            if method != "DELETE":
                return 405, {"error": "use DELETE"}
            room = rooms.get(meeting_id)
            peer = room.peers.get(peer_id) if room is not None else None
            if peer is None:
                return 404, {"error": f"no peer {peer_id!r} in meeting {meeting_id!r}"}
            peer.end(KICK_REASON, close=(CLOSE_KICKED, KICK_REASON))
            with trio.move_on_after(2 * app.config.cleanup_timeout):
                await peer.finished.wait()
            return 200, {"meetingId": meeting_id, "peerId": peer_id, "kicked": True}
        case ["rooms", meeting_id, "record"]:
            room = rooms.get(meeting_id)
            if room is None:
                return 404, {"error": f"no open meeting {meeting_id!r}"}
            if method == "GET":
                return 200, {"recordings": [r.describe() for r in room.recordings.values()]}
            if method != "POST":
                return 405, {"error": "use GET or POST"}
            producer_ids = _record_body(body)
            if isinstance(producer_ids, str):
                return 400, {"error": producer_ids}
            try:
                recording = await room.start_recording(producer_ids)
            except NotFoundError as exc:
                return 404, {"error": exc.message}
            except InvalidStateError as exc:
                return 409, {"error": exc.message}
            except FileNotFoundError as exc:
                return 503, {"error": str(exc)}
            return 200, recording.describe()
        case ["rooms", meeting_id, "record", recording_id, *rest] if rest in ([], ["stop"]):
            room = rooms.get(meeting_id)
            found = room.recordings.get(recording_id) if room is not None else None
            if found is None:
                return 404, {"error": f"no recording {recording_id!r} in meeting {meeting_id!r}"}
            if not rest:
                if method != "GET":
                    return 405, {"error": "use GET"}
                return 200, found.describe()
            if method != "POST":
                return 405, {"error": "use POST"}
            found.stop("stopped")
            with trio.move_on_after(2 * app.config.cleanup_timeout + 10):
                await found.finished.wait()
            return 200, found.describe()
    return 404, {"error": "no such admin endpoint"}


def _record_body(body: bytes) -> list[str] | str | None:
    """The producer ids of a record request (None: all), or an error message."""
    if not body.strip():
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return "the body must be JSON"
    if not isinstance(parsed, dict) or set(parsed) - {"producerId", "producerIds"}:
        return 'the body must be {"producerId": string} or {"producerIds": [string]}'
    if "producerId" in parsed:
        if not isinstance(parsed["producerId"], str) or "producerIds" in parsed:
            return '"producerId" must be a string (and alone)'
        return [parsed["producerId"]]
    ids = parsed.get("producerIds")
    if ids is None:
        return None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        return '"producerIds" must be a non-empty list of strings'
    return list(dict.fromkeys(ids))
