"""Where one stage actor's time goes, without Ray: the steps of the pipeline on one batch.

    python benchmarks/profile_stage.py --model DIR --device cuda [--dtype float16]

Tokenize (one core), the stage's call with exits and at full depth (ms per batch, docs/s,
host reads and syncs per call), finalize, and the torch profiler's top operators of one call with exits.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from offramp.exits.stage import StageSpec  # noqa: E402
from offramp.exits.syncs import HostReads  # noqa: E402
from offramp.models.checkpoint import read_config  # noqa: E402
from offramp.tasks import finalize_step, get_task, tokenize_step  # noqa: E402


def timed(fn, repeat: int, device: str):
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    best = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best.append(time.perf_counter() - t0)
    return out, float(np.median(best))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data/debian_sections/dev.parquet")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="padded tokens per forward pass (default: the device's budget); a CPU run with a GPU's "
                        "budget (524288) makes one pass per call, as the H200 did, to count its host reads")
    args = p.parse_args()
    t = pq.read_table(args.data, columns=["id", "text", "label"]).slice(0, args.rows)
    batch = {c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names}
    tok, s = timed(lambda: tokenize_step(dict(batch), "sequence", args.model, args.max_length), args.repeat, "cpu")
    print(f"tokenize: {1e3 * s:.1f} ms / {args.rows} rows = {args.rows / s:.0f} docs/s on one core "
          f"(mean {tok['_num_tokens'].mean():.1f} tokens)")
    config = read_config(args.model)
    L = config.num_hidden_layers
    runner_cls = get_task("sequence").runner_cls()
    for exits in (True, False):
        spec = StageSpec(0, 0, L, dtype=args.dtype, device=args.device, max_tokens=args.max_tokens,
                         exits_enabled=exits)
        runner = runner_cls(args.model, spec)
        (out, stats), s = timed(lambda: runner(dict(tok)), args.repeat, args.device)
        with HostReads() as reads:  # device-agnostic: the operators that make a host wait for a device
            runner(dict(tok))
        syncs = "n/a on a CPU"
        if args.device == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                runner(dict(tok))
            torch.cuda.set_sync_debug_mode(0)
            syncs = len(w)
        print(f"stage exits={exits}: {1e3 * s:.1f} ms/batch = {args.rows / s:.0f} docs/s; max_tokens "
              f"{runner.spec.max_tokens}; row-layers {stats.row_layers} (mean {stats.row_layers / args.rows:.2f}); "
              f"host reads per call {reads.total} {dict(reads.by_reason)}; CUDA syncs per call {syncs}", flush=True)
        if exits:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
            with profile(activities=acts) as prof:
                runner(dict(tok))
                if args.device == "cuda":
                    torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=60))
            final = out
    info_labels = [config.id2label[i] for i in range(config.num_labels)]
    _, s = timed(lambda: finalize_step(dict(final), "sequence", info_labels, "id", [], "label"), args.repeat, "cpu")
    print(f"finalize: {1e3 * s:.1f} ms / {args.rows} rows = {args.rows / s:.0f} docs/s on one core")


if __name__ == "__main__":
    main()
