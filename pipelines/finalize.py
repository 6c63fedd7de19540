"""Last step: internal columns -> the user's output columns. Light on purpose (no torch):
it runs as Ray tasks whose workers should start fast."""

from __future__ import annotations

import numpy as np

from offramp import schema

OUTPUT_COLUMNS = (
    "label", "confidence", "exit_layer", "skipped_layers", "status", "num_tokens", "audited", "full_depth_label"
)
GOLD_COLUMN = "gold_label"


def finalize_task(batch: dict, labels: list[str], id_column: str, keep: list[str], gold: str | None) -> dict:
    """Internal columns -> the user's output columns (exactly the same rows)."""
    label_id = batch[schema.LABEL_ID]
    names = np.array(labels + [None], dtype=object)
    out = {id_column: batch[id_column]}
    out["label"] = names[np.where(label_id >= 0, label_id, len(labels))]
    out["confidence"] = batch[schema.CONFIDENCE]
    out["exit_layer"] = batch[schema.EXIT_LAYER]
    out["skipped_layers"] = batch[schema.SKIPPED]  # SmartBERT: layers below exit_layer the row skipped (0 without gates)
    out["status"] = batch[schema.STATUS]
    out["num_tokens"] = batch[schema.NUM_TOKENS]
    full = batch[schema.FULL_LABEL_ID]
    out["audited"] = batch[schema.AUDIT] & (full >= 0)  # rows that never ran (bad input) are not audited
    out["full_depth_label"] = names[np.where(full >= 0, full, len(labels))]
    for c in keep:
        out[c] = batch[c]
    if gold:
        out[GOLD_COLUMN] = batch[gold]
    return out


TOKEN_OUTPUT_COLUMNS = (
    "words", "tags", "tag_layers", "exit_layer", "status", "num_tokens", "num_words", "words_untagged", "token_layers"
)
GOLD_TAGS_COLUMN = "gold_tags"


def finalize_tokens_task(batch: dict, labels: list[str], id_column: str, keep: list[str], gold: bool):
    """Token models: internal columns -> one output row per input row, as an Arrow table so the
    per-word lists keep their types. `tags[i]` is None for an untagged word (its first sub-word
    fell past the token limit, or it has none); `tag_layers[i]` is the layer the word halted at."""
    import pyarrow as pa

    names = np.array(labels + [None], dtype=object)
    words, tags, layers, untagged = [], [], [], []
    for w_blob, n, lab, ex in zip(batch[schema.WORDS], batch[schema.NUM_WORDS], batch[schema.WORD_LABEL], batch[schema.WORD_EXIT]):
        w = schema.split_blob(w_blob)
        if not lab:  # never ran (bad input): no tags
            words.append(w or None)
            tags.append(None)
            layers.append(None)
            untagged.append(len(w))
            continue
        ids = np.frombuffer(lab, dtype=np.int16).astype(np.int64)
        ex = np.frombuffer(ex, dtype=np.int16)
        words.append(w)
        tags.append(names[np.where(ids >= 0, ids, len(labels))].tolist())
        layers.append([int(x) if x > 0 else None for x in ex])
        untagged.append(int((ids < 0).sum()))
    out = {
        id_column: pa.array(batch[id_column].tolist()),
        "words": pa.array(words, type=pa.list_(pa.string())),
        "tags": pa.array(tags, type=pa.list_(pa.string())),
        "tag_layers": pa.array(layers, type=pa.list_(pa.int16())),
        "exit_layer": pa.array(batch[schema.EXIT_LAYER], type=pa.int16()),
        "status": pa.array(batch[schema.STATUS].tolist(), type=pa.string()),
        "num_tokens": pa.array(batch[schema.NUM_TOKENS], type=pa.int32()),
        "num_words": pa.array([len(w) if w else 0 for w in words], type=pa.int32()),
        "words_untagged": pa.array(untagged, type=pa.int32()),
        "token_layers": pa.array(batch[schema.TOKEN_LAYERS], type=pa.int64()),
    }
    for c in keep:
        out[c] = pa.array(batch[c].tolist())
    if gold:
        out[GOLD_TAGS_COLUMN] = pa.array([schema.split_blob(g) or None for g in batch[schema.GOLD_TAGS]], type=pa.list_(pa.string()))
    return pa.table(out)
