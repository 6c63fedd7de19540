"""TrainConfig: the shared settings (offramp.config.TrainSettings) plus one section per mechanism
that has options, named after it (`smartbert.sparsity_weight`), and the token task's section
(`token.exit_mode`).

The sections are read off the mechanism registry, so a new mechanism's options reach the
YAML, `--set` and the generated flags from its own file and its registry line alone.
"""

from __future__ import annotations

from dataclasses import field, make_dataclass

from offramp.config import ConfigError, TrainSettings
from offramp.training.mechanisms import MECHANISMS
from offramp.training.token import TokenTrainOptions


def _post_init(self) -> None:
    TrainSettings.__post_init__(self)
    if self.mechanism not in MECHANISMS:
        raise ConfigError(f"unknown exit mechanism {self.mechanism!r}; valid mechanisms: {sorted(MECHANISMS)}")
    if MECHANISMS[self.mechanism].options is not None:  # cross-field checks of the chosen one only
        getattr(self, self.mechanism).check(self)


TrainConfig = make_dataclass(
    "TrainConfig",
    [(name, m.options, field(default_factory=m.options)) for name, m in MECHANISMS.items() if m.options]
    + [("token", TokenTrainOptions, field(default_factory=TokenTrainOptions))],
    bases=(TrainSettings,),
    frozen=True,
    namespace={
        "__doc__": "Everything a training run needs: TrainSettings, a section per mechanism with options, `token`.",
        "__module__": __name__,
        "__post_init__": _post_init,
    },
)
