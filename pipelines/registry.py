"""Registered models: a models:/ URI resolved to a local model directory, and a model directory
logged with the active MLflow run and registered as a model's next version.

    models:/sections/4          one version
    models:/sections@champion   the version an alias points to now

Tagging, calibration and serving resolve through `resolve`, the one place that does. A version is
downloaded once into the model cache (`mlflow.model_cache`, <cache>/<name>/<version>-<logged model
id>/) and read there with plain file calls, like any model directory: on a cluster of several
nodes the cache must be a path every node mounts (the tagging run's node check names it
otherwise, `pipelines/cluster.py`).

A registered version is an MLflow pyfunc model (`pipelines/pyfunc.py`, logged from code) whose one
artifact is the offramp model directory, so `mlflow.pyfunc.load_model("models:/NAME/1")` answers
texts as the endpoint does. Loading it needs this package importable (it runs offramp's steps).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelInput
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from offramp.config import ConfigError, MlflowConfig
from pipelines.store import tracking_uri

logger = logging.getLogger(__name__)

SCHEME = "models:/"
URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))$")
ARTIFACT = "model"  # the pyfunc model's artifact that holds the offramp model directory
PYFUNC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyfunc.py")  # logged as code, not pickled
REQUIREMENTS = ("torch", "transformers", "tokenizers", "ray", "mlflow", "pyarrow")  # what pyfunc.py imports, pinned


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model version, resolved to a local directory."""

    uri: str  # as given: models:/NAME/VERSION or models:/NAME@ALIAS
    name: str
    version: str
    alias: str | None  # the alias the URI named (None: a version was named)
    path: str  # the offramp model directory inside the cached download
    run_id: str  # the run that logged the version (training or calibration)
    model_id: str  # MLflow 3's logged model the version points to (models:/m-...)

    def tags(self) -> dict[str, str]:
        """Run tags that name the exact version a run used."""
        return {"offramp.model_uri": self.uri, "offramp.model_name": self.name,
                "offramp.model_version": self.version, "offramp.model_alias": self.alias or ""}


def is_registered(model: str | None) -> bool:
    return bool(model) and model.startswith(SCHEME)


def parse(uri: str) -> tuple[str, str | None, str | None]:
    """(name, version, alias) of a models:/ URI; exactly one of version and alias is set."""
    m = URI.match(uri)
    if not m:
        raise ConfigError(f"model {uri!r} is not a registered model URI; write models:/NAME/VERSION or models:/NAME@ALIAS")
    return m["name"], m["version"], m["alias"]


def check_store(uri: str) -> None:
    """A sqlite store must exist already: MLflow would create an empty one and then find no model."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if not os.path.isfile(path):
            raise ConfigError(
                f"no MLflow store at {uri} (no file {os.path.abspath(path)}); registered models are read from "
                "mlflow.tracking_uri or $MLFLOW_TRACKING_URI: point it at the store `offramp train --register` logged to"
            )


def find_version(client: MlflowClient, store: str, name: str, version: str | None, alias: str | None):
    """The ModelVersion the URI names; ConfigError naming the fix for an unknown name, alias or version."""
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models())
        raise ConfigError(
            f"no registered model {name!r} in {store} (registered: {names or 'none'}); register one with "
            f"`offramp train --register {name}` or `offramp calibrate --model DIR --register {name}`"
        ) from None
    if alias is not None:
        if alias not in registered.aliases:
            have = ", ".join(f"@{a} -> {v}" for a, v in sorted(registered.aliases.items())) or "none"
            raise ConfigError(
                f"registered model {name!r} has no alias {alias!r} (its aliases: {have}); set it with "
                f"MlflowClient().set_registered_model_alias({name!r}, {alias!r}, VERSION), or give models:/{name}/VERSION"
            )
        version = str(registered.aliases[alias])
    try:
        return client.get_model_version(name, version)
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise ConfigError(f"registered model {name!r} has no version {version} (versions: {versions}); "
                          f"give one of them, models:/{name}/VERSION") from None


def cache_root(cfg: MlflowConfig) -> str:
    return os.path.expanduser(cfg.model_cache or os.environ.get("OFFRAMP_MODEL_CACHE") or "~/.cache/offramp/models")


def model_dir_in(download: str) -> str:
    """The offramp model directory inside a downloaded pyfunc model (its MLmodel names the path)."""
    artifacts = Model.load(download).flavors.get("python_function", {}).get("artifacts") or {}
    if ARTIFACT not in artifacts:
        raise ConfigError(f"{download} is not an offramp model (its pyfunc model has no {ARTIFACT!r} artifact); "
                          "register offramp models with `offramp train --register NAME`")
    return os.path.join(download, artifacts[ARTIFACT]["path"])


def download(name: str, version: str, dest: str) -> str:
    """The version's pyfunc model in `dest`, downloaded once: into a temporary sibling, then renamed,
    so a download that was cut short never looks complete. Returns the offramp directory in it."""
    if not os.path.isdir(dest):
        parent = os.path.dirname(dest)
        os.makedirs(parent, exist_ok=True)
        partial = tempfile.mkdtemp(dir=parent, prefix=".partial-")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=f"{SCHEME}{name}/{version}", dst_path=partial)
            os.rename(partial, dest)
        except OSError:
            if not os.path.isdir(dest):  # not a concurrent download that finished first
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return model_dir_in(dest)


def resolve(uri: str, cfg: MlflowConfig) -> RegisteredModel:
    """A models:/ URI -> the version it names now, downloaded to the model cache."""
    name, version, alias = parse(uri)
    store = tracking_uri(cfg)
    check_store(store)
    mlflow.set_tracking_uri(store)  # the registry follows the tracking store; downloads read it
    mv = find_version(MlflowClient(store), store, name, version, alias)
    # MLflow 3: a version's source is its logged model, models:/m-<id>. The id keys the cache with the
    # version, so a cache shared by two stores never hands out another store's version 1.
    model_id = mv.source.removeprefix(SCHEME)
    path = download(name, str(mv.version), os.path.join(cache_root(cfg), name, f"{mv.version}-{model_id}"))
    logger.info("%s is version %s of %s, at %s", uri, mv.version, name, path)
    return RegisteredModel(uri, name, str(mv.version), alias, path, mv.run_id, model_id)


def local_model(cfg):
    """(cfg with a models:/ model replaced by its local directory, the RegisteredModel or None).
    `cfg`: any config with `model` and `mlflow` fields (tag, calibrate, serve)."""
    if not is_registered(cfg.model):
        return cfg, None
    registered = resolve(cfg.model, cfg.mlflow)
    return dataclasses.replace(cfg, model=registered.path), registered


def link_run(model: RegisteredModel) -> None:
    """Record in the active run the exact version it used: tags, and the logged model as the run's input."""
    mlflow.set_tags(model.tags())
    mlflow.log_input(model=LoggedModelInput(model.model_id))


def certificate_tags(record: dict | None) -> dict[str, str]:
    """A version's certificate as its tags: what `offramp calibrate` (or training's held-out slice)
    certified its stored thresholds for, so the registry tells a calibrated version from another."""
    if not record:
        return {"offramp.certified": "no"}
    bound = record.get("risk_bound")
    return {
        "offramp.certified": "yes",
        "offramp.certificate.mode": record["mode"],
        "offramp.certificate.target": str(record["target"]),
        "offramp.certificate.confidence": str(record["confidence"]),
        "offramp.certificate.risk_bound": "" if bound is None else f"{bound:.6g}",
        "offramp.certificate.agreement_lower": f"{record['agreement_lower']:.6g}",
        "offramp.certificate.survival": json.dumps([round(s, 4) for s in record["survival"]]),
        "offramp.certificate.mean_layers": f"{record['mean_layers']:.4g}",
        "offramp.certificate.path": record["path"],
        "offramp.certificate.rows": str(record["rows"]),
        "offramp.certificate.data": str(record.get("data", "")),
    }


def requirements() -> list[str]:
    return [f"{p}=={importlib.metadata.version(p)}" for p in REQUIREMENTS]


def register_model_dir(model_dir: str, name: str, max_length: int, tags: dict[str, str]):
    """Log `model_dir` as the active run's model (pyfunc, the directory its artifact) and register it
    as the next version of `name`, with `tags` on the version; returns the ModelVersion, whose
    run_id is the active run's."""
    info = mlflow.pyfunc.log_model(
        name="model", python_model=PYFUNC, artifacts={ARTIFACT: model_dir}, registered_model_name=name,
        pip_requirements=requirements(), model_config={"max_length": max_length},
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    logger.info("registered %s as models:/%s/%s", model_dir, name, version)
    return client.get_model_version(name, version)
