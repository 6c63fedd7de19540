"""Run metrics computed from the output rows themselves, so they always match the output."""

from __future__ import annotations

import numpy as np

from offramp import schema


def status_counts(status) -> tuple[dict, np.ndarray]:
    """Rows, rows labeled and rows per status; and (N,) bool: the rows that ran."""
    status = np.asarray(status, dtype=object)
    ran = np.isin(status, schema.RUNNABLE)
    m: dict = {"rows": int(len(status)), "rows_labeled": int(ran.sum())}
    for s in schema.STATUSES:
        m[f"rows_status_{s}"] = int((status == s).sum())
    return m, ran


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
    m, ran = status_counts(status)
    n_ran = m["rows_labeled"]
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


def summarize_token_output(
    exit_layer: np.ndarray,  # (N,) layer each sentence finished at; 0 = not run
    status: np.ndarray,  # (N,)
    num_tokens: np.ndarray,  # (N,)
    token_layers: np.ndarray,  # (N,) tokens computed as queries, summed over layers
    tags: list,  # N x (list of tag str or None per word) or None for rows that did not run
    tag_layers: list,  # N x (list of layer per word) or None
    num_layers: int,
    stage_ranges: list[tuple[int, int]],
    gold: list | None = None,  # N x gold tags or None
    bio: bool = False,
) -> dict:
    """Sequence labeling: counts, the token-layer saving, sentences entering and leaving each
    stage, the words' exit profile, and with gold tags word accuracy (an untagged word is wrong)
    and entity F1 for BIO tag sets. Computed from the output rows."""
    from offramp.quality.entities import entity_f1

    m, ran = status_counts(status)
    n_ran = m["rows_labeled"]
    tokens = np.asarray(num_tokens, dtype=np.int64)[ran]
    m["tokens"] = int(tokens.sum())
    computed = int(np.asarray(token_layers, dtype=np.int64)[ran].sum())
    full = m["tokens"] * num_layers
    m["token_layers"] = computed
    m["token_layers_full_depth"] = full
    m["token_layer_saving"] = 1 - computed / full if full else 0.0
    m["ideal_speedup"] = full / computed if computed else 1.0
    layers = np.asarray(exit_layer, dtype=np.int64)[ran]
    m["mean_layers"] = float(layers.mean()) if n_ran else 0.0  # the layer sentences finished at
    m["exit_histogram"] = {int(l): int((layers == l).sum()) for l in range(1, num_layers + 1)}
    word_layers = np.array([x or 0 for i in np.flatnonzero(ran) for x in (tag_layers[i] or [])], dtype=np.int64)
    m["words"] = int(len(word_layers))
    m["words_untagged"] = int((word_layers == 0).sum())
    m["mean_word_exit_layer"] = float(word_layers[word_layers > 0].mean()) if (word_layers > 0).any() else 0.0
    for l in range(1, num_layers + 1):
        m[f"words_halted_layer{l}"] = int((word_layers == l).sum())
    for k, (start, end) in enumerate(stage_ranges):
        m[f"stage{k}_rows_in"] = int((layers > start).sum())
        m[f"stage{k}_rows_exited"] = int(((layers > start) & (layers <= end)).sum())
        m[f"stage{k}_survival_in"] = m[f"stage{k}_rows_in"] / n_ran if n_ran else 0.0
    if gold is not None:
        pairs = [(tags[i] or [None] * len(gold[i]), gold[i]) for i in np.flatnonzero(ran) if gold[i]]
        if pairs:
            right = sum(int(p == g) for pt, gt in pairs for p, g in zip(pt, gt))
            m["rows_with_gold"] = len(pairs)
            m["gold_words"] = sum(len(g) for _, g in pairs)
            m["accuracy"] = right / m["gold_words"]
            if bio:
                e = entity_f1([g for _, g in pairs], [p for p, _ in pairs])
                m.update(entity_f1=e["f1"], entity_precision=e["precision"], entity_recall=e["recall"],
                         gold_entities=e["gold_entities"])
    return m
