"""The pytest plugin as an app meets it: pytest runs in a fresh directory without any
conftest (pytester, a subprocess), and the plugin is there through its entry point.

Also the test peers' behaviour that tests/test_app_example.py does not show: pause and
resume, leaving and dropping, late publishers with auto_subscribe, simulcast, the failures
of a wait (what was awaited, what was seen), and the impairment on what a peer sends.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from trio_sfu.testing import Impairment, PeerFactory, SfuTestServer, WaitTimeout

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent

APP_TESTS = """
import sys

import pytest

from trio_sfu.client.signaling import SignalingError


def test_the_plugin_costs_nothing_to_tests_without_its_fixtures():
    assert not [m for m in sys.modules if m.startswith(("trio_sfu.testing.", "trio_sfu.server"))]


@pytest.mark.trio
async def test_marked_as_trio(sfu_server, sfu_peer):
    ann = await sfu_peer("m", "ann")
    assert (await sfu_server.admin.room("m"))["peers"][0]["peerId"] == ann.peer_id


async def test_not_a_trio_test(sfu_server):
    pass


@pytest.mark.trio
async def test_leaves_a_router_behind(sfu_server):
    await sfu_server.engine.create_router(lambda event: None)


@pytest.mark.trio
async def test_waits_for_frames_it_never_subscribed_to(sfu_peer):
    ann = await sfu_peer("m", "ann")
    bob = await sfu_peer("m", "bob")
    await ann.publish_audio()
    await bob.wait_for_frames(ann, 5, timeout=0.5)


@pytest.mark.trio
@pytest.mark.sfu(peers_per_meeting=1)
async def test_the_marker_sets_the_server_up(sfu_server, sfu_peer):
    await sfu_peer("m", "ann")
    with pytest.raises(SignalingError) as refused:
        await sfu_peer("m", "bob")
    assert refused.value.code == "limit_exceeded"
"""


def test_the_readme_example_is_tests_test_app_example() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Testing your app against trio-sfu") :]
    start = section.index("```python\n") + len("```python\n")
    example = section[start : section.index("```\n", start)]
    assert example == (ROOT / "tests" / "test_app_example.py").read_text()


def test_an_app_gets_the_fixtures_without_a_conftest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app=APP_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=120)
    result.assert_outcomes(passed=3, failed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_not_a_trio_test uses trio-sfu fixtures but is not a Trio test: set "
            "'trio_mode = true'*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*LeakError: the test left state in its trio-sfu server: the engine still has 1 router*"]
    )
    result.stdout.fnmatch_lines(
        [
            "*WaitTimeout: bob waited 0.5 s for 5 frames from ann: got 0. "
            "bob has no subscription (call subscribe()).*"
        ]
    )


def test_trio_mode_and_the_marker_in_the_app_configuration(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\naddopts = --strict-markers\n")
    pytester.makepyfile(
        test_app="""
import pytest

@pytest.mark.sfu(workers=1, peer_idle_timeout=0.5)
async def test_an_idle_peer_is_reaped(sfu_peer):
    lurker = await sfu_peer("m", "lurker")
    closed = await lurker.wait_closed(timeout=5)
    assert (closed.code, closed.reason) == (4003, "idle_timeout")
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=1)
    without_trio = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:trio")
    without_trio.stdout.fnmatch_lines(["*the trio-sfu fixtures need pytest-trio*"])


async def test_pause_and_resume_as_the_others_hear_it(sfu_peer: PeerFactory) -> None:
    with trio.fail_after(30):
        ann = await sfu_peer("m", "ann")
        bob = await sfu_peer("m", "bob")
        mic = await ann.publish_audio()
        await bob.subscribe(ann)
        await bob.wait_for_frames(ann, 10)

        await mic.pause()
        await bob.wait_for_notification("rtc:producerPaused", producerId=mic.producer_id)
        await mic.resume()
        await bob.wait_for_notification("rtc:producerResumed", producerId=mic.producer_id)
        await bob.wait_for_frames(ann, bob.frames_from(ann) + 10)


async def test_leaving_dropping_and_late_publishers(sfu_peer: PeerFactory) -> None:
    with trio.fail_after(30):
        host = await sfu_peer("m", "host", auto_subscribe=True)
        ann = await sfu_peer("m", "ann")
        await ann.publish_audio()
        await host.wait_for_frames("ann", 10)  # by user id: heard of through rtc:newProducer
        bob = await sfu_peer("m", "bob")
        await bob.publish_audio()
        await host.wait_for_frames(bob, 10)

        await ann.leave()
        await host.wait_for_notification("rtc:peerLeft", peerId=ann.peer_id)
        await bob.drop()
        await host.wait_for_notification("rtc:peerLeft", peerId=bob.peer_id)
        with pytest.raises(AssertionError, match="ann has left"):
            await ann.publish_audio()


async def test_simulcast_or_not_and_what_there_is_to_subscribe_to(
    sfu_server: SfuTestServer, sfu_peer: PeerFactory
) -> None:
    with trio.fail_after(30):
        ann = await sfu_peer("m", "ann")
        bob = await sfu_peer("m", "bob")
        with pytest.raises(AssertionError, match="ann publishes no producer to subscribe to"):
            await bob.subscribe(ann)
        camera = await ann.publish_video(simulcast=True)
        screen = await ann.publish_video()
        subscriptions = await bob.subscribe(ann, kind="video")
        types = {s.producer_id: s.consumer.type for s in subscriptions}
        assert types == {camera.producer_id: "simulcast", screen.producer_id: "simple"}
        await bob.wait_for_frames(ann, 60, kind="video")
        assert camera.frames_sent > 0 and screen.frames_sent > 0
        metrics = await sfu_server.metrics()
        assert metrics["trio_sfu_producers"] == 2
        assert metrics.value("trio_sfu_signaling_requests_total", type="rtc:consume") == 2


async def test_a_wait_fails_at_once_when_the_server_ends_the_peer(
    sfu_server: SfuTestServer, sfu_peer: PeerFactory
) -> None:
    with trio.fail_after(30):
        ann = await sfu_peer("m", "ann")
        bob = await sfu_peer("m", "bob")
        await ann.publish_audio()
        await bob.subscribe(ann)
        await sfu_server.admin.kick("m", bob.peer_id)
        start = trio.current_time()
        with pytest.raises(WaitTimeout) as failed:
            await bob.wait_for_frames(ann, 10**6, timeout=20)
        assert trio.current_time() - start < 5
        message = str(failed.value)
        assert message.startswith("bob waited for 1000000 frames from ann, but after")
        assert "the server had closed its connection (4001 kicked)" in message
        assert "Frames by subscription: ann audio" in message
        with pytest.raises(WaitTimeout, match=r"rtc:roomClosed.*rtc:peerJoined"):
            await ann.wait_for_notification("rtc:roomClosed", timeout=0.2)


async def test_uplink_loss_is_asked_for_again_and_sent_again(sfu_peer: PeerFactory) -> None:
    with trio.fail_after(30):
        ann = await sfu_peer("m", "ann", uplink=Impairment(loss=0.1, loss_model="spread"))
        bob = await sfu_peer("m", "bob")
        camera = await ann.publish_video()
        await bob.subscribe(ann)
        await bob.wait_for_frames(ann, 60)
        (relay,) = ann.relays
        lost = relay.uplink_stats.dropped_loss
        assert lost >= 3
        # The SFU NACKs what it missed; the publisher sends it again (through the relay,
        # which may lose a retransmission too).
        assert camera.retransmitted >= lost // 2
