"""What carrying survivors' states between the stages of one rebatching actor costs: as blobs on
the host (`BlobCarry`, what crosses between actors) or kept on the device (`DeviceCarry`).

    python benchmarks/bench_carry.py --out benchmarks/results/carry_cpu.json
    python benchmarks/bench_carry.py --device cuda --out benchmarks/results/gpu/carry.json

Each case stores one pass's survivors (`put`) and reads them back as the next pass would
(`get`): all of them in order, and a reordered half of two passes, as merged passes read. The
fastest of --reps repetitions per case, in milliseconds. `offramp.exits.rebatch.Rebatcher`
keeps states on the device only off the CPU; this is the measurement behind that choice.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from offramp.exits.rebatch import DeviceCarry
from offramp.exits.stage import BlobCarry

CASES = [(64, 64, 384), (16, 128, 384), (256, 64, 32), (512, 128, 768)]  # (survivors, tokens, hidden)


def round_trip(carry, states, lengths, device) -> None:
    """One pass's survivors stored and read back whole, in order."""
    carry.get(carry.put(states, lengths), lengths.numpy(), device)


def merged(carry, states, lengths, device) -> None:
    """Two passes stored; the next pass reads half of each, reversed, then the rest is released."""
    n = len(lengths)
    values = np.concatenate([carry.put(states, lengths), carry.put(states, lengths)])
    pick = np.concatenate([np.arange(0, n, 2), n + np.arange(0, n, 2)])[::-1].copy()
    carry.get(values[pick], lengths.numpy()[pick % n], device)
    carry.release(values)


def best_ms(fn, reps: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 1e3 * best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--carry-dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (a stage actor's own)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results/carry_cpu.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    rows = []
    for survivors, tokens, hidden in CASES:
        states = torch.randn(survivors, tokens, hidden, generator=g).to(device)
        lengths = torch.randint(8, tokens + 1, (survivors,), generator=g)
        lengths[0] = tokens
        row = {"survivors": survivors, "tokens": tokens, "hidden": hidden}
        for name, carry in (("blobs", BlobCarry(hidden, args.carry_dtype)), ("device", DeviceCarry(args.carry_dtype))):
            for case, fn in (("put_get", round_trip), ("two_passes_merged", merged)):
                once = functools.partial(fn, carry, states, lengths, device)
                row[f"{name}_{case}_ms"] = best_ms(once, args.reps, device)
        rows.append(row)
        print(row)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "torch": torch.__version__, "cases": rows}, f, indent=1)


if __name__ == "__main__":
    main()
