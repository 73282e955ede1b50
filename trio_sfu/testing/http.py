"""HTTP for tests: one request to a server on its own connection (h11), the admin API client
and the parsed ``/metrics``.

::

    answer = await http_request("127.0.0.1", port, "GET", "/healthz")
    assert answer.status == 200 and answer.json() == {"status": "ok"}

    admin = AdminClient("127.0.0.1", port, admin_token)
    rooms = await admin.rooms()                      # GET /v1/rooms
    await admin.kick("standup", peer_id)             # DELETE /v1/rooms/standup/peers/{id}

    metrics = await fetch_metrics("127.0.0.1", port)
    assert metrics["trio_sfu_rooms"] == 1
    assert metrics.value("trio_sfu_refused_total", reason="foreign_id") == 0

Every call opens a TCP connection, sends one HTTP/1.1 request and reads the whole answer;
cancelling it closes the connection. Nothing here is meant for production traffic.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, final
from urllib.parse import quote

import attrs
import h11
import trio

__all__ = [
    "AdminClient",
    "AdminError",
    "HttpAnswer",
    "Metrics",
    "fetch_metrics",
    "http_request",
    "parse_metrics",
]


@final
@attrs.frozen
class HttpAnswer:
    """An HTTP answer: ``status``, ``headers`` (names lower-cased) and the ``body``."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError when it is not)."""
        return json.loads(self.body)

    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode()


async def http_request(
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    bearer: str | None = None,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
) -> HttpAnswer:
    """One HTTP/1.1 request on a fresh connection to ``host:port``; the whole answer.

    ``bearer`` adds ``Authorization: Bearer <bearer>``. Raises OSError when the connection
    fails and ``h11.RemoteProtocolError`` when the server's answer is not HTTP/1.1.
    """
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        sent = [("host", host), ("content-length", str(len(body))), *headers]
        if bearer is not None:
            sent.append(("authorization", f"Bearer {bearer}"))
        await stream.send_all(conn.send(h11.Request(method=method, target=path, headers=sent)))
        await stream.send_all(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        response: h11.Response | None = None
        chunks: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
        assert response is not None
        return HttpAnswer(
            status=response.status_code,
            headers={k.decode().lower(): v.decode() for k, v in response.headers},
            body=b"".join(chunks),
        )


# ---- the admin API ------------------------------------------------------------------------


class AdminError(Exception):
    """The admin API refused a request: ``status`` and its JSON ``answer`` (``{"error": ...}``)."""

    def __init__(self, method: str, path: str, status: int, answer: Any) -> None:
        error = answer.get("error") if isinstance(answer, dict) else answer
        super().__init__(f"{method} {path}: {status} {error}")
        self.status = status
        self.answer = answer


@final
class AdminClient:
    """A client of the server's admin API (``/v1/...``, README "HTTP endpoints").

    Each method is one request; an answer other than 2xx raises :class:`AdminError`
    (except :meth:`room`, which answers ``None`` for a meeting that is not open).
    """

    def __init__(self, host: str, port: int, token: str | None) -> None:
        self.host = host
        self.port = port
        #: The ``TRIO_SFU_ADMIN_TOKEN`` sent as the bearer token.
        self.token = token

    async def request(self, method: str, path: str, body: Any = None) -> HttpAnswer:
        """Any admin request (``path`` from ``/v1``), ``body`` sent as JSON unless None;
        the answer whatever its status."""
        data = b"" if body is None else json.dumps(body).encode()
        return await http_request(self.host, self.port, method, path, bearer=self.token, body=data)

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        answer = await self.request(method, path, body)
        try:
            parsed = answer.json()
        except ValueError:
            parsed = answer.text()
        if not 200 <= answer.status < 300:
            raise AdminError(method, path, answer.status, parsed)
        return parsed

    async def workers(self) -> list[dict[str, Any]]:
        """``GET /v1/workers``: each media worker (pid, ports, load, meetings)."""
        answer = await self._json("GET", "/v1/workers")
        workers: list[dict[str, Any]] = answer["workers"]
        return workers

    async def rooms(self) -> list[dict[str, Any]]:
        """``GET /v1/rooms``: the open meetings with their counts."""
        answer = await self._json("GET", "/v1/rooms")
        rooms: list[dict[str, Any]] = answer["rooms"]
        return rooms

    async def room(self, meeting_id: str) -> dict[str, Any] | None:
        """``GET /v1/rooms/{meetingId}``: the meeting with its peers, or ``None`` when it is
        not open."""
        path = f"/v1/rooms/{_segment(meeting_id)}"
        answer = await self.request("GET", path)
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise AdminError("GET", path, answer.status, answer.json())
        room: dict[str, Any] = answer.json()
        return room

    async def close_room(self, meeting_id: str, reason: str | None = None) -> dict[str, Any]:
        """``POST /v1/rooms/{meetingId}/close``: every peer gets ``rtc:roomClosed``
        (``reason``, default ``closed_by_admin``), then its socket closes. Answers once the
        room has closed."""
        body = None if reason is None else {"reason": reason}
        answer: dict[str, Any] = await self._json(
            "POST", f"/v1/rooms/{_segment(meeting_id)}/close", body
        )
        return answer

    async def kick(self, meeting_id: str, peer_id: str) -> dict[str, Any]:
        """``DELETE /v1/rooms/{meetingId}/peers/{peerId}``: the peer's socket closes with
        4001, the others get ``rtc:peerLeft``."""
        answer: dict[str, Any] = await self._json(
            "DELETE", f"/v1/rooms/{_segment(meeting_id)}/peers/{_segment(peer_id)}"
        )
        return answer

    async def record(
        self, meeting_id: str, producer_ids: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """``POST /v1/rooms/{meetingId}/record``: record ``producer_ids`` (default: every
        producer of the meeting) to one WebM file; the recording's description."""
        body = None if producer_ids is None else {"producerIds": list(producer_ids)}
        answer: dict[str, Any] = await self._json(
            "POST", f"/v1/rooms/{_segment(meeting_id)}/record", body
        )
        return answer

    async def recordings(self, meeting_id: str) -> list[dict[str, Any]]:
        """``GET /v1/rooms/{meetingId}/record``: the meeting's recordings."""
        answer = await self._json("GET", f"/v1/rooms/{_segment(meeting_id)}/record")
        recordings: list[dict[str, Any]] = answer["recordings"]
        return recordings

    async def recording(self, meeting_id: str, recording_id: str) -> dict[str, Any]:
        """``GET /v1/rooms/{meetingId}/record/{recordingId}``."""
        answer: dict[str, Any] = await self._json(
            "GET", f"/v1/rooms/{_segment(meeting_id)}/record/{_segment(recording_id)}"
        )
        return answer

    async def stop_recording(self, meeting_id: str, recording_id: str) -> dict[str, Any]:
        """``POST .../record/{recordingId}/stop``: answers once the file is complete."""
        answer: dict[str, Any] = await self._json(
            "POST", f"/v1/rooms/{_segment(meeting_id)}/record/{_segment(recording_id)}/stop"
        )
        return answer


def _segment(value: str) -> str:
    return quote(value, safe="")


# ---- /metrics -------------------------------------------------------------------------------


@final
class Metrics:
    """The samples of a Prometheus text exposition, by name and labels.

    ``metrics["trio_sfu_peers"]`` is the value of an unlabelled sample;
    ``metrics.value(name, **labels)`` of a labelled one. A sample that is not there raises
    KeyError naming it and the names that are (use :meth:`get` for a default).
    """

    def __init__(self, samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float]) -> None:
        self._samples = dict(samples)

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name`` with exactly ``labels``."""
        key = (name, frozenset(labels.items()))
        try:
            return self._samples[key]
        except KeyError:
            known = sorted({n for n, _ in self._samples if n.startswith(name)})
            raise KeyError(
                f"no sample {name}{_labels_text(labels)} in /metrics"
                + (f" (there are {', '.join(known)})" if known else "")
            ) from None

    def get(self, name: str, default: float = 0.0, **labels: str) -> float:
        """The sample ``name`` with exactly ``labels``, or ``default``."""
        return self._samples.get((name, frozenset(labels.items())), default)

    def __getitem__(self, name: str) -> float:
        return self.value(name)

    def __contains__(self, name: object) -> bool:
        return any(n == name for n, _ in self._samples)

    def labelled(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        """Every sample called ``name``, by its labels."""
        return {labels: v for (n, labels), v in self._samples.items() if n == name}

    def names(self) -> Iterator[str]:
        """The sample names, each once."""
        return iter(sorted({n for n, _ in self._samples}))


def _labels_text(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def parse_metrics(text: str) -> Metrics:
    """Parse Prometheus text exposition format (what ``/metrics`` answers)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return Metrics(samples)


async def fetch_metrics(host: str, port: int) -> Metrics:
    """``GET /metrics`` of the server at ``host:port``, parsed."""
    answer = await http_request(host, port, "GET", "/metrics")
    if answer.status != 200:
        raise AssertionError(f"GET /metrics answered {answer.status}: {answer.body[:200]!r}")
    return parse_metrics(answer.text())
