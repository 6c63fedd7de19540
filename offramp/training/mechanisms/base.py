"""The mechanism contract: its training options, config fields for the model, a default policy,
a training recipe."""

from __future__ import annotations


class MechanismOptions:
    """Base of a mechanism's frozen options dataclass: TrainConfig's section named after the
    mechanism (e.g. `smartbert.sparsity_weight`). Single-field checks go in `__post_init__`."""

    def check(self, cfg) -> None:
        """Checks against the rest of the TrainConfig `cfg`, run when this mechanism is chosen."""


class Mechanism:
    name: str = ""
    policy: str = "entropy"
    """Exit policy the model runs with unless the user picks another."""
    signal_modules: tuple[str, ...] = ()
    """Exit-signal modules the model gets (`prototypes`, `exit_predictor`)."""
    options: type[MechanismOptions] | None = None
    """The mechanism's own training settings (a frozen dataclass), or None when it has none."""

    def config_fields(self, cfg) -> dict:
        """Model config fields the mechanism sets (they build its modules)."""
        return {}

    def train(self, run) -> None:
        """Train `run.model` in place (offramp.training.loop.TrainRun)."""
        raise NotImplementedError
