"""The issue's "done when", as a user runs it from the README: a model goes from
`train --register` to `calibrate models:/NAME/1` (a new version, the certificate as its tags) to an
alias, and that alias is tagged by `tag` and served by `serve`; the tagging runs record the
version the alias pointed to, and MLflow's system metrics."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from mlflow import MlflowClient
from ray import serve

from offramp.config import MlflowConfig
from pipelines.registry import resolve
from pipelines.serve import start, url
from tests.conftest import LABELS, TEXTS, make_model
from tests.pipelines.test_serve import free_port, serve_config

pytestmark = [pytest.mark.slow, pytest.mark.ray]
DISTINCT = list(dict.fromkeys(TEXTS))


@pytest.fixture
def data(tmp_path, tokenizer):
    base = tmp_path / "base"
    make_model(seed=3).bert.save_pretrained(base)  # a plain tiny BERT as the backbone
    tokenizer.save_pretrained(base)
    rows = pa.table({"text": TEXTS * 2, "label": [LABELS[i % 3] for i in range(len(TEXTS) * 2)]})
    pq.write_table(rows, tmp_path / "train.parquet")
    pq.write_table(rows.slice(0, 12), tmp_path / "dev.parquet")
    calib = TEXTS * 4
    pq.write_table(pa.table({"text": calib, "label": [LABELS[i % 3] for i in range(len(calib))]}), tmp_path / "calib.parquet")
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(DISTINCT))], "text": DISTINCT}), tmp_path / "corpus.parquet")
    return tmp_path


@pytest.fixture
def fast_system_metrics():
    """Sample every second, log every sample: a tiny run lasts seconds, not MLflow's 10 s interval."""
    mlflow.set_system_metrics_sampling_interval(1)
    mlflow.set_system_metrics_samples_before_logging(1)
    yield
    mlflow.set_system_metrics_sampling_interval(None)
    mlflow.set_system_metrics_samples_before_logging(None)


def tag_runs(uri: str) -> list:
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["offramp-tag"], output_format="list", order_by=["attributes.start_time ASC"])


def test_train_register_calibrate_alias_tag_and_serve_one_model(data, command, local_ray, fast_system_metrics):
    uri, cache = f"sqlite:///{data}/mlflow.db", str(data / "cache")
    store = ["--set", f"mlflow.tracking_uri={uri}", "--set", f"mlflow.model_cache={cache}"]
    status, out, err = command(
        "train", "--train", str(data / "train.parquet"), "--eval", str(data / "dev.parquet"), "--output",
        str(data / "trained"), "--base-model", str(data / "base"), "--register", "tiny", "--set", "stage1_epochs=1",
        "--set", "stage2_epochs=2", "--set", "max_length=32", "--set", f"mlflow.tracking_uri={uri}")
    assert status == 0, err[-2000:]
    assert "registered" in out and "models:/tiny/1" in out
    client = MlflowClient(uri)
    v1 = client.get_model_version("tiny", "1")
    train_run = client.get_run(v1.run_id)
    assert train_run.info.experiment_id == mlflow.get_experiment_by_name("offramp-train").experiment_id
    datasets = {d.dataset.name: d for d in train_run.inputs.dataset_inputs}
    assert datasets["train.parquet"].dataset.source and str(data / "train.parquet") in datasets["train.parquet"].dataset.source
    assert {"dev_tradeoff_curve.json", "dev_layer_accuracy.json"} <= {a.path for a in client.list_artifacts(v1.run_id)}
    v1_config = (data / "trained" / "config.json").read_text()

    # calibrate the registered version: version 2, the certificate on it, its run the calibration run
    status, out, err = command("calibrate", "--model", "models:/tiny/1", "--data", str(data / "calib.parquet"),
                               "--min-agreement", "0.6", "--confidence", "0.8", "--set", "max_length=32", *store)
    assert status == 0, err[-2000:] + out
    assert "registered as models:/tiny/2" in out
    v2 = client.get_model_version("tiny", "2")
    cal_run = client.get_run(v2.run_id)
    assert cal_run.data.tags["offramp.calibration"] == "certified" and cal_run.data.params["model"] == "models:/tiny/1"
    assert cal_run.data.tags["offramp.model_version"] == "1"  # it links the version it calibrated
    assert v2.tags["offramp.certified"] == "yes" and v2.tags["offramp.calibrated_from"] == "models:/tiny/1"
    assert (v2.tags["offramp.certificate.mode"], v2.tags["offramp.certificate.target"],
            v2.tags["offramp.certificate.confidence"]) == ("agreement", "0.6", "0.8")
    assert float(v2.tags["offramp.certificate.risk_bound"]) <= 0.4 and json.loads(v2.tags["offramp.certificate.survival"])
    cfg = MlflowConfig(tracking_uri=uri, model_cache=cache)
    calibrated = json.loads((Path(resolve("models:/tiny/2", cfg).path) / "exit_profile.json").read_text())["calibration"]
    assert (calibrated["target"], calibrated["confidence"]) == (0.6, 0.8)
    assert (Path(resolve("models:/tiny/1", cfg).path) / "config.json").read_text() == v1_config  # the source is unchanged

    # the alias, tagged: the run records the version the alias pointed to, and system metrics
    client.set_registered_model_alias("tiny", "champion", "2")
    status, out, err = command("tag", "--input", str(data / "corpus.parquet"), "--model", "models:/tiny@champion",
                               "--output", str(data / "out"), "--max-length", "32", "--audit-fraction", "0.5", *store)
    assert status == 0, err[-2000:]
    batch = {DISTINCT[int(r["id"][1:])]: r for r in pq.read_table(data / "out").to_pylist()}
    assert len(batch) == len(DISTINCT) and all(r["label"] in LABELS for r in batch.values())
    run = tag_runs(uri)[-1]
    assert (run.data.tags["offramp.model_version"], run.data.tags["offramp.model_alias"]) == ("2", "champion")
    assert run.data.tags["offramp.model_name"] == "tiny" and run.data.tags["offramp.trend"] == "no earlier runs"
    assert [m.model_id for m in client.get_run(run.info.run_id).inputs.model_inputs] == [v2.source.removeprefix("models:/")]
    assert "system/cpu_utilization_percentage" in run.data.metrics and "system/system_memory_usage_megabytes" in run.data.metrics
    loaded = mlflow.pyfunc.load_model("models:/tiny@champion")  # the pyfunc face labels as the batch did
    assert list(loaded.predict(DISTINCT)["label"]) == [batch[t]["label"] for t in DISTINCT]

    # served from the alias: the endpoint's labels and exit layers equal the batch output's
    served = serve_config("models:/tiny@champion", free_port(), max_length=32, mlflow=cfg)
    try:
        start(served)
        answers = requests.post(url(served), json={"texts": DISTINCT[:8]}, timeout=60).json()["results"]
    finally:
        serve.shutdown()
    assert [(a["label"], a["exit_layer"]) for a in answers] == [(batch[t]["label"], batch[t]["exit_layer"]) for t in DISTINCT[:8]]

    # the alias moves back: the next night's run records version 1
    client.set_registered_model_alias("tiny", "champion", "1")
    status, _, err = command("tag", "--input", str(data / "corpus.parquet"), "--model", "models:/tiny@champion",
                             "--output", str(data / "out"), "--overwrite", "--max-length", "32", *store)
    assert status == 0, err[-2000:]
    runs = tag_runs(uri)
    assert [r.data.tags["offramp.model_version"] for r in runs] == ["2", "1"]
    assert runs[-1].data.tags["offramp.trend"] != "no earlier runs"  # judged against the first night
