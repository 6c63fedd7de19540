"""The tagging pipeline for sequence-labeling models: read -> words and sub-words (tasks) ->
K token-stage actor pools -> finalize -> write.

`pipelines.run.run_tagging` hands a token model here. The plan mirrors classification's:
sentences whose words have all halted leave their stage's compute and ride on as metadata;
the run's metrics come from the written output (tags, per-word exit layers, token-layers
computed per row), plus the stages' timings.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pyarrow.dataset as pads
import ray
from ray.data import ActorPoolStrategy
from ray.data._internal.savemode import SaveMode

from actors.collector import MetricsCollector
from actors.token_stage import TokenStageActor
from offramp import schema
from offramp.config import ConfigError, TagConfig
from offramp.quality.entities import is_bio
from offramp.quality.metrics import summarize_token_output
from offramp.models.sequence import ModelInfo
from offramp.text.tokenize import tokenize_words_task
from pipelines.finalize import GOLD_TAGS_COLUMN, TOKEN_OUTPUT_COLUMNS, finalize_tokens_task
from pipelines.read import _filesystem, detect_format, read_corpus

logger = logging.getLogger(__name__)


def check_token_config(cfg: TagConfig, info: ModelInfo) -> None:
    """What classification settings mean nothing here, and what input a token model needs."""
    if cfg.exit.policy not in (None, "entropy"):
        raise ConfigError(
            f"exit.policy {cfg.exit.policy!r}: {info.path} is a sequence-labeling model, whose exits read the words' "
            "normalized entropy; drop --policy and pick exit.mode token or sentence"
        )
    fmt = detect_format(cfg.input, cfg.input_format)
    if cfg.words_column and fmt == "text":
        raise ConfigError("plain-text input has no words column; drop --words-column (each line is split into words)")
    if fmt == "parquet":  # the columns are known before Ray starts
        fs, root = _filesystem(cfg.input)
        names = pads.dataset(root, format="parquet", filesystem=fs).schema.names
        for col, flag in ((cfg.words_column or cfg.text_column, "--words-column" if cfg.words_column else "--text-column"),
                          (cfg.label_column, "--label-column")):
            if col and col not in names:
                hint = "; token models read a list of words per row (--words-column) or raw text (--text-column)"
                raise ConfigError(f"column {col!r} not found in {cfg.input}; columns are {names}; set {flag}{hint}")
    clash = [c for c in cfg.passthrough_columns if c in TOKEN_OUTPUT_COLUMNS or c in (cfg.id_column, GOLD_TAGS_COLUMN)]
    if clash:
        raise ConfigError(f"passthrough column(s) {clash} collide with output columns {list(TOKEN_OUTPUT_COLUMNS)}; rename them")
    if cfg.audit.fraction > 0 and not cfg.exit.disabled:
        logger.warning("the audit sample is not run for sequence-labeling models; set full_depth_eval_rows to measure "
                       "agreement with full depth")


def stage_kwargs(cfg: TagConfig) -> dict:
    return dict(mode=cfg.exit.mode, window=cfg.exit.window, pool=cfg.exit.sentence_pool)


def build_token_pipeline(ds, cfg: TagConfig, info: ModelInfo, planned, collector=None, stage_cls=TokenStageActor):
    ds = ds.map_batches(
        tokenize_words_task,
        fn_kwargs=dict(model_dir=info.path, words_column=cfg.words_column, text_column=cfg.text_column,
                       max_length=cfg.max_length, gold=cfg.label_column),
        batch_size=cfg.tokenize_batch_size, batch_format="numpy", num_cpus=0.5,
    )
    for stage in planned:
        ds = ds.map_batches(
            stage_cls,
            fn_constructor_kwargs=dict(model_dir=info.path, spec=stage.spec, collector=collector, **stage_kwargs(cfg)),
            batch_size=stage.batch_size, batch_format="numpy",
            compute=ActorPoolStrategy(min_size=stage.min_actors, max_size=stage.max_actors),
            num_cpus=stage.num_cpus, num_gpus=stage.num_gpus,
        )
    return ds.map_batches(
        finalize_tokens_task,
        fn_kwargs=dict(labels=info.labels, id_column=cfg.id_column or "id", keep=list(cfg.passthrough_columns),
                       gold=bool(cfg.label_column)),
        batch_format="numpy", num_cpus=0.25,
    )


def _metrics(table, info: ModelInfo, planned, cfg: TagConfig) -> dict:
    gold = table[GOLD_TAGS_COLUMN].to_pylist() if cfg.label_column else None
    return summarize_token_output(
        table["exit_layer"].to_numpy(zero_copy_only=False),
        np.asarray(table["status"].to_pylist(), dtype=object),
        table["num_tokens"].to_numpy(zero_copy_only=False),
        table["token_layers"].to_numpy(zero_copy_only=False),
        table["tags"].to_pylist(),
        table["tag_layers"].to_pylist(),
        info.num_layers,
        [(p.spec.start, p.spec.end) for p in planned],
        gold=gold,
        bio=is_bio(info.labels),
    )


def run_token_tagging(cfg: TagConfig, info: ModelInfo, thresholds: dict, planned, stage_cls=TokenStageActor):
    """Tag every word of cfg.input into cfg.output; return the run's TagResult."""
    from pipelines.run import TagResult, add_rates, check_cluster_fits, init_ray, runs_locally

    check_token_config(cfg, info)
    init_ray(cfg.ray)
    check_cluster_fits(planned, cfg.ray)
    collector = ray.remote(num_cpus=0)(MetricsCollector).remote()
    ds = build_token_pipeline(read_corpus(cfg, cfg.label_column, token=True), cfg, info, planned, collector, stage_cls)
    t0 = time.perf_counter()
    ds.write_parquet(cfg.output, mode=SaveMode.OVERWRITE if cfg.overwrite else SaveMode.APPEND)
    wall = time.perf_counter() - t0
    timings = ray.get(collector.summary.remote())
    ray.kill(collector)

    columns = ["exit_layer", "status", "num_tokens", "token_layers", "tags", "tag_layers"]
    columns += [GOLD_TAGS_COLUMN] if cfg.label_column else []
    id_column = cfg.id_column or "id"
    full_depth = bool(cfg.label_column and cfg.full_depth_eval_rows and not cfg.exit.disabled)
    columns += [id_column] if full_depth else []
    table = pads.dataset(cfg.output, format="parquet", filesystem=_filesystem(cfg.output)[0]).to_table(columns=columns)
    m = _metrics(table, info, planned, cfg)
    hist = m.pop("exit_histogram")
    add_rates(m, wall, timings, "token_layers")
    m["words_per_second"] = m["words"] / wall
    if full_depth:
        m.update(_full_depth_eval(cfg, info, table, stage_cls, runs_locally(cfg.ray)))
    mode = cfg.exit.mode or getattr(info, "token_exit_mode", None) or "token"
    return TagResult(cfg.output, m, hist, planned, thresholds, f"{mode}-level exit (normalized entropy)", timings,
                     None, info.calibration)


def _full_depth_eval(cfg: TagConfig, info: ModelInfo, early_table, stage_cls, local: bool) -> dict:
    """Run (a prefix of) the corpus at full depth: word accuracy and entity F1 without exits,
    and how many words the exits tagged differently."""
    from pipelines.run import stage_plan

    full_cfg = dataclasses.replace(cfg, exit=dataclasses.replace(cfg.exit, disabled=True))
    planned = stage_plan(full_cfg, info, False, info.thresholds, local)
    ds = read_corpus(full_cfg, cfg.label_column, token=True)
    if cfg.full_depth_eval_rows > 0:
        ds = ds.limit(cfg.full_depth_eval_rows)
    id_column = cfg.id_column or "id"
    rows = build_token_pipeline(ds, full_cfg, info, planned, None, stage_cls).select_columns(
        [id_column, "tags", "status", GOLD_TAGS_COLUMN]).take_all()
    rows = [r for r in rows if r["status"] in schema.RUNNABLE and r[GOLD_TAGS_COLUMN]]
    if not rows:
        return {}
    early = dict(zip(early_table[id_column].to_pylist(), early_table["tags"].to_pylist()))
    full_tags = [list(r["tags"]) for r in rows]
    gold = [list(r[GOLD_TAGS_COLUMN]) for r in rows]
    exit_tags = [list(early.get(r[id_column]) or []) for r in rows]
    words = sum(len(g) for g in gold)
    out = {
        "full_depth_eval_rows": len(rows),
        "accuracy_full_depth": sum(int(p == g) for pt, gt in zip(full_tags, gold) for p, g in zip(pt, gt)) / words,
        "accuracy_exit_on_eval_rows": sum(int(p == g) for pt, gt in zip(exit_tags, gold) for p, g in zip(pt, gt)) / words,
        "agreement_with_full_depth": sum(int(p == q) for pt, qt in zip(exit_tags, full_tags) for p, q in zip(pt, qt)) / words,
    }
    if is_bio(info.labels):
        from offramp.quality.entities import entity_f1

        out["entity_f1_full_depth"] = entity_f1(gold, full_tags)["f1"]
        out["entity_f1_exit_on_eval_rows"] = entity_f1(gold, exit_tags)["f1"]
    return out
