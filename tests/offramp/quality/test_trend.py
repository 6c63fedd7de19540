"""The nightly trend's rule: a run below the floor its earlier runs set is a drop, one within it is not."""

import pytest

from offramp.quality.trend import MIN_HISTORY, SERIES, check_trend, early_exit_share, floor

GOOD = [{"audit_agreement": 0.95 + 0.002 * (i % 3), "early_exit_share": 0.6 + 0.01 * (i % 2),
         "docs_per_second": 100.0 + 3 * (i % 4)} for i in range(8)]


def test_a_run_far_below_the_earlier_runs_is_flagged_and_a_usual_one_is_not():
    usual = {"audit_agreement": 0.951, "early_exit_share": 0.605, "docs_per_second": 101.0}
    trend = check_trend(GOOD, usual)
    assert trend["drops"] == [] and trend["runs"] == 8 and set(trend["series"]) == {s.metric for s in SERIES}
    slow = check_trend(GOOD, {**usual, "docs_per_second": 60.0})
    assert slow["drops"] == ["docs_per_second"] and slow["series"]["docs_per_second"]["drop"]
    assert "3 sd of 8 earlier runs" in slow["series"]["docs_per_second"]["rule"]
    worse = check_trend(GOOD, {**usual, "audit_agreement": 0.90})
    assert worse["drops"] == ["audit_agreement"]


def test_few_earlier_runs_use_a_fixed_tolerance_and_identical_ones_do_not_flag_noise():
    few = GOOD[: MIN_HISTORY - 1]
    low, rule = floor([h["docs_per_second"] for h in few], SERIES[2])
    mean = sum(h["docs_per_second"] for h in few) / len(few)
    assert low == pytest.approx(mean * (1 - SERIES[2].tolerance)) and "25% below the mean of 4" in rule
    assert check_trend(few, {"docs_per_second": 0.9 * mean})["drops"] == []  # 10% slower: within 25%
    assert check_trend(few, {"docs_per_second": 0.7 * mean})["drops"] == ["docs_per_second"]
    same = [{"audit_agreement": 1.0}] * 6
    assert check_trend(same, {"audit_agreement": 0.999})["drops"] == []  # float noise, not a drop
    assert check_trend([], {"audit_agreement": 0.5}) == {"runs": 0, "series": {}, "drops": []}


def test_early_exit_share_is_the_share_leaving_before_the_last_layer():
    assert early_exit_share({1: 3, 2: 1, 4: 4}, 4) == 0.5
    assert early_exit_share({}, 4) == 0.0
