"""The encoders a stage runs, in torch alone: BERT-family modules under the stock module and
parameter names, so a checkpoint's safetensors fill them exactly, and a config read from
config.json without transformers.

Why: a stage actor's process spent 2.5-4 s of its start-up importing transformers' modeling code
(which pulls in torch.distributed, torch._dynamo, sympy and scipy.optimize) for modules that are
a few linear layers and an SDPA call (BENCHMARKS.md, "Start-up, split into its parts"). Training,
calibration and the driver keep the stock classes; `tests/offramp/models/test_lean.py` holds these
to the stock ones, output for output, on every supported backbone and both tasks.

Each module computes what its stock namesake computes in inference (no dropout, no cache, no
cross-attention), in the same order of operations. Leaf to root: `activation` -> `Embeddings`
-> `Layer` (BERT, RoBERTa, XLM-RoBERTa, ELECTRA) and `DistilLayer` -> `Encoder` /
`DistilEncoder` -> `ClassificationHead` (RoBERTa's and ELECTRA's stock sequence head) ->
`LeanModel` (what the early-exit mixins need of a `*PreTrainedModel`) -> `LeanConfig`, `read_config`
and `read_weights`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F


class NotLean(ValueError):
    """A checkpoint these modules do not cover; the stage runs the stock ones for it."""


# ---------------------------------------------------------------- activations


def _gelu_tanh_formula(x: torch.Tensor) -> torch.Tensor:
    """transformers' `gelu_new` (NewGELUActivation), as it writes it."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS = {  # config.json's hidden_act / activation -> the function transformers' ACT2FN applies
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": _gelu_tanh_formula,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def activation(name) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation a config names; an unknown one raises NotLean (the stage then runs the stock
    modules, which know every activation transformers has)."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise NotLean(f"activation {name!r} has no lean form; lean ones: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# ---------------------------------------------------------------- modules


class Linear(nn.Linear):
    """nn.Linear left uninitialized: every weight comes from the checkpoint. (Building on the meta
    device instead costs 1.4 s in a fresh process: its first op imports torch's decompositions.)"""

    def reset_parameters(self) -> None:
        pass


class Embedding(nn.Embedding):
    """nn.Embedding left uninitialized, as `Linear`."""

    def reset_parameters(self) -> None:
        pass


def attention(query: nn.Module, key: nn.Module, value: nn.Module, heads: int, scaling: float,
              hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, H) -> (B, T, H) attention context, as transformers' SDPA path computes it."""
    B, T, _ = hidden.shape
    q, k, v = (proj(hidden).view(B, T, heads, -1).transpose(1, 2) for proj in (query, key, value))  # (B, nh, T, d)
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)  # (B, nh, T, d)
    return ctx.transpose(1, 2).reshape(B, T, -1)


class Embeddings(nn.Module):
    """BERT's embeddings (RoBERTa's, XLM-RoBERTa's and ELECTRA's have the same parameters; ELECTRA's
    are `embedding_size` wide). DistilBERT's have no token types (`types=0`)."""

    def __init__(self, vocab: int, width: int, positions: int, types: int, eps: float, pad: int):
        super().__init__()
        self.padding_idx = pad  # RoBERTa's positions count from padding_idx + 1
        self.word_embeddings = Embedding(vocab, width)
        self.position_embeddings = Embedding(positions, width)
        if types:
            self.token_type_embeddings = Embedding(types, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, E); positions 0.. unless given; token type 0 (one text per row)."""
        T = input_ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device)[None, :]
        x = self.word_embeddings(input_ids)
        if hasattr(self, "token_type_embeddings"):
            x = x + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x + self.position_embeddings(position_ids))


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = hidden // heads
        self.scaling = self.attention_head_size ** -0.5
        self.query, self.key, self.value = (Linear(hidden, hidden) for _ in range(3))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return attention(self.query, self.key, self.value, self.num_attention_heads, self.scaling, hidden, mask)


class Residual(nn.Module):
    """dense -> + input -> LayerNorm: BERT's `BertSelfOutput` and `BertOutput`."""

    def __init__(self, width_in: int, hidden: int, eps: float):
        super().__init__()
        self.dense = Linear(width_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.self = SelfAttention(hidden, heads)
        self.output = Residual(hidden, hidden, eps)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int, act: str):
        super().__init__()
        self.dense = Linear(hidden, inner)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Layer(nn.Module):
    """BERT's encoder layer (RoBERTa, XLM-RoBERTa and ELECTRA use the same), called `layer(hidden, mask)`."""

    def __init__(self, config: LeanConfig):
        super().__init__()
        H, eps = config.hidden_size, config.layer_norm_eps
        self.attention = Attention(H, config.num_attention_heads, eps)
        self.intermediate = Intermediate(H, config.intermediate_size, config.hidden_act)
        self.output = Residual(config.intermediate_size, H, eps)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        a = self.attention.output(self.attention.self(hidden, mask), hidden)
        return self.output(self.intermediate(a), a)


class Pooler(nn.Module):
    """BERT's pooler: dense + tanh at position 0."""

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = Linear(hidden, hidden)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, H)
        return torch.tanh(self.dense(hidden[:, 0]))


class LayerList(nn.Module):
    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class Encoder(nn.Module):
    """BERT's base model: `embeddings`, `encoder.layer`, and where the stock one has them a
    `pooler` (BERT's sequence models) and `embeddings_project` (ELECTRA, embedding_size != hidden)."""

    def __init__(self, config: LeanConfig, pooler: bool):
        super().__init__()
        E = getattr(config, "embedding_size", None) or config.hidden_size
        self.embeddings = Embeddings(config.vocab_size, E, config.max_position_embeddings, config.type_vocab_size,
                                     config.layer_norm_eps, config.pad_token_id)
        if E != config.hidden_size:
            self.embeddings_project = Linear(E, config.hidden_size)
        self.encoder = LayerList([Layer(config) for _ in range(config.num_hidden_layers)])
        if pooler:
            self.pooler = Pooler(config.hidden_size)


class DistilAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.n_heads = heads
        self.attention_head_size = dim // heads
        self.scaling = self.attention_head_size ** -0.5
        self.q_lin, self.k_lin, self.v_lin, self.out_lin = (Linear(dim, dim) for _ in range(4))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.out_lin(attention(self.q_lin, self.k_lin, self.v_lin, self.n_heads, self.scaling, hidden, mask))


class FFN(nn.Module):
    def __init__(self, dim: int, inner: int, act: str):
        super().__init__()
        self.lin1, self.lin2 = Linear(dim, inner), Linear(inner, dim)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class DistilLayer(nn.Module):
    """DistilBERT's `TransformerBlock`; its LayerNorms' eps is fixed at 1e-12, as the stock one's."""

    def __init__(self, config: LeanConfig):
        super().__init__()
        D = config.dim
        self.attention = DistilAttention(D, config.n_heads)
        self.sa_layer_norm = nn.LayerNorm(D, eps=1e-12)
        self.ffn = FFN(D, config.hidden_dim, config.activation)
        self.output_layer_norm = nn.LayerNorm(D, eps=1e-12)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        a = self.sa_layer_norm(self.attention(hidden, mask) + hidden)
        return self.output_layer_norm(self.ffn(a) + a)


class DistilEncoder(nn.Module):
    """DistilBERT's base model: `embeddings` and `transformer.layer`."""

    def __init__(self, config: LeanConfig):
        super().__init__()
        self.embeddings = Embeddings(config.vocab_size, config.dim, config.max_position_embeddings, 0, 1e-12,
                                     config.pad_token_id)
        self.transformer = LayerList([DistilLayer(config) for _ in range(config.n_layers)])


class ClassificationHead(nn.Module):
    """RoBERTa's (tanh) and ELECTRA's (GELU) stock sequence head: dense -> act -> out_proj at position 0."""

    def __init__(self, hidden: int, labels: int, act):
        super().__init__()
        self.dense = Linear(hidden, hidden)
        self.out_proj = Linear(hidden, labels)
        self.act = act

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, C)
        return self.out_proj(self.act(self.dense(features[:, 0])))


def key_padding_mask(mask2d: torch.Tensor, padded: bool | None) -> torch.Tensor | None:
    """The mask SDPA takes for right-padded rows: (B, 1, 1, T) bool, True = attend; None when the
    caller knows no row is padded (SDPA's fastest kernels take no mask)."""
    return None if padded is False else mask2d.bool()[:, None, None, :]


class LeanModel(nn.Module):
    """What the early-exit mixins need of a stock `*PreTrainedModel` in inference: the config, the
    base model under the backbone's stock prefix, and no weight init (the checkpoint fills every
    weight)."""

    base_model_prefix = "bert"  # the backbone's, set on each class

    def __init__(self, config: LeanConfig):
        super().__init__()
        self.config = config

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix)

    def post_init(self) -> None:
        pass


# ---------------------------------------------------------------- config


# What transformers' config classes default to, for the fields these modules read (a config.json
# written by save_pretrained carries them all; a hand-written one may not).
# `test_lean.py::test_lean_defaults_are_transformers_defaults` holds them to the stock classes.
_BERT_DEFAULTS = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1, max_position_embeddings=512,
                      type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0, classifier_dropout=None,
                      is_decoder=False, add_cross_attention=False)
DEFAULTS = {
    "bert": _BERT_DEFAULTS,
    "roberta": {**_BERT_DEFAULTS, "vocab_size": 50265, "pad_token_id": 1},
    "xlm-roberta": {**_BERT_DEFAULTS, "pad_token_id": 1},
    "electra": {**_BERT_DEFAULTS, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024,
                "embedding_size": 128},
    "distilbert": dict(vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072, activation="gelu",
                       dropout=0.1, max_position_embeddings=512, pad_token_id=0, seq_classif_dropout=0.2),
}
ALIASES = {"distilbert": {"hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads"}}


class LeanConfig:
    """A model's config.json as attributes, with the stock defaults for absent fields, `id2label`
    keyed by int and `num_labels` from it, and DistilBERT's stock aliases (hidden_size -> dim, ...)."""

    def __init__(self, values: dict):
        model_type = values.get("model_type")
        if model_type not in DEFAULTS:
            raise NotLean(f"model_type {model_type!r} has no lean form")
        self.__dict__.update({**DEFAULTS[model_type], **values})
        self.id2label = {int(k): v for k, v in (values.get("id2label") or {0: "LABEL_0", 1: "LABEL_1"}).items()}
        self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def __getattr__(self, name: str):
        alias = ALIASES.get(self.__dict__.get("model_type"), {}).get(name)
        if alias is None:
            raise AttributeError(name)
        return self.__dict__[alias]


def _json_floats(obj: dict):
    """transformers writes non-finite floats in config.json as {"__float__": "-Infinity"}."""
    return float(obj["__float__"]) if obj.keys() == {"__float__"} else obj


def read_config(directory: str) -> LeanConfig:
    """A model directory's config.json as a `LeanConfig` (NotLean: these modules do not cover it)."""
    with open(os.path.join(directory, "config.json")) as f:
        config = LeanConfig(json.load(f, object_hook=_json_floats))
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise NotLean("a decoder or cross-attention config has no lean form")
    activation(getattr(config, "hidden_act", None) or getattr(config, "activation", None))
    return config


def read_weights(directory: str) -> dict[str, torch.Tensor]:
    """Every tensor of a directory's safetensors weights (one file, or shards listed in
    model.safetensors.index.json)."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for name in files:
        out.update(load_file(os.path.join(directory, name)))
    return out
