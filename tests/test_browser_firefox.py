"""Firefox ESR in the browser tests (issue 17), beside Chromium.

Debian's ``/usr/bin/firefox-esr`` (installed by ``scripts/install_browser``), driven by
puppeteer-core over WebDriver BiDi, runs the demo page with mediasoup-client as Chromium
does in ``test_browser.py``: fake camera (1280x720 at 30 fps) and microphone, a
loopback-only network namespace (with a default route over ``lo``: Firefox gathers no ICE
candidate without one; see ``tests/browser/run.py``).

* ``firefox-vp8``: Alice in Firefox, Bob in Chromium, VP8 simulcast both ways; each decodes
  the other's 1280-wide video, and Bob's layer picker takes Alice's video to r0 and back.
* ``firefox-h264``: Alice (Chromium) publishes H264; Bob's Firefox has no H264 here (no
  OpenH264 plugin without a network), so his consume of her video is refused
  ``unsupported``, which his page shows and survives.
* ``firefox-switch``: issue 17's freeze. Alice publishes from Firefox, Bob (Chromium)
  resumes his consumer of her video and 100 ms later asks for layer 0; Firefox drops that
  second keyframe request (libwebrtc acts on one per 300 ms across a track's simulcast
  streams), so the switch waits, forwarding r2 meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.browser.conftest import browser_ready, browser_scenario
from tests.test_browser import assert_call, assert_server_empty

__all__ = ["browser_ready", "browser_scenario"]  # fixtures, from tests/browser/conftest.py

Scenario = Callable[..., dict[str, Any]]

#: firefox-switch: the longest time between two frames Bob's Chromium may count around a
#: switch. It counts a freeze when two frames are more than max(3 x the mean interval, the
#: mean + 150 ms) apart, ~183 ms at 30 fps. Before the fix, 12 of 24 switches here froze for
#: 257-957 ms, at least once in each of 8 runs (312-943 ms in the issue): r2 stopped for the
#: REMB before r0's keyframe came. With r2 kept up until the switch only the splice remains,
#: about a frame interval (the issue saw ~115 ms where a second subscriber kept r2 up): no
#: freeze at all in 27 switches here. 250 ms leaves a decoder hiccup on a busy machine a
#: little room above the freeze threshold, and stays under every freeze seen before the fix.
MAX_SWITCH_GAP_MS = 250
#: ... and from asking for layer 0 to the server forwarding it: the keyframe request that
#: Firefox dropped goes out again after 300 ms (KEYFRAME_RETRY_WAITING), where it used to
#: wait 1 s (KEYFRAME_REQUEST_INTERVAL); the server's timeline is read every 200 ms. Before
#: the fix: 1130-1322 ms (13 of 15 switches; Firefox took the first request in 2); after:
#: 119-670 ms.
MAX_SWITCH_MS = 1000


def server_switch_ms(result: dict[str, Any], cycle: dict[str, Any]) -> float | None:
    """From Bob's request for layer 0 to the first record of the server's timeline that
    shows his consumer forwarding r0 (ms), or None."""
    asked = cycle["wall"]["low"]
    for entry in result["serverTimeline"]:
        if entry["wall"] < asked:
            continue
        for consumer in entry["consumers"]:
            current = consumer["current"]
            if (
                consumer["id"] == result["bobVideoConsumerId"]
                and current is not None
                and current["spatialLayer"] == 0
            ):
                return float((entry["wall"] - asked) * 1000)
    return None


def no_page_errors(result: dict[str, Any]) -> None:
    errors = [line for line in result["console"] if "pageerror" in line]
    assert errors == [], errors


@pytest.mark.browser
def test_firefox_and_chromium_call_each_other_with_vp8_simulcast(
    browser_scenario: Scenario,
) -> None:
    result = browser_scenario("firefox-vp8")
    assert result["browsers"]["firefox"].startswith("firefox/"), result["browsers"]
    assert "chromium" in result["browsers"]
    # Both publish three simulcast streams and decode each other's 1280-wide video.
    assert_call(result, "video/VP8")
    # Bob (Chromium) takes Alice's Firefox simulcast down to r0's 320 pixels and back.
    layers = result["layers"]
    assert (layers["lowWidth"], layers["highWidth"]) == (320, 1280), layers
    no_page_errors(result)


@pytest.mark.browser
def test_firefox_without_h264_is_refused_an_h264_video_cleanly(
    browser_scenario: Scenario,
) -> None:
    result = browser_scenario("firefox-h264")
    bob = result["bobPage"]
    alice = result["pages"]["alice"]
    # The premise: this Firefox cannot receive H264.
    assert "video/H264" not in bob["receiveCodecs"], bob["receiveCodecs"]
    # Bob's consume of Alice's H264 video was refused `unsupported`; his page says so on
    # her tile and stays joined.
    assert bob["state"] == "joined" and bob["error"] is None, bob
    assert [(r["producerId"], r["peerId"], r["code"]) for r in bob["refused"]] == [
        (alice["producers"]["video"], result["alicePeerId"], "unsupported")
    ], bob["refused"]
    assert bob["note"]["hidden"] is False and "unsupported" in bob["note"]["text"], bob["note"]
    # Everything else works: Bob hears Alice; Alice sees and hears Bob.
    pages = result["pages"]
    consumers = pages["bob"]["consumers"]
    assert [(c["kind"], c["closed"]) for c in consumers] == [("audio", False)], consumers
    before, after = pages["bob"]["received"]["audio"]["packetsReceived"]
    assert after - before >= 40, pages["bob"]["received"]
    # (Whichever of his streams: that is test_firefox_and_chromium_call_each_other_...'s.)
    video = pages["alice"]["received"]["video"]
    assert video["mimeType"] == "video/VP8" and video["frameWidth"] > 0, video
    before, after = video["framesDecoded"]
    assert after - before >= 20, video
    before, after = pages["alice"]["received"]["audio"]["packetsReceived"]
    assert after - before >= 40, pages["alice"]["received"]
    no_page_errors(result)
    assert_server_empty(result)


@pytest.mark.browser
def test_a_layer_switch_right_after_resuming_does_not_freeze_firefox_video(
    browser_scenario: Scenario,
) -> None:
    result = browser_scenario("firefox-switch")
    cycles = result["cycles"]
    assert len(cycles) == 3
    for cycle in cycles:
        assert cycle["preferred"] == {"spatialLayer": 0, "temporalLayer": 2}, cycle
        assert cycle["marks"]["low"] >= 100, cycle
        # The switch happened, soon: the server forwards r0 and Bob decoded its frames.
        switched = server_switch_ms(result, cycle)
        assert switched is not None and switched <= MAX_SWITCH_MS, (switched, cycle)
        assert cycle["server"]["currentLayers"]["spatialLayer"] == 0, cycle
        assert cycle["lowMs"] is not None, cycle
        # From the first frame after the resume on, decoding never stalled: r2 went on
        # until r0's keyframe came, and frames still came at the end of the watch.
        assert [f for f in cycle["freezes"] if f["ms"] >= MAX_SWITCH_GAP_MS] == [], cycle
        assert cycle["decodingAtEnd"], cycle
    no_page_errors(result)
    assert_server_empty(result)
