"""How many tokenize tasks Ray Data runs at once beside one GPU stage actor (issue 15).

    .venv/bin/python benchmarks/feed_concurrency.py --cpus 16 [--reservation 0.5 | --no-reservation]

On the H200 the tokenize step of the 1M-row runs took 258 CPU-seconds in 32 s of wall: about 8
tasks at once on a 16-core node, while the stage waited for rows (BENCHMARKS.md, "GPU"). This
builds the same plan with the work taken out, so that only Ray Data's scheduling decides: a
local Ray with `--cpus` CPUs and one GPU (declared, not used), blocks of 4,807 rows, a
"tokenize" task that sleeps as long as one took there (1.2 s) with `num_cpus=1` and the
concurrency offramp sets (the node's cores), one actor holding the GPU, and a finalize task. It
prints how many tokenize tasks ran at once, over the run and per 2-second bin. On a 2-core
machine the processes' own start-up adds to what is seen; run it on the GPU node.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import ray
from ray.data import ActorPoolStrategy, DataContext

TASK_SECONDS = 1.2  # one tokenize task of a 4,807-row block on the H200
BLOCK_ROWS = 4807


def concurrency(spans: list[tuple[float, float]], bin_s: float = 2.0) -> tuple[int, float, list[float]]:
    """(most at once, mean at once over the first start to the last end, mean at once per bin)."""
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = most = 0
    area, last = 0.0, points[0][0]
    for t, step in points:
        area += now * (t - last)
        last, now = t, now + step
        most = max(most, now)
    t0, t1 = spans[0][0], max(e for _, e in spans)
    bins = [0.0] * (int((t1 - t0) // bin_s) + 1)
    for s, e in spans:
        for b in range(int((s - t0) // bin_s), int((e - t0) // bin_s) + 1):
            lo = t0 + b * bin_s
            bins[b] += max(0.0, min(e, lo + bin_s) - max(s, lo)) / bin_s
    return most, area / (t1 - t0), bins


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpus", type=int, default=16, help="the local Ray's CPUs (the GPU node's cores)")
    p.add_argument("--blocks", type=int, default=240)
    p.add_argument("--reservation", type=float, default=None, help="DataContext.op_resource_reservation_ratio")
    p.add_argument("--no-reservation", action="store_true", help="op_resource_reservation_enabled = False")
    p.add_argument("--tokenize-cpus", type=float, default=1.0,
                   help="num_cpus of a tokenize task (offramp asks 1.0 beside GPU stages)")
    p.add_argument("--policies", default=None,
                   help="comma-separated Ray Data backpressure policies to keep (e.g. "
                        "ResourceBudgetBackpressurePolicy); '' keeps none; default: Ray Data's")
    p.add_argument("--out", default=None, help="write the figures here as JSON")
    args = p.parse_args()
    log = tempfile.mkdtemp(prefix="feed_")
    ray.init(num_cpus=args.cpus, num_gpus=1, include_dashboard=False, log_to_driver=False)
    ctx = DataContext.get_current()
    if args.reservation is not None:
        ctx.op_resource_reservation_ratio = args.reservation
    if args.no_reservation:
        ctx.op_resource_reservation_enabled = False
    if args.policies is not None:
        from ray.data._internal.execution import backpressure_policy  # a diagnosis: Ray Data's internal names

        kept = [getattr(backpressure_policy, name) for name in args.policies.split(",") if name]
        ctx.set_config(backpressure_policy.ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, kept)

    def tokenize(batch):
        start = time.time()
        time.sleep(TASK_SECONDS)
        with open(os.path.join(log, f"{os.getpid()}_{start}"), "w") as f:
            f.write(f"{start} {time.time()}")
        return batch

    class Stage:  # the GPU stage: fast beside the feed (a 4,096-row call took ~100 ms there)
        def __call__(self, batch):
            time.sleep(0.1 * len(batch["id"]) / 4096)
            return batch

    ds = ray.data.range(BLOCK_ROWS * args.blocks, override_num_blocks=args.blocks)
    ds = ds.map_batches(tokenize, batch_size=BLOCK_ROWS, num_cpus=args.tokenize_cpus, concurrency=args.cpus,
                        batch_format="numpy")
    ds = ds.map_batches(Stage, batch_size=4096, compute=ActorPoolStrategy(min_size=1, max_size=1), num_gpus=1,
                        num_cpus=1, batch_format="numpy")
    ds = ds.map_batches(lambda b: {"id": b["id"]}, num_cpus=0.25, batch_format="numpy")
    t0 = time.time()
    rows = sum(len(b["id"]) for b in ds.iter_batches(batch_size=None))
    wall = time.time() - t0
    spans = []
    for name in os.listdir(log):
        with open(os.path.join(log, name)) as f:
            spans.append(tuple(map(float, f.read().split())))
    spans.sort()
    most, mean, bins = concurrency(spans)
    ideal = args.blocks * TASK_SECONDS / max(1, args.cpus - 1)
    figures = dict(cpus=args.cpus, rows=rows, wall_s=round(wall, 1), tasks=len(spans), most_at_once=most,
                   mean_at_once=round(mean, 2), per_2s_bin=[round(b, 1) for b in bins],
                   reservation=None if args.no_reservation else ctx.op_resource_reservation_ratio,
                   tokenize_cpus=args.tokenize_cpus, policies=args.policies,
                   tokenize_span_s=round(spans[-1][1] - spans[0][0], 1),
                   span_with_cpus_minus_1_at_once_s=round(ideal, 1))
    print(json.dumps(figures))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=1)
    ray.shutdown()
    assert rows == BLOCK_ROWS * args.blocks and np.isfinite(mean)


if __name__ == "__main__":
    main()
