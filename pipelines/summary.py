"""A tagging run as one JSON document (`run_summary.json`): what MLflow keeps of it, and what the
capacity planner (offramp.planning.capacity) reads. Free of MLflow, so that a benchmark on a
machine without it can keep the same document."""

from __future__ import annotations

import json

from offramp.config import ConfigError


def run_params(cfg, result, num_layers: int) -> dict:
    """The run's settings, flat (MLflow params; the summary's "run")."""
    params = {
        "input": cfg.input,
        "model": cfg.model,
        "output": cfg.output,
        "task": result.task,
        "policy": result.policy,
        "exits_disabled": cfg.exit.disabled,
        "thresholds": json.dumps({str(k): round(v, 6) for k, v in result.thresholds.items()}),
        "num_layers": num_layers,
        "num_stages": len(result.layout),
        "rebatch": cfg.rebatch,
        "max_length": cfg.max_length,
        "carry_dtype": cfg.carry_dtype,
    }
    for p in result.layout:
        k = p.spec.index
        params[f"stage{k}_layers"] = f"[{p.spec.start}, {p.spec.end})"
        params[f"stage{k}_actors"] = f"{p.min_actors}..{p.max_actors}"
        params[f"stage{k}_batch_size"] = p.batch_size
        params[f"stage{k}_num_gpus"] = p.num_gpus
        params[f"stage{k}_dtype"] = p.spec.dtype
    return params


def run_summary(result, num_layers: int, params: dict) -> dict:
    """Everything a person or the capacity planner needs from one run, as one JSON document."""
    stages = []
    for p in result.layout:
        k, t = p.spec.index, result.stage_timings.get(p.spec.index, {})
        stages.append(
            {
                "index": k,
                "start": p.spec.start,
                "end": p.spec.end,
                "min_actors": p.min_actors,
                "max_actors": p.max_actors,
                "batch_size": p.batch_size,
                "num_cpus": p.num_cpus,
                "num_gpus": p.num_gpus,
                "dtype": p.spec.dtype,
                "device": p.spec.device,
                "torch_threads": p.spec.torch_threads,
                "rows_in": result.metrics.get(f"stage{k}_rows_in", 0),  # from the output
                "busy_seconds": t.get("seconds", 0.0),
                "row_layers": t.get("row_layers", 0),
                "tokens_in": t.get("tokens_in", 0),
                "batches": t.get("batches", 0),
            }
        )
    return {
        "run": params,
        "num_layers": num_layers,
        "metrics": result.metrics,
        "exit_histogram": result.exit_histogram,
        "stages": stages,
        "stage_timings": result.stage_timings,
        "audit": result.audit,
        "calibration": result.calibration,
        "certificate": result.certificate,
    }


def load_summary_file(path: str) -> dict:
    """A run_summary.json kept as a file (`offramp plan --summary`)."""
    try:
        with open(path) as f:
            summary = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--summary {path}: no such file; pass a run's run_summary.json, or --run-id ID") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--summary {path} is not a readable JSON run summary ({e})") from None
    if not isinstance(summary, dict) or "metrics" not in summary:
        raise ConfigError(f"--summary {path} is not a tagging run's run_summary.json (it has no 'metrics')")
    return summary
