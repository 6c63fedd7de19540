"""How much of the exit profile's ideal the stage itself realizes, without Ray, per stage batch size.

    .venv/bin/python benchmarks/stage_batch_size.py --model MODEL_DIR --batch-size 64 [--rows 512]

The first `--rows` dev rows are tokenized and sorted by length (as the pipeline's tokenize blocks
are), cut into stage batches of `--batch-size` rows, and run through the sequence stage's runner
with exits and at full depth, alternating, best of `--rounds`. It prints both times, the realized
speed-up, the row-layer ideal, and whether both runs gave every row the labels it gets in one call
with exits (batch invariance across the batch sizes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from offramp import schema  # noqa: E402
from offramp.exits.stage import StageSpec  # noqa: E402
from offramp.models.checkpoint import read_config  # noqa: E402
from offramp.tasks import get_task, tokenize_step  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data/debian_sections/dev.parquet")
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t = pq.read_table(args.data, columns=["id", "text", "label"]).slice(0, args.rows)
    tok = tokenize_step({c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names}, "sequence", args.model,
                        args.max_length)
    order = np.argsort(tok[schema.NUM_TOKENS], kind="stable")
    tok = {k: v[order] for k, v in tok.items()}
    batches = [{k: v[s:s + args.batch_size] for k, v in tok.items()} for s in range(0, args.rows, args.batch_size)]
    L = read_config(args.model).num_hidden_layers
    runner_cls = get_task("sequence").runner_cls()
    runners = {e: runner_cls(args.model, StageSpec(0, 0, L, device="cpu", max_tokens=None, exits_enabled=e))
               for e in (True, False)}
    one_call = runners[True](dict(tok))[0][schema.LABEL_ID]
    best, layers, same = {True: [], False: []}, {}, True
    for _ in range(args.rounds):
        for exits, runner in runners.items():
            t0, row_layers, labels = time.perf_counter(), 0, []
            for b in batches:
                out, stats = runner(dict(b))
                row_layers += stats.row_layers
                labels.append(out[schema.LABEL_ID])
            best[exits].append(time.perf_counter() - t0)
            layers[exits] = row_layers
            if exits:
                same &= bool(np.array_equal(np.concatenate(labels), one_call))
    a, b = min(best[True]), min(best[False])
    ideal = layers[False] / layers[True]
    print(f"batch {args.batch_size}, {args.rows} rows: exits {a:.2f} s, full depth {b:.2f} s -> {b / a:.2f}x of an "
          f"ideal {ideal:.2f}x ({b / a / ideal:.1%}); exit labels equal one call's: {same}")


if __name__ == "__main__":
    main()
