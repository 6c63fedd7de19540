"""Where a run's MLflow records live: the tracking store a config names, and the check that it
outlives a `ray job submit` job. Light on purpose (no mlflow, no plotting): the registry's
resolver, which every Serve replica imports, needs only this of the tracking code."""

from __future__ import annotations

import os

from offramp.config import ConfigError, MlflowConfig

DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri(cfg: MlflowConfig) -> str:
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for the driver of a `ray job submit` job


def check_tracking_uri(cfg: MlflowConfig) -> None:
    """Fail at start where a run's MLflow record would be lost: under `ray job submit` the driver
    runs in Ray's temporary copy of the working directory, so a relative sqlite store (the
    default `sqlite:///mlflow.db`) would be written there and deleted with it."""
    uri = tracking_uri(cfg)
    if cfg.enabled and os.environ.get(JOB_ENV) and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        raise ConfigError(
            f"MLflow store {uri} is relative to the job's temporary working directory and would be lost; "
            "give an absolute one on storage that outlives the job (--set mlflow.tracking_uri=sqlite:////shared/mlflow.db, "
            "or an MLflow server), or pass MLFLOW_TRACKING_URI to the job: "
            "ray job submit --runtime-env-json '{\"env_vars\": {\"MLFLOW_TRACKING_URI\": \"...\"}}'"
        )
