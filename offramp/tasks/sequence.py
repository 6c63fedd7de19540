"""Sequence classification: one label per row (DeeBERT, PABEE, BERxiT, DE³-BERT, SmartBERT)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from offramp import schema
from offramp.quality.audit import audit_counts, audit_summary
from offramp.quality.metrics import row_counts, row_metrics, sequence_counts, sequence_metrics
from offramp.tasks.base import Task, common_output, fresh_columns
from offramp.text.tokenize import cell_text, encode_texts, read_cells

# a row's state between stages, as it enters the first one
STATE = {
    schema.HIDDEN: (object, b""),
    schema.EXIT_LAYER: (np.int16, 0),
    schema.LABEL_ID: (np.int32, -1),
    schema.CONFIDENCE: (np.float32, np.nan),
    schema.SCORE: (np.float32, np.nan),
    schema.FULL_LABEL_ID: (np.int32, -1),
    schema.STATE: (object, b""),
    schema.SKIPPED: (np.int16, 0),
}


def label_text(value) -> str | None:
    """A gold label as the model's labels are written: integers (3, 3.0) as "3"; null as None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def tokenize_batch(batch: dict, tokenizer, text_column: str, max_length: int, audit: np.ndarray | None = None) -> dict:
    """Add STATUS, TOKENS, NUM_TOKENS, AUDIT and the empty state columns to a batch.

    Over-long documents keep their first max_length-1 tokens plus [SEP] and get status
    'truncated' (they are still labeled)."""
    schema.check_columns(batch, [text_column], "tokenize")
    texts, status = read_cells(batch, text_column, cell_text)
    n = len(texts)
    tokens = np.array([b""] * n, dtype=object)
    num_tokens = np.zeros(n, dtype=np.int32)
    where = [i for i, t in enumerate(texts) if t is not None]
    for i, (ids, truncated) in zip(where, encode_texts(tokenizer, [texts[i] for i in where], max_length)):
        tokens[i], num_tokens[i] = ids.tobytes(), len(ids)
        if truncated:
            status[i] = schema.TRUNCATED
    out = dict(batch)
    out.update({schema.STATUS: status, schema.TOKENS: tokens, schema.NUM_TOKENS: num_tokens})
    out[schema.AUDIT] = np.zeros(n, dtype=bool) if audit is None else np.asarray(audit, dtype=bool)
    out.update(fresh_columns(n, STATE))
    return out


class SequenceTask(Task):
    name = "sequence"
    work_unit = "row_layers"
    gold_column = "gold_label"
    output_columns = ("label", "confidence", "skipped_layers", "full_depth_label")
    stage_runner = "offramp.exits.sequence_shard:SequenceStageRunner"

    def tokenize(self, batch, tokenizer, max_length, audit, text_column: str = "text", **_) -> dict:
        return tokenize_batch(batch, tokenizer, text_column, max_length, audit)

    def finalize(self, batch, labels, id_column, keep, gold, keep_types=None) -> pa.Table:
        names = np.array(labels + [None], dtype=object)
        out = common_output(batch, id_column, keep, keep_types)
        label_id, full = batch[schema.LABEL_ID], batch[schema.FULL_LABEL_ID]
        out["label"] = pa.array(names[np.where(label_id >= 0, label_id, len(labels))].tolist(), type=pa.string())
        out["confidence"] = pa.array(batch[schema.CONFIDENCE], type=pa.float32())
        # SmartBERT: layers below exit_layer the row skipped (0 without gates)
        out["skipped_layers"] = pa.array(batch[schema.SKIPPED], type=pa.int16())
        out["audited"] = pa.array(batch[schema.AUDIT] & (full >= 0), type=pa.bool_())  # bad rows never ran
        out["full_depth_label"] = pa.array(names[np.where(full >= 0, full, len(labels))].tolist(), type=pa.string())
        if gold:
            out[self.gold_column] = pa.array([label_text(g) for g in batch[gold]], type=pa.string())
        return pa.table(out)

    def counts(self, table, info, ranges, cfg, audit) -> dict:
        column = lambda name: table[name].to_numpy(zero_copy_only=False)  # noqa: E731
        exit_layer, audited = column("exit_layer"), column("audited").astype(bool)
        status = np.asarray(table["status"].to_pylist(), dtype=object)
        L = info.num_layers
        gold = np.asarray(table[self.gold_column].to_pylist(), dtype=object) if cfg.label_column else None
        predicted = np.asarray(table["label"].to_pylist(), dtype=object)
        c = {"rows": row_counts(exit_layer, status, column("num_tokens"), L, ranges, audited),
             "task": sequence_counts(schema.runnable(status), exit_layer, predicted, gold, column("skipped_layers"))}
        if audit:
            full = np.asarray(table["full_depth_label"].to_pylist(), dtype=object)
            c["audit"] = audit_counts(exit_layer, predicted, full, audited, L, gold)
        return c

    def metrics(self, counts, info, cfg) -> tuple[dict, dict | None]:
        m = sequence_metrics(row_metrics(counts["rows"], info.num_layers), counts["task"], info.num_layers)
        audit = counts.get("audit")
        summary = None if audit is None else audit_summary(audit, cfg.audit.confidence, self.audit_target(cfg, info),
                                                           cfg.audit.alarm)
        return m, summary

    def answer_column(self) -> str:
        return "label"

    def compare_full_depth(self, early, full_rows, info, id_column) -> dict:
        rows = [r for r in full_rows if r[self.gold_column] is not None]
        if not rows:
            return {}
        return {
            "full_depth_eval_rows": len(rows),
            "accuracy_full_depth": float(np.mean([r["label"] == r[self.gold_column] for r in rows])),
            "accuracy_exit_on_eval_rows": float(np.mean([early.get(r[id_column]) == r[self.gold_column] for r in rows])),
            "agreement_with_full_depth": float(np.mean([early.get(r[id_column]) == r["label"] for r in rows])),
        }
