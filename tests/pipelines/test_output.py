"""A run's output as a scheduler sees it: the manifest written last, --resume after a failed
run, the error budget, and the rows-per-file bounds. Real local Ray, real MLflow."""

from __future__ import annotations

import json
import threading
import time

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest

from actors.stage import StageActor
from offramp import schema
from offramp.config import MlflowConfig, StageConfig, TagConfig
from offramp.tasks import mark_rows_that_raise
from pipelines import output as run_output
from pipelines import run as run_module
from pipelines.output import CHECKPOINT, MANIFEST, STARTED
from pipelines.run import run_tagging
from tests.conftest import NUM_LAYERS, TEXTS

pytestmark = [pytest.mark.ray, pytest.mark.slow]
N_FILES, ROWS_PER_FILE = 6, 40


@pytest.fixture(autouse=True)
def _ray(local_ray):
    """Every test here runs on the module's local Ray."""


@pytest.fixture
def corpus(tmp_path):
    """N_FILES JSONL files of ROWS_PER_FILE rows, ids d<file>_<row>."""
    path = tmp_path / "corpus"
    path.mkdir()
    for f in range(N_FILES):
        rows = [json.dumps({"id": f"d{f}_{i}", "text": TEXTS[(f + i) % len(TEXTS)]}) for i in range(ROWS_PER_FILE)]
        (path / f"part{f}.jsonl").write_text("\n".join(rows) + "\n")
    return path


def all_ids() -> set[str]:
    return {f"d{f}_{i}" for f in range(N_FILES) for i in range(ROWS_PER_FILE)}


def config(tmp_path, corpus, model_dir, **kw) -> TagConfig:
    base = dict(input=str(corpus), model=model_dir, output=str(tmp_path / "out"), max_length=64, batch_size=8,
                tokenize_batch_size=8, min_rows_per_file=1, max_rows_per_file=30,
                stages=(StageConfig(layers=(0, 2), batch_size=8), StageConfig(layers=(2, NUM_LAYERS), batch_size=8)),
                mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="test"))
    base.update(kw)
    return TagConfig(**base)


def output_ids(out) -> list[str]:
    return pq.read_table(out, columns=["id"]).column("id").to_pylist()


def fail_on(ids: set[str], marker=None):
    """A stage actor class that raises on any batch holding one of `ids` (while `marker`, a
    file, is absent, when given)."""

    class Poisoned(StageActor):
        def __call__(self, batch):
            if (marker is None or not marker.exists()) and ids & set(batch["id"].tolist()):
                raise RuntimeError("poisoned batch")
            return super().__call__(batch)

    return Poisoned


def test_a_complete_run_writes_its_manifest_last_with_counts_that_match_the_output(tmp_path, corpus, model_dir, command):
    cfg = config(tmp_path, corpus, model_dir)
    out = tmp_path / "out"
    status, stdout, _ = command("tag", "--input", cfg.input, "--model", model_dir, "--output", str(out),
                                "--set", "max_length=64", "--set", "min_rows_per_file=1", "--set", "max_rows_per_file=30",
                                "--set", f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}")
    assert status == 0, stdout
    manifest = json.loads((out / MANIFEST).read_text())
    n = N_FILES * ROWS_PER_FILE
    assert manifest["complete"] and manifest["rows_in"] == manifest["rows_out"] == n and manifest["files_in"] == N_FILES
    assert sum(manifest["rows_by_status"].values()) == n and manifest["rows_by_status"]["ok"] == n
    files = manifest["output_files"]
    assert sum(f["rows"] for f in files) == n and all(f["rows"] <= 30 for f in files)  # max_rows_per_file
    assert all((out / f["path"]).stat().st_size == f["bytes"] for f in files)
    assert sorted(output_ids(out)) == sorted(all_ids())
    assert not (out / CHECKPOINT).exists()  # the checkpoints go once the manifest is there
    run = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(manifest["mlflow"]["run_id"])
    assert run.data.metrics["rows"] == run.data.metrics["rows_in"] == n and run.data.tags["offramp.complete"] == "true"
    assert manifest["model"]["digest"] and manifest["config_digest"] == json.loads((out / STARTED).read_text())["config_digest"]
    # a finished run is not resumed, and a new run over it needs --overwrite
    status, _, err = command("tag", "--input", cfg.input, "--model", model_dir, "--output", str(out), "--resume")
    assert status == 2 and "complete" in err and "nothing to resume" in err


def test_resume_after_a_failed_run_writes_each_missing_row_once(tmp_path, corpus, model_dir, monkeypatch):
    cfg = config(tmp_path, corpus, model_dir)
    with pytest.raises(Exception, match="poisoned batch"):
        run_tagging(cfg, stage_cls=fail_on({"d5_39"}))  # the last file's last row: earlier blocks are written
    out = tmp_path / "out"  # settled: the failed run's last write tasks have landed (run_output.settle)
    before = {p.name for p in out.glob("*.parquet")}
    assert not (out / MANIFEST).exists() and (out / STARTED).exists()
    assert sum(pq.read_metadata(out / name).num_rows for name in before) < N_FILES * ROWS_PER_FILE
    with pytest.raises(Exception, match="other settings.*max_length"):  # the same run or none
        run_tagging(config(tmp_path, corpus, model_dir, resume=True, max_length=32))
    result = run_tagging(config(tmp_path, corpus, model_dir, resume=True, batch_size=4))  # how it runs may change
    ids = output_ids(out)
    assert sorted(ids) == sorted(all_ids()) and len(ids) == len(set(ids))  # every row, once
    # the rows this attempt wrote are those of its new files (a file whose checkpoint the failed
    # run never committed is deleted by the resume and its rows written again)
    new = [p for p in out.glob("*.parquet") if p.name not in before]
    assert result.complete and result.metrics["rows_written"] == sum(pq.read_metadata(p).num_rows for p in new)
    keys = pq.read_table(out, columns=[schema.SOURCE_ROW]).column(0).to_pylist()
    assert len(set(keys)) == len(keys) and "part5.jsonl:40" in keys


def test_settle_waits_for_the_last_write_and_says_when_the_output_keeps_changing(tmp_path, corpus, model_dir):
    cfg = config(tmp_path, corpus, model_dir)
    out = tmp_path / "out"
    out.mkdir()

    def writer(n, every_s):
        for i in range(n):
            time.sleep(every_s)
            (out / f"late{i}.parquet").write_bytes(b"x")

    thread = threading.Thread(target=writer, args=(5, 0.3))  # the last file lands 1.5 s in
    thread.start()
    assert run_output.settle(cfg, quiet_s=1.0, limit_s=20.0)
    assert len(list(out.glob("late*.parquet"))) == 5  # it returned after the last one, not before
    thread.join()
    thread = threading.Thread(target=writer, args=(12, 0.25))  # never quiet for 1 s within 2 s
    thread.start()
    assert not run_output.settle(cfg, quiet_s=1.0, limit_s=2.0)
    thread.join()


def test_settle_gives_up_at_once_on_a_store_it_cannot_list(tmp_path, corpus, model_dir, monkeypatch):
    """The store may be why the run failed: settling must not replace the run's error with its own."""

    class Down:
        def get_file_info(self, selector):
            raise OSError("connection refused")

    monkeypatch.setattr(run_output, "filesystem", lambda uri: (Down(), "out"))
    t0 = time.monotonic()
    assert not run_output.settle(config(tmp_path, corpus, model_dir), quiet_s=1.0, limit_s=20.0)
    assert time.monotonic() - t0 < 5.0  # it returns on the first failed listing; waiting would take the 20 s limit


def test_blocks_that_fail_within_the_budget_leave_an_incomplete_run_that_resume_completes(
        tmp_path, corpus, model_dir, command, monkeypatch):
    marker = tmp_path / "fixed"
    poisoned = fail_on({"d2_7"}, marker)
    monkeypatch.setattr(run_module, "StageActor", poisoned)
    original = run_module.run_tagging
    monkeypatch.setattr(run_module, "run_tagging", lambda cfg, **kw: original(cfg, stage_cls=poisoned, **kw))
    args = ["tag", "--input", str(corpus), "--model", model_dir, "--output", str(tmp_path / "out"),
            "--set", "max_length=64", "--set", "tokenize_batch_size=8", "--set", "batch_size=8",
            "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    status, stdout, err = command(*args, "--set", "max_errored_blocks=2")
    assert status == 5 and "not in the output" in err and "--resume" in err, (stdout, err)
    out = tmp_path / "out"
    assert not (out / MANIFEST).exists()
    written = output_ids(out)
    assert "d2_7" not in written and len(written) == len(set(written)) and len(written) >= N_FILES * ROWS_PER_FILE - 16
    marker.write_text("the cause is fixed")
    status, stdout, err = command(*args, "--resume")
    assert status == 0, err
    ids = output_ids(out)
    assert sorted(ids) == sorted(all_ids())
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["rows_out"] == manifest["rows_in"] == len(ids) and len(manifest["attempts"]) == 2


def test_a_row_whose_tokenizing_raises_gets_status_error_and_the_rest_run():
    def step(batch, audit):  # as the tasks' tokenize: a row with a read status is not tokenized
        read = batch.get(schema.READ_STATUS, [""] * len(batch["text"]))
        if any(t == "boom" and not s for t, s in zip(batch["text"], read)):
            raise ValueError("cannot tokenize")
        return {**batch, schema.STATUS: np.array([s or "ok" for s in read], dtype=object)}

    batch = {"id": np.array(["a", "b", "c"], dtype=object), "text": np.array(["fine", "boom", "also fine"], dtype=object)}
    out = mark_rows_that_raise(step, batch, None, "id")
    assert out[schema.STATUS].tolist() == ["ok", schema.ERROR, "ok"]
    with pytest.raises(ValueError):  # every row raising is not a row's fault: the block fails
        mark_rows_that_raise(step, {"id": batch["id"][1:2].repeat(2), "text": batch["text"][1:2].repeat(2)}, None, "id")
