"""Offline exit simulation on full-depth logits: trade-off curves and threshold choice.

Given every head's logits for a labeled set (one full-depth pass), the exit of each
row under any global threshold is a cheap array operation, so the whole
accuracy / mean-layers curve comes from one forward pass.
"""

from __future__ import annotations

import numpy as np
import torch

from offramp.policies import ExitPolicy


def head_scores(policy: ExitPolicy, logits: np.ndarray) -> np.ndarray:
    """(N, K, C) logits of K heads -> (N, K) policy scores."""
    n, k, c = logits.shape
    return policy.score(torch.from_numpy(logits.reshape(n * k, c)).float()).numpy().reshape(n, k)


def simulate(scores: np.ndarray, preds: np.ndarray, exit_layers: list[int], policy: ExitPolicy, threshold):
    """Per row: the layer of the first head that exits (the last head always does), and its prediction.

    `threshold` is one value -> (N,) arrays, or an (M,) array of candidates -> (M, N) arrays."""
    thr = np.asarray(threshold, dtype=np.float64)
    t = thr[..., None, None]  # broadcasts over (N, K)
    passes = scores < t if policy.lower_is_confident else scores >= t  # (N, K) or (M, N, K)
    passes[..., -1] = True
    first = passes.argmax(axis=-1)  # (N,) or (M, N)
    return np.asarray(exit_layers)[first], preds[np.arange(len(preds)), first]


def sweep(logits: np.ndarray, gold: np.ndarray, exit_layers: list[int], policy: ExitPolicy, points: int = 80) -> list[dict]:
    """Accuracy and mean layers for thresholds spread over the observed scores (plus never-exit)."""
    scores = head_scores(policy, logits)
    preds = logits.argmax(-1)  # (N, K)
    internal = scores[:, :-1].ravel()
    candidates = np.unique(np.quantile(internal, np.linspace(0, 1, points))) if internal.size else np.array([])
    candidates = np.concatenate([[policy.never_exits_threshold()], candidates])
    num_layers = exit_layers[-1]
    curve = []
    for t in candidates:
        layers, pred = simulate(scores, preds, exit_layers, policy, float(t))
        mean_layers = float(layers.mean())
        curve.append(
            {
                "threshold": float(t),
                "accuracy": float((pred == gold).mean()),
                "mean_layers": mean_layers,
                "ideal_speedup": num_layers / mean_layers,
            }
        )
    return curve


def choose(curve: list[dict], max_drop: float) -> dict:
    """The fastest point whose accuracy is within max_drop of full depth (curve[0])."""
    floor = curve[0]["accuracy"] - max_drop
    ok = [p for p in curve if p["accuracy"] >= floor]
    return max(ok, key=lambda p: (p["ideal_speedup"], p["accuracy"]))


def survival(scores: np.ndarray, preds: np.ndarray, exit_layers: list[int], policy: ExitPolicy, threshold: float, num_layers: int):
    """Fraction of rows still running after each layer 1..L under `threshold`."""
    layers, _ = simulate(scores, preds, exit_layers, policy, threshold)
    return [float((layers > l).mean()) for l in range(1, num_layers + 1)]
