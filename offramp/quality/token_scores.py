"""Tagging quality and cost of an offline token pass (`offramp.exits.token_pass.TagPass`) over
labeled sentences: word accuracy, entity-level F1 for BIO schemes, and token-layers computed
against full depth. Shared by training (thresholds on dev) and the benchmark."""

from __future__ import annotations

import numpy as np

from offramp.exits.token_pass import TagPass
from offramp.quality.entities import entity_f1, is_bio


def pass_cost(p, num_layers: int) -> dict:
    """Token-layers a pass computed (`p.token_layers`, `p.tokens` per sentence) against full depth."""
    full = int(p.tokens.sum()) * num_layers
    computed = int(p.token_layers.sum())
    return {
        "token_layers": computed,
        "token_layers_full": full,
        "token_layer_saving": 1 - computed / full if full else 0.0,
        "mean_layers": computed / max(int(p.tokens.sum()), 1),
        "ideal_speedup": full / computed if computed else float("inf"),
    }


def score_pass(p: TagPass, gold: list[np.ndarray], names: list[str], num_layers: int) -> dict:
    """Accuracy over tagged gold words (an untagged word counts as wrong), entity F1 for BIO
    tag sets, and the token-layer cost against full depth."""
    right = total = 0
    for pred, g in zip(p.labels, gold):
        right += int(((pred == g) & (g >= 0)).sum())
        total += int((g >= 0).sum())
    out = {"accuracy": right / max(total, 1), "words": total, **pass_cost(p, num_layers)}
    if is_bio(names):
        to_tags = lambda ids: [names[i] if i >= 0 else None for i in ids]  # noqa: E731
        out["entity"] = entity_f1([to_tags(g) for g in gold], [to_tags(x) for x in p.labels])
        out["f1"] = out["entity"]["f1"]
    return out
