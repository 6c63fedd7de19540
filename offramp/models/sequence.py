"""Early-exit classifiers built from transformers' own modules, one class per backbone adapter
(offramp.models.backbones: BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT).

Leaf to root: `ExitHead` (a small off-ramp classifier) -> `EarlyExitSequenceModel`, which is the
stock base model plus the stock sequence-classification head's modules (read by `FinalHead` with
the pooling the backbone was trained with) plus one `ExitHead` per internal exit layer ->
`SEQUENCE_CLASSES`, that mixin over each backbone's stock `*PreTrainedModel`.
`LEAN_SEQUENCE_CLASSES` puts the same mixin over `offramp.models.lean` (torch-only modules under the
stock names): what stage actors load (`offramp.models.checkpoint.load_stage_model`).

The weights keep their stock names, so a fine-tuned `*ForSequenceClassification` loads into the
class of its backbone (and `AutoModelForSequenceClassification` loads ours); with
`final_pooling: mean` (the default for sentence-transformers backbones) the stock class computes a
[CLS]-pooled head over them, which is not this model. Load with
`offramp.models.checkpoint.load_model`.

Layers are numbered 1..L; "exit layer l" means the head after encoder layer l-1 (0-based).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from offramp.config import ConfigError
from offramp.models.base import ExitLayersMixin, ModelClasses, init_exit_config
from offramp.models.heads import FINAL_POOLINGS, ExitHead, FinalHead, HeadOutput, exit_signal, masked_mean
from offramp.models.modules import ExitPredictor, PrototypeNet, SkipGate

if TYPE_CHECKING:
    from transformers import PretrainedConfig


@dataclass
class EarlyExitOutput:
    """Full-depth forward: every head's logits, in `exit_layers` order."""

    logits: torch.Tensor  # (B, C) final layer
    exit_logits: tuple[torch.Tensor, ...]  # one (B, C) per exit layer, last == logits
    loss: torch.Tensor | None = None
    signal: tuple[torch.Tensor | None, ...] | None = None  # per exit layer, the mechanism's signal (None at L)
    skipped: torch.Tensor | None = None  # (B, L) bool: the row skipped layer l+1 (SmartBERT gates)


@dataclass
class LayerTrace:
    """What a pass through the encoder layers saw (training and offline evaluation)."""

    states: list[torch.Tensor]  # L+1 x (B, T, H): states[0] embeddings, states[l] after layer l
    gates: list[torch.Tensor]  # L x (B,) skip probabilities (empty without gates)
    skipped: torch.Tensor | None  # (B, L) bool hard decisions (None without gates)


GATE_MODES = ("hard", "soft", "straight_through")


class EarlyExitSequenceModel(ExitLayersMixin):
    """Stock base model + its stock sequence head + internal exit heads, plus the chosen mechanism's modules.

    Config fields it adds to the backbone's config (saved in config.json):
      exit_layers: 1-based layers with a head, ascending, always ending with L.
      exit_policy: registry name of the exit criterion.
      exit_thresholds: one threshold per exit layer (the last is never used: L always exits).
      exit_mechanism: registry name of the training recipe that made the model (offramp.training.mechanisms).
      skip_gates / gate_threshold: SmartBERT's gate before every layer; a row skips a layer
        when its gate's probability is >= gate_threshold.
      prototype_dim: DE³-BERT's prototype space width at each internal exit (0 = none).
      exit_predictor: BERxiT's shared learning-to-exit module.
      final_pooling: how the final head pools the last layer, cls or mean (absent = cls, the
        first release's models).
    """

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        init_exit_config(config, "entropy", "deebert")
        config.skip_gates = bool(getattr(config, "skip_gates", False))
        config.gate_threshold = float(getattr(config, "gate_threshold", 0.5))
        config.prototype_dim = int(getattr(config, "prototype_dim", 0) or 0)
        config.exit_predictor = bool(getattr(config, "exit_predictor", False))
        config.final_pooling = getattr(config, "final_pooling", None) or "cls"
        if config.final_pooling not in FINAL_POOLINGS:
            raise ConfigError(f"final_pooling {config.final_pooling!r} in config.json: use one of {FINAL_POOLINGS}")
        num_layers, layers = config.num_hidden_layers, config.exit_layers

        setattr(self, self.base_model_prefix, self.adapter.build(config, sequence=True))
        self.adapter.add_sequence_head(self, config)
        internal = [l for l in layers if l != num_layers]
        H, C, p = config.hidden_size, config.num_labels, self.adapter.dropout(config)
        self.exit_heads = nn.ModuleDict({str(l): ExitHead(H, C, p) for l in internal})
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
    def signal_width(self) -> int:
        """Width of the mechanism's exit signal per head (0 = none)."""
        if self.prototypes is not None:
            return self.config.num_labels
        return 1 if self.exit_predictor is not None else 0

    def signal_module(self, layer: int) -> nn.Module | None:
        """The mechanism's signal module at internal exit `layer`, or None."""
        if self.prototypes is not None:
            return self.prototypes[str(layer)]
        return self.exit_predictor

    def final_head(self) -> FinalHead:
        """The full-depth head over this model's own stock head modules."""
        return FinalHead(self.adapter.sequence_head(self), self.config.final_pooling)

    def head_output(self, layer: int, hidden: torch.Tensor, mask: torch.Tensor) -> HeadOutput:
        """The head after `layer` (1-based) on that layer's output (B, T, H) and mask (B, T)."""
        if layer == self.num_layers:
            return HeadOutput(self.final_head()(hidden, mask))  # (B, C)
        pooled = masked_mean(hidden, mask)  # (B, H)
        return HeadOutput(self.exit_heads[str(layer)].classify(pooled), exit_signal(self.signal_module(layer), pooled))

    def head_logits(self, layer: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head_output(layer, hidden, mask).logits

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
        for i, layer in enumerate(self.encoder_layers):
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

    def forward(self, input_ids, attention_mask=None, labels=None, **_) -> EarlyExitOutput:
        """Full depth, every head (training and reference); gates make their hard decisions.
        Loss: sum of heads' CE if labels given. Token types are all 0 (one text per row), as the
        pipeline runs rows."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.embed(input_ids)  # (B, T, H)
        trace = self.run_layers(hidden, attention_mask)
        heads = [self.head_output(l, trace.states[l], attention_mask) for l in self.exit_layers]
        exit_logits = tuple(h.logits for h in heads)
        loss = None
        if labels is not None:
            loss = sum(nn.functional.cross_entropy(lg.float(), labels) for lg in exit_logits)
        return EarlyExitOutput(
            logits=exit_logits[-1], exit_logits=exit_logits, loss=loss, signal=tuple(h.signal for h in heads), skipped=trace.skipped
        )


SEQUENCE_CLASSES = ModelClasses(EarlyExitSequenceModel, "SequenceClassification", globals())
LEAN_SEQUENCE_CLASSES = ModelClasses(EarlyExitSequenceModel, "SequenceClassification", globals(), lean=True)


def __getattr__(name: str) -> type:
    """`EarlyExit<Backbone>ForSequenceClassification` (and `Lean...`), made on first use."""
    return (LEAN_SEQUENCE_CLASSES if name.startswith("Lean") else SEQUENCE_CLASSES).by_name(name)
