"""Registered models: one resolver for models:/NAME/VERSION and models:/NAME@ALIAS, with bad URIs
refused at start naming the fix; a registered version loads as an MLflow pyfunc model that
answers like offramp's own early-exit model."""

from __future__ import annotations

import dataclasses
import os

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from actors.endpoint import replica_plan
from offramp.config import ConfigError, MlflowConfig, ServeConfig
from offramp.exits.stage import StageSpec
from offramp.serving.tagger import ServingPlan
from offramp.exits import simulate
from offramp.models.checkpoint import ModelInfo
from offramp.policies import get_policy
from pipelines.calibrate import head_logits_for
from pipelines.registry import register_model_dir, resolve
from tests.conftest import TEXTS

DISTINCT = list(dict.fromkeys(TEXTS))


@pytest.fixture
def store(tmp_path, model_dir):
    """A sqlite store holding model `tiny` at versions 1 and 2 (both the tiny model), and a model cache."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("offramp-train")
    runs = []
    for _ in range(2):
        with mlflow.start_run() as run:
            register_model_dir(model_dir, "tiny", 64, {"offramp.certified": "no"})
            runs.append(run.info.run_id)
    return MlflowConfig(tracking_uri=uri, model_cache=str(tmp_path / "cache")), runs


def test_versions_and_aliases_resolve_into_the_cache(store):
    cfg, runs = store
    one = resolve("models:/tiny/1", cfg)
    assert (one.name, one.version, one.alias, one.run_id) == ("tiny", "1", None, runs[0])
    assert ModelInfo.read(one.path).num_layers == 4 and one.path.startswith(cfg.model_cache)
    client = MlflowClient(cfg.tracking_uri)
    client.set_registered_model_alias("tiny", "champion", "1")
    assert resolve("models:/tiny@champion", cfg).path == one.path  # cached once per version
    client.set_registered_model_alias("tiny", "champion", "2")  # the alias moved
    two = resolve("models:/tiny@champion", cfg)
    assert (two.version, two.alias, two.run_id) == ("2", "champion", runs[1]) and two.path != one.path
    assert two.tags()["offramp.model_version"] == "2" and client.get_model_version("tiny", "2").tags == {
        "offramp.certified": "no"}


def test_bad_uris_fail_at_start_naming_the_fix(store, tmp_path):
    cfg, _ = store
    with pytest.raises(ConfigError, match="models:/NAME/VERSION or models:/NAME@ALIAS"):
        resolve("models:/tiny", cfg)
    with pytest.raises(ConfigError, match=r"no registered model 'nope'.*registered: \['tiny'\].*--register nope"):
        resolve("models:/nope/1", cfg)
    with pytest.raises(ConfigError, match=r"no alias 'champion' \(its aliases: none\).*set_registered_model_alias"):
        resolve("models:/tiny@champion", cfg)
    with pytest.raises(ConfigError, match=r"no version 7 \(versions: \[1, 2\]\)"):
        resolve("models:/tiny/7", cfg)
    missing = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/other.db", model_cache=cfg.model_cache)
    with pytest.raises(ConfigError, match="no MLflow store at .*MLFLOW_TRACKING_URI"):
        resolve("models:/tiny/1", missing)
    assert not (tmp_path / "other.db").exists()  # and none was created


@pytest.mark.slow  # loads the model through MLflow's pyfunc loader
def test_the_pyfunc_model_answers_like_offramps_own_model(store, model_dir):
    loaded = mlflow.pyfunc.load_model("models:/tiny/1")
    answers = loaded.predict(DISTINCT)
    # offramp's own model: every head at full depth, each row leaving at the first head its stored threshold passes
    info = ModelInfo.read(model_dir)
    policy = get_policy(info.policy)
    hp = head_logits_for(model_dir, DISTINCT, 64)
    scores = simulate.head_scores(policy, hp, info.exit_layers)
    thresholds = np.array([[info.thresholds[l] for l in info.exit_layers]])
    layers, preds = simulate.simulate(scores, hp.preds, info.exit_layers, policy, thresholds)
    assert list(answers["label"]) == [info.labels[p] for p in preds[0]]
    assert list(answers["exit_layer"]) == list(layers[0]) and len(set(layers[0])) > 1  # rows leave at several layers
    frame = loaded.predict(pd.DataFrame({"text": DISTINCT}))
    assert list(frame["label"]) == list(answers["label"])


def test_a_replica_on_a_node_without_the_drivers_cache_downloads_the_pinned_version(store, tmp_path):
    """The driver resolved @champion to version 1 into its cache; the alias then moved, and a
    replica starts on a node that does not mount that cache: it loads version 1 into its own."""
    cfg, _ = store
    driver = resolve("models:/tiny/1", cfg)
    MlflowClient(cfg.tracking_uri).set_registered_model_alias("tiny", "champion", "2")
    plan = ServingPlan(str(tmp_path / "elsewhere" / "model"), "sequence", (), StageSpec(0, 0, 4), 64, {},
                       source="models:/tiny/1")
    node = dataclasses.replace(ServeConfig(model="models:/tiny@champion"),
                               mlflow=dataclasses.replace(cfg, model_cache=str(tmp_path / "node-cache")))
    got = replica_plan(plan, node)
    assert got.model_dir.startswith(str(tmp_path / "node-cache"))
    assert os.path.relpath(got.model_dir, str(tmp_path / "node-cache")) == os.path.relpath(driver.path, cfg.model_cache)
    assert ModelInfo.read(got.model_dir).num_layers == 4
    here = dataclasses.replace(plan, model_dir=driver.path)
    assert replica_plan(here, node) is here  # a node that sees the directory reads it
