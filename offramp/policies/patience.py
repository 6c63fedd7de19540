"""PABEE's patience: exit once the prediction has stayed the same for `patience` heads in a row.

The counter is per row and lives in the policy state (previous prediction, count), which the
shard carries with each surviving row and the pipeline carries between stages, so a row's
count does not restart at a stage boundary. The threshold is the patience itself."""

import numpy as np
import torch

from offramp.policies.base import ExitDecision, ExitPolicy

NO_PREDICTION = -1.0


class PatiencePolicy(ExitPolicy):
    name = "patience"
    state_size = 2  # (previous head's prediction or -1, consecutive agreements so far)
    lower_is_confident = False
    default_threshold = 2.0

    def initial_state(self, rows: int, device=None) -> torch.Tensor:
        state = torch.zeros(rows, 2, device=device)
        state[:, 0] = NO_PREDICTION
        return state

    def score(self, logits: torch.Tensor, signal=None) -> torch.Tensor:
        """Without history a head has agreed with nobody: count 0 (used at the last layer only)."""
        return torch.zeros(logits.shape[0], device=logits.device)

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return 0.0, 24.0  # a count of agreeing heads; no model here has more than 24 exits

    def decide(self, logits: torch.Tensor, threshold: float, state: torch.Tensor | None = None, signal=None):
        if state is None:
            state = self.initial_state(logits.shape[0], logits.device)
        pred = logits.argmax(-1).to(state.dtype)  # (B,)
        count = torch.where(pred == state[:, 0], state[:, 1] + 1, torch.zeros_like(pred))
        new_state = torch.stack([pred, count], dim=1)
        return ExitDecision(logits=logits, score=count, exited=self.passes(count, threshold)), new_state

    def head_scores(self, logits: np.ndarray, signal: np.ndarray | None = None) -> np.ndarray:
        """(N, K) the counter after each head, as the heads would run in order."""
        preds = logits.argmax(-1)  # (N, K)
        counts = np.zeros(preds.shape, dtype=np.float64)
        for k in range(1, preds.shape[1]):
            counts[:, k] = np.where(preds[:, k] == preds[:, k - 1], counts[:, k - 1] + 1, 0)
        return counts
