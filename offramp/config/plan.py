"""What a capacity plan needs (`offramp plan`, jobs/plan_capacity.py): the measured run and one goal."""

from __future__ import annotations

from dataclasses import dataclass

from offramp.config.base import ConfigError, require

GOALS = {
    "target_docs_per_hour": "--target-docs-per-hour",
    "budget_gpus": "--budget-gpus",
    "budget_cpus": "--budget-cpus",
}


@dataclass(frozen=True)
class PlanConfig:
    """Everything a capacity plan (`offramp plan`, jobs/plan_capacity.py) needs: one goal of three."""

    run_id: str | None = None
    """MLflow run id of a tagging run (jobs/tag_corpus.py prints it)."""
    summary: str | None = None
    """Instead of --run-id: a run's run_summary.json as a file (the MLflow artifact, downloaded,
    or one a benchmark kept; benchmarks/results/gpu/ holds measured H200 runs)."""
    tracking_uri: str | None = None
    """MLflow store; None = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""
    target_docs_per_hour: float | None = None
    """Goal: the actors needed for this throughput."""
    budget_gpus: float | None = None
    """Goal: the most throughput this many GPUs buy."""
    budget_cpus: float | None = None
    """Goal: the most throughput this many CPUs buy."""
    headroom: float = 1.25
    """Plan actors this much faster than needed (1 = the bottleneck stage planned fully busy)."""
    json: str | None = None
    """Also write the plan as JSON to this path."""
    log: bool = False
    """Attach capacity_plan.json to the measured MLflow run."""

    def __post_init__(self):
        given = [flag for name, flag in GOALS.items() if getattr(self, name) is not None]
        if len(given) != 1:
            raise ConfigError(
                "state one goal: --target-docs-per-hour N, --budget-gpus N or --budget-cpus N"
                + (f" (got {', '.join(given)})" if given else "")
            )
        for name, flag in GOALS.items():
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{flag} {value:g} must be > 0")
        if (self.run_id is None) == (self.summary is None):
            raise ConfigError("name the measured run: --run-id ID (MLflow) or --summary run_summary.json (a file)")
        if self.log and self.run_id is None:
            raise ConfigError("--log attaches the plan to an MLflow run: use --run-id, or --json to keep it as a file")
        # the planner's own rule (offramp.planning.capacity): below 1 plans actors busier than measured
        if not self.headroom >= 1.0:
            raise ConfigError(
                f"--headroom {self.headroom:g} would plan actors busier than measured; use >= 1, e.g. 1.25"
            )

    def require(self, *names: str) -> None:
        """Fail with the flag to set when a required field is missing."""
        require(self, *names)
