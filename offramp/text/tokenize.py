"""Text -> token ids with a status for every row (tokenize step of the pipeline)."""

from __future__ import annotations

import functools
import os

import numpy as np

from offramp import schema
from offramp.text.words import as_words, encode_words, split_words


class _FastTokenizer:
    """The model directory's tokenizer.json through `tokenizers` alone: the same ids as
    AutoTokenizer (tested), without importing torch/transformers in tokenize tasks."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(path)
        self.tok.no_truncation()
        self.tok.no_padding()
        self.sep_token_id = self.tok.token_to_id("[SEP]")

    def __call__(self, texts, **_):
        return {"input_ids": [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=True)]}


@functools.lru_cache(maxsize=4)
def load_tokenizer(model_dir: str):
    """Tokenizers are cached per worker process: a task pays the load once per process."""
    path = os.path.join(model_dir, "tokenizer.json")
    if os.path.isfile(path):
        tok = _FastTokenizer(path)
        if tok.sep_token_id is not None:
            return tok
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _as_text(value) -> tuple[str | None, str]:
    """Classify one cell: (text, status)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None, schema.NULL
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None, schema.UNDECODABLE
    if not isinstance(value, str):
        return None, schema.UNDECODABLE
    if "\ufffd" in value:  # text that was decoded with replacement characters upstream
        return None, schema.UNDECODABLE
    if not value.strip():
        return None, schema.EMPTY
    return value, schema.OK


def tokenize_batch(batch: dict, tokenizer, text_column: str, max_length: int, audit: np.ndarray | None = None) -> dict:
    """Add STATUS, TOKENS, NUM_TOKENS, AUDIT and the empty per-row result columns to a batch.

    Over-long documents keep their first max_length-1 tokens plus [SEP] and get status
    'truncated' (they are still labeled).
    """
    schema.check_columns(batch, [text_column], "tokenize")
    cells = batch[text_column]
    n = len(cells)
    status = np.empty(n, dtype=object)
    tokens = np.empty(n, dtype=object)
    num_tokens = np.zeros(n, dtype=np.int32)
    read_status = batch.get(schema.READ_STATUS)
    texts, where = [], []
    for i, cell in enumerate(cells):
        text, status[i] = _as_text(cell)
        if read_status is not None and read_status[i]:
            text, status[i] = None, read_status[i]
        tokens[i] = b""
        if text is not None:
            texts.append(text)
            where.append(i)
    if texts:
        ids = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        sep = tokenizer.sep_token_id
        for i, row in zip(where, ids):
            if len(row) > max_length:
                row = row[: max_length - 1] + [sep]
                status[i] = schema.TRUNCATED
            tokens[i] = np.asarray(row, dtype=np.int32).tobytes()
            num_tokens[i] = len(row)
    out = dict(batch)
    out.update(
        {
            schema.STATUS: status,
            schema.TOKENS: tokens,
            schema.NUM_TOKENS: num_tokens,
            schema.HIDDEN: np.array([b""] * n, dtype=object),
            schema.EXIT_LAYER: np.zeros(n, dtype=np.int16),
            schema.LABEL_ID: np.full(n, -1, dtype=np.int32),
            schema.CONFIDENCE: np.full(n, np.nan, dtype=np.float32),
            schema.SCORE: np.full(n, np.nan, dtype=np.float32),
            schema.AUDIT: np.zeros(n, dtype=bool) if audit is None else np.asarray(audit, dtype=bool),
            schema.FULL_LABEL_ID: np.full(n, -1, dtype=np.int32),
            schema.STATE: np.array([b""] * n, dtype=object),
            schema.SKIPPED: np.zeros(n, dtype=np.int16),
        }
    )
    return out


def tokenize_task(
    batch: dict,
    model_dir: str,
    text_column: str,
    max_length: int,
    id_column: str = "id",
    audit_fraction: float = 0.0,
    audit_seed: int = 0,
) -> dict:
    """Ray Data task entry point (stateless; the tokenizer is cached per process)."""
    audit = schema.audit_mask(batch[id_column], audit_fraction, audit_seed) if audit_fraction > 0 else None
    return tokenize_batch(batch, load_tokenizer(model_dir), text_column, max_length, audit)


def _as_words(value) -> tuple[list[str] | None, str]:
    """Classify one cell of a words column: (words, status)."""
    if value is None:
        return None, schema.NULL
    words = as_words(value)
    if words is None:
        return None, schema.UNDECODABLE
    if any("\ufffd" in w or schema.SEP in w for w in words):
        return None, schema.UNDECODABLE
    if not any(w.strip() for w in words):
        return None, schema.EMPTY
    return words, schema.OK


def tokenize_words_batch(batch: dict, tokenizer, words_column: str | None, text_column: str, max_length: int,
                         gold: str | None = None) -> dict:
    """Sequence labeling: add STATUS, TOKENS, NUM_TOKENS, the per-word columns and the empty
    result columns. Words come from `words_column` (a list per row) or, when None, from
    `text_column` split by offramp.text.words.split_words. A sentence over max_length sub-words keeps
    its first ones and gets status 'truncated'; its words past the limit are untagged."""
    source = words_column or text_column
    schema.check_columns(batch, [source] + ([gold] if gold else []), "tokenize")
    cells = batch[source]
    n = len(cells)
    status = np.empty(n, dtype=object)
    words_col = np.array([b""] * n, dtype=object)
    gold_col = np.array([b""] * n, dtype=object)
    tokens, starts = np.array([b""] * n, dtype=object), np.array([b""] * n, dtype=object)
    num_tokens, num_words = np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32)
    read_status = batch.get(schema.READ_STATUS)
    sentences, where = [], []
    for i, cell in enumerate(cells):
        if words_column:
            words, status[i] = _as_words(cell)
        else:
            text, status[i] = _as_text(cell)
            words = split_words(text) if text is not None else None
        if read_status is not None and read_status[i]:
            words, status[i] = None, read_status[i]
        if words is not None:
            sentences.append(words)
            where.append(i)
            words_col[i] = schema.join_words(words)
            tags = as_words(batch[gold][i]) if gold else None
            if tags is not None and len(tags) == len(words):
                gold_col[i] = schema.join_words(tags)
    for i, enc in zip(where, encode_words(tokenizer, sentences, max_length) if sentences else []):
        tokens[i], starts[i] = enc.ids.tobytes(), enc.starts.tobytes()
        num_tokens[i], num_words[i] = len(enc.ids), len(enc.starts)
        if enc.truncated:
            status[i] = schema.TRUNCATED
    out = {k: v for k, v in batch.items() if k not in (words_column, gold)}  # lists travel as blobs
    out.update({
        schema.STATUS: status, schema.TOKENS: tokens, schema.NUM_TOKENS: num_tokens, schema.WORDS: words_col, schema.GOLD_TAGS: gold_col,
        schema.NUM_WORDS: num_words, schema.WORD_STARTS: starts,
        schema.HIDDEN: np.array([b""] * n, dtype=object),
        schema.EXIT_LAYER: np.zeros(n, dtype=np.int16),
        schema.WORD_EXIT: np.array([b""] * n, dtype=object),
        schema.WORD_LABEL: np.array([b""] * n, dtype=object),
        schema.WORD_UNC: np.array([b""] * n, dtype=object),
        schema.TOKEN_LAYERS: np.zeros(n, dtype=np.int64),
    })
    return out


def tokenize_words_task(batch: dict, model_dir: str, words_column: str | None, text_column: str, max_length: int,
                        gold: str | None = None) -> dict:
    """Ray Data task entry point for token models."""
    return tokenize_words_batch(batch, load_tokenizer(model_dir), words_column, text_column, max_length, gold)
