"""One stage over a labeled corpus in float32 and in bfloat16, without Ray: speed, accuracy,
agreement between the dtypes, and batch invariance of exit decisions in each.

    python benchmarks/dtype_stage.py --model DIR --out benchmarks/results/issue15/bf16/stage.json

Every row goes through one stage holding all layers, in stage batches of `--batch-size` rows
(tokenized and sorted by length as the pipeline does), with the model's stored thresholds. The
runs alternate between the dtypes, so the machine's drift hits both. Batch invariance: the same
rows in batches of `--other-batch-size`, compared row by row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from offramp.exits.stage import StageSpec  # noqa: E402
from offramp.models.checkpoint import read_config  # noqa: E402
from offramp.tasks import finalize_step, get_task, tokenize_step  # noqa: E402


def tag(model: str, batch: dict, dtype: str, exits: bool, batch_size: int, max_length: int) -> tuple[dict, float]:
    """Every row through one stage of all layers -> (output columns sorted by id, seconds)."""
    config = read_config(model)
    labels = [config.id2label[i] for i in range(config.num_labels)]
    spec = StageSpec(0, 0, config.num_hidden_layers, dtype=dtype, device="cpu", max_tokens=None, exits_enabled=exits)
    runner = get_task("sequence").runner_cls()(model, spec)
    n, outs = len(batch["id"]), []
    t0 = time.perf_counter()
    for i in range(0, n, batch_size):
        tok = tokenize_step({k: v[i : i + batch_size] for k, v in batch.items()}, "sequence", model, max_length,
                            by_length=True)
        out, _ = runner(dict(tok))
        outs.append(finalize_step(dict(out), "sequence", labels, "id", [], "label"))
    seconds = time.perf_counter() - t0
    t = pa.concat_tables(outs)
    t = t.take(pa.compute.sort_indices(t, [("id", "ascending")]))
    return {c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names}, seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data/debian_sections/test.parquet")
    p.add_argument("--rows", type=int, default=0, help="first N rows (0 = all)")
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--other-batch-size", type=int, default=37)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t = pq.read_table(args.data, columns=["id", "text", "label"])
    t = t.slice(0, args.rows) if args.rows else t
    batch = {c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names}
    runs, out = {}, {"args": vars(args), "runs": {}}
    b, o = args.batch_size, args.other_batch_size
    order = [("float32", True, b), ("bfloat16", True, b), ("bfloat16", False, b), ("float32", False, b),
             ("bfloat16", True, o), ("float32", True, o)]
    for dtype, exits, size in order:
        name = f"{dtype}_{'exits' if exits else 'full'}_{size}"
        r, seconds = tag(args.model, batch, dtype, exits, size, args.max_length)
        runs[name] = r
        out["runs"][name] = {"seconds": seconds, "docs_per_s": len(r["id"]) / seconds,
                             "accuracy": float(np.mean(r["label"] == r["gold_label"])),
                             "mean_layers": float(np.mean(r["exit_layer"]))}
        print(name, out["runs"][name], flush=True)

    def same(a: str, b: str, column: str) -> dict:
        x, y = runs[a][column], runs[b][column]
        return {"share": float(np.mean(x == y)), "rows_differing": int(np.sum(x != y))}

    out["float32_vs_bfloat16"] = {"exits_label": same(f"float32_exits_{b}", f"bfloat16_exits_{b}", "label"),
                                  "exits_exit_layer": same(f"float32_exits_{b}", f"bfloat16_exits_{b}", "exit_layer"),
                                  "full_label": same(f"float32_full_{b}", f"bfloat16_full_{b}", "label")}
    out["batch_invariance"] = {d: {"label": same(f"{d}_exits_{b}", f"{d}_exits_{o}", "label"),
                                   "exit_layer": same(f"{d}_exits_{b}", f"{d}_exits_{o}", "exit_layer")}
                               for d in ("float32", "bfloat16")}
    print(json.dumps({k: v for k, v in out.items() if k not in ("args", "runs")}, indent=1))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
