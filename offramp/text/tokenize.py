"""Text -> token ids, and a status for every cell: the light half of the tokenize step.

No torch here: tokenize tasks run in Ray workers that should start fast. The task-specific
half (which columns a row gets) is in `offramp.tasks`."""

from __future__ import annotations

import functools
import os
import re

import numpy as np

from offramp import schema
from offramp.text.words import as_words, end_token_id


class _FastTokenizer:
    """The model directory's tokenizer.json through `tokenizers` alone: the same ids as
    AutoTokenizer (tested), without importing torch/transformers in tokenize tasks."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(path)
        self.tok.no_truncation()
        self.tok.no_padding()
        self.sep_token_id = end_token_id(self.tok)
        # ids alone: encode_batch_fast (tokenizers >= 0.20) skips the character offsets, which a
        # sequence model never reads: 1.2-1.3x faster on debian_sections (BENCHMARKS.md, "GPU"),
        # and tokenizing is what feeds a GPU stage
        self._encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)

    def __call__(self, texts, **_):
        return {"input_ids": [e.ids for e in self._encode(texts, add_special_tokens=True)]}


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


def cell_text(value) -> tuple[str | None, str]:
    """Classify one text cell: (text, status); text is None unless the status is ok."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None, schema.NULL
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None, schema.UNDECODABLE
    if not isinstance(value, str):
        return None, schema.UNDECODABLE
    if not value.strip():
        return None, schema.EMPTY
    return value, schema.OK


def cell_words(value) -> tuple[list[str] | None, str]:
    """Classify one cell of a words column: (words, status)."""
    if value is None:
        return None, schema.NULL
    words = as_words(value)
    if words is None:
        return None, schema.UNDECODABLE
    if any(schema.SEP in w for w in words):  # NUL separates words in the row's blob
        return None, schema.UNDECODABLE
    if not any(w.strip() for w in words):
        return None, schema.EMPTY
    return words, schema.OK


def read_cells(batch: dict, column: str, classify) -> tuple[list, np.ndarray]:
    """Every cell of `column` through `classify` -> (values, (N,) status); a status the reader
    decided (a bad JSON line, bad bytes) wins, and its value is None."""
    cells = batch[column]
    values, status = [None] * len(cells), np.empty(len(cells), dtype=object)
    read_status = batch.get(schema.READ_STATUS)
    for i, cell in enumerate(cells):
        values[i], status[i] = classify(cell)
        if read_status is not None and read_status[i]:
            values[i], status[i] = None, read_status[i]
    return values, status


# A document longer than this many characters per allowed token is cut (at a space) before it is
# tokenized: tokenizing a 1 MB document to keep 128 tokens would cost the whole megabyte.
CHARS_PER_TOKEN = 32
_SPACE = re.compile(r"\s")


def text_head(text: str, max_length: int) -> str | None:
    """The text up to its last whitespace within CHARS_PER_TOKEN x max_length characters, or None
    when the text is short, or has no whitespace there to cut at (a cut inside a word could change
    that word's sub-words)."""
    limit = CHARS_PER_TOKEN * max_length
    if len(text) <= limit:
        return None
    cut = max((m.start() for m in _SPACE.finditer(text, 0, limit)), default=0)
    return text[:cut] if cut > 0 else None


def encode_texts(tokenizer, texts: list[str], max_length: int) -> list[tuple[np.ndarray, bool]]:
    """Texts -> (int32 ids [CLS] ... [SEP], truncated) each; over-long ones keep their first
    max_length - 1 tokens plus [SEP].

    A long text is tokenized from its head (cut at whitespace, so the head's tokens are the
    text's first tokens); only when the head yields no more than max_length tokens is the whole
    text tokenized, so the ids are those of tokenizing everything and truncating."""
    if not texts:
        return []
    heads = [text_head(t, max_length) for t in texts]
    ids = tokenizer([h if h is not None else t for h, t in zip(heads, texts)], add_special_tokens=True,
                    truncation=False, verbose=False)["input_ids"]
    short = [i for i, (h, row) in enumerate(zip(heads, ids)) if h is not None and len(row) <= max_length]
    if short:  # the head was too sparse in tokens to decide: the whole text after all
        for i, row in zip(short, tokenizer([texts[i] for i in short], add_special_tokens=True, truncation=False,
                                           verbose=False)["input_ids"]):
            ids[i] = row
    sep, out = tokenizer.sep_token_id, []
    for row in ids:
        truncated = len(row) > max_length
        if truncated:
            row = row[: max_length - 1] + [sep]
        out.append((np.asarray(row, dtype=np.int32), truncated))
    return out
