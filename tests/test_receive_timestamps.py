"""Arrival times come from when a datagram reached the host, not from when the event loop
got round to it (issue 17, defect 3).

Transport-cc feedback tells a publisher's delay-based estimator when each of its packets
arrived; a time taken late (the server's loop busy, the socket buffer holding the packets
meanwhile) reads to it as a queue on the network. Here a sender blocks the one Trio loop
that the server also runs in while it sends a paced burst over real UDP: the server reads
the whole burst at once afterwards, and the times it reports must still show the pace.

The kernel stamps datagrams on CLOCK_REALTIME, trio's clock is CLOCK_MONOTONIC: a step of
the system clock between a stamp and the read that converts it moves that arrival by the
step (the VM these tests were written on steps it by 0.5 ms ten times a second). Each
test measures the steps during its burst (:class:`ClockSteps`) and allows exactly that.
"""

from __future__ import annotations

import socket as stdlib_socket
import time
import types
from collections.abc import Callable

import pytest
import trio

from tests.test_simulcast import connected
from trio_sfu.client.synthetic import (
    SyntheticPublisher,
    TransportWideCounter,
    vp8_simulcast_rtp_parameters,
)
from trio_sfu.engine import rtc_sockets
from trio_sfu.engine.rtc_sockets import UdpListener, enable_receive_timestamps
from trio_sfu.engine.worker import WorkerSettings, open_worker
from trio_sfu.rtcp import TransportCcFeedback, parse_rtcp_untrusted

#: The burst: this many packets, one every PACE seconds (the loop blocked all along).
BURST = 8
PACE = 0.004
#: Transport-cc times have 250 µs steps: a gap between two of them is off by less.
RESOLUTION = 0.00025
#: What measuring the clocks' offset may be off by (the listener's bracket is 50 µs).
OFFSET_ERROR = 0.0001


def kernel_timestamps_here() -> bool:
    with stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as sock:
        return enable_receive_timestamps(sock)


needs_kernel_timestamps = pytest.mark.skipif(
    not kernel_timestamps_here(), reason="no SO_TIMESTAMPNS on this platform"
)


def realtime_offset() -> float:
    """CLOCK_REALTIME minus trio's clock, from two reads of trio's clock 20 µs apart at
    most (a preempted measurement is taken again)."""
    while True:
        before = trio.current_time()
        realtime = time.time()
        after = trio.current_time()
        if after - before <= 20e-6:
            return realtime - (before + after) / 2


class ClockSteps:
    """How far the system clock was stepped against trio's clock since it was made."""

    def __init__(self) -> None:
        self._start = realtime_offset()

    def so_far(self) -> float:
        return abs(realtime_offset() - self._start)


def send_paced(send: Callable[[bytes], object], packets: list[bytes]) -> list[tuple[float, float]]:
    """Send ``packets`` PACE apart while blocking the event loop; per packet, trio's clock
    just before and just after its send."""
    sent: list[tuple[float, float]] = []
    for index, packet in enumerate(packets):
        if index:
            time.sleep(PACE)  # the server's loop is this one: it reads nothing meanwhile
        before = trio.current_time()
        assert send(packet)
        sent.append((before, trio.current_time()))
    return sent


def assert_paced(arrivals: list[float], sent: list[tuple[float, float]], slack: float) -> None:
    """Every gap between two arrivals lies within what the sender's clock allows for the
    gap between the two sends (plus ``slack``)."""
    for index in range(1, len(sent)):
        gap = arrivals[index] - arrivals[index - 1]
        shortest = sent[index][0] - sent[index - 1][1]
        longest = sent[index][1] - sent[index - 1][0]
        assert shortest - slack <= gap <= longest + slack, (index, gap, shortest, longest, slack)


@needs_kernel_timestamps
async def test_udp_listener_hands_over_when_each_datagram_arrived() -> None:
    with trio.fail_after(10):
        got: list[float] = []
        done = trio.Event()

        def handler(data: bytes, address: tuple[str, int], arrival: float) -> None:
            got.append(arrival)
            if len(got) == BURST:
                done.set()

        listener = UdpListener.bind("127.0.0.1", (40000, 49999))
        assert listener.kernel_timestamps
        with stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as peer:
            peer.connect(listener.local_address)
            async with trio.open_nursery() as nursery:
                await nursery.start(listener.serve, handler)
                steps = ClockSteps()
                sent = send_paced(peer.send, [bytes([i]) * 100 for i in range(BURST)])
                read_from = trio.current_time()
                await done.wait()
                slack = steps.so_far() + OFFSET_ERROR
                listener.close()
        # Each time is on trio's clock, within its send (the kernel stamps a loopback
        # datagram as it is sent), long before the loop could read it.
        for arrival, (before, after) in zip(got, sent, strict=True):
            assert before - slack <= arrival <= after + slack, (arrival, before, after, slack)
        assert got[-1] < read_from
        assert_paced(got, sent, slack)


@needs_kernel_timestamps
@pytest.mark.parametrize("step", [3600.0, -3600.0])
async def test_a_step_of_the_system_clock_never_makes_arrival_times_jump(
    step: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A datagram stamped before the system clock was stepped (and read after) does not
    fit the offset measured after the step; it gets the time it was read instead of one
    an hour off."""
    with trio.fail_after(10):
        got: list[float] = []
        arrived = trio.Event()

        def handler(data: bytes, address: tuple[str, int], arrival: float) -> None:
            got.append(arrival)
            arrived.set()

        listener = UdpListener.bind("127.0.0.1", (40000, 49999))
        with stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as peer:
            peer.connect(listener.local_address)
            async with trio.open_nursery() as nursery:
                await nursery.start(listener.serve, handler)
                real_time = time.time
                monkeypatch.setattr(
                    rtc_sockets, "time", types.SimpleNamespace(time=lambda: real_time() + step)
                )
                before = trio.current_time()
                peer.send(b"stamped before the step, read after")
                await arrived.wait()
                assert before <= got[0] <= trio.current_time()
                listener.close()


@needs_kernel_timestamps
@pytest.mark.parametrize("rtc_port", [0, None], ids=["shared-port", "own-ports"])
async def test_transport_cc_feedback_shows_the_pace_of_a_burst_the_loop_read_late(
    rtc_port: int | None,
) -> None:
    with trio.fail_after(30):
        settings = WorkerSettings(rtc_port=rtc_port, feedback_interval=0.05)
        async with open_worker(settings) as worker:
            router_id = await worker.create_router(lambda event: None)
            async with connected(worker, router_id) as (pub_id, pub, _):
                counter = TransportWideCounter(0xFFFC)  # the burst wraps the 16 bits
                parameters = vp8_simulcast_rtp_parameters(layers=1, transport_cc=True)
                publisher = SyntheticPublisher(parameters, transport_counter=counter)
                stream = publisher.streams[0]
                await worker.produce(pub_id, "video", parameters)

                reported: dict[int, int | None] = {}
                first = (counter.value + 1) & 0xFFFF  # after the keyframe's packet
                wanted = {(first + i) & 0xFFFF for i in range(BURST)}
                all_reported = trio.Event()

                async def read_feedback() -> None:
                    while True:
                        for packet in parse_rtcp_untrusted(await pub.receive_rtcp()):
                            if isinstance(packet, TransportCcFeedback):
                                reported.update(packet.arrivals_us())
                        if wanted <= reported.keys():
                            all_reported.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_feedback)
                    assert pub.send_rtp(stream.vp8_frame(keyframe=True)[0])
                    await trio.sleep(0.1)
                    frames = [stream.vp8_frame(keyframe=False)[0] for _ in range(BURST)]
                    steps = ClockSteps()
                    sent = send_paced(pub.send_rtp, frames)
                    await all_reported.wait()
                    slack = steps.so_far() + OFFSET_ERROR + RESOLUTION
                    nursery.cancel_scope.cancel()

        arrivals_us = [reported[(first + i) & 0xFFFF] for i in range(BURST)]
        assert None not in arrivals_us, arrivals_us  # loopback: nothing lost
        arrivals = [us / 1e6 for us in arrivals_us if us is not None]
        # The burst took BURST - 1 paces to send; the server read it all at once after.
        assert arrivals[-1] - arrivals[0] >= (BURST - 1) * PACE - slack, arrivals
        assert_paced(arrivals, sent, slack)
