"""Tokenize step throughput on one core: ids with character offsets (encode_batch) against ids
alone (encode_batch_fast, what the step uses), interleaved, on real texts.

    python benchmarks/tokenize_speed.py --model MODEL_DIR [--data ../shared/data/debian_sections/train.parquet]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core, as in a Ray tokenize task
os.environ["RAYON_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from offramp.tasks import tokenize_step  # noqa: E402
from offramp.text.tokenize import load_tokenizer  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data/debian_sections/train.parquet")
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    t = pq.read_table(args.data, columns=["id", "text"]).slice(0, args.rows)
    batch = {c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names}
    tok = load_tokenizer(args.model)
    ways = {"encode_batch (with offsets)": tok.tok.encode_batch, "encode_batch_fast (ids only)": tok._encode}
    times = {k: [] for k in ways}
    ids = {}
    for _ in range(args.repeat):
        for name, fn in ways.items():
            tok._encode = fn
            t0 = time.perf_counter()
            out = tokenize_step(dict(batch), "sequence", args.model, args.max_length)
            times[name].append(time.perf_counter() - t0)
            ids[name] = [bytes(x) for x in out["_tokens"]]
    same = ids["encode_batch (with offsets)"] == ids["encode_batch_fast (ids only)"]
    for name, ts in times.items():
        print(f"{name:30s} {args.rows / np.median(ts):8.0f} docs/s on one core (median of {args.repeat})")
    a, b = (np.median(v) for v in times.values())
    print(f"ids-only / with offsets: {a / b:.2f}x; identical tokens: {same}")


if __name__ == "__main__":
    main()
