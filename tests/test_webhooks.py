"""Webhooks: every meeting event reaches a real HTTP receiver on 127.0.0.1, signed; a
receiver that is down, slow or failing costs only its own events.

A real server (the in-process Worker, worker processes for a worker's death, ffmpeg for
recordings) and real clients; the receiver is :mod:`tests.webhook_receiver`. Signatures
are checked with the verification function of the README, run as it is written there.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.signaling_harness import (
    ADMIN_TOKEN,
    SECRET,
    http,
    live_tasks,
    make_config,
    peer,
    publish_audio,
    running_server,
    token,
)
from tests.webhook_receiver import Receiver, closed_port_url, running_receiver
from trio_sfu.cli import main
from trio_sfu.client.peer import open_peer
from trio_sfu.client.synthetic import audio_rtp_parameters
from trio_sfu.config import ServerConfig, WebhookConfig
from trio_sfu.engine.api import MediaEngine
from trio_sfu.engine.pool import PoolSettings, open_worker_pool
from trio_sfu.engine.worker import WorkerSettings
from trio_sfu.rtp.packet import RtpPacket
from trio_sfu.server import SfuServer
from trio_sfu.signaling.webhooks import EVENTS

HOOK_SECRET = "webhook-secret-for-tests"
README = Path(__file__).parent.parent / "README.md"

Verify = Callable[..., bool]


def readme_verify() -> Verify:
    """The ``verify`` function of the README's Webhooks section, as written there."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    (code,) = [block for block in blocks if "def verify(" in block]
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    verify: Verify = namespace["verify"]
    return verify


def hooks(url: str, **options: Any) -> WebhookConfig:
    return WebhookConfig(urls=(url,), secret=HOOK_SECRET, **options)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of metric ``name`` in Prometheus text, by their sorted labels."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def webhook_metrics(server: SfuServer) -> dict[str, dict[Any, float]]:
    text = (await http(server, "GET", "/metrics")).body.decode()
    return {
        name: samples(text, f"trio_sfu_webhook_{name}")
        for name in ("delivered_total", "retries_total", "dropped_total", "queued")
    }


def without_volatile(event: dict[str, Any]) -> dict[str, Any]:
    """An event's body without what differs every run (id, time, durations)."""
    out = {k: v for k, v in event.items() if k not in ("id", "createdAt", "duration")}
    assert isinstance(event["id"], str) and event["id"].startswith("evt_")
    assert abs(event["createdAt"] - time.time()) < 60
    if "duration" in event:
        assert event["duration"] >= 0
    return out


def check_signatures(receiver: Receiver, verify: Verify) -> None:
    """Every request the receiver got is signed, fresh, and fails once tampered with."""
    assert receiver.requests
    secret = HOOK_SECRET.encode()
    for request in receiver.requests:
        assert request.headers["content-type"] == "application/json"
        assert verify(secret, request.headers, request.body)
        assert not verify(secret, request.headers, request.body + b" ")
        assert not verify(b"another secret", request.headers, request.body)
        assert abs(int(request.headers["trio-sfu-timestamp"]) - time.time()) < 60


async def test_every_event_of_a_meeting_arrives_signed(engine: MediaEngine) -> None:
    """Join, publish, unpublish, leave, kick, a dropped socket and an admin close: each
    is one event, in order, with its fields, signed as the README says."""
    verify = readme_verify()
    with trio.fail_after(30):
        async with running_receiver() as receiver:
            config = make_config(webhooks=hooks(receiver.url))
            async with running_server(engine, config) as server:
                origin = f"http://127.0.0.1:{receiver.port}"  # no path, no query in names
                assert live_tasks("webhooks to") == [f"webhooks to {origin}"]
                async with peer(server, "m", "ann") as ann, peer(server, "m", "bob") as bob:
                    ann_id, bob_id = ann.peer_id, bob.peer_id
                    _, first = await publish_audio(ann)
                    await ann.close_producer(first)
                    _, second = await publish_audio(ann)
                    await ann.leave()
                    async with peer(server, "m", "cat") as cat:
                        cat_id = cat.peer_id
                        path = f"/v1/rooms/m/peers/{cat_id}"
                        assert (
                            await http(server, "DELETE", path, bearer=ADMIN_TOKEN)
                        ).status == 200
                    async with peer(server, "m", "dan") as dan:
                        dan_id = dan.peer_id  # leaves by closing its socket
                    await receiver.wait_for(
                        lambda: [e for e in receiver.events() if e.get("peerId") == dan_id][1:]
                    )
                    body = b'{"reason": "maintenance"}'
                    closed = await http(
                        server, "POST", "/v1/rooms/m/close", bearer=ADMIN_TOKEN, body=body
                    )
                    assert closed.status == 200
                await receiver.wait_for(lambda: receiver.events("room_finished"))
                delivered = await webhook_metrics(server)

        def member(pid: str | None, user: str, **fields: Any) -> dict[str, Any]:
            return {"meetingId": "m", "peerId": pid, "userId": user, **fields}

        audio = {"kind": "audio"}
        expected = [
            {"event": "room_started", "meetingId": "m"},
            {"event": "participant_joined", **member(ann_id, "ann", displayName="ann")},
            {"event": "participant_joined", **member(bob_id, "bob", displayName="bob")},
            {
                "event": "track_published",
                **member(ann_id, "ann", producerId=first, appData={"label": "mic"}, paused=False),
                **audio,
            },
            {
                "event": "track_unpublished",
                **member(ann_id, "ann", producerId=first, reason="closed"),
                **audio,
            },
            {
                "event": "track_published",
                **member(ann_id, "ann", producerId=second, appData={"label": "mic"}, paused=False),
                **audio,
            },
            {
                "event": "track_unpublished",
                **member(ann_id, "ann", producerId=second, reason="participant_left"),
                **audio,
            },
            {
                "event": "participant_left",
                **member(ann_id, "ann", displayName="ann", reason="left"),
            },
            {"event": "participant_joined", **member(cat_id, "cat", displayName="cat")},
            {
                "event": "participant_left",
                **member(cat_id, "cat", displayName="cat", reason="kicked"),
            },
            {"event": "participant_joined", **member(dan_id, "dan", displayName="dan")},
            {
                "event": "participant_left",
                **member(dan_id, "dan", displayName="dan", reason="dropped"),
            },
            {
                "event": "participant_left",
                **member(bob_id, "bob", displayName="bob", reason="room_closed"),
                "closeReason": "maintenance",
            },
            {"event": "room_finished", "meetingId": "m", "reason": "maintenance"},
        ]
        events = receiver.events()
        assert [without_volatile(e) for e in events] == expected
        assert all(
            "duration" in e for e in events if e["event"] in ("participant_left", "room_finished")
        )
        # One request per event (the receiver answered each at once), each signed.
        assert len(receiver.requests) == len(expected)
        assert len({e["id"] for e in events}) == len(expected)
        check_signatures(receiver, verify)
        created = [e["createdAt"] for e in events]
        assert created == sorted(created)
        label = (("url", f"http://127.0.0.1:{receiver.port}"),)
        assert delivered["delivered_total"] == {label: len(expected)}
        # The receiver's path and query (which may hold a key) are in no label.
        assert all(v == 0 for v in delivered["dropped_total"].values())
        assert {dict(k)["url"] for k in delivered["dropped_total"]} == {label[0][1]}


async def test_idle_and_shutdown_are_reported_before_the_server_stops() -> None:
    """A peer reaped for having no transport leaves as ``idle``; on a graceful shutdown the
    events of the closing meetings (``server_shutdown``) are delivered before the server
    has stopped, and its webhook task is gone with it."""
    from trio_sfu.engine.worker import open_worker

    with trio.fail_after(30):
        async with running_receiver() as receiver, open_worker() as worker:
            config = make_config(peer_idle_timeout=0.5, webhooks=hooks(receiver.url))
            async with running_server(worker, config) as server:
                async with peer(server, "idle", "fay") as fay:
                    fay_id = fay.peer_id
                    closed = await fay.wait_closed()
                    assert (closed.code, closed.reason) == (4003, "idle_timeout")
                await receiver.wait_for(lambda: receiver.events("room_finished"))
                async with peer(server, "late", "gus") as gus:
                    await gus.create_transport("send")  # not idle
                    gus_id = gus.peer_id
                    server.shutdown()
                    await server.finished.wait()
            # The server has stopped, its webhook task with it, and the shutdown's events
            # were delivered before.
            assert live_tasks("webhooks to") == []
            events = [without_volatile(e) for e in receiver.events()]
            assert events == [
                {"event": "room_started", "meetingId": "idle"},
                {
                    "event": "participant_joined",
                    "meetingId": "idle",
                    "peerId": fay_id,
                    "userId": "fay",
                    "displayName": "fay",
                },
                {
                    "event": "participant_left",
                    "meetingId": "idle",
                    "peerId": fay_id,
                    "userId": "fay",
                    "displayName": "fay",
                    "reason": "idle",
                },
                {"event": "room_finished", "meetingId": "idle", "reason": "empty"},
                {"event": "room_started", "meetingId": "late"},
                {
                    "event": "participant_joined",
                    "meetingId": "late",
                    "peerId": gus_id,
                    "userId": "gus",
                    "displayName": "gus",
                },
                {
                    "event": "participant_left",
                    "meetingId": "late",
                    "peerId": gus_id,
                    "userId": "gus",
                    "displayName": "gus",
                    "reason": "server_shutdown",
                },
                {"event": "room_finished", "meetingId": "late", "reason": "server_shutdown"},
            ]
            check_signatures(receiver, readme_verify())


async def test_a_dead_worker_is_reported_with_what_it_cost() -> None:
    """SIGKILL of a worker process: ``worker_died`` (slot, pid, router), then its meeting's
    peers leave (``worker_died``) and the meeting finishes (``worker_died``)."""
    settings = PoolSettings(workers=1, worker=WorkerSettings(), restart_delay=0.3)
    with trio.fail_after(40):
        async with (
            running_receiver() as receiver,
            open_worker_pool(settings) as pool,
            running_server(pool, make_config(webhooks=hooks(receiver.url))) as server,
            peer(server, "alpha", "ann") as ann,
        ):
            (info,) = pool.workers_info()
            router_id = server.app.rooms.rooms["alpha"].router_id
            os.kill(info["pid"], signal.SIGKILL)
            note = await ann.next_notification("rtc:roomClosed")
            assert note.data == {"meetingId": "alpha", "reason": "worker_died"}
            await receiver.wait_for(lambda: receiver.events("room_finished"))
            events = [without_volatile(e) for e in receiver.events()][2:]
            assert events == [
                {
                    "event": "worker_died",
                    "meetingId": "alpha",
                    "routerId": router_id,
                    "reason": "worker_died",
                    "worker": 0,
                    "pid": info["pid"],
                },
                {
                    "event": "participant_left",
                    "meetingId": "alpha",
                    "peerId": ann.peer_id,
                    "userId": "ann",
                    "displayName": "ann",
                    "reason": "worker_died",
                },
                {"event": "room_finished", "meetingId": "alpha", "reason": "worker_died"},
            ]
            check_signatures(receiver, readme_verify())


@pytest.mark.skipif(
    __import__("shutil").which("ffmpeg") is None,
    reason="ffmpeg is missing: run scripts/install_media_tools",
)
async def test_a_recording_is_reported_with_its_file(tmp_path: Path) -> None:
    """The admin API records a publisher's audio for about a second: ``recording_started``
    and ``recording_finished`` with the file, its size on disk and the time recorded."""
    from trio_sfu.engine.worker import open_worker

    with trio.fail_after(40):
        async with (
            running_receiver() as receiver,
            open_worker(WorkerSettings(rtcp_interval=0.2)) as worker,
        ):
            config = make_config(recording_dir=str(tmp_path), webhooks=hooks(receiver.url))
            async with (
                running_server(worker, config) as server,
                open_peer(server.ws_url, "rec", token=token("rec", "ann")) as ann,
                trio.open_nursery() as nursery,
            ):
                producer_id, source = await ann.publish("audio", audio_rtp_parameters(ssrc=4242))

                async def talk() -> None:
                    assert ann.send_transport is not None
                    while True:
                        frame = source.streams[0].opus_frame(now=trio.current_time())
                        ann.send_transport.send_rtp(frame)
                        await trio.sleep(0.02)

                nursery.start_soon(talk)
                base = "/v1/rooms/rec/record"
                started = await http(server, "POST", base, bearer=ADMIN_TOKEN)
                assert started.status == 200, started.json()
                recording = started.json()
                await trio.sleep(1.2)
                path = f"{base}/{recording['recordingId']}/stop"
                stopped = await http(server, "POST", path, bearer=ADMIN_TOKEN)
                assert stopped.status == 200
                nursery.cancel_scope.cancel()
            finished = await receiver.wait_for(lambda: receiver.events("recording_finished"))
        (start,) = receiver.events("recording_started")
        assert without_volatile(start) == {
            "event": "recording_started",
            "meetingId": "rec",
            "recordingId": recording["recordingId"],
            "file": recording["file"],
            "producerIds": [producer_id],
        }
        (end,) = finished
        size = (await trio.Path(recording["file"]).stat()).st_size
        assert size > 0
        assert without_volatile(end) == {
            "event": "recording_finished",
            "meetingId": "rec",
            "recordingId": recording["recordingId"],
            "file": recording["file"],
            "producerIds": [producer_id],
            "reason": "stopped",
            "size": size,
            "exitCode": 0,
        }
        assert 1.0 <= end["duration"] <= 5.0
        names = [e["event"] for e in receiver.events()]
        assert names.index("recording_started") < names.index("recording_finished")
        assert names.index("recording_finished") < names.index("room_finished")
        check_signatures(receiver, readme_verify())


def test_webhook_urls_without_a_secret_refuse_to_start_but_in_dev_mode(
    capsys: pytest.CaptureFixture[str],
) -> None:
    urls = {"TRIO_SFU_WEBHOOK_URLS": "https://app.example/hooks, http://10.0.0.1:8000/x"}
    assert main(["serve"], {"TRIO_SFU_JWT_SECRET": SECRET, **urls}) == 2
    assert "TRIO_SFU_WEBHOOK_SECRET" in capsys.readouterr().err
    dev = ServerConfig(dev=True, webhooks=WebhookConfig(urls=("https://app.example/h",)))
    assert dev.check() == []
    signed = ServerConfig(jwt_secret=SECRET, webhooks=hooks("https://app.example/h"))
    assert signed.check() == []
    bad = ServerConfig(jwt_secret=SECRET, webhooks=hooks("ftp://app.example/h"))
    assert bad.check() == ["webhook URL 'ftp://app.example/h' is not an http:// or https:// URL"]


async def test_dev_mode_sends_unsigned(engine: MediaEngine) -> None:
    with trio.fail_after(10):
        async with running_receiver() as receiver:
            config = make_config(dev=True, webhooks=WebhookConfig(urls=(receiver.url,)))
            async with running_server(engine, config) as server, peer(server, "m", "ann"):
                await receiver.wait_for(lambda: receiver.events("participant_joined"))
        assert receiver.requests
        for request in receiver.requests:
            assert "trio-sfu-signature" not in request.headers
            assert int(request.headers["trio-sfu-timestamp"]) > 0


# ---- receivers that fail ---------------------------------------------------------------------

TIMEOUT = 0.5
RETRY_FOR = 1.5
QUEUE = 4


@pytest.mark.parametrize("mode", ["down", "slow", "error"])
async def test_a_failing_receiver_costs_only_its_own_events(
    mode: str, engine: MediaEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """Connection refused, no answer within the timeout, or 500: each event is retried,
    then dropped (counted, logged once); the queue stays within its bound and drops what
    does not fit; meanwhile signaling answers at once and media flows without a gap."""
    caplog.set_level(logging.WARNING, "trio_sfu.signaling.webhooks")
    with trio.fail_after(40):
        async with running_receiver(
            "error" if mode == "error" else "slow", 4 * TIMEOUT
        ) as receiver:
            url = closed_port_url() if mode == "down" else receiver.url
            options = hooks(url, timeout=TIMEOUT, retry_for=RETRY_FOR, queue=QUEUE)
            async with running_server(engine, make_config(webhooks=options)) as server:
                label = (("url", url.split("/hooks")[0]),)
                async with (
                    open_peer(server.ws_url, "m", token=token("m", "ann")) as ann,
                    open_peer(server.ws_url, "m", token=token("m", "bob")) as bob,
                ):
                    # room_started, 2 x participant_joined, track_published: the queue's 4.
                    producer_id, source = await ann.publish("audio", audio_rtp_parameters(ssrc=77))
                    consumer = await bob.consume(producer_id)
                    assert ann.send_transport is not None and bob.recv_transport is not None
                    arrivals: list[float] = []
                    answers: list[float] = []
                    queued: list[float] = []

                    async def listen() -> None:
                        assert bob.recv_transport is not None
                        while True:
                            packet = await bob.recv_transport.receive_rtp()
                            assert RtpPacket.parse_untrusted(packet).ssrc == consumer.ssrc
                            arrivals.append(trio.current_time())

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(listen)
                        for _ in range(60):  # 1.2 s of audio while the first events fail
                            frame = source.streams[0].opus_frame(now=trio.current_time())
                            ann.send_transport.send_rtp(frame)
                            start = trio.current_time()
                            await ann.signaling.get_router_rtp_capabilities()
                            answers.append(trio.current_time() - start)
                            await trio.sleep(0.02)
                        # More events than the queue holds: those past it are dropped.
                        for index in range(6):
                            async with peer(server, "m", f"extra{index}"):
                                metrics = await webhook_metrics(server)
                                queued.append(metrics["queued"][label])
                        await trio.sleep(0.1)
                        nursery.cancel_scope.cancel()
                    # Media flowed without a gap, and every answer came at once: nothing
                    # waited on the receiver.
                    assert len(arrivals) >= 50
                    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
                    assert max(gaps) < TIMEOUT
                    assert max(answers) < TIMEOUT
                    assert max(queued) <= QUEUE
                    # Retried, then dropped (the first event has had its retry time).
                    metrics = await webhook_metrics(server)
                    dropped = {dict(k)["reason"]: v for k, v in metrics["dropped_total"].items()}
                    assert dropped["queue_full"] >= 6
                    with trio.fail_after(2 * (RETRY_FOR + TIMEOUT) + 2):
                        while True:
                            metrics = await webhook_metrics(server)
                            dropped = {
                                dict(k)["reason"]: v for k, v in metrics["dropped_total"].items()
                            }
                            if dropped["retries_exhausted"] >= 1:
                                break
                            await trio.sleep(0.1)
                    assert metrics["retries_total"][label] >= 1
                    assert metrics["delivered_total"][label] == 0
                    assert metrics["queued"][label] <= QUEUE
            # The server stopped: what was still queued is dropped (shutdown), not lost
            # silently, and the URL's task ended with it.
            metrics_text = server.app.metrics.render().decode()
            dropped_after = {
                dict(k)["reason"]: v
                for k, v in samples(metrics_text, "trio_sfu_webhook_dropped_total").items()
            }
            queued_after = samples(metrics_text, "trio_sfu_webhook_queued")
            assert queued_after == {label: 0.0}
            assert live_tasks("webhooks to") == []
            assert dropped_after["rejected"] == 0
            assert dropped_after["shutdown"] >= 1
            # Every event is accounted for: room_started, 8 joins and 8 leaves, a track
            # published and unpublished, room_finished; none was delivered.
            assert sum(dropped_after.values()) == 20
        if mode != "down":
            # The receiver saw each attempt of the first event, each signed anew.
            first = receiver.events()[0]
            assert first["event"] == "room_started"
            attempts = receiver.attempts(first["id"])
            assert len(attempts) >= 2
            check_signatures(receiver, readme_verify())
        # Logged at most once a minute per reason, however many were dropped.
        lines = [r.getMessage() for r in caplog.records]
        for reason in ("queue_full", "retries_exhausted"):
            assert len([line for line in lines if line.startswith(f"dropped ({reason})")]) == 1
        assert dropped_after["queue_full"] >= 6
        assert not any("in-the-query" in line or "/hooks" in line for line in lines)


async def test_a_receiver_that_refuses_is_not_retried(engine: MediaEngine) -> None:
    """A 4xx other than 408/429 is the receiver's final word: dropped, not retried."""
    with trio.fail_after(10):
        async with running_receiver() as receiver:
            receiver_url = receiver.url
            async with running_server(engine, make_config(webhooks=hooks(receiver_url))) as server:
                receiver.mode = "refuse"
                async with peer(server, "m", "ann"):
                    await receiver.wait_for(lambda: len(receiver.requests) >= 2)
                    await trio.sleep(0.8)  # a retry would come 0.5 s after the first try
                    metrics = await webhook_metrics(server)
        ids = [r.json["id"] for r in receiver.requests]
        assert len(ids) == len(set(ids))  # each event once: no retry
        dropped = {dict(k)["reason"]: v for k, v in metrics["dropped_total"].items()}
        assert dropped["rejected"] >= 2
        assert metrics["retries_total"] == {(("url", f"http://127.0.0.1:{receiver.port}"),): 0}


def test_the_event_list_is_the_documented_one() -> None:
    text = README.read_text()
    section = text[text.index("## Webhooks") : text.index("## The demo page")]
    documented = re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE)
    assert tuple(documented) == EVENTS
