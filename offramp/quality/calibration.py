"""Exit thresholds with a finite-sample guarantee: Learn then Test along one threshold path.

One full-depth pass over a calibration set gives every head's logits; the early-exit
prediction of every row under any thresholds is then array arithmetic
(`offramp.exits.simulate.simulate`). The candidates form a path, one parameter fixed before
the certifying rows are seen, ordered from the most conservative (never exit: identical to
full depth, risk 0) to the most aggressive. Each is tested at level delta = 1 - confidence,
in that order, and the procedure stops at the first one it cannot certify. Fixed-sequence
testing keeps the family-wise error at delta (Bauer 1991; Angelopoulos, Bates et al., "Learn
then Test", 2021), so with probability at least `confidence` over the draw of the calibration
set, the chosen point (the last certified one) meets the target on the population the set was
drawn from.

Paths (`PATHS`):
- global: one threshold for every head, over the policy's whole score range.
- per-layer: one threshold per head, all moved by one parameter alpha: each head's threshold
  is the loosest at which, on *family rows*, the rows it lets exit disagree with full depth at
  most a fraction alpha of the time. Better heads get looser thresholds. The family rows are a
  seeded share of the calibration set (or the training run's dev rows) kept apart from the
  certifying rows, so the path is fixed before those are seen, as the guarantee requires.
- auto: per-layer or global, whichever reaches more speed at the target on the family rows
  (a choice that never looks at the certifying rows).

Risks, per row of the certifying set:
- agreement: the early-exit prediction differs from the full-depth one. The target
  "agrees on at least Y of rows" is risk <= 1 - Y; a candidate is certified when the
  binomial tail P[Bin(n, 1 - Y) <= disagreements] is <= delta (exact for a 0/1 loss).
  Needs no labels.
- accuracy: full-depth accuracy minus early-exit accuracy = p10 - p01, where p10 is the rate
  of rows full depth gets right and the exit wrong, p01 the reverse. A candidate is certified
  when the exact paired test of "drop >= X" (`offramp.quality.stats.paired_drop_pvalue`)
  rejects at level delta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from offramp.exits import simulate
from offramp.policies import ExitPolicy
from offramp.quality.stats import binomial_upper, paired_drop_pvalue, paired_drop_upper

MODES = ("agreement", "accuracy")
PATHS = ("auto", "per-layer", "global")
FAMILY_FRACTION = 0.3
"""Share of a calibration set that shapes the per-layer path when no dev rows are given; the
rest certify."""


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
    rows: int  # certifying rows
    thresholds: list[float] | None  # one per exit layer; None: no exiting point could be certified
    point: dict  # the curve entry of the chosen point (never-exit when none certified)
    curve: list[dict]  # every candidate, conservative to aggressive, with `certified`
    survival: list[float]  # fraction running after each layer 1..L at the chosen point
    path: str = "global"  # the path tested (global | per-layer)
    family_rows: int = 0  # rows that shaped (or chose) the path; 0 when none were given
    gold: tuple[int, int, int] | None = None  # accuracy mode: (n10, n01, n) at the chosen point

    @property
    def certified(self) -> bool:
        return self.thresholds is not None

    @property
    def threshold(self) -> float | None:
        """The global threshold of the chosen point (None on a per-layer path or when nothing was certified)."""
        return self.point.get("threshold") if self.certified else None

    def record(self) -> dict:
        """What is stored with the model (exit_profile.json) and read by the run audit."""
        p = self.point
        rec = {
            "mode": self.target.mode,
            "target": self.target.value,
            "confidence": self.target.confidence,
            "rows": self.rows,
            "family_rows": self.family_rows,
            "path": self.path,
            "threshold": self.threshold,
            "thresholds": self.thresholds,
            "alpha": p.get("alpha"),
            "risk": p["risk"],
            "p_value": p["p_value"],
            "agreement": p["agreement"],
            "agreement_lower": p["agreement_lower"],
            "accuracy_full_depth": p.get("accuracy_full_depth"),
            "accuracy": p.get("accuracy"),
            "mean_layers": p["mean_layers"],
            "ideal_speedup": p["ideal_speedup"],
            "survival": self.survival,
            "method": f"learn-then-test, fixed sequence along the {self.path} threshold path; "
            + ("binomial tail" if self.target.mode == "agreement" else "exact paired test of the accuracy drop (Tango score, sup over the nuisance)"),
        }
        if self.target.mode == "agreement":
            rec["risk_bound"] = p["risk_bound"]
        elif self.gold is not None:  # the exact test inverted at the chosen point (a few seconds)
            n10, n01, n = self.gold
            rec["risk_bound"] = rec["accuracy_drop_upper"] = paired_drop_upper(n10, n01, n, self.target.delta)
        return rec


def candidate_thresholds(policy: ExitPolicy, num_classes: int, points: int) -> np.ndarray:
    """Global thresholds over the policy's whole score range, conservative first (never exit leads).

    The sequence is fixed before any calibration data is seen, as fixed-sequence testing
    requires (a grid from the data's own quantiles would void the guarantee). It is dense
    near the confident end, where the useful thresholds of a trained model lie."""
    lo, hi = policy.score_range(num_classes)
    u = np.unique(np.concatenate([np.geomspace(1e-5, 1, points - points // 2), np.linspace(0, 1, points // 2)]))
    grid = lo + (hi - lo) * u if policy.lower_is_confident else hi - (hi - lo) * u
    return np.concatenate([[policy.never_exits_threshold()], grid])


@dataclass(frozen=True)
class ThresholdPath:
    """Candidates of one path: (M, K) thresholds, one row per candidate, conservative first
    (row 0 never exits); `params` is each row's global threshold or alpha."""

    name: str  # global | per-layer
    thresholds: np.ndarray  # (M, K)
    params: np.ndarray  # (M,)


def global_path(policy: ExitPolicy, num_classes: int, num_heads: int, points: int) -> ThresholdPath:
    t = candidate_thresholds(policy, num_classes, points)
    return ThresholdPath("global", np.repeat(t[:, None], num_heads, axis=1), t)


def per_layer_path(family: simulate.HeadPass, exit_layers: list[int], policy: ExitPolicy, points: int) -> ThresholdPath:
    """Per-head thresholds moved by one parameter alpha (see the module docstring), from the
    family rows alone. Every head's threshold loosens as alpha grows, so the path runs from
    never-exit to every row leaving at the first head."""
    if policy.state_size:
        raise ValueError(f"policy {policy.name!r} carries state across layers: only the global path fits it")
    scores, preds = simulate.head_scores(policy, family, exit_layers), family.preds
    sign = 1.0 if policy.lower_is_confident else -1.0  # c = sign * score: smaller is more confident
    alphas = np.concatenate([[0.0], np.geomspace(1e-4, 1.0, points - 1)])
    never = policy.never_exits_threshold()
    out = np.full((len(alphas), len(exit_layers)), never)
    for k in range(len(exit_layers) - 1):
        c = sign * scores[:, k]
        cut = loosest_cuts(c, preds[:, k] != preds[:, -1], alphas)
        out[:, k] = np.where(np.isfinite(cut), sign * cut, never)
    out[0] = never
    return ThresholdPath("per-layer", out, alphas)


def loosest_cuts(c: np.ndarray, disagree: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """One head's cut per alpha: (M,) the loosest c-threshold (exit when c < cut; smaller c is
    more confident) at which the units it lets exit disagree with full depth at most a fraction
    alpha of the time; nan where not even the most confident unit qualifies. Units are rows
    (`per_layer_path`) or words (token models); non-finite c never exits."""
    ok = np.isfinite(c)
    order = np.argsort(c[ok], kind="stable")
    cs = c[ok][order]
    if not len(cs):
        return np.full(len(alphas), np.nan)
    running = np.cumsum(disagree[ok][order]) / np.arange(1, len(cs) + 1)  # disagreement of the j most confident units
    # j*(alpha): the most units exiting whose running disagreement is <= alpha (non-decreasing in alpha)
    best = np.maximum.accumulate(np.where(running <= alphas[:, None], np.arange(1, len(cs) + 1), 0), axis=1)[:, -1]
    nxt = np.append(cs, cs[-1] + 1.0)
    # the cut sits between the last unit in and the first one out
    return np.where(best > 0, (nxt[np.maximum(best - 1, 0)] + nxt[best]) / 2, np.nan)


def evaluate(
    logits,  # (N, K, C) every head's logits, or a thresholds.HeadPass
    exit_layers: list[int],
    policy: ExitPolicy,
    threshold,  # one global threshold, or one per exit layer (K,)
    target: Target,
    gold: np.ndarray | None = None,  # (N,) class ids; -1 = unknown class (counts as wrong)
) -> dict:
    """One candidate: its speed, agreement, accuracy and the p-value of its test."""
    t = np.asarray(threshold, dtype=np.float64)
    t = np.repeat(t[None, None], len(exit_layers), axis=1) if t.ndim == 0 else t[None, :]
    return _evaluate(simulate.as_pass(logits), exit_layers, policy, t, target, gold)[0]


def _evaluate(hp: simulate.HeadPass, exit_layers, policy, thresholds: np.ndarray, target, gold) -> list[dict]:
    """Every candidate of (M, K) thresholds at once: (M, N) exit heads and predictions, then counts."""
    scores, preds = simulate.head_scores(policy, hp, exit_layers), hp.preds
    n = len(preds)
    first = simulate.first_exit(scores, policy, thresholds)  # (M, N)
    pred = np.take_along_axis(preds[None], first[..., None], axis=2)[..., 0]
    mean_layers = simulate.computed_layers(simulate.layer_costs(hp, exit_layers), first).mean(axis=1)  # (M,)
    full = preds[:, -1]
    disagree = (pred != full).sum(axis=1)  # (M,)
    cols = {
        "mean_layers": mean_layers,
        "ideal_speedup": exit_layers[-1] / mean_layers,
        "agreement": 1 - disagree / n,
        "agreement_lower": 1 - binomial_upper(disagree, n, target.delta),
    }
    if gold is not None:
        full_right, exit_right = (full == gold)[None, :], pred == gold[None, :]
        n10, n01 = (full_right & ~exit_right).sum(axis=1), (~full_right & exit_right).sum(axis=1)
        cols["accuracy_full_depth"] = np.full(len(pred), full_right.mean())
        cols["accuracy"] = exit_right.mean(axis=1)
        cols["accuracy_drop"] = (n10 - n01) / n
        cols["n10"], cols["n01"] = n10, n01
    if target.mode == "agreement":
        cols["risk"], cols["risk_bound"] = disagree / n, 1 - cols["agreement_lower"]
        # LTT p-value of H0 "risk > max_risk": the binomial tail at the observed count
        cols["p_value"] = stats.binom.cdf(disagree, n, target.max_risk)
    else:
        cols["risk"], cols["risk_bound"] = cols["accuracy_drop"], np.full(len(pred), np.nan)  # bound: record() inverts the test at the chosen point
        cols["p_value"] = paired_drop_pvalue(n10, n01, n, target.value)
    points = [{k: float(v[i]) for k, v in cols.items()} for i in range(len(pred))]
    for i, p in enumerate(points):
        p["thresholds"] = [float(x) for x in thresholds[i]]
    return points


def choose_path(
    policy: ExitPolicy, exit_layers: list[int], target: Target, path: str, family: simulate.HeadPass | None,
    family_gold: np.ndarray | None, num_classes: int, points: int,
) -> ThresholdPath:
    """The path to certify along, from the family rows alone (never the certifying rows)."""
    if path not in PATHS:
        raise ValueError(f"path {path!r}: use one of {PATHS}")
    glob = global_path(policy, num_classes, len(exit_layers), points)
    if path == "global" or (path == "auto" and (policy.state_size or family is None or len(family) == 0)):
        return glob
    if family is None or len(family) == 0:
        raise ValueError("the per-layer path needs family rows (dev rows, or a share of the calibration set)")
    per = per_layer_path(family, exit_layers, policy, points)
    if path == "per-layer":
        return per
    speed = lambda p: speed_at_target(family, family_gold, exit_layers, policy, p, target)  # noqa: E731
    return per if speed(per) > speed(glob) else glob


def speed_at_target(
    family: simulate.HeadPass, family_gold: np.ndarray | None, exit_layers: list[int], policy: ExitPolicy,
    path: ThresholdPath, target: Target,
) -> float:
    """The fastest point of `path` whose observed risk on the family rows meets the target (1.0: none)."""
    ok = [q["ideal_speedup"] for q in _evaluate(family, exit_layers, policy, path.thresholds, target, family_gold)
          if q["risk"] <= target.max_risk]
    return max(ok, default=1.0)


def certified_speed(
    family: simulate.HeadPass, family_gold: np.ndarray | None, exit_layers: list[int], policy: ExitPolicy,
    path: ThresholdPath, target: Target,
) -> float:
    """The speed fixed-sequence testing certifies along `path` on the family rows themselves (1.0:
    none). Unlike the observed risk alone, it charges a path for the spread of its errors, as the
    real certification will: on the benchmark model, max_prob's path looked fastest by observed
    risk (3.61x against margin's 3.60x) and certified 2.92x against margin's 3.30x."""
    curve = _evaluate(family, exit_layers, policy, path.thresholds, target, family_gold)
    return curve[certified_prefix(curve, target.delta) - 1]["ideal_speedup"]


def certified_prefix(curve: list[dict], delta: float) -> int:
    """Fixed-sequence testing along `curve` (conservative first): how many leading candidates are
    certified, at least 1, since never-exit (candidate 0) is full depth itself, risk 0 with
    certainty. Testing stops at the first p-value above delta."""
    n = 1
    while n < len(curve) and curve[n]["p_value"] <= delta:
        n += 1
    return n


def family_split(n: int, fraction: float = FAMILY_FRACTION, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(family rows, certifying rows): a seeded random share `fraction` of n rows, and the rest."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * fraction))
    return np.sort(order[:cut]), np.sort(order[cut:])


def calibrate(
    logits,  # (N, K, C) every head's logits, or a thresholds.HeadPass: the certifying rows
    exit_layers: list[int],
    policy: ExitPolicy,
    target: Target,
    gold: np.ndarray | None = None,
    points: int = 200,
    path: str = "global",
    family=None,  # HeadPass of rows that shape a per-layer path, kept apart from the certifying rows
    family_gold: np.ndarray | None = None,
) -> Calibration:
    """The most aggressive point of the chosen path certified by fixed-sequence testing."""
    if target.mode not in MODES:
        raise ValueError(f"mode {target.mode!r}: use one of {MODES}")
    if target.mode == "accuracy" and gold is None:
        raise ValueError("an accuracy target needs gold labels; use an agreement target for unlabeled data")
    hp = simulate.as_pass(logits)
    n = len(hp)
    if n == 0:
        raise ValueError("empty calibration set")
    family = None if family is None else simulate.as_pass(family)
    chosen_path = choose_path(policy, exit_layers, target, path, family, family_gold, hp.logits.shape[-1], points)
    curve = _evaluate(hp, exit_layers, policy, chosen_path.thresholds, target, gold)
    key = "threshold" if chosen_path.name == "global" else "alpha"
    certified = certified_prefix(curve, target.delta)
    for i, p in enumerate(curve):
        p[key] = float(chosen_path.params[i])
        p["certified"] = i < certified
    chosen = curve[certified - 1] if certified > 1 else None
    point = chosen or curve[0]
    scores, preds = simulate.head_scores(policy, hp, exit_layers), hp.preds
    surv = simulate.survival(scores, preds, exit_layers, policy, np.asarray([point["thresholds"]]), exit_layers[-1])
    counts = (int(point["n10"]), int(point["n01"]), n) if "n10" in point else None
    return Calibration(
        target, n, point["thresholds"] if chosen else None, point, curve, surv, chosen_path.name,
        0 if family is None else len(family), counts,
    )


def certify(
    hp, gold: np.ndarray | None, policy: ExitPolicy, exit_layers: list[int], target: Target, path: str = "auto",
    family_fraction: float = FAMILY_FRACTION, seed: int = 0, points: int = 200, family: tuple | None = None,
) -> Calibration:
    """Learn then Test on one full-depth pass: a seeded share of the rows shapes the per-layer
    path, unless `family` = (HeadPass, gold) gives rows kept apart already (a training run's dev
    rows), and the rest certify. Patience carries state across layers: its path is global, and
    every row certifies."""
    hp = simulate.as_pass(hp)
    if path == "global" or policy.state_size:
        return calibrate(hp, exit_layers, policy, target, gold, points)
    if family is None:
        fam, cert = family_split(len(hp), family_fraction, seed)
        family = (hp[fam], None if gold is None else gold[fam])
        hp, gold = hp[cert], None if gold is None else gold[cert]
    return calibrate(hp, exit_layers, policy, target, gold, points, path=path, family=family[0], family_gold=family[1])


@dataclass(frozen=True)
class PolicyChoice:
    """The policy certified, and what each candidate reached at the target on the family rows."""

    policy: str
    calibration: Calibration
    family_speeds: dict[str, float]  # each candidate's trial certification on the family rows; {}: one candidate


def certify_policies(
    hp, gold: np.ndarray | None, policies: dict[str, ExitPolicy], exit_layers: list[int], target: Target,
    path: str = "auto", family_fraction: float = FAMILY_FRACTION, seed: int = 0, points: int = 200,
    family: tuple | None = None,
) -> PolicyChoice:
    """Learn then Test with the policy chosen too. On the family rows (a seeded share, or
    `family` = (HeadPass, gold)), each candidate's path is certified as a trial
    (`certified_speed`); the fastest candidate (ties: the earlier one) is certified on the
    remaining rows. The choice
    never looks at the certifying rows, so the guarantee is the one `certify` gives. A policy
    that carries state across layers (patience) takes the global path. One candidate: `certify`."""
    if len(policies) == 1:
        (name, policy), = policies.items()
        cal = certify(hp, gold, policy, exit_layers, target, path, family_fraction, seed, points, family)
        return PolicyChoice(name, cal, {})
    hp = simulate.as_pass(hp)
    if family is None:
        fam, cert = family_split(len(hp), family_fraction, seed)
        family = (hp[fam], None if gold is None else gold[fam])
        hp, gold = hp[cert], None if gold is None else gold[cert]
    own_path = {name: "global" if p.state_size else path for name, p in policies.items()}
    speeds = {
        name: certified_speed(family[0], family[1], exit_layers, p, choose_path(
            p, exit_layers, target, own_path[name], family[0], family[1], hp.logits.shape[-1], points), target)
        for name, p in policies.items()
    }
    best = max(speeds, key=speeds.get)
    cal = calibrate(hp, exit_layers, policies[best], target, gold, points, own_path[best], family[0], family[1])
    return PolicyChoice(best, cal, speeds)


def conditions(policy: str, mechanism: str, max_length: int, dtype: str = "float32") -> dict:
    """How the certifying pass ran: a tagging run that differs is not covered by the certificate
    (offramp.quality.certificate compares)."""
    return {"policy": policy, "mechanism": mechanism, "max_length": int(max_length), "dtype": dtype}


def naive_choice(curve: list[dict], target: Target) -> dict:
    """The fastest point whose *observed* risk meets the target: what hand-sweeping does."""
    ok = [p for p in curve if p["risk"] <= target.max_risk]
    return max(ok, key=lambda p: (p["ideal_speedup"], -p["risk"]))
