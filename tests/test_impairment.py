"""The impairment relay: its decisions with numbers, and the relay over real sockets."""

from __future__ import annotations

import random

import pytest
import trio

from trio_sfu.ortc.types import IceCandidate
from trio_sfu.testing.impairment import (
    ImpairedLink,
    Impairment,
    UdpRelay,
    open_udp_relay,
)

RTP = bytes([0x80, 96]) + bytes(98)  # 100 bytes that look like RTP (RFC 7983: 128-191)
STUN = bytes([0x00, 0x01]) + bytes(98)


def test_bernoulli_loss_is_seeded() -> None:
    def run(seed: int) -> list[bool]:
        link = ImpairedLink(Impairment(loss=0.2), random.Random(seed))
        return [link.admit(RTP, i * 0.01) is None for i in range(2000)]

    first = run(1)
    assert first == run(1)
    assert first != run(2)
    assert 0.17 < sum(first) / len(first) < 0.23
    link = ImpairedLink(Impairment(loss=0.2), random.Random(1))
    for i in range(2000):
        link.admit(RTP, i * 0.01)
    assert link.stats.dropped_loss == sum(first)
    assert link.stats.delivered == 2000 - sum(first)


@pytest.mark.parametrize("loss", [0.07, 0.15, 0.3])
def test_spread_loss_is_close_to_the_rate_in_every_window(loss: float) -> None:
    link = ImpairedLink(Impairment(loss=loss, loss_model="spread"), random.Random(3))
    lost = [link.admit(RTP, 0.0) is None for _ in range(3000)]
    for start in range(0, 3000 - 200, 50):
        window = lost[start : start + 200]
        assert abs(sum(window) - loss * 200) <= 3, (start, sum(window))


def test_delay_and_jitter() -> None:
    link = ImpairedLink(Impairment(delay=0.05, jitter=0.01), random.Random(4))
    leaves = [link.admit(RTP, 1.0) for _ in range(500)]
    assert all(at is not None and 1.05 <= at <= 1.06 for at in leaves)
    assert max(x for x in leaves if x is not None) - min(x for x in leaves if x is not None) > 0.009


def test_reordering_holds_some_packets_back() -> None:
    link = ImpairedLink(Impairment(reorder=0.1, reorder_delay=0.02), random.Random(5))
    leaves = [link.admit(RTP, i * 0.001) for i in range(1000)]
    held = sum(1 for i, at in enumerate(leaves) if at is not None and at > i * 0.001)
    assert 70 < held < 130
    order = sorted(range(1000), key=lambda i: leaves[i] or 0.0)
    assert order != list(range(1000))


def test_bandwidth_cap_spaces_packets_and_drops_beyond_the_queue() -> None:
    # 100-byte packets at 80 kbps: one packet per 10 ms; a 50 ms queue holds 5 more.
    link = ImpairedLink(Impairment(bandwidth=80_000, queue_limit=0.05), random.Random(6))
    leaves = [link.admit(RTP, 0.0) for _ in range(10)]
    assert leaves[:6] == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    assert leaves[6:] == [None] * 4
    assert link.stats.dropped_queue == 4
    # Later, once the queue drained, packets pass again.
    assert link.admit(RTP, 1.0) == pytest.approx(1.01)


def test_handshakes_pass_untouched_unless_asked() -> None:
    link = ImpairedLink(Impairment(loss=1.0, delay=1.0), random.Random(7))
    assert link.admit(STUN, 2.0) == 2.0
    assert link.admit(RTP, 2.0) is None
    link = ImpairedLink(Impairment(loss=1.0, only_media=False), random.Random(7))
    assert link.admit(STUN, 2.0) is None


def test_rewrite_candidates_points_udp_candidates_at_the_relay() -> None:
    relay = UdpRelay(("127.0.0.1", 40000))
    candidates = [
        IceCandidate("udpcand", 100, "127.0.0.1", "127.0.0.1", 40000, "host", "udp"),
        IceCandidate("tcpcand", 50, "127.0.0.1", "127.0.0.1", 40001, "host", "tcp", "passive"),
    ]
    with pytest.raises(RuntimeError):
        relay.rewrite_candidates(candidates)
    relay.address = ("127.0.0.1", 5555)
    (rewritten,) = relay.rewrite_candidates(candidates)
    assert (rewritten.ip, rewritten.address, rewritten.port) == ("127.0.0.1", "127.0.0.1", 5555)
    assert rewritten.foundation == "udpcand"


async def test_relay_forwards_both_ways_with_loss_and_delay() -> None:
    with trio.fail_after(10):
        server = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        client = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        with server, client:
            await server.bind(("127.0.0.1", 0))
            await client.bind(("127.0.0.1", 0))
            async with open_udp_relay(
                server.getsockname()[:2],
                downlink=Impairment(loss=0.5, loss_model="spread", delay=0.05),
                seed=11,
            ) as relay:
                assert relay.address is not None
                # Client -> server: no impairment on the uplink.
                sent_at = trio.current_time()
                for i in range(20):
                    await client.sendto(RTP[:2] + bytes([i]) + RTP[3:], relay.address)
                got = []
                relay_side = None
                while len(got) < 20:
                    data, relay_side = await server.recvfrom(2048)
                    got.append(data[2])
                assert got == list(range(20))
                assert trio.current_time() - sent_at < 0.05
                # Server -> client: half of it lost, the rest 50 ms late, in order.
                sent_at = trio.current_time()
                for i in range(40):
                    await server.sendto(RTP[:2] + bytes([i]) + RTP[3:], relay_side)
                back = []
                with trio.move_on_after(0.5):
                    while True:
                        data, _ = await client.recvfrom(2048)
                        back.append(data[2])
                        if len(back) == 1:
                            assert trio.current_time() - sent_at >= 0.05
                assert len(back) == 20
                assert back == sorted(back)
                assert relay.downlink_stats.dropped_loss == 20
                assert relay.uplink_stats.delivered == 20
                # Settings change while it runs.
                relay.downlink.loss = 0.0
                relay.downlink.delay = 0.0
                await server.sendto(STUN, relay_side)
                data, _ = await client.recvfrom(2048)
                assert data == STUN
