"""Exit when the top class probability reaches the threshold."""

import torch

from offramp.policies.base import ExitPolicy


class MaxProbPolicy(ExitPolicy):
    name = "max_prob"
    lower_is_confident = False
    default_threshold = 0.9

    def score(self, logits: torch.Tensor, signal=None) -> torch.Tensor:  # (B, C) -> (B,)
        return torch.softmax(logits, dim=-1).max(dim=-1).values

    per_word = True

    def word_uncertainty(self, logits: torch.Tensor) -> torch.Tensor:  # (..., C) -> (...,)
        """1 - top-class probability."""
        return 1 - torch.softmax(logits.float(), dim=-1).max(dim=-1).values

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return 1.0 / num_classes, 1.0
