"""Stage batches cut from whole blocks vs per block (issue 15): the first stage's calls, busy
time and docs/s with and without `pipelines.run.aligned_to_stage_batches`, interleaved, on
the same rows, with the labels compared row by row.

    python benchmarks/stage_alignment.py --model MODEL_DIR --rows 100000 --batch-size 4096 [--repeat 2]

On the H200 the read's 4,807-row blocks made a 4,096-row and a 711-row call each (416 calls per
million rows); aligned, the stage gets ceil(rows / batch_size) calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402

import pipelines.run as run_module  # noqa: E402
from bench_gpu import make_corpus  # noqa: E402
from offramp.config import AuditConfig, MlflowConfig, RayConfig, StageConfig, TagConfig  # noqa: E402

ALIGNED = run_module.aligned_to_stage_batches


def run(args, data, aligned: bool, out: str) -> dict:
    run_module.aligned_to_stage_batches = ALIGNED if aligned else (lambda ds, plan: ds)
    cfg = TagConfig(input=data, model=args.model, output=out, overwrite=True, label_column="label",
                    max_length=args.max_length, batch_size=args.batch_size, stages=(StageConfig(),),
                    audit=AuditConfig(fraction=0.0), mlflow=MlflowConfig(enabled=False),
                    ray=RayConfig(num_cpus=args.num_cpus))
    t0 = time.perf_counter()
    m = run_module.run_tagging(cfg).metrics
    wall = time.perf_counter() - t0
    return {"aligned": aligned, "docs_per_s": m["rows"] / wall, "stage0_calls": m["stage0_batches"],
            "stage0_busy_s": m["stage0_busy_seconds"], "stage0_active_s": m.get("stage0_active_seconds"),
            "accuracy": m["accuracy"], "wall_s": wall}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--num-cpus", type=int, default=8)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--data-dir", default="../shared/data/debian_sections")
    p.add_argument("--out", default="/tmp/stage_alignment")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    data, _ = make_corpus(args.data_dir, args.out, args.rows, False)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    results = []
    for _ in range(args.repeat):
        for aligned in (False, True):
            results.append(run(args, data, aligned, os.path.join(args.out, f"out_{aligned}")))
            print(json.dumps(results[-1]), flush=True)
    labels = [pq.read_table(os.path.join(args.out, f"out_{a}"), columns=["id", "label"]).sort_by("id")
              for a in (False, True)]
    same = labels[0]["label"].to_pylist() == labels[1]["label"].to_pylist()
    print(json.dumps({"identical_labels": same, "runs": results}, indent=1))
    with open(os.path.join(args.out, "stage_alignment.json"), "w") as f:
        json.dump({"args": vars(args), "identical_labels": same, "runs": results}, f, indent=1)


if __name__ == "__main__":
    main()
