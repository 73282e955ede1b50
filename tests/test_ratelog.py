"""RateLimitedLog: one line per reason per interval, the rest counted in the next line."""

from __future__ import annotations

import logging

import pytest

from trio_sfu.engine.channel import decode_error, encode_error
from trio_sfu.errors import NotFoundError
from trio_sfu.ratelog import RateLimitedLog


def test_one_line_per_reason_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    log = RateLimitedLog(logging.getLogger("test.ratelog"), 60.0)
    assert log.note("a", 0.0, "first %s", "x")
    assert not log.note("a", 1.0, "second")
    assert not log.note("a", 59.0, "third", count=5)
    assert log.note("b", 2.0, "other reason")
    assert log.note("a", 60.0, "fourth")
    assert [r.getMessage() for r in caplog.records] == [
        "refused (a): first x",
        "refused (b): other reason",
        "refused (a): fourth (6 more refused since the last line of this reason)",
    ]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in caplog.records)


def test_a_refusal_reason_crosses_the_worker_channel() -> None:
    error = decode_error(encode_error(NotFoundError("gone", refusal="foreign_id")))
    assert (error.code, error.message, error.refusal) == ("not_found", "gone", "foreign_id")
    assert decode_error(["not_found", "old worker"]).refusal is None
