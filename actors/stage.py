"""A pipeline stage: a Ray Data actor that holds one layer shard and its exit heads.

Plain callable class: heavy set-up in `__init__`, the work in `__call__`, the
column contract checked at the boundary. Unit-test it by calling it; the pipeline
runs it under `map_batches(StageActor, compute=ActorPoolStrategy(...))`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from offramp import schema
from offramp.models.sequence import load_model
from offramp.exits.sequence_shard import LayerShard

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    """What one stage actor needs: its layer range and how to run it."""

    index: int
    start: int  # first layer, 0-based
    end: int  # one past the last layer
    dtype: str = "float32"
    carry_dtype: str = "float16"
    device: str = "cpu"
    torch_threads: int = 0
    max_tokens: int = 0  # padded tokens per forward pass; 0 = the whole batch
    policy: str | None = None
    thresholds: dict | None = None  # {layer: threshold}; None = stored with the model
    exits_enabled: bool = True
    gates_enabled: bool = True  # SmartBERT skipping gates (models without gates ignore it)


@dataclass(frozen=True)
class StageBatchStats:
    """What one stage call did; the driver aggregates these (workers never log to MLflow)."""

    stage: int
    rows_in: int  # rows that entered this stage's layers
    rows_exited: int  # of those, rows that exited inside this stage
    tokens_in: int
    row_layers: int  # row-layers computed
    seconds: float  # wall time of the call
    audit_row_layers: int = 0  # of row_layers, those audited rows ran after their answer
    skipped_row_layers: int = 0  # row-layers skipped through gates (not in row_layers)


TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# numpy has no bfloat16: bf16 blobs are stored as their raw 16-bit patterns.
_NP_CARRY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.int16}


def hidden_to_blobs(hidden: torch.Tensor, lengths: torch.Tensor, carry_dtype: str) -> list[bytes]:
    """Survivors' (S, T, H) states -> per-row blobs in the carry dtype, no padding."""
    h = hidden.to(TORCH_DTYPES[carry_dtype]).cpu()
    if carry_dtype == "bfloat16":
        h = h.view(torch.int16)
    return schema.unpad_to_blobs(h.numpy(), lengths.cpu().numpy())


def blobs_to_hidden(blobs, lengths: np.ndarray, hidden_size: int, carry_dtype: str) -> torch.Tensor:
    """Per-row blobs -> (S, T, H) tensor padded to the longest row."""
    t = torch.from_numpy(schema.pad_blobs(blobs, lengths, _NP_CARRY[carry_dtype], hidden_size))
    return t.view(torch.bfloat16) if carry_dtype == "bfloat16" else t


REQUIRED = (
    schema.STATUS, schema.TOKENS, schema.NUM_TOKENS, schema.HIDDEN, schema.EXIT_LAYER, schema.LABEL_ID, schema.CONFIDENCE, schema.SCORE, schema.AUDIT,
    schema.FULL_LABEL_ID, schema.STATE, schema.SKIPPED,
)
RESULT_COLUMNS = (schema.EXIT_LAYER, schema.LABEL_ID, schema.CONFIDENCE, schema.SCORE, schema.HIDDEN, schema.FULL_LABEL_ID, schema.STATE, schema.SKIPPED)


def state_from_blobs(blobs, fresh: torch.Tensor) -> torch.Tensor:
    """Per-row float32 state blobs -> (S, state_size); rows with no blob yet keep `fresh`'s row."""
    state = fresh.clone()
    for i, blob in enumerate(blobs):
        if blob:
            state[i] = torch.from_numpy(np.frombuffer(blob, dtype=np.float32).copy())
    return state


def running_rows(batch: dict) -> np.ndarray:
    """Rows that still need layers: unanswered, or audited and not yet at full depth."""
    unfinished = (batch[schema.EXIT_LAYER] == 0) | (batch[schema.AUDIT] & (batch[schema.FULL_LABEL_ID] < 0))
    return np.flatnonzero(unfinished & np.isin(batch[schema.STATUS], schema.RUNNABLE))


class StageActor:
    def __init__(self, model_dir: str, spec: StageSpec, collector=None):
        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        model = load_model(model_dir)
        self.spec = spec
        self.device = torch.device(spec.device)
        self.hidden_size = model.config.hidden_size
        self.shard = LayerShard(
            model,
            spec.start,
            spec.end,
            policy=spec.policy,
            thresholds=spec.thresholds,
            exits_enabled=spec.exits_enabled,
            gates_enabled=spec.gates_enabled,
        )
        del model  # layers outside [start, end) are freed with it
        self.shard.to(device=self.device, dtype=TORCH_DTYPES[spec.dtype]).eval()
        self.collector = collector

    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        schema.check_columns(batch, REQUIRED, f"stage {self.spec.index}")
        n = schema.batch_rows(batch)
        running = running_rows(batch)
        out = dict(batch)
        stats = StageBatchStats(self.spec.index, len(running), 0, 0, 0, 0.0)
        if len(running):
            out, stats = self._run(batch, out, running)
        stats = StageBatchStats(**{**stats.__dict__, "seconds": time.perf_counter() - t0})
        assert schema.batch_rows(out) == n, "a stage must return exactly the rows it received"
        if self.collector is not None:
            import ray

            ray.get(self.collector.record.remote(stats))
        return out

    def _run(self, batch: dict, out: dict, running: np.ndarray):
        spec = self.spec
        # copy before writing: zero-copy batches are read-only
        cols = {c: batch[c].copy() for c in RESULT_COLUMNS}
        row_layers = exited = audit_layers = skipped = 0
        for group in forward_groups(batch[schema.NUM_TOKENS][running], spec.max_tokens):
            layers_g, exited_g, audit_g, skipped_g = self._forward(batch, running[group], cols)
            row_layers, exited, audit_layers = row_layers + layers_g, exited + exited_g, audit_layers + audit_g
            skipped += skipped_g
        if spec.start == 0:
            cols[schema.TOKENS] = batch[schema.TOKENS].copy()
            cols[schema.TOKENS][running] = b""  # token ids are in the states now
        out.update(cols)
        tokens = int(batch[schema.NUM_TOKENS][running].sum())
        return out, StageBatchStats(spec.index, len(running), exited, tokens, row_layers, 0.0, audit_layers, skipped)

    def _forward(self, batch: dict, rows: np.ndarray, cols: dict) -> tuple[int, int, int, int]:
        """One forward pass over batch positions `rows`; writes their results into `cols`."""
        spec = self.spec
        lengths = batch[schema.NUM_TOKENS][rows].astype(np.int64)
        audit = torch.from_numpy(np.asarray(batch[schema.AUDIT][rows], dtype=bool))
        decided = torch.from_numpy(batch[schema.EXIT_LAYER][rows] > 0)
        if spec.start == 0:
            ids = schema.pad_blobs(batch[schema.TOKENS][rows], lengths, np.int32)[..., 0]  # (S, T)
            inputs = dict(input_ids=torch.from_numpy(ids).long().to(self.device))
        else:
            hidden = blobs_to_hidden(batch[schema.HIDDEN][rows], lengths, self.hidden_size, spec.carry_dtype)
            inputs = dict(hidden=hidden.to(self.device))
        policy = self.shard.policy
        state = None
        if policy.state_size:  # carried from the previous stage; fresh for rows not yet through a head
            state = state_from_blobs(batch[schema.STATE][rows], policy.initial_state(len(rows)))
        result = self.shard(torch.from_numpy(lengths), audit=audit, decided=decided, state=state, **inputs)
        layers = result.exit_layer.cpu().numpy()  # (S,)
        answered = layers > 0
        done = rows[answered]
        probs = torch.softmax(result.logits[torch.from_numpy(answered)], dim=-1).cpu()
        cols[schema.EXIT_LAYER][done] = layers[answered]
        cols[schema.LABEL_ID][done] = probs.argmax(-1).numpy()
        cols[schema.CONFIDENCE][done] = probs.max(-1).values.numpy()
        cols[schema.SCORE][done] = result.score.cpu().numpy()[answered]
        if result.full_logits is not None:
            full = result.full_logits.cpu()
            finished = ~torch.isnan(full[:, 0]).numpy()
            cols[schema.FULL_LABEL_ID][rows[finished]] = full[finished].argmax(-1).numpy()
        survivor_pos = result.survivors.cpu().numpy()
        left = np.ones(len(rows), dtype=bool)
        left[survivor_pos] = False
        cols[schema.HIDDEN][rows[left]] = b""  # a row that leaves drops its states at once
        cols[schema.STATE][rows[left]] = b""
        skipped = 0
        if result.skipped is not None:
            per_row = result.skipped.cpu().numpy()
            cols[schema.SKIPPED][rows] += per_row.astype(np.int16)
            skipped = int(per_row.sum())
        if len(survivor_pos):
            blobs = hidden_to_blobs(result.hidden, result.lengths, spec.carry_dtype)
            states = result.state.float().cpu().numpy() if result.state is not None else None
            for j, (i, blob) in enumerate(zip(rows[survivor_pos], blobs)):
                cols[schema.HIDDEN][i] = blob
                if states is not None:
                    cols[schema.STATE][i] = states[j].tobytes()
        return result.row_layers, int(left.sum()), result.audit_row_layers, skipped


def forward_groups(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Positions into `lengths`, sorted by length and cut so rows x longest <= max_tokens.

    A forward pass pads every row to its longest one; grouping similar lengths spends
    compute on real tokens. Exit decisions are per row, so grouping changes no result."""
    if max_tokens <= 0 or len(lengths) == 0:
        return [np.arange(len(lengths))]
    order = np.argsort(lengths, kind="stable")
    groups, start = [], 0
    for end in range(1, len(order) + 1):
        # order is ascending, so the group's longest row is its last
        if end == len(order) or (end + 1 - start) * int(lengths[order[end]]) > max_tokens:
            groups.append(order[start:end])
            start = end
    return groups
