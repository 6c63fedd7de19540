"""What both kinds of layer shard share: a contiguous slice of the model's encoder layers with
the exit heads inside it, thresholds per head, and compaction of the rows that keep running.

A shard is the unit a pipeline stage runs; a one-stage layout is a shard of all layers.
`offramp.exits.sequence_shard` decides per row, `offramp.exits.token_shard` per word.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from offramp.exits.stage import to_device


class ShardBase(nn.Module):
    """Layers [start, end) (0-based, end exclusive) of an early-exit model, with its heads."""

    def __init__(self, model, start: int, end: int, thresholds: dict[int, float] | None, exits_enabled: bool):
        super().__init__()
        if not 0 <= start < end <= model.num_layers:
            raise ValueError(f"shard [{start}, {end}) outside the model's {model.num_layers} layers")
        self.start, self.end, self.num_layers = start, end, model.num_layers
        self.model_config = model.config
        self.adapter = model.adapter
        self.embeddings = model.embedder() if start == 0 else None
        self.layers = nn.ModuleList(model.encoder_layers[start:end])
        self.head_layers = [l for l in model.exit_layers if start < l <= end]
        stored = model.thresholds_by_layer()
        self.thresholds = {l: float((thresholds or stored).get(l, stored[l])) for l in self.head_layers}
        self.exits_enabled = exits_enabled

    def embed(self, input_ids: torch.Tensor | None, hidden: torch.Tensor | None) -> torch.Tensor:
        """The first shard embeds (B, T) token ids; later ones take (B, T, H) states. Either way
        the result is in the layers' dtype."""
        if (input_ids is None) == (hidden is None):
            raise ValueError("pass input_ids (first shard) or hidden (later shards), not both")
        if input_ids is not None:
            if self.embeddings is None:
                raise ValueError(f"shard [{self.start}, {self.end}) has no embeddings; pass hidden states")
            hidden = self.embeddings(input_ids)  # (B, T, H)
        return hidden.to(next(self.layers.parameters()).dtype)

    def layer_mask(self, hidden: torch.Tensor, mask2d: torch.Tensor, padded: bool | None = None):
        """The mask each encoder layer expects (`BertBackbone.layer_mask`; `padded` spares a host sync)."""
        return self.adapter.layer_mask(self.model_config, hidden, mask2d, padded)


def keep_rows(keep: torch.Tensor, *tensors):
    """Rows `keep` (bool or indices) of every tensor given; None stays None."""
    return tuple(None if t is None else t[keep] for t in tensors)


def to_host(t: torch.Tensor) -> np.ndarray:
    """A device tensor's values on the host. Where a shard must know what the device decided
    (which rows stay), this is the one read that waits for it: a copy even on the CPU, so that
    counting host reads (`offramp.exits.syncs`) sees it on either device."""
    return t.to("cpu", copy=True).numpy()


def lengths_on_host(lengths: torch.Tensor) -> np.ndarray:
    """Rows' token counts on the host, read once per pass: the host's copy decides trims and padding
    afterwards. A caller's host tensor is viewed, not copied."""
    return lengths.numpy() if lengths.device.type == "cpu" else to_host(lengths)


def to_device_index(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host row positions as an int64 index on `device`: pinned and non-blocking on a GPU, so
    the host does not wait for the copy."""
    return to_device(torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)), device)


def trim(hidden: torch.Tensor, lengths) -> torch.Tensor:
    """(S, T, H) -> (S, T', H) with the padding beyond the longest row cut off. `lengths` on the
    host (numpy) reads nothing from the device; a device tensor's max is a host sync."""
    return hidden[:, : int(lengths.max())] if len(lengths) else hidden
