"""A short pass of every fuzz target (scripts/fuzz runs them for longer), a hypothesis pass
over the signaling requests, and the live target: a real call keeps getting packets while
strangers, a malicious peer and mutated signaling hit the server."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.errors import SfuError
from trio_sfu.signaling.messages import (
    decode_frame_untrusted,
    parse_envelope_untrusted,
    parse_request_untrusted,
)
from trio_sfu.testing.fuzz import fuzz_router
from trio_sfu.testing.fuzz_live import fuzz_live_call
from trio_sfu.testing.fuzz_targets import pure_targets, signaling_seeds
from trio_sfu.testing.fuzzer import FuzzResult, fuzz_target

TARGETS = {target.name: target for target in pure_targets()}


def no_failures(result: FuzzResult) -> str:
    return "\n".join(f"{key}\n{text}" for key, (_, text) in result.failures.items())


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_short_pass_of_every_target(name: str) -> None:
    result = fuzz_target(TARGETS[name], cases=2500, seed=13)
    assert result.cases == 2500
    assert not result.failures, no_failures(result)


def test_the_mutator_finds_a_planted_bug() -> None:
    """The harness reports what a target raises beyond its allowed errors (not a test
    that cannot fail: a parser with an IndexError on one byte value is caught)."""
    target = TARGETS["rtp"]

    def buggy(data: bytes) -> None:
        if len(data) > 13 and data[13] == 0xFF:
            raise IndexError("planted")

    planted = type(target)("planted", target.seeds, buggy)
    result = fuzz_target(planted, cases=5000, seed=1)
    assert [key.split(" at ")[0] for key in result.failures] == ["IndexError"]


async def test_the_router_takes_what_an_authenticated_client_sends() -> None:
    with trio.fail_after(60):
        result = await fuzz_router(cases=1500, seed=7)
    assert result.cases == 1500
    assert not result.failures, no_failures(result)


async def test_a_real_call_keeps_flowing_beside_the_fuzzer() -> None:
    with trio.fail_after(60):
        results = {r.target: r for r in await fuzz_live_call(seconds=4.0, seed=5)}
    for result in results.values():
        assert not result.failures, no_failures(result)
    assert results["live-call"].cases >= 5  # windows in which bob got ann's packet
    assert results["live-rtc-port"].cases > 1000
    assert results["live-srtp-peer"].cases > 1000
    assert results["live-signaling"].cases > 50


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
SEEDS = signaling_seeds()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SEEDS), st.data())
def test_any_value_in_any_field_of_any_request_is_an_sfu_error_or_parses(
    seed: dict[str, Any], data: st.DataObject
) -> None:
    request = json.loads(json.dumps(seed))
    fields = sorted(request["data"])
    field = data.draw(st.sampled_from([*fields, "unknownField"]))
    request["data"][field] = data.draw(json_values)
    try:
        obj = decode_frame_untrusted(json.dumps(request))
        parse_request_untrusted(parse_envelope_untrusted(obj))
    except SfuError:
        pass
