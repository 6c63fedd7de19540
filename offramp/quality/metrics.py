"""Run metrics computed from the output rows themselves, so they always match the output.

Each summary is computed in two steps: counts of one batch of output rows that add up over
batches (`*_counts`, merged with `add_counts`), then the figures from the summed counts
(`*_metrics`). The driver streams the output through the first step, so a run of any size
is summarized in bounded memory. `row_counts` is what every task reports (statuses, tokens,
the exit profile, rows entering and leaving each stage); `sequence_counts` and `token_counts`
add each task's own part (layers computed and accuracy; token-layers saved, word accuracy and
entity F1).
"""

from __future__ import annotations

import numpy as np

from offramp import schema
from offramp.quality.entities import entity_counts, f1_of


def add_counts(a: dict, b: dict) -> dict:
    """Two batches' counts -> their sum (nested dicts, ints and count arrays)."""
    return {k: add_counts(v, b[k]) if isinstance(v, dict) else v + b[k] for k, v in a.items()}


def bincount(values: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(np.asarray(values, dtype=np.int64), minlength=size)[:size]


def row_counts(
    exit_layer: np.ndarray,  # (N,) 1-based layer the row's answer finished at, 0 = not run
    status: np.ndarray,  # (N,) row status strings
    num_tokens: np.ndarray,  # (N,)
    num_layers: int,
    stage_ranges: list[tuple[int, int]],
    audited: np.ndarray | None = None,  # (N,) bool: also ran to full depth for the audit
) -> dict:
    """A stage's rows_in counts the rows its layers computed: audited rows enter every stage."""
    status = np.asarray(status, dtype=object)
    ran = schema.runnable(status)
    layers = np.asarray(exit_layer, dtype=np.int64)[ran]
    reached = layers.copy()
    if audited is not None:
        reached[np.asarray(audited, dtype=bool)[ran]] = num_layers
    return {
        "rows": int(len(status)),
        "status": np.array([int((status == s).sum()) for s in schema.STATUSES]),
        "tokens": int(np.asarray(num_tokens, dtype=np.int64)[ran].sum()),
        "exit_layers": bincount(layers, num_layers + 1),
        "stage_rows_in": np.array([int((reached > start).sum()) for start, _ in stage_ranges], dtype=np.int64),
        "stage_rows_exited": np.array([int(((layers > s) & (layers <= e)).sum()) for s, e in stage_ranges], dtype=np.int64),
    }


def row_metrics(c: dict, num_layers: int) -> dict:
    """Counts, the exit profile and per-stage entering/leaving rows of one run."""
    n_ran = int(c["exit_layers"].sum())
    m: dict = {"rows": c["rows"], "rows_labeled": n_ran}
    for s, count in zip(schema.STATUSES, c["status"]):
        m[f"rows_status_{s}"] = int(count)
    m["tokens"] = c["tokens"]
    depth = np.arange(num_layers + 1)
    m["mean_layers"] = float((c["exit_layers"] * depth).sum() / n_ran) if n_ran else 0.0  # the mean exit layer
    m["exit_histogram"] = {l: int(c["exit_layers"][l]) for l in range(1, num_layers + 1)}
    for k, (entering, exited) in enumerate(zip(c["stage_rows_in"], c["stage_rows_exited"])):
        m[f"stage{k}_rows_in"] = int(entering)
        m[f"stage{k}_rows_exited"] = int(exited)
        m[f"stage{k}_survival_in"] = int(entering) / n_ran if n_ran else 0.0
    return m


def sequence_counts(
    ran: np.ndarray,  # (N,) bool
    exit_layer: np.ndarray,  # (N,)
    predicted: np.ndarray | None = None,  # (N,) predicted label strings
    gold: np.ndarray | None = None,  # (N,) gold label strings (None/null = unlabeled)
    skipped: np.ndarray | None = None,  # (N,) layers each row skipped through gates (SmartBERT)
) -> dict:
    layers = np.asarray(exit_layer, dtype=np.int64)[ran]
    skips = np.zeros_like(layers) if skipped is None else np.asarray(skipped, dtype=np.int64)[ran]
    c = {"computed": int((layers - skips).sum()), "rows_skipping": int((skips > 0).sum()),
         "skipped": int(skips.sum()), "gold_rows": 0, "right": 0}
    if predicted is not None and gold is not None:
        gold = np.asarray(gold, dtype=object)
        has_gold = ran & np.array([g is not None for g in gold], dtype=bool)
        c["gold_rows"] = int(has_gold.sum())
        c["right"] = int((np.asarray(predicted, dtype=object)[has_gold] == gold[has_gold]).sum())
    return c


def sequence_metrics(m: dict, c: dict, num_layers: int) -> dict:
    """Classification: layers really computed (the basis of the ideal speed-up), skipping, accuracy."""
    n_ran = m["rows_labeled"]
    m["mean_layers_computed"] = c["computed"] / n_ran if n_ran else 0.0
    m["ideal_speedup"] = num_layers / m["mean_layers_computed"] if n_ran and m["mean_layers_computed"] else 1.0
    m["rows_skipping"] = c["rows_skipping"]  # rows that skipped at least one layer before their exit
    m["layers_saved_by_skipping"] = c["skipped"]
    if c["gold_rows"]:
        m["rows_with_gold"] = c["gold_rows"]
        m["accuracy"] = c["right"] / c["gold_rows"]
    return m


def token_counts(
    ran: np.ndarray,  # (N,) bool
    num_tokens: np.ndarray,  # (N,)
    token_layers: np.ndarray,  # (N,) tokens computed as queries, summed over layers
    tags: list,  # N x (list of tag str or None per word) or None for rows that did not run
    tag_layers: list,  # N x (list of layer per word) or None
    num_layers: int,
    gold: list | None = None,  # N x gold tags or None
) -> dict:
    rows = np.flatnonzero(ran)
    word_layers = np.array([x or 0 for i in rows for x in (tag_layers[i] or [])], dtype=np.int64)
    c = {"token_layers": int(np.asarray(token_layers, dtype=np.int64)[ran].sum()),
         "word_layers": bincount(word_layers, num_layers + 1),
         "gold_rows": 0, "gold_words": 0, "right": 0, "entities": np.zeros(3, dtype=np.int64)}
    if gold is not None:
        pairs = [(tags[i] or [None] * len(gold[i]), gold[i]) for i in rows if gold[i]]
        c["gold_rows"] = len(pairs)
        c["gold_words"] = sum(len(g) for _, g in pairs)
        c["right"] = sum(int(p == g) for pt, gt in pairs for p, g in zip(pt, gt))
        c["entities"] = np.array(entity_counts([g for _, g in pairs], [p for p, _ in pairs]), dtype=np.int64)
    return c


def token_metrics(m: dict, c: dict, num_layers: int, bio: bool = False) -> dict:
    """Sequence labeling: the token-layer saving, the words' exit profile, and with gold tags
    word accuracy (an untagged word is wrong) and entity F1 for BIO tag sets."""
    computed, full = c["token_layers"], m["tokens"] * num_layers
    m["token_layers"] = computed
    m["token_layers_full_depth"] = full
    m["token_layer_saving"] = 1 - computed / full if full else 0.0
    m["ideal_speedup"] = full / computed if computed else 1.0
    words = c["word_layers"]
    m["words"] = int(words.sum())
    m["words_untagged"] = int(words[0])
    halted = int(words[1:].sum())
    m["mean_word_exit_layer"] = float((words * np.arange(num_layers + 1)).sum() / halted) if halted else 0.0
    for l in range(1, num_layers + 1):
        m[f"words_halted_layer{l}"] = int(words[l])
    if c["gold_rows"]:
        m["rows_with_gold"] = c["gold_rows"]
        m["gold_words"] = c["gold_words"]
        m["accuracy"] = c["right"] / c["gold_words"] if c["gold_words"] else 0.0
        if bio:
            e = f1_of(*(int(x) for x in c["entities"]))
            m.update(entity_f1=e["f1"], entity_precision=e["precision"], entity_recall=e["recall"],
                     gold_entities=e["gold_entities"])
    return m


def word_scores(predicted: list, gold: list, bio: bool) -> dict:
    """Word accuracy (a missing tag is wrong) and, for BIO tag sets, entity P/R/F1 over sentences."""
    words = sum(len(g) for g in gold)
    right = sum(int(p == g) for pt, gt in zip(predicted, gold) for p, g in zip(pt, gt))
    out = {"gold_words": words, "accuracy": right / words if words else 0.0}
    if bio:
        e = f1_of(*entity_counts(gold, predicted))
        out.update(entity_f1=e["f1"], entity_precision=e["precision"], entity_recall=e["recall"],
                   gold_entities=e["gold_entities"])
    return out
