"""Our meeting app's tests against a real trio-sfu.

pyproject.toml has, for pytest-trio:

    [tool.pytest.ini_options]
    trio_mode = true
"""

import pytest

from trio_sfu.client.signaling import SignalingError
from trio_sfu.testing import Impairment


async def test_participants_see_and_hear_each_other(sfu_server, sfu_peer):
    ann = await sfu_peer("standup", "ann")
    bob = await sfu_peer("standup", "bob")
    await ann.publish_audio()
    await ann.publish_video(simulcast=True)
    await bob.subscribe(ann)

    await bob.wait_for_frames(ann, 50, kind="audio")
    await bob.wait_for_frames(ann, 30, kind="video")
    await ann.wait_for_notification("rtc:peerJoined", userId="bob")

    room = await sfu_server.admin.room("standup")
    assert sorted(p["userId"] for p in room["peers"]) == ["ann", "bob"]
    metrics = await sfu_server.metrics()
    assert metrics["trio_sfu_peers"] == 2
    assert metrics["trio_sfu_consumers"] == 2


async def test_the_backend_removes_a_participant(sfu_server, sfu_peer):
    ann = await sfu_peer("standup", "ann")
    bob = await sfu_peer("standup", "bob")

    await sfu_server.admin.kick("standup", bob.peer_id)

    await ann.wait_for_notification("rtc:peerLeft", peerId=bob.peer_id)
    closed = await bob.wait_closed()
    assert closed.code == 4001


async def test_a_viewer_token_cannot_publish(sfu_peer):
    viewer = await sfu_peer("webinar", "viewer", claims={"can_publish": False})
    with pytest.raises(SignalingError) as refused:
        await viewer.publish_audio()
    assert refused.value.code == "forbidden"


async def test_a_token_for_another_meeting_is_refused(sfu_server, sfu_peer):
    with pytest.raises(SignalingError) as refused:
        await sfu_peer("standup", "mallory", token=sfu_server.token("other", "mallory"))
    assert refused.value.code == "forbidden"


async def test_audio_gets_through_a_lossy_network(sfu_peer):
    ann = await sfu_peer("standup", "ann")
    bob = await sfu_peer("standup", "bob", downlink=Impairment(loss=0.1, delay=0.05))
    await ann.publish_audio()
    await bob.subscribe(ann)

    await bob.wait_for_frames(ann, 100, kind="audio")
    (relay,) = bob.relays
    assert relay.downlink_stats.dropped_loss > 0


@pytest.mark.sfu(workers=2)
async def test_meetings_spread_over_two_media_workers(sfu_server, sfu_peer):
    for meeting in ("alpha", "beta"):
        host = await sfu_peer(meeting, "host")
        guest = await sfu_peer(meeting, "guest", auto_subscribe=True)
        await host.publish_audio()
        await guest.wait_for_frames(host, 20)

    workers = await sfu_server.admin.workers()
    assert sorted(m for w in workers for m in w["meetings"]) == ["alpha", "beta"]
    assert all(len(w["meetings"]) == 1 for w in workers)
