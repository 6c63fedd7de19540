"""The mechanism contract: config fields for the model, a default policy, a training recipe."""

from __future__ import annotations


class Mechanism:
    name: str = ""
    policy: str = "entropy"
    """Exit policy the model runs with unless the user picks another."""
    signal_modules: tuple[str, ...] = ()
    """Exit-signal modules the model gets (`prototypes`, `exit_predictor`)."""

    def config_fields(self, cfg) -> dict:
        """Model config fields the mechanism sets (they build its modules)."""
        return {}

    def train(self, run) -> None:
        """Train `run.model` in place (offramp.training.loop.TrainRun)."""
        raise NotImplementedError
