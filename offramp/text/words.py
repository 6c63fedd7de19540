"""Words <-> sub-words for sequence labeling: splitting raw text, aligning word tags.

A word is tagged at its first sub-word. The encoding of a sentence is its token ids
([CLS] ... [SEP], or <s> ... </s>: the checkpoint's own special tokens) and, per word, the position of its first sub-word, or -1 for a word
that gets no tag: one the tokenizer turns into nothing (whitespace, control characters)
or one cut off by the token limit. Those words are counted, never silently dropped.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import numpy as np

# Raw text -> words, a spaCy-like English rule (the silver tags in ../shared/data/debian_pos
# come from spaCy): whitespace separates words; every punctuation mark is its own word,
# except inside a word (file.txt, 3.8, x86-64, e-mail); clitics split as in the
# Penn Treebank: don't -> do n't, it's -> it 's.
WORD_RE = re.compile(r"\w+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-./+]\w+)*|[^\w\s]", re.IGNORECASE)


def split_words(text: str) -> list[str]:
    """The documented word rule above, for raw-text input."""
    return WORD_RE.findall(text)


@dataclass
class EncodedWords:
    ids: np.ndarray  # (T,) int32 token ids, [CLS] ... [SEP]
    starts: np.ndarray  # (W,) int32 first sub-word position per word; -1 = untagged
    truncated: bool  # the token limit cut sub-words off


def backend(tokenizer, words: bool = False):
    """The `tokenizers.Tokenizer` behind a fast tokenizer (ours or transformers'), without padding
    or truncation: a checkpoint's tokenizer.json may pad every row to a fixed length (MiniLM's
    pads to 128), which would make padding look like sub-words.

    With `words`, for pre-split words: a byte-level BPE (RoBERTa) then encodes every word with its
    leading space, as the word appears inside running text ("Ġword"), which is what transformers
    requires (`add_prefix_space=True`) for pre-split input. SentencePiece (XLM-R) marks every word
    with "▁" on its own; WordPiece needs nothing."""
    for name in ("tok", "backend_tokenizer", "_tokenizer"):
        if hasattr(tokenizer, name):
            tok = getattr(tokenizer, name)
            prefix = words and type(tok.pre_tokenizer).__name__ == "ByteLevel" and not tok.pre_tokenizer.add_prefix_space
            if tok.padding is None and tok.truncation is None and not prefix:
                return tok
            tok = copy.deepcopy(tok)  # the caller's tokenizer keeps its settings
            tok.no_padding()
            tok.no_truncation()
            if prefix:
                tok.pre_tokenizer.add_prefix_space = True
            return tok
    raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer; sequence labeling needs tokenizer.json")


def end_token_id(tok) -> int | None:
    """The id a `tokenizers.Tokenizer` ends every row with ([SEP], </s>): the last special token it
    adds around an empty text; None when it adds none."""
    ids = tok.encode("", add_special_tokens=True).ids
    return ids[-1] if ids else None


def encode_words(tokenizer, sentences: list[list[str]], max_length: int) -> list[EncodedWords]:
    """Pre-split sentences -> ids and word starts; over-long ones keep their first
    max_length - 1 sub-words plus [SEP]. Only the first max_length - 2 words can start inside
    the limit, so only they are encoded: a document of a million words costs what its head does."""
    tok = backend(tokenizer, words=True)
    sep = end_token_id(tok)
    cap = max(max_length - 2, 0)
    heads = [words[:cap] for words in sentences]
    out = []
    for words, head, enc in zip(sentences, heads, tok.encode_batch(heads, is_pretokenized=True, add_special_tokens=True)):
        ids = enc.ids
        starts = np.full(len(words), -1, dtype=np.int32)
        for pos, w in enumerate(enc.word_ids):
            if w is not None and starts[w] < 0:
                starts[w] = pos
        truncated = len(ids) > max_length or len(words) > len(head)
        if len(ids) > max_length:
            ids = ids[: max_length - 1] + [sep]
            starts[starts >= max_length - 1] = -1
        out.append(EncodedWords(np.asarray(ids, dtype=np.int32), starts, truncated))
    return out


def as_words(value) -> list[str] | None:
    """One cell of a words column -> list of str, or None when it is not a list of strings."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(w, str) for w in value):
        return None
    return list(value)
