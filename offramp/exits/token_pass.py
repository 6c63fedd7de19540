"""An offline pass of a token model over encoded sentences through the real TokenShard:
each word's tag and exit layer, and the token-layers computed (training's threshold sweep
and the benchmark; `offramp.quality.token_scores` scores it); and every exit head's word
logits from one full-depth pass (`word_head_logits`: per-layer thresholds are shaped on them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from offramp.exits.token_shard import TokenShard
from offramp.text.words import EncodedWords


@dataclass
class TagPass:
    """Per sentence: the predicted label id and exit layer of each word, and the cost."""

    labels: list[np.ndarray]  # (W,) int64 label ids; -1 = untagged word
    exit_layers: list[np.ndarray]  # (W,) layer each word halted at; 0 = untagged
    token_layers: np.ndarray  # (N,) tokens computed as queries, summed over layers
    tokens: np.ndarray  # (N,) tokens per sentence


def layer_thresholds(exit_layers: list[int], threshold: float | Sequence[float] | None) -> dict[int, float]:
    """{exit layer: threshold} from one threshold, one per exit layer, or None (never exit: -1)."""
    if threshold is None:
        return {l: -1.0 for l in exit_layers}
    if isinstance(threshold, (int, float)):
        return {l: float(threshold) for l in exit_layers}
    if len(threshold) != len(exit_layers):
        raise ValueError(f"{len(threshold)} thresholds for {len(exit_layers)} exit layers")
    return {l: float(t) for l, t in zip(exit_layers, threshold)}


def pad(encoded: list[EncodedWords]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sentences -> ids (B, T), lengths (B,), starts (B, W) padded with -1."""
    T = max(len(e.ids) for e in encoded)
    W = max(1, max(len(e.starts) for e in encoded))
    ids = np.zeros((len(encoded), T), dtype=np.int64)
    starts = np.full((len(encoded), W), -1, dtype=np.int64)
    for i, e in enumerate(encoded):
        ids[i, : len(e.ids)] = e.ids
        starts[i, : len(e.starts)] = e.starts
    lengths = np.array([len(e.ids) for e in encoded], dtype=np.int64)
    return torch.from_numpy(ids), torch.from_numpy(lengths), torch.from_numpy(starts)


def tag_pass(model, encoded: list[EncodedWords], mode: str, threshold: float | Sequence[float] | None,
             window: int | None = None, pool: str | None = None, max_tokens: int = 4096) -> TagPass:
    """Run the whole model as one shard over `encoded`, longest-similar sentences batched
    together; threshold: one for every head, one per exit head (in `exit_layers` order), or
    None = never exit early (full depth)."""
    L = model.num_layers
    thresholds = layer_thresholds(model.exit_layers, threshold)
    shard = TokenShard(model, 0, L, mode=mode, thresholds=thresholds, window=window, pool=pool).eval()
    device = next(model.parameters()).device  # a GPU when the model is on one
    n = len(encoded)
    labels, layers = [None] * n, [None] * n
    token_layers = np.zeros(n, dtype=np.int64)
    order = np.argsort([len(e.ids) for e in encoded], kind="stable")
    i = 0
    while i < n:
        j = i + 1
        while j < n and (j + 1 - i) * len(encoded[order[j]].ids) <= max_tokens:
            j += 1
        rows = order[i:j]
        ids, lengths, starts = pad([encoded[r] for r in rows])
        out = shard(lengths, starts, input_ids=ids.to(device))
        label, layer = out.words.label.cpu().numpy(), out.words.exit_layer.cpu().numpy()
        for k, r in enumerate(rows):
            w = len(encoded[r].starts)
            labels[r], layers[r] = label[k, :w], layer[k, :w]
        token_layers[rows] = out.token_layers.cpu().numpy()
        i = j
    tokens = np.array([len(e.ids) for e in encoded], dtype=np.int64)
    return TagPass(labels, layers, token_layers, tokens)


def word_logits(model, layer: int, h: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, W, C) the head after `layer` at each word's first sub-word."""
    idx = starts.clamp(min=0)[..., None].expand(-1, -1, h.shape[-1])
    return model.head(layer, torch.gather(h, 1, idx))


def word_head_logits(model, encoded: list[EncodedWords], batch: int = 64) -> list[np.ndarray]:
    """Per sentence the (K, W, C) word logits of every exit head, from one full-depth pass."""
    order = np.argsort([len(e.ids) for e in encoded], kind="stable")
    out = [None] * len(encoded)
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(order), batch):
            rows = order[i : i + batch]
            ids, lengths, starts = (t.to(device) for t in pad([encoded[r] for r in rows]))
            mask = (torch.arange(ids.shape[1], device=device)[None, :] < lengths[:, None]).long()
            states = model.layer_states(ids, mask)
            logits = torch.stack([word_logits(model, layer, states[layer], starts) for layer in model.exit_layers], 1)
            logits = logits.float().cpu().numpy()
            for k, r in enumerate(rows):
                out[r] = logits[k, :, : len(encoded[r].starts)]
    return out
