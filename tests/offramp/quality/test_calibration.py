"""Calibration: the bounds, the fixed-sequence choice, and the guarantee checked by simulation."""

import math

import numpy as np
import pytest

from offramp.quality import calibration
from offramp.policies import get_policy
from offramp.quality.stats import binomial_interval, binomial_lower, binomial_upper, rows_needed

ENTROPY = get_policy("entropy")
LAYERS = [1, 2, 3]


def test_clopper_pearson_bounds_have_their_closed_forms():
    # zero errors in n rows: upper bound 1 - delta^(1/n); all successes: lower bound delta^(1/n)
    assert binomial_upper(0, 100, 0.1) == pytest.approx(1 - 0.1 ** (1 / 100))
    assert binomial_lower(100, 100, 0.1) == pytest.approx(0.1 ** (1 / 100))
    lo, hi = binomial_interval(50, 100, 0.95)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.2, abs=0.01)
    assert rows_needed(0.01, 0.1) == math.ceil(math.log(0.1) / math.log(0.99)) == 230


def population(n: int, seed: int = 0):
    """Rows with 3 heads over 3 classes; an internal head is wrong more often the less sure it is."""
    rng = np.random.default_rng(seed)
    final = rng.integers(0, 3, n)
    gold = np.where(rng.random(n) < 0.8, final, (final + 1) % 3)
    logits = np.zeros((n, 3, 3), dtype=np.float32)
    logits[np.arange(n), 2, final] = 6.0
    for k, skill in ((0, 0.0), (1, 1.0)):
        margin = rng.exponential(2.5, n) + skill
        right = rng.random(n) < 1 / (1 + np.exp(-(margin - 1.0)))  # confident heads agree more often
        pred = np.where(right, final, (final + rng.integers(1, 3, n)) % 3)
        logits[np.arange(n), k, pred] = margin
    return logits, gold


def true_risk(logits, gold, threshold, target):
    return calibration.evaluate(logits, LAYERS, ENTROPY, threshold, target, gold)["risk"]


def test_candidates_are_fixed_in_advance_and_ordered_conservative_first():
    ent = calibration.candidate_thresholds(ENTROPY, 3, 50)
    assert ent[0] == -np.inf and np.all(np.diff(ent[1:]) > 0) and ent[-1] == pytest.approx(math.log(3))
    mp = calibration.candidate_thresholds(get_policy("max_prob"), 4, 50)
    assert mp[0] == np.inf and np.all(np.diff(mp[1:]) < 0) and mp[-1] == pytest.approx(0.25)


def test_chosen_threshold_is_the_last_certified_one_and_meets_the_target_on_the_calibration_set():
    logits, gold = population(4000)
    target = calibration.Target("agreement", 0.95, 0.9)
    cal = calibration.calibrate(logits, LAYERS, ENTROPY, target, gold)
    assert cal.certified and cal.point["risk_bound"] <= 0.05
    certified = [p["certified"] for p in cal.curve]
    first_fail = certified.index(False)
    assert all(certified[:first_fail]) and not any(certified[first_fail:])  # stops at the first failure
    assert cal.curve[first_fail - 1]["threshold"] == cal.threshold
    assert cal.curve[first_fail]["risk_bound"] > 0.05
    assert cal.point["agreement"] >= 0.95 and cal.point["ideal_speedup"] > 1.2
    assert cal.survival[-1] == 0.0 and all(a >= b for a, b in zip(cal.survival, cal.survival[1:]))
    rec = cal.record()
    assert rec["threshold"] == cal.threshold and rec["mode"] == "agreement" and rec["target"] == 0.95


def test_accuracy_target_bounds_the_drop_and_needs_labels():
    logits, gold = population(4000, seed=1)
    target = calibration.Target("accuracy", 0.01, 0.9)
    cal = calibration.calibrate(logits, LAYERS, ENTROPY, target, gold)
    assert cal.certified and cal.point["accuracy_drop_upper"] <= 0.01
    assert cal.point["accuracy_full_depth"] - cal.point["accuracy"] == pytest.approx(cal.point["accuracy_drop"])
    with pytest.raises(ValueError, match="gold labels"):
        calibration.calibrate(logits, LAYERS, ENTROPY, target, None)


def test_too_few_rows_certify_nothing():
    logits, gold = population(50, seed=2)
    cal = calibration.calibrate(logits, LAYERS, ENTROPY, calibration.Target("agreement", 0.99, 0.9), gold)
    assert not cal.certified and cal.threshold is None
    assert cal.point["mean_layers"] == 3.0  # falls back to full depth


@pytest.mark.parametrize("mode,value", [("agreement", 0.95), ("accuracy", 0.02)])
def test_guarantee_holds_over_repeated_calibration_draws(mode, value):
    """Draw many calibration sets from one population: the population risk of the chosen
    threshold exceeds the target in at most about delta of them. Choosing by observed risk
    alone (hand-sweeping) exceeds it far more often."""
    pop_logits, pop_gold = population(60000, seed=3)
    target = calibration.Target(mode, value, 0.9)
    rng = np.random.default_rng(4)
    reps, n = 150, 600
    violations = naive_violations = 0
    risk_cache = {}
    for _ in range(reps):
        idx = rng.integers(0, len(pop_gold), n)
        cal = calibration.calibrate(pop_logits[idx], LAYERS, ENTROPY, target, pop_gold[idx], points=80)
        for choice, counter in ((cal.point["threshold"], "ltt"), (calibration.naive_choice(cal.curve, target)["threshold"], "naive")):
            if choice not in risk_cache:
                risk_cache[choice] = true_risk(pop_logits, pop_gold, choice, target)
            if risk_cache[choice] > target.max_risk:
                if counter == "ltt":
                    violations += 1
                else:
                    naive_violations += 1
    slack = 3 * math.sqrt(0.1 * 0.9 / reps)
    assert violations / reps <= 0.1 + slack
    assert naive_violations / reps > 0.1 + slack  # without the bound the same promise would be broken
