"""Padding of the stage's forward passes, counted, not timed: how many token positions (and
attention cells) the first layer computes per real token, for tokenize blocks sliced into stage
batches in file order, with and without sorting each block by length.

    python benchmarks/padding.py --model MODEL_DIR --data ../shared/data/debian_sections/test.parquet

Each stage batch is cut into passes by `offramp.exits.stage.forward_groups` (the stage's own
rule), and a pass computes rows x its longest row. Deterministic: it needs no quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import pyarrow.parquet as pq

from offramp import schema
from offramp.exits.stage import forward_groups
from offramp.tasks import tokenize_step


def padding(lengths: np.ndarray, block: int, batch: int, max_tokens: int, by_length: bool) -> dict:
    """Padded tokens and attention cells over real ones, for blocks of `block` rows (sorted when
    `by_length`) sliced into stage batches of `batch` rows."""
    padded = cells = 0
    for start in range(0, len(lengths), block):
        rows = lengths[start:start + block]
        rows = np.sort(rows, kind="stable") if by_length else rows
        for b in range(0, len(rows), batch):
            part = rows[b:b + batch]
            for group in forward_groups(part, max_tokens):
                longest = int(part[group].max())
                padded += len(group) * longest
                cells += len(group) * longest * longest
    return {"tokens": padded / int(lengths.sum()), "attention": cells / int((lengths.astype(np.int64) ** 2).sum())}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model directory (its tokenizer is used)")
    p.add_argument("--data", default="../shared/data/debian_sections/test.parquet")
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--max-tokens", type=int, default=4096, help="the CPU stage's pass budget")
    p.add_argument("--out", help="write the figures here as JSON")
    args = p.parse_args()
    texts = pq.read_table(args.data, columns=["text"])["text"].to_numpy(zero_copy_only=False)
    batch = {"id": np.arange(len(texts)).astype(str).astype(object), "text": texts}
    lengths = tokenize_step(batch, "sequence", args.model, args.max_length)[schema.NUM_TOKENS]  # as the pipeline counts
    rows = []
    print(f"{len(lengths)} rows, {lengths.mean():.1f} tokens on average (max_length {args.max_length})")
    print("| tokenize block | stage batch | sorted | padded / real tokens | attention cells / real |")
    print("|---|---|---|---|---|")
    for block, batch in ((256, 64), (256, 256), (1024, 64)):
        for by_length in (False, True):
            r = padding(lengths, block, batch, args.max_tokens, by_length)
            rows.append({"block": block, "batch": batch, "by_length": by_length, **r})
            print(f"| {block} | {batch} | {'yes' if by_length else 'no'} | {r['tokens']:.3f} | {r['attention']:.3f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": len(lengths), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
