"""A real call: unmodified mediasoup-client in headless Chromium, through the demo page, via
trio-sfu (issue 5's acceptance).

Each test runs one scenario of ``tests/browser/run.py`` in its own loopback-only network
namespace: the server (media engine + signaling) in the runner's process, two pages of
Chromium with fake camera (1280x720 at 30 fps) and microphone, driven through the demo
page's form and buttons. The runner reports what the pages saw (getStats, notifications,
the page's books) and what the server still holds after everyone left.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import browser_ready, browser_scenario, run_script

__all__ = ["browser_ready", "browser_scenario"]  # fixtures, from tests/browser/conftest.py

CLIENT_TESTS = Path(__file__).resolve().parent / "browser" / "sfu_client.test.mjs"

Scenario = Callable[..., dict[str, Any]]


def assert_server_empty(result: dict[str, Any]) -> None:
    """After the pages left, the engine holds no router (so no transport, producer...)."""
    assert result["serverDump"]["routers"] == [], result["serverDump"]
    # The media ran in the default number of worker processes (one per core).
    workers = result["workers"]
    assert len(workers) == (os.cpu_count() or 1), workers
    assert all(w["alive"] for w in workers), workers


def assert_call(result: dict[str, Any], video_mime: str) -> None:
    pages = result["pages"]
    assert set(pages) == {"alice", "bob"}
    for name, page in pages.items():
        other = pages["bob" if name == "alice" else "alice"]
        # What this page publishes: Opus, and the camera as three simulcast streams whose
        # top one is the camera's full 1280 pixels.
        sent_video = {s["rid"]: s for s in page["sent"]["video"]}
        assert set(sent_video) == {"r0", "r1", "r2"}, page["sent"]
        assert sent_video["r2"]["frameWidth"] == 1280, page["sent"]
        assert len(page["sent"]["audio"]) == 1 and page["sent"]["audio"][0]["packetsSent"] > 0

        # What it receives from the other page: one audio and one video consumer, both open.
        consumers = page["consumers"]
        assert sorted(c["kind"] for c in consumers) == ["audio", "video"], consumers
        assert all(c["peerId"] == other["peerId"] and not c["closed"] for c in consumers)
        assert {c["producerId"] for c in consumers} == set(other["producers"].values())

        video, audio = page["received"]["video"], page["received"]["audio"]
        assert video["mimeType"] == video_mime, video
        before, after = video["framesDecoded"]
        assert after - before >= 20, f"{name} decoded {after - before} frames in 2 s: {video}"
        assert (video["frameWidth"], video["frameHeight"]) == (1280, 720), video
        assert audio["mimeType"] == "audio/opus", audio
        before, after = audio["packetsReceived"]
        assert after - before >= 40, f"{name} got {after - before} audio packets in 2 s: {audio}"
        assert page["joinToFirstFrameMs"] is not None
    assert_server_empty(result)


def test_sfu_client_module_on_node() -> None:
    """sfu-client.mjs's signaling half against a fake WebSocket (Node's test runner)."""
    run_script("build_web")  # node_modules: mediasoup-client, which the module imports
    done = subprocess.run(
        ["node", "--test", str(CLIENT_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    passed = re.search(r"^# pass (\d+)$", done.stdout, re.M)
    assert passed is not None and int(passed.group(1)) >= 7, done.stdout[-2000:]
    assert re.search(r"^# fail 0$", done.stdout, re.M), done.stdout[-2000:]


@pytest.mark.browser
def test_two_pages_call_with_vp8_simulcast(browser_scenario: Scenario) -> None:
    result = browser_scenario("vp8")
    assert_call(result, "video/VP8")
    # Bob's layer picker (rtc:setPreferredLayers): 180p brings Alice's video down to r0's
    # 320 pixels, auto brings it back to 1280.
    layers = result["layers"]
    assert (layers["lowWidth"], layers["highWidth"]) == (320, 1280), layers
    assert layers["lowPreferred"]["spatialLayer"] == 0, layers
    assert layers["highPreferred"]["spatialLayer"] == 2, layers


@pytest.mark.browser
def test_two_pages_call_with_h264_simulcast(browser_scenario: Scenario) -> None:
    result = browser_scenario("h264")
    assert_call(result, "video/H264")


@pytest.mark.browser
def test_camera_mute_pauses_and_resumes_the_producer(browser_scenario: Scenario) -> None:
    result = browser_scenario("mute")
    # Alice's Stop camera paused her producer; Bob heard about it exactly once each way.
    assert result["aliceProducerPaused"] is True
    assert (result["pausedEvents"], result["resumedEvents"]) == (1, 1)
    assert result["consumerPausedFlag"] is True
    assert result["badgeWhilePaused"] is True and result["badgeAfterResume"] is False
    # While paused the server forwards nothing (a frame or two may have been in flight when
    # the measurement started 0.7 s after the notification); after resuming, video decodes
    # again (the consumer asked for a keyframe).
    assert result["decodedWhilePaused"] <= 2, result
    assert result["decodedAfterResume"] > 10, result
    assert_server_empty(result)


@pytest.mark.browser
def test_closed_page_leaves_and_admin_api_follows(browser_scenario: Scenario) -> None:
    result = browser_scenario("leave")
    assert result["peerCountBefore"] == 2
    # Bob heard rtc:peerLeft for Alice, and both his consumers of her media are closed.
    consumers = result["consumersFromAlice"]
    assert sorted(c["kind"] for c in consumers) == ["audio", "video"]
    assert all(c["closed"] for c in consumers)
    assert result["tileGone"] is True and result["openConsumers"] == 0
    # The admin API: the meeting with Bob alone, then no meeting once he left.
    room = result["roomWithBob"]
    assert room["status"] == 200 and room["body"]["peerCount"] == 1
    assert [p["peerId"] for p in room["body"]["peers"]] == [result["bobPeerId"]]
    assert result["roomAfterLeave"]["status"] == 404
    meetings = [r["meetingId"] for r in result["roomsAfterLeave"]["rooms"]]
    assert result["meeting"] not in meetings
    assert_server_empty(result)
