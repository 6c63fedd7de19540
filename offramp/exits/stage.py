"""A shard run on Ray Data batches: what a stage does with its columns, for either task.

A `StageRunner` loads the model, keeps only its shard of layers [start, end) and turns a
numpy batch (the row contract in `offramp.schema`) into forward passes and back. The
task's runner (`SequenceStageRunner`, `TokenStageRunner`) says which columns it reads,
which rows still run, and how one forward pass reads and writes them. Exactly the rows
that came in go out; an exited row drops its hidden states at once. `actors.stage`
wraps a runner as a Ray Data actor.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from offramp import schema
from offramp.models.checkpoint import load_stage_model

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# numpy has no bfloat16: bf16 blobs are stored as their raw 16-bit patterns.
_NP_CARRY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.int16}


@dataclass(frozen=True)
class StageSpec:
    """What one stage actor needs: its layer range and how to run it."""

    index: int
    start: int  # first layer, 0-based
    end: int  # one past the last layer
    task: str = "sequence"  # offramp.tasks name: which shard and codec the stage runs
    dtype: str = "float32"
    carry_dtype: str = "float16"
    device: str = "cpu"
    torch_threads: int = 0
    max_tokens: int | None = 0  # padded tokens per forward pass; 0 = the whole batch; None = the device's budget
    policy: str | None = None
    thresholds: dict | None = None  # {layer: threshold}; None = stored with the model
    exits_enabled: bool = True
    gates_enabled: bool = True  # SmartBERT skipping gates (models without gates ignore it)
    exit_mode: str | None = None  # token task: token (TOKEE) or sentence (SENTEE); None = stored
    window: int | None = None  # token task, TOKEE: words on each side; None = stored
    sentence_pool: str | None = None  # token task, SENTEE: max or mean; None = stored


@dataclass(frozen=True)
class StageBatchStats:
    """What one stage call did; the driver aggregates these (workers never log to MLflow)."""

    stage: int
    rows_in: int  # rows that entered this stage's layers
    rows_exited: int  # of those, rows that finished inside this stage
    tokens_in: int
    row_layers: int  # work computed: row-layers (sequence) or token-layers (token)
    seconds: float  # wall time of the call
    audit_row_layers: int = 0  # of the work, what audited rows ran beyond their answer
    skipped_row_layers: int = 0  # row-layers skipped through gates (not in row_layers)
    rows_seen: int = 0  # every row of the batch, answered earlier or not: the driver's check that all reports arrived
    passes: int = 1  # stage calls this report stands for (0: rows a rebatching actor finished before this stage)
    ended: float = 0.0  # time.time() at the call's end (0: no call); the driver's start-up and active-span figures


RowsAnswered = Callable[[np.ndarray, dict], None]
"""`on_exit(rows, cols)`: batch positions whose answer columns in `cols` are final, called as
they leave a forward pass (before its deeper layers run); see `StageRunner.__call__`. An
audited row's full-depth label is written only when the pass ends (online rows are not audited)."""


@dataclass
class PassWork:
    """What one forward pass did, summed over a batch's passes."""

    exited: int = 0
    layers: int = 0
    audit_layers: int = 0
    skipped: int = 0

    def __iadd__(self, other: "PassWork") -> "PassWork":
        self.exited += other.exited
        self.layers += other.layers
        self.audit_layers += other.audit_layers
        self.skipped += other.skipped
        return self


def hidden_to_blobs(hidden: torch.Tensor, lengths: torch.Tensor, carry_dtype: str) -> np.ndarray:
    """Survivors' (S, T, H) states -> (S,) object array of blobs in the carry dtype, no padding.

    On an accelerator the real tokens are gathered there, so only they cross to the host; on the
    CPU numpy gathers them (torch's boolean index is 2-3x slower there)."""
    h = hidden.to(TORCH_DTYPES[carry_dtype])
    if carry_dtype == "bfloat16":
        h = h.view(torch.int16)
    if h.device.type == "cpu":
        return schema.unpad_to_blobs(h.numpy(), lengths.cpu().numpy())
    real = torch.arange(h.shape[1], device=h.device)[None, :] < lengths.to(h.device)[:, None]  # (S, T)
    return schema.flat_to_blobs(h[real].cpu().numpy(), lengths.cpu().numpy())  # h[real]: (sum(lengths), H)


def blobs_to_hidden(blobs, lengths: np.ndarray, hidden_size: int, carry_dtype: str) -> torch.Tensor:
    """Per-row blobs -> (S, T, H) tensor padded to the longest row."""
    t = torch.from_numpy(schema.pad_blobs(blobs, lengths, _NP_CARRY[carry_dtype], hidden_size))
    return t.view(torch.bfloat16) if carry_dtype == "bfloat16" else t


class BlobCarry:
    """Survivors' states as per-row blobs on the host, in the carry dtype: what crosses between
    stage actors (through Ray's object store). A stage's runner writes its survivors' states with
    `put` and reads its input states with `get`; `offramp.exits.rebatch.DeviceCarry` is the same
    interface for stages that share one process."""

    def __init__(self, hidden_size: int, carry_dtype: str):
        self.hidden_size = hidden_size
        self.carry_dtype = carry_dtype

    def put(self, hidden: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
        """(S, T, H) states of S rows with `lengths` real tokens -> (S,) column values."""
        return hidden_to_blobs(hidden, lengths, self.carry_dtype)

    def get(self, values: np.ndarray, lengths: np.ndarray, device: torch.device) -> torch.Tensor:
        """(S,) column values -> (S, T, H) states on `device`, zero-padded to the longest row."""
        return to_device(blobs_to_hidden(values, lengths, self.hidden_size, self.carry_dtype), device)

    def release(self, values: np.ndarray) -> None:
        """Values that will never be read (their rows' batch failed): blobs need no clean-up."""

    def discard_since(self, source: int) -> None:
        """States a failed pass stored: blobs went with its batch."""

    next_source = 0  # `DeviceCarry` numbers what passes store; blobs are not stored


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


# Tokens per forward pass when none is configured. On a CPU a pass of a few thousand tokens
# already keeps the cores' matrix units busy, and longer ones only add padding (a 65,536-token
# pass was slower on a near-free model; BENCHMARKS.md). On a GPU the pass must be large enough
# to fill the device: it is sized from the device's memory and capped at 2^19 tokens, which
# holds the 4,096-row batches at max_length 128 that the H200 benchmark ran as one pass. Where
# throughput stops growing with the pass size has not been measured yet.
CPU_TOKEN_BUDGET = 4096
GPU_TOKEN_BUDGET_CAP = 1 << 19
GPU_MEMORY_SHARE = 0.25  # of the device's memory one pass's activations may take (K actors may share it)


def token_budget(device: torch.device, hidden_size: int, intermediate_size: int, dtype: torch.dtype,
                 total_memory: int | None = None) -> int:
    """Padded tokens per forward pass for `device`: what one layer's activations of a pass
    (about 8 x hidden + 2 x intermediate values per token, in `dtype`) may take of
    GPU_MEMORY_SHARE of its memory, capped at GPU_TOKEN_BUDGET_CAP; CPU_TOKEN_BUDGET on a CPU.
    `total_memory`: the device's bytes (read from CUDA when None)."""
    if device.type != "cuda":
        return CPU_TOKEN_BUDGET
    if total_memory is None:
        total_memory = torch.cuda.get_device_properties(device).total_memory
    per_token = (8 * hidden_size + 2 * intermediate_size) * torch.finfo(dtype).bits // 8
    return int(max(CPU_TOKEN_BUDGET, min(GPU_TOKEN_BUDGET_CAP, GPU_MEMORY_SHARE * total_memory // per_token)))


def configure_device(device: torch.device) -> None:
    """Process-wide settings for running stages on `device`.

    On a GPU, PyTorch 2.11 routes SDPA to cuDNN's attention on Hopper, which builds an
    execution plan for each new (rows, tokens) shape. A stage sees a new shape at almost every
    pass (rows sorted into length groups, survivors compacted after each exit), so the plan
    building ran on every layer: the profiled stage call was CPU-bound with the GPU idle (see
    BENCHMARKS.md, "GPU"). The memory-efficient and flash kernels need no per-shape plan.
    OFFRAMP_CUDNN_SDP=1 keeps cuDNN's SDPA on, for measuring the two side by side
    (benchmarks/bench_gpu.py --cudnn-sdp)."""
    if device.type == "cuda" and os.environ.get("OFFRAMP_CUDNN_SDP") != "1":
        torch.backends.cuda.enable_cudnn_sdp(False)


# CPU flags under which PyTorch's CPU kernels (oneDNN) compute a 16-bit dtype natively (x86;
# `bf16` is Arm's). Without them every element is converted: on the development machine, which
# has avx512_bf16 but no float16 math, six MiniLM layers ran 2x faster in bfloat16 and 4x slower
# in float16 than in float32 (BENCHMARKS.md, "bfloat16 on a CPU").
NATIVE_CPU_FLAGS = {"bfloat16": ("avx512_bf16", "amx_bf16", "bf16"), "float16": ("avx512_fp16", "amx_fp16")}


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """This machine's CPU feature flags (Linux); None where `path` cannot be read or lists none."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_dtype_advice(dtypes: set[str], flags: set[str] | None) -> list[tuple[int, str]]:
    """(logging level, message) for CPU stages computing in `dtypes` on a CPU with `flags`
    (None: the stages' CPUs are unknown, as on a cluster). Empty: nothing to say."""
    def native(dtype: str) -> bool | None:
        return None if flags is None else any(f in flags for f in NATIVE_CPU_FLAGS[dtype])

    out = []
    if "float16" in dtypes and not native("float16"):
        out.append((logging.WARNING, ("a CPU stage computes in float16, which CPUs without AVX512-FP16 or AMX-FP16 "
                    "emulate: it ran 4x slower than float32 on the development machine. Set dtype: bfloat16 (native "
                    "with AVX512-BF16 or AMX) or float32; float16 is for GPUs")))
    if "bfloat16" in dtypes and native("bfloat16") is False:
        out.append((logging.WARNING, ("a CPU stage computes in bfloat16, which this CPU emulates (no avx512_bf16, "
                    "amx_bf16 or bf16 flag): expect it slower than float32. Set dtype: float32")))
    if "float32" in dtypes and native("bfloat16"):
        out.append((logging.INFO, ("this CPU computes bfloat16 natively: --dtype bfloat16 tagged 1.5-1.7x faster at "
                    "the same accuracy on the development machine (BENCHMARKS.md, \"bfloat16 on a CPU\"); calibrate "
                    "with --dtype bfloat16 too, so the certificate covers those runs")))
    return out


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor onto `device`: through pinned memory and a non-blocking copy on a GPU, so
    the copy overlaps the work already queued there and the host does not wait for it."""
    if device.type != "cuda" or t.device.type == "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


class StageRunner:
    """One stage's shard over numpy batches; subclasses are the task-specific codecs."""

    required: tuple[str, ...] = ()
    """Columns every batch must have."""
    result_columns: tuple[str, ...] = ()
    """Columns a forward pass writes (copied first: zero-copy batches are read-only)."""

    def __init__(self, model_dir: str, spec: StageSpec):
        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        dtype = TORCH_DTYPES[spec.dtype]
        model = load_stage_model(model_dir, dtype)  # torch's SDPA attention, as transformers' default for BERT
        self.device = torch.device(spec.device)
        configure_device(self.device)
        if spec.max_tokens is None:
            budget = token_budget(self.device, model.config.hidden_size, model.adapter.ffn_width(model.config), dtype)
            spec = dataclasses.replace(spec, max_tokens=budget)
        self.spec = spec
        self.hidden_size = model.config.hidden_size
        self.carry = BlobCarry(self.hidden_size, spec.carry_dtype)  # how survivors' states leave and arrive
        self.shard = self.build_shard(model, spec)
        del model  # layers outside [start, end) are freed with it
        self.shard.to(device=self.device, dtype=dtype).eval()

    def build_shard(self, model, spec: StageSpec) -> torch.nn.Module:
        raise NotImplementedError

    def running(self, batch: dict) -> np.ndarray:
        """Positions of the rows that still need this stage's layers."""
        raise NotImplementedError

    def forward(self, batch: dict, rows: np.ndarray, cols: dict, on_exit: RowsAnswered | None = None) -> PassWork:
        """One forward pass over batch positions `rows`; writes their results into `cols`, and
        may hand rows to `on_exit` as they leave (a runner that does not answers them at the end)."""
        raise NotImplementedError

    def inputs(self, batch: dict, rows: np.ndarray, lengths: np.ndarray, hidden_column: str = schema.HIDDEN) -> dict:
        """The shard's input for `rows`: token ids on the first stage, carried states after it."""
        if self.spec.start == 0:
            ids = schema.pad_blobs(batch[schema.TOKENS][rows], lengths, np.int32)[..., 0]  # (S, T)
            return dict(input_ids=to_device(torch.from_numpy(ids), self.device).long())
        return dict(hidden=self.carry.get(batch[hidden_column][rows], lengths, self.device))

    def __call__(self, batch: dict, on_exit: RowsAnswered | None = None) -> tuple[dict, StageBatchStats]:
        """Run the rows that need this stage -> (the batch with its result columns, what it did).

        `on_exit(rows, cols)`, when given, gets rows as they leave a forward pass with their
        answer columns final in `cols` (after the layer they exit at, a tagger's row after its last
        word's, while the rest run on); rows it is not called for are answered in the returned batch."""
        t0 = time.perf_counter()
        spec = self.spec
        schema.check_columns(batch, self.required, f"stage {spec.index}")
        n = schema.batch_rows(batch)
        running = self.running(batch)
        out = dict(batch)
        work = PassWork()
        if len(running):
            cols = {c: batch[c].copy() for c in self.result_columns}
            for group in forward_groups(batch[schema.NUM_TOKENS][running], spec.max_tokens):
                work += self.forward(batch, running[group], cols, on_exit)
            if spec.start == 0:
                cols[schema.TOKENS] = batch[schema.TOKENS].copy()
                cols[schema.TOKENS][running] = b""  # token ids are in the states now
            out.update(cols)
        assert schema.batch_rows(out) == n, "a stage must return exactly the rows it received"
        tokens = int(batch[schema.NUM_TOKENS][running].sum())
        stats = StageBatchStats(
            spec.index, len(running), work.exited, tokens, work.layers, time.perf_counter() - t0,
            work.audit_layers, work.skipped, n, ended=time.time(),
        )
        return out, stats
