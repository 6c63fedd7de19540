"""A shard of a sequence classifier: exits decided per row.

Rows that exit after a layer are removed from the batch at once (the survivors are
compacted into a smaller tensor and their padding is trimmed to the longest survivor),
so an exited row costs nothing in later layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from offramp import schema
from offramp.exits.shard import ShardBase, keep_rows, lengths_on_host, to_device_index, to_host, trim
from offramp.exits.stage import PassWork, RowsAnswered, StageRunner, StageSpec
from offramp.models.heads import HeadOutput, exit_signal, masked_mean
from offramp.models.sequence import EarlyExitSequenceModel
from offramp.policies import ExitPolicy, check_policy_fits, get_policy


@dataclass
class ShardOutput:
    """Per input row: its exit (if any) and, for survivors, the states to carry on."""

    exit_layer: torch.Tensor  # (B,) int64: 1-based layer the row was answered at in this shard; 0 = not here
    logits: torch.Tensor  # (B, C) float32; zeros for survivors
    score: torch.Tensor  # (B,) float32 exit score at the exit layer; nan for survivors
    survivors: torch.Tensor  # (S,) int64 indices of rows still running (audited ones may be answered)
    hidden: torch.Tensor  # (S, T', H) survivors' states, padded to the longest survivor
    lengths: torch.Tensor  # (S,) int64 survivors' token counts
    state: torch.Tensor | None  # (S, state_size) policy state of survivors, or None
    row_layers: int  # row-layers computed (a row through one layer = 1)
    full_logits: torch.Tensor | None = None  # (B, C) final head's logits of audited rows that finished here; nan else
    audit_row_layers: int = 0  # of row_layers, those spent on audited rows after their answer
    skipped: torch.Tensor | None = None  # (B,) int64 layers each row skipped here (SmartBERT gates); None = no gates


@dataclass
class ShardExit:
    """Rows that left the shard after one layer, as `LayerShard.forward`'s `on_exit` gets them:
    their answers are final (the same values `ShardOutput` gives them at the shard's end)."""

    positions: torch.Tensor  # (E,) int64 positions in the shard's input batch
    exit_layer: torch.Tensor  # (E,) int64 layer each was answered at (an audited row's first exit)
    logits: torch.Tensor  # (E, C) float32
    score: torch.Tensor  # (E,) float32
    skipped: torch.Tensor | None  # (E,) int64 layers each skipped here; None without gates


class LayerShard(ShardBase):
    """Layers [start, end) (0-based, end exclusive) of an early-exit model, plus their heads and gates."""

    def __init__(
        self,
        model: EarlyExitSequenceModel,
        start: int,
        end: int,
        policy: ExitPolicy | str | None = None,
        thresholds: dict[int, float] | None = None,
        exits_enabled: bool = True,
        gates_enabled: bool = True,
    ):
        super().__init__(model, start, end, thresholds, exits_enabled)
        # SmartBERT: the gate before each of this shard's layers
        self.gates = nn.ModuleList(model.gates[start:end]) if model.gates is not None and gates_enabled else None
        self.gate_threshold = model.config.gate_threshold
        # heads are kept as modules of this shard so .to(dtype) and memory follow the shard
        self.heads = nn.ModuleDict({str(l): _HeadAt(model, l) for l in self.head_layers})
        self.policy = get_policy(policy or model.config.exit_policy) if not isinstance(policy, ExitPolicy) else policy
        check_policy_fits(self.policy, model.config.exit_mechanism, model.signal_modules)

    def _layer(self, offset: int, hidden: torch.Tensor, host_lengths: np.ndarray, mask2d: torch.Tensor, mask):
        """Layer `offset` of the shard on the rows that run it -> (new hidden, (S,) bool ran, rows run).
        `mask`: `layer_mask(hidden, mask2d)`, built once for as long as the rows stay the same;
        `host_lengths`: the rows' token counts on the host.

        Without gates every row runs. With gates, rows whose gate says skip keep their states
        unchanged, and only the others are computed, as one compacted sub-batch trimmed to
        its own longest row: a skipped layer costs that row nothing but its gate, and the
        gates' decision is the layer's one read from the device."""
        layer = self.layers[offset]
        S = hidden.shape[0]
        if self.gates is None:
            return layer(hidden, mask), torch.ones(S, dtype=torch.bool, device=hidden.device), S
        ran = self.gates[offset](hidden, mask2d) < self.gate_threshold  # (S,)
        rows = np.flatnonzero(to_host(ran))
        if len(rows) == 0:
            return hidden, ran, 0
        if len(rows) == S:
            return layer(hidden, mask), ran, S
        t = int(host_lengths[rows].max())
        index = to_device_index(rows, hidden.device)
        sub = hidden[index, :t]  # (R, t, H)
        out = hidden.clone()
        out[index, :t] = layer(sub, self.layer_mask(sub, mask2d[index, :t], bool(host_lengths[rows].min() < t)))
        return out, ran, len(rows)

    @torch.inference_mode()
    def forward(
        self,
        lengths: torch.Tensor,  # (B,) tokens per row
        input_ids: torch.Tensor | None = None,  # (B, T) when this shard holds the embeddings
        hidden: torch.Tensor | None = None,  # (B, T, H) otherwise
        state: torch.Tensor | None = None,  # (B, state_size) policy state carried from earlier shards
        audit: torch.Tensor | None = None,  # (B,) bool: run to full depth whatever the exits say
        decided: torch.Tensor | None = None,  # (B,) bool: audited rows answered in an earlier shard
        on_exit: Callable[[ShardExit], None] | None = None,
    ) -> ShardOutput:
        """Run the shard's layers; rows leave at their exit (audited rows only at full depth).

        `on_exit`, when given, is called after each layer that rows leave at, before the deeper
        layers run, with those rows' answers (the online endpoint answers them at once).

        The host reads from the device once per exit head (which rows stay, to compact them) and
        once per layer with gates (which rows run it); nothing else in the loop waits for the
        device. Lengths, padding and the audit are known on the host.

        An audited row gets its early-exit answer exactly as any other row (exit_layer,
        logits, score), but keeps running; the final head's logits of audited rows that
        finish here come back as `full_logits`. With gates, a row that skips a layer gets no
        exit decision there (its head would see the same states as before)."""
        hidden = self.embed(input_ids, hidden)  # (B, T, H)
        B, device = hidden.shape[0], hidden.device
        C = self.model_config.num_labels
        exit_layer = torch.zeros(B, dtype=torch.long, device=device)
        logits_out = torch.zeros(B, C, dtype=torch.float32, device=device)
        score_out = torch.full((B,), float("nan"), dtype=torch.float32, device=device)
        skipped_out = torch.zeros(B, dtype=torch.long, device=device) if self.gates is not None else None
        alive = torch.arange(B, device=device)  # (S,) rows still running
        host_lengths = lengths_on_host(lengths)  # (B,): trims and padding read nothing
        lengths = lengths.to(device)
        state = self.policy.initial_state(B, device) if state is None else state.to(device)
        audits = audit is not None and bool(audit.any())  # once per call, on the caller's (host) tensor
        audit = torch.zeros(B, dtype=torch.bool, device=device) if audit is None else audit.to(device)
        decided = torch.zeros(B, dtype=torch.bool, device=device) if decided is None else decided.to(device)
        full_out = None
        row_layers = 0
        audit_row_layers = torch.zeros((), dtype=torch.long, device=device)  # summed on device: no sync per layer

        mask2d = None  # rebuilt only when rows leave: a layer without exits keeps the same rows
        for offset in range(len(self.layers)):
            layer = self.start + offset + 1  # 1-based, like every layer number outside a shard's [start, end)
            if mask2d is None:
                T = hidden.shape[1]
                mask2d = torch.arange(T, device=device)[None, :] < lengths[:, None]  # (S, T)
                # the layers' own form of it: (S, 1, T, T) or None
                mask = self.layer_mask(hidden, mask2d, bool(host_lengths.min(initial=T) < T))
            hidden, ran, ran_rows = self._layer(offset, hidden, host_lengths, mask2d, mask)  # (S, T, H), (S,)
            row_layers += ran_rows
            if skipped_out is not None:
                skipped_out.index_add_(0, alive, (~ran).long())
            audit_row_layers += (decided & ran).sum()
            if layer not in self.thresholds or (not self.exits_enabled and layer < self.num_layers):
                continue  # no head here, or exits off: only the final head answers
            head = self.heads[str(layer)](hidden, mask2d)
            logits = head.logits.float()  # (S, C)
            if layer == self.num_layers:  # every row leaves, skipped the last layer or not
                exited = torch.ones(hidden.shape[0], dtype=torch.bool, device=device)
                score = self.policy.score(logits, head.signal)
                if audits:
                    full_out = torch.full((B, C), float("nan"), dtype=torch.float32, device=device)
                    full_out[alive] = torch.where(audit[:, None], logits, full_out[alive])
            else:
                threshold = self.thresholds[layer]
                decision, new_state = self.policy.decide(logits, threshold, state, head.signal)
                exited, score = decision.exited & ran, decision.score
                if new_state is not None:  # a row that skipped the layer keeps its state
                    state = torch.where(ran[:, None], new_state, state)
            answered = exited & ~decided  # an audited row is answered once, at its first exit
            # written through `alive` with where(): no host sync (a boolean index would wait for the GPU)
            exit_layer[alive] = torch.where(answered, layer, exit_layer[alive])
            logits_out[alive] = torch.where(answered[:, None], logits, logits_out[alive])
            score_out[alive] = torch.where(answered, score.float(), score_out[alive])
            decided = decided | (answered & audit)
            if layer == self.num_layers:  # every row leaves: nothing to read back
                if on_exit is not None:
                    on_exit(_left(alive, exit_layer, logits_out, score_out, skipped_out))
                alive, lengths, hidden, audit, decided, state = keep_rows(slice(0, 0), alive, lengths, hidden, audit,
                                                                          decided, state)
                break
            leave = to_host(exited & ~audit)  # the one read of an exit head: who leaves (audited rows run on)
            if leave.any():
                keep = np.flatnonzero(~leave)
                if on_exit is not None:
                    on_exit(_left(alive[to_device_index(np.flatnonzero(leave), device)], exit_layer, logits_out,
                                  score_out, skipped_out))
                alive, lengths, hidden, audit, decided, state = keep_rows(to_device_index(keep, device), alive, lengths,
                                                                          hidden, audit, decided, state)
                host_lengths = host_lengths[keep]
                if hidden.shape[0] == 0:
                    break
                hidden = trim(hidden, host_lengths)  # padding only up to the longest survivor
                mask2d = None

        return ShardOutput(
            exit_layer=exit_layer,
            logits=logits_out,
            score=score_out,
            survivors=alive,
            hidden=hidden,
            lengths=lengths,
            state=state,
            row_layers=row_layers,
            full_logits=full_out,
            audit_row_layers=int(audit_row_layers),
            skipped=skipped_out,
        )


def _left(positions: torch.Tensor, exit_layer, logits, score, skipped) -> ShardExit:
    """The rows at `positions` (of the shard's input batch) out of the shard's per-row outputs."""
    return ShardExit(positions, exit_layer[positions], logits[positions], score[positions],
                     None if skipped is None else skipped[positions])


class _HeadAt(nn.Module):
    """The head after one layer, as its own module (the final one is the model's FinalHead),
    with the mechanism's signal module at that layer (DE³ prototypes, BERxiT's shared predictor)."""

    def __init__(self, model: EarlyExitSequenceModel, layer: int):
        super().__init__()
        self.head = self.signal = self.final = None
        if layer == model.num_layers:
            self.final = model.final_head()
        else:
            self.head, self.signal = model.exit_heads[str(layer)], model.signal_module(layer)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> HeadOutput:  # (B, T, H), (B, T)
        if self.final is not None:
            return HeadOutput(self.final(hidden, mask))
        pooled = masked_mean(hidden, mask)  # (B, H)
        return HeadOutput(self.head.classify(pooled), exit_signal(self.signal, pooled))


# ---------------------------------------------------------------- the stage codec

def state_from_blobs(blobs, fresh: torch.Tensor) -> torch.Tensor:
    """Per-row float32 state blobs -> (S, state_size); rows with no blob yet keep `fresh`'s row."""
    flat, sizes = schema.concat_blobs(blobs)
    carried = flat.view(np.float32).reshape(-1, fresh.shape[1])  # (rows with a blob, state_size)
    state = fresh.clone()
    state[torch.from_numpy(sizes > 0)] = torch.from_numpy(carried.copy()).to(state.dtype)  # copy: Arrow's is read-only
    return state


class SequenceStageRunner(StageRunner):
    """A classifier's shard on Ray Data batches: one label per row.

    A row runs while it is unanswered, or audited and not yet at full depth. Its policy
    state (patience counters) and SmartBERT's skipped-layer count travel with it."""

    required = (
        schema.STATUS, schema.TOKENS, schema.NUM_TOKENS, schema.HIDDEN, schema.EXIT_LAYER, schema.LABEL_ID,
        schema.CONFIDENCE, schema.SCORE, schema.AUDIT, schema.FULL_LABEL_ID, schema.STATE, schema.SKIPPED,
    )
    result_columns = (
        schema.EXIT_LAYER, schema.LABEL_ID, schema.CONFIDENCE, schema.SCORE, schema.HIDDEN, schema.FULL_LABEL_ID,
        schema.STATE, schema.SKIPPED,
    )

    @staticmethod
    def write_answers(cols: dict, done: np.ndarray, exit_layer: np.ndarray, logits: torch.Tensor,
                      score: np.ndarray) -> None:
        """The answer columns of batch positions `done` from their exit (per row: layer, (E, C)
        logits, score): the one writer for rows answered at a pass's end and rows handed to
        `on_exit` as they leave, so both read the same answer."""
        probs = torch.softmax(logits, dim=-1).cpu()  # (E, C)
        cols[schema.EXIT_LAYER][done] = exit_layer
        cols[schema.LABEL_ID][done] = probs.argmax(-1).numpy()
        cols[schema.CONFIDENCE][done] = probs.max(-1).values.numpy()
        cols[schema.SCORE][done] = score

    @staticmethod
    def write_skipped(batch: dict, cols: dict, rows: np.ndarray, skipped: np.ndarray) -> None:
        """SmartBERT: layers `rows` skipped, the stages' before this one plus this one's (`skipped`)."""
        cols[schema.SKIPPED][rows] = batch[schema.SKIPPED][rows] + skipped.astype(np.int16)

    def build_shard(self, model, spec: StageSpec) -> LayerShard:
        return LayerShard(
            model, spec.start, spec.end, policy=spec.policy, thresholds=spec.thresholds,
            exits_enabled=spec.exits_enabled, gates_enabled=spec.gates_enabled,
        )

    def running(self, batch: dict) -> np.ndarray:
        unfinished = (batch[schema.EXIT_LAYER] == 0) | (batch[schema.AUDIT] & (batch[schema.FULL_LABEL_ID] < 0))
        return np.flatnonzero(unfinished & schema.runnable(batch[schema.STATUS]))

    def forward(self, batch: dict, rows: np.ndarray, cols: dict, on_exit: RowsAnswered | None = None) -> PassWork:
        lengths = batch[schema.NUM_TOKENS][rows].astype(np.int64)
        audit = torch.from_numpy(np.asarray(batch[schema.AUDIT][rows], dtype=bool))
        decided = torch.from_numpy(batch[schema.EXIT_LAYER][rows] > 0)
        policy = self.shard.policy
        state = None
        if policy.state_size:  # carried from the previous stage; fresh for rows not yet through a head
            state = state_from_blobs(batch[schema.STATE][rows], policy.initial_state(len(rows)))
        inputs = self.inputs(batch, rows, lengths)
        leaving = None
        if on_exit is not None:
            def leaving(e: ShardExit) -> None:  # rows that left mid-pass: their columns now, then the caller
                done = rows[e.positions.cpu().numpy()]
                self.write_answers(cols, done, e.exit_layer.cpu().numpy(), e.logits, e.score.cpu().numpy())
                if e.skipped is not None:
                    self.write_skipped(batch, cols, done, e.skipped.cpu().numpy())
                on_exit(done, cols)
        result = self.shard(torch.from_numpy(lengths), audit=audit, decided=decided, state=state, on_exit=leaving,
                            **inputs)
        layers = result.exit_layer.cpu().numpy()  # (S,)
        answered = layers > 0
        self.write_answers(cols, rows[answered], layers[answered], result.logits.cpu()[torch.from_numpy(answered)],
                           result.score.cpu().numpy()[answered])
        per_row = None if result.skipped is None else result.skipped.cpu().numpy()
        if per_row is not None:
            self.write_skipped(batch, cols, rows, per_row)
        if result.full_logits is not None:
            full = result.full_logits.cpu()
            finished = ~torch.isnan(full[:, 0]).numpy()
            cols[schema.FULL_LABEL_ID][rows[finished]] = full[finished].argmax(-1).numpy()
        survivor_pos = result.survivors.cpu().numpy()
        left = np.ones(len(rows), dtype=bool)
        left[survivor_pos] = False
        cols[schema.HIDDEN][rows[left]] = b""  # a row that leaves drops its states at once
        cols[schema.STATE][rows[left]] = b""
        skipped = 0 if per_row is None else int(per_row.sum())
        if len(survivor_pos):
            carried = rows[survivor_pos]
            cols[schema.HIDDEN][carried] = self.carry.put(result.hidden, result.lengths)
            if result.state is not None:
                states = result.state.float().cpu().numpy()  # (S, state_size): one row per blob
                cols[schema.STATE][carried] = schema.flat_to_blobs(states, np.ones(len(states), dtype=np.int64))
        return PassWork(int(left.sum()), result.row_layers, result.audit_row_layers, skipped)
