"""What every early-exit model (classifier or tagger) shares: the exit fields its config
carries, and the questions the rest of the code asks it.

Layers are numbered 1..L everywhere (an exit layer, a head's layer, a word's tag layer; 0 = none
yet): "exit layer l" means the head after `encoder.layer[l-1]`. Only a shard's range [start, end)
is 0-based, as the slice bounds of `encoder.layer` it is; inside a shard, `offset` counts its layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from offramp.config import ConfigError
from offramp.models.backbones import BACKBONES, LEAN_BACKBONES, BertBackbone, Embedder
from offramp.models.profile import save_profile
from offramp.policies import get_policy

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# The tasks a model can be trained for; `config.task` names one (absent = sequence, the
# first release's classifiers). offramp.tasks maps each to its pipeline steps.
SEQUENCE, TOKEN = "sequence", "token"


def init_exit_config(config: PretrainedConfig, policy: str, mechanism: str, default_threshold: float | None = None) -> None:
    """Normalize the exit fields of `config` in place: exit_layers ascending and ending at L,
    the policy and mechanism names, one threshold per exit layer (the policy's default when
    absent or of the wrong length, unless `default_threshold` is given)."""
    num_layers = config.num_hidden_layers
    layers = getattr(config, "exit_layers", None) or range(1, num_layers + 1)
    layers = sorted(set(int(x) for x in layers) | {num_layers})
    if layers[0] < 1 or layers[-1] > num_layers:
        raise ConfigError(f"exit_layers {layers} must lie in 1..{num_layers}")
    config.exit_layers = layers
    config.exit_policy = getattr(config, "exit_policy", None) or policy
    config.exit_mechanism = getattr(config, "exit_mechanism", None) or mechanism
    thresholds = getattr(config, "exit_thresholds", None)
    if thresholds is None or len(thresholds) != len(layers):
        default = get_policy(config.exit_policy).default_threshold if default_threshold is None else default_threshold
        thresholds = [default] * len(layers)
    config.exit_thresholds = [float(t) for t in thresholds]


class ExitLayersMixin:
    """What every early-exit model answers from its config and its backbone adapter."""

    # `config` (a transformers config, or lean.LeanConfig) is set by the class's base; not annotated here:
    # transformers evaluates its models' class annotations, and this module imports no transformers
    adapter: BertBackbone  # set on each class `ModelClasses` makes

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, H)
        """The states the first encoder layer reads."""
        return self.embedder()(input_ids)

    def embedder(self) -> Embedder:
        """The modules before the first layer, as one module (the model's own, not copies)."""
        return Embedder(self.adapter, self.base_model)

    @property
    def encoder_layers(self):
        """The stock encoder layers, each called as `layer(hidden, layer_mask(...))`."""
        return self.adapter.layers(self.base_model)

    def layer_mask(self, hidden: torch.Tensor, mask2d: torch.Tensor):
        """The mask each encoder layer expects, built as the stock base model builds it."""
        return self.adapter.layer_mask(self.config, hidden, mask2d)

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

    def save_profile(self, directory: str, profile: dict) -> None:
        save_profile(directory, profile)


class ModelClasses(Mapping):
    """model_type -> the class of `mixin` over that backbone: over its stock `*PreTrainedModel`
    (weight init and encoder prefix), named `EarlyExit<Backbone>For<task_name>`, or with `lean` over
    `offramp.models.lean.LeanModel`, named `LeanEarlyExit...`. Each is made on first use (a stock one
    imports transformers' modeling code) and bound in `namespace` (the defining module's globals),
    so the classes pickle by name."""

    def __init__(self, mixin: type, task_name: str, namespace: dict, lean: bool = False):
        self.mixin, self.task_name, self.namespace = mixin, task_name, namespace
        self.adapters = LEAN_BACKBONES if lean else BACKBONES
        self.prefix = "Lean" if lean else ""

    def name(self, model_type: str) -> str:
        return f"{self.prefix}EarlyExit{self.adapters[model_type].name}For{self.task_name}"

    def __getitem__(self, model_type: str) -> type:
        adapter, name = self.adapters[model_type], self.name(model_type)
        if name not in self.namespace:
            body = {"adapter": adapter, "base_model_prefix": adapter.prefix, "__module__": self.namespace["__name__"],
                    "__doc__": self.mixin.__doc__}
            self.namespace[name] = type(name, (self.mixin, adapter.pretrained), body)
        return self.namespace[name]

    def __iter__(self):
        return iter(self.adapters)

    def __len__(self) -> int:
        return len(self.adapters)

    def by_name(self, name: str) -> type:
        """The class a module-level `__getattr__` is asked for by name (AttributeError if none)."""
        for model_type in self.adapters:
            if self.name(model_type) == name:
                return self[model_type]
        raise AttributeError(f"module {self.namespace['__name__']!r} has no attribute {name!r}")
