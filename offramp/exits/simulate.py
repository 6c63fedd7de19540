"""Offline exit simulation on one full-depth pass: trade-off curves and threshold choice.

Given every head's output for a labeled set (one full-depth pass), the exit of each
row under any global threshold is a cheap array operation, so the whole
accuracy / mean-layers curve comes from one forward pass. With SmartBERT gates the
pass also records which layers each row skipped: a skipped layer has no exit decision
and costs nothing, so "layers computed" can be fewer than the exit layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offramp.policies import ExitPolicy


@dataclass
class HeadPass:
    """Every head's output on N rows from one full-depth pass."""

    logits: np.ndarray  # (N, K, C)
    signal: np.ndarray | None = None  # (N, K, A) the mechanism's exit signal; nan at the last head
    skipped: np.ndarray | None = None  # (N, L) bool: row skipped layer l+1 (SmartBERT gates)

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, rows) -> "HeadPass":
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return HeadPass(self.logits[rows], pick(self.signal), pick(self.skipped))

    @property
    def preds(self) -> np.ndarray:  # (N, K)
        return self.logits.argmax(-1)


def as_pass(x) -> HeadPass:
    """A bare (N, K, C) logits array is a pass of a model without signals or gates."""
    return x if isinstance(x, HeadPass) else HeadPass(np.asarray(x))


def head_scores(policy: ExitPolicy, x, exit_layers: list[int] | None = None) -> np.ndarray:
    """(N, K) policy scores; a head at a layer the row skipped never passes (it made no decision)."""
    hp = as_pass(x)
    signal = None if hp.signal is None else np.nan_to_num(hp.signal)  # the last head's nan: it always exits anyway
    scores = policy.head_scores(hp.logits, signal).astype(np.float64)
    if hp.skipped is not None and exit_layers is not None:
        skipped_at = hp.skipped[:, np.asarray(exit_layers) - 1]  # (N, K)
        skipped_at[:, -1] = False
        scores[skipped_at] = np.nan  # nan fails every comparison: no decision there
    return scores


def layer_costs(x, exit_layers: list[int]) -> np.ndarray:
    """(N, K) layers a row has computed by the time it reaches head k (skipped layers are free)."""
    hp = as_pass(x)
    depth = np.broadcast_to(np.asarray(exit_layers, dtype=np.float64), hp.logits.shape[:2])
    if hp.skipped is None:
        return depth.copy()
    skipped_by = np.cumsum(hp.skipped, axis=1)[:, np.asarray(exit_layers) - 1]  # (N, K)
    return depth - skipped_by


def first_exit(scores: np.ndarray, policy: ExitPolicy, threshold) -> np.ndarray:
    """Index of the first head that exits (the last always does): (N,) for one threshold,
    (M, N) for an (M,) array of candidates, or for an (M, K) array of per-head thresholds."""
    t = np.asarray(threshold, dtype=np.float64)
    t = t[:, None, :] if t.ndim == 2 else t[..., None, None]  # broadcasts over (N, K)
    passes = policy.passes(scores, t)  # (N, K) or (M, N, K)
    passes[..., -1] = True
    return passes.argmax(axis=-1)


def simulate(scores: np.ndarray, preds: np.ndarray, exit_layers: list[int], policy: ExitPolicy, threshold):
    """Per row: the layer of the first head that exits, and its prediction.

    `threshold` is one value -> (N,) arrays, or an (M,) array of candidates -> (M, N) arrays."""
    first = first_exit(scores, policy, threshold)
    return np.asarray(exit_layers)[first], preds[np.arange(len(preds)), first]


def computed_layers(costs: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Layers each row computed up to its exit head: (N,) or (M, N) like `first`."""
    return costs[np.arange(costs.shape[0]), first]


def sweep(x, gold: np.ndarray, exit_layers: list[int], policy: ExitPolicy, points: int = 80) -> list[dict]:
    """Accuracy and mean layers computed for thresholds spread over the observed scores (plus never-exit)."""
    hp = as_pass(x)
    scores = head_scores(policy, hp, exit_layers)
    preds, costs = hp.preds, layer_costs(hp, exit_layers)
    internal = scores[:, :-1].ravel()
    internal = internal[np.isfinite(internal)]
    candidates = np.unique(np.quantile(internal, np.linspace(0, 1, points))) if internal.size else np.array([])
    candidates = np.concatenate([[policy.never_exits_threshold()], candidates])
    first = first_exit(scores, policy, candidates)  # (M, N)
    pred = np.take_along_axis(preds[None], first[..., None], axis=2)[..., 0] if len(preds) else first
    mean_layers = computed_layers(costs, first).mean(axis=1)
    depth = np.asarray(exit_layers)[first].mean(axis=1)
    num_layers = exit_layers[-1]
    return [
        {
            "threshold": float(t),
            "accuracy": float((pred[i] == gold).mean()),
            "mean_layers": float(mean_layers[i]),
            "mean_exit_layer": float(depth[i]),
            "ideal_speedup": num_layers / float(mean_layers[i]),
        }
        for i, t in enumerate(candidates)
    ]


def choose(curve: list[dict], max_drop: float) -> dict:
    """The fastest point whose accuracy is within max_drop of full depth (curve[0])."""
    floor = curve[0]["accuracy"] - max_drop
    ok = [p for p in curve if p["accuracy"] >= floor]
    return max(ok, key=lambda p: (p["ideal_speedup"], p["accuracy"]))


def survival(scores: np.ndarray, preds: np.ndarray, exit_layers: list[int], policy: ExitPolicy, threshold, num_layers: int):
    """Fraction of rows still running after each layer 1..L under one global `threshold`, or
    under per-head thresholds given as a (1, K) array."""
    layers, _ = simulate(scores, preds, exit_layers, policy, threshold)
    layers = np.asarray(layers).ravel()
    return [float((layers > l).mean()) for l in range(1, num_layers + 1)]
