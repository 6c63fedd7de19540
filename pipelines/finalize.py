"""Last step: internal columns -> the user's output columns. Light on purpose (no torch):
it runs as Ray tasks whose workers should start fast."""

from __future__ import annotations

import numpy as np

from offramp import batch as B

OUTPUT_COLUMNS = (
    "label", "confidence", "exit_layer", "skipped_layers", "status", "num_tokens", "audited", "full_depth_label"
)
GOLD_COLUMN = "gold_label"


def finalize_task(batch: dict, labels: list[str], id_column: str, keep: list[str], gold: str | None) -> dict:
    """Internal columns -> the user's output columns (exactly the same rows)."""
    label_id = batch[B.LABEL_ID]
    names = np.array(labels + [None], dtype=object)
    out = {id_column: batch[id_column]}
    out["label"] = names[np.where(label_id >= 0, label_id, len(labels))]
    out["confidence"] = batch[B.CONFIDENCE]
    out["exit_layer"] = batch[B.EXIT_LAYER]
    out["skipped_layers"] = batch[B.SKIPPED]  # SmartBERT: layers below exit_layer the row skipped (0 without gates)
    out["status"] = batch[B.STATUS]
    out["num_tokens"] = batch[B.NUM_TOKENS]
    full = batch[B.FULL_LABEL_ID]
    out["audited"] = batch[B.AUDIT] & (full >= 0)  # rows that never ran (bad input) are not audited
    out["full_depth_label"] = names[np.where(full >= 0, full, len(labels))]
    for c in keep:
        out[c] = batch[c]
    if gold:
        out[GOLD_COLUMN] = batch[gold]
    return out
