"""What an exit costs inside a stage call, outside Ray: one stage holding every layer, with exits
and at full depth, on the same rows in the pipeline's batches, timed per row-layer computed.

    python benchmarks/stage_efficiency.py --model MODEL_DIR [--rows 1024 --batch-size 64 --threads 1]

Rows are tokenized and sorted by length in blocks of 256, as the tokenize step sends them, then
cut into stage batches. Three alternating rounds; the best of each. Efficiency = (full-depth time
/ exits time) / (full-depth row-layers / exits row-layers): 1.0 when a row-layer costs the same
with exits as without, i.e. when exits add nothing but the layers they save.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from offramp.exits.stage import StageSpec  # noqa: E402
from offramp.models.checkpoint import read_config  # noqa: E402
from offramp.tasks import get_task, tokenize_step  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data/debian_sections/dev.parquet")
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="a JSON file for the figures")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t = pq.read_table(args.data, columns=["id", "text", "label"]).slice(0, args.rows)
    tok = tokenize_step({c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names}, "sequence", args.model,
                        args.max_length)
    n = len(tok["_num_tokens"])
    blocks = np.array_split(np.arange(n), max(1, n // 256))
    order = np.concatenate([b[np.argsort(tok["_num_tokens"][b], kind="stable")] for b in blocks])
    tok = {k: v[order] for k, v in tok.items()}
    batches = [{k: v[i:i + args.batch_size] for k, v in tok.items()} for i in range(0, n, args.batch_size)]
    layers = read_config(args.model).num_hidden_layers
    runner_cls = get_task("sequence").runner_cls()
    runners = {exits: runner_cls(args.model, StageSpec(0, 0, layers, device="cpu", exits_enabled=exits))
               for exits in (True, False)}
    for runner in runners.values():
        runner(dict(batches[0]))  # warm-up
    runs = {True: [], False: []}
    for _ in range(args.rounds):
        for exits, runner in runners.items():
            t0, row_layers = time.perf_counter(), 0
            for b in batches:
                row_layers += runner(dict(b))[1].row_layers
            runs[exits].append((time.perf_counter() - t0, row_layers))
    (ta, la), (tb, lb) = min(runs[True]), min(runs[False])
    out = {"rows": n, "batch_size": args.batch_size, "threads": args.threads,
           "exits_s": ta, "exits_row_layers": la, "full_s": tb, "full_row_layers": lb,
           "ms_per_row_layer_exits": 1e3 * ta / la, "ms_per_row_layer_full": 1e3 * tb / lb,
           "time_ratio": tb / ta, "row_layer_ratio": lb / la, "efficiency": (tb / ta) / (lb / la),
           "all_runs": {"exits": runs[True], "full": runs[False]}}
    print(json.dumps({k: v for k, v in out.items() if k != "all_runs"}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
