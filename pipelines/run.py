"""The one tagging pipeline, for every task: read -> tokenize (tasks) -> K stage actor pools
-> finalize -> write.

`run_tagging` is what `jobs/tag_corpus.py` calls: it validates everything it can before
starting work, runs the Ray Data plan once (a dataset consumed twice would be recomputed),
then computes the run's metrics from the written output and the stages' reported timings.
`tag_dataset` is the library face: the same steps appended to a dataset a team built.
What a task (a label per row, a tag per word) changes comes from `offramp.tasks`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy, DataContext
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.collector import MetricsCollector
from actors.rebatch import RebatchingStageActor
from actors.stage import StageActor
from offramp import schema
from offramp.config import ConfigError, RayConfig, StageConfig, TagConfig
from offramp.exits.stage import cpu_dtype_advice, cpu_flags
from offramp.models.checkpoint import ModelInfo
from offramp.planning.capacity import layout_advice
from offramp.planning.layout import PlannedStage, actor_pools, plan_layout, stage_configs
from offramp.policies import check_policy, get_policy
from offramp.quality.audit import flat_metrics
from offramp.quality.metrics import add_counts
from offramp.tasks import Task, finalize_step, get_task, tokenize_step
from offramp.quality.certificate import certificate_gaps
from offramp.tasks.base import check_no_clash
from pipelines.cluster import check_paths_on_nodes
import pipelines.output as run_output
from pipelines.read import (check_columns, check_format, corpus_source, detect_format, input_files, input_schema,
                            kept_types)
from pipelines.storage import filesystem

logger = logging.getLogger(__name__)


@dataclass
class TagResult:
    output: str
    task: str  # offramp.tasks name
    metrics: dict  # flat numbers, ready for MLflow
    exit_histogram: dict[int, int]
    layout: list[PlannedStage]
    thresholds: dict[int, float]
    policy: str
    stage_timings: dict = field(default_factory=dict)
    audit: dict | None = None  # offramp.quality.audit.summarize_audit; None when no audit ran
    calibration: dict | None = None  # the model's stored calibration record
    rows_in: int | None = None  # rows the reader read (None: a dataset a team built)
    files_in: int | None = None
    missing: dict = field(default_factory=dict)  # pipelines.output.missing: empty when complete
    started: dict = field(default_factory=dict)  # pipelines.output.start's record of the run
    ray_stats: str = ""  # Ray Data's per-operator wall and CPU times of the run (Dataset.stats())
    certificate: list[str] = field(default_factory=list)  # why the certificate does not cover the run (empty: it does)

    @property
    def complete(self) -> bool:
        """Every input row is in the output exactly once (by count; source_row is unique)."""
        return not self.missing.get("files_unread") and self.missing.get("rows_missing") == 0


@dataclass(frozen=True)
class Plan:
    """Everything decided before Ray starts."""

    cfg: TagConfig
    info: ModelInfo
    task: Task
    thresholds: dict[int, float]
    stages: list[PlannedStage]
    keep_types: dict = field(default_factory=dict)  # the id and passthrough columns' Arrow types
    certificate: list[str] = field(default_factory=list)  # offramp.quality.certificate gaps (empty: covered)
    input_format: str | None = None  # parquet / jsonl / text, as validate found it (None: not looked at)
    input_schema: pa.Schema | None = None  # a Parquet input's schema, read once from its footer

    @property
    def exits(self) -> bool:
        return not self.cfg.exit.disabled


# ---------------------------------------------------------------- before Ray starts


def runs_locally(cfg: RayConfig) -> bool:
    """True when the stages run on this machine: no cluster address given or set by a job."""
    return not (cfg.address or os.environ.get("RAY_ADDRESS"))


def tokenize_concurrency(cfg: TagConfig) -> int | None:
    """Tokenize tasks at once: as configured; on an embedded local Ray the machine's cores (the
    logical CPUs Ray is given exceed them, and each extra task process's imports at start-up
    compete with the stage actors' own); None (Ray's CPUs decide) on a cluster."""
    if cfg.tokenize_concurrency is not None:
        return cfg.tokenize_concurrency
    return (os.cpu_count() or 1) if runs_locally(cfg.ray) else None


def tokenize_cpus(cfg: TagConfig, planned: list[PlannedStage]) -> float:
    """CPUs a tokenize task asks for: as configured; else a whole core beside GPU stages (a GPU
    actor's thread that launches kernels must not share its core with two tokenizing tasks), and
    half of one beside CPU stages."""
    if cfg.tokenize_cpus is not None:
        return cfg.tokenize_cpus
    return 1.0 if any(p.num_gpus for p in planned) else 0.5


def stage_calls(cfg: TagConfig, stage: PlannedStage) -> int:
    """Batches a stage actor takes at once: as configured; else 2 on a GPU (Ray Data converts the
    next batch on the actor's idle CPU while the kernels run), 1 on a CPU (the conversions would
    take the model's cores)."""
    if cfg.stage_calls is not None:
        return cfg.stage_calls
    return 2 if stage.num_gpus else 1


def resolve_thresholds(cfg: TagConfig, info: ModelInfo) -> dict[int, float]:
    """The threshold of every exit head: given in the config, else stored with the model."""
    given = cfg.exit.threshold is not None or cfg.exit.thresholds is not None
    if cfg.exit.policy and cfg.exit.policy != info.policy and not given and not cfg.exit.disabled:
        raise ConfigError(
            f"the model's stored thresholds were chosen for exit policy {info.policy!r}, and {cfg.exit.policy!r} "
            f"scores on another scale; with --policy {cfg.exit.policy} give --threshold (or exit.thresholds)"
        )
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


def local_torch_threads(planned: list[PlannedStage], rebatch: int = 0) -> list[PlannedStage]:
    """On this machine, share its cores among the CPU stage actors.

    Ray sets OMP_NUM_THREADS to an actor's logical CPUs (1 by default), and the embedded
    Ray has more logical CPUs than cores (so tasks and actors don't starve), so left alone
    a lone stage actor would use one core of many: measured 0.56x of a bare PyTorch loop on
    2 cores. On a cluster Ray's rule stands (set num_cpus / torch_threads per stage).
    """
    cpu_actors = sum(p.max_actors for p in actor_pools(planned, rebatch) if p.num_gpus == 0)
    threads = max(1, (os.cpu_count() or 1) // max(1, cpu_actors))
    out = []
    for p in planned:
        if p.num_gpus == 0 and p.spec.torch_threads == 0:
            p = dataclasses.replace(p, spec=dataclasses.replace(p.spec, torch_threads=threads))
        out.append(p)
    return out


LOCAL_CPU_ACTORS_MAX = 8  # a model copy each; past this many, threads per actor instead


def local_cpu_actors(cfg: TagConfig) -> int:
    """Stage 0's actors on a local run when its config leaves them unset: one per core (fewer when
    the stage pins torch_threads or asks for more than one CPU an actor), at most LOCAL_CPU_ACTORS_MAX,
    and where ray.num_cpus is set, what half of it holds at the stage's num_cpus each (the read,
    tokenize and write tasks need the rest).

    Why: a process per core beats one process's threads over the same cores. On the development
    machine's 2 cores, two 1-thread actors made 1.46-1.54x the docs/s of one 2-thread actor on the
    framework benchmark (hidden 32: every operator is small, and the threads meet at a barrier after
    each), and 1.04x (exits) and 1.12x (full depth) on the MiniLM benchmark model (BENCHMARKS.md,
    "A process per core")."""
    first = stage_configs(cfg)[0]
    per_core = (os.cpu_count() or 1) // max(1, first.torch_threads, math.ceil(first.num_cpus))
    in_half_of_ray = per_core  # unset ray.num_cpus is sized from the actors (local_ray_cpus)
    if cfg.ray.num_cpus and first.num_cpus > 0:
        in_half_of_ray = int(cfg.ray.num_cpus / 2 / first.num_cpus)
    return max(1, min(per_core, LOCAL_CPU_ACTORS_MAX, in_half_of_ray))


def local_ray_cpus(planned: list[PlannedStage], rebatch: int = 0, resume: bool = False, cores: int | None = None) -> int:
    """Logical CPUs for an embedded Ray whose ray.num_cpus is unset: what the stage actors reserve,
    one per core for the read, tokenize and write tasks (one more for a resumed run's checkpoint
    filter), and at least two per core.

    Why not a fixed 8: each logical CPU past what the run uses lets one more worker process boot
    beside the stages on the same cores. On the development machine's 2 cores, 4 against 8 made the
    demo 1.07x the docs/s, and on the MiniLM benchmark (two stage actors) lifted the exits run 1.05x
    and full depth 1.02x (BENCHMARKS.md, "Stop 39")."""
    cores = cores or os.cpu_count() or 1
    reserved = sum(p.min_actors * p.num_cpus for p in actor_pools(planned, rebatch))
    return max(2 * cores, math.ceil(reserved) + cores + (1 if resume else 0))


def stage_plan(cfg: TagConfig, info: ModelInfo, thresholds: dict, local: bool) -> list[PlannedStage]:
    """The layout with its thresholds; on a local run stage 0 gets a CPU actor per core
    (`local_cpu_actors`) and the machine's cores are shared among the stages' actors."""
    planned = plan_layout(cfg, info.num_layers, info.survival, exits_enabled=not cfg.exit.disabled, task=info.task,
                          cpu_actors=local_cpu_actors(cfg) if local else 1)
    planned = [dataclasses.replace(p, spec=dataclasses.replace(p.spec, thresholds=thresholds)) for p in planned]
    return local_torch_threads(planned, cfg.rebatch) if local else planned


def check_output(cfg: TagConfig) -> None:
    """The output may replace an earlier output, never the input: --overwrite deletes the output
    directory before anything is read, and an output inside the input would be read as input."""
    fs, root = filesystem(cfg.output)
    in_fs, in_root = filesystem(cfg.input)
    same = type(fs) is type(in_fs) and getattr(fs, "region", None) == getattr(in_fs, "region", None)
    out_dir, in_path = root.rstrip("/"), in_root.rstrip("/")
    if same and (in_path == out_dir or in_path.startswith(out_dir + "/") or out_dir.startswith(in_path + "/")):
        raise ConfigError(
            f"output {cfg.output} is the input {cfg.input}, holds it, or lies inside it: writing there would "
            "delete (with --overwrite) or re-read the corpus; choose an --output outside the input"
        )
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume continues the run in --output and --overwrite starts it over: give one")
    if cfg.resume:
        run_output.check_resume(cfg)
    elif fs.get_file_info(root).type != pafs.FileType.NotFound and not cfg.overwrite:
        raise ConfigError(f"output {cfg.output} already exists; pass --overwrite, --resume (a killed run) "
                          "or choose another --output")


def make_plan(cfg: TagConfig, info: ModelInfo, task: Task, keep_types: dict, advise: bool = True) -> Plan:
    """Thresholds and the stage layout for `cfg` (layout errors surface here, before Ray starts),
    and whether the model's certificate covers the run (refused under --strict when not).
    `advise`: log what the CPU says of the stages' dtype, and what was measured of a GPU layout
    (once a run: not for its full-depth pass)."""
    thresholds = resolve_thresholds(cfg, info)
    local = runs_locally(cfg.ray)
    stages = stage_plan(cfg, info, thresholds, local)
    cpu_dtypes = {p.spec.dtype for p in stages if p.spec.device == "cpu"} if advise else set()
    for level, message in cpu_dtype_advice(cpu_dtypes, cpu_flags() if local else None):
        logger.log(level, message)
    if advise and any(p.num_gpus for p in stages):  # what the H200 measured of this GPU layout, if anything
        for message in layout_advice({}, [{"num_gpus": p.num_gpus} for p in actor_pools(stages, cfg.rebatch)]):
            logger.info(message)
    gaps = [] if cfg.exit.disabled else certificate_gaps(
        info.calibration, info.certified, policy=cfg.exit.policy or info.policy, mechanism=info.mechanism,
        max_length=cfg.max_length, dtypes={p.spec.dtype for p in stages}, thresholds=thresholds, stored=info.thresholds,
        token=task.exit_conditions(cfg, info),
    )
    if gaps and cfg.strict:
        raise ConfigError("--strict: the model's certificate does not cover this run: " + "; ".join(gaps)
                          + ". Recalibrate for these settings (jobs/calibrate.py) or drop --strict")
    for gap in gaps:
        logger.warning("not covered by the model's certificate: %s", gap)
    return Plan(cfg, info, task, thresholds, stages, keep_types, gaps)


def check_model(cfg: TagConfig, model_dir: str) -> tuple[ModelInfo, Task]:
    """The model directory, its task, and the exit settings that must fit it."""
    info = ModelInfo.read(model_dir)
    task = get_task(info.task)
    policy = get_policy(cfg.exit.policy or info.policy)
    check_policy(policy, info.mechanism, set(info.signal_modules), per_word=task.per_word)
    check_no_clash(cfg, task)
    return info, task


def validate(cfg: TagConfig) -> Plan:
    """Everything that can be checked before Ray starts, and the plan that follows from it."""
    cfg.require("input", "model", "output")
    info, task = check_model(cfg, cfg.model)
    # listed once (a round trip per directory on an object store): to detect the format and check .json files
    files = input_files(cfg.input) if cfg.input_format in ("auto", "jsonl") else None
    fmt = detect_format(cfg.input, cfg.input_format, files)
    check_format(cfg, fmt, files)
    task.check(cfg, info, fmt)
    schema = input_schema(cfg, fmt)
    if schema is not None:
        check_columns(cfg, task, schema.names, dict(zip(schema.names, schema.types)))
    check_output(cfg)
    plan = make_plan(cfg, info, task, kept_types(cfg, schema))
    return dataclasses.replace(plan, input_format=fmt, input_schema=schema)


# ---------------------------------------------------------------- Ray


EMBEDDED_RAY_CPUS = 8  # an embedded Ray's logical CPUs where ray.num_cpus is unset and no tagging plan sizes them


def init_ray(cfg: RayConfig, num_cpus: int | None = None) -> None:
    """Join the cluster a job runs on (RAY_ADDRESS) or start an embedded local Ray with
    cfg.num_cpus logical CPUs, else `num_cpus` (a tagging run's `local_ray_cpus`), else EMBEDDED_RAY_CPUS."""
    if ray.is_initialized():
        return
    if runs_locally(cfg):
        ray.init(address="local", num_cpus=cfg.num_cpus or num_cpus or EMBEDDED_RAY_CPUS, include_dashboard=False)
    else:
        ray.init(address=cfg.address or os.environ["RAY_ADDRESS"], log_to_driver=True)


def check_cluster_fits(planned: list[PlannedStage], cfg: RayConfig, resume: bool = False, rebatch: int = 0) -> None:
    """Fail at start when the stage actors' minimum reservations leave no CPU for the read,
    tokenize and write tasks (1 CPU at a time) or ask for more GPUs than the cluster has: Ray
    Data would otherwise wait forever with every actor up and no input reaching it. A resumed
    run also has Ray Data's checkpoint filter actor (1 CPU)."""
    if cfg.autoscaling:
        return
    have = ray.cluster_resources()
    pools = actor_pools(planned, rebatch)
    cpus = sum(p.min_actors * p.num_cpus for p in pools)
    gpus = sum(p.min_actors * p.num_gpus for p in pools)
    extra = 2 if resume else 1
    if cpus + extra > have.get("CPU", 0) or gpus > have.get("GPU", 0):
        raise ConfigError(
            f"the stage actors reserve {cpus:g} CPUs and {gpus:g} GPUs ({len(planned)} stages, "
            f"min_actors x num_cpus / num_gpus each) plus {extra} CPU for reading, tokenizing and writing"
            f"{' and the resume checkpoint filter' if resume else ''}, "
            f"but the Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs: "
            "use fewer stages (--num-stages), give each stage less (`stages:` with num_cpus: 0.5), "
            "or add nodes (an embedded local Ray: raise ray.num_cpus; an autoscaling cluster: set "
            "ray.autoscaling: true)"
        )


def log_stage_plan(planned: list[PlannedStage], rebatch: int = 0) -> None:
    if rebatch and len(planned) > 1:
        logger.info("rebatch %d: one actor pool holds all %d stages (stage 0's actors below)", rebatch, len(planned))
    for p in planned:
        logger.info(
            "stage %d: layers [%d, %d) batch %d actors %d..%d threads %s (expected survival in %.2f)",
            p.spec.index, p.spec.start, p.spec.end, p.batch_size, p.min_actors, p.max_actors,
            p.spec.torch_threads or "ray default", p.survival,
        )


def aligned_to_stage_batches(ds: ray.data.Dataset, plan: Plan) -> ray.data.Dataset:
    """Blocks of exactly the first stage's batch_size rows, when that batch spans several tokenize
    batches (GPU batches of thousands of rows). Tokenized blocks keep the read's block sizes, and
    Ray Data slices each block into batches on its own: on the H200, 4,807-row blocks made 4,096-
    and 711-row stage calls, 416 calls per million rows where 245 were needed, each paying the
    per-call cost of a GPU stage (BENCHMARKS.md, "GPU"). Not done for CPU batch sizes, which
    divide the tokenize batches already: a repartition would only add a step."""
    first = actor_pools(plan.stages, plan.cfg.rebatch)[0].batch_size
    if first <= plan.cfg.tokenize_batch_size:
        return ds
    return ds.repartition(target_num_rows_per_block=first, strict=True)


def build_pipeline(ds: ray.data.Dataset, plan: Plan, collector=None, stage_cls=None) -> ray.data.Dataset:
    """The Ray Data plan after reading: tokenize, then one actor pool per stage (or one rebatching
    pool holding every stage), the last of which returns the output table on a CPU
    (`finalize_in_actor`; on a GPU a finalize task follows).
    `stage_cls`: the actor class (tests pass one that crashes)."""
    cfg, info, task = plan.cfg, plan.info, plan.task
    id_column = cfg.id_column or "id"
    source, _ = task.source_column(cfg)  # the raw text: tokenized, then dropped unless the output keeps it
    ds = ds.map_batches(
        tokenize_step,
        fn_kwargs=dict(
            task=task.name,
            model_dir=info.path,
            max_length=cfg.max_length,
            id_column=id_column,
            audit_fraction=cfg.audit.fraction if plan.exits else 0.0,
            audit_seed=cfg.audit.seed,
            drop=() if source in (id_column, cfg.label_column, *cfg.passthrough_columns) else (source,),
            by_length=True,  # fuller passes; the output never kept the input's order (preserve_order is off)
            **task.tokenize_kwargs(cfg),
        ),
        batch_size=cfg.tokenize_batch_size,
        batch_format="numpy",
        num_cpus=tokenize_cpus(cfg, plan.stages),
        concurrency=tokenize_concurrency(cfg),
    )
    ds = aligned_to_stage_batches(ds, plan)
    finalize = dict(task=task.name, labels=info.labels, id_column=id_column, keep=list(cfg.passthrough_columns),
                    gold=cfg.label_column, keep_types=plan.keep_types)
    in_actor = finalize_in_actor(plan.stages, cfg.rebatch)
    if cfg.rebatch and len(plan.stages) > 1:
        (pool,) = actor_pools(plan.stages, cfg.rebatch)
        ds = ds.map_batches(
            stage_cls or RebatchingStageActor,
            fn_constructor_kwargs=dict(model_dir=info.path, specs=[p.spec for p in plan.stages],
                                       pass_rows=pool.batch_size, collector=collector,
                                       finalize=finalize if in_actor else None),
            batch_size=pool.batch_size,
            batch_format="numpy",
            # an async actor takes this many batches at once: the survivors merged at each boundary
            compute=ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors,
                                      max_tasks_in_flight_per_actor=cfg.rebatch,
                                      max_concurrent_calls_per_actor=cfg.rebatch),
            num_cpus=pool.num_cpus,
            num_gpus=pool.num_gpus,
        )
    else:
        for stage in plan.stages:
            last = stage is plan.stages[-1]
            ds = ds.map_batches(
                stage_cls or StageActor,
                fn_constructor_kwargs=dict(model_dir=info.path, spec=stage.spec, collector=collector,
                                           finalize=finalize if last and in_actor else None),
                batch_size=stage.batch_size,
                batch_format="numpy",
                compute=ActorPoolStrategy(min_size=stage.min_actors, max_size=stage.max_actors,
                                          max_concurrent_calls_per_actor=stage_calls(cfg, stage)),
                num_cpus=stage.num_cpus,
                num_gpus=stage.num_gpus,
            )
    if not in_actor:
        ds = ds.map_batches(finalize_step, fn_kwargs=finalize, batch_format="numpy", num_cpus=0.25)
    return ds


def finalize_in_actor(planned: list[PlannedStage], rebatch: int = 0) -> bool:
    """Whether the last actor pool returns the output table itself: on a CPU, yes (a task per stage
    batch cost scheduling and an object in the store for a few milliseconds of column work on the
    stages' own cores: the demo ran 1.08x without it; BENCHMARKS.md, "Stop 39"). On a GPU the output
    table stays a task on the node's other cores: the actor's host thread feeds the device, and that
    trade was not measured (no GPU was lent when the change was made)."""
    return actor_pools(planned, rebatch)[-1].num_gpus == 0


def tag_dataset(ds: ray.data.Dataset, model_dir: str, config: TagConfig | None = None) -> ray.data.Dataset:
    """Tag a Ray Dataset a team built themselves: one output row per input row, lazily.

    `ds` holds the id column and the text column (token models: the words or text column)
    that `config` names (defaults: `id`, `text`); `config.input`/`output` are not used. The
    result is a Dataset to write or consume; no metrics are logged (see `run_tagging`)."""
    cfg = dataclasses.replace(config or TagConfig(), model=model_dir)
    info, task = check_model(cfg, model_dir)
    schema = ds.schema()
    check_columns(dataclasses.replace(cfg, input="the dataset"), task, schema.names,
                  dict(zip(schema.names, schema.types)))
    plan = make_plan(cfg, info, task, kept_types(cfg, pa.schema(list(zip(schema.names, schema.types)))))
    return build_pipeline(ds, plan)


# ---------------------------------------------------------------- one run


def run_tagging(cfg: TagConfig, stage_cls=None, plan: Plan | None = None) -> TagResult:
    """Tag every document of cfg.input into cfg.output; return the run's metrics.
    `stage_cls`: the stage actor class (tests pass one that crashes); `plan`: `validate(cfg)`,
    when the caller validated before it opened its MLflow run."""
    plan = plan or validate(cfg)
    info, task = plan.info, plan.task
    init_ray(cfg.ray, local_ray_cpus(plan.stages, cfg.rebatch, cfg.resume))
    check_paths_on_nodes(cfg)  # a multi-node cluster: every node sees the model, input and output
    check_cluster_fits(plan.stages, cfg.ray, cfg.resume, cfg.rebatch)
    started = run_output.start(cfg, run_output.model_digest(info.path))
    log_stage_plan(plan.stages, cfg.rebatch)
    name = f"offramp-collector-{uuid.uuid4().hex[:12]}"  # the reader finds it by name
    # on the driver's node: the run cannot outlive that node, and a collector on a worker node
    # that dies would fail every stage and read that reports to it
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    collector = ray.remote(num_cpus=0)(MetricsCollector).options(name=name, scheduling_strategy=here).remote()
    source = corpus_source(cfg, task, report=name, fmt=plan.input_format, found=plan.input_schema)
    done_before = run_output.rows_checkpointed(cfg)
    started_at, t0 = time.time(), time.perf_counter()
    with data_context(cfg):
        ds = build_pipeline(ray.data.read_datasource(source), plan, collector, stage_cls)
        low, high = cfg.rows_per_file
        try:
            ds.write_parquet(cfg.output, min_rows_per_file=low, max_rows_per_file=high)
        except Exception:
            ray.kill(collector)
            if not run_output.settle(cfg):  # the failed run's last writes land before --resume may start
                logger.warning("could not see the output in %s stop changing within %.0f s of the failure: a --resume "
                               "in this process may race the failed run's last writes", cfg.output,
                               run_output.SETTLE_LIMIT_S)
            raise
    wall = time.perf_counter() - t0
    ray_stats = ds.stats()
    files_in = ray.get(collector.files_read.remote())

    fs, root = filesystem(cfg.output)
    if not run_output.output_files(cfg):  # an empty corpus: Ray wrote no file
        write_empty_output(plan, fs, root)
    output = pads.dataset(root, format="parquet", filesystem=fs)
    ranges = [(p.spec.start, p.spec.end) for p in plan.stages]
    audit_on = plan.exits and cfg.audit.fraction > 0
    counts = output_counts(output, task, info, ranges, cfg, audit_on)
    m, audit = task.metrics(counts, info, cfg)
    if audit is not None:
        audit.update(fraction=cfg.audit.fraction, seed=cfg.audit.seed)
        m.update(flat_metrics(audit))
    hist = m.pop("exit_histogram")
    timings = settled_timings(collector, len(plan.stages), m["rows"] - done_before)
    ray.kill(collector)
    add_rates(m, wall, timings, task.work_unit, m["rows"] - done_before, started_at)
    if cfg.label_column and cfg.full_depth_eval_rows and plan.exits and m["rows"]:
        m.update(full_depth_eval(plan, output, stage_cls, m["rows"]))
    missing = run_output.missing(files_in, source.file_paths(), m["rows"])
    return TagResult(cfg.output, task.name, m, hist, plan.stages, plan.thresholds, task.describe_policy(cfg, info),
                     timings, audit, info.calibration, sum(files_in.values()), len(files_in), missing, started,
                     ray_stats, plan.certificate)


def settled_timings(collector, stages: int, rows: int, wait_s: float = 30.0) -> dict:
    """The stages' summed reports, once every stage has reported at least `rows` rows (the rows
    this attempt wrote). Stages send reports without waiting for them (`actors.stage`), so the
    last few may still be on their way when the dataset ends; after `wait_s` the run goes on
    with what arrived and says which stage's figures fall short."""
    deadline = time.monotonic() + wait_s
    while True:
        timings = ray.get(collector.summary.remote())
        short = {k: int(timings.get(k, {}).get("rows_seen", 0)) for k in range(stages)}
        short = {k: seen for k, seen in short.items() if seen < rows}
        if not short or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for k, seen in short.items():
        logger.warning("stage %d reported %d of the %d rows written within %.0f s: its busy time and batch count "
                       "undercount", k, seen, rows, wait_s)
    return timings


@contextlib.contextmanager
def data_context(cfg: TagConfig):
    """The run's Ray Data settings, for the datasets built inside: checkpoints of the output
    (what --resume skips), the budget of blocks that may fail, and the share of the object
    store the execution may fill. They are settings of the driver's DataContext, which a
    Dataset copies when it is created; restored afterwards."""
    ctx = DataContext.get_current()
    names = ("checkpoint_config", "max_errored_blocks", "override_object_store_memory_limit_fraction")
    before = [getattr(ctx, n) for n in names]
    run = (run_output.checkpoint_config(cfg), cfg.max_errored_blocks, cfg.ray.object_store_fraction)
    for name, value in zip(names, run):
        setattr(ctx, name, value)
    try:
        yield
    finally:
        for name, value in zip(names, before):
            setattr(ctx, name, value)


OUTPUT_BATCH_ROWS = 65_536  # rows of the output the driver holds at a time while it computes the run's figures


def output_batches(output: pads.Dataset, columns: list[str]):
    """The output's `columns`, one file after another. `Dataset.to_batches` reads ahead of its
    consumer without a bound that holds (`batch_readahead`/`fragment_readahead` of 1 still let
    it buffer 109 MiB of a 100-file output): over 5M rows the driver's RSS rose 240 MiB while it
    counted. File by file it holds one batch (5 MiB) and took 2.1 s instead of 1.8 s."""
    for fragment in output.get_fragments():
        yield from fragment.to_batches(columns=columns, batch_size=OUTPUT_BATCH_ROWS, use_threads=False)


def output_counts(output: pads.Dataset, task: Task, info: ModelInfo, ranges, cfg: TagConfig, audit: bool) -> dict:
    """The task's counts over the written output, streamed in batches: the driver's memory does
    not grow with the corpus."""
    columns = task.metric_columns(cfg)
    counts = None
    for batch in output_batches(output, columns):
        part = task.counts(pa.Table.from_batches([batch]), info, ranges, cfg, audit)
        counts = part if counts is None else add_counts(counts, part)
    if counts is None:  # no batch at all: the counts of no rows
        counts = task.counts(output.schema.empty_table().select(columns), info, ranges, cfg, audit)
    return counts


def write_empty_output(plan: Plan, fs, root: str) -> None:
    """An empty corpus still leaves an output directory: one Parquet file of zero rows with the
    task's output schema, so that readers and the run's metrics see an empty table, not an error."""
    cfg, task = plan.cfg, plan.task
    source, _ = task.source_column(cfg)
    names = dict.fromkeys([cfg.id_column or "id", source, *cfg.passthrough_columns,
                           *([cfg.label_column] if cfg.label_column else []), schema.SOURCE_ROW])
    empty = {name: np.array([], dtype=object) for name in names if name}
    batch = task.tokenize(empty, None, cfg.max_length, None, **task.tokenize_kwargs(cfg))  # no row: no tokenizer call
    table = task.finalize(batch, plan.info.labels, cfg.id_column or "id", list(cfg.passthrough_columns),
                          cfg.label_column, plan.keep_types)
    fs.create_dir(root, recursive=True)
    pq.write_table(table, f"{root}/empty.parquet", filesystem=fs)


def add_rates(m: dict, wall: float, timings: dict, work: str, rows_written: int | None = None,
              started_at: float | None = None) -> None:
    """Wall time, overall rates, and each stage's busy time, work (`work`: what its
    row_layers count, row-layers or token-layers) and rates from the stages' reports.
    `rows_written`: the rows this attempt wrote (a resumed run's output holds earlier ones);
    the token and word rates scale with it. `started_at`: time.time() when the pipeline started;
    with it, `startup_seconds` is the time until stage 0's first call began (actors started,
    the first rows read and tokenized): a fixed cost that a short run pays in full. It is split
    into the first stage-0 actor's process start (with its imports), its constructor (the model
    loaded) and the wait from then until its first batch (input not yet read and tokenized)."""
    written = m["rows"] if rows_written is None else rows_written
    share = written / m["rows"] if m["rows"] else 0.0
    m["wall_seconds"] = wall
    m["rows_written"] = written
    m["docs_per_second"] = written / wall
    m["tokens_per_second"] = share * m["tokens"] / wall
    if "words" in m:
        m["words_per_second"] = share * m["words"] / wall
    for k, t in sorted(timings.items()):
        busy = t.get("seconds", 0.0)
        m[f"stage{k}_busy_seconds"] = busy
        m[f"stage{k}_batches"] = t.get("batches", 0)
        m[f"stage{k}_{work}"] = t.get("row_layers", 0)
        m[f"stage{k}_tokens_per_busy_second"] = t.get("tokens_in", 0) / busy if busy else 0.0
        m[f"stage{k}_docs_per_busy_second"] = t.get("rows_in", 0) / busy if busy else 0.0
        m[f"stage{k}_docs_per_second"] = m.get(f"stage{k}_rows_in", 0) / wall
        m[f"stage{k}_audit_{work}"] = t.get("audit_row_layers", 0)
        m[f"stage{k}_skipped_row_layers"] = t.get("skipped_row_layers", 0)
        if t.get("last_end"):  # from its first call's start to its last call's end (clocks of the actors' nodes)
            m[f"stage{k}_active_seconds"] = t["last_end"] - t["first_start"]
    if started_at is not None and timings.get(0, {}).get("first_start"):
        m["startup_seconds"] = max(0.0, timings[0]["first_start"] - started_at)
        if timings[0].get("ready"):  # start-up, split: the actor's process and imports, its model, its input
            m["startup_actor_process_seconds"] = max(0.0, timings[0]["init_began"] - started_at)
            m["startup_model_load_seconds"] = timings[0]["ready"] - timings[0]["init_began"]
            m["startup_input_wait_seconds"] = max(0.0, timings[0]["first_start"] - timings[0]["ready"])


def sample_rows(batch: pa.Table, column: str, fraction: float, seed: int) -> pa.Table:
    """The rows of a batch whose hash of (seed, id) falls below `fraction`."""
    return batch.filter(pa.array(schema.audit_mask(batch.column(column).to_pylist(), fraction, seed)))


# Full-depth samples up to this many rows run on one stage actor, not one per core: a second actor
# costs about 1 s more start-up on 2 cores and saves about 1.7 ms a row at full depth (MiniLM-L6: 72
# against 82 docs/s), so it pays from about 600 rows (BENCHMARKS.md, "A process per core").
ONE_ACTOR_SAMPLE_ROWS = 1000


def full_depth_sample_stages(cfg: TagConfig) -> tuple[StageConfig, ...]:
    """The full-depth sample's stages: the run's, with stage 0 on one actor where its count is
    unset and the sample is at most ONE_ACTOR_SAMPLE_ROWS."""
    stages = stage_configs(cfg)
    if 0 < cfg.full_depth_eval_rows <= ONE_ACTOR_SAMPLE_ROWS:
        stages = (dataclasses.replace(stages[0], min_actors=stages[0].min_actors or 1),) + stages[1:]
    return stages


def full_depth_eval(plan: Plan, output: pads.Dataset, stage_cls=None, rows: int = 0) -> dict:
    """Run (a sample of) the corpus at full depth to measure what the exits cost. The early
    answers of those rows are looked up in the written output, batch by batch. The sample is
    about full_depth_eval_rows of the `rows` rows, picked by a hash of the id as the audit
    picks (another seed): spread over the whole corpus, not its first files, which may differ."""
    cfg = plan.cfg
    full_cfg = dataclasses.replace(cfg, exit=dataclasses.replace(cfg.exit, disabled=True),
                                   stages=full_depth_sample_stages(cfg))
    full = make_plan(full_cfg, plan.info, plan.task, plan.keep_types, advise=False)
    ds = ray.data.read_datasource(corpus_source(full_cfg, plan.task, fmt=plan.input_format, found=plan.input_schema))
    id_column = cfg.id_column or "id"
    if 0 < cfg.full_depth_eval_rows < rows:
        ds = ds.map_batches(sample_rows, fn_kwargs=dict(column=id_column, fraction=cfg.full_depth_eval_rows / rows,
                                                        seed=cfg.audit.seed + 1), batch_format="pyarrow")
    answer = plan.task.answer_column()
    rows = build_pipeline(ds, full, None, stage_cls).select_columns(
        [id_column, answer, "status", plan.task.gold_column]).take_all()
    rows = [r for r in rows if r["status"] in schema.RUNNABLE]
    wanted, early = {r[id_column] for r in rows}, {}
    for batch in output_batches(output, [id_column, answer]):
        ids, answers = batch.column(0).to_pylist(), batch.column(1)
        early.update((i, answers[k].as_py()) for k, i in enumerate(ids) if i in wanted)
    return plan.task.compare_full_depth(early, rows, plan.info, id_column)
