"""BERxiT's learning-to-exit: exit when the shared predictor says this layer's answer is right."""

import torch

from offramp.policies.base import ExitPolicy


class LearnedExitPolicy(ExitPolicy):
    name = "learned"
    lower_is_confident = False
    default_threshold = 0.5
    needs = "exit_predictor"

    def score(self, logits: torch.Tensor, signal=None) -> torch.Tensor:  # signal (B, 1) P(right)
        if signal is None:  # the last layer has no predictor; it always exits, the score is only reported
            return torch.softmax(logits, dim=-1).max(dim=-1).values
        return signal[:, 0].float()

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return 0.0, 1.0
