"""Run metrics computed from the output rows themselves, so they always match the output.

`summarize_rows` is what every task reports (statuses, tokens, the exit profile, rows
entering and leaving each stage); `sequence_metrics` and `token_metrics` add each task's
own part (layers computed and accuracy; token-layers saved, word accuracy and entity F1).
"""

from __future__ import annotations

import numpy as np

from offramp import schema
from offramp.quality.entities import entity_f1


def status_counts(status) -> tuple[dict, np.ndarray]:
    """Rows, rows labeled and rows per status; and (N,) bool: the rows that ran."""
    status = np.asarray(status, dtype=object)
    ran = np.isin(status, schema.RUNNABLE)
    m: dict = {"rows": int(len(status)), "rows_labeled": int(ran.sum())}
    for s in schema.STATUSES:
        m[f"rows_status_{s}"] = int((status == s).sum())
    return m, ran


def summarize_rows(
    exit_layer: np.ndarray,  # (N,) 1-based layer the row's answer finished at, 0 = not run
    status: np.ndarray,  # (N,) row status strings
    num_tokens: np.ndarray,  # (N,)
    num_layers: int,
    stage_ranges: list[tuple[int, int]],
    audited: np.ndarray | None = None,  # (N,) bool: also ran to full depth for the audit
) -> tuple[dict, np.ndarray]:
    """Counts, the exit profile and per-stage entering/leaving rows of one run; and (N,) bool ran.

    A stage's rows_in counts the rows its layers computed: audited rows enter every stage."""
    exit_layer = np.asarray(exit_layer, dtype=np.int64)
    m, ran = status_counts(status)
    n_ran = m["rows_labeled"]
    m["tokens"] = int(np.asarray(num_tokens, dtype=np.int64)[ran].sum())
    layers = exit_layer[ran]
    reached = layers.copy()
    if audited is not None:
        reached[np.asarray(audited, dtype=bool)[ran]] = num_layers
    m["mean_layers"] = float(layers.mean()) if n_ran else 0.0  # depth reached: the mean exit layer
    m["exit_histogram"] = {int(l): int((layers == l).sum()) for l in range(1, num_layers + 1)}
    for k, (start, end) in enumerate(stage_ranges):
        entering = int((reached > start).sum())
        m[f"stage{k}_rows_in"] = entering
        m[f"stage{k}_rows_exited"] = int(((layers > start) & (layers <= end)).sum())
        m[f"stage{k}_survival_in"] = entering / n_ran if n_ran else 0.0
    return m, ran


def sequence_metrics(
    m: dict,
    ran: np.ndarray,  # (N,) bool from summarize_rows
    exit_layer: np.ndarray,  # (N,)
    num_layers: int,
    predicted: np.ndarray | None = None,  # (N,) predicted label strings
    gold: np.ndarray | None = None,  # (N,) gold label strings (None/null = unlabeled)
    skipped: np.ndarray | None = None,  # (N,) layers each row skipped through gates (SmartBERT)
) -> dict:
    """Classification: layers really computed (the basis of the ideal speed-up), skipping, accuracy."""
    n_ran = int(ran.sum())
    layers = np.asarray(exit_layer, dtype=np.int64)[ran]
    skips = np.zeros_like(layers) if skipped is None else np.asarray(skipped, dtype=np.int64)[ran]
    m["mean_layers_computed"] = float((layers - skips).mean()) if n_ran else 0.0
    m["ideal_speedup"] = num_layers / m["mean_layers_computed"] if n_ran and m["mean_layers_computed"] else 1.0
    m["rows_skipping"] = int((skips > 0).sum())  # rows that skipped at least one layer before their exit
    m["layers_saved_by_skipping"] = int(skips.sum())
    if predicted is not None and gold is not None:
        gold = np.asarray(gold, dtype=object)
        has_gold = ran & np.array([g is not None for g in gold], dtype=bool)
        if has_gold.any():
            m["rows_with_gold"] = int(has_gold.sum())
            m["accuracy"] = float((np.asarray(predicted, dtype=object)[has_gold] == gold[has_gold]).mean())
    return m


def token_metrics(
    m: dict,
    ran: np.ndarray,  # (N,) bool from summarize_rows
    num_tokens: np.ndarray,  # (N,)
    token_layers: np.ndarray,  # (N,) tokens computed as queries, summed over layers
    tags: list,  # N x (list of tag str or None per word) or None for rows that did not run
    tag_layers: list,  # N x (list of layer per word) or None
    num_layers: int,
    gold: list | None = None,  # N x gold tags or None
    bio: bool = False,
) -> dict:
    """Sequence labeling: the token-layer saving, the words' exit profile, and with gold tags
    word accuracy (an untagged word is wrong) and entity F1 for BIO tag sets."""
    tokens = int(np.asarray(num_tokens, dtype=np.int64)[ran].sum())
    computed = int(np.asarray(token_layers, dtype=np.int64)[ran].sum())
    full = tokens * num_layers
    m["token_layers"] = computed
    m["token_layers_full_depth"] = full
    m["token_layer_saving"] = 1 - computed / full if full else 0.0
    m["ideal_speedup"] = full / computed if computed else 1.0
    word_layers = np.array([x or 0 for i in np.flatnonzero(ran) for x in (tag_layers[i] or [])], dtype=np.int64)
    m["words"] = int(len(word_layers))
    m["words_untagged"] = int((word_layers == 0).sum())
    m["mean_word_exit_layer"] = float(word_layers[word_layers > 0].mean()) if (word_layers > 0).any() else 0.0
    for l in range(1, num_layers + 1):
        m[f"words_halted_layer{l}"] = int((word_layers == l).sum())
    if gold is not None:
        pairs = [(tags[i] or [None] * len(gold[i]), gold[i]) for i in np.flatnonzero(ran) if gold[i]]
        if pairs:
            m.update(word_scores([p for p, _ in pairs], [g for _, g in pairs], bio))
            m["rows_with_gold"] = len(pairs)
    return m


def word_scores(predicted: list, gold: list, bio: bool) -> dict:
    """Word accuracy (a missing tag is wrong) and, for BIO tag sets, entity P/R/F1 over sentences."""
    words = sum(len(g) for g in gold)
    right = sum(int(p == g) for pt, gt in zip(predicted, gold) for p, g in zip(pt, gt))
    out = {"gold_words": words, "accuracy": right / words if words else 0.0}
    if bio:
        e = entity_f1(gold, predicted)
        out.update(entity_f1=e["f1"], entity_precision=e["precision"], entity_recall=e["recall"],
                   gold_entities=e["gold_entities"])
    return out
