"""What pipelines/run.py refuses before Ray starts: each mistake fails at once, naming the fix."""

import logging
import os

import pytest

from offramp.config import AuditConfig, ConfigError, ExitConfig, RayConfig, StageConfig, TagConfig
from offramp.exits.stage import StageSpec
from offramp.planning.layout import PlannedStage
from pipelines.run import check_model, make_plan, stage_calls, tokenize_concurrency, tokenize_cpus, validate


def config(tmp_path, corpus, model_dir, **kw) -> TagConfig:
    return TagConfig(input=corpus, model=model_dir, output=str(tmp_path / "out"), **kw)


def test_another_policy_needs_its_own_threshold(tmp_path, model_dir, corpus_parquet):
    """Stored entropy thresholds read as patience counts would exit nearly every row at layer 1."""
    with pytest.raises(ConfigError, match="give --threshold"):
        validate(config(tmp_path, corpus_parquet, model_dir, exit=ExitConfig(policy="patience")))
    plan = validate(config(tmp_path, corpus_parquet, model_dir, exit=ExitConfig(policy="patience", threshold=2)))
    assert set(plan.thresholds.values()) == {2.0}
    validate(config(tmp_path, corpus_parquet, model_dir, exit=ExitConfig(policy="entropy")))  # the stored one


def test_strict_refuses_a_run_its_certificate_does_not_cover(tmp_path, model_dir, corpus_parquet):
    """Uncertified thresholds, or settings other than the certificate's: a warning in the plan
    (and the run's summary), a refusal at start under --strict that names the fix."""
    import json
    import shutil

    plan = validate(config(tmp_path, corpus_parquet, model_dir))
    assert plan.certificate and "uncertified" in plan.certificate[0]
    with pytest.raises(ConfigError, match="--strict.*uncertified.*jobs/calibrate.py"):
        validate(config(tmp_path, corpus_parquet, model_dir, strict=True))
    certified = tmp_path / "certified"
    shutil.copytree(model_dir, certified)
    cfg = json.loads((certified / "config.json").read_text())
    cfg["exit_certified"] = True
    (certified / "config.json").write_text(json.dumps(cfg))
    profile = json.loads((certified / "exit_profile.json").read_text())
    profile["calibration"] = {"mode": "agreement", "target": 0.9, "thresholds": cfg["exit_thresholds"],
                              "policy": "entropy", "mechanism": "deebert", "max_length": 64, "dtype": "float32"}
    (certified / "exit_profile.json").write_text(json.dumps(profile))
    assert validate(config(tmp_path, corpus_parquet, str(certified), max_length=64, strict=True)).certificate == []
    with pytest.raises(ConfigError, match="max_length is 128 but the certificate was made with 64"):
        validate(config(tmp_path, corpus_parquet, str(certified), strict=True))
    with pytest.raises(ConfigError, match="not the certified ones"):
        validate(config(tmp_path, corpus_parquet, str(certified), max_length=64, strict=True, exit=ExitConfig(threshold=0.5)))


@pytest.mark.parametrize("where", ["input", "parent", "inside"])
def test_output_never_replaces_or_lies_inside_the_input(tmp_path, model_dir, corpus_parquet, where):
    """--overwrite deletes the output before reading: an output that is (or holds) the input is refused."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "part.parquet").write_bytes(open(corpus_parquet, "rb").read())
    output = {"input": corpus, "parent": tmp_path, "inside": corpus / "tagged"}[where]
    cfg = TagConfig(input=str(corpus), model=model_dir, output=str(output), overwrite=True)
    with pytest.raises(ConfigError, match="outside the input"):
        validate(cfg)
    assert (corpus / "part.parquet").exists()


@pytest.mark.parametrize("task_name", ["sequence", "token"])
def test_the_runs_figures_stream_over_the_output_in_batches(tmp_path, model_dir, token_model_dir, monkeypatch, task_name):
    """The driver sums counts over output batches (bounded memory): 3-row batches give exactly
    the metrics and the audit of the whole output read at once."""
    import numpy as np
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from actors.stage import StageActor
    from offramp.exits.stage import StageSpec
    from offramp.models.checkpoint import ModelInfo
    from offramp.tasks import finalize_step, get_task, tokenize_step
    from pipelines import run
    from tests.conftest import NUM_LAYERS, SENTENCES, TEXTS, gold_tags

    model = model_dir if task_name == "sequence" else token_model_dir
    info, task = ModelInfo.read(model), get_task(task_name)
    n = len(SENTENCES)
    if task_name == "sequence":
        batch = {"id": np.array([f"d{i}" for i in range(len(TEXTS))], dtype=object), "text": np.array(TEXTS, dtype=object),
                 "label": np.array([info.labels[i % 3] for i in range(len(TEXTS))], dtype=object)}
        kw = dict(text_column="text")
    else:
        batch = {"id": np.array([f"s{i}" for i in range(n)], dtype=object),
                 "tokens": np.array(SENTENCES + [None], dtype=object)[:-1],
                 "label": np.array([gold_tags(s) for s in SENTENCES] + [None], dtype=object)[:-1]}
        kw = dict(words_column="tokens", text_column="text", gold="label")
    b = tokenize_step(batch, task_name, model, 64, audit_fraction=0.5, audit_seed=1, **kw)
    for k, (s, e) in enumerate([(0, 2), (2, NUM_LAYERS)]):
        b = StageActor(model, StageSpec(k, s, e, task=task_name, carry_dtype="float32"))(b)
    pq.write_table(finalize_step(b, task_name, info.labels, "id", [], "label"), tmp_path / "out.parquet")
    cfg = TagConfig(label_column="label", audit=AuditConfig(fraction=0.5, seed=1, target_agreement=0.5))
    output, ranges = pads.dataset(tmp_path / "out.parquet"), [(0, 2), (2, NUM_LAYERS)]
    whole = output.to_table(columns=task.metric_columns(cfg))
    monkeypatch.setattr(run, "OUTPUT_BATCH_ROWS", 3)
    m, audit = task.metrics(run.output_counts(output, task, info, ranges, cfg, True), info, cfg)
    assert m == task.summarize(whole, info, ranges, cfg) and m["rows"] == whole.num_rows
    assert audit == task.audit(whole, info, cfg) and audit["rows"] > 0


def test_a_runs_ray_data_settings_reach_its_datasets_and_are_restored(tmp_path, model_dir, corpus_parquet):
    """The object store budget (Ray's default lets tokenized rows fill half the store ahead of a
    slower stage) and the error budget are set on the datasets the run builds, and only those."""
    from ray.data import DataContext

    from offramp.config import RayConfig
    from pipelines.run import data_context

    cfg = config(tmp_path, corpus_parquet, model_dir, max_errored_blocks=3, ray=RayConfig(object_store_fraction=0.05))
    ctx = DataContext.get_current()
    before = ctx.override_object_store_memory_limit_fraction, ctx.max_errored_blocks
    with data_context(cfg):
        inside = DataContext.get_current()
        assert (inside.override_object_store_memory_limit_fraction, inside.max_errored_blocks) == (0.05, 3)
    assert (ctx.override_object_store_memory_limit_fraction, ctx.max_errored_blocks) == before
    assert TagConfig().ray.object_store_fraction == 0.1


def test_tokenize_tasks_at_once_are_the_cores_locally_unlimited_on_a_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert tokenize_concurrency(TagConfig()) == 2  # embedded Ray: one task per core, whatever its logical CPUs
    assert tokenize_concurrency(TagConfig(ray=RayConfig(address="ray://head:10001"))) is None
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")  # a job on a cluster
    assert tokenize_concurrency(TagConfig()) is None
    assert tokenize_concurrency(TagConfig(tokenize_concurrency=6)) == 6  # as configured, anywhere
    with pytest.raises(ConfigError, match="tokenize_concurrency=0"):
        TagConfig(tokenize_concurrency=0)


def test_a_tokenize_task_asks_a_whole_core_beside_gpu_stages_half_beside_cpu_ones_or_as_configured():
    def planned(num_gpus):
        return [PlannedStage(StageSpec(0, 0, 6), 64, 1, 1, 1.0, num_gpus, 1.0, 6.0)]

    assert tokenize_cpus(TagConfig(), planned(0.5)) == 1.0  # a GPU actor's launching thread keeps its core
    assert tokenize_cpus(TagConfig(), planned(0.0)) == 0.5
    assert tokenize_cpus(TagConfig(tokenize_cpus=0.5), planned(0.5)) == 0.5  # fits more in Ray Data's CPU budget
    with pytest.raises(ConfigError, match=r"tokenize_cpus=0: use a share of a CPU above 0"):
        TagConfig(tokenize_cpus=0)


def test_a_gpu_stage_actor_takes_two_batches_at_once_a_cpu_one_one_or_as_configured():
    """On a GPU, Ray Data converts the next batch on the actor's idle CPU while the kernels run;
    on a CPU the conversions would take the model's cores."""
    def planned(num_gpus):
        return PlannedStage(StageSpec(0, 0, 6), 64, 1, 1, 1.0, num_gpus, 1.0, 6.0)

    assert stage_calls(TagConfig(), planned(0.5)) == 2
    assert stage_calls(TagConfig(), planned(0.0)) == 1
    assert stage_calls(TagConfig(stage_calls=3), planned(0.0)) == 3
    with pytest.raises(ConfigError, match=r"stage_calls=0: use 1 \(one batch at a time\) or more"):
        TagConfig(stage_calls=0)


def test_a_text_or_words_column_of_the_wrong_kind_is_refused_naming_the_flag(tmp_path, model_dir, token_model_dir):
    """Word lists read as text would make every row undecodable, and text read as word lists
    could not be split: both fail at start, naming the flag that reads the column as it is."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = str(tmp_path / "mixed.parquet")
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one text", "two"], "words": [["one", "text"], ["two"]]}),
                   corpus)
    with pytest.raises(ConfigError, match="holds lists .* use --words-column words"):
        validate(config(tmp_path, corpus, token_model_dir, text_column="words"))
    with pytest.raises(ConfigError, match="holds string, not lists of words; pass --text-column text"):
        validate(config(tmp_path, corpus, token_model_dir, words_column="text"))
    with pytest.raises(ConfigError, match="holds lists .* one text per row"):
        validate(config(tmp_path, corpus, model_dir, text_column="words"))
    validate(config(tmp_path, corpus, token_model_dir, words_column="words"))
    validate(config(tmp_path, corpus, model_dir))


def test_a_gpu_layout_is_told_at_start_what_the_h200_measured(model_dir, caplog):
    """A stage whose actors each hold a whole GPU, and GPU pools per stage, are told at start
    which layout measured faster on the H200; two actors sharing each GPU are told nothing."""
    cluster = RayConfig(address="ray://head:10001")  # GPUs live on a cluster; nothing here checks them

    def advice(*stages):
        cfg = TagConfig(model=model_dir, stages=stages, ray=cluster)
        info, task = check_model(cfg, model_dir)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pipelines.run"):
            make_plan(cfg, info, task, {})
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Layout:")]

    (whole,) = advice(StageConfig(num_gpus=1.0))
    assert "two actors at num_gpus 0.5" in whole and "1.10-1.32x" in whole
    (per_stage,) = advice(StageConfig(layers=(0, 2), num_gpus=0.5), StageConfig(layers=(2, 4), num_gpus=0.5))
    assert "pool per stage on GPUs" in per_stage and "0.94x" in per_stage
    assert advice(StageConfig(num_gpus=0.5, min_actors=2)) == []
    assert advice(StageConfig()) == []  # CPU stages: this is about GPU layouts only
