"""Calibration: the bounds, the fixed-sequence choice, and the guarantee checked by simulation."""

import math

import numpy as np
import pytest

from offramp.quality import calibration
from offramp.policies import get_policy
from offramp.quality.stats import (
    binomial_interval, binomial_lower, binomial_upper, paired_drop_pvalue, paired_drop_upper, rows_needed, tango_z,
)

ENTROPY = get_policy("entropy")
LAYERS = [1, 2, 3]


def test_clopper_pearson_bounds_have_their_closed_forms():
    # zero errors in n rows: upper bound 1 - delta^(1/n); all successes: lower bound delta^(1/n)
    assert binomial_upper(0, 100, 0.1) == pytest.approx(1 - 0.1 ** (1 / 100))
    assert binomial_lower(100, 100, 0.1) == pytest.approx(0.1 ** (1 / 100))
    lo, hi = binomial_interval(50, 100, 0.95)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.2, abs=0.01)
    assert rows_needed(0.01, 0.1) == math.ceil(math.log(0.1) / math.log(0.99)) == 230


def population(n: int, seed: int = 0, bias=(1.0, 1.0)):
    """Rows with 3 heads over 3 classes; an internal head is wrong more often the less sure it is.
    `bias` shifts each internal head's odds of being right at a given confidence (higher = worse)."""
    rng = np.random.default_rng(seed)
    final = rng.integers(0, 3, n)
    gold = np.where(rng.random(n) < 0.8, final, (final + 1) % 3)
    logits = np.zeros((n, 3, 3), dtype=np.float32)
    logits[np.arange(n), 2, final] = 6.0
    for k, skill in ((0, 0.0), (1, 1.0)):
        margin = rng.exponential(2.5, n) + skill
        right = rng.random(n) < 1 / (1 + np.exp(-(margin - bias[k])))  # confident heads agree more often
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
    rec = cal.record()
    assert cal.certified and rec["p_value"] <= 0.1
    assert rec["accuracy_drop_upper"] <= 0.01 + 1e-4  # the exact test inverted, to the bisection's 1e-4
    assert cal.point["accuracy_full_depth"] - cal.point["accuracy"] == pytest.approx(cal.point["accuracy_drop"])
    with pytest.raises(ValueError, match="gold labels"):
        calibration.calibrate(logits, LAYERS, ENTROPY, target, None)


def test_too_few_rows_certify_nothing():
    logits, gold = population(50, seed=2)
    cal = calibration.calibrate(logits, LAYERS, ENTROPY, calibration.Target("agreement", 0.99, 0.9), gold)
    assert not cal.certified and cal.threshold is None
    assert cal.point["mean_layers"] == 3.0  # falls back to full depth


@pytest.mark.parametrize("path", ["global", "per-layer"])
@pytest.mark.parametrize("mode,value", [("agreement", 0.95), ("accuracy", 0.02)])
def test_guarantee_holds_over_repeated_calibration_draws(mode, value, path):
    """Draw many calibration sets from one population: the population risk of the chosen
    point exceeds the target in at most about delta of them. Choosing by observed risk
    alone (hand-sweeping) exceeds it far more often. On the per-layer path a share of each
    draw shapes the path and the rest certifies."""
    pop_logits, pop_gold = population(60000, seed=3)
    target = calibration.Target(mode, value, 0.9)
    rng = np.random.default_rng(4)
    reps, n = 150, 600
    violations = naive_violations = 0
    for _ in range(reps):
        idx = rng.integers(0, len(pop_gold), n)
        fam, cert = calibration.family_split(n, seed=int(rng.integers(1 << 30)))
        fam, cert = (idx[fam], idx[cert]) if path != "global" else (None, idx)
        cal = calibration.calibrate(
            pop_logits[cert], LAYERS, ENTROPY, target, pop_gold[cert], points=80, path=path,
            family=None if fam is None else pop_logits[fam], family_gold=None if fam is None else pop_gold[fam],
        )
        for point, counter in ((cal.point, "ltt"), (calibration.naive_choice(cal.curve, target), "naive")):
            if true_risk(pop_logits, pop_gold, point["thresholds"], target) > target.max_risk:
                if counter == "ltt":
                    violations += 1
                else:
                    naive_violations += 1
    slack = 3 * math.sqrt(0.1 * 0.9 / reps)
    assert violations / reps <= 0.1 + slack
    assert naive_violations / reps > 0.1 + slack  # without the bound the same promise would be broken


def test_per_layer_path_runs_from_never_exit_to_every_row_leaving_first():
    logits, gold = population(3000, seed=5)
    path = calibration.per_layer_path(calibration.simulate.as_pass(logits), LAYERS, ENTROPY, 60)
    t = path.thresholds
    assert t.shape == (60, 3) and np.all(t[0] == -np.inf)
    assert np.all(np.diff(t[:, :-1], axis=0) >= 0)  # every internal head only loosens along the path
    first = calibration.simulate.first_exit(calibration.simulate.head_scores(ENTROPY, logits), ENTROPY, t[-1:])
    assert np.all(first == 0)  # alpha = 1: every row leaves at the first head
    with pytest.raises(ValueError, match="global path"):
        calibration.per_layer_path(calibration.simulate.as_pass(logits), LAYERS, get_policy("patience"), 10)


def test_auto_path_is_chosen_on_family_rows_and_beats_global_when_heads_differ():
    """Head 2 is right more often than head 1 at the same confidence: one global threshold is
    too strict for it or too loose for head 1, and the per-layer path gives it a looser one."""
    logits, gold = population(8000, seed=6, bias=(2.5, -0.5))
    fam, cert = calibration.family_split(len(gold), seed=1)
    target = calibration.Target("agreement", 0.95, 0.9)
    glob = calibration.calibrate(logits[cert], LAYERS, ENTROPY, target, gold[cert])
    auto = calibration.calibrate(logits[cert], LAYERS, ENTROPY, target, gold[cert], path="auto",
                                 family=logits[fam], family_gold=gold[fam])
    assert auto.path == "per-layer" and auto.family_rows == len(fam) and auto.certified
    assert auto.point["ideal_speedup"] > glob.point["ideal_speedup"]
    assert auto.record()["thresholds"] == auto.thresholds and len(auto.thresholds) == 3
    assert auto.thresholds[1] > auto.thresholds[0]  # entropy: the better head lets more rows go


def test_paired_drop_test_is_exact_at_the_null_boundary():
    """Samples drawn exactly at drop = margin: the test rejects in at most delta of them (its
    size), at small and large discordance, where a test of the raw count difference would not
    hold its size at one fixed critical value."""
    rng = np.random.default_rng(0)
    for n, p10, p01, margin in ((600, 0.05, 0.03, 0.02), (2000, 0.011, 0.001, 0.01), (600, 0.30, 0.28, 0.02)):
        counts = rng.multinomial(n, [p10, p01, 1 - p10 - p01], size=4000)
        p = paired_drop_pvalue(counts[:, 0], counts[:, 1], n, margin)
        slack = 3 * math.sqrt(0.1 * 0.9 / 4000)  # Monte Carlo error of a rejection rate near 0.1
        assert (p <= 0.1).mean() <= 0.1 + slack
        assert (p <= 0.1).mean() > 0.05  # and not far below its level (a bound this loose would be useless)
    # the statistic rises with n10 and falls with n01: the boundary is the least favourable null
    a, b = np.arange(301)[:, None], np.arange(301)[None, :]
    z, ok = tango_z(a, b, 300, 0.02), (a + b) <= 300
    assert np.all(np.diff(z, axis=0)[ok[1:] & ok[:-1]] > 0) and np.all(np.diff(z, axis=1)[ok[:, 1:] & ok[:, :-1]] < 0)


def test_paired_drop_bound_is_tighter_than_the_union_bound_it_replaced():
    n10, n01, n = 30, 20, 2000  # drop 0.5 point
    union = binomial_upper(n10, n, 0.05) - binomial_lower(n01, n, 0.05)
    exact = paired_drop_upper(n10, n01, n, 0.1)
    assert 0.005 < exact < 0.01 < union  # certifies a 1-point target the union bound could not
    assert paired_drop_pvalue(n10, n01, n, exact) <= 0.1 < paired_drop_pvalue(n10, n01, n, exact - 2e-4)


def margin_population(n: int, seed: int = 0, classes: int = 10):
    """2 heads over `classes` classes. The first head is right more often the further its top
    class leads the runner-up; the other classes get a random level of their own, which moves its
    entropy and says nothing about being right. The margin ranks its rows, entropy blurs them."""
    rng = np.random.default_rng(seed)
    final = rng.integers(0, classes, n)
    gold = np.where(rng.random(n) < 0.8, final, (final + 1) % classes)
    logits = np.zeros((n, 2, classes), dtype=np.float32)
    logits[np.arange(n), 1, final] = 8.0
    lead = rng.exponential(1.5, n)
    right = rng.random(n) < 1 / (1 + np.exp(-(3 * lead - 2)))
    pred = np.where(right, final, (final + rng.integers(1, classes, n)) % classes)
    runner = (pred + rng.integers(1, classes, n)) % classes
    logits[:, 0] = rng.uniform(-6, 3, n)[:, None] + rng.normal(0, 0.3, (n, classes))  # the rest: a random level
    logits[np.arange(n), 0, runner] = 4.0
    logits[np.arange(n), 0, pred] = 4.0 + lead
    return logits, gold


POLICIES = {"entropy": ENTROPY, "margin": get_policy("margin"), "patience": get_policy("patience")}


def test_the_policy_is_chosen_on_family_rows_and_the_faster_one_is_certified():
    """Entropy (stored, first) against margin and patience: the family rows pick margin, which
    then certifies more speed than entropy on the same certifying rows."""
    logits, gold = margin_population(6000, seed=7)
    target = calibration.Target("accuracy", 0.02, 0.9)
    choice = calibration.certify_policies(logits, gold, POLICIES, [1, 2], target, seed=3)
    assert choice.policy == "margin" and set(choice.family_speeds) == set(POLICIES)
    assert choice.family_speeds["margin"] > choice.family_speeds["entropy"]
    fam, cert = calibration.family_split(len(gold), seed=3)
    assert choice.calibration.rows == len(cert) and choice.calibration.family_rows == len(fam)
    alone = calibration.certify(logits, gold, ENTROPY, [1, 2], target, seed=3)
    assert choice.calibration.point["ideal_speedup"] > alone.point["ideal_speedup"] > 1
    # one candidate is certify itself; a tie goes to the earlier candidate (the stored policy)
    one = calibration.certify_policies(logits, gold, {"entropy": ENTROPY}, [1, 2], target, seed=3)
    assert one.policy == "entropy" and one.family_speeds == {} and one.calibration.thresholds == alone.thresholds
    same = calibration.certify_policies(logits, gold, {"a": ENTROPY, "b": ENTROPY}, [1, 2], target, seed=3)
    assert same.policy == "a"


def test_choosing_the_policy_keeps_the_guarantee():
    """Draw many calibration sets; each picks its policy on its family rows and certifies on the
    rest. The population drop of what it certifies exceeds the target in at most about delta of them."""
    pop_logits, pop_gold = margin_population(60000, seed=8)
    target = calibration.Target("accuracy", 0.02, 0.9)
    rng = np.random.default_rng(9)
    reps, n, violations = 120, 800, 0
    for _ in range(reps):
        idx = rng.integers(0, len(pop_gold), n)
        choice = calibration.certify_policies(pop_logits[idx], pop_gold[idx], POLICIES, [1, 2], target,
                                              seed=int(rng.integers(1 << 30)), points=80)
        risk = calibration.evaluate(pop_logits, [1, 2], POLICIES[choice.policy], choice.calibration.point["thresholds"],
                                    target, pop_gold)["risk"]
        violations += risk > target.max_risk
    assert violations / reps <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / reps)
