"""The small modules the papers add beside the backbone, kept out of the BERT layers.

Leaf to root: `SkipGate` (SmartBERT: should this row skip the next layer?),
`PrototypeNet` (DE³-BERT: a metric space with one prototype per class),
`ExitPredictor` (BERxiT: is this layer's prediction already right?).
Each reads a layer's states for one row at a time, so decisions are per row.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class SkipGate(nn.Module):
    """SmartBERT's skipping gate before a layer: P(skip) from the layer's input states.

    As in the paper's gate: project to a small width with tanh, one two-head self-attention
    over the row's tokens, read the [CLS] position, sigmoid. Only the [CLS] query is ever
    read, so only that query is computed (the keys and values still see every real token)."""

    def __init__(self, hidden_size: int, width: int = 128, heads: int = 2):
        super().__init__()
        if width % heads:
            raise ValueError(f"gate width {width} must divide into {heads} heads")
        self.heads, self.head_dim = heads, width // heads
        self.inp = nn.Linear(hidden_size, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.score = nn.Linear(width, 1)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, T, H), (B, T) -> (B,)
        x = torch.tanh(self.inp(hidden))  # (B, T, W)
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, T, W) each
        B, T, W = x.shape
        q = q[:, 0].view(B, self.heads, 1, self.head_dim)  # (B, h, 1, d): the [CLS] query only
        k = k.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, h, T, d)
        v = v.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, h, 1, T)
        att = att.masked_fill(~mask.bool()[:, None, None, :], float("-inf")).softmax(-1)
        cls = self.out((att @ v).reshape(B, W))  # (B, W)
        return torch.sigmoid(self.score(cls)).squeeze(-1)  # (B,)


class PrototypeNet(nn.Module):
    """DE³-BERT's prototypical network at one exit layer.

    A linear map of the layer's pooled state into a metric space, and one prototype per
    class there, kept as a moving average of the mapped training rows of that class.
    Distance is cosine distance (1 - cos), so the ratio of distances is scale-free."""

    def __init__(self, hidden_size: int, dim: int, num_classes: int):
        super().__init__()
        self.map = nn.Linear(hidden_size, dim)
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))  # (C, P), unit rows once trained

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, P) unit vectors
        return F.normalize(self.map(pooled), dim=-1)

    def distances(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, C) in [0, 2]
        return 1 - self.embed(pooled) @ F.normalize(self.prototypes, dim=-1).T

    @torch.no_grad()
    def update(self, embedded: torch.Tensor, labels: torch.Tensor, momentum: float) -> None:
        """Move each class's prototype toward the mean of its rows in this batch (the paper's update)."""
        for c in labels.unique():
            self.prototypes[c] = (1 - momentum) * self.prototypes[c] + momentum * embedded[labels == c].mean(0)


class ExitPredictor(nn.Module):
    """BERxiT's learning-to-exit module: one layer shared by all exits, P(this layer's prediction is right)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc = nn.Linear(hidden_size, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B,)
        return torch.sigmoid(self.fc(pooled)).squeeze(-1)
