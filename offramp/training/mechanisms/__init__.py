"""Exit mechanisms by name: what a model is made of and how it is trained.

A mechanism names the training recipe, the modules it adds beside the backbone (gates,
prototypes, an exit predictor) and the exit policy it runs with by default. The name is
stored in the model's config.json; every mechanism shares the foundation's layer and
stage code (no forked model). Add one: one file, one line here."""

from offramp.config import ConfigError
from offramp.training.mechanisms.base import Mechanism
from offramp.training.mechanisms.berxit import BerxitMechanism
from offramp.training.mechanisms.de3 import De3Mechanism
from offramp.training.mechanisms.deebert import DeebertMechanism
from offramp.training.mechanisms.pabee import PabeeMechanism
from offramp.training.mechanisms.smartbert import SmartbertMechanism

MECHANISMS: dict[str, type[Mechanism]] = {
    "deebert": DeebertMechanism,
    "pabee": PabeeMechanism,
    "berxit": BerxitMechanism,
    "de3": De3Mechanism,
    "smartbert": SmartbertMechanism,
}


def get_mechanism(name: str) -> Mechanism:
    """Instantiate a mechanism by registry name; an unknown name lists the valid ones."""
    try:
        return MECHANISMS[name]()
    except KeyError:
        raise ConfigError(f"unknown exit mechanism {name!r}; valid mechanisms: {sorted(MECHANISMS)}") from None


__all__ = ["MECHANISMS", "Mechanism", "get_mechanism"]
