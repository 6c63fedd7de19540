"""BERxiT (Xin et al., 2021): learning to exit.

One small predictor shared by every exit reads the layer's pooled state and estimates
whether that layer's head is right; a row exits when the estimate clears the threshold.
Backbone and heads train as DeeBERT's two stages; then the predictor trains on cached
features against the frozen heads' correctness. It learns from training rows the heads
did not see (the last `1/5` of a seeded shuffle): on rows a head was fit to, it is right
far more often than on new text, and a predictor taught there is overconfident."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from offramp.config import ConfigError
from offramp.training.mechanisms.base import Mechanism, MechanismOptions
from offramp.training.mechanisms.deebert import trained_backbone_features
from offramp.training.loop import head_losses, train_heads

HELD_OUT = 0.2  # share of training rows kept from the heads for the predictor


@dataclass(frozen=True)
class BerxitOptions(MechanismOptions):
    """BERxiT: the learning-to-exit predictor."""

    predictor_epochs: float = 10.0
    """Epochs of the learning-to-exit predictor on cached features."""

    def __post_init__(self):
        if self.predictor_epochs < 0:
            raise ConfigError(f"berxit.predictor_epochs={self.predictor_epochs} must be >= 0")


class BerxitMechanism(Mechanism):
    name = "berxit"
    policy = "learned"
    signal_modules = ("exit_predictor",)
    options = BerxitOptions

    def config_fields(self, cfg) -> dict:
        return {"exit_predictor": True}

    def train(self, run) -> None:
        model, cfg = run.model, run.cfg
        feats = trained_backbone_features(run)
        if feats is None:
            return
        order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(cfg.seed))
        cut = int(len(order) * (1 - HELD_OUT))
        heads_rows, predictor_rows = order[:cut], order[cut:]
        train_heads(run, feats[heads_rows], lambda f, y: sum(head_losses(model, f, y)), y=run.y[heads_rows])
        heads = [model.exit_heads[str(l)] for l in model.exit_layers[:-1]]
        f, y = feats[predictor_rows], run.y[predictor_rows]
        with torch.no_grad():  # (M, K-1): was head k right on row m?
            right = torch.stack([(h.classify(f[:, k]).argmax(-1) == y).float() for k, h in enumerate(heads)], 1)
        predictor = model.exit_predictor
        predictor.train()

        def predictor_loss(idx):  # every (row, exit) pair of the batch, one shared predictor
            return nn.functional.binary_cross_entropy(predictor(f[idx].flatten(0, 1)), right[idx].flatten())

        with torch.enable_grad():
            epochs = cfg.berxit.predictor_epochs
            run.optimize(list(predictor.parameters()), epochs, cfg.head_lr, 3, predictor_loss, n=len(f))
        predictor.eval()
