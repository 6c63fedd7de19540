import numpy as np
from transformers import AutoTokenizer

from offramp import schema
from offramp.models.checkpoint import default_base_model
from offramp.tasks.sequence import tokenize_batch
from offramp.text.tokenize import load_tokenizer
from tests.conftest import TEXTS


def test_every_row_gets_a_status_and_bad_rows_no_tokens(model_dir):
    cells = np.array(["a fine text", None, "   ", b"\xff\xfe", b"bytes ok", 7, "word " * 400, "bad \ufffd"], dtype=object)
    out = tokenize_batch({"text": cells, "id": np.arange(8)}, load_tokenizer(model_dir), "text", max_length=32)
    # U+FFFD is valid Unicode (real descriptions hold it): only bytes that are not UTF-8 are undecodable
    assert list(out[schema.STATUS]) == ["ok", "null", "empty", "undecodable", "ok", "undecodable", "truncated", "ok"]
    assert [len(t) for t in out[schema.TOKENS]][1:4] == [0, 0, 0]
    assert out[schema.NUM_TOKENS][6] == 32  # truncated to max_length, [SEP] kept
    ids = np.frombuffer(out[schema.TOKENS][6], dtype=np.int32)
    assert ids[0] == 101 and ids[-1] == 102
    assert list(out["id"]) == list(range(8))  # rows keep their order and count


def test_reader_status_wins(model_dir):
    batch = {"text": np.array(["", "fine"], dtype=object), schema.READ_STATUS: np.array(["undecodable", ""], dtype=object)}
    out = tokenize_batch(batch, load_tokenizer(model_dir), "text", 32)
    assert list(out[schema.STATUS]) == ["undecodable", "ok"]


def test_fast_path_ids_equal_auto_tokenizer(model_dir):
    ours = load_tokenizer(model_dir)
    ref = AutoTokenizer.from_pretrained(model_dir)
    assert ours(TEXTS[:12])["input_ids"] == ref(TEXTS[:12])["input_ids"]


def test_a_huge_document_is_tokenized_from_its_head_with_the_same_ids(model_dir):
    """A 1 MB document keeps exactly the ids of tokenizing it whole and truncating, while the
    tokenizer reads only a bounded head of it."""
    from offramp.text.tokenize import CHARS_PER_TOKEN, encode_texts

    tok, seen = load_tokenizer(model_dir), []

    def recording(texts, **kw):
        seen.extend(len(t) for t in texts)
        return tok(texts, **kw)

    recording.sep_token_id = tok.sep_token_id
    huge = ("Library for reading and writing compressed archives. " * 20000)[: 1 << 20]
    sparse = " ".join(["x" * 150] * 40)  # long [UNK] words: the head holds too few tokens to decide
    [(ids, truncated), (sparse_ids, _)] = encode_texts(recording, [huge, sparse], 32)
    ref = AutoTokenizer.from_pretrained(model_dir)
    assert truncated and ids.tolist() == ref(huge, truncation=True, max_length=32)["input_ids"]
    assert max(seen[:2]) <= CHARS_PER_TOKEN * 32 < len(huge)
    assert sparse_ids.tolist() == ref(sparse, truncation=True, max_length=32)["input_ids"]


def test_ids_only_encoding_equals_the_shipped_tokenizer_on_awkward_text():
    """The tokenize step encodes without character offsets (encode_batch_fast): the ids must be
    AutoTokenizer's, also where normalizing moves characters (accents, CJK, control and
    zero-width characters, emoji, very long words)."""
    path = default_base_model()
    texts = TEXTS + [
        "Ünïcödé àccents — and “quotes” in a Debian description",
        "中文字符 mixed with latin: libfoo-dev 日本語",
        "tabs\tand\r\nnewlines\x00with a NUL and \u200bzero\u200dwidth",
        "emoji 🐧🐍 and a very " + "long" * 60 + " word",
        "",
        " leading and trailing spaces ",
    ]
    ours = load_tokenizer(path)
    assert ours._encode.__name__ == "encode_batch_fast"  # the path under test is the one taken
    assert ours(texts)["input_ids"] == AutoTokenizer.from_pretrained(path)(texts)["input_ids"]
