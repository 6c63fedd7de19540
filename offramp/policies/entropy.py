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

    def score(self, logits: torch.Tensor, signal=None) -> torch.Tensor:  # (B, C) -> (B,)
        return entropy(logits)

    per_word = True

    def word_uncertainty(self, logits: torch.Tensor) -> torch.Tensor:  # (..., C) -> (...,)
        """Normalized entropy: entropy over log C (Li et al.'s word uncertainty)."""
        return entropy(logits.float()) / math.log(logits.shape[-1])

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return 0.0, math.log(num_classes)
