"""PABEE (Zhou et al., 2020): patience-based early exit.

Training as the paper: backbone and every head together on the weighted average of the
heads' losses, head j weighted by its layer number j (deeper heads matter more); the heads
learn at head_lr, the backbone at lr. With
stage1_epochs=0 (a warm start) the backbone stays frozen and the heads train on cached
features with the same weights. Inference: the patience policy."""

from __future__ import annotations

import torch
from torch import nn

from offramp.training.mechanisms.base import Mechanism
from offramp.training.mechanisms.deebert import cached_features
from offramp.training.loop import head_groups, head_losses, train_heads


def weighted(losses: list[torch.Tensor], layers: list[int]) -> torch.Tensor:
    return sum(l * loss for l, loss in zip(layers, losses)) / sum(layers)


class PabeeMechanism(Mechanism):
    name = "pabee"
    policy = "patience"

    def train(self, run) -> None:
        model, cfg = run.model, run.cfg
        layers = model.exit_layers
        if cfg.stage1_epochs > 0:

            def joint(idx):
                enc = run.encode(idx)
                out = model(**enc)
                return weighted([nn.functional.cross_entropy(lg, run.y[idx]) for lg in out.exit_logits], layers)

            model.train()
            run.optimize(head_groups(model, cfg), cfg.stage1_epochs, cfg.lr, 1, joint, clip=1.0)
            model.eval()
        feats = cached_features(run)
        if feats is not None and cfg.stage2_epochs > 0:
            train_heads(run, feats, lambda f, y: weighted(head_losses(model, f, y), layers[:-1]))
