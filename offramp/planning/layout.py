"""Stage layout: which layers each stage holds, its batch size and actor count.

Deeper stages see fewer running rows. With survival s_k (fraction of rows still
running when stage k starts, measured on the dev set at training and stored with
the model), a stage-k batch of b/s_k rows holds about b running rows, so every
forward pass is about as full as stage 0's; and stage k needs work share
layers_k * s_k of the actors.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from offramp.config import ConfigError, StageConfig, TagConfig
from offramp.exits.stage import StageSpec


@dataclass(frozen=True)
class PlannedStage:
    spec: StageSpec
    batch_size: int
    min_actors: int
    max_actors: int
    num_cpus: float
    num_gpus: float
    survival: float  # expected fraction of runnable rows entering this stage
    work: float  # expected row-layers per input row in this stage


def survival_into(layer_start: int, survival: list[float] | None) -> float:
    """Fraction of rows still running before 0-based layer `layer_start` (1.0 if unmeasured)."""
    if not survival or layer_start == 0:
        return 1.0
    return float(survival[min(layer_start, len(survival)) - 1])


def split_layers(num_layers: int, num_stages: int, survival: list[float] | None, balanced: bool) -> list[tuple]:
    """Contiguous [start, end) ranges; balanced = equal expected row-layers per stage."""
    if not 1 <= num_stages <= num_layers:
        raise ConfigError(f"num_stages={num_stages}: a {num_layers}-layer model takes 1..{num_layers} stages")
    if not balanced or not survival:
        bounds = [round(i * num_layers / num_stages) for i in range(num_stages + 1)]
        return list(zip(bounds[:-1], bounds[1:]))
    cost = [survival_into(layer, survival) for layer in range(num_layers)]  # expected rows in layer
    total, ranges, start = sum(cost), [], 0
    for k in range(num_stages - 1):
        target, acc, end = total * (k + 1) / num_stages, sum(cost[:start]), start
        while end < num_layers - (num_stages - 1 - k) and acc + cost[end] / 2 <= target:
            acc += cost[end]
            end += 1
        end = max(end, start + 1)
        ranges.append((start, end))
        start = end
    ranges.append((start, num_layers))
    return ranges


def stage_configs(cfg: TagConfig) -> tuple[StageConfig, ...]:
    """The run's stages as configured, or `num_stages` unset ones."""
    return tuple(cfg.stages) or tuple(StageConfig() for _ in range(cfg.num_stages))


def plan_layout(
    cfg: TagConfig, num_layers: int, survival: list[float] | None, exits_enabled: bool, task: str = "sequence",
    cpu_actors: int = 1,
) -> list[PlannedStage]:
    """Resolve the config's stages into concrete ranges, batch sizes and actor counts.
    `cpu_actors`: stage 0's actors where its config leaves them unset and it runs on a CPU (a
    local run passes one per core); every other unset count is 1."""
    stages = stage_configs(cfg)
    given = [s.layers is not None for s in stages]
    if any(given) and not all(given):
        raise ConfigError("give `layers: [start, end]` for every stage or for none (then they are split for you)")
    if all(given):
        ranges = [tuple(s.layers) for s in stages]
        if ranges[0][0] != 0 or ranges[-1][1] != num_layers or any(a[1] != b[0] for a, b in zip(ranges, ranges[1:])):
            raise ConfigError(
                f"stage layers {[list(r) for r in ranges]} must cover [0, {num_layers}) contiguously, "
                f"e.g. {[list(r) for r in split_layers(num_layers, len(ranges), None, False)]}"
            )
    else:
        ranges = split_layers(num_layers, len(stages), survival, cfg.layout == "balanced")
    survival = survival if exits_enabled else None
    planned = []
    work0 = None
    defaults = [cpu_actors if k == 0 and s.num_gpus == 0 else 1 for k, s in enumerate(stages)]
    mins = [s.min_actors or min(d, s.max_actors or d) for s, d in zip(stages, defaults)]
    for k, (scfg, (start, end)) in enumerate(zip(stages, ranges)):
        s_k = survival_into(start, survival)
        work = sum(survival_into(layer, survival) for layer in range(start, end))
        work0 = work0 or work
        batch = scfg.batch_size or max(1, min(cfg.batch_size * 16, math.ceil(cfg.batch_size / max(s_k, 1e-3))))
        # unset: stage 0 keeps min_actors; deeper stages scale stage 0's pool by their share of the work
        pool0 = stages[0].max_actors or mins[0]
        max_actors = scfg.max_actors or (mins[k] if k == 0 else max(mins[k], math.ceil(pool0 * work / work0)))
        spec = StageSpec(
            index=k,
            start=start,
            end=end,
            dtype=scfg.dtype or cfg.dtype,
            carry_dtype=cfg.carry_dtype,
            device="cuda" if scfg.num_gpus > 0 else "cpu",
            torch_threads=scfg.torch_threads,
            max_tokens=scfg.max_tokens,
            policy=cfg.exit.policy,
            exits_enabled=exits_enabled,
            gates_enabled=cfg.exit.skip_gates,
            task=task,
            exit_mode=cfg.exit.token.mode,
            window=cfg.exit.token.window,
            sentence_pool=cfg.exit.token.sentence_pool,
        )
        planned.append(PlannedStage(spec, batch, mins[k], max_actors, scfg.num_cpus, scfg.num_gpus, s_k, work))
    return planned


def actor_pools(planned: list[PlannedStage], rebatch: int) -> list[PlannedStage]:
    """The actor pools a run starts: one per stage, or with `rebatch` one pool of actors that hold
    every stage (stage 0's actor counts, each stage's largest CPU and GPU share)."""
    if not rebatch or len(planned) == 1:
        return planned
    first = planned[0]
    return [dataclasses.replace(first, num_cpus=max(p.num_cpus for p in planned),
                                num_gpus=max(p.num_gpus for p in planned))]
