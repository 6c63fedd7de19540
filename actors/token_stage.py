"""A token-model pipeline stage: a Ray Data actor holding one `TokenShard`.

The sequence-labeling counterpart of `actors.stage.StageActor`, with the same contract:
heavy set-up in `__init__`, columns checked at the boundary, exactly the rows it received
returned. Per-word state (exit layer, tag, uncertainty) rides in blob columns, so a later
stage continues each word where the earlier one left it. A sentence whose words have all
halted drops its hidden states and passes later stages as metadata.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from actors.stage import TORCH_DTYPES, StageBatchStats, StageSpec, blobs_to_hidden, forward_groups, hidden_to_blobs
from offramp import schema
from offramp.models.token import load_token_model
from offramp.exits.token_shard import TokenShard, WordState

REQUIRED = (
    schema.STATUS, schema.TOKENS, schema.NUM_TOKENS, schema.HIDDEN, schema.EXIT_LAYER, schema.NUM_WORDS, schema.WORD_STARTS, schema.WORD_EXIT, schema.WORD_LABEL,
    schema.WORD_UNC, schema.TOKEN_LAYERS,
)
RESULT_COLUMNS = (schema.HIDDEN, schema.EXIT_LAYER, schema.WORD_EXIT, schema.WORD_LABEL, schema.WORD_UNC, schema.TOKEN_LAYERS)


def pad_words(blobs, counts: np.ndarray, dtype, fill) -> np.ndarray:
    """Per-row word blobs -> (S, W) padded with `fill`; an empty blob is a fresh row (all `fill`)."""
    W = max(1, int(counts.max()) if len(counts) else 1)
    out = np.full((len(blobs), W), fill, dtype=dtype)
    for i, blob in enumerate(blobs):
        if blob:
            out[i, : counts[i]] = np.frombuffer(blob, dtype=dtype)
    return out


class TokenStageActor:
    def __init__(self, model_dir: str, spec: StageSpec, collector=None, mode: str | None = None,
                 window: int | None = None, pool: str | None = None):
        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        model = load_token_model(model_dir)
        self.spec, self.device = spec, torch.device(spec.device)
        self.hidden_size = model.config.hidden_size
        self.shard = TokenShard(model, spec.start, spec.end, mode=mode, thresholds=spec.thresholds, window=window,
                                pool=pool, exits_enabled=spec.exits_enabled)
        del model
        self.shard.to(device=self.device, dtype=TORCH_DTYPES[spec.dtype]).eval()
        self.collector = collector

    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        schema.check_columns(batch, REQUIRED, f"token stage {self.spec.index}")
        n = schema.batch_rows(batch)
        running = np.flatnonzero((batch[schema.EXIT_LAYER] == 0) & np.isin(batch[schema.STATUS], schema.RUNNABLE))
        out = dict(batch)
        exited = token_layers = 0
        if len(running):
            cols = {c: batch[c].copy() for c in RESULT_COLUMNS}  # zero-copy batches are read-only
            for group in forward_groups(batch[schema.NUM_TOKENS][running], self.spec.max_tokens):
                e, t = self._forward(batch, running[group], cols)
                exited, token_layers = exited + e, token_layers + t
            if self.spec.start == 0:
                cols[schema.TOKENS] = batch[schema.TOKENS].copy()
                cols[schema.TOKENS][running] = b""  # token ids are in the states now
            out.update(cols)
        stats = StageBatchStats(
            self.spec.index, len(running), exited, int(batch[schema.NUM_TOKENS][running].sum()), token_layers,
            time.perf_counter() - t0,
        )
        assert schema.batch_rows(out) == n, "a stage must return exactly the rows it received"
        if self.collector is not None:
            import ray

            ray.get(self.collector.record.remote(stats))
        return out

    def _forward(self, batch: dict, rows: np.ndarray, cols: dict) -> tuple[int, int]:
        """One pass over batch positions `rows`; returns (rows finished, token-layers computed)."""
        lengths = batch[schema.NUM_TOKENS][rows].astype(np.int64)
        counts = batch[schema.NUM_WORDS][rows].astype(np.int64)
        starts = torch.from_numpy(pad_words(batch[schema.WORD_STARTS][rows], counts, np.int32, -1)).long()
        words = WordState(
            torch.from_numpy(pad_words(batch[schema.WORD_EXIT][rows], counts, np.int16, 0)).long(),
            torch.from_numpy(pad_words(batch[schema.WORD_LABEL][rows], counts, np.int16, -1)).long(),
            torch.from_numpy(pad_words(batch[schema.WORD_UNC][rows], counts, np.float32, 1.0)),
        )
        if self.spec.start == 0:
            ids = schema.pad_blobs(batch[schema.TOKENS][rows], lengths, np.int32)[..., 0]  # (S, T)
            inputs = dict(input_ids=torch.from_numpy(ids).long().to(self.device))
        else:
            hidden = blobs_to_hidden(batch[schema.HIDDEN][rows], lengths, self.hidden_size, self.spec.carry_dtype)
            inputs = dict(hidden=hidden.to(self.device))
        result = self.shard(torch.from_numpy(lengths), starts, words=words, **inputs)
        w_exit = result.words.exit_layer.cpu().numpy().astype(np.int16)
        w_label = result.words.label.cpu().numpy().astype(np.int16)
        w_unc = result.words.uncertainty.float().cpu().numpy()
        for j, i in enumerate(rows):
            c = counts[j]
            cols[schema.WORD_EXIT][i], cols[schema.WORD_LABEL][i] = w_exit[j, :c].tobytes(), w_label[j, :c].tobytes()
            cols[schema.WORD_UNC][i] = w_unc[j, :c].tobytes()
        row_exit = result.row_exit.cpu().numpy()
        token_layers = result.token_layers.cpu().numpy()
        cols[schema.TOKEN_LAYERS][rows] += token_layers
        finished = row_exit > 0
        cols[schema.EXIT_LAYER][rows[finished]] = row_exit[finished]
        cols[schema.HIDDEN][rows[finished]] = b""  # a finished sentence drops its states at once
        survivors = result.survivors.cpu().numpy()
        if len(survivors):
            for i, blob in zip(rows[survivors], hidden_to_blobs(result.hidden, result.lengths, self.spec.carry_dtype)):
                cols[schema.HIDDEN][i] = blob
        return int(finished.sum()), int(token_layers.sum())
