"""Tiny random checkpoints of every supported backbone, each with its own kind of tokenizer, built
in code: BERT, ELECTRA and DistilBERT with the MiniLM WordPiece vocabulary; RoBERTa with a byte-level
BPE and XLM-RoBERTa with a SentencePiece unigram model, both trained here on the test texts."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

import torch
from tokenizers import processors
from tokenizers.implementations import ByteLevelBPETokenizer, SentencePieceUnigramTokenizer
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
    DistilBertConfig,
    ElectraConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    XLMRobertaConfig,
)

from offramp.models.checkpoint import default_base_model
from tests.conftest import LABELS, NUM_LAYERS, SENTENCES, TAGS, TEXTS

BACKBONE_TYPES = ["bert", "roberta", "xlm-roberta", "electra", "distilbert"]
_CORPUS = TEXTS + [" ".join(s) for s in SENTENCES]
_SHARED = dict(num_hidden_layers=NUM_LAYERS, num_attention_heads=2, intermediate_size=37, initializer_range=0.5,
               max_position_embeddings=514)  # initializer 0.5: large random weights give confident, varied heads


def _bpe(directory: str) -> None:
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(_CORPUS, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok._tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    PreTrainedTokenizerFast(
        tokenizer_object=tok._tokenizer, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
    ).save_pretrained(directory)


def _sentencepiece(directory: str) -> None:
    tok = SentencePieceUnigramTokenizer()
    tok.train_from_iterator(_CORPUS, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok._tokenizer, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        pad_token="<pad>", unk_token="<unk>",
    ).save_pretrained(directory)


@functools.lru_cache(maxsize=None)
def tokenizer_dir(model_type: str) -> str:
    """A directory holding the backbone's kind of tokenizer (built once per session, removed at exit)."""
    directory = tempfile.mkdtemp(prefix=f"offramp-tok-{model_type}-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    if model_type in ("roberta",):
        _bpe(directory)
    elif model_type == "xlm-roberta":
        _sentencepiece(directory)
    else:
        AutoTokenizer.from_pretrained(default_base_model()).save_pretrained(directory)
    return directory


def backbone_tokenizer(model_type: str):
    return AutoTokenizer.from_pretrained(tokenizer_dir(model_type))


def backbone_config(model_type: str, labels=LABELS):
    """A tiny random config of the backbone, with `labels` as its classes."""
    vocab = len(backbone_tokenizer(model_type))
    fields = dict(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    if model_type == "bert":
        return BertConfig(vocab_size=vocab, hidden_size=32, **_SHARED, **fields)
    if model_type in ("roberta", "xlm-roberta"):
        cls = RobertaConfig if model_type == "roberta" else XLMRobertaConfig
        return cls(vocab_size=vocab, hidden_size=32, pad_token_id=1, bos_token_id=0, eos_token_id=2, **_SHARED, **fields)
    if model_type == "electra":  # embedding width 16 < hidden 32: the projection runs
        return ElectraConfig(vocab_size=vocab, embedding_size=16, hidden_size=32, **_SHARED, **fields)
    if model_type == "distilbert":
        return DistilBertConfig(vocab_size=vocab, dim=32, n_layers=NUM_LAYERS, n_heads=2, hidden_dim=37,
                                initializer_range=0.5, max_position_embeddings=514, **fields)
    raise ValueError(model_type)


def save_stock_model(model_type: str, directory, task: str = "sequence", seed: int = 0) -> torch.nn.Module:
    """A tiny random stock `*ForSequenceClassification` (or `*ForTokenClassification`) saved with
    `save_pretrained` (safetensors) and its tokenizer: a team's fine-tuned classifier. Returns it (eval)."""
    torch.manual_seed(seed)
    labels = LABELS if task == "sequence" else TAGS
    auto = AutoModelForSequenceClassification if task == "sequence" else AutoModelForTokenClassification
    model = auto.from_config(backbone_config(model_type, labels)).eval()
    model.save_pretrained(str(directory))
    backbone_tokenizer(model_type).save_pretrained(str(directory))
    return model
