"""DE³-BERT (He et al., 2024): distance-enhanced early exit with prototypical networks.

Each internal exit gets a prototypical network (offramp.models.modules.PrototypeNet): a map
of the pooled state into a metric space and one prototype per class, a moving average of
that class's mapped rows. Training: backbone as DeeBERT's stage 1, then heads and maps on
cached features with each head's CE plus the distance-aware regularizer: a softmax over
negative distances to every prototype, so a row is pulled to its class's prototype and
pushed from the others. Inference: the hybrid policy (entropy with the distance ratio)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from offramp.config import ConfigError
from offramp.training.mechanisms.base import Mechanism, MechanismOptions
from offramp.training.mechanisms.deebert import trained_backbone_features
from offramp.training.loop import head_losses, train_heads

TEMPERATURE = 0.1  # cosine distances lie in [0, 2]; /0.1 gives the softmax a usable range


def distance_loss(net, pooled: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Distance-aware regularizer of one exit: CE over -distance / temperature."""
    return nn.functional.cross_entropy(-net.distances(pooled) / TEMPERATURE, y)


@dataclass(frozen=True)
class De3Options(MechanismOptions):
    """DE³-BERT: prototypical networks at the internal exits."""

    prototype_dim: int = 128
    """Width of each exit's prototype space."""
    prototype_momentum: float = 0.1
    """Moving-average rate of the class prototypes."""
    distance_weight: float = 1.0
    """Weight of the distance-aware regularizer beside the heads' CE."""

    def __post_init__(self):
        if self.prototype_dim < 2 or not 0 < self.prototype_momentum <= 1:
            raise ConfigError("de3.prototype_dim must be >= 2 and de3.prototype_momentum in (0, 1]")


class De3Mechanism(Mechanism):
    name = "de3"
    policy = "hybrid"
    signal_modules = ("prototypes",)
    options = De3Options

    def config_fields(self, cfg) -> dict:
        return {"prototype_dim": cfg.de3.prototype_dim}

    def train(self, run) -> None:
        model, opts = run.model, run.cfg.de3
        feats = trained_backbone_features(run)
        if feats is None:
            return
        nets = [model.prototypes[str(l)] for l in model.exit_layers[:-1]]
        with torch.no_grad():  # start every prototype at its class's mean (a warm start's are stale)
            for k, net in enumerate(nets):
                net.prototypes.zero_()
                net.update(net.embed(feats[:, k]), run.y, momentum=1.0)

        def loss_of(f, y):
            loss = sum(head_losses(model, f, y))
            for k, net in enumerate(nets):
                loss = loss + opts.distance_weight * distance_loss(net, f[:, k], y)
                net.update(net.embed(f[:, k]).detach(), y, opts.prototype_momentum)
            return loss

        train_heads(run, feats, loss_of, extra_params=[p for n in nets for p in n.parameters()])
