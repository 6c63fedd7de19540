"""Does torch.compile pay for a stage's layers? (issue 15: "torch.compile or CUDA graphs where
they measurably pay")

    python benchmarks/bench_compile.py --out benchmarks/results/compile_cpu.json
    python benchmarks/bench_compile.py --device cuda --dtype float16 --out benchmarks/results/gpu/compile.json

One encoder layer of the model (the default backbone unless --model), eager against
`torch.compile(dynamic=True)`: a stage sees a new (rows, tokens) shape at almost every pass
(length groups, survivors compacted after each exit), so only a dynamic-shape compile could
serve it. Passes of the shapes below run interleaved, eager and compiled, --rounds times; the
compile time (first calls, both warm-up shapes) is reported beside the per-pass saving, so
the run length at which compiling pays can be read off.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from transformers import AutoModel
from transformers.masking_utils import create_bidirectional_mask

from offramp.models.checkpoint import default_base_model

SHAPES = [(64, 48), (40, 48), (64, 96), (17, 33), (64, 40), (9, 120)]  # (rows, tokens) as a stage's passes vary


def inputs(config, rows: int, tokens: int, device, dtype):
    hidden = torch.randn(rows, tokens, config.hidden_size, device=device, dtype=dtype)
    mask = torch.ones(rows, tokens, dtype=torch.long, device=device)
    mask[: rows // 2, tokens - tokens // 4:] = 0  # half the rows padded, as in a length group
    return hidden, create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask)


def timed(fn, args, reps: int, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a Hugging Face BERT directory (default: the shipped MiniLM-L6)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=0, help="torch threads on a CPU (0: torch's default)")
    p.add_argument("--reps", type=int, default=5, help="passes per shape per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/compile_cpu.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = AutoModel.from_pretrained(args.model or default_base_model()).to(device, dtype).eval()
    layer = model.encoder.layer[len(model.encoder.layer) // 2]
    cases = [inputs(model.config, rows, tokens, device, dtype) for rows, tokens in SHAPES]
    with torch.inference_mode():
        t0 = time.perf_counter()
        compiled = torch.compile(layer, dynamic=True)
        for case in cases[:2]:
            compiled(*case)
        compile_s = time.perf_counter() - t0
        for case in cases:  # first calls of every shape: a recompile would show here, not in the rounds
            layer(*case)
            compiled(*case)
        rounds = []
        for _ in range(args.rounds):
            eager = sum(timed(layer, case, args.reps, device) for case in cases)
            fast = sum(timed(compiled, case, args.reps, device) for case in cases)
            rounds.append({"eager_s": eager, "compiled_s": fast, "speedup": eager / fast})
    speedups = sorted(r["speedup"] for r in rounds)
    saved = sum(r["eager_s"] for r in rounds) - sum(r["compiled_s"] for r in rounds)
    saved_per_pass = saved / len(rounds) / len(SHAPES)
    result = {
        "args": vars(args), "shapes": SHAPES, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "compile_seconds": compile_s, "rounds": rounds, "median_speedup": speedups[len(speedups) // 2],
        "saved_seconds_per_layer_pass": saved_per_pass,
        # how many layer passes of these shapes the compile time buys back (inf: it never pays)
        "passes_to_pay_back": compile_s / saved_per_pass if saved_per_pass > 0 else float("inf"),
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("compile_seconds", "median_speedup", "passes_to_pay_back")}, indent=1))


if __name__ == "__main__":
    main()
