"""DeeBERT's off-ramp criterion: exit when the softmax entropy is below the threshold."""

import math

import torch

from offramp.policies.base import ExitPolicy


def entropy(logits: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B,) nats
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


class EntropyPolicy(ExitPolicy):
    name = "entropy"
    lower_is_confident = True
    default_threshold = 0.3  # nats; DeeBERT sweeps 0..0.7 on GLUE

    def score(self, logits: torch.Tensor, aux=None) -> torch.Tensor:  # (B, C) -> (B,)
        return entropy(logits)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return 0.0, math.log(num_classes)
