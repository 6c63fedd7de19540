"""jobs/calibrate.py as a user runs it: certify, write into the model, log to MLflow; refuse what it can't."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import BertConfig

from offramp.quality import calibration
from pipelines.calibrate import head_logits_for
from offramp.models.profile import load_profile
from offramp.policies import get_policy
from offramp.config import ConfigError, TagConfig
from pipelines.run import ModelInfo, check_model, make_plan
from tests.conftest import LABELS, SENTENCES, TAGS, TEXTS

# each test runs a job in a subprocess (a torch import, seconds each): out of the quick loop
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ROWS = TEXTS * 4  # 144 rows


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture
def setup(tmp_path, model_dir):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    data = tmp_path / "calib.parquet"
    pq.write_table(pa.table({"text": ROWS, "label": [LABELS[i % 3] for i in range(len(ROWS))]}), data)
    return model, data, f"sqlite:///{tmp_path}/mlflow.db"


def test_calibrate_writes_a_certified_threshold_and_logs_the_curve(setup):
    model, data, uri = setup
    r = run("jobs/calibrate.py", "--model", str(model), "--data", str(data), "--min-agreement", "0.6",
            "--label-column", "label",  # labels with an agreement target: accuracy is reported, no drop bound
            "--confidence", "0.8", "--set", "max_length=64", "--set", f"mlflow.tracking_uri={uri}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "written to" in r.stdout and "guarantee" in r.stdout
    rec = load_profile(str(model))["calibration"]
    assert (rec["mode"], rec["target"], rec["confidence"]) == ("agreement", 0.6, 0.8)
    # a seeded 30% of the rows shaped the threshold path; the rest certified it
    assert rec["family_rows"] == round(0.3 * len(ROWS)) and rec["rows"] + rec["family_rows"] == len(ROWS)
    cfg = BertConfig.from_pretrained(model)
    assert cfg.exit_thresholds == rec["thresholds"] and cfg.exit_certified is True
    # the conditions the certificate holds under, for tagging runs to compare with
    assert (rec["max_length"], rec["dtype"], rec["policy"], rec["mechanism"]) == (64, "float32", cfg.exit_policy, "deebert")
    # the stored thresholds do on all rows what the record says they did on the certifying ones, or better
    logits = head_logits_for(str(model), ROWS, 64)
    point = calibration.evaluate(logits, list(cfg.exit_layers), get_policy(cfg.exit_policy), rec["thresholds"],
                       calibration.Target("agreement", 0.6, 0.8))
    assert point["agreement"] >= 0.6 and rec["agreement_lower"] >= 0.6 and rec["risk_bound"] <= 0.4
    info = ModelInfo.read(str(model))
    assert info.calibrated_agreement == 0.6 and info.survival == rec["survival"]
    mlflow.set_tracking_uri(uri)
    run_ = mlflow.search_runs(experiment_names=["offramp-calibrate"], output_format="list")[0]
    assert run_.data.tags["offramp.calibration"] == "certified" and run_.data.params["path"] == rec["path"]
    assert run_.data.metrics["chosen_mean_layers"] == pytest.approx(rec["mean_layers"])
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_.info.run_id)}
    assert {"calibration.json", "calibration_tradeoff.png"} <= arts


def test_uncertifiable_target_leaves_the_model_unchanged_and_says_how_many_rows(setup):
    model, data, uri = setup
    before = (model / "config.json").read_text()
    r = run("jobs/calibrate.py", "--model", str(model), "--data", str(data), "--min-agreement", "0.999",
            "--set", "max_length=64", "--set", f"mlflow.tracking_uri={uri}")
    assert r.returncode == 3 and "model is unchanged" in r.stdout and "2302 certifying rows" in r.stdout
    assert (model / "config.json").read_text() == before and "calibration" not in load_profile(str(model))


def test_a_token_model_is_certified_over_sentences(token_model_dir, tmp_path, command):
    """Tagged sentences: a word-accuracy target; words alone: an agreement target. The certified
    threshold is written with a record that says how words leave. A per-layer path is shaped on
    a seeded share of the sentences and certified on the rest; a sentence-mode model refuses it."""
    model = tmp_path / "tagger"
    shutil.copytree(token_model_dir, model)
    sentences = SENTENCES * 10
    tags = [[TAGS[(len(w) + i) % len(TAGS)] for i, w in enumerate(s)] for s in sentences]
    data = tmp_path / "tagged.parquet"
    pq.write_table(pa.table({"tokens": sentences, "pos": tags, "text": [" ".join(s) for s in sentences]}), data)
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def certify_tagged(path: str):
        """Calibrate on the tagged sentences along `path`: (stdout, the model's info after)."""
        status, out, err = command("calibrate", "--model", str(model), "--data", str(data), "--text-column", "tokens",
                                   "--label-column", "pos", "--max-accuracy-drop", "0.2", "--set", "max_length=64",
                                   "--set", f"mlflow.tracking_uri={uri}", "--path", path)
        assert status == 0, err
        return out, ModelInfo.read(str(model))

    out, info = certify_tagged("global")
    rec = info.calibration
    assert info.certified and rec["unit"] == "sentence" and rec["rows"] == 140 and rec["mode"] == "accuracy"
    assert list(info.thresholds.values()) == rec["thresholds"] == [rec["threshold"]] * len(info.exit_layers)
    assert (rec["token_exit_mode"], rec["exit_window"], rec["max_length"]) == ("token", 1, 64)
    assert f"threshold {rec['threshold']:.4g} (written to {model})" in out and "per-sentence drop" in out
    client = mlflow.MlflowClient(uri)
    logged = client.search_runs([client.get_experiment_by_name("offramp-calibrate").experiment_id])[0]
    assert logged.data.params["unit"] == "sentence" and logged.data.metrics["chosen_p_value"] <= 0.1
    # untagged text, split into words as the pipeline splits it: an agreement target
    status, out, err = command("calibrate", "--model", str(model), "--data", str(data), "--min-agreement", "0.8",
                               "--set", "max_length=64", "--set", f"mlflow.tracking_uri={uri}")
    assert status == 0 and ModelInfo.read(str(model)).calibration["mode"] == "agreement", err
    # per-layer: 30% of the 140 sentences shape one threshold per head, the other 98 certify
    out, info = certify_tagged("per-layer")
    rec = info.calibration
    assert (rec["path"], rec["rows"], rec["family_rows"], rec["threshold"]) == ("per-layer", 98, 42, None)
    assert list(info.thresholds.values()) == rec["thresholds"] and rec["thresholds"][-1] == 1.0 and rec["alpha"] > 0
    assert "per-layer thresholds [" in out and f"(alpha {rec['alpha']:.4g}) (written to {model})" in out
    logged = client.search_runs([client.get_experiment_by_name("offramp-calibrate").experiment_id],
                                order_by=["attributes.start_time DESC"])[0]
    assert (logged.data.params["path"], logged.data.params["family_rows"]) == ("per-layer", "42")
    sentence_mode = tmp_path / "sentee"
    shutil.copytree(token_model_dir, sentence_mode)
    config = json.loads((sentence_mode / "config.json").read_text())
    (sentence_mode / "config.json").write_text(json.dumps({**config, "token_exit_mode": "sentence"}))
    status, _, err = command("calibrate", "--model", str(sentence_mode), "--data", str(data), "--min-agreement", "0.8",
                             "--path", "per-layer")
    assert status == 2 and "needs token exit mode, not 'sentence'" in err


def test_dry_run_and_bad_targets(setup, command):
    model, data, uri = setup
    before = (model / "config.json").read_text()
    r = run("jobs/calibrate.py", "--model", str(model), "--data", str(data), "--label-column", "label",
            "--max-accuracy-drop", "0.2", "--dry-run", "--set", "max_length=64", "--set", f"mlflow.tracking_uri={uri}")
    assert r.returncode == 0 and "dry run" in r.stdout and (model / "config.json").read_text() == before
    status, _, err = command("calibrate", "--model", str(model), "--data", str(data), "--max-accuracy-drop", "0.01")
    assert status == 2 and "--label-column" in err
    status, _, err = command("calibrate", "--model", str(model), "--data", str(data), "--min-agreement", "0.9",
                             "--max-accuracy-drop", "0.01")
    assert status == 2 and "state one target" in err
    status, _, err = command("calibrate", "--model", str(model), "--data", str(data) + ".missing",
                             "--min-agreement", "0.9")
    assert status == 2 and "not found" in err


def test_the_policy_is_certified_with_the_thresholds_and_written_with_them(setup, command):
    """By default every policy the model can run competes on the rows that shape the path, and the
    winner is written with its thresholds; --policy names one, or keeps the stored one."""
    model, data, uri = setup
    common = ["--data", str(data), "--min-agreement", "0.6", "--confidence", "0.8", "--set", "max_length=64",
              "--set", f"mlflow.tracking_uri={uri}"]
    r = run("jobs/calibrate.py", "--model", str(model), *common)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg, rec = BertConfig.from_pretrained(model), load_profile(str(model))["calibration"]
    assert rec["policy"] == cfg.exit_policy and f"policy {cfg.exit_policy} (fastest certified in a trial" in r.stdout
    mlflow.set_tracking_uri(uri)
    logged = mlflow.search_runs(experiment_names=["offramp-calibrate"], output_format="list")[0].data
    assert logged.params["policy"] == cfg.exit_policy
    assert {"family_speedup_entropy", "family_speedup_max_prob", "family_speedup_margin"} <= set(logged.metrics)
    r = run("jobs/calibrate.py", "--model", str(model), "--policy", "margin", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    written = BertConfig.from_pretrained(model).exit_policy
    assert written == load_profile(str(model))["calibration"]["policy"] == "margin"
    assert "fastest certified" not in r.stdout  # one candidate: nothing was compared
    r = run("jobs/calibrate.py", "--model", str(model), "--policy", "stored", *common)
    assert r.returncode == 0 and BertConfig.from_pretrained(model).exit_policy == "margin"
    status, _, err = command("calibrate", "--model", str(model), "--policy", "bogus", *common)
    assert status == 2 and "valid policies" in err
    status, _, err = command("calibrate", "--model", str(model), "--policy", "hybrid", *common)
    assert status == 2 and "--mechanism de3" in err


def test_a_bfloat16_certificate_covers_bfloat16_runs_and_only_those(setup):
    """Thresholds certified on a bfloat16 pass hold for runs that compute in bfloat16: the tagging
    run in that dtype is covered, a float32 run is told it is not (and --strict refuses it)."""
    model, data, uri = setup
    r = run("jobs/calibrate.py", "--model", str(model), "--data", str(data), "--min-agreement", "0.6",
            "--confidence", "0.8", "--dtype", "bfloat16", "--set", "max_length=64",
            "--set", f"mlflow.tracking_uri={uri}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "for runs at max_length 64 in bfloat16" in r.stdout
    assert load_profile(str(model))["calibration"]["dtype"] == "bfloat16"
    # the certifying pass computed in bfloat16: its head outputs are the float32 ones rounded
    f32, b16 = (head_logits_for(str(model), ROWS, 64, dtype=d).logits for d in ("float32", "bfloat16"))
    # bfloat16 rounds each op to 8 significant bits: on logits of size up to 3.5 the median entry moves by
    # about 0.02 over 4 layers (one ill-conditioned row of this random tiny model moves 0.4)
    assert 0 < float(np.median(abs(b16 - f32))) < 0.05
    tag = TagConfig(model=str(model), max_length=64, dtype="bfloat16")
    info, task = check_model(tag, str(model))
    assert make_plan(tag, info, task, {}).certificate == []
    other = dataclasses.replace(tag, dtype="float32")
    assert make_plan(other, info, task, {}).certificate == [
        "stages compute in float32 but the certificate was made in bfloat16"]
    with pytest.raises(ConfigError, match="--strict"):
        make_plan(dataclasses.replace(other, strict=True), info, task, {})
