"""Learn then Test for token models: a word-level risk, certified over sentences.

A token model's exits cannot be simulated from one full-depth pass as a classifier's can: a
word that halts still feeds its neighbours' attention in later layers, so every candidate
threshold is a real pass (`offramp.exits.token_pass.tag_pass`). The candidates are the
training sweep's fixed grid of thresholds, tested from the most conservative upwards at level
delta each, stopping at the first that fails (fixed-sequence testing, as for classifiers).

The unit is the sentence, the thing drawn independently; words of one sentence are not. Per
certifying sentence s with n_s words:
- agreement: d_s = the share of its words whose tag differs from full depth; the target
  "word agreement >= Y" is E[d_s] <= 1 - Y. Needs no labels.
- accuracy: r_s = (words full depth tags right - words the exits tag right) / n_s, the
  sentence's word-accuracy drop; the target is E[r_s] <= X.
Both are means over sentences (each sentence weighs the same, however long), bounded a
priori ([0, 1] and [-1, 1]), tested by betting (`offramp.quality.stats.betting_pvalue`).
The word-weighted figures (micro: every word weighs the same) are reported beside them; they
are not what is certified, because a test on them would have to allow one sentence of
max_length words to move the mean, and would need several times more sentences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offramp.quality.calibration import MODES, Target
from offramp.quality.stats import betting_pvalue, betting_upper
from offramp.quality.token_scores import pass_cost


@dataclass(frozen=True)
class WordPass:
    """What one pass over the certifying sentences gave: per sentence its words' tag ids,
    its token-layers computed and its tokens, and the layer after which it finished."""

    labels: list[np.ndarray]
    token_layers: np.ndarray  # (N,)
    tokens: np.ndarray  # (N,)
    finished: np.ndarray  # (N,) the deepest layer any of its words ran to

    @classmethod
    def of(cls, tag_pass) -> "WordPass":
        """From an `offramp.exits.token_pass.TagPass`."""
        done = np.array([int(l.max()) if len(l) and l.max() > 0 else 1 for l in tag_pass.exit_layers])
        return cls(tag_pass.labels, np.asarray(tag_pass.token_layers), np.asarray(tag_pass.tokens), done)


def sentence_losses(run: WordPass, full: WordPass, gold: list[np.ndarray] | None, mode: str) -> np.ndarray:
    """Per-sentence loss over the words that count: every word with a full-depth tag
    (agreement), every word with a gold tag (accuracy); 0 for a sentence without such words."""
    losses = np.zeros(len(full.labels))
    for s, (pred, ref) in enumerate(zip(run.labels, full.labels)):
        if mode == "agreement":
            on = ref >= 0
            n = int(on.sum())
            losses[s] = float((pred[on] != ref[on]).sum()) / n if n else 0.0
        else:
            g = gold[s]
            on = g >= 0
            n = int(on.sum())
            losses[s] = float((ref[on] == g[on]).sum() - (pred[on] == g[on]).sum()) / n if n else 0.0
    return losses


@dataclass(frozen=True)
class WordTarget(Target):
    """A classifier's target (`offramp.quality.calibration.Target`), over sentences: the per-sentence
    risk's a priori bounds and how it reads."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: use one of {MODES}")

    @property
    def bounds(self) -> tuple[float, float]:
        return (0.0, 1.0) if self.mode == "agreement" else (-1.0, 1.0)

    def describe(self) -> str:
        if self.mode == "agreement":
            return f"tags agree with full depth on >= {self.value:.2%} of a sentence's words, on average over sentences"
        return f"word accuracy at most {100 * self.value:.2f} points below full depth, on average over sentences"


def point(threshold, run: WordPass, full: WordPass, gold, target: WordTarget, counted: np.ndarray, num_layers: int) -> dict:
    """One candidate: its speed, its word-level figures (micro and per sentence), its p-value."""
    x = sentence_losses(run, full, gold, target.mode)[counted]
    out = {
        "threshold": threshold,
        "risk": float(x.mean()) if len(x) else 0.0,
        "p_value": betting_pvalue(x, target.max_risk, *target.bounds, target.delta),
        **pass_cost(run, num_layers),
    }
    agree = sentence_losses(run, full, None, "agreement")
    on = [ref >= 0 for ref in full.labels]
    same = sum(int((p[o] == r[o]).sum()) for p, r, o in zip(run.labels, full.labels, on))
    out["agreement"] = same / max(sum(int(o.sum()) for o in on), 1)  # micro: every word weighs the same
    out["agreement_per_sentence"] = 1 - float(agree[counted].mean()) if counted.any() else 1.0
    if gold is not None:
        total = sum(int((g >= 0).sum()) for g in gold)
        right = lambda labels: sum(int(((p == g) & (g >= 0)).sum()) for p, g in zip(labels, gold))  # noqa: E731
        out["accuracy_full_depth"] = right(full.labels) / max(total, 1)
        out["accuracy"] = right(run.labels) / max(total, 1)
        out["accuracy_drop"] = out["accuracy_full_depth"] - out["accuracy"]
    return out


@dataclass(frozen=True)
class WordCalibration:
    target: WordTarget
    sentences: int  # certifying sentences (those with words that count)
    threshold: float | None  # the certified threshold; None: none could be certified
    point: dict  # the chosen candidate (the first, never-exit, when none was certified)
    curve: list[dict]  # the candidates tested, conservative first, with `certified`
    survival: list[float]  # share of sentences still running entering each layer, at the chosen point
    risk_bound: float | None = None
    agreement_lower: float | None = None

    @property
    def certified(self) -> bool:
        return self.threshold is not None

    def record(self, num_heads: int) -> dict:
        """The certificate as stored with the model (exit_profile.json `calibration`)."""
        p = self.point
        return {
            "mode": self.target.mode, "target": self.target.value, "confidence": self.target.confidence,
            "unit": "sentence", "rows": self.sentences, "family_rows": 0, "path": "global",
            "threshold": self.threshold, "thresholds": [self.threshold] * num_heads, "alpha": None,
            "risk": p["risk"], "risk_bound": self.risk_bound, "p_value": p["p_value"],
            "agreement": p["agreement"], "agreement_per_sentence": p["agreement_per_sentence"],
            "agreement_lower": self.agreement_lower,
            "accuracy_full_depth": p.get("accuracy_full_depth"), "accuracy": p.get("accuracy"),
            "mean_layers": p["mean_layers"], "ideal_speedup": p["ideal_speedup"],
            "token_layer_saving": p["token_layer_saving"], "survival": self.survival,
            "method": "learn-then-test, fixed sequence along the training sweep's thresholds; per-sentence word "
                      "risk tested by betting (Waudby-Smith & Ramdas), sentences as the unit",
        }


def certify_words(candidates, run_pass, full: WordPass, gold, target: WordTarget, num_layers: int,
                  seed: int = 0) -> WordCalibration:
    """Fixed-sequence Learn then Test over `candidates` (thresholds, conservative first), each
    run with `run_pass(threshold) -> WordPass` over the certifying sentences, stopping at the
    first that fails. The sentences are bet on in a seeded order fixed before any outcome is
    seen; sentences without a word that counts are left out (decided from the data alone)."""
    if target.mode == "accuracy" and gold is None:
        raise ValueError("an accuracy target needs gold tags; use an agreement target for untagged sentences")
    words = [(g >= 0) if target.mode == "accuracy" else (ref >= 0) for g, ref in
             zip(gold if gold is not None else full.labels, full.labels)]
    counted = np.array([bool(w.any()) for w in words])
    order = np.random.default_rng(seed).permutation(len(full.labels))
    full, gold = _reorder(full, order), None if gold is None else [gold[i] for i in order]
    counted = counted[order]
    never = point(None, full, full, gold, target, counted, num_layers)
    never["certified"] = True
    curve, chosen, chosen_pass = [never], None, full
    for t in candidates:
        run = _reorder(run_pass(t), order)
        p = point(float(t), run, full, gold, target, counted, num_layers)
        p["certified"] = p["p_value"] <= target.delta
        curve.append(p)
        if not p["certified"]:
            break
        chosen, chosen_pass = p, run
    at = chosen or never
    survival = [float((chosen_pass.finished >= layer).mean()) for layer in range(1, num_layers + 1)]
    bound = lower = None
    if chosen is not None:
        losses = sentence_losses(chosen_pass, full, gold, target.mode)
        bound = betting_upper(losses[counted], *target.bounds, target.delta)
        agree = sentence_losses(chosen_pass, full, None, "agreement")
        lower = 1 - betting_upper(agree[counted], 0.0, 1.0, target.delta)
    return WordCalibration(target, int(counted.sum()), None if chosen is None else chosen["threshold"], at, curve,
                           survival, bound, lower)


def _reorder(p: WordPass, order: np.ndarray) -> WordPass:
    return WordPass([p.labels[i] for i in order], p.token_layers[order], p.tokens[order], p.finished[order])
