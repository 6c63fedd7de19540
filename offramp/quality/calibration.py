"""Exit thresholds with a finite-sample guarantee: Learn then Test along one threshold path.

One full-depth pass over a calibration set gives every head's logits; the early-exit
prediction of every row under any global threshold is then array arithmetic
(`offramp.exits.simulate.simulate`). The candidate thresholds are ordered from the most
conservative (never exit: identical to full depth, risk 0) to the most aggressive.
Each is tested at level delta = 1 - confidence, in that order, and the procedure stops
at the first one it cannot certify. Fixed-sequence testing keeps the family-wise error
at delta (Bauer 1991; Angelopoulos, Bates et al., "Learn then Test", 2021), so with
probability at least `confidence` over the draw of the calibration set, the chosen
threshold (the last certified one) meets the target on the population the set was
drawn from.

Risks, per row of the calibration set:
- agreement: the early-exit prediction differs from the full-depth one. The target
  "agrees on at least Y of rows" is risk <= 1 - Y; a candidate is certified when the
  binomial tail P[Bin(n, 1 - Y) <= disagreements] is <= delta (exact for a 0/1 loss).
  Needs no labels.
- accuracy: full-depth accuracy minus early-exit accuracy = p10 - p01, where p10 is
  the rate of rows full depth gets right and the exit gets wrong, p01 the reverse. A
  candidate is certified when the Clopper-Pearson upper bound of p10 minus the lower
  bound of p01, each at delta / 2, is <= X (a union bound; conservative but exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from offramp.exits import simulate
from offramp.policies import ExitPolicy
from offramp.quality.stats import binomial_lower, binomial_upper

MODES = ("agreement", "accuracy")


@dataclass(frozen=True)
class Target:
    mode: str  # agreement | accuracy
    value: float  # agreement: min fraction agreeing (0.97); accuracy: max drop as a fraction (0.01)
    confidence: float  # 1 - delta

    @property
    def delta(self) -> float:
        return 1 - self.confidence

    @property
    def max_risk(self) -> float:
        return 1 - self.value if self.mode == "agreement" else self.value

    def describe(self) -> str:
        if self.mode == "agreement":
            return f"agrees with full depth on >= {self.value:.2%} of rows"
        return f"accuracy at most {100 * self.value:.2f} points below full depth"


@dataclass(frozen=True)
class Calibration:
    """The chosen point, the whole tested curve, and what the guarantee says."""

    target: Target
    rows: int
    threshold: float | None  # None: no exiting threshold could be certified
    point: dict  # the curve entry of the chosen threshold (never-exit when none certified)
    curve: list[dict]  # every candidate, conservative to aggressive, with `certified`
    survival: list[float]  # fraction running after each layer 1..L at the chosen threshold

    @property
    def certified(self) -> bool:
        return self.threshold is not None

    def record(self) -> dict:
        """What is stored with the model (exit_profile.json) and read by the run audit."""
        p = self.point
        return {
            "mode": self.target.mode,
            "target": self.target.value,
            "confidence": self.target.confidence,
            "rows": self.rows,
            "threshold": self.threshold,
            "risk": p["risk"],
            "risk_bound": p["risk_bound"],
            "agreement": p["agreement"],
            "agreement_lower": p["agreement_lower"],
            "accuracy_full_depth": p.get("accuracy_full_depth"),
            "accuracy": p.get("accuracy"),
            "mean_layers": p["mean_layers"],
            "ideal_speedup": p["ideal_speedup"],
            "survival": self.survival,
            "method": "learn-then-test, fixed-sequence over one global threshold; "
            + ("binomial tail" if self.target.mode == "agreement" else "Clopper-Pearson union bound on p10 - p01"),
        }


def candidate_thresholds(policy: ExitPolicy, num_classes: int, points: int) -> np.ndarray:
    """Thresholds over the policy's whole score range, conservative first (never exit leads).

    The sequence is fixed before any calibration data is seen, as fixed-sequence testing
    requires (a grid from the data's own quantiles would void the guarantee). It is dense
    near the confident end, where the useful thresholds of a trained model lie."""
    lo, hi = policy.score_range(num_classes)
    u = np.unique(np.concatenate([np.geomspace(1e-5, 1, points - points // 2), np.linspace(0, 1, points // 2)]))
    grid = lo + (hi - lo) * u if policy.lower_is_confident else hi - (hi - lo) * u
    return np.concatenate([[policy.never_exits_threshold()], grid])


def evaluate(
    logits,  # (N, K, C) every head's logits, or a thresholds.HeadPass
    exit_layers: list[int],
    policy: ExitPolicy,
    threshold: float,
    target: Target,
    gold: np.ndarray | None = None,  # (N,) class ids; -1 = unknown class (counts as wrong)
) -> dict:
    """One candidate: its speed, agreement, accuracy and the bound the target is tested with."""
    return _evaluate(simulate.as_pass(logits), exit_layers, policy, np.array([threshold]), target, gold)[0]


def _evaluate(hp: simulate.HeadPass, exit_layers, policy, thresholds, target, gold) -> list[dict]:
    """Every candidate threshold at once: (M, N) exit heads and predictions, then counts."""
    scores, preds = simulate.head_scores(policy, hp, exit_layers), hp.preds
    n = len(preds)
    first = simulate.first_exit(scores, policy, np.asarray(thresholds))  # (M, N)
    pred = np.take_along_axis(preds[None], first[..., None], axis=2)[..., 0]
    mean_layers = simulate.computed_layers(simulate.layer_costs(hp, exit_layers), first).mean(axis=1)  # (M,)
    full = preds[:, -1]
    disagree = (pred != full).sum(axis=1)  # (M,)
    delta = target.delta
    cols = {
        "threshold": np.asarray(thresholds, dtype=np.float64),
        "mean_layers": mean_layers,
        "ideal_speedup": exit_layers[-1] / mean_layers,
        "agreement": 1 - disagree / n,
        "agreement_lower": 1 - binomial_upper(disagree, n, delta),
    }
    if gold is not None:
        full_right, exit_right = (full == gold)[None, :], pred == gold[None, :]
        n10, n01 = (full_right & ~exit_right).sum(axis=1), (~full_right & exit_right).sum(axis=1)
        cols["accuracy_full_depth"] = np.full(len(pred), full_right.mean())
        cols["accuracy"] = exit_right.mean(axis=1)
        cols["accuracy_drop"] = (n10 - n01) / n
        cols["accuracy_drop_upper"] = binomial_upper(n10, n, delta / 2) - binomial_lower(n01, n, delta / 2)
    if target.mode == "agreement":
        cols["risk"], cols["risk_bound"] = disagree / n, 1 - cols["agreement_lower"]
        # LTT p-value of H0 "risk > max_risk": the binomial tail at the observed count
        cols["p_value"] = stats.binom.cdf(disagree, n, target.max_risk)
    else:
        cols["risk"], cols["risk_bound"] = cols["accuracy_drop"], cols["accuracy_drop_upper"]
    return [{k: float(v[i]) for k, v in cols.items()} for i in range(len(pred))]


def calibrate(
    logits,  # (N, K, C) every head's logits, or a thresholds.HeadPass
    exit_layers: list[int],
    policy: ExitPolicy,
    target: Target,
    gold: np.ndarray | None = None,
    points: int = 200,
) -> Calibration:
    """The most aggressive global threshold certified by fixed-sequence testing."""
    if target.mode not in MODES:
        raise ValueError(f"mode {target.mode!r}: use one of {MODES}")
    if target.mode == "accuracy" and gold is None:
        raise ValueError("an accuracy target needs gold labels; use an agreement target for unlabeled data")
    hp = simulate.as_pass(logits)
    n = len(hp)
    if n == 0:
        raise ValueError("empty calibration set")
    scores, preds = simulate.head_scores(policy, hp, exit_layers), hp.preds
    candidates = candidate_thresholds(policy, hp.logits.shape[-1], points)
    curve = _evaluate(hp, exit_layers, policy, candidates, target, gold)
    chosen, testing = None, True
    for i, p in enumerate(curve):
        never = i == 0  # never-exit is full depth itself: risk 0 with certainty
        testing = testing and (never or p["risk_bound"] <= target.max_risk)
        p["certified"] = testing
        if testing and not never:
            chosen = p
    point = chosen or curve[0]
    num_layers = exit_layers[-1]
    surv = simulate.survival(scores, preds, exit_layers, policy, point["threshold"], num_layers)
    return Calibration(target, n, chosen["threshold"] if chosen else None, point, curve, surv)


def naive_choice(curve: list[dict], target: Target) -> dict:
    """The fastest point whose *observed* risk meets the target: what hand-sweeping does."""
    ok = [p for p in curve if p["risk"] <= target.max_risk]
    return max(ok, key=lambda p: (p["ideal_speedup"], -p["risk"]))
