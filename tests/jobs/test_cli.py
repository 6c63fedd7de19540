"""The job scripts as a user runs them: bad configuration fails at start with the fix."""

import subprocess
import sys
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from offramp.config import TagConfig
from offramp.models.checkpoint import load_model
from pipelines import cli
from tests.conftest import LABELS, TEXTS, make_model

REPO = Path(__file__).resolve().parents[2]


def run(*args, **kw):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.slow  # a job subprocess
def test_tag_job_refuses_bad_configuration_before_starting(tmp_path, model_dir, corpus_parquet, command):
    r = run("jobs/tag_corpus.py", "--input", corpus_parquet, "--model", str(tmp_path), "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "not a model directory" in r.stderr and "--model" in r.stderr
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("exit:\n  polciy: entropy\n")
    status, _, err = command("tag", "--config", str(cfg))
    assert status == 2 and "did you mean 'policy'" in err
    status, _, err = command("tag", "--input", corpus_parquet, "--model", model_dir, "--output",
                             str(tmp_path / "o"), "--policy", "nope")
    assert status == 2 and "valid policies" in err
    status, _, err = command("tag", "--model", model_dir, "--output", str(tmp_path / "o"))
    assert status == 2 and "--input" in err


@pytest.mark.slow
def test_train_job_saves_a_reloadable_model_and_logs_to_mlflow(tmp_path):
    base = tmp_path / "base"
    make_model(seed=3).bert.save_pretrained(base)  # a plain tiny BERT checkpoint as the base model
    from transformers import AutoTokenizer

    from offramp.models.checkpoint import default_base_model

    AutoTokenizer.from_pretrained(default_base_model()).save_pretrained(base)
    rows = pa.table({"text": TEXTS * 2, "label": [LABELS[i % 3] for i in range(len(TEXTS) * 2)]})
    pq.write_table(rows, tmp_path / "train.parquet")
    pq.write_table(rows.slice(0, 12), tmp_path / "dev.parquet")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = run(
        "jobs/train_exits.py",
        "--train", str(tmp_path / "train.parquet"),
        "--eval", str(tmp_path / "dev.parquet"),
        "--output", str(tmp_path / "model"),
        "--base-model", str(base),
        "--set", "stage1_epochs=1", "--set", "stage2_epochs=2", "--set", "max_length=32",
        "--set", f"mlflow.tracking_uri={uri}",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    model = load_model(str(tmp_path / "model"))
    assert model.labels == LABELS and len(model.config.exit_thresholds) == 4
    assert "stored thresholds UNCERTIFIED" in r.stdout  # 4 held-out dev rows certify nothing: the line says so
    assert (tmp_path / "model" / "model.safetensors").exists() and (tmp_path / "model" / "tokenizer.json").exists()
    mlflow.set_tracking_uri(uri)
    run_ = mlflow.search_runs(experiment_names=["offramp-train"], output_format="list")[0]
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(run_.info.run_id, "loss_stage1")) >= 1
    assert len(client.get_metric_history(run_.info.run_id, "dev_accuracy_by_layer")) == 4
    assert 0 <= run_.data.metrics["dev_accuracy_full_depth"] <= 1


@pytest.mark.slow
@pytest.mark.ray
def test_audit_below_target_exits_4_and_tags_the_run(tmp_path, model_dir, corpus_parquet):
    """A nightly scheduler sees a failed audit as a non-zero exit; MLflow carries the verdict."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = run(
        "jobs/tag_corpus.py", "--input", corpus_parquet, "--model", model_dir, "--output", str(tmp_path / "o"),
        "--audit-fraction", "1.0", "--audit-target", "1.0", "--fail-below-target",
        "--set", "max_length=64", "--set", f"mlflow.tracking_uri={uri}",
    )
    assert r.returncode == 4, r.stderr[-3000:]
    assert "BELOW TARGET" in r.stdout and "below the target (the estimate; exit status 4)" in r.stderr
    out = pq.read_table(tmp_path / "o").to_pandas()
    assert out["audited"].all() and len(out) == len(TEXTS)
    mlflow.set_tracking_uri(uri)
    run_ = mlflow.search_runs(experiment_names=["offramp-tag"], output_format="list")[0]
    assert run_.data.tags["offramp.audit"] == "below_target"
    agree = (out["label"] == out["full_depth_label"]).mean()
    assert agree < 1.0 and run_.data.metrics["audit_agreement"] == pytest.approx(agree)


def test_the_run_line_says_where_the_start_up_went():
    """A short run's line says how much of its wall went before the first batch, and on what."""
    m = {"rows": 10, "rows_labeled": 9, "rows_status_truncated": 1, "mean_layers": 2.5, "docs_per_second": 5.0,
         "ideal_speedup": 2.4, "startup_seconds": 3.0, "wall_seconds": 7.0}
    line = cli.run_line("sequence", TagConfig(output="out"), m)
    assert "5.0 docs/s (3.0 s of 7.0 s to the first batch)," in line
    m.update(startup_actor_process_seconds=2.5, startup_model_load_seconds=0.4, startup_input_wait_seconds=0.1)
    line = cli.run_line("sequence", TagConfig(output="out"), m)
    assert ("(3.0 s of 7.0 s to the first batch: stage actor's process 2.5 s, model 0.4 s, "
            "waiting for input 0.1 s), mean layers 2.50 (ideal 2.40x)") in line
