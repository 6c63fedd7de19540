"""A contiguous shard of encoder layers of a sequence-labeling model, deciding exits per word.

The sequence-labeling counterpart of `offramp.exits.sequence_shard.LayerShard`, and the unit a token-mode
pipeline stage runs. Per-word state (exit layer, label, uncertainty) comes in and goes out
with the rows, so a word's window sees its halted neighbours across stage boundaries.
A row whose words have all halted (TOKEE) or whose sentence exited (SENTEE) leaves the
batch at once; the survivors are compacted and trimmed to the longest survivor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from offramp.models.token import (
    EarlyExitBertForTokenClassification, check_token_exit, normalized_entropy, sparse_layer, window_max, word_of_token,
)


@dataclass
class WordState:
    """Per row and word: where it halted (0 = active), its label and its latest uncertainty."""

    exit_layer: torch.Tensor  # (B, W) int64
    label: torch.Tensor  # (B, W) int64; -1 = no prediction yet
    uncertainty: torch.Tensor  # (B, W) float32; 1 (uniform) before any head saw the word

    @classmethod
    def fresh(cls, B: int, W: int, device=None) -> "WordState":
        return cls(
            torch.zeros(B, W, dtype=torch.long, device=device),
            torch.full((B, W), -1, dtype=torch.long, device=device),
            torch.ones(B, W, dtype=torch.float32, device=device),
        )


@dataclass
class TokenShardOutput:
    words: WordState  # (B, W) every input row's words after this shard
    row_exit: torch.Tensor  # (B,) int64: layer at which the row finished here; 0 = still running
    survivors: torch.Tensor  # (S,) int64 rows still running
    hidden: torch.Tensor  # (S, T', H) their states (halted tokens' frozen states included)
    lengths: torch.Tensor  # (S,)
    token_layers: torch.Tensor  # (B,) int64 tokens computed as queries, summed over this shard's layers


class TokenShard(nn.Module):
    """Layers [start, end) (0-based, end exclusive) of a token model with their token heads."""

    def __init__(
        self,
        model: EarlyExitBertForTokenClassification,
        start: int,
        end: int,
        mode: str | None = None,
        thresholds: dict[int, float] | None = None,
        window: int | None = None,
        pool: str | None = None,
        exits_enabled: bool = True,
    ):
        super().__init__()
        if not 0 <= start < end <= model.num_layers:
            raise ValueError(f"shard [{start}, {end}) outside the model's {model.num_layers} layers")
        cfg = model.config
        self.start, self.end, self.num_layers = start, end, model.num_layers
        self.model_config = cfg
        self.embeddings = model.bert.embeddings if start == 0 else None
        self.layers = nn.ModuleList(model.bert.encoder.layer[start:end])
        self.head_layers = [l for l in model.exit_layers if start < l <= end]
        self.heads = nn.ModuleDict(
            {str(l): model.classifier if l == model.num_layers else model.exit_heads[str(l)] for l in self.head_layers}
        )
        self.mode = mode or cfg.token_exit_mode
        self.pool = pool or cfg.sentence_pool
        self.window = cfg.exit_window if window is None else int(window)
        check_token_exit(self.mode, self.pool, self.window)
        stored = model.thresholds_by_layer()
        self.thresholds = {l: float((thresholds or stored).get(l, stored[l])) for l in self.head_layers}
        self.exits_enabled = exits_enabled

    def _layer(self, offset: int, hidden, real, active):
        """Layer `offset` on the active tokens; the stock layer when every real token is active
        (the same kernels as the full model: parity when nothing halts is exact)."""
        layer = self.layers[offset]
        if torch.equal(active, real):
            mask = create_bidirectional_mask(config=self.model_config, inputs_embeds=hidden, attention_mask=real)
            return layer(hidden, mask)
        return sparse_layer(layer, hidden, active, real)

    @torch.inference_mode()
    def forward(
        self,
        lengths: torch.Tensor,  # (B,) tokens per row
        starts: torch.Tensor,  # (B, W) first sub-word position of each word; -1 = untagged (padding, truncated)
        words: WordState | None = None,  # from earlier shards; fresh when None
        input_ids: torch.Tensor | None = None,  # (B, T) when this shard holds the embeddings
        hidden: torch.Tensor | None = None,  # (B, T, H) otherwise
    ) -> TokenShardOutput:
        if (input_ids is None) == (hidden is None):
            raise ValueError("pass input_ids (first shard) or hidden (later shards), not both")
        if input_ids is not None:
            if self.embeddings is None:
                raise ValueError(f"shard [{self.start}, {self.end}) has no embeddings; pass hidden states")
            hidden = self.embeddings(input_ids=input_ids)  # (B, T, H)
        hidden = hidden.to(next(self.layers.parameters()).dtype)
        B, device = hidden.shape[0], hidden.device
        lengths, starts = lengths.to(device), starts.to(device)
        if starts.shape[1] == 0:  # no row has a word: one untagged column keeps the shapes simple
            starts = torch.full((B, 1), -1, dtype=torch.long, device=device)
            words = None
        W = starts.shape[1]
        words = WordState.fresh(B, W, device) if words is None else WordState(*(x.to(device).clone() for x in vars(words).values()))
        valid_all = starts >= 0  # (B, W)
        row_exit = torch.zeros(B, dtype=torch.long, device=device)
        token_layers = torch.zeros(B, dtype=torch.long, device=device)
        alive = torch.arange(B, device=device)  # (S,)
        st, valid = starts, valid_all
        exit_layer, label, unc = words.exit_layer[alive], words.label[alive], words.uncertainty[alive]

        for offset in range(len(self.layers)):
            number = self.start + offset + 1
            T = hidden.shape[1]
            real = torch.arange(T, device=device)[None, :] < lengths[:, None]  # (S, T)
            owner = word_of_token(st, lengths, T)  # (S, T) word of each token, -1 = special
            word_active = valid & (exit_layer == 0)  # (S, W)
            if self.mode == "token":
                # a sub-word follows its word; [CLS]/[SEP] run while any word of the row does
                tok_word_active = torch.gather(word_active, 1, owner.clamp(min=0)) & (owner >= 0)
                active = real & (tok_word_active | ((owner < 0) & word_active.any(1, keepdim=True)))
            else:
                active = real
            hidden = self._layer(offset, hidden, real, active)
            token_layers[alive] += active.sum(1)
            if number not in self.thresholds:
                continue
            # the head reads each active word's first sub-word
            r, w = word_active.nonzero(as_tuple=True)  # (N,), (N,)
            logits = self.heads[str(number)](hidden[r, st[r, w]]).float()  # (N, C)
            label[r, w] = logits.argmax(-1)
            unc[r, w] = normalized_entropy(logits)
            last = number == self.num_layers
            if last or not self.exits_enabled:
                halt = word_active & last
            elif self.mode == "token":
                halt = word_active & (window_max(unc, valid, self.window) < self.thresholds[number])
            else:
                u = torch.where(valid, unc, torch.zeros_like(unc))
                score = u.max(1).values if self.pool == "max" else u.sum(1) / valid.sum(1).clamp(min=1)  # (S,)
                halt = word_active & (score < self.thresholds[number])[:, None]
            exit_layer[halt] = number
            done = ~(valid & (exit_layer == 0)).any(1)  # (S,) every word of the row has halted
            words.exit_layer[alive], words.label[alive], words.uncertainty[alive] = exit_layer, label, unc
            if done.any():
                row_exit[alive[done]] = number
                keep = ~done
                alive, lengths, hidden, st, valid = alive[keep], lengths[keep], hidden[keep], st[keep], valid[keep]
                exit_layer, label, unc = exit_layer[keep], label[keep], unc[keep]
                if hidden.shape[0] == 0:
                    break
                hidden = hidden[:, : int(lengths.max())]  # trim padding to the longest survivor

        return TokenShardOutput(words, row_exit, alive, hidden, lengths, token_layers)
