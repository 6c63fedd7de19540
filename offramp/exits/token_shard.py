"""A shard of a sequence-labeling model: exits decided per word.

Per-word state (exit layer, label, uncertainty) comes in and goes out
with the rows, so a word's window sees its halted neighbours across stage boundaries.
A row whose words have all halted (TOKEE) or whose sentence exited (SENTEE) leaves the
batch at once; the survivors are compacted and trimmed to the longest survivor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from offramp import schema
from offramp.config import check_token_exit
from offramp.exits.shard import ShardBase, keep_rows, lengths_on_host, to_device_index, to_host, trim
from offramp.exits.stage import PassWork, RowsAnswered, StageRunner, StageSpec
from offramp.models.token import EarlyExitTokenModel, sparse_layer, window_max, word_of_token
from offramp.policies import ExitPolicy, check_word_policy, get_policy


@dataclass
class WordState:
    """Per row and word: where it halted (0 = active), its label and its latest uncertainty."""

    exit_layer: torch.Tensor  # (B, W) int64
    label: torch.Tensor  # (B, W) int64; -1 = no prediction yet
    uncertainty: torch.Tensor  # (B, W) float32; 1 (uniform) before any head saw the word

    @classmethod
    def fresh(cls, B: int, W: int, device=None) -> "WordState":
        return cls(
            torch.zeros(B, W, dtype=torch.long, device=device),
            torch.full((B, W), -1, dtype=torch.long, device=device),
            torch.ones(B, W, dtype=torch.float32, device=device),
        )


@dataclass
class TokenExit:
    """Rows whose every word has halted after one layer, as `TokenShard.forward`'s `on_exit` gets
    them: their words' state is final (what `TokenShardOutput` gives them at the shard's end)."""

    positions: torch.Tensor  # (E,) int64 positions in the shard's input batch
    layer: int  # the layer the row finished at
    words: WordState  # (E, W) its words' exit layers, labels and uncertainties
    token_layers: torch.Tensor  # (E,) int64 tokens computed as queries in this shard


@dataclass
class TokenShardOutput:
    words: WordState  # (B, W) every input row's words after this shard
    row_exit: torch.Tensor  # (B,) int64: layer at which the row finished here; 0 = still running
    survivors: torch.Tensor  # (S,) int64 rows still running
    hidden: torch.Tensor  # (S, T', H) their states (halted tokens' frozen states included)
    lengths: torch.Tensor  # (S,)
    token_layers: torch.Tensor  # (B,) int64 tokens computed as queries, summed over this shard's layers


class TokenShard(ShardBase):
    """Layers [start, end) (0-based, end exclusive) of a token model with their token heads."""

    def __init__(
        self,
        model: EarlyExitTokenModel,
        start: int,
        end: int,
        mode: str | None = None,
        thresholds: dict[int, float] | None = None,
        window: int | None = None,
        pool: str | None = None,
        exits_enabled: bool = True,
        policy: ExitPolicy | str | None = None,
    ):
        super().__init__(model, start, end, thresholds, exits_enabled)
        cfg = model.config
        self.heads = nn.ModuleDict(
            {str(l): model.classifier if l == model.num_layers else model.exit_heads[str(l)] for l in self.head_layers}
        )
        self.mode = mode or cfg.token_exit_mode
        self.pool = pool or cfg.sentence_pool
        self.window = cfg.exit_window if window is None else int(window)
        check_token_exit(self.mode, self.pool, self.window)
        self.policy = policy if isinstance(policy, ExitPolicy) else get_policy(policy or cfg.exit_policy)
        check_word_policy(self.policy)

    def _layer(self, offset: int, hidden, real, active):
        """Layer `offset` on the active tokens; the stock layer when every real token is active
        (the same kernels as the full model: parity when nothing halts is exact)."""
        layer = self.layers[offset]
        if torch.equal(active, real):
            return layer(hidden, self.layer_mask(hidden, real))
        return sparse_layer(layer, hidden, active, real, self.adapter)

    @torch.inference_mode()
    def forward(
        self,
        lengths: torch.Tensor,  # (B,) tokens per row
        starts: torch.Tensor,  # (B, W) first sub-word position of each word; -1 = untagged (padding, truncated)
        words: WordState | None = None,  # from earlier shards; fresh when None
        input_ids: torch.Tensor | None = None,  # (B, T) when this shard holds the embeddings
        hidden: torch.Tensor | None = None,  # (B, T, H) otherwise
        exits: bool | None = None,  # False: words halt only at the last layer (the audit's full-depth lane)
        on_exit: Callable[[TokenExit], None] | None = None,
    ) -> TokenShardOutput:
        """Run the shard's layers; words halt by the policy, and a row leaves when all its words
        have. `on_exit`, when given, gets the rows that finish after a layer before the deeper
        layers run (the online endpoint answers them at once)."""
        hidden = self.embed(input_ids, hidden)  # (B, T, H)
        exits = self.exits_enabled if exits is None else exits
        B, device = hidden.shape[0], hidden.device
        host_lengths = lengths_on_host(lengths)  # (B,): trims read nothing
        lengths, starts = lengths.to(device), starts.to(device)
        if starts.shape[1] == 0:  # no row has a word: one untagged column keeps the shapes simple
            starts = torch.full((B, 1), -1, dtype=torch.long, device=device)
            words = None
        W = starts.shape[1]
        words = WordState.fresh(B, W, device) if words is None else WordState(*(x.to(device).clone() for x in vars(words).values()))
        valid_all = starts >= 0  # (B, W)
        row_exit = torch.zeros(B, dtype=torch.long, device=device)
        token_layers = torch.zeros(B, dtype=torch.long, device=device)
        alive = torch.arange(B, device=device)  # (S,)
        st, valid = starts, valid_all
        exit_layer, label, unc = words.exit_layer[alive], words.label[alive], words.uncertainty[alive]

        for offset in range(len(self.layers)):
            layer = self.start + offset + 1  # 1-based, like every layer number outside a shard's [start, end)
            T = hidden.shape[1]
            real = torch.arange(T, device=device)[None, :] < lengths[:, None]  # (S, T)
            owner = word_of_token(st, lengths, T)  # (S, T) word of each token, -1 = special
            word_active = valid & (exit_layer == 0)  # (S, W)
            if self.mode == "token":
                # a sub-word follows its word; [CLS]/[SEP] run while any word of the row does
                tok_word_active = torch.gather(word_active, 1, owner.clamp(min=0)) & (owner >= 0)
                active = real & (tok_word_active | ((owner < 0) & word_active.any(1, keepdim=True)))
            else:
                active = real
            hidden = self._layer(offset, hidden, real, active)
            token_layers[alive] += active.sum(1)
            if layer not in self.thresholds:
                continue
            # the head reads each active word's first sub-word
            r, w = word_active.nonzero(as_tuple=True)  # (N,), (N,)
            logits = self.heads[str(layer)](hidden[r, st[r, w]]).float()  # (N, C)
            label[r, w] = logits.argmax(-1)
            unc[r, w] = self.policy.word_uncertainty(logits)
            last = layer == self.num_layers
            if last or not exits:
                halt = word_active & last
            elif self.mode == "token":
                halt = word_active & (window_max(unc, valid, self.window) < self.thresholds[layer])
            else:
                u = torch.where(valid, unc, torch.zeros_like(unc))
                score = u.max(1).values if self.pool == "max" else u.sum(1) / valid.sum(1).clamp(min=1)  # (S,)
                halt = word_active & (score < self.thresholds[layer])[:, None]
            exit_layer = torch.where(halt, layer, exit_layer)  # no boolean index: nothing read back
            done = ~(valid & (exit_layer == 0)).any(1)  # (S,) every word of the row has halted
            words.exit_layer[alive], words.label[alive], words.uncertainty[alive] = exit_layer, label, unc
            done = to_host(done)  # the layer's read of who finished: one (S,) copy
            if done.any():
                pos = alive[to_device_index(np.flatnonzero(done), device)]
                row_exit[pos] = layer
                if on_exit is not None:
                    on_exit(TokenExit(pos, layer, WordState(words.exit_layer[pos], words.label[pos], words.uncertainty[pos]),
                                      token_layers[pos]))
                keep = np.flatnonzero(~done)
                alive, lengths, hidden, st, valid, exit_layer, label, unc = keep_rows(
                    to_device_index(keep, device), alive, lengths, hidden, st, valid, exit_layer, label, unc
                )
                host_lengths = host_lengths[keep]
                if hidden.shape[0] == 0:
                    break
                hidden = trim(hidden, host_lengths)  # padding only up to the longest survivor

        return TokenShardOutput(words, row_exit, alive, hidden, lengths, token_layers)


# ---------------------------------------------------------------- the stage codec

def pad_words(blobs, counts: np.ndarray, dtype, fill) -> np.ndarray:
    """Per-row word blobs -> (S, W) padded with `fill`; an empty blob is a fresh row (all `fill`)."""
    W = max(1, int(counts.max()) if len(counts) else 1)
    out = np.full((len(blobs), W), fill, dtype=dtype)
    flat, sizes = schema.concat_blobs(blobs)
    written = (np.arange(W)[None, :] < counts[:, None]) & (sizes > 0)[:, None]  # (S, W)
    out[written] = flat.view(dtype)
    return out


class TokenStageRunner(StageRunner):
    """A tagger's shard on Ray Data batches: a tag per word.

    Per-word state (exit layer, tag, uncertainty) rides in blob columns, so a later stage
    continues each word where the earlier one left it. A sentence whose words have all
    halted drops its states and passes later stages as metadata. An audited sentence also
    runs a full-depth lane (its own states, no word halting) whose tags the audit compares."""

    required = (
        schema.STATUS, schema.TOKENS, schema.NUM_TOKENS, schema.HIDDEN, schema.EXIT_LAYER, schema.NUM_WORDS,
        schema.WORD_STARTS, schema.WORD_EXIT, schema.WORD_LABEL, schema.WORD_UNC, schema.TOKEN_LAYERS, schema.AUDIT,
        schema.FULL_HIDDEN, schema.FULL_WORD_LABEL, schema.FULL_DONE,
    )
    result_columns = (
        schema.HIDDEN, schema.EXIT_LAYER, schema.WORD_EXIT, schema.WORD_LABEL, schema.WORD_UNC, schema.TOKEN_LAYERS,
        schema.FULL_HIDDEN, schema.FULL_WORD_LABEL, schema.FULL_DONE,
    )

    def build_shard(self, model, spec: StageSpec) -> TokenShard:
        return TokenShard(
            model, spec.start, spec.end, mode=spec.exit_mode, thresholds=spec.thresholds, window=spec.window,
            pool=spec.sentence_pool, exits_enabled=spec.exits_enabled, policy=spec.policy,
        )

    def running(self, batch: dict) -> np.ndarray:
        unfinished = (batch[schema.EXIT_LAYER] == 0) | (batch[schema.AUDIT] & ~batch[schema.FULL_DONE])
        return np.flatnonzero(unfinished & schema.runnable(batch[schema.STATUS]))

    def forward(self, batch: dict, rows: np.ndarray, cols: dict, on_exit: RowsAnswered | None = None) -> PassWork:
        """`on_exit` gets a row as soon as its last word halted (its answer columns final)."""
        answer = batch[schema.EXIT_LAYER][rows] == 0
        full = np.asarray(batch[schema.AUDIT][rows], dtype=bool) & ~batch[schema.FULL_DONE][rows]
        work = PassWork()
        if answer.any():
            work += self._answer(batch, rows[answer], cols, on_exit)
        if full.any():
            work += self._full_depth(batch, rows[full], cols)
        return work

    def _starts(self, batch: dict, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        lengths = batch[schema.NUM_TOKENS][rows].astype(np.int64)
        counts = batch[schema.NUM_WORDS][rows].astype(np.int64)
        starts = torch.from_numpy(pad_words(batch[schema.WORD_STARTS][rows], counts, np.int32, -1)).long()
        return lengths, counts, starts

    @staticmethod
    def write_words(batch: dict, cols: dict, rows: np.ndarray, counts: np.ndarray, words: WordState,
                    token_layers: torch.Tensor) -> None:
        """The per-word answer columns of batch positions `rows` (and their token-layers, the
        earlier stages' plus this pass's): the one writer for rows finished at a pass's end and
        rows handed to `on_exit` as they finish, so both read the same answer."""
        per_word = ((schema.WORD_EXIT, words.exit_layer, np.int16), (schema.WORD_LABEL, words.label, np.int16),
                    (schema.WORD_UNC, words.uncertainty.float(), np.float32))
        for column, values, dtype in per_word:  # (S, W) -> a blob of counts[i] words per row
            cols[column][rows] = schema.unpad_to_blobs(values.cpu().numpy().astype(dtype), counts)
        cols[schema.TOKEN_LAYERS][rows] = batch[schema.TOKEN_LAYERS][rows] + token_layers.cpu().numpy()

    def _answer(self, batch: dict, rows: np.ndarray, cols: dict, on_exit: RowsAnswered | None = None) -> PassWork:
        """The early-exit lane: words halt by the policy; the row's tags are its answer."""
        lengths, counts, starts = self._starts(batch, rows)
        words = WordState(
            torch.from_numpy(pad_words(batch[schema.WORD_EXIT][rows], counts, np.int16, 0)).long(),
            torch.from_numpy(pad_words(batch[schema.WORD_LABEL][rows], counts, np.int16, -1)).long(),
            torch.from_numpy(pad_words(batch[schema.WORD_UNC][rows], counts, np.float32, 1.0)),
        )
        leaving = None
        if on_exit is not None:
            def leaving(e: TokenExit) -> None:  # rows that finished mid-pass: their columns now, then the caller
                pos = e.positions.cpu().numpy()
                done = rows[pos]
                self.write_words(batch, cols, done, counts[pos], e.words, e.token_layers)
                cols[schema.EXIT_LAYER][done] = e.layer
                cols[schema.HIDDEN][done] = b""
                on_exit(done, cols)
        result = self.shard(torch.from_numpy(lengths), starts, words=words, on_exit=leaving,
                            **self.inputs(batch, rows, lengths))
        self.write_words(batch, cols, rows, counts, result.words, result.token_layers)
        token_layers = result.token_layers.cpu().numpy()
        finished = self._carry(result, rows, cols, schema.HIDDEN)
        cols[schema.EXIT_LAYER][rows[finished]] = result.row_exit.cpu().numpy()[finished]
        return PassWork(exited=int(finished.sum()), layers=int(token_layers.sum()))

    def _full_depth(self, batch: dict, rows: np.ndarray, cols: dict) -> PassWork:
        """The audit's lane: every word runs every layer; the last layer's tags are the reference."""
        lengths, counts, starts = self._starts(batch, rows)
        inputs = self.inputs(batch, rows, lengths, hidden_column=schema.FULL_HIDDEN)
        result = self.shard(torch.from_numpy(lengths), starts, exits=False, **inputs)
        finished = self._carry(result, rows, cols, schema.FULL_HIDDEN)
        labels = result.words.label.cpu().numpy().astype(np.int16)
        cols[schema.FULL_WORD_LABEL][rows[finished]] = schema.unpad_to_blobs(labels[finished], counts[finished])
        cols[schema.FULL_DONE][rows[finished]] = True
        layers = int(result.token_layers.sum())
        return PassWork(layers=layers, audit_layers=layers)

    def _carry(self, result: TokenShardOutput, rows: np.ndarray, cols: dict, column: str) -> np.ndarray:
        """Finished rows drop their states in `column`; survivors carry theirs. -> (S,) bool finished."""
        finished = result.row_exit.cpu().numpy() > 0
        cols[column][rows[finished]] = b""  # a finished sentence drops its states at once
        survivors = result.survivors.cpu().numpy()
        if len(survivors):
            cols[column][rows[survivors]] = self.carry.put(result.hidden, result.lengths)
        return finished
