"""Early exit for sequence labeling (Li et al., ACL 2021, arXiv 2105.13878).

Leaf to root: the uncertainty and window criterion -> `sparse_layer` (a stock
encoder layer run with only some tokens as queries) -> `EarlyExitTokenModel` (a
stock base model + the stock token-classification head, `dropout` + `classifier`,
so `AutoModelForTokenClassification` loads the same full-depth model from our
directory, plus a linear token head after every internal exit layer) ->
`TOKEN_CLASSES`, that mixin over each backbone adapter's stock `*PreTrainedModel`.
`LEAN_TOKEN_CLASSES` puts the same mixin over `offramp.models.lean` (torch-only modules under the
stock names): what stage actors load (`offramp.models.checkpoint.load_stage_model`).

Words are tagged at their first sub-word. Two exit modes share one model:
  sentence (SENTEE): a sentence leaves when the max (or mean) of its words'
    normalized uncertainty is below the layer's threshold;
  token (TOKEE): a word halts when the uncertainty max-pooled over a window of
    its neighbours is below the threshold. A halted word keeps its last hidden
    state; later layers still read it as keys and values, but compute queries,
    attention output and the feed-forward block only for active tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from offramp.config import check_token_exit
from offramp.models.backbones import BACKBONES, BertBackbone
from offramp.models.base import TOKEN, ExitLayersMixin, ModelClasses, init_exit_config
from offramp.policies import check_word_policy, get_policy

if TYPE_CHECKING:
    from transformers import PretrainedConfig

IGNORE = -100  # label of positions that are not a word's first sub-word (CE ignore_index)


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(..., C) -> (...,) entropy of the softmax over log C: 0 = certain, 1 = uniform."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(logits.shape[-1])


def window_max(u: torch.Tensor, valid: torch.Tensor, window: int) -> torch.Tensor:
    """(B, W) word uncertainties -> (B, W) max over words [w - window, w + window] of the row.

    Invalid (padding) words count as certain, so a sentence's last word looks only at real
    neighbours."""
    if window == 0:
        return u
    x = torch.where(valid, u, torch.zeros_like(u))[:, None, :]  # (B, 1, W)
    return F.max_pool1d(F.pad(x, (window, window), value=0.0), 2 * window + 1, stride=1)[:, 0]


def word_of_token(starts: torch.Tensor, lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, W) first sub-word positions (-1 = untagged word), (B,) lengths -> (B, T) word index of each
    token, -1 for [CLS], [SEP] and padding. A word owns the positions from its start to the next start."""
    pos = torch.arange(T, device=starts.device)  # (T,)
    valid = starts >= 0  # (B, W)
    owns = (pos[None, :, None] >= starts[:, None, :]) & valid[:, None, :]  # (B, T, W)
    idx = torch.arange(starts.shape[1], device=starts.device)
    none = torch.full((*owns.shape[:2], 1), -1, dtype=torch.long, device=starts.device)  # a row may have no words
    w = torch.cat([none, torch.where(owns, idx, -1)], -1).max(-1).values  # (B, T)
    special = (pos[None, :] == 0) | (pos[None, :] >= (lengths[:, None] - 1))  # [CLS], [SEP], padding
    return torch.where(special, -1, w)


def sparse_layer(layer: nn.Module, hidden: torch.Tensor, active: torch.Tensor, keys: torch.Tensor,
                 backbone: BertBackbone = BACKBONES["bert"]) -> torch.Tensor:
    """One encoder layer of `backbone` where only `active` tokens are updated.

    hidden (B, T, H); active (B, T) bool: tokens computed as queries; keys (B, T) bool: tokens
    attended to (every real token, halted ones with their frozen states). Keys and values are
    projected for all tokens (each layer has its own projections); the query, the attention
    output and the feed-forward block run on the N active tokens only, packed flat. Inactive
    positions come back unchanged (bit for bit)."""
    sa = backbone.projections(layer)
    Bn, T, H = hidden.shape
    nh, d = sa.heads, sa.head_dim
    b, t = active.nonzero(as_tuple=True)  # (N,), (N,)
    x = hidden[b, t]  # (N, H)
    k = sa.key(hidden).view(Bn, T, nh, d).transpose(1, 2)  # (B, nh, T, d)
    v = sa.value(hidden).view(Bn, T, nh, d).transpose(1, 2)  # (B, nh, T, d)
    slot = (active.cumsum(1) - 1)[b, t]  # (N,) each active token's place among its row's active ones
    A = int(active.sum(1).max())
    q = hidden.new_zeros(Bn, A, H)
    q[b, slot] = sa.query(x)
    q = q.view(Bn, A, nh, d).transpose(1, 2)  # (B, nh, A, d)
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :], scale=sa.scaling)  # (B, nh, A, d)
    ctx = ctx.transpose(1, 2).reshape(Bn, A, H)[b, slot]  # (N, H)
    y = backbone.finish(layer, ctx, x)  # (N, H) attention output, then the feed-forward block
    out = hidden.clone()
    out[b, t] = y
    return out


@dataclass
class TokenExitOutput:
    """Full-depth forward: every head's token logits, in `exit_layers` order."""

    logits: torch.Tensor  # (B, T, C) final layer
    exit_logits: tuple[torch.Tensor, ...]  # one (B, T, C) per exit layer, last == logits
    loss: torch.Tensor | None = None


class EarlyExitTokenModel(ExitLayersMixin):
    """Stock base model + final token classifier + a token head after each internal exit layer.

    Config fields it adds to the backbone's config (saved in config.json):
      task: "token" (what tells the pipeline to run sequence labeling).
      exit_layers / exit_thresholds: as for classification; thresholds are word uncertainties
        in [0, 1] (a word or sentence leaves when below).
      exit_policy: a per-word policy (entropy: normalized entropy; max_prob: 1 - top probability).
      token_exit_mode: "token" (TOKEE) or "sentence" (SENTEE).
      sentence_pool: "max" or "mean" of the words' uncertainty (SENTEE).
      exit_window: TOKEE's window half-width in words (0 = each word alone).
    """

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        config.task = TOKEN
        # a word's uncertainty in [0, 1] from a per-word policy (normalized entropy: the paper's)
        init_exit_config(config, "entropy", "tokee", default_threshold=0.1)
        check_word_policy(get_policy(config.exit_policy))
        config.token_exit_mode = getattr(config, "token_exit_mode", None) or "token"
        config.sentence_pool = getattr(config, "sentence_pool", None) or "max"
        config.exit_window = int(getattr(config, "exit_window", 2))
        check_token_exit(config.token_exit_mode, config.sentence_pool, config.exit_window)

        setattr(self, self.base_model_prefix, self.adapter.build(config, sequence=False))
        self.dropout = nn.Dropout(self.adapter.dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.exit_heads = nn.ModuleDict(
            {str(l): nn.Linear(config.hidden_size, config.num_labels) for l in config.exit_layers[:-1]}
        )
        self.post_init()

    def head(self, layer: int, states: torch.Tensor) -> torch.Tensor:
        """The token head after `layer` (1-based) on states (..., H) -> logits (..., C)."""
        h = self.classifier if layer == self.num_layers else self.exit_heads[str(layer)]
        return h(self.dropout(states))

    def layer_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """L+1 x (B, T, H): embeddings, then every layer's output, all tokens computed."""
        hidden = self.embed(input_ids)  # (B, T, H)
        ext = self.layer_mask(hidden, attention_mask)
        states = [hidden]
        for layer in self.encoder_layers:
            states.append(layer(states[-1], ext))
        return states

    def forward(self, input_ids, attention_mask=None, labels=None, layer_weights=None, **_) -> TokenExitOutput:
        """Full depth, every head. Loss with `labels` (B, T) (IGNORE off word starts): the
        heads' CE averaged with weight l for layer l (deeper heads count more, as the paper's
        joint fine-tuning), or with `layer_weights` when given."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        states = self.layer_states(input_ids, attention_mask)
        exit_logits = tuple(self.head(l, states[l]) for l in self.exit_layers)
        loss = None
        if labels is not None:
            w = layer_weights or [float(l) for l in self.exit_layers]
            C = self.config.num_labels
            losses = [F.cross_entropy(lg.reshape(-1, C).float(), labels.reshape(-1), ignore_index=IGNORE) for lg in exit_logits]
            loss = sum(wi * li for wi, li in zip(w, losses)) / sum(w)
        return TokenExitOutput(exit_logits[-1], exit_logits, loss)


TOKEN_CLASSES = ModelClasses(EarlyExitTokenModel, "TokenClassification", globals())
LEAN_TOKEN_CLASSES = ModelClasses(EarlyExitTokenModel, "TokenClassification", globals(), lean=True)


def __getattr__(name: str) -> type:
    """`EarlyExit<Backbone>ForTokenClassification` (and `Lean...`), made on first use."""
    return (LEAN_TOKEN_CLASSES if name.startswith("Lean") else TOKEN_CLASSES).by_name(name)
