"""The dominant speaker detector: levels in, changes out, with hysteresis."""

from __future__ import annotations

from trio_sfu.engine.speaker import SILENCE_DBOV, ActiveSpeakerDetector

TICK = 0.3


def run(
    detector: ActiveSpeakerDetector, start: float, seconds: float, levels: dict[str, int | None]
) -> tuple[float, list[tuple[float, str, float]]]:
    """Feed 50 packets a second per speaker (``None``: sends nothing) and tick every 0.3 s;
    returns the end time and the changes (time, key, volume)."""
    changes = []
    now = start
    while now < start + seconds - 1e-9:
        for key, level in levels.items():
            if level is not None:
                for _ in range(int(50 * TICK)):
                    detector.add_level(key, level)
        now += TICK
        change = detector.tick(now)
        if change is not None:
            changes.append((round(now, 1), change[0], change[1]))
    return now, changes


def make() -> ActiveSpeakerDetector:
    detector = ActiveSpeakerDetector(threshold=-60, margin=6, hold=1.0, smoothing=0.5)
    for key in ("ann", "bob", "cat"):
        detector.add(key)
    return detector


def test_the_first_speaker_becomes_dominant_at_once() -> None:
    detector = make()
    _, changes = run(detector, 0.0, 1.0, {"ann": 127, "bob": 30, "cat": None})
    # Bob at -30 dBov: smoothed -78.5 after one tick (below -60), -54.3 after two.
    assert changes == [(0.6, "bob", -54.2)]
    assert detector.dominant == "bob"


def test_a_louder_speaker_takes_over_only_after_the_hold_time() -> None:
    detector = make()
    now, _ = run(detector, 0.0, 2.0, {"bob": 40})
    assert detector.dominant == "bob"
    # Ann is 10 dB louder: she takes over once she was louder by 6 dB for a second.
    now, changes = run(detector, now, 3.0, {"bob": 40, "ann": 30})
    assert [key for _, key, _ in changes] == ["ann"]
    # She starts at 2.1 s; her smoothed volume passes Bob's -40 dBov + 6 dB at the fifth
    # tick (3.6 s: -33.0 dBov), and she takes over a hold time (1 s) of ticks later.
    assert changes[0][0] == 4.8
    # A short burst from Cat (0.6 s) is not enough.
    now, changes = run(detector, now, 0.6, {"bob": 40, "ann": 30, "cat": 10})
    now, more = run(detector, now, 3.0, {"bob": 40, "ann": 30, "cat": None})
    assert changes == more == []
    assert detector.dominant == "ann"


def test_someone_barely_louder_does_not_take_over() -> None:
    detector = make()
    now, _ = run(detector, 0.0, 2.0, {"bob": 40})
    now, changes = run(detector, now, 5.0, {"bob": 40, "ann": 36})  # 4 dB: under the margin
    assert changes == [] and detector.dominant == "bob"


def test_a_silent_dominant_speaker_is_replaced_by_anyone_speaking() -> None:
    detector = make()
    now, _ = run(detector, 0.0, 2.0, {"bob": 40})
    # Bob stops (DTX: no packets); Cat speaks quieter than Bob did and still takes over.
    now, changes = run(detector, now, 3.0, {"bob": None, "cat": 50})
    assert [key for _, key, _ in changes] == ["cat"]
    assert detector.volume("bob") < -100


def test_removed_speaker_is_forgotten() -> None:
    detector = make()
    run(detector, 0.0, 2.0, {"bob": 40})
    detector.remove("bob")
    assert detector.dominant is None
    assert detector.volume("bob") == SILENCE_DBOV
    _, changes = run(detector, 2.0, 1.0, {"ann": 20})
    assert [key for _, key, _ in changes] == ["ann"]
