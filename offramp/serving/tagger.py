"""The batch pipeline's own steps on the texts of online requests: one code path, two faces.

A tagging run turns a block of rows into answers with `tokenize_step` (a Ray task), one
`StageRunner` per stage (actors) and `finalize_step`. The endpoint runs the same three on the
texts of concurrent requests: each request's texts are tokenized into rows of the pipeline's
row contract (`offramp.schema`), rows from many requests are joined into one batch, a
one-stage runner holding every layer runs it (exits decided per row, exactly as in a stage
actor), and the finalized rows are split back to their requests. So a text gets the label,
confidence and exit layer a tagging run gives it (tested against `run_tagging`).

A batch can also be run streaming (`run(rows, on_answer)`): a row is finalized and handed to
`on_answer` right after the layer it exits at (a tagger's row: the layer its last word halted
at), while the rest of the batch runs on through deeper layers, and its answer is the one the
whole-batch run gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from offramp import schema
from offramp.exits.stage import StageBatchStats, StageSpec
from offramp.tasks import finalize_step, get_task, tokenize_step

ID, TEXT = "id", "text"  # the columns a request's texts become (the tagging run's defaults)
# output columns a tagging run writes that say nothing about one online answer: the row id (a
# position in its request), the audit's (no row is audited online) and where a row was read
UNANSWERED = frozenset({ID, "audited", "full_depth_label", "full_depth_tags", schema.SOURCE_ROW})


@dataclass(frozen=True)
class ServingPlan:
    """What a replica needs, decided on the driver before Serve starts (`pipelines.serve.serving_plan`)."""

    model_dir: str
    task: str  # offramp.tasks name
    labels: tuple[str, ...]
    spec: StageSpec  # one stage over every layer, as a one-stage tagging run plans it
    max_length: int
    tokenize_kwargs: dict = field(default_factory=dict)  # the task's tokenize settings (Task.tokenize_kwargs)
    source: str | None = None  # models:/NAME/VERSION model_dir was resolved from (pinned: an alias may move)

    @property
    def num_layers(self) -> int:
        return self.spec.end


@dataclass(frozen=True)
class Row:
    """One text of a request, tokenized: what a batch queue holds."""

    columns: dict  # {column: (1,) array}: one row of the pipeline's row contract
    tokens: int  # its token count (0 for an empty text): what a batch's budget counts


def batch_tokens(rows: list[Row]) -> int:
    """The tokens of a batch: Serve's `batch_size_fn`, so a batch is bounded by tokens, not texts."""
    return sum(r.tokens for r in rows)


def split_rows(batch: dict) -> list[Row]:
    """A numpy batch -> one Row per row (views, no copies)."""
    n = schema.batch_rows(batch)
    tokens = batch[schema.NUM_TOKENS]
    return [Row({c: v[i:i + 1] for c, v in batch.items()}, int(tokens[i])) for i in range(n)]


def join_rows(rows: list[Row]) -> dict:
    """Rows (of one or many requests) -> one numpy batch, in their order."""
    return {c: np.concatenate([r.columns[c] for r in rows]) for c in rows[0].columns}


def answer(row: dict) -> dict:
    """A finalized output row -> the JSON answer for its text: the tagging run's output columns
    without UNANSWERED, NaN (no confidence: a text that did not run) as null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items() if k not in UNANSWERED}


class OnlineTagger:
    """Texts in, one answer per text out, through the tagging run's steps. Heavy set-up (the
    model) in `__init__`; `tokenize` per request, `run` per batch of rows from many requests."""

    def __init__(self, plan: ServingPlan):
        self.plan = plan
        self.runner = get_task(plan.task).runner_cls()(plan.model_dir, plan.spec)

    def tokenize(self, texts: list[str]) -> list[Row]:
        """Texts -> one Row each, by the tagging run's tokenize step: an empty or whitespace-only
        text gets status empty, an over-long one keeps its first max_length tokens (truncated)."""
        p = self.plan
        batch = {ID: np.arange(len(texts)), TEXT: np.array(texts, dtype=object)}
        out = tokenize_step(batch, p.task, p.model_dir, p.max_length, id_column=ID, drop=(TEXT,), **p.tokenize_kwargs)
        return split_rows(out)

    def run(self, rows: list[Row], on_answer: Callable[[int, dict], None] | None = None
            ) -> tuple[list[dict], StageBatchStats]:
        """A batch of rows -> their answers in the same order, and what the stage did.

        With `on_answer`, each row is answered as soon as it is done: `on_answer(i, answer)` for
        row `i`, first for rows that do not run (blank texts), then for each row right after the
        layer it exits at (a tagger's: its last word's), before the batch's deeper layers run; any
        row the runner did not hand over while running, when the batch ends. It is called once
        per row, from the calling thread; what it raises fails the batch."""
        batch = join_rows(rows)
        if on_answer is None:
            out, stats = self.runner(batch)  # exits decided per row inside the batch
            return self.finalize(batch, out, np.arange(len(rows))), stats
        answers: list[dict | None] = [None] * len(rows)

        def answered(positions: np.ndarray, cols: dict) -> None:
            for i, a in zip(positions.tolist(), self.finalize(batch, cols, positions)):
                answers[i] = a
                on_answer(i, a)

        idle = np.setdiff1d(np.arange(len(rows)), self.runner.running(batch))
        if len(idle):
            answered(idle, {})
        out, stats = self.runner(batch, on_exit=answered)
        rest = np.array([i for i, a in enumerate(answers) if a is None], dtype=np.int64)
        if len(rest):
            answered(rest, out)
        return answers, stats

    def finalize(self, batch: dict, cols: dict, positions: np.ndarray) -> list[dict]:
        """The answers of batch positions `positions`: their rows, with the columns in `cols`
        taken over the batch's, through the tagging run's finalize step."""
        rows = {c: cols.get(c, v)[positions] for c, v in batch.items()}
        table = finalize_step(rows, self.plan.task, list(self.plan.labels), ID, keep=[], gold=None)
        return [answer(r) for r in table.to_pylist()]
