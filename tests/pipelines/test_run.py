"""End to end under a real local Ray: the actual Ray Data pipeline, its output and its MLflow run."""

from __future__ import annotations

import dataclasses
import json
import os

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from actors.rebatch import RebatchingStageActor
from actors.stage import StageActor
from offramp import schema
from offramp.exits.stage import StageSpec
from offramp.tasks.sequence import tokenize_batch
from offramp.text.tokenize import load_tokenizer
from offramp.config import AuditConfig, ConfigError, MlflowConfig, RayConfig, StageConfig, TagConfig
from offramp.models.checkpoint import load_model
from pipelines import run_tagging, tag_dataset
from pipelines.tracking import log_tag_run
from tests.conftest import LABELS, NUM_LAYERS, TEXTS, crash_once

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _ray(local_ray):
    """Every test here runs on the module's local Ray."""


def config(tmp_path, input_path, model_dir, **kw) -> TagConfig:
    base = dict(
        input=input_path,
        model=model_dir,
        output=str(tmp_path / "out"),
        id_column="id",
        text_column="text",
        max_length=64,
        batch_size=8,
        tokenize_batch_size=8,
        stages=(StageConfig(layers=(0, 2), batch_size=8), StageConfig(layers=(2, NUM_LAYERS), batch_size=8)),
        mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="test"),
        ray=RayConfig(),
    )
    base.update(kw)
    return TagConfig(**base)


def read(path):
    return pq.read_table(path).to_pandas()


def test_two_stage_pipeline_one_row_per_input_with_exits_in_both_stages(tmp_path, model_dir, corpus_parquet):
    cfg = config(
        tmp_path, corpus_parquet, model_dir, label_column="label", passthrough_columns=("source",), full_depth_eval_rows=-1,
        audit=AuditConfig(fraction=0.3, seed=1, target_agreement=0.5),
    )
    result = run_tagging(cfg)
    out = read(cfg.output)
    inp = pq.read_table(corpus_parquet).to_pandas()
    assert len(out) == len(inp) and sorted(out["id"]) == sorted(inp["id"])  # one row per input, no dups
    assert set(out["status"]) == {"ok"}
    assert set(out["label"]) <= set(LABELS)
    assert ((out["exit_layer"] >= 1) & (out["exit_layer"] <= 2)).any(), "rows exit in stage 0"
    assert (out["exit_layer"] > 2).any(), "rows exit in stage 1"
    merged = out.merge(inp, on="id", suffixes=("", "_in"))
    assert (merged["source"] == merged["source_in"]).all() and (merged["gold_label"] == merged["label_in"]).all()

    m = result.metrics
    assert m["rows"] == len(out) and m["rows_labeled"] == len(out)
    assert m["mean_layers"] == pytest.approx(out["exit_layer"].mean())
    # stage 1 computed the rows that had not exited, and every audited row
    assert m["stage1_rows_in"] == int(((out["exit_layer"] > 2) | out["audited"]).sum())
    assert m["stage0_rows_exited"] + m["stage1_rows_exited"] == len(out)
    assert m["accuracy"] == pytest.approx((out["label"] == out["gold_label"]).mean())
    assert sum(result.exit_histogram.values()) == len(out)
    # the full-depth pass ran every row to the last layer; its accuracy is the final head's
    assert m["full_depth_eval_rows"] == len(out)
    assert 0 <= m["accuracy_full_depth"] <= 1 and m["accuracy_exit_on_eval_rows"] == pytest.approx(m["accuracy"])
    # stage 1 computed only what survived stage 0 (work metrics come from the actors themselves)
    assert result.stage_timings[1]["rows_in"] == m["stage1_rows_in"]
    # every batch's report reached the driver (reports are sent without waiting; no actor crashed: no retry)
    assert [result.stage_timings[k]["rows_seen"] for k in (0, 1)] == [len(out)] * 2
    # start-up (until stage 0's first call) and each stage's active span lie within the wall; one
    # actor per stage runs its calls one after another, so its busy time fits in its span
    assert 0 < m["startup_seconds"] < m["wall_seconds"]
    # split into the actor's process start, its model load and its wait for input; the three add up
    # (tolerance: clocks read in two processes on one machine)
    parts = ("actor_process", "model_load", "input_wait")
    assert all(m[f"startup_{p}_seconds"] >= 0 for p in parts) and m["startup_model_load_seconds"] > 0
    assert sum(m[f"startup_{p}_seconds"] for p in parts) == pytest.approx(m["startup_seconds"], abs=0.05)
    for k in (0, 1):
        assert m[f"stage{k}_busy_seconds"] <= m[f"stage{k}_active_seconds"] < m["wall_seconds"]
    # the audit: the hashed sample, a full-depth label for each, agreement as the output shows it
    audited = out["audited"].to_numpy()
    assert 0 < audited.sum() < len(out)
    assert out["full_depth_label"][audited].isin(LABELS).all() and out["full_depth_label"][~audited].isna().all()
    at_end = audited & (out["exit_layer"] == NUM_LAYERS).to_numpy()
    assert (out["full_depth_label"][at_end] == out["label"][at_end]).all()  # answered at full depth: agree
    agree = (out["label"] == out["full_depth_label"])[audited]
    assert m["audit_rows"] == audited.sum() and m["audit_agreement"] == pytest.approx(agree.mean())
    extra = (NUM_LAYERS - out["exit_layer"][audited]).sum()
    assert m["audit_extra_row_layers"] == extra
    assert m["stage0_audit_row_layers"] + m["stage1_audit_row_layers"] == extra  # the actors saw the same

    run_id = log_tag_run(cfg, result, NUM_LAYERS)
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    run = mlflow.get_run(run_id)
    assert run.data.metrics["mean_layers"] == pytest.approx(m["mean_layers"])
    assert run.data.metrics["rows"] == len(out)
    assert run.data.metrics["docs_per_second"] > 0
    assert run.data.metrics["ideal_speedup"] == pytest.approx(NUM_LAYERS / m["mean_layers"])
    assert run.data.params["stage1_layers"] == "[2, 4)"
    assert run.data.metrics["audit_agreement"] == pytest.approx(agree.mean())
    assert run.data.tags["offramp.audit"] == ("pass" if agree.mean() >= 0.5 else "below_target")
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert {"exit_histogram.png", "run_summary.json", "report.html"} <= arts
    summary = mlflow.artifacts.load_dict(f"runs:/{run_id}/run_summary.json")
    assert [s["rows_in"] for s in summary["stages"]] == [m["stage0_rows_in"], m["stage1_rows_in"]]
    assert all(s["busy_seconds"] > 0 for s in summary["stages"]) and summary["audit"]["rows"] == audited.sum()
    report = mlflow.artifacts.load_text(f"runs:/{run_id}/report.html")
    assert report.count("data:image/png;base64,") >= 4 and "Recommendation" in report


def test_the_full_depth_comparison_samples_rows_across_the_corpus(tmp_path, model_dir, corpus_parquet):
    """About full_depth_eval_rows rows, picked by a hash of the id (not the first files, which
    may differ from the rest), and the exits' accuracy reported on the same rows."""
    inp = pq.read_table(corpus_parquet).to_pandas()
    cfg = config(tmp_path, corpus_parquet, model_dir, label_column="label", full_depth_eval_rows=len(inp) // 2,
                 stages=(StageConfig(batch_size=8),))
    m = run_tagging(cfg).metrics
    picked = schema.audit_mask(inp["id"].tolist(), (len(inp) // 2) / len(inp), cfg.audit.seed + 1)
    assert 0 < picked.sum() < len(inp) and m["full_depth_eval_rows"] == picked.sum()
    out = read(cfg.output).set_index("id").loc[inp["id"][picked]]
    assert m["accuracy_exit_on_eval_rows"] == pytest.approx((out["label"] == out["gold_label"]).mean())

def test_predictions_match_the_model_and_exits_disabled_is_full_depth(tmp_path, model_dir, corpus_parquet, tokenizer):
    cfg = config(tmp_path, corpus_parquet, model_dir, exit=TagConfig().exit.__class__(disabled=True), carry_dtype="float32")
    run_tagging(cfg)
    out = read(cfg.output).set_index("id")
    assert (out["exit_layer"] == NUM_LAYERS).all()
    model = load_model(model_dir)
    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**enc).logits, -1)
    for i in range(len(TEXTS)):
        row = out.loc[f"doc{i}"]
        assert row["label"] == LABELS[int(probs[i].argmax())]
        assert row["confidence"] == pytest.approx(float(probs[i].max()), abs=1e-4)


def test_large_stage_batches_are_cut_from_whole_blocks_not_per_block(tmp_path, model_dir):
    """Three 100-row files, stage batches of 64 rows over tokenize batches of 16: the stage gets
    ceil(300 / 64) = 5 calls (4 of 64 rows and a 44-row tail), not each read block cut on its own
    with a short call at its end, and every row once (GPU batches of 4,096 over 4,807-row blocks made
    416 calls per million rows where 245 were needed: BENCHMARKS.md, "GPU")."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in range(3):
        ids = [f"f{f}-{i}" for i in range(100)]
        pq.write_table(pa.table({"id": ids, "text": [TEXTS[i % len(TEXTS)] for i in range(100)]}),
                       corpus / f"part-{f}.parquet")
    cfg = config(tmp_path, str(corpus), model_dir, batch_size=64, tokenize_batch_size=16,
                 stages=(StageConfig(batch_size=64),))
    result = run_tagging(cfg)
    out = read(cfg.output)
    assert len(out) == 300 and out["id"].is_unique
    assert result.metrics["stage0_batches"] == 5
    cfg = config(tmp_path, str(corpus), model_dir, batch_size=64, tokenize_batch_size=64, overwrite=True,
                 stages=(StageConfig(batch_size=64),))
    # CPU-sized batches (no more than a tokenize batch): no repartition step, so each of the read's
    # blocks (Ray splits the files; here into 50-row blocks) ends in a short call of its own
    assert run_tagging(cfg).metrics["stage0_batches"] > 5


def test_bad_rows_get_a_status_never_a_crash(tmp_path, model_dir):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "README.md").write_text("# not a document\n")  # read as rows before: only .jsonl files are
    (corpus / "cut.jsonl.gz").write_bytes(b"\x1f\x8b not gzip inside")  # a damaged compressed file
    path = corpus / "in.jsonl"
    lines = [json.dumps({"id": f"ok{i}", "text": t}).encode() for i, t in enumerate(TEXTS[:6])]
    lines += [
        b'{"id": "null", "text": null}',
        b'{"id": "empty", "text": "  "}',
        b'{"id": "number", "text": 5}',
        b"this line is not json",
        b'{"id": "badbytes", "text": "\xff\xfe"}',
        json.dumps({"id": "long", "text": "word " * 500}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    # a URI output (file:// here, s3:// on a cluster) is written and read back for the metrics
    cfg = config(tmp_path, str(corpus), model_dir, num_stages=1, stages=(), output=f"file://{tmp_path}/out")
    result = run_tagging(cfg)
    out = read(str(tmp_path / "out")).set_index("id")
    assert len(out) == 13 and result.metrics["rows"] == 13 and result.rows_in == 13 and result.complete
    status = out["status"].to_dict()
    assert status["cut.jsonl.gz:1"] == "undecodable"  # the damaged file is one visible row, not a crash
    assert status["null"] == "null" and status["empty"] == "empty" and status["number"] == "undecodable"
    # lines that are not JSON or not UTF-8 cannot name their id: they are keyed file:line
    assert status["in.jsonl:10"] == "undecodable" and status["in.jsonl:11"] == "undecodable"
    assert status["long"] == "truncated" and out.loc["long", "num_tokens"] == 64
    assert out.loc["long", "label"] in LABELS
    assert out.loc[["null", "empty", "number"], "label"].isna().all()
    assert result.metrics["rows_status_truncated"] == 1 and result.metrics["rows_labeled"] == 7


def test_an_empty_corpus_gives_an_empty_output_and_zero_metrics(tmp_path, model_dir):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string()),
                             "label": pa.array([], pa.string())}), path)
    cfg = config(tmp_path, str(path), model_dir, label_column="label", full_depth_eval_rows=-1)
    result = run_tagging(cfg)
    out = pq.read_table(cfg.output)
    assert out.num_rows == 0 and {"label", "status", "exit_layer", "gold_label"} <= set(out.column_names)
    assert result.metrics["rows"] == 0 and result.metrics["docs_per_second"] == 0
    assert result.audit["status"] == "no_sample"


@pytest.mark.parametrize("batch_size", [8, 16], ids=["per-block", "repartitioned"])
def test_crashed_actor_loses_and_duplicates_no_rows(tmp_path, model_dir, corpus_parquet, batch_size):
    """Also where stage batches (16 rows) span tokenize batches (8) and come from repartitioned blocks."""
    marker = tmp_path / "crashed"

    cfg = config(tmp_path, corpus_parquet, model_dir, batch_size=batch_size,
                 stages=(StageConfig(layers=(0, 2), batch_size=batch_size), StageConfig(layers=(2, NUM_LAYERS))))
    run_tagging(cfg, stage_cls=crash_once(StageActor, marker))
    assert marker.exists(), "the fault was injected"
    out = read(cfg.output)
    assert len(out) == len(TEXTS) and out["id"].is_unique


def test_the_rebatching_actor_writes_what_the_stage_pools_write(tmp_path, model_dir, corpus_parquet):
    """rebatch: one pool holding both stages, survivors of several batches merged per pass. Per
    row the same answer and audit as a pool per stage; every stage accounts for every row."""
    kw = dict(label_column="label", full_depth_eval_rows=-1, audit=AuditConfig(fraction=0.3, seed=1), batch_size=4,
              stages=(StageConfig(layers=(0, 2), batch_size=4), StageConfig(layers=(2, NUM_LAYERS), batch_size=4)))
    pools = run_tagging(config(tmp_path / "pools", corpus_parquet, model_dir, **kw))
    cfg = config(tmp_path / "merged", corpus_parquet, model_dir, rebatch=4, **kw)
    merged = run_tagging(cfg)
    a = read(pools.output).set_index("id").sort_index()
    b = read(cfg.output).set_index("id").sort_index()
    assert len(b) == len(TEXTS) and b.index.is_unique
    for column in ("exit_layer", "label", "audited", "full_depth_label", "status"):
        assert a[column].equals(b[column]), column
    assert np.allclose(a["confidence"], b["confidence"], atol=1e-3)  # fp16 carry, rows padded in other passes
    for key in ("mean_layers", "stage1_rows_in", "audit_agreement", "accuracy", "accuracy_full_depth"):
        assert merged.metrics[key] == pytest.approx(pools.metrics[key]), key
    assert [merged.stage_timings[k]["rows_seen"] for k in (0, 1)] == [len(TEXTS)] * 2
    assert merged.stage_timings[1]["rows_in"] == merged.metrics["stage1_rows_in"]
    assert merged.stage_timings[1]["batches"] < pools.stage_timings[1]["batches"], "stage 1 ran merged passes"


def test_a_crashed_rebatching_actor_loses_and_duplicates_no_rows(tmp_path, model_dir, corpus_parquet):
    marker = tmp_path / "crashed"

    class CrashOnce(RebatchingStageActor):
        def run_pass(self, k, parts):
            if k == 1 and not marker.exists():
                marker.write_text("x")
                os._exit(1)  # the actor process dies mid-pass, with several batches in it
            super().run_pass(k, parts)

    cfg = config(tmp_path, corpus_parquet, model_dir, rebatch=4, batch_size=4,
                 stages=(StageConfig(layers=(0, 2), batch_size=4), StageConfig(layers=(2, NUM_LAYERS), batch_size=4)))
    run_tagging(cfg, stage_cls=CrashOnce)
    assert marker.exists(), "the fault was injected"
    out = read(cfg.output)
    assert len(out) == len(TEXTS) and out["id"].is_unique


def test_tag_dataset_appends_the_pipeline_to_a_dataset_a_team_built(tmp_path, model_dir):
    """The library face: a Dataset in, a lazy Dataset out with one row per input and, for every
    row, the answer the stage code gives it (over two stage pools here)."""
    rows = [{"doc": f"doc{i}", "body": t} for i, t in enumerate(TEXTS)] + [{"doc": "nothing", "body": None}]
    own = config(tmp_path, None, model_dir, text_column="body", id_column="doc", output=None,
                 audit=AuditConfig(fraction=0.0))
    out = {r["doc"]: r for r in tag_dataset(ray.data.from_items(rows), model_dir, own).take_all()}
    assert sorted(out) == sorted(r["doc"] for r in rows)
    assert out["nothing"]["status"] == "null" and out["nothing"]["label"] is None
    batch = tokenize_batch({"id": np.arange(len(TEXTS)), "text": np.array(TEXTS, dtype=object)},
                           load_tokenizer(model_dir), "text", 64)
    alone = StageActor(model_dir, StageSpec(0, 0, NUM_LAYERS, carry_dtype="float32"))(batch)
    assert [out[f"doc{i}"]["exit_layer"] for i in range(len(TEXTS))] == alone[schema.EXIT_LAYER].tolist()
    assert [out[f"doc{i}"]["label"] for i in range(len(TEXTS))] == [LABELS[j] for j in alone[schema.LABEL_ID]]
    with pytest.raises(ConfigError, match="--text-column"):
        tag_dataset(ray.data.from_items(rows), model_dir, dataclasses.replace(own, text_column="text"))


def test_stages_that_leave_no_cpu_for_reading_fail_at_start_naming_the_fix(tmp_path, model_dir, corpus_parquet):
    """On a cluster whose CPUs the stage actors take whole, Ray Data would wait forever with no
    input reaching them: the run fails at start instead, unless the cluster autoscales."""
    from types import SimpleNamespace

    from offramp.config import ConfigError
    from pipelines.run import check_cluster_fits

    greedy = tuple(StageConfig(layers=l, batch_size=8, num_cpus=4) for l in ((0, 2), (2, NUM_LAYERS)))
    with pytest.raises(ConfigError, match=r"reserve 8 CPUs.*has 8 CPUs.*--num-stages"):
        run_tagging(config(tmp_path, corpus_parquet, model_dir, stages=greedy))
    assert not (tmp_path / "out").exists(), "nothing was written"
    stages = [SimpleNamespace(min_actors=2, num_cpus=4, num_gpus=0.5)]
    with pytest.raises(ConfigError, match=r"1 GPUs.*0 GPUs"):
        check_cluster_fits(stages, RayConfig())
    check_cluster_fits(stages, RayConfig(autoscaling=True))  # nodes come on demand: no check
    check_cluster_fits([SimpleNamespace(min_actors=3, num_cpus=2, num_gpus=0)], RayConfig())  # 6 + 1 <= 8


def test_existing_output_is_refused_unless_overwrite(tmp_path, model_dir, corpus_parquet):
    from offramp.config import ConfigError

    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match="--overwrite"):
        run_tagging(config(tmp_path, corpus_parquet, model_dir))
    with pytest.raises(ConfigError, match=r"'body' \(--text-column\).*columns are"):
        run_tagging(config(tmp_path, corpus_parquet, model_dir, overwrite=True, text_column="body"))


@pytest.mark.parametrize("mechanism", ["deebert", "pabee", "berxit", "de3", "smartbert"])
def test_every_mechanism_keeps_one_row_per_input_and_its_exits_through_ray(tmp_path, mechanism, mechanism_dirs):
    """The real two-stage Ray pipeline per mechanism: every input row comes out once (bad rows
    with a status), each row's exit is what the stage code decides for it alone (patience
    counters and skip counts cross the stage boundary through Arrow), and the run's metrics
    match the output, including SmartBERT's skipped layers."""
    from actors.stage import StageActor
    from offramp.exits.stage import StageSpec
    from offramp import schema
    from offramp.tasks.sequence import tokenize_batch
    from offramp.text.tokenize import load_tokenizer

    model_dir = mechanism_dirs[mechanism]
    path = tmp_path / "in.jsonl"
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)]
    docs += [{"id": "null", "text": None}, {"id": "empty", "text": ""}, {"id": "long", "text": "word " * 400}]
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    cfg = config(tmp_path, str(path), model_dir, audit=AuditConfig(fraction=0.0))
    result = run_tagging(cfg)
    out = read(cfg.output).set_index("id")
    assert len(out) == len(docs) and out.index.is_unique and set(out.index) == {d["id"] for d in docs}
    assert out.loc["null", "status"] == "null" and out.loc["empty", "status"] == "empty"
    assert out.loc["long", "status"] == "truncated" and out.loc["long", "label"] in LABELS

    texts = [d["text"] for d in docs[: len(TEXTS)]]
    batch = tokenize_batch({"id": np.arange(len(texts)), "text": np.array(texts, dtype=object)}, load_tokenizer(model_dir), "text", 64)
    alone = StageActor(model_dir, StageSpec(0, 0, NUM_LAYERS, carry_dtype="float32"))(batch)
    ids = [f"d{i}" for i in range(len(TEXTS))]
    np.testing.assert_array_equal(out.loc[ids, "exit_layer"].to_numpy(), alone[schema.EXIT_LAYER])
    np.testing.assert_array_equal(out.loc[ids, "skipped_layers"].to_numpy(), alone[schema.SKIPPED])
    assert len(set(out.loc[ids, "exit_layer"])) >= 2

    m = result.metrics
    assert m["rows"] == len(docs) and m["rows_labeled"] == len(TEXTS) + 1
    assert m["layers_saved_by_skipping"] == int(out["skipped_layers"].sum())
    assert m["rows_skipping"] == int((out["skipped_layers"] > 0).sum())
    assert sum(m[f"stage{k}_skipped_row_layers"] for k in range(2)) == m["layers_saved_by_skipping"]
    ran = out[out["status"].isin(["ok", "truncated"])]
    assert m["mean_layers_computed"] == pytest.approx((ran["exit_layer"] - ran["skipped_layers"]).mean())
    if mechanism == "smartbert":
        assert m["rows_skipping"] > 0 and m["mean_layers_computed"] < m["mean_layers"]
    else:
        assert m["layers_saved_by_skipping"] == 0
