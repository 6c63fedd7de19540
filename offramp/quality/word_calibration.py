"""Learn then Test for token models: a word-level risk, certified over sentences.

A token model's exits cannot be simulated from one full-depth pass as a classifier's can: a
word that halts still feeds its neighbours' attention in later layers, so every candidate
is a real pass (`offramp.exits.token_pass.tag_pass`). The candidates are one path of threshold
vectors (`offramp.quality.calibration.ThresholdPath`), fixed before any certifying sentence is
seen and tested from the most conservative upwards at level delta each, stopping at the first
that fails (fixed-sequence testing, as for classifiers):
- global: the training sweep's grid, one threshold for every head;
- per-layer: one threshold per head moved by one parameter alpha (`per_layer_word_path`), shaped
  on other sentences (a training run's dev slice, or a seeded share of the calibration set):
  head k halts the words it is confident on up to the point where a fraction alpha of the
  words it halts would disagree with full depth. Better heads get looser thresholds.

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

from offramp.quality.calibration import MODES, Target, ThresholdPath, loosest_cuts
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

    def take(self, idx: np.ndarray) -> "WordPass":
        """The sentences at `idx`, in that order."""
        return WordPass([self.labels[i] for i in idx], self.token_layers[idx], self.tokens[idx], self.finished[idx])

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


def point(thresholds: list[float], run: WordPass, full: WordPass, gold, target: WordTarget, counted: np.ndarray,
          num_layers: int) -> dict:
    """One candidate (one threshold per head): its speed, its word-level figures (micro and per
    sentence), its p-value."""
    x = sentence_losses(run, full, gold, target.mode)[counted]
    out = {
        "thresholds": thresholds,
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
    thresholds: list[float] | None  # one per exit head at the certified point; None: none could be certified
    point: dict  # the chosen candidate (the first, never-exit, when none was certified)
    curve: list[dict]  # the candidates tested, conservative first, with `certified`
    survival: list[float]  # share of sentences still running entering each layer, at the chosen point
    risk_bound: float | None = None
    agreement_lower: float | None = None
    path: str = "global"
    family_sentences: int = 0  # sentences that shaped the per-layer path (0 on the global path)

    @property
    def certified(self) -> bool:
        return self.thresholds is not None

    @property
    def threshold(self) -> float | None:
        """The global threshold of the chosen point (None on a per-layer path or when nothing was certified)."""
        return self.point.get("threshold") if self.certified else None

    def describe_thresholds(self) -> str:
        if self.path == "global":
            return f"threshold {self.threshold:.4g}"
        return (f"per-layer thresholds [{', '.join(f'{t:.3g}' for t in self.thresholds[:-1])}] "
                f"(alpha {self.point['alpha']:.4g})")

    def record(self) -> dict:
        """The certificate as stored with the model (exit_profile.json `calibration`)."""
        p = self.point
        return {
            "mode": self.target.mode, "target": self.target.value, "confidence": self.target.confidence,
            "unit": "sentence", "rows": self.sentences, "family_rows": self.family_sentences, "path": self.path,
            "threshold": self.threshold, "thresholds": self.thresholds, "alpha": p.get("alpha"),
            "risk": p["risk"], "risk_bound": self.risk_bound, "p_value": p["p_value"],
            "agreement": p["agreement"], "agreement_per_sentence": p["agreement_per_sentence"],
            "agreement_lower": self.agreement_lower,
            "accuracy_full_depth": p.get("accuracy_full_depth"), "accuracy": p.get("accuracy"),
            "mean_layers": p["mean_layers"], "ideal_speedup": p["ideal_speedup"],
            "token_layer_saving": p["token_layer_saving"], "survival": self.survival,
            "method": f"learn-then-test, fixed sequence along the {self.path} threshold path; per-sentence word "
                      "risk tested by betting (Waudby-Smith & Ramdas), sentences as the unit",
        }


def per_layer_word_path(tags: list[np.ndarray], unc: list[np.ndarray], alphas: np.ndarray) -> ThresholdPath:
    """Per-head word thresholds along alpha (row 0 never exits), from every head's tags and
    normalized uncertainties on the family sentences (per sentence (K, W) each): head k's
    threshold is the loosest at which the words it would halt disagree with the last head at
    most a fraction alpha of the time. -1 never halts; the last head always answers."""
    T, U = np.concatenate(tags, axis=1), np.concatenate(unc, axis=1)  # (K, words)
    out = np.full((len(alphas), T.shape[0]), -1.0)
    for k in range(T.shape[0] - 1):
        cut = loosest_cuts(U[k], T[k] != T[-1], alphas)
        out[:, k] = np.where(np.isfinite(cut), cut, -1.0)
    out[:, -1] = 1.0
    out[0] = -1.0
    return ThresholdPath("per-layer", out, np.asarray(alphas, dtype=float))


def global_word_path(sweep, num_heads: int) -> ThresholdPath:
    """The training sweep's thresholds, one for every head; row 0 (threshold 0) never exits."""
    t = np.concatenate([[0.0], [x for x in sweep if x > 0]])
    return ThresholdPath("global", np.repeat(t[:, None], num_heads, axis=1), t)


def certify_words(path: ThresholdPath, run_pass, full: WordPass, gold, target: WordTarget, num_layers: int,
                  seed: int = 0, family_sentences: int = 0) -> WordCalibration:
    """Fixed-sequence Learn then Test along `path` (row 0, never-exit, is full depth), each
    candidate run with `run_pass(thresholds: list, one per head) -> WordPass` over the certifying
    sentences, stopping at the first that fails. The sentences are bet on in a seeded order
    fixed before any outcome is seen; sentences without a word that counts are left out
    (decided from the data alone)."""
    if target.mode == "accuracy" and gold is None:
        raise ValueError("an accuracy target needs gold tags; use an agreement target for untagged sentences")
    words = [(g >= 0) if target.mode == "accuracy" else (ref >= 0) for g, ref in
             zip(gold if gold is not None else full.labels, full.labels)]
    counted = np.array([bool(w.any()) for w in words])
    order = np.random.default_rng(seed).permutation(len(full.labels))
    full, gold = full.take(order), None if gold is None else [gold[i] for i in order]
    counted = counted[order]
    key = "threshold" if path.name == "global" else "alpha"
    never = point(path.thresholds[0].tolist(), full, full, gold, target, counted, num_layers)
    never.update({key: float(path.params[0]), "certified": True})
    curve, chosen, chosen_pass = [never], None, full
    for row, param in zip(path.thresholds[1:], path.params[1:]):
        thresholds = [float(t) for t in row]
        run = run_pass(thresholds).take(order)
        p = point(thresholds, run, full, gold, target, counted, num_layers)
        p[key] = float(param)
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
    return WordCalibration(target, int(counted.sum()), None if chosen is None else chosen["thresholds"], at, curve,
                           survival, bound, lower, path.name, family_sentences)
