"""The exit-policy contract: per-row decisions from one head's output."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ExitDecision:
    """One head's verdict for every row of a (sub-)batch."""

    logits: torch.Tensor  # (B, C) the head's logits
    score: torch.Tensor  # (B,) the criterion value the threshold was compared with
    exited: torch.Tensor  # (B,) bool: the row leaves after this layer


class ExitPolicy:
    """Decides, row by row, whether a head's prediction is good enough to stop.

    Stateless policies look only at the current head: its logits and, for mechanisms that
    have one, its exit signal (B, A) (DE³ prototype distances, BERxiT's P(right)).
    Policies that need memory across layers (patience) declare `state_size` > 0 and get a
    (B, state_size) float tensor that the shard carries with each surviving row, and the
    pipeline carries from stage to stage.
    """

    name: str = ""
    state_size: int = 0
    lower_is_confident: bool = True
    """True when a smaller score means more confident (entropy); the sweep order."""
    default_threshold: float = 0.0
    needs: str | None = None
    """The model module the policy reads (`prototypes`, `exit_predictor`); None = logits only."""
    per_word: bool = False
    """Decides words too (sequence labeling): `word_uncertainty` is defined. Policies that need
    memory across layers or a sentence-level module cannot judge one word."""

    def score(self, logits: torch.Tensor, signal: torch.Tensor | None = None) -> torch.Tensor:  # (B, C) -> (B,)
        raise NotImplementedError

    def score_range(self, num_classes: int) -> tuple[float, float]:
        """The scores a head over `num_classes` classes can produce: (least, most) in value."""
        raise NotImplementedError

    def passes(self, score, threshold):
        """Elementwise: does `score` clear `threshold` (works on tensors and arrays)?"""
        return score < threshold if self.lower_is_confident else score >= threshold

    def decide(self, logits: torch.Tensor, threshold: float, state: torch.Tensor | None = None, signal=None):
        """Return (ExitDecision, new_state) for one head; `state` is (B, state_size) or None."""
        score = self.score(logits.float(), signal)
        return ExitDecision(logits=logits, score=score, exited=self.passes(score, threshold)), state

    def head_scores(self, logits: np.ndarray, signal: np.ndarray | None = None) -> np.ndarray:
        """Offline: (N, K, C) logits of K heads (and (N, K, A) signals) -> (N, K) scores,
        the value each head's decision would compare with its threshold."""
        n, k, c = logits.shape
        a = None if signal is None else torch.from_numpy(signal.reshape(n * k, -1)).float()
        return self.score(torch.from_numpy(logits.reshape(n * k, c)).float(), a).numpy().reshape(n, k)

    def word_uncertainty(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., C) token logits -> (...,) uncertainty in [0, 1], 0 = certain: what a token model's
        thresholds, windows and sentence pooling compare (lower is always more confident)."""
        raise NotImplementedError(f"exit policy {self.name!r} does not decide per word")

    def initial_state(self, rows: int, device=None) -> torch.Tensor | None:
        """A fresh (rows, state_size) state for rows entering their first layer; None if stateless."""
        return torch.zeros(rows, self.state_size, device=device) if self.state_size else None

    def never_exits_threshold(self) -> float:
        """A threshold no row can pass: used to run to full depth through the same code."""
        return float("-inf") if self.lower_is_confident else float("inf")
