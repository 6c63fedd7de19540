"""The task contract: what one kind of model (a label per row, a tag per word) changes in
the one pipeline. Everything else (reading, the stage plan, actors, metrics plumbing,
MLflow) is shared.

Task objects are light (no torch): the tokenize and finalize steps run in Ray tasks whose
workers should start fast. The stage codec, which needs torch, is named by `stage_runner`
and loaded only inside a stage actor.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from offramp import schema
from offramp.config import ConfigError

if TYPE_CHECKING:  # annotations only: the model's checkpoint module imports torch
    from offramp.config import TagConfig
    from offramp.models.checkpoint import ModelInfo

COMMON_OUTPUT_COLUMNS = ("exit_layer", "status", "num_tokens", "audited")


class Task:
    name: str = ""
    work_unit: str = "row_layers"
    """What a stage's work counts, as its MLflow metric names it (stage<k>_<work_unit>)."""
    gold_column: str = ""
    """Output column holding the input's gold label(s), with --label-column."""
    output_columns: tuple[str, ...] = ()
    """The task's own output columns, beside COMMON_OUTPUT_COLUMNS, the id and passthrough ones."""
    per_word: bool = False
    """Exits are decided per word: the exit policy must judge one word's logits alone."""
    stage_runner: str = ""
    """`module:Class` of the task's `offramp.exits.stage.StageRunner` (imports torch)."""

    # ------------------------------------------------------------ start-time checks

    def source_column(self, cfg: TagConfig) -> tuple[str, str]:
        """The input column the model reads, and the flag that names it."""
        return cfg.text_column, "--text-column"

    def list_columns(self, cfg: TagConfig) -> tuple[str, ...]:
        """Input columns holding a list of strings per row (the JSONL reader keeps them lists)."""
        return ()

    def check(self, cfg: TagConfig, info: ModelInfo, fmt: str) -> None:
        """Task-specific settings that cannot work, failing with the fix."""

    def describe_policy(self, cfg: TagConfig, info: ModelInfo) -> str:
        return cfg.exit.policy or info.policy

    def exit_conditions(self, cfg: TagConfig, info: ModelInfo) -> dict | None:
        """Task-specific settings a certificate holds under, as this run sets them (None: none)."""
        return None

    def output_names(self) -> tuple[str, ...]:
        return COMMON_OUTPUT_COLUMNS + self.output_columns

    # ------------------------------------------------------------ the light steps

    def tokenize_kwargs(self, cfg: TagConfig) -> dict:
        """What the tokenize step needs from the config, beyond max_length."""
        return dict(text_column=cfg.text_column)

    def tokenize(self, batch: dict, tokenizer, max_length: int, audit: np.ndarray | None, **kwargs) -> dict:
        """Add the status, token ids and the task's empty state columns to a batch (same rows)."""
        raise NotImplementedError

    def finalize(self, batch: dict, labels: list[str], id_column: str, keep: list[str], gold: str | None,
                 keep_types: dict | None = None) -> pa.Table:
        """Internal columns -> the user's output columns (exactly the same rows); `keep_types`:
        the input's Arrow type of the id and passthrough columns."""
        raise NotImplementedError

    # ------------------------------------------------------------ what the driver computes

    def metric_columns(self, cfg: TagConfig) -> list[str]:
        return list(self.output_names()) + ([self.gold_column] if cfg.label_column else [])

    def counts(self, table: pa.Table, info: ModelInfo, ranges: list[tuple[int, int]], cfg: TagConfig,
               audit: bool) -> dict:
        """Counts of one batch of output rows that add up over batches (`quality.metrics.add_counts`):
        `rows` (every task's), `task` (this task's), and with `audit` the audit's."""
        raise NotImplementedError

    def metrics(self, counts: dict, info: ModelInfo, cfg: TagConfig) -> tuple[dict, dict | None]:
        """The run's flat metrics and its audit summary (None without audit counts) from summed counts."""
        raise NotImplementedError

    def audit_target(self, cfg: TagConfig, info: ModelInfo) -> float | None:
        return cfg.audit.target_agreement or info.calibrated_agreement

    def summarize(self, table: pa.Table, info: ModelInfo, ranges: list[tuple[int, int]], cfg: TagConfig) -> dict:
        """The metrics of an output held in memory at once (one batch)."""
        return self.metrics(self.counts(table, info, ranges, cfg, audit=False), info, cfg)[0]

    def audit(self, table: pa.Table, info: ModelInfo, cfg: TagConfig) -> dict:
        """The audit summary of an output held in memory at once (one batch)."""
        return self.metrics(self.counts(table, info, [], cfg, audit=True), info, cfg)[1]

    def answer_column(self) -> str:
        """The output column whose values the full-depth comparison compares."""
        raise NotImplementedError

    def compare_full_depth(self, early: dict, full_rows: list[dict], info: ModelInfo, id_column: str) -> dict:
        """Metrics of the early answers against a full-depth run of the same rows."""
        raise NotImplementedError

    def runner_cls(self):
        module, _, name = self.stage_runner.partition(":")
        return getattr(importlib.import_module(module), name)


def arrow_column(values: np.ndarray, type_: pa.DataType | None) -> pa.Array:
    """A passthrough column with the input's Arrow type, so that a batch of all nulls is written
    with the same type as every other batch (not Arrow's `null`)."""
    if type_ is None:
        return pa.array(values.tolist())
    try:
        return pa.array(values, type=type_, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return pa.array(values.tolist(), type=type_)


def common_output(batch: dict, id_column: str, keep: list[str], keep_types: dict | None = None) -> dict:
    """The output columns every task writes, with fixed Arrow types (the same in every file);
    passthrough columns keep their input types (`keep_types`)."""
    keep_types = keep_types or {}
    out = {id_column: arrow_column(batch[id_column], keep_types.get(id_column))}
    out["exit_layer"] = pa.array(batch[schema.EXIT_LAYER], type=pa.int16())
    out["status"] = pa.array(batch[schema.STATUS].tolist(), type=pa.string())
    out["num_tokens"] = pa.array(batch[schema.NUM_TOKENS], type=pa.int32())
    for c in keep:
        out[c] = arrow_column(batch[c], keep_types.get(c))
    if schema.SOURCE_ROW in batch:  # read by pipelines.read (a dataset a team built has none)
        out[schema.SOURCE_ROW] = pa.array(batch[schema.SOURCE_ROW].tolist(), type=pa.string())
    return out


def fresh_columns(n: int, spec: dict) -> dict:
    """{column: (dtype, fill)} -> n-row columns; blobs (dtype object) start as b""."""
    return {c: (np.array([fill] * n, dtype=object) if dtype is object else np.full(n, fill, dtype=dtype))
            for c, (dtype, fill) in spec.items()}


def check_no_clash(cfg: TagConfig, task: Task) -> None:
    """Passthrough columns may not overwrite an output column."""
    taken = set(task.output_names()) | {cfg.id_column, task.gold_column, schema.SOURCE_ROW}
    clash = [c for c in cfg.passthrough_columns if c in taken]
    if clash:
        raise ConfigError(f"passthrough column(s) {clash} collide with output columns {sorted(taken - {None})}; rename them")
