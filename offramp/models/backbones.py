"""Backbone adapters: what offramp needs from each BERT-family encoder, answered with the stock
transformers modules (or, in stage actors, `offramp.models.lean`'s torch-only ones under the same
names), chosen by the config's `model_type`.

An adapter names the stock `*PreTrainedModel` base (weight init, and the attribute the stock task
heads keep the encoder under, so a fine-tuned `*ForSequenceClassification` loads by name) and the
stock base model, and answers:
  embed: token ids -> the (B, T, H) states the first layer reads;
  layers: the stock layer list, each called as `layer(hidden, mask)`;
  the stock sequence-classification head, built under its stock names, read on a (B, 1, H) pooled
    state (every stock head reads position 0, so [CLS] and mean pooling feed the same head);
  the pieces of a layer the token task's sparse layer runs for some tokens only.

Each adapter comes in two kinds. The stock one (`BACKBONES`) builds transformers' modules, imported
on first use, for training, calibration and anything that loads a checkpoint with `from_pretrained`.
The lean one (`LEAN_BACKBONES`) builds `offramp.models.lean`'s torch-only modules under the same
names, for the stage actors, whose processes then never import transformers' modeling code.

Leaf to root: `Projections` -> `BertBackbone` (BERT; RoBERTa, XLM-RoBERTa and ELECTRA reuse its
layer internals) -> `DistilBertBackbone` -> `BACKBONES`, `LEAN_BACKBONES` -> `get_backbone`.

Not adapted, and why: DeBERTa-v2 layers need the encoder's relative-position embeddings and
relative positions passed in per call (a shard would have to carry encoder state that is not a
layer); ModernBERT layers need rotary embeddings and alternating local/global masks from the model.
Both fail at start with the supported list.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from offramp.config import ConfigError
from offramp.models import lean

if TYPE_CHECKING:
    from transformers import PretrainedConfig


@dataclass
class Projections:
    """A layer's self-attention projections, for running its queries on some tokens only."""

    query: nn.Module
    key: nn.Module
    value: nn.Module
    heads: int
    head_dim: int
    scaling: float


class Embedder(nn.Module):
    """What runs before the first layer, as one module (ids -> states), which a first shard holds
    without holding the layers: the stock embeddings and, for ELECTRA, their projection."""

    def __init__(self, backbone: "BertBackbone", encoder: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.embeddings = encoder.embeddings
        self.project = getattr(encoder, "embeddings_project", None)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, H)
        return self.backbone.embed(self, input_ids)


class _PoolerHead(nn.Module):
    """BERT's stock sequence head over the model's own modules: pooler (dense + tanh at
    position 0) -> dropout -> classifier. Built per call, never stored on the model, so the
    weights keep only their stock names."""

    def __init__(self, pooler: nn.Module, dropout: nn.Module, classifier: nn.Module):
        super().__init__()
        self.pooler, self.dropout, self.classifier = pooler, dropout, classifier

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, 1, H) -> (B, C)
        return self.classifier(self.dropout(self.pooler(pooled)))


class _PreClassifierHead(nn.Module):
    """DistilBERT's stock sequence head: position 0 -> pre_classifier -> ReLU -> dropout -> classifier."""

    def __init__(self, pre: nn.Module, dropout: nn.Module, classifier: nn.Module):
        super().__init__()
        self.pre, self.dropout, self.classifier = pre, dropout, classifier

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, 1, H) -> (B, C)
        return self.classifier(self.dropout(torch.relu(self.pre(pooled[:, 0]))))


class BertBackbone:
    """BERT: `bert.embeddings`, `bert.encoder.layer`, and the stock head `bert.pooler` +
    `dropout` + `classifier`."""

    model_type = "bert"
    name = "Bert"
    prefix = "bert"  # the stock *PreTrainedModel's base_model_prefix
    stock_module = "transformers.models.bert.modeling_bert"
    head_act = None  # the stock `*ClassificationHead`'s activation, where the backbone has one

    def __init__(self, lean: bool = False):
        self.lean = lean

    def stock(self, name: str) -> type:
        """A class of the backbone's transformers modeling module, imported on first use."""
        return getattr(importlib.import_module(self.stock_module), name)

    @property
    def pretrained(self) -> type:
        """The base class of this adapter's model classes."""
        return lean.LeanModel if self.lean else self.stock(f"{self.name}PreTrainedModel")

    def build(self, config: PretrainedConfig, sequence: bool) -> nn.Module:
        """The base model; BERT's sequence head needs its pooler."""
        if self.lean:
            return lean.Encoder(config, pooler=sequence)
        return self.stock("BertModel")(config, add_pooling_layer=sequence)

    def layer_mask(self, config: PretrainedConfig, hidden: torch.Tensor, mask2d: torch.Tensor, padded: bool | None = None):
        """The mask each encoder layer expects for right-padded rows, built as the stock base model
        builds it (the lean layers take SDPA's own).

        `padded`: whether any row of `hidden` is shorter than its width, when the caller knows
        it from the host's lengths. Left to transformers (None), SDPA's mask is dropped only
        after reading the whole mask back from the device (a host sync); told, no read."""
        if self.lean:
            return lean.key_padding_mask(mask2d, padded)
        from transformers.masking_utils import create_bidirectional_mask  # the stock path only

        if padded is None:
            return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask2d)
        # no padding: the mask a stock model builds from an all-ones mask; padding: no skip to test for
        return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask2d if padded else None,
                                         allow_is_bidirectional_skip=not padded)

    def classification_head(self, config: PretrainedConfig) -> nn.Module:
        """RoBERTa's and ELECTRA's stock `*ClassificationHead` (dense, act, out_proj at position 0)."""
        if self.lean:
            return lean.ClassificationHead(config.hidden_size, config.num_labels, self.head_act)
        return self.stock(f"{self.name}ClassificationHead")(config)

    def dropout(self, config: PretrainedConfig) -> float:
        """Dropout before the exit heads and the token classifier (training only)."""
        p = getattr(config, "classifier_dropout", None)
        return config.hidden_dropout_prob if p is None else p

    def ffn_width(self, config: PretrainedConfig) -> int:
        """The feed-forward block's inner width (what sizes a layer's activations)."""
        return config.intermediate_size

    def embed(self, modules: Embedder, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, H)
        """Token ids -> the states the first layer reads (token types all 0: one text per row)."""
        return modules.embeddings(input_ids=input_ids)

    def layers(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.encoder.layer

    def add_sequence_head(self, model: nn.Module, config: PretrainedConfig) -> None:
        """The stock sequence head's modules, set on `model` under their stock names."""
        model.dropout = nn.Dropout(self.dropout(config))
        model.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def sequence_head(self, model: nn.Module) -> nn.Module:
        """(B, 1, H) pooled state -> (B, C) logits through the stock head's modules."""
        return _PoolerHead(model.base_model.pooler, model.dropout, model.classifier)

    def projections(self, layer: nn.Module) -> Projections:
        sa = layer.attention.self
        return Projections(sa.query, sa.key, sa.value, sa.num_attention_heads, sa.attention_head_size, sa.scaling)

    def finish(self, layer: nn.Module, context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(N, H) attention context and layer input -> (N, H) layer output: the attention output
        (dense + residual + LayerNorm), then the feed-forward block."""
        a = layer.attention.output(context, x)
        return layer.output(layer.intermediate(a), a)


class RobertaBackbone(BertBackbone):
    """RoBERTa: BERT's layers; positions count from `pad_token_id + 1`; the stock head is a
    `RobertaClassificationHead` named `classifier` (dense, tanh, out_proj at <s>)."""

    model_type = "roberta"
    name = "Roberta"
    prefix = "roberta"
    stock_module = "transformers.models.roberta.modeling_roberta"
    head_act = staticmethod(torch.tanh)

    def build(self, config: PretrainedConfig, sequence: bool) -> nn.Module:
        if self.lean:
            return lean.Encoder(config, pooler=False)
        return self.stock(f"{self.name}Model")(config, add_pooling_layer=False)  # the stock task models have no pooler

    def embed(self, modules: Embedder, input_ids: torch.Tensor) -> torch.Tensor:
        # Stock RoBERTa derives positions from the ids (pad tokens stay at padding_idx). Rows are
        # right-padded here, so real tokens get exactly the stock positions whatever the pad id;
        # padding positions are masked out of every layer.
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device) + modules.embeddings.padding_idx + 1  # (T,)
        return modules.embeddings(input_ids=input_ids, position_ids=pos[None, :].expand_as(input_ids))

    def add_sequence_head(self, model: nn.Module, config: PretrainedConfig) -> None:
        model.classifier = self.classification_head(config)

    def sequence_head(self, model: nn.Module) -> nn.Module:
        return model.classifier


class XLMRobertaBackbone(RobertaBackbone):
    model_type = "xlm-roberta"
    name = "XLMRoberta"
    stock_module = "transformers.models.xlm_roberta.modeling_xlm_roberta"


class ElectraBackbone(BertBackbone):
    """ELECTRA's discriminator: BERT's layers after an optional embedding projection; the stock
    head is an `ElectraClassificationHead` named `classifier` (dense, GELU, out_proj at [CLS])."""

    model_type = "electra"
    name = "Electra"
    prefix = "electra"
    stock_module = "transformers.models.electra.modeling_electra"
    head_act = staticmethod(F.gelu)

    def build(self, config: PretrainedConfig, sequence: bool) -> nn.Module:
        return lean.Encoder(config, pooler=False) if self.lean else self.stock("ElectraModel")(config)

    def embed(self, modules: Embedder, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = modules.embeddings(input_ids=input_ids)  # (B, T, E)
        return hidden if modules.project is None else modules.project(hidden)  # (B, T, H): E != H projects

    def add_sequence_head(self, model: nn.Module, config: PretrainedConfig) -> None:
        model.classifier = self.classification_head(config)

    def sequence_head(self, model: nn.Module) -> nn.Module:
        return model.classifier


class DistilBertBackbone(BertBackbone):
    """DistilBERT: `distilbert.transformer.layer` (q_lin/k_lin/v_lin/out_lin, sa_layer_norm, ffn,
    output_layer_norm); the stock head is `pre_classifier` + ReLU + `dropout` + `classifier`."""

    model_type = "distilbert"
    name = "DistilBert"
    prefix = "distilbert"
    stock_module = "transformers.models.distilbert.modeling_distilbert"

    def build(self, config: PretrainedConfig, sequence: bool) -> nn.Module:
        return lean.DistilEncoder(config) if self.lean else self.stock("DistilBertModel")(config)

    def dropout(self, config: PretrainedConfig) -> float:
        return config.dropout

    def ffn_width(self, config: PretrainedConfig) -> int:
        return config.hidden_dim

    def layers(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.transformer.layer

    def add_sequence_head(self, model: nn.Module, config: PretrainedConfig) -> None:
        model.pre_classifier = nn.Linear(config.dim, config.dim)
        model.classifier = nn.Linear(config.dim, config.num_labels)
        model.dropout = nn.Dropout(config.seq_classif_dropout)

    def sequence_head(self, model: nn.Module) -> nn.Module:
        return _PreClassifierHead(model.pre_classifier, model.dropout, model.classifier)

    def projections(self, layer: nn.Module) -> Projections:
        sa = layer.attention
        return Projections(sa.q_lin, sa.k_lin, sa.v_lin, sa.n_heads, sa.attention_head_size, sa.scaling)

    def finish(self, layer: nn.Module, context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a = layer.sa_layer_norm(layer.attention.out_lin(context) + x)
        return layer.output_layer_norm(layer.ffn(a) + a)


_ADAPTERS = (BertBackbone, RobertaBackbone, XLMRobertaBackbone, ElectraBackbone, DistilBertBackbone)
BACKBONES = {a.model_type: a() for a in _ADAPTERS}
LEAN_BACKBONES = {a.model_type: a(lean=True) for a in _ADAPTERS}


def get_backbone(model_type: str) -> BertBackbone:
    """The adapter for a config's `model_type`; an unsupported one fails naming the supported."""
    try:
        return BACKBONES[model_type]
    except KeyError:
        raise ConfigError(
            f"model_type {model_type!r} has no offramp backbone adapter; supported: {sorted(BACKBONES)} "
            "(DeBERTa-v2 and ModernBERT layers need position state from outside the layer: not adapted)"
        ) from None
