"""The exit-policy contract: per-row decisions from one head's logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ExitDecision:
    """One head's verdict for every row of a (sub-)batch."""

    logits: torch.Tensor  # (B, C) the head's logits
    score: torch.Tensor  # (B,) the criterion value the threshold was compared with
    exited: torch.Tensor  # (B,) bool: the row leaves after this layer


class ExitPolicy:
    """Decides, row by row, whether a head's prediction is good enough to stop.

    Stateless policies (entropy, max probability) look only at the current logits.
    Policies that need memory across layers (patience counters, next issues) declare
    `state_size` > 0 and get a (B, state_size) float tensor that the stage carries
    with each surviving row.
    """

    name: str = ""
    state_size: int = 0
    lower_is_confident: bool = True
    """True when a smaller score means more confident (entropy); the sweep order."""
    default_threshold: float = 0.0

    def score(self, logits: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B,)
        raise NotImplementedError

    def score_range(self, num_classes: int) -> tuple[float, float]:
        """The scores a head over `num_classes` classes can produce: (least, most) in value."""
        raise NotImplementedError

    def decide(self, logits: torch.Tensor, threshold: float, state: torch.Tensor | None = None):
        """Return (ExitDecision, new_state) for one head; `state` is (B, state_size) or None."""
        score = self.score(logits.float())
        exited = score < threshold if self.lower_is_confident else score >= threshold
        return ExitDecision(logits=logits, score=score, exited=exited), state

    def never_exits_threshold(self) -> float:
        """A threshold no row can pass: used to run to full depth through the same code."""
        return float("-inf") if self.lower_is_confident else float("inf")
