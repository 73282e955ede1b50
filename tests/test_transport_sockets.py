"""RFC 7983 demultiplexing, RFC 4571 framing, port allocation and the UDP/TCP listeners."""

from __future__ import annotations

import errno
import random
import socket as stdlib_socket

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.transport_helpers import task_names
from trio_sfu.engine.rtc_sockets import (
    KIND_DTLS,
    KIND_OTHER,
    KIND_RTCP,
    KIND_RTP,
    KIND_STUN,
    FrameDecoder,
    TcpListener,
    UdpListener,
    bind_in_range,
    classify_untrusted,
    frame,
)

# ---- RFC 7983 ---------------------------------------------------------------------------

# A STUN Binding request header (RFC 8489 §5): type 0x0001, length 0, magic cookie
# 0x2112A442, 12-byte transaction id.
STUN_BINDING = bytes.fromhex("0001 0000 2112a442 000102030405060708090a0b")
# A DTLS 1.2 handshake record header (RFC 6347 §4.1): content type 22, version fefd,
# epoch 0, sequence number 0 (6 bytes), length 0.
DTLS_HANDSHAKE = bytes.fromhex("16 fefd 0000 000000000000 0000")
# RTP (RFC 3550 §5.1): V=2 (0x80), M=0 PT=96 (0x60), seq 1, ts 0, SSRC 0x01020304.
RTP_PT96 = bytes.fromhex("80 60 0001 00000000 01020304")
# RTP with the marker bit set and PT 111 (0xef = 0x80 | 111): still RTP, not RTCP.
RTP_MARKER_PT111 = bytes.fromhex("80 ef 0001 00000000 01020304")
# RTCP receiver report (RFC 3550 §6.4.2): V=2 RC=0 (0x80), PT=201 (0xc9), length 1,
# sender SSRC 0x01020304.
RTCP_RR = bytes.fromhex("80 c9 0001 01020304")
# RTCP sender report PT=200 (0xc8) and PSFB PT=206 (0xce) with FMT=1 (0x81): both RTCP.
RTCP_SR_HEADER = bytes.fromhex("80 c8 0006")
RTCP_PLI_HEADER = bytes.fromhex("81 ce 0002")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (STUN_BINDING, KIND_STUN),
        (bytes([3]) + STUN_BINDING[1:], KIND_STUN),  # 0-3 is STUN's range
        (bytes([4]) + STUN_BINDING[1:], KIND_OTHER),  # 4-19: ZRTP/TURN channel, not ours
        (bytes([19]), KIND_OTHER),
        (DTLS_HANDSHAKE, KIND_DTLS),
        (bytes([20]) + DTLS_HANDSHAKE[1:], KIND_DTLS),  # change_cipher_spec
        (bytes([63]), KIND_DTLS),
        (bytes([64]), KIND_OTHER),  # 64-79 TURN channels
        (bytes([127, 0]), KIND_OTHER),
        (RTP_PT96, KIND_RTP),
        (RTP_MARKER_PT111, KIND_RTP),
        (RTCP_RR, KIND_RTCP),
        (RTCP_SR_HEADER, KIND_RTCP),
        (RTCP_PLI_HEADER, KIND_RTCP),
        (bytes([0xBF, 0xDF]), KIND_RTCP),  # 191 and 223: both ranges' upper bounds
        (bytes([0xC0, 0xC8]), KIND_OTHER),  # 192: past the RTP/RTCP range
        (bytes([0x80]), KIND_OTHER),  # too short to tell RTP from RTCP
        (b"", KIND_OTHER),
    ],
)
def test_classify_follows_rfc7983(data: bytes, kind: int) -> None:
    assert classify_untrusted(data) == kind


@given(st.binary(max_size=64))
@settings(max_examples=200)
def test_classify_never_raises(data: bytes) -> None:
    assert classify_untrusted(data) in (KIND_STUN, KIND_DTLS, KIND_RTP, KIND_RTCP, KIND_OTHER)


# ---- RFC 4571 ---------------------------------------------------------------------------


def test_frame_prefixes_the_16_bit_length() -> None:
    # RFC 4571 §2: LENGTH (16 bits, network order) then the packet.
    assert frame(b"abc") == bytes.fromhex("0003") + b"abc"
    assert frame(b"\x00" * 0x0102)[:2] == bytes.fromhex("0102")
    assert frame(b"") == bytes.fromhex("0000")
    with pytest.raises(ValueError):
        frame(b"\x00" * 0x10000)


def test_frame_decoder_reassembles_split_and_joined_frames() -> None:
    decoder = FrameDecoder()
    stream = frame(b"first") + frame(b"") + frame(b"second!") + frame(b"x" * 300)
    # One byte at a time: frames appear exactly when their last byte arrives.
    out: list[bytes] = []
    for i in range(len(stream)):
        out += decoder.feed_untrusted(stream[i : i + 1])
    assert out == [b"first", b"second!", b"x" * 300]  # the empty frame is skipped
    assert decoder.pending == 0
    # All at once, plus half of a next frame.
    assert decoder.feed_untrusted(stream + bytes.fromhex("0005") + b"ab") == out
    assert decoder.pending == 4
    assert decoder.feed_untrusted(b"cde") == [b"abcde"]


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 50))
@settings(max_examples=100)
def test_frame_decoder_round_trip(payloads: list[bytes], chunk: int) -> None:
    stream = b"".join(frame(p) for p in payloads)
    decoder = FrameDecoder()
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        out += decoder.feed_untrusted(stream[i : i + chunk])
    assert out == [p for p in payloads if p]


@given(st.binary(max_size=2000))
@settings(max_examples=100)
def test_frame_decoder_accepts_any_bytes(data: bytes) -> None:
    decoder = FrameDecoder()
    frames = decoder.feed_untrusted(data)
    assert all(f and f in data for f in frames)
    assert sum(2 + len(f) for f in frames) + decoder.pending <= len(data)


# ---- port allocation --------------------------------------------------------------------


def test_bind_in_range_skips_ports_in_use() -> None:
    taken = bind_in_range("127.0.0.1", stdlib_socket.SOCK_DGRAM, (40000, 49999))
    try:
        port = taken.getsockname()[1]
        assert 40000 <= port <= 49999
        other = port + 1 if port < 49999 else port - 1
        # A two-port range with one port taken: the other is found whatever the order.
        for seed in range(4):
            sock = bind_in_range(
                "127.0.0.1",
                stdlib_socket.SOCK_DGRAM,
                (min(port, other), max(port, other)),
                rng=random.Random(seed),
            )
            try:
                assert sock.getsockname() == ("127.0.0.1", other)
            finally:
                sock.close()
        # Only the taken port: a clear OSError.
        with pytest.raises(OSError) as info:
            bind_in_range("127.0.0.1", stdlib_socket.SOCK_DGRAM, (port, port))
        assert info.value.errno == errno.EADDRINUSE
    finally:
        taken.close()


def test_bind_in_range_prefers_the_given_port_and_rejects_bad_ranges() -> None:
    udp = bind_in_range("127.0.0.1", stdlib_socket.SOCK_DGRAM, (40000, 49999))
    try:
        port = udp.getsockname()[1]
        tcp = bind_in_range(
            "127.0.0.1", stdlib_socket.SOCK_STREAM, (40000, 49999), preferred_port=port
        )
        try:
            assert tcp.getsockname()[1] == port  # TCP and UDP port spaces are separate
        finally:
            tcp.close()
    finally:
        udp.close()
    with pytest.raises(ValueError):
        bind_in_range("127.0.0.1", stdlib_socket.SOCK_DGRAM, (5000, 4000))
    with pytest.raises(ValueError):
        bind_in_range("localhost", stdlib_socket.SOCK_DGRAM, (40000, 40010))


# ---- listeners --------------------------------------------------------------------------


async def test_udp_listener_receives_sends_and_closes_at_once() -> None:
    with trio.fail_after(5):
        tasks_before = task_names()
        received: list[tuple[bytes, tuple[str, int]]] = []
        got = trio.Event()

        def handler(data: bytes, address: tuple[str, int], arrival: float) -> None:
            received.append((data, address))
            got.set()

        listener = UdpListener.bind("127.0.0.1", (40000, 49999))
        peer = trio.socket.socket(type=stdlib_socket.SOCK_DGRAM)
        with peer:
            await peer.bind(("127.0.0.1", 0))
            async with trio.open_nursery() as nursery:
                await nursery.start(listener.serve, handler)
                await peer.sendto(b"hello", listener.local_address)
                await got.wait()
                assert received == [(b"hello", peer.getsockname())]
                assert listener.sendto_nowait(b"back", peer.getsockname())
                assert await listener.sendto(b"again", peer.getsockname())
                assert await peer.recv(100) == b"back"
                assert await peer.recv(100) == b"again"
                batch = [bytes([i]) * (i + 1) for i in range(10)]
                assert await listener.sendto_many(batch, peer.getsockname()) == 10
                assert [await peer.recv(100) for _ in batch] == batch
                listener.close()  # wakes serve(): the nursery can exit without a cancel
            listener.close()  # idempotent
            assert not listener.sendto_nowait(b"x", peer.getsockname())
        assert task_names() == tasks_before


async def test_tcp_listener_frames_both_ways_and_close_ends_connections() -> None:
    with trio.fail_after(5):
        tasks_before = task_names()
        frames: list[bytes] = []
        got = trio.Event()

        def handler(data: bytes, address: tuple[str, int], arrival: float) -> None:
            frames.append(data)
            if len(frames) == 3:
                got.set()

        listener = TcpListener.bind("127.0.0.1", (40000, 49999))
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.serve, handler)
            stream = await trio.open_tcp_stream(*listener.local_address)
            async with stream:
                # Three frames, the second split across two writes.
                data = frame(b"one") + frame(b"two-two") + frame(b"three")
                await stream.send_all(data[:9])
                await stream.send_all(data[9:])
                await got.wait()
                assert frames == [b"one", b"two-two", b"three"]
                address = stream.socket.getsockname()[:2]
                assert list(listener.connections) == [address]
                assert listener.send_nowait(b"reply", address)
                assert not listener.send_nowait(b"reply", ("127.0.0.1", 9))  # unknown
                decoder = FrameDecoder()
                answer: list[bytes] = []
                while not answer:
                    answer = decoder.feed_untrusted(await stream.receive_some(100))
                assert answer == [b"reply"]
                listener.close()
                # The server side of the connection is closed: we read EOF.
                assert await stream.receive_some(100) == b""
        assert listener.connections == {}
        assert task_names() == tasks_before


async def test_tcp_listener_limits_connections() -> None:
    with trio.fail_after(5):
        listener = TcpListener(
            bind_in_range("127.0.0.1", stdlib_socket.SOCK_STREAM, (40000, 49999)),
            max_connections=1,
        )
        got = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.serve, lambda data, address, arrival: got.set())
            first = await trio.open_tcp_stream(*listener.local_address)
            async with first:
                await first.send_all(frame(b"hi"))
                await got.wait()  # the first connection is accepted and served
                second = await trio.open_tcp_stream(*listener.local_address)
                async with second:
                    # Refused: closed by the server at once.
                    assert await second.receive_some(10) == b""
                    assert listener.connections_refused == 1
                    assert len(listener.connections) == 1
            listener.close()
