"""The fuzzer: byte and JSON mutations, a target (seeds, the check of one case, the errors it
may raise) and the loop that runs one.

What is fuzzed: :mod:`trio_sfu.testing.fuzz_targets` (no event loop),
:func:`trio_sfu.testing.fuzz.fuzz_router` and :mod:`trio_sfu.testing.fuzz_live`; the
command: :mod:`trio_sfu.testing.fuzz`.
"""

from __future__ import annotations

import copy
import json
import random
import struct
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, final

import attrs

from trio_sfu.errors import BadPacket

__all__ = [
    "MAX_SIZE",
    "FuzzResult",
    "Target",
    "failure_key",
    "fuzz_target",
    "mutate",
    "mutate_json",
    "mutate_json_bytes",
]

# ---- mutation ---------------------------------------------------------------------------

_BYTES: Final = (0x00, 0x01, 0x02, 0x03, 0x10, 0x14, 0x16, 0x17, 0x3F, 0x40, 0x7F, 0x80, 0x81,
                 0xBF, 0xC0, 0xC8, 0xC9, 0xCD, 0xCE, 0xFE, 0xFF)  # fmt: skip
_U16: Final = (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0x3FFF, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
_U32: Final = (0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x2112_A442, 0x0001_0000)
MAX_SIZE: Final = 4096


def mutate(data: bytes, rng: random.Random, corpus: Sequence[bytes] = ()) -> bytes:
    """``data`` after one to eight random mutations (at most :data:`MAX_SIZE` bytes)."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        size = len(buf)
        op = rng.randrange(12)
        pos = rng.randrange(size) if size else 0
        if op == 0 and size:  # flip a bit
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and size:  # an interesting byte
            buf[pos] = rng.choice(_BYTES)
        elif op == 2 and size >= 2:  # an interesting 16-bit value (lengths, counts)
            pos = rng.randrange(size - 1)
            value = rng.choice(_U16)
            if rng.random() < 0.3:
                value = (size - pos + rng.randrange(-8, 9)) & 0xFFFF  # a length near the rest
            buf[pos : pos + 2] = struct.pack("!H", value)
        elif op == 3 and size >= 4:
            pos = rng.randrange(size - 3)
            buf[pos : pos + 4] = struct.pack("!I", rng.choice(_U32))
        elif op == 4:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.choice((1, 2, 4, 16, 64)))
        elif op == 5 and size:  # delete a range
            del buf[pos : pos + rng.choice((1, 2, 4, 16, 64))]
        elif op == 6 and size:  # duplicate a range
            end = min(size, pos + rng.choice((1, 4, 16, 256)))
            at = rng.randrange(size + 1)
            buf[at:at] = buf[pos:end]
        elif op == 7:  # truncate
            del buf[rng.randrange(size + 1) :]
        elif op == 8 and corpus:  # splice with another seed
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:pos] + bytearray(other[cut:])
        elif op == 9:  # append garbage
            buf += rng.randbytes(rng.choice((1, 3, 8, 100)))
        elif op == 10 and size:  # random byte
            buf[pos] = rng.randrange(256)
        elif op == 11 and size >= 2:  # swap two bytes
            other_pos = rng.randrange(size)
            buf[pos], buf[other_pos] = buf[other_pos], buf[pos]
    return bytes(buf[:MAX_SIZE])


_JSON_VALUES: Final[tuple[Any, ...]] = (
    None,
    True,
    False,
    0,
    -1,
    1,
    255,
    256,
    65536,
    2**31,
    -(2**31) - 1,
    2**32,
    2**53 + 1,
    2**63,
    -(2**63) - 1,
    2**64 + 7,
    10**40,
    0.5,
    -0.0,
    1e308,
    -1e-300,
    "",
    "0",
    "x",
    "audio",
    "video",
    "video/VP8",
    "audio/opus",
    "sha-256",
    "client",
    "server",
    "r0",
    "\u0000",
    "\ud800",
    "\U0001f3a5" * 50,
    "\u202e\u0301\ufeff",
    "a" * 70,
    "b" * 5000,
    "ü" * 300,
    [],
    {},
    [None],
    [[[]]],
    {"": None},
    {"a": [1, {"b": "c"}]},
)


def _deep(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value] if depth % 2 else {"k": value}
    return value


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            yield from _paths(value, (*prefix, index))


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        obj = obj[part]
    return obj


def _random_value(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.05:
        return _deep(rng.choice((50, 300)))
    if roll < 0.1:
        return [copy.deepcopy(rng.choice(_JSON_VALUES)) for _ in range(rng.choice((10, 1000)))]
    if roll < 0.15:
        return {
            f"k{i}": copy.deepcopy(rng.choice(_JSON_VALUES)) for i in range(rng.choice((5, 500)))
        }
    return copy.deepcopy(rng.choice(_JSON_VALUES))


def mutate_json(obj: Any, rng: random.Random, corpus: Sequence[Any] = ()) -> Any:
    """A deep copy of ``obj`` after one to four structural mutations."""
    out = copy.deepcopy(obj)
    for _ in range(rng.choice((1, 1, 2, 4))):
        paths = list(_paths(out))
        path = rng.choice(paths)
        if not path:
            if rng.random() < 0.5 and corpus:
                out = copy.deepcopy(rng.choice(corpus))
            elif isinstance(out, dict):
                out[rng.choice(("type", "requestId", "data", "extra"))] = _random_value(rng)
            continue
        parent = _get(out, path[:-1])
        key = path[-1]
        op = rng.randrange(6)
        if op <= 2:  # a value of another type or size
            parent[key] = _random_value(rng)
        elif op == 3:  # remove it
            del parent[key]
        elif op == 4 and isinstance(parent, dict):  # an unknown sibling
            parent[rng.choice(("zz", "", "type", "ssrc", "id", "Ssrc", "__proto__"))] = (
                _random_value(rng)
            )
        elif op == 5:  # the value of another path of the object (types mixed up)
            source = rng.choice(paths)
            if source and source[: len(path)] != path:
                parent[key] = copy.deepcopy(_get(out, source))
    return out


def mutate_json_bytes(data: bytes, rng: random.Random, corpus: Sequence[bytes]) -> bytes:
    """JSON text (``corpus``: more of it) mutated as bytes or as a structure."""
    if rng.random() < 0.25:
        return mutate(data, rng, corpus)  # byte level: broken JSON, odd UTF-8
    try:
        obj = json.loads(data)
    except ValueError:
        return mutate(data, rng, corpus)
    if rng.random() < 0.02:  # nesting deeper than any decoder recursion limit
        depth = rng.choice((2000, 100_000))
        return b'{"type": "rtc:join", "data": ' + b"[" * depth + b"]" * depth + b"}"
    objects = [json.loads(seed) for seed in corpus[:40]]
    try:
        text = json.dumps(mutate_json(obj, rng, objects))
    except (RecursionError, ValueError):  # nested past the encoder's limit
        return mutate(data, rng, corpus)
    return text.encode("utf-8", "surrogatepass")


# ---- running a target ---------------------------------------------------------------------


@final
@attrs.define
class Target:
    """One input class: its seeds, the check of one case, the errors it may raise."""

    name: str
    seeds: list[bytes]
    check: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...] = (BadPacket,)
    mutate: Callable[[bytes, random.Random, Sequence[bytes]], bytes] = mutate


@final
@attrs.define
class FuzzResult:
    target: str
    cases: int = 0
    seconds: float = 0.0
    #: Distinct failures: (exception type and where it was raised) -> (input, traceback).
    failures: dict[str, tuple[bytes, str]] = attrs.Factory(dict)


def failure_key(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else "?"
    return f"{type(exc).__name__} at {where}"


def fuzz_target(
    target: Target, *, seconds: float | None = None, cases: int | None = None, seed: int = 0
) -> FuzzResult:
    """Run ``target`` for ``seconds`` or ``cases`` (whichever comes first); seeds are
    checked first, unmutated."""
    rng = random.Random(seed)
    result = FuzzResult(target.name)
    start = time.monotonic()
    deadline = start + seconds if seconds is not None else float("inf")
    inputs = iter(target.seeds)
    while (cases is None or result.cases < cases) and time.monotonic() < deadline:
        data = next(inputs, None)
        if data is None:
            data = target.mutate(rng.choice(target.seeds), rng, target.seeds)
        result.cases += 1
        try:
            target.check(data)
        except target.allowed:
            pass
        except Exception as exc:
            key = failure_key(exc)
            if key not in result.failures:
                result.failures[key] = (data, traceback.format_exc())
    result.seconds = time.monotonic() - start
    return result
