"""The PlainTransport benchmark's generator (:mod:`trio_sfu.bench.plain`), a process of its
own: ``python -m trio_sfu.bench.plain_generator --dest IP:PORT``.

It paces a precomputed ring of VP8 packets (4 packets of ``--size`` bytes a frame, the first
frame a keyframe) with non-blocking ``sendto`` in batches, protecting each with SRTP on the
fly with ``--srtp-key`` (AES-GCM). ``RUN <rate> <seconds>`` on stdin -> ``SENT <n>
<seconds>`` on stdout; ``QUIT`` (or the end of stdin) ends it.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Final

from trio_sfu.client.synthetic import SyntheticStream
from trio_sfu.srtp import SRTP_CRYPTO_SUITES, SrtpKeys, SrtpSession

__all__ = ["PAYLOAD_TYPE", "SRTP_SUITE", "SSRC", "generator_main", "main"]

SSRC: Final = 0x5EED0001
PAYLOAD_TYPE: Final = 101
SRTP_SUITE: Final = "AEAD_AES_128_GCM"


def _frames(size: int) -> tuple[list[bytes], list[bytes]]:
    """A VP8 keyframe and a delta frame, 4 packets each; the generator numbers them."""
    stream = SyntheticStream(ssrc=SSRC, payload_type=PAYLOAD_TYPE, clock_rate=90000)
    key = stream.vp8_frame(keyframe=True, size=size, packets=4, tid=0)
    delta = stream.vp8_frame(keyframe=False, size=size, packets=4, tid=0)
    return key, delta


#: Where the generator writes each packet's numbers: sequence number and timestamp (RTP
#: header), PictureID (15 bits, M set) and TL0PICIDX (the VP8 descriptor after 12 bytes).
_HEADER = struct.Struct("!HI")
_VP8_IDS = struct.Struct("!HB")


def generator_main(args: argparse.Namespace) -> int:
    """Send on command: ``RUN <rate> <seconds>`` on stdin -> ``SENT <n> <seconds>`` on
    stdout; ``QUIT`` (or the end of stdin) ends it."""
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    host, port = args.dest.rsplit(":", 1)
    dest = (host, int(port))
    key, delta = _frames(args.size)
    key_templates = [bytearray(p) for p in key]
    templates = [bytearray(p) for p in delta]
    protect = None
    if args.srtp_key:
        master = base64.b64decode(args.srtp_key)
        session = SrtpSession(
            SrtpKeys(SRTP_CRYPTO_SUITES[SRTP_SUITE], local_master=master, remote_master=master)
        )
        protect = session.protect_rtp
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.setblocking(False)
    sendto = sock.sendto
    pack_header = _HEADER.pack_into
    pack_ids = _VP8_IDS.pack_into
    number = 0  # packets made: 4 a frame, the first frame the keyframe
    print("READY", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "QUIT":
            break
        rate, seconds = float(words[1]), float(words[2])
        sent = 0
        start = time.perf_counter()
        while True:
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
            due = min(int(elapsed * rate) + 1, int(seconds * rate))
            if sent >= due:
                time.sleep(0.0002)
                continue
            for _ in range(min(due - sent, 256)):
                frame, index = divmod(number, 4)
                packet = key_templates[index] if frame == 0 else templates[index]
                # Sequence numbers, timestamps (30 fps) and VP8 picture numbers run on
                # without a jump, however long the run.
                pack_header(packet, 2, (number + 1000) & 0xFFFF, (frame * 3000) & 0xFFFFFFFF)
                pack_ids(packet, 14, 0x8000 | (frame & 0x7FFF), frame & 0xFF)
                number += 1
                data = protect(packet) if protect is not None else packet
                while True:
                    try:
                        sendto(data, dest)
                        break
                    except BlockingIOError:  # our socket's buffer is full: wait a little
                        time.sleep(0.0001)
                sent += 1
        print(f"SENT {sent} {time.perf_counter() - start:.6f}", flush=True)
    sock.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dest", required=True, help="where to send: IP:PORT")
    parser.add_argument("--size", type=int, default=1100, help="RTP packet bytes [1100]")
    parser.add_argument("--cpu", type=int, help="run on this CPU")
    parser.add_argument("--srtp-key", help="SRTP master key and salt, base64 (AES-GCM)")
    return generator_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
