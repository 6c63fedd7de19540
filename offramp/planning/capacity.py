"""How many actors, GPUs and CPUs a throughput target needs, from one measured tagging run.

The model, per stage k of a run's `run_summary.json`:

    s_k = rows_in_k / rows_in_0            survival into stage k (fraction of labeled rows)
    r_k = rows_in_k / busy_seconds_k       measured documents per actor-second
    a_k = ceil(T * s_k * headroom / r_k)   actors that sustain T docs/s with the headroom kept

so a stage costs s_k / r_k = busy_seconds_k / rows_in_0 actor-seconds per input document.
Pure arithmetic on the summary dict; reading it from MLflow is `pipelines.tracking.load_run_summary`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from offramp.config import ConfigError

SUMMARY_ARTIFACT = "run_summary.json"
PLAN_ARTIFACT = "capacity_plan.json"
MODES = {"target": "--target-docs-per-hour", "budget_gpus": "--budget-gpus", "budget_cpus": "--budget-cpus"}
# Relative slack when rounding actor counts up: T * s / r for an exact integer (e.g. 3) can come
# out of float arithmetic as 3.0000000000000004, which must not become 4 actors.
_ROUNDING_SLACK = 1e-9
FEED_BOUND_SHARE = 0.8
"""A first pool busy less than this share of its active span waited for its input (feed_note)."""


@dataclass(frozen=True)
class StagePlan:
    """Planned actors of one actor pool and what the measured run says about it."""

    index: int
    start: int
    """First layer of the stage, 0-based; the stage holds layers [start, end)."""
    end: int
    rows_in: int
    """Rows that entered this stage in the measured run."""
    survival_in: float
    """s_k: fraction of the run's labeled rows that entered this stage."""
    docs_per_actor_second: float | None
    """r_k: measured documents per actor-second; None when no row reached the stage."""
    actors: int
    num_gpus_per_actor: float
    num_cpus_per_actor: float
    gpus: float
    cpus: float
    utilization: float
    """Fraction of the planned actors' time spent in batch calls at the planned throughput."""
    capacity_docs_per_hour: float | None
    """Input documents per hour this stage's actors handle with the headroom kept; None = unbounded."""
    note: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CapacityPlan:
    """Actors per stage and what they cost, for a throughput target or the most a budget buys."""

    mode: str
    """target, budget_gpus or budget_cpus."""
    headroom: float
    stages: tuple[StagePlan, ...]
    docs_per_hour: float
    """Planned throughput: the target, or in budget mode the most the chosen actors sustain."""
    sustainable_docs_per_hour: float
    """Most the chosen actor counts sustain with the headroom kept (>= docs_per_hour)."""
    gpus: float
    cpus: float
    gpu_hours_per_million_docs: float
    cpu_hours_per_million_docs: float
    bottleneck_stage: int
    """Index of the stage with the least spare capacity."""
    target_docs_per_hour: float | None = None
    budget_gpus: float | None = None
    budget_cpus: float | None = None
    based_on: dict = field(default_factory=dict)
    """The measured run's numbers the plan starts from."""
    assumptions: list[str] = field(default_factory=list)
    layout_advice: list[str] = field(default_factory=list)
    """A layout measured to do better than the run's (none when the run used it, or none is measured)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- reading a run summary


def exit_histogram(summary: dict) -> dict[int, int]:
    """Labeled rows by exit layer, with integer layers (JSON makes the keys strings)."""
    return {int(k): int(v) for k, v in (summary.get("exit_histogram") or {}).items()}


def num_layers(summary: dict) -> int:
    """Model depth: the summary's num_layers, else the deepest layer any stage or exit mentions."""
    if summary.get("num_layers"):
        return int(summary["num_layers"])
    ends = [int(st["end"]) for st in summary.get("stages") or []]
    return max(ends + list(exit_histogram(summary)) + [0])


def survival_by_layer(summary: dict) -> list[float]:
    """Fraction of labeled rows still running after each layer 1..L (the last is 0)."""
    hist = exit_histogram(summary)
    total = sum(hist.values())
    L = num_layers(summary)
    if total == 0:
        return [0.0] * L
    return [sum(c for layer, c in hist.items() if layer > l) / total for l in range(1, L + 1)]


def _busy(stage: dict) -> float:
    return float(stage.get("busy_seconds") or 0.0)


def stage_rate(stage: dict) -> float | None:
    """r_k: measured documents per actor-second; None when the stage got no rows or no timing."""
    rows_in = int(stage.get("rows_in") or 0)
    return rows_in / _busy(stage) if rows_in and _busy(stage) > 0 else None


def stage_utilization(summary: dict) -> list[float]:
    """Measured busy fraction of each pool: busy_seconds / (wall_seconds * max_actors); NaN if unknown."""
    wall = float((summary.get("metrics") or {}).get("wall_seconds") or 0.0)
    out = []
    for st in summary.get("stages") or []:
        actors = st.get("max_actors") or st.get("min_actors") or 1
        out.append(_busy(st) / (wall * actors) if wall > 0 and st.get("busy_seconds") is not None else math.nan)
    return out


def _checked_stages(summary: dict) -> list[dict]:
    stages = summary.get("stages") or []
    if not stages:
        raise ConfigError(
            f"{SUMMARY_ARTIFACT} has no 'stages'; it was logged by an older offramp: re-run "
            "jobs/tag_corpus.py and plan from the new run"
        )
    if int(stages[0].get("rows_in") or 0) <= 0:
        raise ConfigError("no rows entered stage 0 of the measured run; plan from a run that labeled documents")
    for st in stages:
        if int(st.get("rows_in") or 0) > 0 and _busy(st) <= 0:
            raise ConfigError(
                f"stage {st['index']} had {st['rows_in']} rows but no busy_seconds: the run did not record "
                "stage timings; re-run jobs/tag_corpus.py with this version and plan from that run"
            )
    return stages


def actor_pools(summary: dict) -> list[dict]:
    """The measured run's actor pools, as stage dicts: its stages, or, for a run whose actors held
    every stage (`rebatch`), one pool over all layers whose busy time is the stages' sum."""
    stages = _checked_stages(summary)
    if not int((summary.get("run") or {}).get("rebatch") or 0) or len(stages) == 1:
        return stages
    pool = dict(stages[0], end=stages[-1]["end"], busy_seconds=sum(_busy(st) for st in stages))
    for key in ("num_cpus", "num_gpus", "torch_threads"):
        pool[key] = max(float(st.get(key) or 0) for st in stages)
    for key in ("row_layers", "batches"):
        pool[key] = sum(st.get(key) or 0 for st in stages)
    return [pool]


# ---------------------------------------------------------------- the arithmetic


def _ceil(x: float) -> int:
    return math.ceil(x - _ROUNDING_SLACK * max(1.0, abs(x)))


def _actors(cost_per_doc: list[float], docs_per_second: float, headroom: float) -> list[int]:
    """Integer actors per stage for T docs/s; cost_per_doc[k] = s_k / r_k actor-seconds (0 = no rows)."""
    return [max(1, _ceil(docs_per_second * headroom * c)) for c in cost_per_doc]


def _sustained(actors: list[int], cost_per_doc: list[float], headroom: float) -> float:
    """Docs/s the actor counts sustain with headroom kept: min_k a_k * r_k / (s_k * headroom)."""
    return min((a / (c * headroom) for a, c in zip(actors, cost_per_doc) if c > 0), default=math.inf)


def _most_within_budget(cost_per_doc: list[float], unit: list[float], budget: float, headroom: float) -> float:
    """Largest T (docs/s) whose integer actor counts cost at most `budget` units (GPUs or CPUs)."""

    def cost(T: float) -> float:
        return sum(a * u for a, u in zip(_actors(cost_per_doc, T, headroom), unit))

    # Rounding up only adds actors, so the continuous solution sum_k T*h*c_k*u_k = budget bounds T.
    hi = budget / (headroom * sum(c * u for c, u in zip(cost_per_doc, unit)))
    if cost(hi) <= budget:
        return hi
    lo = 0.0  # cost(0+) = one actor per stage, checked affordable by the caller
    for _ in range(200):  # cost is monotone in T; bisect to float resolution
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid)
    return lo


def _mode(target_docs_per_hour, budget_gpus, budget_cpus) -> str:
    given = {m: v for m, v in zip(MODES, (target_docs_per_hour, budget_gpus, budget_cpus)) if v is not None}
    if len(given) != 1:
        raise ConfigError(
            f"give exactly one of {', '.join(MODES.values())}"
            + (f" (got {', '.join(MODES[m] for m in given)})" if given else "")
        )
    mode, value = next(iter(given.items()))
    if not value > 0:
        raise ConfigError(f"{MODES[mode]} {value:g} must be > 0")
    return mode


def cpus_per_actor(stage: dict) -> float:
    """Cores an actor of this stage used: its Ray reservation, or its torch threads if more
    (a local run shares the machine's cores among actors that each reserve one logical CPU)."""
    return max(float(stage.get("num_cpus") or 0.0), float(stage.get("torch_threads") or 0))


def _budget_check(mode: str, stages: list[dict], budget: float) -> list[float]:
    what = "GPUs" if mode == "budget_gpus" else "CPUs"
    unit = [float(st.get("num_gpus") or 0.0) if mode == "budget_gpus" else cpus_per_actor(st) for st in stages]
    if not any(u > 0 and int(st.get("rows_in") or 0) > 0 for u, st in zip(unit, stages)):
        if mode == "budget_gpus":
            raise ConfigError(
                "the measured run used no GPUs (num_gpus is 0 in every stage that ran), so a GPU budget cannot be "
                "planned from it; plan with --budget-cpus, or measure a run with GPU stages, e.g. "
                "conf/tag_gpu_cluster.yaml"
            )
        raise ConfigError("the measured run reserved no CPUs per actor (num_cpus 0); plan with --budget-gpus")
    minimum = sum(unit)
    if budget < minimum:
        raise ConfigError(
            f"a budget of {budget:g} {what} is too small: one actor per stage needs {minimum:g} {what}; "
            f"pass --budget-{what.lower()} {minimum:g} or more"
        )
    return unit


def plan_capacity(
    summary: dict,
    target_docs_per_hour: float | None = None,
    budget_gpus: float | None = None,
    budget_cpus: float | None = None,
    headroom: float = 1.25,
) -> CapacityPlan:
    """Actors per stage for a docs/hour target, or the most docs/hour a GPU or CPU budget buys."""
    mode = _mode(target_docs_per_hour, budget_gpus, budget_cpus)
    if not headroom >= 1.0:
        raise ConfigError(f"headroom={headroom} would plan actors busier than measured; use >= 1, e.g. 1.25")
    stages = actor_pools(summary)
    rows0 = int(stages[0]["rows_in"])
    # s_k / r_k = (rows_in_k / rows_in_0) / (rows_in_k / busy_k) = busy_k / rows_in_0
    cost_per_doc = [_busy(st) / rows0 if int(st.get("rows_in") or 0) > 0 else 0.0 for st in stages]

    if mode == "target":
        T = target_docs_per_hour / 3600
    else:
        budget = budget_gpus if mode == "budget_gpus" else budget_cpus
        unit = _budget_check(mode, stages, budget)
        T = _most_within_budget(cost_per_doc, unit, budget, headroom)
    actors = _actors(cost_per_doc, T, headroom)
    sustained = _sustained(actors, cost_per_doc, headroom)
    if mode != "target":
        T = sustained  # the chosen integer actors sustain at least the searched T; report what they do

    plans = [_stage_plan(st, rows0, a, c, T, headroom) for st, a, c in zip(stages, actors, cost_per_doc)]
    gpus, cpus = sum(p.gpus for p in plans), sum(p.cpus for p in plans)
    docs_per_hour = T * 3600
    bottleneck = max(plans, key=lambda p: p.utilization).index
    plan = CapacityPlan(
        mode=mode,
        headroom=headroom,
        stages=tuple(plans),
        docs_per_hour=docs_per_hour,
        sustainable_docs_per_hour=sustained * 3600,
        gpus=gpus,
        cpus=cpus,
        gpu_hours_per_million_docs=gpus * 1e6 / docs_per_hour,
        cpu_hours_per_million_docs=cpus * 1e6 / docs_per_hour,
        bottleneck_stage=bottleneck,
        target_docs_per_hour=target_docs_per_hour,
        budget_gpus=budget_gpus,
        budget_cpus=budget_cpus,
        based_on=_based_on(summary),
    )
    return dataclasses.replace(plan, assumptions=_assumptions(summary, stages, plan),
                               layout_advice=layout_advice(summary, stages))


# Measured on one H200 with 16 cores, 1M short texts (BENCHMARKS.md, "GPU"): docs/s after start-up
# against one actor holding every layer on the whole GPU, in the same run. (low, high) over the runs.
GPU_LAYOUTS_MEASURED = {
    # BERT-base-sized model with exits: the GPU bound, the stage busy most of its span (3 runs, stop 36)
    "2 actors x 0.5 GPU": (1.10, 1.32),
    "one rebatching actor, 2 stages": (1.13, 1.13),
    # MiniLM-L6 with exits: the 16 cores' tokenizing bound, the GPU 16-25% busy (3 runs, stop 36);
    # the second actor's CPU is one tokenize task fewer
    "2 actors x 0.5 GPU, feed-bound": (0.65, 0.95),
    # MiniLM-L6 with exits, before stop 36's syncs cut (1 run, stop 34)
    "a pool per stage, 2 x 0.5 GPU": (0.94, 0.94),
}


def measured(name: str) -> str:
    """GPU_LAYOUTS_MEASURED[name] as text: 1.13x, or 1.10-1.32x over several runs."""
    low, high = GPU_LAYOUTS_MEASURED[name]
    return f"{low:.2f}x" if low == high else f"{low:.2f}-{high:.2f}x"


def layout_advice(summary: dict, pools: list[dict]) -> list[str]:
    """What the measured layouts say about this run's layout. CPU: one actor holding every stage
    (`rebatch`) measured faster than a pool per stage, with the same labels (BENCHMARKS.md,
    "Layouts on this CPU"). GPU: a pool per stage measured slowest; two actors sharing each GPU
    fastest where the GPU bounds the run, and slower where the feed does (GPU_LAYOUTS_MEASURED)."""
    gpu = [float(p.get("num_gpus") or 0) for p in pools]
    if len(pools) >= 2 and any(gpu):
        return [(f"Layout: a pool per stage on GPUs ({len(pools)} pools). On one H200, against one actor "
                 "holding every layer on the whole GPU, docs/s after start-up measured "
                 f"{measured('a pool per stage, 2 x 0.5 GPU')} for a pool per stage, "
                 f"{measured('2 actors x 0.5 GPU')} for two actors at num_gpus 0.5 and "
                 f"{measured('one rebatching actor, 2 stages')} for `rebatch: 8` (BENCHMARKS.md, \"GPU\"). "
                 "Measure this corpus with one stage at num_gpus 0.5 and twice the actors, or with `rebatch: 8`, "
                 "before adding pools.")]
    if len(pools) >= 2:
        return [(f"Layout: this run used a pool per stage ({len(pools)} pools). On one machine, one actor holding "
                "every stage (`rebatch: 8`) measured faster than a pool per stage, with the same labels (BENCHMARKS.md, "
                "\"Layouts on this CPU\"); measure this corpus with --rebatch 8 before adding pools.")]
    if gpu and gpu[0] >= 1.0:
        measured_busy = first_pool_busy(summary, pools)
        if measured_busy is not None and measured_busy[0] < FEED_BOUND_SHARE:
            share = measured_busy[0]
            return [(f"Layout: each actor takes a whole GPU (num_gpus {gpu[0]:g}), and it waited for its input "
                     f"(busy {100 * share:.0f}% of its span). Keep one actor per GPU: on one H200 fed by its own "
                     f"16 cores, two actors at num_gpus 0.5 made {measured('2 actors x 0.5 GPU, feed-bound')} the "
                     "docs/s of one (MiniLM-L6; BENCHMARKS.md, \"GPU\"), since the second actor's CPU is one "
                     "tokenize task fewer. More CPUs per GPU, or CPU nodes for the tokenize tasks, raise this "
                     "run's rate.")]
        return [(f"Layout: each actor takes a whole GPU (num_gpus {gpu[0]:g}). On one H200, where the model kept "
                 f"the GPU busy, two actors at num_gpus 0.5 made {measured('2 actors x 0.5 GPU')} the docs/s of one "
                 "after start-up (a BERT-base-sized model; BENCHMARKS.md, \"GPU\"): while one actor runs its "
                 "Python, the other's kernels use the GPU. Measure with num_gpus 0.5 and twice the actors.")]
    return []


def first_pool_busy(summary: dict, pools: list[dict]) -> tuple[float, float, int] | None:
    """The measured run's first pool: (busy actor-seconds over its active span times its actors,
    the active span in seconds, its actors); None when the run did not record both."""
    metrics, first = summary.get("metrics") or {}, pools[0]
    active = float(metrics.get(f"stage{first.get('index', 0)}_active_seconds") or 0.0)
    actors = int(first.get("max_actors") or first.get("min_actors") or 1)
    if active <= 0 or not _busy(first):
        return None  # before a run (the start-up check), or a run that did not record both
    return _busy(first) / (active * actors), active, actors


def feed_note(summary: dict, pools: list[dict]) -> str | None:
    """When the measured run's first pool waited for its input, the model did not set the run's
    rate: say so, with the rate the feed delivered. None when the pool was busy most of its span."""
    measured_busy = first_pool_busy(summary, pools)
    if measured_busy is None or measured_busy[0] >= FEED_BOUND_SHARE:
        return None
    share, active, actors = measured_busy
    first = pools[0]
    rows = int(first.get("rows_in") or 0)
    return (f"The measured run's first stage pool was busy {100 * share:.0f}% of its active span ({_busy(first):.1f} "
            f"actor-seconds over {active:.1f} s x {actors} actors); the rest of the span it waited for its input or "
            f"for Ray Data's handling of its batches. So the pipeline around the model set that run's rate, "
            f"{rows / active:,.0f} docs/s over the span, below the model's rate planned here, which holds only "
            "where the feed keeps up: give the pipeline more CPUs per GPU than the measured run had (tokenizing "
            "is CPU work: 175-235 core-seconds per million short texts on the H200 node of BENCHMARKS.md, \"GPU\").")


def _stage_plan(st: dict, rows0: int, actors: int, cost: float, T: float, headroom: float) -> StagePlan:
    rows_in = int(st.get("rows_in") or 0)
    gpu, cpu = float(st.get("num_gpus") or 0.0), cpus_per_actor(st)
    return StagePlan(
        index=int(st["index"]),
        start=int(st["start"]),
        end=int(st["end"]),
        rows_in=rows_in,
        survival_in=rows_in / rows0,
        docs_per_actor_second=stage_rate(st),
        actors=actors,
        num_gpus_per_actor=gpu,
        num_cpus_per_actor=cpu,
        gpus=actors * gpu,
        cpus=actors * cpu,
        utilization=T * cost / actors,
        capacity_docs_per_hour=actors / (cost * headroom) * 3600 if cost > 0 else None,
        note="" if rows_in else "no row reached this stage in the measured run; kept at 1 actor",
    )


def _based_on(summary: dict) -> dict:
    m = summary.get("metrics") or {}
    run = summary.get("run") or {}
    keys = ("rows", "rows_labeled", "wall_seconds", "docs_per_second", "mean_layers", "ideal_speedup")
    return {"run_id": run.get("run_id"), "num_layers": num_layers(summary), **{k: m.get(k) for k in keys}}


def _assumptions(summary: dict, pools: list[dict], plan: CapacityPlan) -> list[str]:
    run_id = plan.based_on.get("run_id") or "the measured run"
    out = [
        f"The share of documents that exit early stays as measured in {run_id}: a new corpus that exits "
        "later needs more actors in the later stages.",
        "Each actor processes documents at the rate measured in that run, i.e. on the same hardware, dtype, "
        "batch size and threads, with the same CPUs/GPUs reserved per actor. An actor's CPUs are its "
        "Ray reservation or its torch threads, whichever is more (on a local run the threads are the "
        "cores it really used).",
        "Throughput grows linearly with the number of actors in a stage (no shared bottleneck between actors).",
        "Reading, tokenizing and writing keep up and are not the bottleneck; only the model stages are sized.",
        *([note] if (note := feed_note(summary, pools)) else []),
        (
            f"Actors are sized with a headroom of {plan.headroom:g}x: at the planned rate no stage is busy more "
            f"than {100 / plan.headroom:.0f}% of the time, leaving room for uneven batches and slow nodes."
            if plan.headroom > 1
            else "Actors are sized with no headroom: the bottleneck stage is planned fully busy, so any slowdown "
            "lowers throughput below the plan."
        ),
        "Start-up time (cluster, model loading, first batches) is excluded: the rates hold for a long run.",
    ]
    metrics = summary.get("metrics") or {}
    startup, wall = metrics.get("startup_seconds"), metrics.get("wall_seconds")
    if startup is not None and wall:
        out[-1] += f" In the measured run it took {startup:.1f} s of the {wall:.1f} s wall before the first batch "
        if metrics.get("startup_model_load_seconds") is not None:
            out[-1] += (f"reached the model: {metrics['startup_actor_process_seconds']:.1f} s to start the stage "
                        f"actor's process (its imports), {metrics['startup_model_load_seconds']:.1f} s to load its "
                        f"model, {metrics['startup_input_wait_seconds']:.1f} s waiting for the first rows.")
        else:
            out[-1] += "reached the model."
    if plan.mode == "budget_gpus" and any(p.num_gpus_per_actor == 0 for p in plan.stages):
        out.append(f"CPU-only stages do not count against the GPU budget; the plan also needs {plan.cpus:g} CPUs.")
    b = plan.based_on
    measured = f"Based on {run_id}: {b.get('rows_labeled')} labeled rows"
    if b.get("wall_seconds"):
        measured += f" in {b['wall_seconds']:.1f} s ({b.get('docs_per_second') or 0:.1f} docs/s end to end)"
    out.append(measured + ".")
    if len(pools) < len(summary["stages"]):
        out.append(f"One actor pool held all {len(summary['stages'])} stages, merging survivors of up to "
                   f"{summary['run']['rebatch']} input batches at each boundary (rebatch): it is planned as one "
                   "pool whose actors cost the stages' busy time summed.")
    for st, p in zip(pools, plan.stages):
        line = f"Stage {p.index} (layers {p.start + 1}-{p.end}): {p.rows_in} rows in"
        if p.docs_per_actor_second is not None:
            line += f", {_busy(st):.1f} busy actor-seconds = {p.docs_per_actor_second:.1f} docs/s per actor"
        detail = [f"{k} {st[k]}" for k in ("device", "dtype", "batch_size", "torch_threads") if st.get(k) is not None]
        out.append(line + (f" ({', '.join(detail)})" if detail else "") + ".")
    return out


# ---------------------------------------------------------------- presentation shared by the CLI and the report

TABLE_HEADER = ("stage", "layers", "survival in", "docs/s per actor", "actors", "GPUs", "CPUs", "utilization")


def plan_table(plan: CapacityPlan) -> list[tuple[str, ...]]:
    """One row of formatted cells per stage, in TABLE_HEADER's order."""
    return [
        (
            str(p.index),
            f"{p.start + 1}-{p.end}",
            f"{100 * p.survival_in:.1f}%",
            f"{p.docs_per_actor_second:.1f}" if p.docs_per_actor_second is not None else "n/a",
            str(p.actors),
            f"{p.gpus:g}",
            f"{p.cpus:g}",
            f"{100 * p.utilization:.0f}%",
        )
        for p in plan.stages
    ]


def projection_lines(plan: CapacityPlan) -> list[str]:
    """The plan's headline numbers as sentences."""
    if plan.mode == "target":
        goal = f"Target {plan.target_docs_per_hour:,.0f} docs/hour"
    else:
        what = "GPUs" if plan.mode == "budget_gpus" else "CPUs"
        budget = plan.budget_gpus if plan.mode == "budget_gpus" else plan.budget_cpus
        goal = f"Budget {budget:g} {what}: at most {plan.docs_per_hour:,.0f} docs/hour"
    lines = [
        f"{goal} with {sum(p.actors for p in plan.stages)} actors: {plan.gpus:g} GPUs and {plan.cpus:g} CPUs.",
        f"These actors sustain up to {plan.sustainable_docs_per_hour:,.0f} docs/hour "
        + (f"with the {plan.headroom:g}x headroom kept" if plan.headroom > 1 else "running flat out")
        + f"; the bottleneck is stage {plan.bottleneck_stage}.",
        f"{plan.gpu_hours_per_million_docs:.3g} GPU-hours and {plan.cpu_hours_per_million_docs:.3g} CPU-hours "
        "per million documents.",
    ]
    lines += [f"Stage {p.index}: {p.note}." for p in plan.stages if p.note]
    lines += plan.layout_advice
    return lines


def format_plan(plan: CapacityPlan) -> str:
    """A plain-text table, the projections and the assumptions."""
    rows = [TABLE_HEADER, *plan_table(plan)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADER))]
    table = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(
        [*table, "", *projection_lines(plan), "", "Assumptions:", *(f"- {a}" for a in plan.assumptions)]
    )
