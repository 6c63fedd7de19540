"""Run metrics computed from the output rows themselves, so they always match the output."""

from __future__ import annotations

import numpy as np

from offramp import batch as B


def summarize_output(
    exit_layer: np.ndarray,  # (N,) 1-based exit layer, 0 = not run
    status: np.ndarray,  # (N,) row status strings
    num_tokens: np.ndarray,  # (N,)
    num_layers: int,
    stage_ranges: list[tuple[int, int]],
    predicted: np.ndarray | None = None,  # (N,) predicted label strings
    gold: np.ndarray | None = None,  # (N,) gold label strings (None/null = unlabeled)
    audited: np.ndarray | None = None,  # (N,) bool: ran to full depth for the audit
    skipped: np.ndarray | None = None,  # (N,) layers each row skipped through gates (SmartBERT)
) -> dict:
    """Counts, exit profile, per-stage entering/leaving rows and accuracy of one run.

    A stage's rows_in counts the rows its layers computed: audited rows enter every stage."""
    exit_layer = np.asarray(exit_layer, dtype=np.int64)
    status = np.asarray(status, dtype=object)
    ran = np.isin(status, B.RUNNABLE)
    n_ran = int(ran.sum())
    m: dict = {"rows": int(len(status)), "rows_labeled": n_ran}
    for s in B.STATUSES:
        m[f"rows_status_{s}"] = int((status == s).sum())
    m["tokens"] = int(np.asarray(num_tokens)[ran].sum())
    layers = exit_layer[ran]
    computed = layers.copy()
    if audited is not None:
        computed[np.asarray(audited, dtype=bool)[ran]] = num_layers
    m["mean_layers"] = float(layers.mean()) if n_ran else 0.0  # depth reached: the mean exit layer
    skips = np.zeros_like(layers) if skipped is None else np.asarray(skipped, dtype=np.int64)[ran]
    m["mean_layers_computed"] = float((layers - skips).mean()) if n_ran else 0.0
    m["ideal_speedup"] = num_layers / m["mean_layers_computed"] if n_ran and m["mean_layers_computed"] else 1.0
    m["rows_skipping"] = int((skips > 0).sum())  # rows that skipped at least one layer before their exit
    m["layers_saved_by_skipping"] = int(skips.sum())
    m["exit_histogram"] = {int(l): int((layers == l).sum()) for l in range(1, num_layers + 1)}
    for k, (start, end) in enumerate(stage_ranges):
        entering = int((computed > start).sum())
        m[f"stage{k}_rows_in"] = entering
        m[f"stage{k}_rows_exited"] = int(((layers > start) & (layers <= end)).sum())
        m[f"stage{k}_survival_in"] = entering / n_ran if n_ran else 0.0
    if predicted is not None and gold is not None:
        gold = np.asarray(gold, dtype=object)
        has_gold = ran & np.array([g is not None for g in gold])
        if has_gold.any():
            m["rows_with_gold"] = int(has_gold.sum())
            m["accuracy"] = float((np.asarray(predicted, dtype=object)[has_gold] == gold[has_gold]).mean())
    return m
