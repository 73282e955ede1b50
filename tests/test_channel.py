"""The worker channel: framing (sans-IO), what crosses it, and the pool around it.

The framing and the event/error codecs are tested as values; the pool with real worker
processes: requests routed by the worker tag in every id, placement by load, a request in
flight when its worker dies, ids of a dead worker.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import socket

import attrs
import cattrs
import msgpack
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.fake_engine import load_fixture
from trio_sfu.config import ServerConfig, config_from_env
from trio_sfu.engine import api
from trio_sfu.engine.channel import (
    MAX_FRAME,
    REQUEST,
    RESPONSE,
    Channel,
    FrameDecoder,
    decode_error,
    decode_event,
    encode_error,
    encode_event,
    encode_frame,
)
from trio_sfu.engine.pool import PoolSettings, WorkerDiedError, WorkerPool, open_worker_pool
from trio_sfu.engine.worker import WorkerSettings
from trio_sfu.engine.worker_handle import WorkerTimeoutError
from trio_sfu.engine.worker_process import run_worker_process, structure_args
from trio_sfu.errors import (
    BadPacket,
    InvalidStateError,
    LimitExceededError,
    NotFoundError,
    UnsupportedError,
)
from trio_sfu.ortc.types import RtpCapabilities
from trio_sfu.wire import converter

MESSAGES = [[0, 1, "produce", ["t", "audio", {"codecs": []}, False]], [2, "load", {"a": 1.5}]]


def test_frames_come_out_whole_however_the_bytes_are_cut() -> None:
    data = b"".join(encode_frame(m) for m in MESSAGES)
    for cut in range(1, len(data)):
        decoder = FrameDecoder()
        out = list(decoder.feed_untrusted(data[:cut])) + list(decoder.feed_untrusted(data[cut:]))
        assert out == MESSAGES
        assert decoder.pending == 0


@given(st.binary(max_size=64))
def test_garbage_is_bad_packet_and_nothing_else(data: bytes) -> None:
    decoder = FrameDecoder()
    with contextlib.suppress(BadPacket):
        list(decoder.feed_untrusted(len(data).to_bytes(4, "big") + data))


def test_an_oversized_or_broken_frame_is_refused() -> None:
    with pytest.raises(BadPacket, match="over"):
        list(FrameDecoder().feed_untrusted((MAX_FRAME + 1).to_bytes(4, "big")))
    with pytest.raises(BadPacket, match="MessagePack"):
        list(FrameDecoder().feed_untrusted(b"\x00\x00\x00\x01\xc1"))  # 0xc1: never used
    with pytest.raises(ValueError, match="over"):
        encode_frame(b"x" * (MAX_FRAME + 1))


EVENTS = [
    api.RouterClosed("r", "worker_died"),
    api.TransportClosed("r", "t", "ice_consent_timeout"),
    api.ConsumerClosed("r", "c", "p", "producer_closed"),
    api.ConsumerProducerPaused("r", "c", True),
    api.ConsumerLayersChanged("r", "c", None, None),
    api.ConsumerLayersChanged("r", "c", 2, 1),
    api.NetworkQuality("r", "t", 0.125, 35.5, "fair"),
    api.ActiveSpeaker("r", "p", -23.5),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_engine_event_crosses_the_channel(event: api.EngineEvent) -> None:
    wire = msgpack.unpackb(msgpack.packb(encode_event(event)))
    assert decode_event(wire) == event
    assert attrs.fields(type(event))  # all fields are plain values


def test_unknown_events_and_errors() -> None:
    with pytest.raises(BadPacket):
        decode_event(["Nonsense", 1])
    with pytest.raises(BadPacket):
        decode_event(["ConsumerClosed", "too", "few"])
    for error in (NotFoundError("x"), UnsupportedError("y"), LimitExceededError("z")):
        back = decode_error(encode_error(error))
        assert type(back) is type(error) and back.message == error.message
    assert decode_error(["internal", "boom"]).code == "internal"


def test_requests_are_structured_by_a_table() -> None:
    with pytest.raises(KeyError):
        structure_args("close", [])
    with pytest.raises(ValueError, match="takes 1"):
        structure_args("close_router", [])
    assert structure_args("close_router", ["r"]) == {"router_id": "r"}


def test_capabilities_are_structured_once_per_wire_form() -> None:
    caps = load_fixture("device-rtp-capabilities.chromium.json")
    first = structure_args("consume", ["t", "p", caps, True])["rtp_capabilities"]
    assert isinstance(first, RtpCapabilities)
    assert converter.unstructure(first) == converter.unstructure(
        converter.structure(caps, RtpCapabilities)
    )
    # The same capabilities again (a new copy off the wire): the same object.
    again = structure_args("consume", ["t", "p", copy.deepcopy(caps), True])
    assert again["rtp_capabilities"] is first
    # Others: structured on their own, not mixed up with the first.
    other = copy.deepcopy(caps)
    other["codecs"] = other["codecs"][:1]
    third = structure_args("consume", ["t", "p", other, True])["rtp_capabilities"]
    assert third is not first and len(third.codecs) == 1
    with pytest.raises(cattrs.BaseValidationError):  # garbage is still refused
        structure_args("consume", ["t", "p", {"codecs": "nonsense"}, True])


async def test_pool_routes_by_worker_tag_and_places_by_load() -> None:
    settings = PoolSettings(workers=2, report_interval=0.1, pipe_threshold=1)
    with trio.fail_after(20):
        async with open_worker_pool(settings) as pool:
            first = await pool.create_router(lambda event: None)
            second = await pool.create_router(lambda event: None)
            assert {first[:5], second[:5]} == {"w0g1-", "w1g1-"}
            transport = await pool.create_webrtc_transport(first)
            assert transport.transport_id.startswith(first[:5])
            for bad in ("nonsense", "w9g9-abc", "-", second[:5] + "unknown"):
                with pytest.raises(NotFoundError):
                    await pool.restart_ice(bad)
            # Spreading one meeting: a router elsewhere, then no worker is left.
            third = await pool.create_router(lambda event: None, avoid=[first])
            assert third[:5] == second[:5]
            with pytest.raises(LimitExceededError):
                await pool.create_router(lambda event: None, avoid=[first, third])
            # Nothing consumed yet: no worker is past a threshold of one consumer.
            assert not pool.router_overloaded(first)
            await pool.close_router(third)
            await pool.close_router(second)
            await pool.close_router(first)
            assert pool.dump() == {"routers": []}
            assert [d["routers"] for d in await pool.dump_workers()] == [[], []]


async def test_a_request_in_flight_fails_when_its_worker_dies() -> None:
    with trio.fail_after(20):
        async with open_worker_pool(PoolSettings(workers=2, restart_delay=0.1)) as pool:
            events: list[api.EngineEvent] = []
            router = await pool.create_router(events.append)
            transport = await pool.create_webrtc_transport(router)
            pid = pool.workers_info()[0]["pid"]
            os.kill(pid, signal.SIGSTOP)  # it reads nothing more
            async with trio.open_nursery() as nursery:

                async def ask() -> None:
                    with pytest.raises(WorkerDiedError):
                        await pool.get_stats(transport.transport_id)

                nursery.start_soon(ask)
                await trio.sleep(0.2)
                os.kill(pid, signal.SIGKILL)
            assert events == [api.RouterClosed(router, "worker_died", worker=0, pid=pid)]
            with pytest.raises(NotFoundError):
                await pool.get_stats(transport.transport_id)
            with pytest.raises(NotFoundError):
                pool.router_rtp_capabilities(router)
            assert isinstance(WorkerDiedError("x"), InvalidStateError)


async def test_a_pool_cancelled_from_outside_stops_its_workers_without_a_death(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Cancelled (a deadline, Ctrl-C) rather than closed: the workers are stopped, and
    that is no death: no worker_died to the routers' owners, no error logged."""
    events: list[api.EngineEvent] = []
    with trio.fail_after(20), trio.CancelScope() as outside:
        async with open_worker_pool(PoolSettings(workers=2)) as pool:
            await pool.create_router(events.append)
            pids = [info["pid"] for info in pool.workers_info()]
            outside.cancel()
            await trio.sleep_forever()
    assert outside.cancelled_caught
    assert events == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_each_worker_takes_its_own_port_and_tag() -> None:
    def settings(port: int | None, index: int, generation: int = 1) -> WorkerSettings:
        pool = WorkerPool(PoolSettings(workers=3, worker=WorkerSettings(rtc_port=port)))
        return pool._worker_settings(index, generation)

    assert [settings(41000, i).rtc_port for i in range(3)] == [41000, 41001, 41002]
    assert settings(0, 2).rtc_port == 0  # each picks a free port
    assert settings(None, 1).rtc_port is None  # a port pair per transport
    assert settings(0, 2, 5).id_prefix == "w2g5-"
    with pytest.raises(ValueError, match="at least one"):
        WorkerPool(PoolSettings(workers=0))
    assert "passes port 65535" in " ".join(ServerConfig(rtc_port=65535, workers=2).check())
    assert ServerConfig(workers=0, dev=True).check() == ["workers 0 must be at least 1"]
    assert ServerConfig().worker_count() == (os.cpu_count() or 1)
    assert config_from_env({"TRIO_SFU_WORKERS": "3"}).workers == 3
    assert config_from_env({"TRIO_SFU_WORKERS": ""}).workers is None
    assert config_from_env({"TRIO_SFU_PIPE_THRESHOLD": "50"}).pipe_threshold == 50


def _worker_of(pool: WorkerPool, router_id: str) -> tuple[int, int]:
    """The index and pid of the worker holding ``router_id``."""
    (index,) = [r["worker"] for r in pool.dump()["routers"] if r["id"] == router_id]
    pid = pool.workers_info()[index]["pid"]
    assert isinstance(pid, int)
    return index, pid


async def test_a_wedged_worker_times_out_its_own_callers_and_is_replaced() -> None:
    """A worker that stops (SIGSTOP: it reads nothing and answers nothing) costs only its
    own callers: each gets WorkerTimeoutError once ``request_timeout`` is up, whether its
    request was written and waits for an answer, or could not be written (the socket is
    full, and the write is shielded from the caller's cancellation). The worker is then
    killed and replaced (its router's owner hears ``worker_died``); the other worker
    answers at once all along."""
    timeout = 1.5
    settings = PoolSettings(workers=2, request_timeout=timeout, restart_delay=0.1)
    with trio.fail_after(40):
        async with open_worker_pool(settings) as pool:
            events: list[api.EngineEvent] = []
            wedged_router = await pool.create_router(events.append)
            healthy_router = await pool.create_router(lambda event: None)
            wedged = (await pool.create_webrtc_transport(wedged_router)).transport_id
            healthy = (await pool.create_webrtc_transport(healthy_router)).transport_id
            index, pid = _worker_of(pool, wedged_router)
            assert _worker_of(pool, healthy_router)[0] != index
            os.kill(pid, signal.SIGSTOP)
            took: list[float] = []
            answered = 0

            async def wedged_call(big: bool) -> None:
                started = trio.current_time()
                with pytest.raises(WorkerTimeoutError, match="did not answer") as caught:
                    if big:  # 256 KiB each: a few fill the socket, the next write blocks
                        app_data = {"blob": "x" * (256 << 10)}
                        await pool.create_webrtc_transport(wedged_router, app_data=app_data)
                    else:
                        await pool.get_stats(wedged)
                assert caught.value.code == "invalid_state"
                took.append(trio.current_time() - started)

            async def healthy_calls() -> None:
                nonlocal answered
                until = trio.current_time() + timeout + 1.0
                while trio.current_time() < until:
                    with trio.fail_after(2.0):
                        assert await pool.get_stats(healthy)
                    answered += 1

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(wedged_call, False)
                await trio.sleep(0.1)
                for _ in range(6):
                    nursery.start_soon(wedged_call, True)
                nursery.start_soon(healthy_calls)
            assert len(took) == 9
            assert all(timeout - 0.2 < t < timeout + 3.0 for t in took), took
            assert answered > 10

            # Killed, as a death: the owner hears of it, the slot gets a new process.
            with trio.fail_after(10):
                while not events:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                while pool.workers_info()[index]["pid"] in (None, pid):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert events == [api.RouterClosed(wedged_router, "worker_died", worker=index, pid=pid)]
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
            assert pool.workers_info()[index]["restarts"] == 1
            with pytest.raises(NotFoundError):
                await pool.get_stats(wedged)
            router = await pool.create_router(lambda event: None, avoid=[healthy_router])
            assert await pool.get_stats((await pool.create_webrtc_transport(router)).transport_id)


async def test_a_worker_whose_parent_stops_reading_stays_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker's queue toward the parent is bounded (8 messages here). While the parent
    reads nothing: answers wait for room and the worker reads no further request (so the
    parent's own writes block: neither side grows), load reports are skipped (the worker
    goes on), and the first event that finds the queue full ends the worker (dropping it
    would leave the parent believing in a transport that is gone). The parent then reads
    the answers that were written, in order, and the end of the channel."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent = Channel(trio.SocketStream(trio.socket.from_stdlib_socket(parent_sock)))
    ended: list[bool] = []
    settings = WorkerSettings(transport_connect_timeout=8.0)

    async def ask(request_id: int, method: str, args: list[object]) -> object:
        await parent.send([REQUEST, request_id, method, args])
        while True:
            message = await parent.receive()
            if message[0] == RESPONSE:
                assert message[1:3] == [request_id, True], message
                return message[3]

    async def worker() -> None:
        ended.append(await run_worker_process(child_sock.detach(), os.getppid(), 0.05, 8))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker)
            try:
                await ask(1, "start", [converter.unstructure(settings)])
                router_id = await ask(2, "create_router", [])
                transport = await ask(3, "create_webrtc_transport", [router_id, False, None])
                assert isinstance(transport, dict)
                closes_at = trio.current_time() + 8.0  # its DTLS never connects
                # The parent stops reading and asks on and on, until its writes block.
                sent = 3
                while sent < 100_000:
                    with trio.move_on_after(1.0) as blocked:
                        await parent.send(
                            [REQUEST, sent + 1, "get_stats", [transport["transportId"]]]
                        )
                    if blocked.cancelled_caught:
                        break
                    sent += 1
                assert sent < 100_000, "the worker read every request"
                assert trio.current_time() < closes_at - 1.0, "too slow a machine for this test"
                await trio.sleep_until(closes_at - 0.5)
                assert not ended  # load reports found the queue full: skipped
                # The transport closes by itself: its event finds the queue full.
                with trio.fail_after(5):
                    while not ended:  # noqa: ASYNC110
                        await trio.sleep(0.05)
                assert ended == [False]
                assert "has not read the last 8 messages" in caplog.text
                answers = []
                # It may end in the middle of a frame, or reset (its requests were unread).
                with contextlib.suppress(BadPacket, trio.BrokenResourceError):
                    while (message := await parent.receive()) is not None:
                        if message[0] == RESPONSE:
                            assert message[2] is True
                            answers.append(message[1])
                assert answers == list(range(4, 4 + len(answers)))
                assert 0 < len(answers) < sent - 3
            finally:
                nursery.cancel_scope.cancel()
    await parent.aclose()
