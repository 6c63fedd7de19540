"""Exit policies by name. Add a policy: one file, one line here."""

from offramp.config import ConfigError
from offramp.policies.base import ExitDecision, ExitPolicy
from offramp.policies.entropy import EntropyPolicy
from offramp.policies.max_prob import MaxProbPolicy

POLICIES: dict[str, type[ExitPolicy]] = {
    "entropy": EntropyPolicy,
    "max_prob": MaxProbPolicy,
}


def get_policy(name: str) -> ExitPolicy:
    """Instantiate a policy by registry name; an unknown name lists the valid ones."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ConfigError(f"unknown exit policy {name!r}; valid policies: {sorted(POLICIES)}") from None


__all__ = ["POLICIES", "ExitDecision", "ExitPolicy", "get_policy"]
