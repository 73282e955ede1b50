"""Regression tests of issue 17's input defects, each through a real server on 127.0.0.1.

1. A peer whose only transports are plain ones is still served after
   ``peer_idle_timeout``, and its task does not spin.
5. A lone UTF-16 surrogate in any string of any request (the JSON escape on the wire) is
   refused with ``invalid_message`` naming the field; it never reaches another peer, and
   no outgoing message can fail to encode.
6. Integers of 2^64 and beyond (and values out of their field's range) are refused with
   ``invalid_message`` naming the field, alike with the in-process worker and with worker
   processes; the worker channel refuses what MessagePack cannot carry with a clear error.
8. A token whose ``exp``, ``nbf`` or ``iat`` is not a number is ``token_invalid``; a
   producer has at most :data:`~trio_sfu.ortc.negotiation.MAX_ENCODINGS` encodings.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, get_args, get_origin

import attrs
import jwt
import pytest
import trio

from tests.signaling_harness import (
    AUDIO,
    DEVICE_CAPS,
    DTLS_CLIENT,
    SECRET,
    RawWebSocket,
    fresh_ssrcs,
    http,
    make_config,
    peer,
    running_server,
    token,
)
from tests.test_signaling_admin import metric
from trio_sfu.client.signaling import SignalingClient, SignalingError
from trio_sfu.engine.api import MediaEngine
from trio_sfu.engine.channel import FrameDecoder, encode_frame
from trio_sfu.engine.pool import PoolSettings, open_worker_pool
from trio_sfu.engine.worker import WorkerSettings, open_worker
from trio_sfu.errors import InvalidMessageError
from trio_sfu.ortc import negotiation
from trio_sfu.ortc.types import RtpParameters
from trio_sfu.server import SfuServer
from trio_sfu.signaling import messages
from trio_sfu.signaling.auth import TokenVerifier
from trio_sfu.signaling.errors import UnauthorizedError
from trio_sfu.wire import structure_untrusted

M = "m"
LONE = "\ud800"
HUGE = 2**64 + 1  # 18446744073709551617
#: A number that JSON can write but a float cannot hold: infinity once parsed.
TOO_BIG_FLOAT = "__1e400__"
#: Encodings a producer may have (README, docs/protocol-additions.md).
MAX_ENCODINGS = 16


@asynccontextmanager
async def sfu(kind: str = "worker", **config: Any) -> AsyncIterator[tuple[MediaEngine, SfuServer]]:
    """A real server on the in-process worker (``--workers 1``) or on a pool of worker
    processes. Transports are never connected here: they must outlive the test."""
    settings = WorkerSettings(transport_connect_timeout=600)
    server_config = make_config(transport_connect_timeout=600, **config)
    if kind == "worker":
        async with open_worker(settings) as worker, running_server(worker, server_config) as s:
            yield worker, s
    else:
        pool_settings = PoolSettings(workers=1, worker=settings, report_interval=0.2)
        async with (
            open_worker_pool(pool_settings) as pool,
            running_server(pool, server_config) as s,
        ):
            yield pool, s


async def metrics_text(server: SfuServer) -> str:
    return (await http(server, "GET", "/metrics")).body.decode()


def invalid_message_count(text: str) -> float:
    try:
        return metric(text, 'trio_sfu_signaling_errors_total{code="invalid_message"}')
    except AssertionError:
        return 0.0


async def answer_of(raw: RawWebSocket) -> dict[str, Any]:
    """The next answer on ``raw`` (notifications in between are skipped)."""
    while True:
        frame = await raw.receive_json()
        if frame.get("type") == "rtc:error" or "requestId" in frame:
            return frame


# ---- 1. a plain-only peer after the idle timeout -------------------------------------------


@attrs.define(eq=False)
class TaskSteps(trio.abc.Instrument):
    """Counts the steps each task takes (by task name) while installed."""

    steps: Counter[str] = attrs.field(factory=Counter)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] += 1


async def test_a_plain_only_peer_is_served_after_the_idle_timeout_and_does_not_spin() -> None:
    idle_timeout = 0.5
    with trio.fail_after(30):
        async with (
            sfu(peer_idle_timeout=idle_timeout) as (_, server),
            peer(server, M, "bot", can_plain_transport=True) as bot,
        ):
            created = await bot.create_plain_transport(comedia=True, direction="send")
            # Well past the idle limit counted from the join (the transport came after).
            await trio.sleep(3 * idle_timeout)
            counter = TaskSteps()
            trio.lowlevel.add_instrument(counter)
            cpu = time.process_time()
            try:
                await trio.sleep(1.0)  # nothing happens in this second
            finally:
                trio.lowlevel.remove_instrument(counter)
            cpu = time.process_time() - cpu
            peer_steps = sum(n for name, n in counter.steps.items() if "Peer.run" in name)
            assert peer_steps == 0, f"the peer's task took {peer_steps} steps in an idle second"
            assert cpu < 0.25, f"the server used {cpu:.2f} s of CPU in an idle second"
            with trio.fail_after(2):  # promptly, not after a timeout
                stats = await bot.get_stats(created["transportId"])
            assert stats[0]["type"] == "plain"
            assert bot.closed is None
            room = server.app.rooms.rooms[M]
            assert [p.peer_id for p in room.peers.values()] == [bot.peer_id]


async def test_a_peer_whose_webrtc_transport_closes_keeps_its_plain_one_and_is_not_reaped() -> None:
    """The other path that moves the idle clock: the engine closes a transport (here the
    WebRTC one, never connected) while a plain transport remains."""
    with trio.fail_after(30):
        async with open_worker(WorkerSettings(transport_connect_timeout=0.3)) as worker:
            config = make_config(transport_connect_timeout=0.3, peer_idle_timeout=0.5)
            async with (
                running_server(worker, config) as server,
                peer(server, M, "bot", can_plain_transport=True) as bot,
            ):
                webrtc = await bot.create_transport("send")
                plain = await bot.create_plain_transport(comedia=True)
                note = await bot.next_notification("rtc:transportClosed")
                assert note.data["transportId"] == webrtc["transportId"]
                await trio.sleep(1.5)
                with trio.fail_after(2):
                    await bot.get_stats(plain["transportId"])
                assert bot.closed is None


# ---- 5. lone surrogates --------------------------------------------------------------------


def string_places(
    value: Any, path: tuple[str | int, ...] = ()
) -> list[tuple[str, tuple[Any, ...]]]:
    """Every place in a JSON value that holds a string: ``("value", path)`` for a string
    value, ``("key", path)`` for an object key (the path ends with the key)."""
    found: list[tuple[str, tuple[Any, ...]]] = []
    if isinstance(value, str):
        found.append(("value", path))
    elif isinstance(value, dict):
        for key, item in value.items():
            found.append(("key", (*path, key)))
            found.extend(string_places(item, (*path, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(string_places(item, (*path, index)))
    return found


def field_name(path: tuple[Any, ...]) -> str:
    """A path as the server names fields: ``data.rtpParameters.codecs[0].mimeType``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out


def with_lone_surrogate(
    frame: dict[str, Any], place: str, path: tuple[Any, ...]
) -> tuple[dict[str, Any], str]:
    """A copy of ``frame`` whose string at ``path`` ends with a lone surrogate, and the
    name of that field."""
    copy: dict[str, Any] = json.loads(json.dumps(frame))
    *parents, last = path
    node: Any = copy
    for part in parents:
        node = node[part]
    if place == "value":
        node[last] += LONE
        return copy, field_name(path)
    # Keep the key's position: rebuild the object in order.
    items = list(node.items())
    node.clear()
    for key, item in items:
        node[key + LONE if key == last else key] = item
    return copy, field_name((*parents, last + LONE))


DEEP_APP_DATA: Any = {"label": "mic", "a": {"b": [1, {"c": ["d", {"e": {"f": [["g"]]}}]}]}}


@asynccontextmanager
async def meeting_with_every_target(
    server: SfuServer,
) -> AsyncIterator[tuple[SignalingClient, RawWebSocket, dict[str, str]]]:
    """Ann (a client) publishes audio and has a recv transport; Bob (a raw WebSocket, may
    create plain transports) publishes, consumes Ann and holds one of everything. Yields
    ann, bob and the ids of Bob's objects."""
    async with peer(server, M, "ann") as ann, RawWebSocket.connect(server) as bob:
        send = await ann.create_transport("send")
        ann_producer = await ann.produce(
            send["transportId"], "audio", fresh_ssrcs(AUDIO["rtpParameters"])
        )
        await ann.create_transport("recv")

        async def ok(rtype: str, **data: Any) -> dict[str, Any]:
            answer = await bob.request(rtype, {"meetingId": M, **data})
            assert answer["type"] != "rtc:error", answer
            result: dict[str, Any] = answer["data"]
            return result

        bob_token = token(M, "bob", can_plain_transport=True)
        await ok("rtc:join", token=bob_token, displayName="Bob")
        bob_send = (await ok("rtc:createTransport", direction="send"))["transportId"]
        bob_recv = (await ok("rtc:createTransport", direction="recv"))["transportId"]
        producer = (
            await ok(
                "rtc:produce",
                transportId=bob_send,
                kind="audio",
                rtpParameters=fresh_ssrcs(AUDIO["rtpParameters"]),
                appData={"label": "mic"},
            )
        )["producerId"]
        consumer = (
            await ok(
                "rtc:consume",
                producerId=ann_producer,
                rtpCapabilities=DEVICE_CAPS,
                transportId=bob_recv,
            )
        )["consumerId"]
        plain = (await ok("rtc:createPlainTransport", comedia=True))["transportId"]
        await ann.next_notification("rtc:peerJoined")
        await ann.next_notification("rtc:newProducer")
        yield (
            ann,
            bob,
            {
                "send": bob_send,
                "recv": bob_recv,
                "producer": producer,
                "consumer": consumer,
                "plain": plain,
                "annProducer": ann_producer,
                "token": bob_token,
            },
        )


def every_request(ids: dict[str, str]) -> list[dict[str, Any]]:
    """One valid frame of every request type, every optional field given (strings
    included), appData nested deep."""
    m = {"meetingId": M}
    srtp_key = base64.b64encode(bytes(range(30))).decode()
    data: list[tuple[str, dict[str, Any]]] = [
        ("rtc:join", {**m, "token": ids["token"], "displayName": "Bob"}),
        ("rtc:getRouterRtpCapabilities", m),
        (
            "rtc:createTransport",
            {
                **m,
                "direction": "send",
                "sctpCapabilities": {"numStreams": {"OS": 1024, "MIS": 1024}},
                "forceTcp": False,
            },
        ),
        ("rtc:connectTransport", {**m, "transportId": ids["send"], "dtlsParameters": DTLS_CLIENT}),
        ("rtc:restartIce", {**m, "transportId": ids["send"]}),
        (
            "rtc:produce",
            {
                **m,
                "transportId": ids["send"],
                "kind": "audio",
                "rtpParameters": fresh_ssrcs(AUDIO["rtpParameters"]),
                "appData": DEEP_APP_DATA,
                "paused": False,
            },
        ),
        ("rtc:closeProducer", {**m, "producerId": ids["producer"]}),
        ("rtc:pauseProducer", {**m, "producerId": ids["producer"]}),
        ("rtc:resumeProducer", {**m, "producerId": ids["producer"]}),
        (
            "rtc:consume",
            {
                **m,
                "producerId": ids["annProducer"],
                "rtpCapabilities": DEVICE_CAPS,
                "transportId": ids["recv"],
                "paused": True,
            },
        ),
        ("rtc:resumeConsumer", {**m, "consumerId": ids["consumer"]}),
        ("rtc:pauseConsumer", {**m, "consumerId": ids["consumer"]}),
        ("rtc:closeConsumer", {**m, "consumerId": ids["consumer"]}),
        (
            "rtc:setPreferredLayers",
            {**m, "consumerId": ids["consumer"], "spatialLayer": 0, "temporalLayer": 0},
        ),
        ("rtc:getStats", {**m, "id": ids["send"]}),
        ("rtc:leave", m),
        (
            "rtc:createPlainTransport",
            {
                **m,
                "rtcpMux": True,
                "comedia": False,
                "enableSrtp": True,
                "srtpCryptoSuite": "AES_CM_128_HMAC_SHA1_80",
                "direction": "send",
                "appData": DEEP_APP_DATA,
            },
        ),
        (
            "rtc:connectPlainTransport",
            {
                **m,
                "transportId": ids["plain"],
                "ip": "127.0.0.1",
                "port": 9,
                "rtcpPort": 10,
                "srtpParameters": {"cryptoSuite": "AES_CM_128_HMAC_SHA1_80", "keyBase64": srtp_key},
            },
        ),
    ]
    assert {rtype for rtype, _ in data} == set(messages.REQUESTS)
    return [{"type": rtype, "requestId": f"r-{rtype}", "data": d} for rtype, d in data]


async def test_a_lone_surrogate_in_a_display_name_cannot_lock_a_meeting() -> None:
    """Issue 17's reproduction: Bob joins with ``"displayName": "x\\ud800"``."""
    with trio.fail_after(20):
        async with sfu() as (_, server), peer(server, M, "ann") as ann:
            async with RawWebSocket.connect(server) as bob:
                frame = {
                    "type": "rtc:join",
                    "requestId": "1",
                    "data": {"meetingId": M, "token": token(M, "bob"), "displayName": "x" + LONE},
                }
                text = json.dumps(frame)
                assert "\\ud800" in text  # the six characters of the escape on the wire
                await bob.send_text(text)
                answer = await answer_of(bob)
                assert answer["type"] == "rtc:error", answer
                assert answer["code"] == "invalid_message"
                assert answer["requestId"] == "1" and answer["request"] == "rtc:join"
                assert "'data.displayName'" in answer["error"]
                # The connection stays open and may join with a good name.
                joined = await bob.request(
                    "rtc:join", {"meetingId": M, "token": token(M, "bob"), "displayName": "x"}
                )
                assert joined["type"] == "rtc:joined"
            # Ann was never cut, and the meeting takes new peers.
            assert (await ann.next_notification("rtc:peerJoined")).data["displayName"] == "x"
            await ann.get_router_rtp_capabilities()
            async with peer(server, M, "carl") as carl:
                await carl.get_router_rtp_capabilities()
            assert ann.closed is None


async def test_a_lone_surrogate_in_any_string_of_any_request_is_refused_naming_the_field() -> None:
    with trio.fail_after(120):
        config = {"requests_per_second": 1e6, "request_burst": 10**6}
        async with sfu(**config) as (_, server), meeting_with_every_target(server) as targets:
            ann, bob, ids = targets
            frames = every_request(ids)
            before = invalid_message_count(await metrics_text(server))
            async with RawWebSocket.connect(server) as stranger:  # not joined: for rtc:join
                cases = 0
                for frame in frames:
                    sender = stranger if frame["type"] == "rtc:join" else bob
                    for place, path in string_places(frame):
                        bad, field = with_lone_surrogate(frame, place, path)
                        await sender.send_text(json.dumps(bad))
                        answer = await answer_of(sender)
                        case = f"{frame['type']} {place} {field!r}"
                        assert answer["type"] == "rtc:error", case
                        assert answer["code"] == "invalid_message", (case, answer)
                        assert f"invalid field {field!r}" in answer["error"], (case, answer)
                        request_id = bad.get("requestId")
                        assert answer.get("requestId") == (
                            request_id if request_id == frame["requestId"] else None
                        ), case
                        rtype = bad.get("type")
                        assert answer.get("request") == (
                            rtype if rtype == frame["type"] else None
                        ), case
                        cases += 1
                assert cases > 400  # every string of the rtpParameters and capabilities too
                # Nothing reached Ann; both sockets are open; the meeting takes a new peer.
                assert ann.pending_notifications() == []
                assert ann.closed is None
                await ann.get_router_rtp_capabilities()
                answer = await bob.request("rtc:getStats", {"meetingId": M, "id": ids["send"]})
                assert answer["type"] == "rtc:stats"
                joined = await stranger.request(
                    "rtc:join", {"meetingId": M, "token": token(M, "carl")}
                )
                assert joined["type"] == "rtc:joined"
                assert sorted(p["displayName"] for p in joined["data"]["peers"]) == ["Bob", "ann"]
            after = invalid_message_count(await metrics_text(server))
            assert after - before == cases  # counted like every other refusal


async def test_app_data_nested_past_what_can_be_sent_back_is_refused() -> None:
    """``json.loads`` reads nesting that ``json.dumps`` cannot write back: an ``appData``
    900 deep would be relayed in ``rtc:newProducer`` and cut the other peers. At most 64
    levels (the envelope counts) are taken."""
    with trio.fail_after(20):
        async with (
            sfu() as (_, server),
            peer(server, M, "ann") as ann,
            peer(server, M, "bob") as bob,
        ):
            send = (await bob.create_transport("send"))["transportId"]
            # The object at data.appData.a.a... (62 a's) is the 65th level: the frame is the first.
            field = "data.appData" + ".a" * 62
            for depth in (900, 63):
                app_data: Any = 1
                for _ in range(depth):
                    app_data = {"a": app_data}
                with pytest.raises(SignalingError) as info:
                    await bob.produce(
                        send, "audio", fresh_ssrcs(AUDIO["rtpParameters"]), app_data=app_data
                    )
                assert info.value.code == "invalid_message"
                assert f"invalid field {field!r}: nested deeper than 64" in info.value.message
            app_data = 1
            for _ in range(62):  # the frame, data, appData and 61 more objects: 64 levels
                app_data = {"a": app_data}
            producer_id = await bob.produce(
                send, "audio", fresh_ssrcs(AUDIO["rtpParameters"]), app_data=app_data
            )
            note = await ann.next_notification("rtc:newProducer")
            assert note.data["producerId"] == producer_id
            assert note.data["appData"] == app_data
            assert ann.closed is None


def _sample(tp: Any, text: str, number: float) -> Any:
    """A value of type ``tp`` whose strings are ``text`` and floats ``number``."""
    if attrs.has(tp):
        return _instance(tp, text, number)
    origin, args = get_origin(tp), get_args(tp)
    if origin is list:
        return [_sample(args[0], text, number)]
    if origin is dict:
        return {text: {"deep": [text, {text: [number, text]}]}}
    if tp is Any:
        return {text: [text, {text: number}]}
    if origin is not None and type(None) in args:  # Optional
        return _sample(next(a for a in args if a is not type(None)), text, number)
    if args and all(isinstance(a, str) for a in args):  # Literal
        return args[0]
    if origin is not None:  # another union (codec parameter values): its string
        return text
    return {str: text, int: 7, float: number, bool: True}[tp]


def _instance(cls: type[Any], text: str, number: float) -> Any:
    hints = attrs.resolve_types(cls)
    return cls(**{f.name: _sample(f.type, text, number) for f in attrs.fields(hints)})


def _finite(value: Any) -> Any:
    """``value`` as JSON can say it: a float that is not finite becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _outgoing_classes() -> list[type[Any]]:
    """Every answer and notification class of the protocol."""
    requests = {cls for cls, _ in messages.REQUESTS.values()}
    return [
        cls
        for cls in vars(messages).values()
        if isinstance(cls, type)
        and attrs.has(cls)
        and cls.__module__ == messages.__name__
        and cls not in requests
        and cls is not messages.Envelope
    ]


@pytest.mark.parametrize("cls", _outgoing_classes(), ids=lambda cls: cls.__name__)
def test_every_outgoing_message_encodes_whatever_its_strings_and_numbers(cls: type[Any]) -> None:
    """An answer or notification whose every string holds a lone surrogate, and whose
    every float is not finite, still becomes a UTF-8 text frame that decodes to it."""
    for text, number in (("x" + LONE, 0.5), ("\udfff" + LONE + "ü", math.nan), ("y", math.inf)):
        data = _instance(cls, text, number)
        message = messages.notification_message("rtc:x", data)
        message["requestId"] = text
        frame = messages.encode_message(message)
        frame.encode("utf-8")  # a text frame is UTF-8: this must not raise
        assert json.loads(frame) == _finite(message)
    error = messages.error_message(
        "invalid_message", "bad " + LONE, request_id="1" + LONE, request="rtc:" + LONE
    )
    assert json.loads(messages.encode_message(error).encode("utf-8")) == error


# ---- 6. integers of 2^64 and beyond, values out of range -----------------------------------


Build = Callable[[dict[str, str]], tuple[str, dict[str, Any]]]


def _produce_case(field: str, value: Any, at: str | None = None) -> tuple[str, Build]:
    """``rtc:produce`` of Bob's audio with ``rtpParameters.<at or field>`` set to
    ``value``; the answer must name ``data.rtpParameters.<field>``."""

    def build(ids: dict[str, str]) -> tuple[str, dict[str, Any]]:
        params = fresh_ssrcs(AUDIO["rtpParameters"])
        _set(params, at or field, value)
        return "rtc:produce", {
            "meetingId": M,
            "transportId": ids["send"],
            "kind": "audio",
            "rtpParameters": params,
        }

    return "data.rtpParameters." + field, build


def _consume_case(field: str, value: Any) -> tuple[str, Build]:
    """``rtc:consume`` of Ann's audio with ``rtpCapabilities.<field>`` set to ``value``."""

    def build(ids: dict[str, str]) -> tuple[str, dict[str, Any]]:
        caps = json.loads(json.dumps(DEVICE_CAPS))
        _set(caps, field, value)
        return "rtc:consume", {
            "meetingId": M,
            "producerId": ids["annProducer"],
            "rtpCapabilities": caps,
            "transportId": ids["recv"],
        }

    return "data.rtpCapabilities." + field, build


def _other_case(rtype: str, field: str, **data: Any) -> tuple[str, Build]:
    """``rtype`` with ``data`` (a value naming one of Bob's ids stands for that id)."""

    def build(ids: dict[str, str]) -> tuple[str, dict[str, Any]]:
        given = {k: ids.get(v, v) if isinstance(v, str) else v for k, v in data.items()}
        return rtype, {"meetingId": M, **given}

    return field, build


def _set(obj: Any, path: str, value: Any) -> None:
    """Set ``a.b[0].c`` (dots and indexes) in ``obj`` to ``value``."""
    parts: list[str | int] = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        parts.append(name)
        if rest:
            parts.append(int(rest.rstrip("]")))
    for part in parts[:-1]:
        obj = obj[part]
    obj[parts[-1]] = value


OUT_OF_RANGE: list[tuple[str, Build]] = [
    _produce_case("encodings[0].ssrc", HUGE),
    _produce_case("encodings[0].ssrc", -HUGE),
    _produce_case("encodings[0].ssrc", 2**32),
    _produce_case("encodings[0].maxBitrate", HUGE),
    _produce_case("encodings[0].maxBitrate", 2**32),
    _produce_case("encodings[0].maxBitrate", 0),
    _produce_case("encodings[0].rtx.ssrc", {"ssrc": HUGE}, at="encodings[0].rtx"),
    _produce_case("encodings[0].maxFramerate", TOO_BIG_FLOAT),
    _produce_case("codecs[0].clockRate", HUGE),
    _produce_case("codecs[0].clockRate", 2**32),
    _produce_case("codecs[0].clockRate", 0),
    _produce_case("codecs[0].payloadType", HUGE),
    _produce_case("codecs[0].channels", HUGE),
    _produce_case("codecs[0].parameters.useinbandfec", HUGE),
    _produce_case("codecs[0].parameters.useinbandfec", 2**31),
    _produce_case("headerExtensions[0].id", HUGE),
    _produce_case(
        "headerExtensions[0].parameters.x", {"x": HUGE}, at="headerExtensions[0].parameters"
    ),
    _consume_case("codecs[0].preferredPayloadType", HUGE),
    _consume_case("codecs[0].preferredPayloadType", 128),
    _consume_case("codecs[0].clockRate", HUGE),
    _consume_case("codecs[0].channels", HUGE),
    _consume_case("codecs[0].channels", 256),
    _consume_case("codecs[0].parameters.minptime", HUGE),
    _consume_case("codecs[0].parameters.minptime", -(2**31) - 1),
    _consume_case("headerExtensions[0].preferredId", HUGE),
    _other_case(
        "rtc:setPreferredLayers", "data.spatialLayer", consumerId="consumer", spatialLayer=HUGE
    ),
    _other_case(
        "rtc:setPreferredLayers",
        "data.temporalLayer",
        consumerId="consumer",
        spatialLayer=0,
        temporalLayer=-HUGE,
    ),
    _other_case(
        "rtc:connectPlainTransport", "data.port", transportId="plain", ip="127.0.0.1", port=HUGE
    ),
    _other_case("rtc:createPlainTransport", "data.appData.n", appData={"n": HUGE}),
    _other_case(
        "rtc:createPlainTransport",
        "data.appData.deep[0].x",
        appData={"deep": [{"x": TOO_BIG_FLOAT}]},
    ),
]


async def test_out_of_range_numbers_are_refused_alike_in_process_and_with_worker_processes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each request of :data:`OUT_OF_RANGE` gets ``invalid_message`` naming the field, the
    same answer word for word with ``--workers 1`` (the worker in process) and with worker
    processes; nothing is logged as an error; the connection is served after it."""
    answers: dict[str, list[dict[str, Any]]] = {}
    for kind in ("worker", "pool"):
        with trio.fail_after(90):
            async with sfu(kind) as (_, server), meeting_with_every_target(server) as targets:
                _, bob, ids = targets
                got = answers[kind] = []
                caplog.clear()
                with caplog.at_level(logging.WARNING):
                    for _, build in OUT_OF_RANGE:
                        rtype, data = build(ids)
                        frame = {"type": rtype, "requestId": "1", "data": data}
                        text = json.dumps(frame).replace(f'"{TOO_BIG_FLOAT}"', "1e400")
                        await bob.send_text(text)
                        got.append(await answer_of(bob))
                    stats = await bob.request("rtc:getStats", {"meetingId": M, "id": ids["send"]})
                    assert stats["type"] == "rtc:stats"
                errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
                assert errors == [], f"{kind}: logged {errors}"
    wrong = [
        (field, kind, answer)
        for kind, got in answers.items()
        for (field, _), answer in zip(OUT_OF_RANGE, got, strict=True)
        if answer["type"] != "rtc:error"
        or answer["code"] != "invalid_message"
        or f"invalid field {field!r}" not in answer["error"]
    ]
    assert wrong == []
    assert answers["worker"] == answers["pool"]  # word for word


def test_the_channel_refuses_what_messagepack_cannot_carry_with_a_clear_error() -> None:
    for value, problem in ((HUGE, "integer"), (-(2**63) - 1, "integer"), ("x" + LONE, "UTF-8")):
        message = [0, 7, "produce", ["t", "audio", {"encodings": [{"ssrc": value}]}]]
        with pytest.raises(InvalidMessageError, match=problem) as info:
            encode_frame(message)
        assert "[3][2].encodings[0].ssrc" in info.value.message
    # Up to 64 bits both ways still travel.
    for value in (2**64 - 1, -(2**63)):
        frame = encode_frame([1, value])
        assert list(FrameDecoder().feed_untrusted(frame)) == [[1, value]]


async def test_worker_processes_refuse_what_the_channel_cannot_carry_and_carry_on() -> None:
    """Past the signaling checks (the engine called directly): an SSRC of 2^64+1 gives a
    clear refusal, not an OverflowError, and the worker serves the next request."""
    params = structure_untrusted(fresh_ssrcs(AUDIO["rtpParameters"]), RtpParameters)
    huge = attrs.evolve(params, encodings=[attrs.evolve(params.encodings[0], ssrc=HUGE)])
    with trio.fail_after(30):
        async with open_worker_pool(PoolSettings(workers=1)) as pool:
            router_id = await pool.create_router(lambda event: None)
            transport = await pool.create_webrtc_transport(router_id)
            with pytest.raises(InvalidMessageError, match="integer"):
                await pool.produce(transport.transport_id, "audio", huge)
            producer_id = await pool.produce(transport.transport_id, "audio", params)
            assert producer_id
            await pool.close_router(router_id)


# ---- 8. at most 16 encodings per producer --------------------------------------------------


def _simulcast(count: int) -> dict[str, Any]:
    """VP8 ``rtpParameters`` with ``count`` encodings told apart by rid."""
    video = {
        "mimeType": "video/VP8",
        "payloadType": 96,
        "clockRate": 90000,
        "parameters": {},
        "rtcpFeedback": [],
    }
    return {
        "codecs": [video],
        "headerExtensions": [
            {"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 4},
            {"uri": "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", "id": 10},
        ],
        "encodings": [{"rid": f"r{i}", "scalabilityMode": "L1T3"} for i in range(count)],
        "rtcp": {"cname": "ann"},
        "mid": "1",
    }


async def test_a_producer_has_at_most_max_encodings() -> None:
    with trio.fail_after(30):
        async with sfu() as (_, server), peer(server, M, "ann") as ann:
            send = (await ann.create_transport("send"))["transportId"]
            for count in (MAX_ENCODINGS + 1, 5000):
                with pytest.raises(SignalingError) as info:
                    await ann.produce(send, "video", _simulcast(count))
                assert info.value.code == "invalid_message"
                assert "'data.rtpParameters.encodings'" in info.value.message
                assert f"at most {MAX_ENCODINGS}" in info.value.message
            producer_id = await ann.produce(send, "video", _simulcast(MAX_ENCODINGS))
            await ann.get_stats(producer_id)  # it exists
    assert negotiation.MAX_ENCODINGS == MAX_ENCODINGS  # the bound the docs give


# ---- 8. token time claims ------------------------------------------------------------------


def _signed(claims: dict[str, Any]) -> str:
    """An HS256 JWT of ``claims`` as given (Infinity and NaN too: PyJWT reads them)."""

    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    head = part({"alg": "HS256", "typ": "JWT"}) + "." + part(claims)
    signature = hmac.new(SECRET.encode(), head.encode(), hashlib.sha256).digest()
    return head + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", "9999999999"),
        ("exp", str(int(time.time()) + 3600)),
        ("exp", True),
        ("exp", [9999999999]),
        ("exp", {"t": 9999999999}),
        ("exp", math.inf),
        ("exp", math.nan),
        ("exp", None),
        ("nbf", "0"),
        ("nbf", False),
        ("nbf", [0]),
        ("iat", "0"),
        ("iat", {"t": 0}),
        ("iat", math.nan),
    ],
)
def test_ill_typed_time_claims_are_token_invalid(claim: str, value: Any) -> None:
    claims: dict[str, Any] = {"sub": "u", "meetingId": M, "exp": time.time() + 3600}
    claims[claim] = value
    with pytest.raises(UnauthorizedError) as info:
        TokenVerifier(key=SECRET).verify(_signed(claims), M)
    assert info.value.refusal == "token_invalid", info.value.message
    assert repr(claim) in info.value.message


def test_well_typed_time_claims_still_work() -> None:
    now = time.time()
    verifier = TokenVerifier(key=SECRET)
    ok = {"sub": "u", "meetingId": M, "exp": now + 60, "nbf": int(now) - 1, "iat": now}
    assert verifier.verify(_signed(ok), M).user_id == "u"
    with pytest.raises(UnauthorizedError) as info:
        verifier.verify(_signed({**ok, "exp": int(now) - 60}), M)
    assert info.value.refusal == "token_expired"
    with pytest.raises(UnauthorizedError) as info:
        verifier.verify(_signed({**ok, "nbf": now + 600}), M)
    assert info.value.refusal == "token_invalid"
    with pytest.raises(UnauthorizedError) as info:
        verifier.verify(_signed({**ok, "name": "x" + LONE}), M)
    assert info.value.refusal == "token_invalid"


async def test_a_token_whose_exp_is_a_string_is_refused_at_join() -> None:
    claims = {"sub": "u", "meetingId": M, "exp": str(int(time.time()) + 3600)}
    assert jwt.decode(_signed(claims), SECRET, algorithms=["HS256"])["exp"] == claims["exp"]
    with trio.fail_after(20):
        async with sfu() as (_, server), RawWebSocket.connect(server) as raw:
            answer = await raw.request("rtc:join", {"meetingId": M, "token": _signed(claims)})
            assert answer["type"] == "rtc:error"
            assert answer["code"] == "unauthorized"
            assert "'exp'" in answer["error"]
            text = await metrics_text(server)
            assert metric(text, 'trio_sfu_refused_total{reason="token_invalid"}') == 1
