"""Trespass: everything a client may try with what is not its own is refused, counted in
/metrics (``trio_sfu_refused_total{reason=...}``), logged at most once per reason per
minute, and never ends in a traceback.

Real server, real in-process Worker (and a worker process for the counters' way to the
parent), real UDP, DTLS and SRTP on 127.0.0.1.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import jwt
import pytest
import trio
import trio.testing

from tests.signaling_harness import (
    AUDIO,
    DEVICE_CAPS,
    DTLS_CLIENT,
    SECRET,
    VIDEO,
    RawWebSocket,
    fresh_ssrcs,
    http,
    make_config,
    peer,
    publish_audio,
    running_server,
    token,
)
from tests.test_signaling_admin import metric
from trio_sfu.client.peer import open_peer
from trio_sfu.client.signaling import SignalingError
from trio_sfu.client.synthetic import audio_rtp_parameters
from trio_sfu.client.transport import open_client_transport
from trio_sfu.dtls import DtlsCertificate
from trio_sfu.engine.pool import PoolSettings, open_worker_pool
from trio_sfu.engine.worker import Worker, WorkerSettings, open_worker
from trio_sfu.ortc.types import DtlsParameters, IceCandidate, IceParameters, RtpParameters
from trio_sfu.rtp.packet import RtpPacket
from trio_sfu.server import SfuServer
from trio_sfu.signaling.auth import issue_token
from trio_sfu.stun import build_binding_request
from trio_sfu.wire import structure_untrusted, unstructure


@asynccontextmanager
async def sfu(**settings: Any) -> AsyncIterator[tuple[Worker, SfuServer]]:
    async with (
        open_worker(WorkerSettings(**settings)) as worker,
        running_server(worker, make_config()) as server,
    ):
        yield worker, server


async def refused_total(server: SfuServer, reason: str) -> float:
    text = (await http(server, "GET", "/metrics")).body.decode()
    return metric(text, f'trio_sfu_refused_total{{reason="{reason}"}}')


def refusal_lines(caplog: pytest.LogCaptureFixture, reason: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if f"refused ({reason})" in r.getMessage()]


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert [r for r in caplog.records if r.exc_info] == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# ---- signaling -------------------------------------------------------------------------------


async def test_other_peers_and_meetings_ids_in_every_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(20):
        async with (
            sfu() as (worker, server),
            peer(server, "m", "alice") as a,
            peer(server, "m", "mallory") as m,
            peer(server, "other", "oscar") as o,
        ):
            send_id, producer_id = await publish_audio(a)
            recv_id = (await a.create_transport("recv"))["transportId"]
            consumer_id = (await a.consume(producer_id, DEVICE_CAPS))["consumerId"]
            await m.create_transport("recv")
            await o.create_transport("recv")
            before = worker.dump()

            audio = fresh_ssrcs(AUDIO["rtpParameters"])
            caps = DEVICE_CAPS
            attempts: list[tuple[str, dict[str, Any]]] = [
                ("rtc:connectTransport", {"transportId": send_id, "dtlsParameters": DTLS_CLIENT}),
                ("rtc:restartIce", {"transportId": recv_id}),
                ("rtc:produce", {"transportId": send_id, "kind": "audio", "rtpParameters": audio}),
                ("rtc:closeProducer", {"producerId": producer_id}),
                ("rtc:pauseProducer", {"producerId": producer_id}),
                ("rtc:resumeProducer", {"producerId": producer_id}),
                ("rtc:consume", {"producerId": producer_id, "rtpCapabilities": caps} | {}),
                (
                    "rtc:consume",
                    {"producerId": producer_id, "rtpCapabilities": caps, "transportId": recv_id},
                ),
                ("rtc:resumeConsumer", {"consumerId": consumer_id}),
                ("rtc:pauseConsumer", {"consumerId": consumer_id}),
                ("rtc:closeConsumer", {"consumerId": consumer_id}),
                ("rtc:setPreferredLayers", {"consumerId": consumer_id, "spatialLayer": 0}),
                ("rtc:getStats", {"id": send_id}),
                ("rtc:getStats", {"id": producer_id}),
                ("rtc:getStats", {"id": consumer_id}),
            ]
            expected = 0
            for client, meeting in ((m, "m"), (o, "other")):
                for rtype, data in attempts:
                    if client is m and rtype == "rtc:consume" and "transportId" not in data:
                        continue  # mallory may consume alice's producer: same meeting
                    with pytest.raises(SignalingError) as info:
                        await client.request(rtype, {"meetingId": meeting, **data})
                    assert info.value.code == "not_found", (rtype, meeting)
                    expected += 1
            # An id nobody has is not_found too, but no trespass.
            with pytest.raises(SignalingError) as info:
                await m.request("rtc:closeProducer", {"meetingId": "m", "producerId": "nobody"})
            assert info.value.code == "not_found"
            # Naming alice's meeting from another one.
            for _ in range(2):
                with pytest.raises(SignalingError) as info:
                    await o.request(
                        "rtc:closeProducer", {"meetingId": "m", "producerId": producer_id}
                    )
                assert info.value.code == "not_joined"

            assert await refused_total(server, "foreign_id") == expected
            assert await refused_total(server, "foreign_meeting") == 2
            # Nothing of alice's changed, and she still owns all of it.
            assert worker.dump() == before
            await a.pause_consumer(consumer_id)
            await a.close_producer(producer_id)
            # One log line per reason (the rest are counted), no traceback.
            assert len(refusal_lines(caplog, "foreign_id")) == 1
            assert len(refusal_lines(caplog, "foreign_meeting")) == 1
            assert_no_traceback(caplog)


async def test_tokens_expired_forged_for_another_meeting_or_missing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    claims = {"sub": "u", "meetingId": "m", "exp": 4102444800}
    cases = {
        "token_expired": issue_token(SECRET, meeting_id="m", user_id="u", ttl=60, now=1e9),
        "token_invalid": jwt.encode(claims, "not-the-server-secret-0123456789", "HS256"),
        "token_wrong_meeting": token("another-meeting", "u"),
        "token_missing": None,
    }
    alg_none = jwt.encode(claims, None, algorithm="none")
    garbage = "not.a.token"
    with trio.fail_after(20):
        async with sfu() as (worker, server), RawWebSocket.connect(server) as raw:
            answers = []
            for reason, value in [*cases.items(), ("token_invalid", alg_none)]:
                for _ in range(2):
                    data = (
                        {"meetingId": "m"} if value is None else {"meetingId": "m", "token": value}
                    )
                    answers.append((reason, await raw.request("rtc:join", data)))
            answers.append(
                (
                    "token_invalid",
                    await raw.request("rtc:join", {"meetingId": "m", "token": garbage}),
                )
            )
            for reason, answer in answers:
                assert answer["type"] == "rtc:error"
                code = "forbidden" if reason == "token_wrong_meeting" else "unauthorized"
                assert answer["code"] == code, (reason, answer)
            for reason in cases:
                want = 5 if reason == "token_invalid" else 2
                assert await refused_total(server, reason) == want, reason
                assert len(refusal_lines(caplog, reason)) == 1
            assert server.app.rooms.counts().peers == 0
            assert worker.dump() == {"routers": []}
            # the socket is still usable: a good token joins
            answer = await raw.request("rtc:join", {"meetingId": "m", "token": token("m", "u")})
            assert answer["type"] == "rtc:joined"
            assert_no_traceback(caplog)


# ---- the RTC port ------------------------------------------------------------------------


def transport_of(worker: Worker, transport_id: str) -> Any:
    for router in worker._routers.values():
        entry = router.transports.get(transport_id)
        if entry is not None:
            return entry.transport
    raise AssertionError(f"no transport {transport_id}")


async def test_stun_and_media_from_strangers_are_refused_while_the_call_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(30):
        async with sfu() as (worker, server), AsyncExitStack() as stack:
            ann = await stack.enter_async_context(
                open_peer(server.ws_url, "m", token=token("m", "ann"))
            )
            bob = await stack.enter_async_context(
                open_peer(server.ws_url, "m", token=token("m", "bob"))
            )
            audio_id, source = await ann.publish("audio", audio_rtp_parameters(ssrc=777))
            consumer = await bob.consume(audio_id)
            assert ann.send_transport and bob.recv_transport and bob.recv_transport_id
            assert ann.send_transport_id is not None
            victim = transport_of(worker, bob.recv_transport_id)
            other = transport_of(worker, ann.send_transport_id)
            port = worker.webrtc_server.udp_port if worker.webrtc_server else None
            assert port is not None
            target = ("127.0.0.1", port)
            ufrag = victim.ice_parameters.username_fragment

            async def packet_reaches_bob(payload_size: int) -> None:
                now = trio.current_time()
                ann.send_transport.send_rtp(
                    source.streams[0].opus_frame(size=payload_size, now=now)
                )
                while True:
                    packet = RtpPacket.parse_untrusted(await bob.recv_transport.receive_rtp())
                    if packet.ssrc == consumer.ssrc and len(packet.payload) == payload_size:
                        return

            await packet_reaches_bob(101)
            with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as stranger:
                await stranger.bind(("127.0.0.1", 0))
                checks = [
                    # bob's ufrag, a password of nobody's
                    build_binding_request(
                        username=f"{ufrag}:evil",
                        password="p" * 32,
                        priority=1,
                        ice_controlling_tiebreaker=1,
                        use_candidate=True,
                    )[0],
                    # bob's ufrag, ann's transport's password (another transport's credential)
                    build_binding_request(
                        username=f"{ufrag}:evil",
                        password=other.ice_parameters.password,
                        priority=1,
                        ice_controlling_tiebreaker=1,
                        use_candidate=True,
                    )[0],
                    # ann's ufrag, a MESSAGE-INTEGRITY of another key (FINGERPRINT fine)
                    build_binding_request(
                        username=f"{other.ice_parameters.username_fragment}:evil",
                        password="q" * 32,
                        priority=1,
                        ice_controlling_tiebreaker=1,
                        use_candidate=True,
                    )[0],
                ]
                for check in checks:
                    await stranger.sendto(check, target)
                # RTP, RTCP and DTLS from the unvalidated address.
                rtp = RtpPacket(
                    payload_type=111, sequence_number=1, timestamp=1, ssrc=777, payload=b"x" * 40
                ).serialize()
                for datagram in (rtp, b"\x80\xc8" + bytes(26), bytes.fromhex("16fefd") + bytes(10)):
                    await stranger.sendto(datagram, target)
                await packet_reaches_bob(102)  # the call goes on
                with trio.move_on_after(0.3):
                    await stranger.recv(2048)
                    pytest.fail("a stranger got an answer")
                assert not victim.is_validated(stranger.getsockname())
            assert victim.stats()["refused"]["stun_unauthenticated"] == 2
            assert other.stats()["refused"]["stun_unauthenticated"] == 1
            assert await refused_total(server, "stun_unauthenticated") == 3
            assert await refused_total(server, "not_validated") == 3

            # The same from an address ICE validated for bob (packets not his): his own
            # transport checks them; SRTP refuses what is not protected with his keys.
            bob.recv_transport.send_raw(rtp)
            await packet_reaches_bob(103)

            # The worker logs each reason once, then counts.
            worker._log_refusals(trio.current_time())
            worker._log_refusals(trio.current_time())
            assert len(refusal_lines(caplog, "stun_unauthenticated")) == 1
            assert len(refusal_lines(caplog, "not_validated")) == 1
            assert_no_traceback(caplog)


async def test_producers_cannot_take_ssrcs_mids_or_rids_in_use(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(30):
        async with sfu() as (worker, server), AsyncExitStack() as stack:
            ann = await stack.enter_async_context(
                open_peer(server.ws_url, "m", token=token("m", "ann"))
            )
            bob = await stack.enter_async_context(
                open_peer(server.ws_url, "m", token=token("m", "bob"))
            )
            eve = await stack.enter_async_context(
                open_peer(server.ws_url, "m", token=token("m", "eve"))
            )
            audio_id, ann_source = await ann.publish(
                "audio", audio_rtp_parameters(ssrc=5555, mid="0")
            )
            consumer = await bob.consume(audio_id)

            async def refused_produce(params: Any, kind: str = "audio") -> SignalingError:
                assert eve.send_transport_id is not None
                with pytest.raises(SignalingError) as info:
                    await eve.signaling.produce(eve.send_transport_id, kind, unstructure(params))
                assert info.value.code == "unsupported", info.value.message
                return info.value

            await eve.open_transport("send")
            # Ann's SSRC, on eve's own transport: refused (router-wide).
            error = await refused_produce(audio_rtp_parameters(ssrc=5555, mid="9"))
            assert "ssrc 5555" in error.message
            # Ann's MID on eve's own transport: allowed, her packets reach only her producer.
            eve_id, eve_source = await eve.publish(
                "audio", audio_rtp_parameters(ssrc=6666, mid="0")
            )
            # A second producer of eve's with her MID, or with her SSRC: refused.
            error = await refused_produce(audio_rtp_parameters(ssrc=6667, mid="0"))
            assert "mid '0'" in error.message
            await refused_produce(audio_rtp_parameters(ssrc=6666, mid="1"))

            # RIDs: eve's video without a MID would be ambiguous with any producer of
            # her transport using the same RIDs.
            video = structure_untrusted({**_VIDEO_NO_MID, "mid": "5"}, RtpParameters)
            await eve.publish("video", video)
            no_mid = structure_untrusted(_VIDEO_NO_MID, RtpParameters)
            error = await refused_produce(no_mid, "video")
            assert "rid 'r0'" in error.message

            assert await refused_total(server, "ssrc_in_use") == 2
            assert await refused_total(server, "mid_in_use") == 1
            assert await refused_total(server, "rid_in_use") == 1

            # Not hijacked: eve sends with ann's MID, bob's consumer carries only ann's.
            assert eve.send_transport and ann.send_transport and bob.recv_transport
            now = trio.current_time()
            for _ in range(5):
                eve.send_transport.send_rtp(eve_source.streams[0].opus_frame(size=66, now=now))
            ann.send_transport.send_rtp(ann_source.streams[0].opus_frame(size=77, now=now))
            while True:
                packet = RtpPacket.parse_untrusted(await bob.recv_transport.receive_rtp())
                assert packet.ssrc == consumer.ssrc
                assert len(packet.payload) != 66, "eve's packet reached ann's subscriber"
                if len(packet.payload) == 77:
                    break
            producers = {p for r in worker.dump()["routers"] for p in r["producerIds"]}
            assert producers == {audio_id, eve_id} | producers - {audio_id, eve_id}
            assert len(producers) == 3  # ann's audio, eve's audio and video
            assert_no_traceback(caplog)


_VIDEO_NO_MID: dict[str, Any] = {k: v for k, v in VIDEO["rtpParameters"].items() if k != "mid"}


async def test_a_dtls_certificate_not_matching_the_signaled_fingerprint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(20):
        async with sfu() as (worker, server), peer(server, "m", "mallory") as client:
            info = await client.create_transport("send")
            liar = DtlsCertificate.generate()
            async with open_client_transport(
                structure_untrusted(info["iceParameters"], IceParameters),
                [structure_untrusted(c, IceCandidate) for c in info["iceCandidates"]],
                structure_untrusted(info["dtlsParameters"], DtlsParameters),
            ) as transport:
                # Signal another certificate's fingerprint than the one the client uses.
                fingerprint = liar.fingerprint("sha-256")
                await client.connect_transport(
                    info["transportId"],
                    {
                        "role": "client",
                        "fingerprints": [{"algorithm": "sha-256", "value": fingerprint.value}],
                    },
                )
                note = await client.next_notification("rtc:transportClosed")
                assert note.data == {
                    "transportId": info["transportId"],
                    "reason": "dtls_failed: fingerprint mismatch",
                }
                assert not transport.connected
            assert await refused_total(server, "dtls_fingerprint") == 1
            assert worker.dump()["routers"][0]["transportIds"] == []
            # The peer stays in the meeting: it may create another transport.
            await client.create_transport("send")
            assert_no_traceback(caplog)


async def test_engine_refusals_of_a_worker_process_reach_the_parents_metrics() -> None:
    with trio.fail_after(30):
        settings = PoolSettings(workers=1, report_interval=0.1)
        async with (
            open_worker_pool(settings) as pool,
            running_server(pool, make_config()) as server,
        ):
            (info,) = pool.workers_info()
            with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as stranger:
                await stranger.bind(("127.0.0.1", 0))
                for _ in range(3):
                    await stranger.sendto(b"\x80\x60" + bytes(30), ("127.0.0.1", info["udpPort"]))
                await stranger.sendto(
                    build_binding_request(
                        username="nobody:x",
                        password="p" * 32,
                        priority=1,
                        ice_controlling_tiebreaker=1,
                        use_candidate=True,
                    )[0],
                    ("127.0.0.1", info["udpPort"]),
                )
            while await refused_total(server, "not_validated") < 3:  # noqa: ASYNC110 (polled)
                await trio.sleep(0.05)
            assert await refused_total(server, "not_validated") == 3
            assert await refused_total(server, "stun_unauthenticated") == 1
