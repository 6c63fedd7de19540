"""DeeBERT's off-ramp criterion: exit when the softmax entropy is below the threshold."""

import math

import torch

from offramp.policies.base import ExitPolicy


class EntropyPolicy(ExitPolicy):
    name = "entropy"
    lower_is_confident = True
    default_threshold = 0.3  # nats; DeeBERT sweeps 0..0.7 on GLUE

    def score(self, logits: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B,)
        logp = torch.log_softmax(logits, dim=-1)
        return -(logp.exp() * logp).sum(dim=-1)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return 0.0, math.log(num_classes)
