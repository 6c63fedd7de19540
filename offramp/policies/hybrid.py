"""DE³-BERT's hybrid exit score: local entropy and global distance to the class prototypes.

    DR  = 0.5 * (1 + (r1 - r2) / max(r1, r2))     r1, r2: distances to the nearest and
                                                   second-nearest prototype; in [0, 0.5]
    EDR = (lambda + 1) / (lambda / DR + 1 / entropy)   a weighted harmonic mean

Entropy is normalized by log(C) so both parts share a scale; lower EDR is more confident.
A row near one prototype and far from the rest (small DR) exits even with a flat-ish
softmax, and a confident softmax far from every prototype does not."""

import math

import torch

from offramp.policies.base import ExitPolicy
from offramp.policies.entropy import entropy

EPS = 1e-12  # keeps 1/x finite for a row exactly on a prototype or with a one-hot softmax


def distance_ratio(distances: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B,)
    two = distances.topk(2, dim=-1, largest=False).values  # (B, 2) ascending
    r1, r2 = two[:, 0], two[:, 1]
    return 0.5 * (1 + (r1 - r2) / torch.maximum(r1, r2).clamp(min=EPS))


class HybridPolicy(ExitPolicy):
    name = "hybrid"
    lower_is_confident = True
    default_threshold = 0.1
    needs = "prototypes"
    lam = 1.0  # weight of the distance part; the paper's lambda

    def score(self, logits: torch.Tensor, signal=None) -> torch.Tensor:  # signal (B, C) prototype distances
        ent = entropy(logits.float()) / math.log(logits.shape[-1])
        if signal is None:  # the last layer has no prototypes; it always exits, the score is only reported
            return ent
        dr = distance_ratio(signal.float())
        return (self.lam + 1) / (self.lam / dr.clamp(min=EPS) + 1 / ent.clamp(min=EPS))

    def score_range(self, num_classes: int) -> tuple[float, float]:
        return 0.0, 1.0
