"""Stage actors on a local CPU: one actor per core on one thread each against one actor on all
cores' threads, the same rows, in turn (issue 15, BENCHMARKS.md "A process per core").

    python benchmarks/stage_actors_ab.py --out OUT [--actors 2,1,2,1]

The framework benchmark's setup (`bench_overhead.py`: the hidden-32 model, 100,000 debian_sections
rows in 16 files, max_length 128, 1,024-row batches, full depth); OUT holds its model and corpus
(built there if absent). One JSON line per run: docs/s, wall, stage busy seconds, start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ray  # noqa: E402

from bench_gpu import make_corpus, offramp_variant  # noqa: E402
from bench_overhead import tiny_model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--data-dir", default="../shared/data/debian_sections")
    p.add_argument("--actors", default="2,1,2,1", help="stage actors of each run, in order (threads: cores / actors)")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(args.out, exist_ok=True)
    model = tiny_model(args.out)
    data, _ = make_corpus(args.data_dir, args.out, args.rows, False)
    ray.init(address="local", num_cpus=8, include_dashboard=False)
    opts = SimpleNamespace(device="cpu", dtype="float32", ray_cpus=8, tokenize_batch_size=1024, out=args.out,
                           _layers={model: 6})
    with open(os.path.join(args.out, "actors_ab.jsonl"), "a") as f:
        for k, actors in enumerate(int(a) for a in args.actors.split(",")):
            r = offramp_variant(f"actors{actors}_{k}", model, data, os.path.join(args.out, "runs"), opts, 128, 1024,
                                False, actors=actors)
            line = json.dumps({"actors": actors, "docs_per_s": r["docs_per_s"], "wall_s": r["wall_s"],
                               "stage_busy_s": r["stage_busy_s"], "startup_s": r.get("startup_s"),
                               "accuracy": r["accuracy"]})
            print(line, flush=True)
            f.write(line + "\n")


if __name__ == "__main__":
    main()
