"""Sequence labeling: a tag per word, with sentence-level (SENTEE) or token-level (TOKEE) exits."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from offramp import schema
from offramp.config import ConfigError
from offramp.quality.audit import audit_counts, audit_summary
from offramp.quality.entities import is_bio
from offramp.quality.metrics import row_counts, row_metrics, token_counts, token_metrics, word_scores
from offramp.tasks.base import Task, common_output, fresh_columns
from offramp.tasks.sequence import label_text
from offramp.text.tokenize import cell_text, cell_words, read_cells
from offramp.text.words import encode_words, split_words

STATE = {
    schema.HIDDEN: (object, b""),
    schema.EXIT_LAYER: (np.int16, 0),
    schema.WORD_EXIT: (object, b""),
    schema.WORD_LABEL: (object, b""),
    schema.WORD_UNC: (object, b""),
    schema.TOKEN_LAYERS: (np.int64, 0),
    schema.FULL_HIDDEN: (object, b""),
    schema.FULL_WORD_LABEL: (object, b""),
    schema.FULL_DONE: (bool, False),
}


def tokenize_batch(batch: dict, tokenizer, words_column: str | None, text_column: str, max_length: int,
                   gold: str | None = None, audit: np.ndarray | None = None) -> dict:
    """Add STATUS, TOKENS, NUM_TOKENS, the per-word columns, AUDIT and the empty state columns.

    Words come from `words_column` (a list per row) or, when None, from `text_column` split by
    offramp.text.words.split_words. A sentence over max_length sub-words keeps its first ones and
    gets status 'truncated'; its words past the limit are untagged."""
    source = words_column or text_column
    schema.check_columns(batch, [source] + ([gold] if gold else []), "tokenize")
    if words_column:
        sentences, status = read_cells(batch, source, cell_words)
    else:
        texts, status = read_cells(batch, source, cell_text)
        sentences = [split_words(t) if t is not None else None for t in texts]
    n = len(sentences)
    words_col, gold_col = np.array([b""] * n, dtype=object), np.array([b""] * n, dtype=object)
    tokens, starts = np.array([b""] * n, dtype=object), np.array([b""] * n, dtype=object)
    num_tokens, num_words = np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32)
    where = [i for i, w in enumerate(sentences) if w is not None]
    for i in where:
        words_col[i] = schema.join_words(sentences[i])
        tags = gold_words(batch[gold][i]) if gold else None
        if tags is not None and len(tags) == len(sentences[i]):
            gold_col[i] = schema.join_words(tags)
    encoded = encode_words(tokenizer, [sentences[i] for i in where], max_length) if where else []
    for i, enc in zip(where, encoded):
        # the stages see words up to the last one with a sub-word inside the limit (a truncated
        # document's tail is untagged anyway): their tensors do not grow with the document
        tagged = int(np.flatnonzero(enc.starts >= 0).max()) + 1 if (enc.starts >= 0).any() else 0
        tokens[i], starts[i] = enc.ids.tobytes(), enc.starts[:tagged].tobytes()
        num_tokens[i], num_words[i] = len(enc.ids), tagged
        if enc.truncated:
            status[i] = schema.TRUNCATED
    out = {k: v for k, v in batch.items() if k not in (words_column, gold)}  # lists travel as blobs
    out.update({
        schema.STATUS: status, schema.TOKENS: tokens, schema.NUM_TOKENS: num_tokens, schema.WORDS: words_col,
        schema.GOLD_TAGS: gold_col, schema.NUM_WORDS: num_words, schema.WORD_STARTS: starts,
        schema.AUDIT: np.zeros(n, dtype=bool) if audit is None else np.asarray(audit, dtype=bool),
    })
    out.update(fresh_columns(n, STATE))
    return out


def gold_words(value) -> list[str] | None:
    """A gold tag list as the model's tags are written: integer tags (3 or 3.0) as "3"."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        return None
    out = []
    for tag in value:
        if isinstance(tag, bool) or not isinstance(tag, (str, int, float, np.integer, np.floating)):
            return None
        out.append(label_text(tag))
    return out if None not in out else None


def _tags(blob: bytes, names: np.ndarray, fallback: int) -> list:
    ids = np.frombuffer(blob, dtype=np.int16).astype(np.int64)
    return names[np.where(ids >= 0, ids, fallback)].tolist()


class TokenTask(Task):
    name = "token"
    work_unit = "token_layers"
    per_word = True
    gold_column = "gold_tags"
    output_columns = ("words", "tags", "tag_layers", "num_words", "words_untagged", "token_layers", "full_depth_tags")
    stage_runner = "offramp.exits.token_shard:TokenStageRunner"

    def source_column(self, cfg) -> tuple[str, str]:
        return (cfg.words_column, "--words-column") if cfg.words_column else (cfg.text_column, "--text-column")

    def list_columns(self, cfg) -> tuple[str, ...]:
        return tuple(c for c in (cfg.words_column, cfg.label_column) if c)

    def check(self, cfg, info, fmt) -> None:
        if cfg.words_column and fmt == "text":
            raise ConfigError("plain-text input has no words column; drop --words-column (each line is split into words)")

    def describe_policy(self, cfg, info) -> str:
        mode = cfg.exit.token.mode or info.token_exit_mode or "token"
        return f"{mode}-level exit ({cfg.exit.policy or info.policy})"

    def exit_conditions(self, cfg, info) -> dict:
        t = cfg.exit.token
        mode = t.mode or info.token_exit_mode or "token"
        if mode == "token":  # TOKEE: the window decides; SENTEE: the pooling
            return {"token_exit_mode": mode, "exit_window": t.window if t.window is not None else info.exit_window}
        return {"token_exit_mode": mode, "sentence_pool": t.sentence_pool or info.sentence_pool}

    def tokenize_kwargs(self, cfg) -> dict:
        return dict(words_column=cfg.words_column, text_column=cfg.text_column, gold=cfg.label_column)

    def tokenize(self, batch, tokenizer, max_length, audit, words_column=None, text_column="text", gold=None, **_):
        return tokenize_batch(batch, tokenizer, words_column, text_column, max_length, gold, audit)

    def finalize(self, batch, labels, id_column, keep, gold, keep_types=None) -> pa.Table:
        """`tags[i]` is None for an untagged word (its first sub-word fell past the token limit, or
        it has none); `tag_layers[i]` is the layer the word halted at."""
        names = np.array(labels + [None], dtype=object)
        words, tags, layers, untagged, full_tags = [], [], [], [], []
        ran = schema.runnable(batch[schema.STATUS])
        rows = zip(ran, batch[schema.WORDS], batch[schema.WORD_LABEL], batch[schema.WORD_EXIT], batch[schema.FULL_WORD_LABEL])
        for row_ran, w_blob, lab, ex, full in rows:
            w = schema.split_blob(w_blob)
            full_tags.append(_tags(full, names, len(labels)) + [None] * (len(w) - len(full) // 2) if full else None)
            if not row_ran:  # never ran (bad input): no tags
                words.append(w or None)
                tags.append(None)
                layers.append(None)
                untagged.append(len(w))
                continue
            tail = [None] * (len(w) - len(lab) // 2)  # words past the last one the stages saw: untagged
            words.append(w)
            tags.append(_tags(lab, names, len(labels)) + tail)
            layers.append([int(x) if x > 0 else None for x in np.frombuffer(ex, dtype=np.int16)] + tail)
            untagged.append(sum(t is None for t in tags[-1]))
        out = common_output(batch, id_column, keep, keep_types)
        out.update({
            "words": pa.array(words, type=pa.list_(pa.string())),
            "tags": pa.array(tags, type=pa.list_(pa.string())),
            "tag_layers": pa.array(layers, type=pa.list_(pa.int16())),
            "num_words": pa.array([len(w) if w else 0 for w in words], type=pa.int32()),
            "words_untagged": pa.array(untagged, type=pa.int32()),
            "token_layers": pa.array(batch[schema.TOKEN_LAYERS], type=pa.int64()),
            "audited": pa.array([t is not None for t in full_tags], type=pa.bool_()),
            "full_depth_tags": pa.array(full_tags, type=pa.list_(pa.string())),
        })
        if gold:
            out[self.gold_column] = pa.array([schema.split_blob(g) or None for g in batch[schema.GOLD_TAGS]],
                                             type=pa.list_(pa.string()))
        return pa.table(out)

    def metric_columns(self, cfg) -> list[str]:
        return [c for c in super().metric_columns(cfg) if c not in ("words",)]

    def counts(self, table, info, ranges, cfg, audit) -> dict:
        column = lambda name: table[name].to_numpy(zero_copy_only=False)  # noqa: E731
        status = np.asarray(table["status"].to_pylist(), dtype=object)
        L, ran = info.num_layers, schema.runnable(status)
        audited = column("audited").astype(bool)
        gold = table[self.gold_column].to_pylist() if cfg.label_column else None
        tags, tag_layers = table["tags"].to_pylist(), table["tag_layers"].to_pylist()
        c = {"rows": row_counts(column("exit_layer"), status, column("num_tokens"), L, ranges, audited),
             "task": token_counts(ran, column("num_tokens"), column("token_layers"), tags, tag_layers, L, gold)}
        if audit:
            c["audit"] = self._audit_counts(table, audited, tags, tag_layers, gold, L)
        return c

    def _audit_counts(self, table, audited, tags, tag_layers, gold, num_layers) -> dict:
        """Per word: the audited sentences' tags against their full-depth lane's tags."""
        rows = np.flatnonzero(audited)
        full = table["full_depth_tags"].to_pylist()
        flat = [(t, f, l or 0, (gold[i][k] if gold and gold[i] and k < len(gold[i]) else None))
                for i in rows for k, (t, f, l) in enumerate(zip(tags[i], full[i], tag_layers[i])) if t is not None]
        c = audit_counts(np.array([x[2] for x in flat], dtype=np.int64), np.array([x[0] for x in flat], dtype=object),
                         np.array([x[1] for x in flat], dtype=object), np.ones(len(flat), dtype=bool), num_layers,
                         np.array([x[3] for x in flat], dtype=object) if gold is not None else None)
        c["sentences"] = int(len(rows))
        return c

    def metrics(self, counts, info, cfg) -> tuple[dict, dict | None]:
        m = token_metrics(row_metrics(counts["rows"], info.num_layers), counts["task"], info.num_layers,
                             bio=is_bio(info.labels))
        audit = counts.get("audit")
        if audit is None:
            return m, None
        summary = audit_summary(audit, cfg.audit.confidence, self.audit_target(cfg, info), cfg.audit.alarm)
        summary.update(unit="words", sentences=audit["sentences"])
        return m, summary

    def answer_column(self) -> str:
        return "tags"

    def compare_full_depth(self, early, full_rows, info, id_column) -> dict:
        """Word accuracy and entity F1 without exits, and how many words the exits tagged differently."""
        rows = [r for r in full_rows if r[self.gold_column]]
        if not rows:
            return {}
        full_tags = [list(r["tags"]) for r in rows]
        gold = [list(r[self.gold_column]) for r in rows]
        exit_tags = [list(early.get(r[id_column]) or []) for r in rows]
        bio = is_bio(info.labels)
        full, exited = word_scores(full_tags, gold, bio), word_scores(exit_tags, gold, bio)
        out = {
            "full_depth_eval_rows": len(rows),
            "accuracy_full_depth": full["accuracy"],
            "accuracy_exit_on_eval_rows": exited["accuracy"],
            "agreement_with_full_depth": word_scores(exit_tags, full_tags, False)["accuracy"],
        }
        if bio:
            out["entity_f1_full_depth"] = full["entity_f1"]
            out["entity_f1_exit_on_eval_rows"] = exited["entity_f1"]
        return out
