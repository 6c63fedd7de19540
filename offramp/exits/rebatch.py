"""Survivors of several input batches merged into one pass at each stage boundary (E3).

A stage actor runs the rows of one input batch through its layers, and after an exit the
survivors of that batch alone make the next pass: on a GPU, deep layers then run passes far
smaller than the device takes. A `Rebatcher` holds every stage's runner in one process and a
queue per stage. An input batch enters stage 0's queue; after each pass the rows still running
join the next stage's queue, beside the survivors of other input batches, and a stage runs
when its queue holds a full pass (`pass_rows` running rows). When none does, stage 0 runs
(it feeds the others); when no input waits there, the deepest non-empty queue runs, so every
batch finishes without more input arriving.

Each input batch comes back whole, in its own row order, once its last row is answered.
Exit decisions are per row (batch invariance is tested), so how rows are merged into passes
changes no answer. The caller feeds batches and drives the passes (`actors.rebatch`).

Between the stages of one process the survivors' states never leave the device: a pass keeps
its survivors' states as one tensor (`DeviceCarry`), rounded to the carry dtype as the blobs
between actors are, so a rebatching actor's answers are the pool-per-stage layout's. The state
column holds a handle per row (which pass, which row of it); the next pass gathers its rows
from the tensors they are in, one gather per source pass, not per row.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from offramp import schema
from offramp.exits.stage import TORCH_DTYPES, StageBatchStats, StageRunner

STATE_COLUMNS = (schema.HIDDEN, schema.FULL_HIDDEN)  # columns a runner's carry writes (the token audit lane's too)
_ROW_BITS = 32  # a handle is (source pass << _ROW_BITS) | row of that pass


def split_handles(handles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int64 handles -> (source pass, row of that pass) for each."""
    return handles >> _ROW_BITS, handles & ((1 << _ROW_BITS) - 1)


class DeviceCarry:
    """Survivors' states kept on the device they were computed on, between stages of one process.

    `put` stores a pass's survivors' (S, T, H) states as one tensor in the carry dtype, padding
    zeroed, and returns a handle per row; `get` gathers the rows of the next pass from their
    source tensors, cut or zero-padded to the longest row as `BlobCarry` pads, and frees a source once every row of it
    was read or released. Rows of a failed batch are released (`release`), and tensors stored by
    a failed pass are discarded (`discard_since`), so nothing is held after the last batch."""

    def __init__(self, carry_dtype: str):
        self.dtype = TORCH_DTYPES[carry_dtype]
        self.sources: dict[int, tuple[torch.Tensor, np.ndarray]] = {}  # pass -> (states, rows not yet read)
        self.next_source = 0

    def put(self, hidden: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
        source = self.next_source
        self.next_source += 1
        real = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths.to(hidden.device)[:, None]
        states = torch.where(real[..., None], hidden, 0).to(self.dtype)  # padding zeroed once, as blobs pad it
        self.sources[source] = (states, np.ones(len(hidden), dtype=bool))
        return ((source << _ROW_BITS) | np.arange(len(hidden), dtype=np.int64)).astype(object)

    def get(self, values: np.ndarray, lengths: np.ndarray, device: torch.device) -> torch.Tensor:
        sources, rows = split_handles(values.astype(np.int64))
        longest = int(lengths.max())
        pieces, order = [], []
        for source in np.unique(sources):  # one gather per source pass
            at = np.flatnonzero(sources == source)
            states = self.sources[int(source)][0]
            piece = states.index_select(0, torch.from_numpy(rows[at]).to(states.device))[:, :longest]
            if piece.shape[1] < longest:  # that pass's rows were all shorter than this pass's longest
                piece = torch.nn.functional.pad(piece, (0, 0, 0, longest - piece.shape[1]))
            pieces.append(piece)
            order.append(at)
            self._read(int(source), rows[at])
        if len(pieces) == 1 and (order[0] == np.arange(len(values))).all():
            return pieces[0]
        joined = torch.cat(pieces)  # rows grouped by source: put back in the order asked for
        inverse = np.empty(len(values), dtype=np.int64)
        inverse[np.concatenate(order)] = np.arange(len(values))
        return joined.index_select(0, torch.from_numpy(inverse).to(joined.device))

    def release(self, values: np.ndarray) -> None:
        sources, rows = split_handles(np.array([v for v in values if isinstance(v, int)], dtype=np.int64))  # rare
        for source in np.unique(sources):
            if int(source) in self.sources:
                self._read(int(source), rows[sources == source])

    def discard_since(self, source: int) -> None:
        """Drop the tensors stored from pass `source` on: a failed pass's survivors are never read."""
        for s in [s for s in self.sources if s >= source]:
            del self.sources[s]

    def rows_held(self) -> int:
        return int(sum(unread.sum() for _, unread in self.sources.values()))

    def _read(self, source: int, rows: np.ndarray) -> None:
        unread = self.sources[source][1]
        unread[rows] = False
        if not unread.any():
            del self.sources[source]


@dataclass
class Ticket:
    """One input batch: its rows as they finish, until none is left."""

    rows: int  # rows of the input batch
    parts: list = field(default_factory=list)  # (positions, finished rows) as they finish
    left: int = field(init=False)  # rows not yet finished

    def __post_init__(self):
        self.left = self.rows

    @property
    def done(self) -> bool:
        return self.left == 0

    def finish(self, positions: np.ndarray, rows: dict) -> None:
        self.parts.append((positions, rows))
        self.left -= len(positions)

    def result(self) -> dict:
        """The finished batch: every row of the input, in the input's order."""
        assert self.done, "a batch is returned only once every row finished"
        if len(self.parts) == 1:
            positions, rows = self.parts[0]
            order = np.argsort(positions, kind="stable")
            return {c: v[order] for c, v in rows.items()}
        positions = np.concatenate([p for p, _ in self.parts])
        order = np.argsort(positions, kind="stable")
        return {c: np.concatenate([r[c] for _, r in self.parts])[order] for c in self.parts[0][1]}


@dataclass
class Part:
    """Rows of one input batch waiting at one stage."""

    ticket: Ticket
    positions: np.ndarray  # (R,) their positions in the input batch
    rows: dict  # the rows, in the row contract (`offramp.schema`)
    running: int  # of them, rows the stage computes (the rest pass through it)


def take_rows(rows: dict, keep: np.ndarray) -> dict:
    return {c: v[keep] for c, v in rows.items()}


def join_parts(parts: list[Part]) -> dict:
    if len(parts) == 1:
        return parts[0].rows
    return {c: np.concatenate([p.rows[c] for p in parts]) for c in parts[0].rows}


class Rebatcher:
    """Every stage's runner in one process, with a queue of waiting rows per stage."""

    def __init__(self, runners: list[StageRunner], pass_rows: int, keep_states: bool | None = None):
        """`keep_states`: survivors' states stay on the device between stages (`DeviceCarry`);
        None keeps them there on an accelerator, and on a CPU carries them as the blobs between
        actors (measured cheaper there: no device copy to save, and blobs hold no padding)."""
        if pass_rows < 1:
            raise ValueError(f"pass_rows={pass_rows}: a pass needs at least one row")
        self.runners = runners
        self.pass_rows = pass_rows
        self.queues: list[deque[Part]] = [deque() for _ in runners]
        if keep_states is None:
            keep_states = runners[0].device.type != "cpu"
        self.carry = DeviceCarry(runners[0].spec.carry_dtype) if keep_states else runners[0].carry
        for runner in runners:
            runner.carry = self.carry

    def add(self, batch: dict) -> Ticket:
        """An input batch into stage 0's queue; its ticket is done when all its rows finished."""
        n = schema.batch_rows(batch)
        ticket = Ticket(n)
        if n == 0:
            ticket.finish(np.arange(0), batch)
            return ticket
        running = len(self.runners[0].running(batch))
        self.queues[0].append(Part(ticket, np.arange(n), batch, running))
        return ticket

    def waiting(self, k: int) -> int:
        """Rows stage k would compute from its queue."""
        return sum(p.running for p in self.queues[k])

    def next_stage(self) -> int | None:
        """The stage to run next: the deepest whose queue holds a full pass; else stage 0, whose
        passes feed the others; else the deepest with rows waiting; None when nothing waits."""
        for k in range(len(self.queues) - 1, 0, -1):
            if self.waiting(k) >= self.pass_rows:
                return k
        if self.queues[0]:
            return 0
        return next((k for k in range(len(self.queues) - 1, 0, -1) if self.queues[k]), None)

    def take(self, k: int) -> list[Part]:
        """Whole parts from stage k's queue, oldest first, up to a full pass (at least one part)."""
        queue, parts, running = self.queues[k], [], 0
        while queue and (not parts or running + queue[0].running <= self.pass_rows):
            parts.append(queue.popleft())
            running += parts[-1].running
        return parts

    def drop(self, ticket: Ticket) -> None:
        """A failed batch's rows leave every queue, and their states the carry (the caller
        retries the batch whole)."""
        for k, queue in enumerate(self.queues):
            for part in queue:
                if part.ticket is ticket:
                    self.release(part.rows)
            self.queues[k] = deque(p for p in queue if p.ticket is not ticket)

    def abandon(self, parts: list[Part], since: int) -> None:
        """A pass over `parts` failed: the states its rows held, and those it stored (carry sources
        from `since` on, `DeviceCarry.next_source` before the pass), will never be read."""
        for part in parts:
            self.release(part.rows)
        self.carry.discard_since(since)

    def release(self, rows: dict) -> None:
        for column in STATE_COLUMNS:
            if column in rows:
                self.carry.release(rows[column])

    def run(self, k: int, parts: list[Part]) -> list[StageBatchStats]:
        """One pass of stage k over `parts`: finished rows go back to their tickets, running ones
        join stage k+1's queue. Returns what the pass did, and for each deeper stage the rows it
        will never see (finished here: `rows_seen`, so every stage accounts for every row)."""
        out, stats = self.runners[k](join_parts(parts))
        last = k == len(self.runners) - 1
        still = np.zeros(schema.batch_rows(out), dtype=bool)
        if not last:
            still[self.runners[k + 1].running(out)] = True
        start, finished = 0, 0
        for part in parts:
            n = len(part.positions)
            rows = {c: v[start:start + n] for c, v in out.items()}  # views: this part's rows of the pass
            moving = still[start:start + n]
            start += n
            done = np.flatnonzero(~moving)
            if len(done):
                part.ticket.finish(part.positions[done], rows if len(done) == n else take_rows(rows, done))
                finished += len(done)
            if len(done) < n:
                keep = np.flatnonzero(moving)
                self.queues[k + 1].append(Part(part.ticket, part.positions[keep], take_rows(rows, keep), len(keep)))
        passed = [
            StageBatchStats(j, 0, 0, 0, 0, 0.0, rows_seen=finished, passes=0)
            for j in range(k + 1, len(self.runners)) if finished
        ]
        return [stats, *passed]
