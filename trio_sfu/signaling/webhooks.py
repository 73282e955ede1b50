"""Webhooks: a signed HTTP POST to the app's backend for every meeting event.

Rooms, peers and recordings call :meth:`Webhooks.emit` (never blocks, never raises) with
an event name, the meeting and the event's fields; each configured URL has a bounded queue
and one task (in the server's nursery) that POSTs the queued events to it, one at a time in
order. An event is retried with exponential backoff (0.5 s, 1 s, 2 s, ... at most 8 s
apart) for up to ``retry_for`` seconds, each attempt bounded by ``timeout``; then it is
dropped. Drops are counted in ``/metrics``
(``trio_sfu_webhook_dropped_total{url, reason}``) and logged at most once a minute per URL
and reason. Signaling and media never wait on a receiver: a full queue drops the new event.

The body is JSON: ``id``, ``event``, ``createdAt`` (Unix seconds), ``meetingId`` and the
event's fields (camelCase, as the signaling protocol). It is signed with HMAC-SHA256
of ``<timestamp>.<body>`` under the shared secret::

    Trio-Sfu-Timestamp: 1767225600
    Trio-Sfu-Signature: v1=<hex HMAC-SHA256(secret, b"1767225600." + body)>

The timestamp is that of the attempt (a retry is signed anew), so a receiver can refuse
old requests (replays); the event ``id`` stays the same across retries, so it can refuse
duplicates. Without a secret (dev mode only) the signature header is left out.

On a graceful shutdown (:meth:`Webhooks.close`) what is queued is still delivered for up
to ``timeout`` seconds, then dropped (reason ``shutdown``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Any, Final, Protocol, final
from urllib.parse import urlsplit

import attrs
import httpx
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from trio_sfu.config import WebhookConfig
from trio_sfu.ratelog import DEFAULT_INTERVAL, RateLimitedLog

logger = logging.getLogger(__name__)

__all__ = [
    "DROP_REASONS",
    "EVENTS",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookSink",
    "Webhooks",
    "left_reason",
    "sign",
]

#: Every event a receiver may get.
EVENTS: Final = (
    "room_started",
    "room_finished",
    "participant_joined",
    "participant_left",
    "track_published",
    "track_unpublished",
    "recording_started",
    "recording_finished",
    "worker_died",
)

#: Why an event was dropped (the ``reason`` label of the dropped counter).
DROP_REASONS: Final = (
    "queue_full",  # the URL's queue held ``queue`` events already
    "retries_exhausted",  # no 2xx within ``retry_for`` seconds
    "rejected",  # a 4xx answer other than 408 and 429 (or a redirect): not retried
    "shutdown",  # still queued when the server stopped
)

TIMESTAMP_HEADER: Final = "Trio-Sfu-Timestamp"
SIGNATURE_HEADER: Final = "Trio-Sfu-Signature"

FIRST_RETRY_DELAY: Final = 0.5
MAX_RETRY_DELAY: Final = 8.0
#: Bound on closing a URL's HTTP connections when its task ends.
CLOSE_TIMEOUT: Final = 2.0

#: A peer's own end reasons (Peer.end_reason) -> participant_left's reason.
_PEER_END_REASONS: Final = {
    "left": "left",
    "connection_closed": "dropped",
    "too_slow": "too_slow",
    "idle_timeout": "idle",
    "ice_consent_timeout": "consent_timeout",
    "kicked": "kicked",
}
#: Room close reasons reported as such; any other (the admin API's) is ``room_closed``.
_ROOM_CLOSE_REASONS: Final = frozenset({"server_shutdown", "worker_died"})


def left_reason(end_reason: str, *, by_room: bool) -> tuple[str, str | None]:
    """participant_left's ``reason`` for a peer that ended with ``end_reason`` (``by_room``:
    because its meeting closed), and the meeting's close reason when it is ``room_closed``."""
    if by_room:
        if end_reason in _ROOM_CLOSE_REASONS:
            return end_reason, None
        return "room_closed", end_reason
    return _PEER_END_REASONS.get(end_reason, end_reason), None


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    mac = hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


class WebhookSink(Protocol):
    """What rooms and peers call to report an event."""

    def emit(self, event: str, meeting_id: str, **fields: Any) -> None:
        """Queue ``event`` (one of :data:`EVENTS`) of ``meeting_id`` for every URL.
        ``fields`` are snake_case; the body has them in camelCase. Never blocks."""
        ...


@final
@attrs.frozen
class _Event:
    name: str
    event_id: str
    body: bytes


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def _origin(url: str) -> str:
    """What of ``url`` may appear in metrics and logs: scheme, host and port. A path,
    a query or credentials may hold a secret."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


@final
class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.delivered = Counter(
            "trio_sfu_webhook_delivered",
            "webhook events a receiver accepted (2xx), by receiver (scheme://host:port)",
            ["url"],
            registry=registry,
        )
        self.retries = Counter(
            "trio_sfu_webhook_retries",
            "webhook attempts that failed and were tried again",
            ["url"],
            registry=registry,
        )
        self.dropped = Counter(
            "trio_sfu_webhook_dropped",
            "webhook events given up on, by receiver and reason",
            ["url", "reason"],
            registry=registry,
        )
        self.queued = Gauge(
            "trio_sfu_webhook_queued",
            "webhook events waiting for their receiver (the one being sent included)",
            ["url"],
            registry=registry,
        )


@final
class _Target:
    """One URL: its queue, its task, its counters."""

    def __init__(self, url: str, config: WebhookConfig, metrics: _Metrics) -> None:
        self.url = url
        self.label = _origin(url)
        self.config = config
        self.tx, self.rx = trio.open_memory_channel[_Event](config.queue)
        #: Events queued or in delivery (a memory channel of size N holds N waiting, and
        #: the task holds one more: this counts both, so that the bound is ``queue``).
        self.pending = 0
        self.scope = trio.CancelScope()
        self.log = RateLimitedLog(logger, DEFAULT_INTERVAL, verb="dropped")
        self._delivered = metrics.delivered.labels(self.label)
        self._retries = metrics.retries.labels(self.label)
        self._dropped = {r: metrics.dropped.labels(self.label, r) for r in DROP_REASONS}
        self._queued = metrics.queued.labels(self.label)

    def offer(self, event: _Event) -> None:
        if self.pending >= self.config.queue:
            self.drop(event, "queue_full", f"{self.config.queue} events already wait")
            return
        try:
            self.tx.send_nowait(event)
        except trio.WouldBlock:
            self.drop(event, "queue_full", f"{self.config.queue} events already wait")
            return
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.drop(event, "shutdown", "the server is stopping")
            return
        self.pending += 1
        self._queued.set(self.pending)

    def drop(self, event: _Event, reason: str, why: str) -> None:
        self._dropped[reason].inc()
        self.log.note(
            reason,
            trio.current_time(),
            "webhook %s (%s) to %s: %s",
            event.name,
            event.event_id,
            self.label,
            why,
        )

    def _done(self) -> None:
        self.pending -= 1
        self._queued.set(self.pending)

    async def run(self, secret: bytes | None) -> None:
        """Deliver the queue until it is closed and drained (or the drain's deadline)."""
        client = httpx.AsyncClient(
            timeout=self.config.timeout,
            follow_redirects=False,
            headers={"user-agent": "trio-sfu webhooks"},
        )
        try:
            with self.scope:
                async for event in self.rx:
                    settled = False  # delivered or dropped, and counted so
                    try:
                        await self._deliver(client, event, secret)
                        settled = True
                    finally:
                        self._done()
                        if not settled:
                            self.drop(event, "shutdown", "the server stopped while sending it")
            while True:  # the drain's deadline passed: what is left is dropped
                try:
                    event = self.rx.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                self._done()
                self.drop(event, "shutdown", "the server stopped before it was sent")
        finally:
            self.rx.close()
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await client.aclose()

    async def _deliver(
        self, client: httpx.AsyncClient, event: _Event, secret: bytes | None
    ) -> None:
        """Send ``event`` until accepted or given up on (counted either way)."""
        deadline = trio.current_time() + self.config.retry_for
        delay = FIRST_RETRY_DELAY
        while True:
            failure = await self._attempt(client, event, secret)
            if failure is None:
                self._delivered.inc()
                return
            retry, why = failure
            if not retry:
                self.drop(event, "rejected", why)
                return
            if trio.current_time() + delay > deadline:
                self.drop(event, "retries_exhausted", why)
                return
            self._retries.inc()
            await trio.sleep(delay)
            delay = min(2 * delay, MAX_RETRY_DELAY)

    async def _attempt(
        self, client: httpx.AsyncClient, event: _Event, secret: bytes | None
    ) -> tuple[bool, str] | None:
        """POST ``event`` once: None when accepted, else (whether to retry, what failed)."""
        timestamp = int(time.time())
        headers = {"content-type": "application/json", TIMESTAMP_HEADER: str(timestamp)}
        if secret is not None:
            headers[SIGNATURE_HEADER] = sign(secret, timestamp, event.body)
        timeout = self.config.timeout
        with trio.move_on_after(timeout):
            try:
                response = await client.post(self.url, content=event.body, headers=headers)
            except Exception as exc:  # connection refused, reset, TLS, bad answer...
                return True, f"{type(exc).__name__}: {exc}"
            status = response.status_code
            if 200 <= status < 300:
                return None
            return status >= 500 or status in (408, 429), f"answered {status}"
        return True, f"no answer within {timeout:g} s"


@final
class Webhooks:
    """The server's webhooks: :meth:`emit` queues an event for every URL of ``config``;
    :meth:`start` runs a task per URL in a nursery, :meth:`close` drains and ends them."""

    def __init__(self, config: WebhookConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self._secret = config.secret.encode() if config.secret else None
        metrics = _Metrics(registry)
        self._targets = [_Target(url, config, metrics) for url in config.urls]
        self._closed = False

    def start(self, nursery: trio.Nursery) -> None:
        """Start one delivery task per URL in ``nursery`` (the server's)."""
        for target in self._targets:
            nursery.start_soon(target.run, self._secret, name=f"webhooks to {target.label}")
        if self._targets and self._secret is None:
            logger.warning("webhooks are sent UNSIGNED (no TRIO_SFU_WEBHOOK_SECRET, dev mode)")

    def emit(self, event: str, meeting_id: str, **fields: Any) -> None:
        """Queue ``event`` for every URL (see :class:`WebhookSink`). Never blocks."""
        if not self._targets:
            return
        event_id = "evt_" + secrets.token_hex(12)
        body: dict[str, Any] = {
            "id": event_id,
            "event": event,
            "createdAt": round(time.time(), 3),
            "meetingId": meeting_id,
        }
        body.update((_camel(name), value) for name, value in fields.items())
        try:
            encoded = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError):  # a caller's bug: it must not end a peer's cleanup
            logger.exception("webhook %s of meeting %s cannot be encoded", event, meeting_id)
            return
        queued = _Event(event, event_id, encoded)
        for target in self._targets:
            target.offer(queued)

    def close(self) -> None:
        """Take no more events; each URL's task delivers what is queued for at most
        ``timeout`` more seconds, then drops the rest and ends. Idempotent, never blocks."""
        if self._closed:
            return
        self._closed = True
        deadline = trio.current_time() + self.config.timeout
        for target in self._targets:
            target.tx.close()
            target.scope.deadline = deadline


class _NoWebhooks:
    def emit(self, event: str, meeting_id: str, **fields: Any) -> None:
        pass


#: The sink of a server without webhooks (rooms made without one use it).
NO_WEBHOOKS: Final[WebhookSink] = _NoWebhooks()
