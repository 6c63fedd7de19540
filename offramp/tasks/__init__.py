"""Tasks by name: what a kind of model changes in the one pipeline. Add one: one file, one
line here. A model's config names its task (`offramp.models.checkpoint.model_task`).

The two step functions below are what Ray Data runs as tasks (stateless; the tokenizer is
cached per worker process)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa

from offramp import schema
from offramp.config import ConfigError
from offramp.tasks.base import Task
from offramp.tasks.sequence import SequenceTask
from offramp.tasks.token import TokenTask
from offramp.text.tokenize import load_tokenizer

logger = logging.getLogger(__name__)
TASKS: dict[str, type[Task]] = {"sequence": SequenceTask, "token": TokenTask}


def get_task(name: str) -> Task:
    """A task by registry name; an unknown name lists the valid ones."""
    try:
        return TASKS[name]()
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}") from None


def tokenize_step(batch: dict, task: str, model_dir: str, max_length: int, id_column: str = "id",
                  audit_fraction: float = 0.0, audit_seed: int = 0, drop: tuple = (), by_length: bool = False,
                  **kwargs) -> dict:
    """Ray Data task: statuses, token ids, the audit sample and the task's state columns. The
    input columns in `drop` (the raw text, once tokenized) do not ride through the stages.
    `by_length`: the rows leave sorted by their token count (stable), so that the stage batches
    Ray Data slices from this block in order hold rows of like length and pad less."""
    # One thread per task: Ray runs a task per CPU it has, and the Rust tokenizer's own pool of a
    # thread per core in every task oversubscribed a 16-core GPU node 16-fold (measured: 1.3 s of
    # CPU per second of each task, and the GPU stage actor starved of CPU; BENCHMARKS.md).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    audit = schema.audit_mask(batch[id_column], audit_fraction, audit_seed) if audit_fraction > 0 else None
    tokenizer, kind = load_tokenizer(model_dir), get_task(task)
    out = mark_rows_that_raise(lambda b, a: kind.tokenize(b, tokenizer, max_length, a, **kwargs), batch, audit, id_column)
    for column in drop:
        out.pop(column, None)
    if by_length:
        order = np.argsort(out[schema.NUM_TOKENS], kind="stable")
        out = {column: values[order] for column, values in out.items()}
    return out


def mark_rows_that_raise(step, batch: dict, audit, id_column: str) -> dict:
    """`step(batch, audit)`; when it raises, find the rows that make it raise alone, give them
    status error (the log names each row and its error) and run the batch again without them.
    An error that is not any one row's (none raises alone, or all of several do) fails the
    block: Ray Data retries it, then counts it against max_errored_blocks."""
    try:
        return step(batch, audit)
    except Exception:
        n = schema.batch_rows(batch)
        bad = []
        for i in range(n):
            try:
                step({c: v[i:i + 1] for c, v in batch.items()}, None if audit is None else audit[i:i + 1])
            except Exception as e:  # this row alone raises
                bad.append(i)
                logger.warning("row %r: tokenizing raised %r; written with status %r", batch[id_column][i], e, schema.ERROR)
        if not bad or (len(bad) == n > 1):
            raise
        status = np.array(batch.get(schema.READ_STATUS, [""] * n), dtype=object)
        status[bad] = schema.ERROR
        return step({**batch, schema.READ_STATUS: status}, audit)


def finalize_step(batch: dict, task: str, labels: list[str], id_column: str, keep: list[str],
                  gold: str | None, keep_types: dict | None = None) -> pa.Table:
    """Ray Data task: internal columns -> the user's output columns (exactly the same rows)."""
    return get_task(task).finalize(batch, labels, id_column, keep, gold, keep_types)


__all__ = ["TASKS", "Task", "finalize_step", "get_task", "tokenize_step"]
