"""Where a stage actor's start-up goes: the imports and the device, each in a fresh process, and
an actor's start under Ray (issue 15: a GPU run's stage actor took ~12 s to start).

    python benchmarks/startup_probe.py [--device cuda] [--repeat 2]

Each line is the median of --repeat fresh processes (the first also reads the files from disk).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

STEPS = {
    "python alone": "pass",
    "import torch": "import torch",
    "import transformers": "import transformers",
    "import torch + transformers": "import torch, transformers",
    "import offramp stage code": "import offramp.exits.stage, offramp.tasks, offramp.models.sequence",
    # what a stage actor's process imports since stop 37 (lean modules: no transformers modeling code),
    # and the stock modules it imported before, for the difference
    "import a stage actor (lean)": "import actors.rebatch, offramp.exits.sequence_shard",
    "import transformers' BERT modeling (stock)": "import transformers.models.bert.modeling_bert",
    "import tokenize step (no torch)": "import offramp.tasks.sequence",
    "import torch + first CUDA tensor": "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()",
}


def fresh(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    return time.perf_counter() - t0


class Probe:
    def __init__(self, heavy: bool, device: str):
        self.t = time.time()
        if heavy:
            import torch

            import offramp.exits.stage  # noqa: F401

            if device == "cuda":
                torch.zeros(1, device="cuda")
        self.ready = time.time()

    def times(self):
        return self.t, self.ready


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    out = {}
    for name, code in STEPS.items():
        if "cuda" in code and args.device != "cuda":
            continue
        runs = [fresh(code) for _ in range(args.repeat)]
        out[name] = runs
        print(f"{name:36s} " + "  ".join(f"{r:6.2f} s" for r in runs), flush=True)
    import ray

    ray.init(address="local", include_dashboard=False, num_gpus=1 if args.device == "cuda" else 0)
    for heavy in (False, True):
        for k in range(args.repeat):
            opts = {"num_gpus": 1} if args.device == "cuda" and heavy else {}
            t0 = time.time()
            a = ray.remote(Probe).options(**opts).remote(heavy, args.device)
            began, ready = ray.get(a.times.remote())
            name = f"ray actor {'with torch + stage code' if heavy else 'empty'} #{k}"
            out[name] = {"to_init": began - t0, "init": ready - began, "total": time.time() - t0}
            print(f"{name:36s} process start {began - t0:6.2f} s, __init__ {ready - began:6.2f} s", flush=True)
            ray.kill(a)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
