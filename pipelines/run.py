"""The tagging pipeline: read -> tokenize (tasks) -> K stage actor pools -> finalize -> write.

`run_tagging` is what `jobs/tag_corpus.py` calls: it validates everything it can
before starting work, runs the Ray Data plan once (a dataset consumed twice would
be recomputed), then computes the run's metrics from the written output and the
stages' reported timings.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray
from ray.data import ActorPoolStrategy
from ray.data._internal.savemode import SaveMode

from actors.collector import MetricsCollector
from actors.stage import StageActor
from offramp import schema
from offramp.config import ConfigError, RayConfig, TagConfig
from offramp.quality.audit import flat_metrics, summarize_audit
from offramp.quality.metrics import summarize_output
from offramp.models.sequence import ModelInfo
from offramp.policies import check_policy_fits, get_policy
from offramp.text.tokenize import tokenize_task
from pipelines.finalize import GOLD_COLUMN, OUTPUT_COLUMNS, finalize_task
from pipelines.read import _filesystem, read_corpus
from offramp.planning.layout import PlannedStage, plan_layout

logger = logging.getLogger(__name__)


@dataclass
class TagResult:
    output: str
    metrics: dict  # flat numbers, ready for MLflow
    exit_histogram: dict[int, int]
    layout: list[PlannedStage]
    thresholds: dict[int, float]
    policy: str
    stage_timings: dict = field(default_factory=dict)
    audit: dict | None = None  # offramp.quality.audit.summarize_audit; None when no audit ran
    calibration: dict | None = None  # the model's stored calibration record


def runs_locally(cfg: RayConfig) -> bool:
    """True when the stages run on this machine: no cluster address given or set by a job."""
    return not (cfg.address or os.environ.get("RAY_ADDRESS"))


def init_ray(cfg: RayConfig) -> None:
    """Join the cluster a job runs on (RAY_ADDRESS) or start an embedded local Ray."""
    if ray.is_initialized():
        return
    if runs_locally(cfg):
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False)
    else:
        ray.init(address=cfg.address or os.environ["RAY_ADDRESS"], log_to_driver=True)


def check_cluster_fits(planned: list[PlannedStage], cfg: RayConfig) -> None:
    """Fail at start when the stage actors' minimum reservations leave no CPU for the read,
    tokenize and write tasks (1 CPU at a time) or ask for more GPUs than the cluster has: Ray
    Data would otherwise wait forever with every actor up and no input reaching it."""
    if cfg.autoscaling:
        return
    have = ray.cluster_resources()
    cpus = sum(p.min_actors * p.num_cpus for p in planned)
    gpus = sum(p.min_actors * p.num_gpus for p in planned)
    if cpus + 1 > have.get("CPU", 0) or gpus > have.get("GPU", 0):
        raise ConfigError(
            f"the stage actors reserve {cpus:g} CPUs and {gpus:g} GPUs ({len(planned)} stages, "
            f"min_actors x num_cpus / num_gpus each) plus 1 CPU for reading, tokenizing and writing, "
            f"but the Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs: "
            "use fewer stages (--num-stages), give each stage less (`stages:` with num_cpus: 0.5), "
            "or add nodes (an embedded local Ray: raise ray.num_cpus; an autoscaling cluster: set "
            "ray.autoscaling: true)"
        )


def local_torch_threads(planned: list[PlannedStage]) -> list[PlannedStage]:
    """On this machine, share its cores among the CPU stage actors.

    Ray sets OMP_NUM_THREADS to an actor's logical CPUs (1 by default), and the embedded
    Ray has more logical CPUs than cores (so tasks and actors don't starve), so left alone
    a lone stage actor would use one core of many: measured 0.56x of a bare PyTorch loop on
    2 cores. On a cluster Ray's rule stands (set num_cpus / torch_threads per stage).
    """
    cpu_actors = sum(p.max_actors for p in planned if p.num_gpus == 0)
    threads = max(1, (os.cpu_count() or 1) // max(1, cpu_actors))
    out = []
    for p in planned:
        if p.num_gpus == 0 and p.spec.torch_threads == 0:
            p = dataclasses.replace(p, spec=dataclasses.replace(p.spec, torch_threads=threads))
        out.append(p)
    return out


def stage_plan(cfg: TagConfig, info: ModelInfo, exits: bool, thresholds: dict, local: bool) -> list[PlannedStage]:
    """The layout with its thresholds; on a local run the machine's cores shared among stages."""
    planned = plan_layout(cfg, info.num_layers, info.survival, exits_enabled=exits)
    planned = [dataclasses.replace(p, spec=dataclasses.replace(p.spec, thresholds=thresholds)) for p in planned]
    return local_torch_threads(planned) if local else planned


def resolve_thresholds(cfg: TagConfig, info: ModelInfo) -> dict[int, float]:
    if cfg.exit.threshold is not None:
        return {layer: cfg.exit.threshold for layer in info.exit_layers}
    if cfg.exit.thresholds is not None:
        given = list(cfg.exit.thresholds)
        internal = info.exit_layers[:-1]
        if len(given) == len(internal):
            given.append(info.thresholds[info.num_layers])
        if len(given) != len(info.exit_layers):
            raise ConfigError(
                f"exit.thresholds has {len(cfg.exit.thresholds)} values; the model has exit heads after layers "
                f"{info.exit_layers}: give one per head ({len(internal)} or {len(info.exit_layers)} values)"
            )
        return dict(zip(info.exit_layers, given))
    return dict(info.thresholds)


def build_pipeline(
    ds: ray.data.Dataset,
    cfg: TagConfig,
    info: ModelInfo,
    planned: list[PlannedStage],
    collector=None,
    stage_cls=StageActor,
) -> ray.data.Dataset:
    """The Ray Data plan after reading: tokenize, one actor pool per stage, finalize."""
    ds = ds.map_batches(
        tokenize_task,
        fn_kwargs=dict(
            model_dir=info.path,
            text_column=cfg.text_column,
            max_length=cfg.max_length,
            id_column=cfg.id_column or "id",
            audit_fraction=0.0 if cfg.exit.disabled else cfg.audit.fraction,
            audit_seed=cfg.audit.seed,
        ),
        batch_size=cfg.tokenize_batch_size,
        batch_format="numpy",
        num_cpus=0.5,
    )
    for stage in planned:
        ds = ds.map_batches(
            stage_cls,
            fn_constructor_kwargs=dict(model_dir=info.path, spec=stage.spec, collector=collector),
            batch_size=stage.batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(min_size=stage.min_actors, max_size=stage.max_actors),
            num_cpus=stage.num_cpus,
            num_gpus=stage.num_gpus,
        )
    return ds.map_batches(
        finalize_task,
        fn_kwargs=dict(
            labels=info.labels,
            id_column=cfg.id_column or "id",
            keep=list(cfg.passthrough_columns),
            gold=cfg.label_column,
        ),
        batch_format="numpy",
        num_cpus=0.25,
    )


def validate(cfg: TagConfig) -> ModelInfo:
    """Everything that can be checked before Ray starts."""
    cfg.require("input", "model", "output")
    info = ModelInfo.read(cfg.model)
    if info.task == "token":
        from pipelines.tag_tokens import check_token_config

        check_token_config(cfg, info)
    else:
        check_policy_fits(get_policy(cfg.exit.policy or info.policy), info.mechanism, set(info.signal_modules))
    clash = [c for c in cfg.passthrough_columns if c in OUTPUT_COLUMNS or c in (cfg.id_column, GOLD_COLUMN)]
    if clash and info.task != "token":
        raise ConfigError(f"passthrough column(s) {clash} collide with output columns {list(OUTPUT_COLUMNS)}; rename them")
    fs, root = _filesystem(cfg.output)
    existing = fs.get_file_info(root)
    if existing.type != pafs.FileType.NotFound and not cfg.overwrite:
        raise ConfigError(f"output {cfg.output} already exists; pass --overwrite or choose another --output")
    return info


def _run_plan(cfg, info, planned, stage_cls, output, mode) -> tuple[float, dict]:
    collector = ray.remote(num_cpus=0)(MetricsCollector).remote()
    ds = build_pipeline(read_corpus(cfg, cfg.label_column), cfg, info, planned, collector, stage_cls)
    t0 = time.perf_counter()
    ds.write_parquet(output, mode=mode)
    wall = time.perf_counter() - t0
    timings = ray.get(collector.summary.remote())
    ray.kill(collector)
    return wall, timings


def run_tagging(cfg: TagConfig, stage_cls=None) -> TagResult:
    """Tag every document of cfg.input into cfg.output; return the run's metrics.
    `stage_cls`: the stage actor class (default StageActor, TokenStageActor for token models)."""
    info = validate(cfg)
    thresholds = resolve_thresholds(cfg, info)
    exits = not cfg.exit.disabled
    policy = cfg.exit.policy or info.policy
    local = runs_locally(cfg.ray)
    planned = stage_plan(cfg, info, exits, thresholds, local)  # layout errors surface before Ray starts
    if info.task == "token":
        from actors.token_stage import TokenStageActor
        from pipelines.tag_tokens import run_token_tagging

        return run_token_tagging(cfg, info, thresholds, planned, stage_cls or TokenStageActor)
    stage_cls = stage_cls or StageActor
    init_ray(cfg.ray)
    check_cluster_fits(planned, cfg.ray)
    for p in planned:
        logger.info(
            "stage %d: layers [%d, %d) batch %d actors %d..%d threads %s (expected survival in %.2f)",
            p.spec.index, p.spec.start, p.spec.end, p.batch_size, p.min_actors, p.max_actors,
            p.spec.torch_threads or "ray default", p.survival,
        )
    mode = SaveMode.OVERWRITE if cfg.overwrite else SaveMode.APPEND
    wall, timings = _run_plan(cfg, info, planned, stage_cls, cfg.output, mode)

    full_depth = bool(cfg.label_column and cfg.full_depth_eval_rows and exits)
    id_column = cfg.id_column or "id"
    columns = ["exit_layer", "skipped_layers", "status", "num_tokens", "label", "audited", "full_depth_label"]
    columns += [GOLD_COLUMN] if cfg.label_column else []
    columns += [id_column] if full_depth else []
    table = pads.dataset(cfg.output, format="parquet", filesystem=_filesystem(cfg.output)[0]).to_table(columns=columns)
    ranges = [(p.spec.start, p.spec.end) for p in planned]
    exit_layer = table["exit_layer"].to_numpy(zero_copy_only=False)
    predicted = np.asarray(table["label"].to_pylist(), dtype=object)
    gold = np.asarray(table[GOLD_COLUMN].to_pylist(), dtype=object) if cfg.label_column else None
    audited = table["audited"].to_numpy(zero_copy_only=False).astype(bool)
    m = summarize_output(
        exit_layer,
        np.asarray(table["status"].to_pylist(), dtype=object),
        table["num_tokens"].to_numpy(zero_copy_only=False),
        info.num_layers,
        ranges,
        predicted=predicted,
        gold=gold,
        audited=audited,
        skipped=table["skipped_layers"].to_numpy(zero_copy_only=False),
    )
    audit = None
    if exits and cfg.audit.fraction > 0:
        target = cfg.audit.target_agreement or info.calibrated_agreement
        audit = summarize_audit(
            exit_layer, predicted, np.asarray(table["full_depth_label"].to_pylist(), dtype=object), audited,
            info.num_layers, cfg.audit.confidence, target, cfg.audit.alarm, gold,
        )
        audit.update(fraction=cfg.audit.fraction, seed=cfg.audit.seed)
        m.update(flat_metrics(audit))
    hist = m.pop("exit_histogram")
    add_rates(m, wall, timings, "row_layers")
    for k, t in sorted(timings.items()):
        busy = t.get("seconds", 0.0)
        m[f"stage{k}_docs_per_busy_second"] = t.get("rows_in", 0) / busy if busy else 0.0
        m[f"stage{k}_docs_per_second"] = m[f"stage{k}_rows_in"] / wall
        m[f"stage{k}_audit_row_layers"] = t.get("audit_row_layers", 0)
        m[f"stage{k}_skipped_row_layers"] = t.get("skipped_row_layers", 0)
    if full_depth:
        early = dict(zip(table[id_column].to_pylist(), table["label"].to_pylist()))
        m.update(_full_depth_eval(cfg, info, early, stage_cls, local))
    return TagResult(cfg.output, m, hist, planned, thresholds, policy, timings, audit, info.calibration)


def add_rates(m: dict, wall: float, timings: dict, work: str) -> None:
    """Wall time, overall rates and each stage's busy time and work (`work`: what its
    row_layers count, row-layers or token-layers) from the stages' reports."""
    m["wall_seconds"] = wall
    m["docs_per_second"] = m["rows"] / wall
    m["tokens_per_second"] = m["tokens"] / wall
    for k, t in sorted(timings.items()):
        busy = t.get("seconds", 0.0)
        m[f"stage{k}_busy_seconds"] = busy
        m[f"stage{k}_batches"] = t.get("batches", 0)
        m[f"stage{k}_{work}"] = t.get("row_layers", 0)
        m[f"stage{k}_tokens_per_busy_second"] = t.get("tokens_in", 0) / busy if busy else 0.0


def _full_depth_eval(cfg: TagConfig, info: ModelInfo, early: dict, stage_cls, local: bool) -> dict:
    """Run (a prefix of) the corpus at full depth to measure what the exits cost."""
    full_cfg = dataclasses.replace(cfg, exit=dataclasses.replace(cfg.exit, disabled=True))
    planned = stage_plan(full_cfg, info, False, info.thresholds, local)
    ds = read_corpus(full_cfg, cfg.label_column)
    if cfg.full_depth_eval_rows > 0:
        ds = ds.limit(cfg.full_depth_eval_rows)
    ds = build_pipeline(ds, full_cfg, info, planned, None, stage_cls)
    id_column = cfg.id_column or "id"
    rows = ds.select_columns([id_column, "label", "status", GOLD_COLUMN]).take_all()
    rows = [r for r in rows if r["status"] in schema.RUNNABLE and r[GOLD_COLUMN] is not None]
    if not rows:
        return {}
    full = np.mean([r["label"] == r[GOLD_COLUMN] for r in rows])
    exit_acc = np.mean([early.get(r[id_column]) == r[GOLD_COLUMN] for r in rows])
    agree = np.mean([early.get(r[id_column]) == r["label"] for r in rows])
    return {
        "full_depth_eval_rows": len(rows),
        "accuracy_full_depth": float(full),
        "accuracy_exit_on_eval_rows": float(exit_acc),
        "agreement_with_full_depth": float(agree),
    }
