"""Exit policies by name. Add a policy: one file, one line here."""

from offramp.config import ConfigError
from offramp.policies.base import ExitDecision, ExitPolicy
from offramp.policies.entropy import EntropyPolicy
from offramp.policies.hybrid import HybridPolicy
from offramp.policies.learned import LearnedExitPolicy
from offramp.policies.margin import MarginPolicy
from offramp.policies.max_prob import MaxProbPolicy
from offramp.policies.patience import PatiencePolicy

POLICIES: dict[str, type[ExitPolicy]] = {
    "entropy": EntropyPolicy,
    "max_prob": MaxProbPolicy,
    "margin": MarginPolicy,
    "patience": PatiencePolicy,
    "learned": LearnedExitPolicy,
    "hybrid": HybridPolicy,
}

_TRAINED_BY = {"prototypes": "de3", "exit_predictor": "berxit"}


def get_policy(name: str) -> ExitPolicy:
    """Instantiate a policy by registry name; an unknown name lists the valid ones."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ConfigError(f"unknown exit policy {name!r}; valid policies: {sorted(POLICIES)}") from None


def check_policy_fits(policy: ExitPolicy, mechanism: str, modules: set[str]) -> None:
    """A policy that reads a module (prototypes, the exit predictor) needs a model trained with it;
    `modules` are the signal modules the model has."""
    if policy.needs and policy.needs not in modules:
        raise ConfigError(
            f"exit policy {policy.name!r} reads the model's {policy.needs}, which this model "
            f"(mechanism {mechanism!r}) lacks; train it with --mechanism {_TRAINED_BY[policy.needs]} "
            f"or pick a policy that reads logits only ({sorted(n for n, p in POLICIES.items() if not p.needs)})"
        )


def candidate_policies(stored: str, modules: set[str] | frozenset) -> dict[str, ExitPolicy]:
    """The policies a model can run, by name: `stored` (its own) first, then every other one that
    reads logits only or a module in `modules`. Calibration may choose among them."""
    names = [stored] + [n for n, p in POLICIES.items() if n != stored and (p.needs is None or p.needs in modules)]
    return {n: get_policy(n) for n in names}


def check_policy(policy: ExitPolicy, mechanism: str, modules: set[str], per_word: bool = False) -> None:
    """The policy can run on this model: per word for a sequence-labeling model, and with the
    modules it reads."""
    if per_word:
        check_word_policy(policy)
    check_policy_fits(policy, mechanism, modules)


def check_word_policy(policy: ExitPolicy) -> None:
    """A sequence-labeling model decides per word: the policy must judge a word's logits alone."""
    if not policy.per_word:
        usable = sorted(n for n, p in POLICIES.items() if p.per_word)
        raise ConfigError(
            f"exit policy {policy.name!r} cannot decide per word (it needs state across layers or a "
            f"sentence-level module); a sequence-labeling model takes one of {usable}"
        )


__all__ = [
    "POLICIES", "ExitDecision", "ExitPolicy", "candidate_policies", "check_policy", "check_policy_fits",
    "check_word_policy", "get_policy",
]
