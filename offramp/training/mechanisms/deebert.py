"""DeeBERT (Xin et al., 2020): entropy off-ramps, two-stage fine-tuning.

Stage 1 fine-tunes the backbone and the final classifier on the final layer's loss.
Stage 2 freezes both and trains the internal exit heads on the sum of their losses."""

from __future__ import annotations

from offramp.training.mechanisms.base import Mechanism
from offramp.training.loop import backbone_params, final_loss, head_losses, pooled_features, train_heads


def stage1_final(run) -> None:
    """Backbone + final classifier on the final layer's CE."""
    if run.cfg.stage1_epochs > 0:
        run.model.train()
        run.optimize(backbone_params(run.model), run.cfg.stage1_epochs, run.cfg.lr, 1, lambda idx: final_loss(run, idx), clip=1.0)
        run.model.eval()


def cached_features(run):
    """(N, K-1, H) pooled states of the frozen model, or None when there are no internal heads.
    The same pass pools the last layer for the final head's refit (`run.final_features`)."""
    model = run.model
    if len(model.exit_layers) < 2:
        return None
    feats, run.final_features = pooled_features(model, run.tokenizer, run.texts, run.cfg.max_length, final=True)
    return feats


def trained_backbone_features(run):
    """Stage 1, then the frozen model's pooled features for head-only stages (None: no internal heads)."""
    stage1_final(run)
    return cached_features(run)


class DeebertMechanism(Mechanism):
    name = "deebert"
    policy = "entropy"

    def train(self, run) -> None:
        feats = trained_backbone_features(run)
        if feats is not None and run.cfg.stage2_epochs > 0:
            train_heads(run, feats, lambda f, y: sum(head_losses(run.model, f, y)))
