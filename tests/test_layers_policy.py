"""The weak-network policy, network quality grades and bandwidth allocation, with numbers."""

from __future__ import annotations

import pytest

from trio_sfu.engine.layers import (
    LEVEL_PAUSED,
    LEVEL_R0,
    LEVEL_R1,
    LEVEL_R2,
    LayerOption,
    LossPolicy,
    PolicySettings,
    allocate,
    interval_loss,
    layer_options,
    level_for_loss,
    network_quality,
    spatial_cap,
)

SETTINGS = PolicySettings()

# One policy interval (3 s) of Chromium receiving 180p VP8 and Opus through a relay that
# loses 15 % of the packets (the browser test layers-loss), per stream
# (expected, lost, sent, nacked). The relay dropped 20 of the 92 video packets and 22 of
# the 173 Opus ones (151 sent, 22 resent) in the interval. Video: Chromium's last two
# receiver reports span 115 packets, 30 of them lost (26 %: the stretch between reports
# is not the interval); Opus: NACKed, then resent on its own SSRC, so its reports say
# nothing is lost.
CHROMIUM_VIDEO_180P = (115, 30, 92, 20)
CHROMIUM_OPUS = (268, 0, 151, 22)


@pytest.mark.parametrize(
    ("loss", "level"),
    [
        (0.0, LEVEL_R2),
        (0.0499, LEVEL_R2),
        (0.05, LEVEL_R1),  # 5-10 %: r1
        (0.0999, LEVEL_R1),
        (0.10, LEVEL_R0),  # 10-20 %: r0
        (0.20, LEVEL_R0),
        (0.2001, LEVEL_PAUSED),  # above 20 %: video paused
        (1.0, LEVEL_PAUSED),
    ],
)
def test_level_for_loss_follows_the_seed_thresholds(loss: float, level: int) -> None:
    assert level_for_loss(loss, SETTINGS) == level


def test_policy_goes_down_at_once() -> None:
    policy = LossPolicy()
    assert policy.level == LEVEL_R2
    assert policy.update(0.30) == LEVEL_PAUSED  # straight from r2 to paused
    policy = LossPolicy()
    assert policy.update(0.07) == LEVEL_R1
    assert policy.update(0.15) == LEVEL_R0


def test_policy_comes_back_after_two_good_intervals_and_climbs_one_step_per_interval() -> None:
    policy = LossPolicy(level=LEVEL_PAUSED)
    levels = [policy.update(0.0) for _ in range(5)]
    # Paused -> r0 after two intervals below the lower threshold (a probe may be sooner),
    # then r1 and r2 after one each: 3 s at the default interval.
    assert levels == [LEVEL_PAUSED, LEVEL_R0, LEVEL_R1, LEVEL_R2, LEVEL_R2]


def test_policy_up_needs_consecutive_good_intervals() -> None:
    settings = PolicySettings(up_intervals=2)
    policy = LossPolicy(settings, level=LEVEL_R1)
    assert policy.update(0.01) == LEVEL_R1  # one good interval
    assert policy.update(0.06) == LEVEL_R1  # r1's own band: the count starts again
    assert policy.update(0.01) == LEVEL_R1
    assert policy.update(0.01) == LEVEL_R2
    # "Under the lower threshold": at r0, 6 % is good enough to go up to r1 ...
    policy = LossPolicy(settings, level=LEVEL_R0)
    assert [policy.update(0.06) for _ in range(3)] == [LEVEL_R0, LEVEL_R1, LEVEL_R1]
    # ... but never beyond what the loss allows.
    assert [policy.update(0.06) for _ in range(4)] == [LEVEL_R1] * 4
    # Coming back from paused takes two good intervals in a row.
    policy = LossPolicy(level=LEVEL_PAUSED)
    assert [policy.update(x) for x in (0.15, 0.25, 0.15, 0.15)] == [
        LEVEL_PAUSED,
        LEVEL_PAUSED,
        LEVEL_PAUSED,
        LEVEL_R0,
    ]


def test_policy_keeps_its_level_without_a_measurement() -> None:
    policy = LossPolicy(level=LEVEL_PAUSED)
    assert policy.update(0.0) == LEVEL_PAUSED
    assert policy.update(None) == LEVEL_PAUSED  # no data: neither up nor down, count kept
    assert policy.update(0.0) == LEVEL_R0


def test_up_intervals_is_configurable() -> None:
    policy = LossPolicy(PolicySettings(resume_intervals=1), level=LEVEL_PAUSED)
    assert [policy.update(0.0) for _ in range(3)] == [LEVEL_R0, LEVEL_R1, LEVEL_R2]
    policy = LossPolicy(PolicySettings(up_intervals=3), level=LEVEL_R1)
    assert [policy.update(0.0) for _ in range(3)] == [LEVEL_R1, LEVEL_R1, LEVEL_R2]


def test_a_level_lost_right_after_the_climb_makes_the_next_climb_wait_longer() -> None:
    """A link hovering at 5 %: one interval reads 4 %, the next 6 %. Each climb to r2 that
    is lost at once doubles the good intervals the next one needs (1, 2, 4, 8): over a
    minute and a half the level changes twice, not 30 times."""
    policy = LossPolicy(level=LEVEL_R1)
    levels = [policy.update(0.04 if i % 2 == 0 else 0.06) for i in range(30)]
    changes = sum(1 for a, b in zip([LEVEL_R1, *levels], levels, strict=False) if a != b)
    assert levels[:4] == [LEVEL_R2, LEVEL_R1, LEVEL_R1, LEVEL_R1]  # r2 at once, then not
    assert changes == 2  # one climb, lost; alternating readings never make two in a row
    assert policy.up_needed == 2
    # Good intervals in a row: the wait doubled with every failed climb, up to 8.
    needed = []
    for _ in range(5):
        count = 0
        while policy.update(0.0) != LEVEL_R2:
            count += 1
        needed.append(count + 1)
        assert policy.update(0.06) == LEVEL_R1  # lost at once again
    assert needed == [2, 4, 8, 8, 8]
    # A climb that holds for settle_intervals brings the wait back to one interval.
    for _ in range(8):
        policy.update(0.0)
    assert policy.level == LEVEL_R2
    for _ in range(PolicySettings().settle_intervals):
        assert policy.update(0.0) == LEVEL_R2
    assert policy.update(0.06) == LEVEL_R1
    assert policy.up_needed == 1
    # Going down after the probation is no failed climb.
    assert policy.update(0.0) == LEVEL_R2
    assert [policy.update(0.0) for _ in range(2)] == [LEVEL_R2, LEVEL_R2]
    assert policy.update(0.06) == LEVEL_R1
    assert policy.up_needed == 1


def test_resume_brings_r0_back_and_the_interval_under_way_cannot_undo_it() -> None:
    policy = LossPolicy(level=LEVEL_PAUSED)
    assert policy.update(0.30) == LEVEL_PAUSED
    assert policy.resume() == LEVEL_R0
    # The interval under way began in the loss (before the probe): it does not count down.
    assert policy.update(0.25) == LEVEL_R0
    # The next one does; r0 lost within the probation makes the next climb slower.
    assert policy.update(0.25) == LEVEL_PAUSED
    assert policy.up_needed == 4
    # resume() does nothing where video is not paused.
    policy = LossPolicy(level=LEVEL_R1)
    assert policy.resume() == LEVEL_R1
    # A clean interval after a resume climbs as usual.
    policy = LossPolicy(level=LEVEL_PAUSED)
    policy.resume()
    assert [policy.update(0.0) for _ in range(3)] == [LEVEL_R1, LEVEL_R2, LEVEL_R2]


def test_policy_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        PolicySettings(interval=0)
    with pytest.raises(ValueError):
        PolicySettings(up_intervals=0)
    with pytest.raises(ValueError):
        PolicySettings(resume_intervals=0)
    with pytest.raises(ValueError):
        PolicySettings(up_intervals=9)
    with pytest.raises(ValueError):
        PolicySettings(settle_intervals=0)
    with pytest.raises(ValueError):
        PolicySettings(r1_loss=0.2, r0_loss=0.1)


def test_spatial_cap_maps_levels_onto_the_streams_there_are() -> None:
    assert [spatial_cap(level, 3) for level in range(4)] == [None, 0, 1, 2]
    assert [spatial_cap(level, 2) for level in range(4)] == [None, 0, 1, 1]
    assert [spatial_cap(level, 1) for level in range(4)] == [None, 0, 0, 0]


@pytest.mark.parametrize(
    ("loss", "rtt_ms", "quality"),
    [
        (0.0, 20.0, "good"),
        (0.019, 99.0, "good"),
        (0.02, 20.0, "fair"),  # loss 2-5 %
        (0.0, 100.0, "fair"),  # RTT 100-200 ms
        (0.05, 20.0, "poor"),  # loss 5-20 %
        (0.0, 200.0, "poor"),  # RTT 200-500 ms
        (0.20, 20.0, "poor"),
        (0.21, 20.0, "bad"),  # loss above 20 %
        (0.0, 500.0, "bad"),  # RTT 500 ms or more
        (0.03, 250.0, "poor"),  # the worse of the two
        (0.25, None, "bad"),
        (0.01, None, "good"),  # unknown RTT: loss alone
    ],
)
def test_network_quality_grades(loss: float, rtt_ms: float | None, quality: str) -> None:
    assert network_quality(loss, rtt_ms) == quality


RATES = [
    [50_000.0, 25_000.0, 25_000.0],  # r0: 100 kbps over three temporal layers
    [150_000.0, 75_000.0, 75_000.0],  # r1: 300 kbps
    [750_000.0, 375_000.0, 375_000.0],  # r2: 1.5 Mbps
]


def test_layer_options_sum_temporal_layers_of_the_lowest_stream_only() -> None:
    options = layer_options(RATES, max_spatial=2, max_temporal=2)
    assert options == [
        LayerOption(0, 0, 50_000.0),  # r0 at a quarter of the frame rate
        LayerOption(0, 1, 75_000.0),
        LayerOption(0, 2, 100_000.0),
        LayerOption(1, 2, 300_000.0),  # higher streams whole
        LayerOption(2, 2, 1_500_000.0),
    ]
    # An inactive stream is skipped: the lowest stream received gets the temporal steps.
    assert layer_options([None, RATES[1], RATES[2]], max_spatial=2, max_temporal=1) == [
        LayerOption(1, 0, 150_000.0),
        LayerOption(1, 1, 225_000.0),
        LayerOption(2, 1, 1_125_000.0),
    ]
    # Without temporal filtering every stream is one option.
    options = layer_options(
        [RATES[0], None, RATES[2]], max_spatial=2, max_temporal=2, temporal_filtering=False
    )
    assert options == [LayerOption(0, 2, 100_000.0), LayerOption(2, 2, 1_500_000.0)]
    assert layer_options(RATES, max_spatial=1, max_temporal=0) == [
        LayerOption(0, 0, 50_000.0),
        LayerOption(1, 0, 150_000.0),
    ]


def test_allocate_pays_audio_first_and_stays_within_the_budget() -> None:
    options = layer_options(RATES, max_spatial=2, max_temporal=2)
    # 400 kbps, 40 kbps of audio: r1 (300 kbps) fits, r2 does not.
    assert options[allocate(400_000, 40_000, [options])[0]] == LayerOption(1, 2, 300_000.0)
    # The same budget with 120 kbps of audio: r0.
    assert options[allocate(400_000, 120_000, [options])[0]] == LayerOption(0, 2, 100_000.0)
    # 90 kbps for video: r0 without its top temporal layer.
    assert options[allocate(130_000, 40_000, [options])[0]] == LayerOption(0, 1, 75_000.0)
    # Unlimited: the top option.
    assert options[allocate(None, 40_000, [options])[0]] == LayerOption(2, 2, 1_500_000.0)


def test_allocate_shares_round_robin_and_keeps_the_lowest_layer() -> None:
    options = layer_options(RATES, max_spatial=2, max_temporal=2)
    # Two consumers and 650 kbps: both reach r1 (2 x 300), nobody r2.
    first, second = allocate(650_000, 0, [options, options])
    assert options[first] == options[second] == LayerOption(1, 2, 300_000.0)
    # Not even the lowest layers fit: everybody keeps its first option anyway.
    assert allocate(10_000, 40_000, [options, options, []]) == [0, 0, -1]


def test_allocate_with_no_options_answers_minus_one() -> None:
    assert allocate(1_000_000, 0, [[]]) == [-1]
    assert allocate(None, 0, [[]]) == [-1]


def test_interval_loss_pools_the_nacks_of_every_stream() -> None:
    # Read from the reports, the interval would be (30 + 0) / (115 + 268) = 7.8 % (r1),
    # or 26 % for the video alone (paused); the NACKs read (20 + 22) / (92 + 151) = 17 %:
    # r0, as 15 % loss should (the NACKs count packets lost again when resent).
    loss = interval_loss([CHROMIUM_VIDEO_180P, CHROMIUM_OPUS])
    assert loss == pytest.approx((20 + 22) / (92 + 151))
    assert level_for_loss(loss, SETTINGS) == LEVEL_R0  # type: ignore[arg-type]


def test_interval_loss_falls_back_to_reports_without_nacks() -> None:
    # A receiver that never NACKs: its reports.
    assert interval_loss([(200, 30, 210, 0)]) == pytest.approx(0.15)
    # One stream NACKed, the other did not (it lost nothing, its report says so).
    assert interval_loss([(90, 9, 100, 10), (150, 0, 150, 0)]) == pytest.approx(10 / 250)
    # NACKs of more sequence numbers than were sent (repeats of older ones) count as all.
    assert interval_loss([(0, 0, 20, 25)]) == 1.0
    # A stream with nothing to say is left out rather than counted as lossless.
    assert interval_loss([(100, 10, 100, 10), (0, 0, 150, 0)]) == pytest.approx(0.10)


def test_interval_loss_needs_enough_packets() -> None:
    assert interval_loss([]) is None
    assert interval_loss([(0, 0, 0, 0)]) is None
    assert interval_loss([(9, 3, 9, 3)]) is None
    assert interval_loss([(9, 3, 9, 3)], min_packets=5) == pytest.approx(1 / 3)
