"""Certifying a token model's thresholds: the betting test of a bounded mean keeps its level,
and fixed-sequence Learn then Test over sentences keeps its promise over repeated draws."""

import numpy as np
import pytest

from offramp.quality.stats import betting_pvalue, betting_upper
from offramp.quality.calibration import ThresholdPath
from offramp.quality.word_calibration import WordPass, WordTarget, certify_words, per_layer_word_path

DELTA = 0.1


def sentence_drops(rng, n, flip_exit, flip_full=0.02):
    """Per-sentence word-accuracy drops of sentences of 3-40 words: the exits get a word wrong
    with probability flip_exit, full depth with flip_full (independently)."""
    words = rng.integers(3, 41, n)
    return (rng.binomial(words, flip_exit) - rng.binomial(words, flip_full)) / words


@pytest.mark.parametrize("spread", ["words", "two_point", "uniform"])
def test_the_betting_test_rejects_a_true_null_at_most_delta_of_the_time(spread):
    """At the null's boundary (the mean is exactly m), over 2,000 draws of 400 sentences. The
    Monte Carlo tolerance is 3 binomial standard deviations of a rate of DELTA (0.02)."""
    rng = np.random.default_rng(1)
    rejected, trials, m = 0, 2000, 0.01
    for _ in range(trials):
        if spread == "words":
            x = sentence_drops(rng, 400, 0.03)  # mean 0.03 - 0.02 = 0.01
        elif spread == "two_point":
            x = np.where(rng.random(400) < 0.01, 1.0, 0.0)  # rare total losses
        else:
            x = rng.uniform(-0.98, 1.0, 400)  # mean 0.01
        rejected += betting_pvalue(x, m, -1.0, 1.0, DELTA) <= DELTA
    assert rejected / trials <= DELTA + 3 * np.sqrt(DELTA * (1 - DELTA) / trials)


def test_the_betting_test_has_power_and_its_bound_covers_the_mean():
    rng = np.random.default_rng(2)
    x = sentence_drops(rng, 2000, 0.02)  # true drop 0
    assert betting_pvalue(x, 0.01, -1.0, 1.0, DELTA) <= 0.01  # a drop of 1 point is ruled out
    assert betting_pvalue(x, -0.01, -1.0, 1.0, DELTA) > 0.5  # a gain of 1 point is not
    covered = sum(betting_upper(sentence_drops(rng, 300, 0.03), -1.0, 1.0, DELTA) >= 0.01 for _ in range(300))
    assert covered / 300 >= 1 - DELTA - 3 * np.sqrt(DELTA * (1 - DELTA) / 300)


def synthetic_passes(rng, sentences: int, flips: list[float]):
    """Full depth tags every word right (tag 0); candidate k gets each word wrong with
    probability flips[k]: its true per-sentence word-accuracy drop is flips[k]."""
    lengths = rng.integers(3, 30, sentences)
    full = WordPass([np.zeros(n, dtype=np.int64) for n in lengths], lengths * 6, lengths, np.full(sentences, 6))
    gold = [np.zeros(n, dtype=np.int64) for n in lengths]
    gold[0] = np.full(lengths[0], -1)  # a sentence without gold tags: left out of the test

    def run(thresholds):
        k = int(thresholds[0])  # candidate k of `candidates(n)`
        labels = [(rng.random(n) < flips[k]).astype(np.int64) for n in lengths]
        layers = lengths * (6 - k)  # more aggressive: fewer token-layers
        return WordPass(labels, layers, lengths, np.full(sentences, 6 - k))

    return full, gold, run


def candidates(n: int, name: str = "global") -> ThresholdPath:
    """Never-exit, then candidates 0..n-1 (the same value at every one of 6 heads)."""
    t = np.concatenate([[-1.0], np.arange(n, dtype=float)])
    return ThresholdPath(name, np.repeat(t[:, None], 6, axis=1), t)


def test_the_certified_threshold_keeps_its_promise_over_repeated_draws():
    """Fixed-sequence testing: the chosen candidate's true drop exceeds the target in at most
    delta of the draws (tolerance as above, over 300 draws)."""
    flips, target = [0.005, 0.02, 0.035, 0.045, 0.055, 0.08], WordTarget("accuracy", 0.05, 1 - DELTA)
    rng, violations, chosen = np.random.default_rng(3), 0, []
    for _ in range(300):
        full, gold, run = synthetic_passes(rng, 600, flips)
        result = certify_words(candidates(len(flips)), run, full, gold, target, num_layers=6)
        k = -1 if result.threshold is None else int(result.threshold)
        chosen.append(k)
        violations += k >= 0 and flips[k] > target.value
    assert violations / 300 <= DELTA + 3 * np.sqrt(DELTA * (1 - DELTA) / 300)
    assert np.median(chosen) >= 1  # and it is not vacuous: it certifies exiting candidates


def test_certification_stops_at_the_first_failure_and_records_what_it_certified():
    rng = np.random.default_rng(4)
    flips = [0.0, 0.0, 0.5, 0.0]  # the third fails; the fourth is never tried, though it would pass
    full, gold, run = synthetic_passes(rng, 400, flips)
    tried = []
    result = certify_words(candidates(4), lambda t: tried.append(int(t[0])) or run(t), full, gold,
                           WordTarget("accuracy", 0.02, 0.9), num_layers=6)
    assert tried == [0, 1, 2] and result.threshold == 1.0 and result.certified
    assert [p["certified"] for p in result.curve] == [True, True, True, False]
    assert result.sentences == 399  # the sentence without gold tags is left out
    rec = result.record()
    assert rec["thresholds"] == [1.0] * 6 and rec["threshold"] == 1.0 and rec["path"] == "global"
    assert rec["unit"] == "sentence" and rec["risk_bound"] <= 0.02
    assert rec["agreement_lower"] >= 0.98 - 1e-9 and rec["token_layer_saving"] == pytest.approx(1 / 6)
    assert rec["survival"] == [1.0] * 5 + [0.0]  # every sentence finished after layer 5
    # no gold: an agreement target certifies the same way, without labels
    agree = certify_words(candidates(4), run, full, None, WordTarget("agreement", 0.98, 0.9), num_layers=6)
    assert agree.threshold == 1.0 and agree.sentences == 400
    with pytest.raises(ValueError, match="needs gold tags"):
        certify_words(candidates(4), run, full, None, WordTarget("accuracy", 0.02, 0.9), num_layers=6)


def test_a_per_layer_path_records_its_alpha_and_the_thresholds_of_every_head():
    rng = np.random.default_rng(5)
    full, gold, run = synthetic_passes(rng, 400, [0.0, 0.0, 0.5])
    result = certify_words(candidates(3, "per-layer"), run, full, gold, WordTarget("accuracy", 0.02, 0.9),
                           num_layers=6, family_sentences=120)
    rec = result.record()
    assert rec["path"] == "per-layer" and rec["threshold"] is None and rec["alpha"] == 1.0
    assert rec["thresholds"] == [1.0] * 6 and rec["family_rows"] == 120
    assert "alpha 1" in result.describe_thresholds()


def test_the_per_layer_word_path_loosens_each_head_as_alpha_grows_and_better_heads_get_looser_thresholds():
    """Two sentences, 3 heads: head 0 is wrong on its two least confident words, head 1 on none;
    row 0 never exits, the last head always answers."""
    final = np.array([0, 1, 2, 0, 1])
    tags = [np.stack([np.array([0, 1, 2, 9, 9]), final, final])]
    unc = [np.stack([np.array([0.1, 0.2, 0.3, 0.6, 0.7]), np.array([0.1, 0.2, 0.3, 0.6, 0.7]), np.zeros(5)])]
    path = per_layer_word_path(tags, unc, np.array([0.0, 0.0, 0.25, 1.0]))
    assert path.name == "per-layer" and path.thresholds.shape == (4, 3)
    assert path.thresholds[0].tolist() == [-1.0, -1.0, -1.0]  # never exits
    # alpha 0: head 0 halts its 3 right words, the cut between 0.3 and 0.6
    assert path.thresholds[1, 0] == pytest.approx(0.45)
    assert path.thresholds[1, 1] > 0.7  # head 1 is never wrong: it halts every word
    assert path.thresholds[2, 0] == pytest.approx(0.65)  # alpha 0.25: 1 wrong word in 4 is allowed
    assert path.thresholds[3, 0] > 0.7  # alpha 1: every word
    assert (path.thresholds[1:, 2] == 1.0).all()  # the last head always answers
    assert (np.diff(path.thresholds[1:, :2], axis=0) >= 0).all()
