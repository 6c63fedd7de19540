"""What every early-exit model (classifier or tagger) shares: the exit fields its config
carries, and the questions the rest of the code asks it.

Layers are numbered 1..L everywhere (an exit layer, a head's layer, a word's tag layer; 0 = none
yet): "exit layer l" means the head after `encoder.layer[l-1]`. Only a shard's range [start, end)
is 0-based, as the slice bounds of `encoder.layer` it is; inside a shard, `offset` counts its layers.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from offramp.config import ConfigError
from offramp.models.profile import save_profile
from offramp.policies import get_policy

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
    """What every early-exit model answers from its config."""

    config: PretrainedConfig

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
