"""Group-relative advantages: failed runs excluded, equal groups filtered, singletons zero."""

from __future__ import annotations

import math

import pytest
from lightswe.agent.advantages import AdvantageConfig, fill_batch, group_advantages


def test_group_relative_values():
    adv = group_advantages(["a"] * 4, [1.0, 0.0, 0.0, 0.0])
    mean, std = 0.25, math.sqrt(0.1875)
    assert adv.values == pytest.approx([(1 - mean) / (std + 1e-6)] + [(0 - mean) / (std + 1e-6)] * 3)
    assert adv.keep == [True] * 4 and adv.groups_filtered == 0 and adv.stats["success_rate"] == 0.25


def test_failed_runs_are_excluded_not_zero():
    # With the NaN counted as 0 the group would be {1, 0, 0}; excluded it is {1, 0}.
    adv = group_advantages(["g"] * 4, [1.0, 0.0, float("nan"), None], failed=[False, False, False, False])
    assert adv.keep == [True, True, False, False] and adv.runs_failed == 2
    assert adv.values[:2] == pytest.approx([1.0, -1.0], abs=1e-5)
    adv = group_advantages(["g"] * 3, [1.0, 0.0, 0.0], failed=[False, False, True])
    assert adv.keep == [True, True, False] and adv.values[:2] == pytest.approx([1.0, -1.0], abs=1e-5)


def test_equal_and_singleton_groups():
    adv = group_advantages(["a", "a", "b", "c", "c"], [1.0, 1.0, 1.0, 0.0, 1.0])
    assert adv.values[:3] == [0.0, 0.0, 0.0] and adv.keep == [False, False, False, True, True]
    assert adv.groups == 3 and adv.groups_filtered == 2 and adv.filtered_share == pytest.approx(2 / 3)
    kept = group_advantages(["a", "a"], [1.0, 1.0], config=AdvantageConfig(filter_equal=False))
    assert kept.keep == [True, True] and kept.values == [0.0, 0.0]


def test_dynamic_sampling_fills_batch_with_signal_groups():
    draws = iter([[0, 1, 0], [1, 1], [1, 1, 1]])  # 1 = a group with signal
    kept, drawn = fill_batch(lambda n: next(draws), lambda g: g == 1, target=3)
    assert kept == [1, 1, 1] and drawn == 5


def test_dynamic_sampling_decides_on_the_count_over_all_ranks():
    """With ``total`` (an all-reduce over ranks) the stop is decided on every rank's kept groups."""
    alone = iter([[0, 1], [0], [1]])
    assert fill_batch(lambda n: next(alone), lambda g: g == 1, target=2) == ([1, 1], 4)
    beside = iter([[0, 1], [0], [1]])  # another rank also kept one group in the first draw: no second draw
    assert fill_batch(lambda n: next(beside), lambda g: g == 1, target=2, total=lambda n: 2 * n) == ([1], 2)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="equal lengths"):
        group_advantages(["a"], [1.0, 0.0])
