"""SmartBERT (Hu et al., IJCAI 2023): a skipping gate before every layer, plus exits.

Stage 1 trains backbone, gates and final classifier with soft gating
(out = layer(h) * (1 - g) + h * g), a sparsity term that rewards skipping
(lambda / sum of the layers' mean gate values) and cross-layer contrastive learning
between adjacent layers' token states (each token's state at layer i and i+1 is a
positive pair, the row's other tokens the negatives). For the last `hard_weight_epochs`
the hard weight mechanism is on: the forward uses the thresholded gate, the backward the
soft one, so training gates exactly as inference does. Stage 2 freezes backbone and gates
and trains the exit heads on the gated states, with contrastive learning between
adjacent heads. Inference: a row skips a layer when its gate says so, and exits by entropy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from offramp.config import ConfigError
from offramp.training.mechanisms.base import Mechanism, MechanismOptions
from offramp.training.mechanisms.deebert import cached_features
from offramp.training.loop import backbone_params, head_losses, train_heads

LAYER_TEMPERATURE = 0.5  # the paper's t1
HEAD_TEMPERATURE = 0.55  # the paper's t2
PROJECTION = 128  # width of the contrastive projections (training only, not saved)


def token_contrast(q1: torch.Tensor, q2: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over tokens: (B, T, P) unit vectors of two layers, (B, T) mask -> mean loss
    over real tokens; token t's positive is itself at the other layer."""
    sim = q1 @ q2.transpose(1, 2) / temperature  # (B, T, T)
    sim = sim.masked_fill(~mask.bool()[:, None, :], float("-inf"))
    loss = -torch.diagonal(sim.log_softmax(-1), dim1=1, dim2=2)  # (B, T); inf at padding
    real = mask.bool()
    return torch.where(real, loss, torch.zeros_like(loss)).sum() / real.sum()


def row_contrast(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over a batch: (B, P) unit vectors of two heads; row b's positive is itself."""
    sim = z1 @ z2.T / temperature  # (B, B)
    return F.cross_entropy(sim, torch.arange(len(z1), device=z1.device))


def projection(hidden_size: int) -> nn.Module:
    return nn.Sequential(nn.Linear(hidden_size, PROJECTION), nn.LayerNorm(PROJECTION), nn.Tanh(), nn.Linear(PROJECTION, PROJECTION))


@dataclass(frozen=True)
class SmartbertOptions(MechanismOptions):
    """SmartBERT: skipping gates and contrastive learning."""

    sparsity_weight: float = 0.04
    """Stage 1: weight of the term rewarding skipping (lambda / sum of mean gate values)."""
    layer_contrastive_weight: float = 0.01
    """Stage 1: weight of cross-layer contrastive learning on token states (eta1)."""
    head_contrastive_weight: float = 0.05
    """Stage 2: weight of contrastive learning between adjacent exit heads (eta2)."""
    hard_weight_epochs: float = 1.0
    """Stage 1: the last this-many epochs use the hard weight mechanism (straight-through gates)."""

    def __post_init__(self):
        if self.hard_weight_epochs < 0:
            raise ConfigError(f"smartbert.hard_weight_epochs={self.hard_weight_epochs} must be >= 0")

    def check(self, cfg) -> None:
        if self.hard_weight_epochs > max(cfg.stage1_epochs, 0):
            raise ConfigError(
                f"smartbert.hard_weight_epochs={self.hard_weight_epochs} must lie in "
                f"[0, stage1_epochs={cfg.stage1_epochs}]"
            )


class SmartbertMechanism(Mechanism):
    name = "smartbert"
    policy = "entropy"
    options = SmartbertOptions

    def config_fields(self, cfg) -> dict:
        return {"skip_gates": True}

    def train(self, run) -> None:
        self.stage1(run)
        feats = cached_features(run)
        if feats is not None and run.cfg.stage2_epochs > 0:
            self.stage2(run, feats)

    def stage1(self, run) -> None:
        model, cfg, opts = run.model, run.cfg, run.cfg.smartbert
        if cfg.stage1_epochs <= 0:
            return
        L = model.num_layers
        projections = nn.ModuleList([projection(model.config.hidden_size) for _ in range(L)])
        total = max(1, int(round(math.ceil(len(run.y) / cfg.batch_size) * cfg.stage1_epochs)))
        hard_from = total - int(round(total * opts.hard_weight_epochs / cfg.stage1_epochs))
        step = {"n": 0}

        def loss_of(idx):
            enc = run.encode(idx)
            mask = enc["attention_mask"]
            mode = "straight_through" if step["n"] >= hard_from else "soft"
            step["n"] += 1
            hidden = model.embed(enc["input_ids"])
            trace = model.run_layers(hidden, mask, gate_mode=mode)
            logits = model.head_logits(L, trace.states[-1], mask)
            gate_mean = sum(g.mean() for g in trace.gates)  # sum over layers of the batch's mean skip prob
            loss = F.cross_entropy(logits, run.y[idx]) + opts.sparsity_weight / gate_mean.clamp(min=1e-6)
            inputs = trace.states[:-1]  # layer i's input, i = 0..L-1
            contrast = sum(
                token_contrast(
                    F.normalize(projections[i](inputs[i]), dim=-1),
                    F.normalize(projections[i + 1](inputs[i + 1]), dim=-1),
                    mask,
                    LAYER_TEMPERATURE,
                )
                for i in range(L - 1)
            )
            w = opts.layer_contrastive_weight
            return (1 - w) * loss + w * contrast

        model.train()
        # new modules learn at the heads' rate: at the backbone's they barely leave their
        # initial 0.5 (measured: every gate in 0.44-0.50 after 1.25 epochs at 3e-5, no row skipped)
        params = [
            {"params": backbone_params(model), "lr": cfg.lr},
            {"params": list(model.gates.parameters()) + list(projections.parameters()), "lr": cfg.head_lr},
        ]
        run.optimize(params, cfg.stage1_epochs, cfg.lr, 1, loss_of, clip=1.0)
        model.eval()

    def stage2(self, run, feats: torch.Tensor) -> None:
        model, w = run.model, run.cfg.smartbert.head_contrastive_weight
        heads = [model.exit_heads[str(l)] for l in model.exit_layers[:-1]]

        def loss_of(f, y):
            ce = sum(head_losses(model, f, y))
            if len(heads) < 2:
                return ce
            z = [F.normalize(torch.tanh(h.pool(f[:, k])), dim=-1) for k, h in enumerate(heads)]  # (B, H) each
            contrast = sum(row_contrast(z[k], z[k + 1], HEAD_TEMPERATURE) for k in range(len(z) - 1)) / (len(z) - 1)
            return (1 - w) * ce + w * contrast

        train_heads(run, feats, loss_of)
