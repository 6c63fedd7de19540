"""Exit heads: the small classifiers after internal layers, the final head, and the signals
some mechanisms add.

Leaf to root: `masked_mean` -> `ExitHead` (pool, dense + tanh, classify) and `FinalHead` (the
stock pooler + classifier, reading the pooling the backbone was trained with) -> `HeadOutput`
(a head's logits with the mechanism's exit signal, e.g. DE³ prototype distances).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from offramp.models.modules import PrototypeNet


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H) mean over each row's real tokens."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


class ExitHead(nn.Module):
    """Off-ramp: mean-pool the layer's tokens, dense + tanh, classify.

    DeeBERT pools the [CLS] state; on MiniLM the intermediate [CLS] states carry
    almost no class signal (heads trained on them learned only the label prior,
    0.11 dev accuracy at layers 1-4), while mean-pooled states do (a frozen probe
    reaches 0.63 at layer 1). Pooling is split from classification so training can
    cache pooled features.
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.pool = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, C)
        return self.classifier(self.dropout(torch.tanh(self.pool(pooled))))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, T, H), (B, T) -> (B, C)
        return self.classify(masked_mean(hidden, mask))


FINAL_POOLINGS = ("cls", "mean")
"""How the final head pools the last layer: the [CLS] state (BERT classifiers) or the mean of
the real tokens (sentence-transformers checkpoints such as all-MiniLM-L6-v2)."""


class FinalHead(nn.Module):
    """The full-depth head: the backbone's stock sequence head (BERT: pooler dense + tanh,
    classifier) on the [CLS] state or on the mean of the row's tokens. Every stock head reads
    position 0 of what it is given, so it is given a (B, 1, H) pooled state. It wraps the
    model's own modules (no parameters of its own), so the weights keep their stock names."""

    def __init__(self, head: nn.Module, pooling: str):
        super().__init__()
        if pooling not in FINAL_POOLINGS:
            raise ValueError(f"final_pooling {pooling!r}: use one of {FINAL_POOLINGS}")
        self.head, self.pooling = head, pooling

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, T, H), (B, T) -> (B, 1, H)
        """What the stock head reads: the [CLS] state or the mean of the row's tokens."""
        return hidden[:, :1] if self.pooling == "cls" else masked_mean(hidden, mask)[:, None]

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, T, H), (B, T) -> (B, C)
        return self.head(self.pool(hidden, mask))


@dataclass
class HeadOutput:
    """One exit head's view of its rows: logits, and the mechanism's own exit signal if it has one."""

    logits: torch.Tensor  # (B, C)
    signal: torch.Tensor | None = None  # (B, A): DE³ prototype distances (A = C), BERxiT P(right) (A = 1)


def exit_signal(module: nn.Module | None, pooled: torch.Tensor) -> torch.Tensor | None:
    """(B, H) pooled state -> the mechanism's (B, A) exit signal: prototype distances (B, C),
    the exit predictor's P(right) (B, 1), or None for mechanisms without one."""
    if module is None:
        return None
    if isinstance(module, PrototypeNet):
        return module.distances(pooled)
    return module(pooled)[:, None]
