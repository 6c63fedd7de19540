"""Whose CPU a tagging run spends, per process kind: exits against full depth on the same rows
(issue 15, BENCHMARKS.md "A process per core").

    python benchmarks/pipeline_cpu.py --model MODEL_DIR --out OUT [--repeat 2] [--rounds 2]

Runs `bench_tagging`'s (a) and (b) in turn (`--rounds` times), each in its own embedded Ray, sampling every Ray process's CPU
time (psutil, every 0.5 s) and grouping it by the process's Ray title (the stage actors, idle and
task workers, Ray's own actors, raylet, GCS) and the driver. Prints CPU seconds per 1,000 rows.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402

from bench_tagging import input_rows, offramp_variant  # noqa: E402
from sampling import Sampling  # noqa: E402


def kind(p: psutil.Process) -> str | None:
    """A process's group: Ray's title for workers ("worker:MapWorker(...)"), its daemons, the driver."""
    try:
        line = " ".join(p.cmdline())
    except psutil.Error:
        return None
    if p.pid == os.getpid():
        return "driver"
    if "raylet" in line:
        return "raylet"
    if "gcs_server" in line:
        return "gcs"
    if "ray::" in line:
        return "worker:" + line.split("ray::")[1].split(" ")[0]
    if "default_worker" in line:
        return "worker:booting"
    if any(d in line for d in ("dashboard", "log_monitor", "monitor.py", "runtime_env")):
        return "ray-other"
    return None


def cpu(p: psutil.Process) -> float | None:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


class CpuSampler(Sampling):
    """CPU seconds each process spent while the block ran, by `kind` (the last sample of a process
    that ended counts)."""

    def __init__(self):
        self.base = {p.pid: cpu(p) or 0.0 for p in psutil.process_iter() if kind(p)}
        self.last: dict[int, tuple[str, float]] = {}

    def sample(self) -> None:
        for p in psutil.process_iter():
            k, c = kind(p), cpu(p)
            if k and c is not None:
                self.last[p.pid] = (k, c)

    def by_kind(self) -> dict[str, float]:
        out = collections.Counter()
        for pid, (k, c) in self.last.items():
            out[k.split(".")[0]] += c - self.base.get(pid, 0.0)  # ".submit" threads' titles fold into the actor's
        return dict(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data/debian_sections/test.parquet")
    p.add_argument("--repeat", type=int, default=2, help="the data's rows this many times over")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--out", required=True)
    p.add_argument("--exits-only", action="store_true", help="only (a): what a change to the feed costs per row")
    p.add_argument("--tag", default="", help="a label written with each line (an A/B's side)")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(args.out, exist_ok=True)
    data = os.path.join(args.out, "bench_input.parquet")
    pq.write_table(input_rows(args.data, 0, args.repeat), data)
    opts = SimpleNamespace(model=args.model, max_length=args.max_length, batch_size=64, num_stages=1, rebatch=0,
                           dtype="float32", actors=0)
    with open(os.path.join(args.out, "pipeline_cpu.jsonl"), "a") as f:
        for _ in range(args.rounds):
            for exits in (True, False)[: 1 if args.exits_only else 2]:
                with CpuSampler() as sampler:  # each variant in its own embedded Ray, as a user's run, its start included
                    r = offramp_variant("a_offramp_exits" if exits else "b_offramp_full_depth", opts, data, args.out,
                                        exits=exits)
                    ray.shutdown()
                per_1k = {k: round(1000 * v / r["rows"], 3) for k, v in sorted(sampler.by_kind().items(),
                                                                               key=lambda kv: -kv[1])}
                line = json.dumps({"tag": args.tag, "exits": exits, "total_cpu_s_per_1k_rows": round(sum(per_1k.values()), 3), "rows": r["rows"], "docs_per_s": r["docs_per_s"], "wall_s": r["wall_s"],
                                   "stage_busy_s": r["stage_busy_s"], "accuracy": r["accuracy"],
                                   "cpu_s_per_1k_rows": per_1k})
                print(line, flush=True)
                f.write(line + "\n")


if __name__ == "__main__":
    main()
