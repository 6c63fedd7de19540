"""Training, calibration and the audit on the device they find: issue 15's "use the GPU when one is
present", run for real and timed, with the accuracy each step reached.

    python benchmarks/gpu_training.py --device cuda --base BASE_DIR --data-dir DIR --out OUT

1. train: `train_exits` as `jobs/train_exits.py --config conf/bench_sections_full.yaml --mechanism
   pabee --set policy=auto` runs it (the benchmark model's recipe), on --train-rows training rows;
   it certifies on its held-out rows on the same device.
2. calibrate: what `jobs/calibrate.py --dtype float16` does on a GPU (`head_logits_for`, then
   `certify_policies`), on every dev row. The job itself is not run because it logs to MLflow,
   which the lent machine lacks.
3. audit: `run_tagging` on the test split with an audit of --audit-fraction of the rows, whose
   full-depth pass runs in the GPU stage actor.

GPU utilisation (NVML) is sampled through each step. Writes OUT/gpu_training.json.
On CPU (the same command with --device cpu and a few hundred rows) it checks the script runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_gpu import GpuSampler  # noqa: E402
from offramp.config import (AuditConfig, CalibrateConfig, MlflowConfig, RayConfig, StageConfig,  # noqa: E402
                            TagConfig, load_config)
from offramp.exits.stage import TORCH_DTYPES  # noqa: E402
from offramp.models.checkpoint import ModelInfo  # noqa: E402
from offramp.policies import candidate_policies  # noqa: E402
from offramp.quality import calibration  # noqa: E402
from offramp.training import TrainConfig, save_trained, train_exits  # noqa: E402
from offramp.training.data import load_labeled  # noqa: E402
from offramp.training.loop import head_logits_for  # noqa: E402
from pipelines.run import run_tagging  # noqa: E402


def train(args) -> dict:
    split = os.path.join(args.data_dir, "{}.parquet")
    cfg = load_config(TrainConfig, args.config, {
        "train": split.format("train"), "eval": split.format("dev"), "output": os.path.join(args.out, "model"),
        "base_model": args.base, "mechanism": "pabee", "policy": "auto", "device": args.device,
        "max_train_rows": args.train_rows, "max_eval_rows": args.eval_rows,
    })
    with GpuSampler(args.device) as gpu:
        t0 = time.perf_counter()
        model, tokenizer, report = train_exits(cfg)
        seconds = time.perf_counter() - t0
    save_trained(model, tokenizer, report, cfg.output)
    full, chosen, cert = report.curve[0], report.chosen, report.calibration or {}
    return {
        "seconds": seconds, "device": cfg.torch_device(),  # trained there; train_exits hands the model back on the CPU
        "param_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
        "train_rows": args.train_rows, "max_length": cfg.max_length, "batch_size": cfg.batch_size,
        "dev_accuracy_full_depth": full["accuracy"], "dev_accuracy_exits": chosen["accuracy"],
        "dev_mean_layers": chosen["mean_layers"], "dev_ideal_speedup": chosen["ideal_speedup"],
        "certified_rows": cert.get("rows"), "certified_ideal_speedup": cert.get("ideal_speedup"),
        "certified_risk_bound": cert.get("risk_bound"), **gpu.report(),
    }


def calibrate(args, model_dir: str) -> dict:
    """jobs/calibrate.py's certification (`head_logits_for` on the GPU when there is one, then
    `certify_policies`), on every dev row, computing in --dtype."""
    info = ModelInfo.read(model_dir)
    texts, labels = load_labeled(os.path.join(args.data_dir, "dev.parquet"), "text", "label", args.eval_rows, 0,
                                 flag="--data")
    label2id = {n: i for i, n in enumerate(info.labels)}
    gold = np.array([label2id.get(v, -1) for v in labels])  # unseen labels count as errors, as in the job
    d = CalibrateConfig(max_accuracy_drop=0.01)  # jobs/calibrate.py's defaults
    target = calibration.Target("accuracy", d.max_accuracy_drop, d.confidence)
    with GpuSampler(args.device) as gpu:
        t0 = time.perf_counter()
        logits = head_logits_for(model_dir, texts, args.max_length, d.batch_size, args.dtype)  # on the host: synced
        pass_seconds = time.perf_counter() - t0
        choice = calibration.certify_policies(logits, gold, candidate_policies(info.policy, info.signal_modules),
                                              info.exit_layers, target, d.path, d.family_fraction, d.seed, d.points)
        seconds = time.perf_counter() - t0
    c = choice.calibration
    return {
        "rows": len(texts), "dtype": args.dtype, "seconds": seconds, "full_pass_seconds": pass_seconds,
        "full_pass_rows_per_s": len(texts) / pass_seconds, "policy": choice.policy, "certified": c.certified,
        "record": c.record() if c.certified else None, **gpu.report(),
    }


def audit(args, model_dir: str) -> dict:
    """The test split tagged on one GPU stage actor, --audit-fraction of it also at full depth."""
    cfg = TagConfig(
        input=os.path.join(args.data_dir, "test.parquet"), model=model_dir, output=os.path.join(args.out, "tagged"),
        overwrite=True, label_column="label", max_length=args.max_length, num_stages=1,
        stages=(StageConfig(num_gpus=1.0 if args.device == "cuda" else 0.0, dtype=args.dtype),),
        carry_dtype=args.dtype, audit=AuditConfig(fraction=args.audit_fraction), mlflow=MlflowConfig(enabled=False),
        ray=RayConfig(num_cpus=args.ray_cpus),  # a local Ray finds the GPU itself
    )
    with GpuSampler(args.device) as gpu:
        t0 = time.perf_counter()
        result = run_tagging(cfg)
        seconds = time.perf_counter() - t0
    m = result.metrics
    keep = ("rows", "accuracy", "mean_layers", "stage0_busy_seconds")
    return {"seconds": seconds, "docs_per_s_wall": m["rows"] / seconds, **{k: m[k] for k in keep if k in m},
            **{k: v for k, v in m.items() if k.startswith("audit_") and "layer" not in k}, **gpu.report()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--dtype", default="float16", choices=sorted(TORCH_DTYPES),
                   help="calibration's and the audit's compute")
    p.add_argument("--base", required=True, help="the backbone to train from (MiniLM-L6; any saved dtype)")
    p.add_argument("--config", default="conf/bench_sections_full.yaml")
    p.add_argument("--data-dir", default="../shared/data/debian_sections")
    p.add_argument("--train-rows", type=int, default=None, help="training rows (default: all 46,405)")
    p.add_argument("--eval-rows", type=int, default=None, help="dev rows (default: all)")
    p.add_argument("--max-length", type=int, default=96, help="calibration's and the audit's (the training config's)")
    p.add_argument("--audit-fraction", type=float, default=0.05)
    p.add_argument("--ray-cpus", type=int, default=os.cpu_count())
    p.add_argument("--steps", default="train,calibrate,audit")
    p.add_argument("--out", default="/tmp/gpu_training")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(args.out, exist_ok=True)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    res = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
           "torch": torch.__version__, "argv": sys.argv[1:]}
    path = os.path.join(args.out, "gpu_training.json")
    model_dir = os.path.join(args.out, "model")
    for step, fn in (("train", train), ("calibrate", lambda a: calibrate(a, model_dir)),
                     ("audit", lambda a: audit(a, model_dir))):
        if step not in args.steps.split(","):
            continue
        print(f"=== {step} {time.strftime('%T')}", flush=True)
        res[step] = fn(args)
        print(json.dumps(res[step], indent=1, default=str), flush=True)
        with open(path, "w") as f:  # after each step: a step cut short loses only itself
            json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
