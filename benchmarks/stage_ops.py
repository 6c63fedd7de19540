"""Torch operators and time of one stage call at full depth, without Ray: a count that does not
drift with the machine, beside a best-of-N time.

    python benchmarks/stage_ops.py --model DIR [--rows 1024] [--threads 1]

One stage holding every layer, exits disabled, on the first `--rows` dev rows tokenized as the
pipeline does; prints the aten operators one call runs and its best wall time over `--repeat`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from offramp.exits.stage import StageSpec  # noqa: E402
from offramp.models.checkpoint import read_config  # noqa: E402
from offramp.tasks import get_task, tokenize_step  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data/debian_sections/dev.parquet")
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t = pq.read_table(args.data, columns=["id", "text", "label"]).slice(0, args.rows)
    batch = {c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names}
    tok = tokenize_step(batch, "sequence", args.model, args.max_length, by_length=True)
    spec = StageSpec(0, 0, read_config(args.model).num_hidden_layers, exits_enabled=False, max_tokens=None)
    runner = get_task("sequence").runner_cls()(args.model, spec)
    runner(dict(tok))  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        runner(dict(tok))
    ops = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        runner(dict(tok))
        best = min(best, time.perf_counter() - t0)
    print(f"aten operators per call: {ops}; best of {args.repeat}, {args.threads} thread(s): {1e3 * best:.1f} ms "
          f"for {args.rows} rows")


if __name__ == "__main__":
    main()
