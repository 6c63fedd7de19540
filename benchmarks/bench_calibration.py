"""Does the calibration guarantee hold? Repeated random calibration / test splits of one dataset.

    python benchmarks/bench_calibration.py --model DIR --data ../shared/data/debian_sections/test.parquet

One full-depth pass gives every head's logits for every row (cached in OUT/logits.npz).
Then, for each target and each of --splits random splits into --calib-rows calibration
rows and the rest as test rows: calibrate on the calibration rows (offramp.quality.calibration,
the code jobs/calibrate.py runs), then measure the chosen threshold's risk on the test
rows. The guarantee promises a violation (test risk over the target) in at most about
1 - confidence of the splits, up to the test split's own sampling noise. For contrast,
the same splits with the threshold chosen on observed risk alone (hand-sweeping).
Writes OUT/calibration_check.json and OUT/calibration_check.png; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from transformers import BertConfig  # noqa: E402

from offramp.quality import calibration
from pipelines.calibrate import head_logits_for  # noqa: E402
from offramp.policies import get_policy  # noqa: E402


def load_logits(model: str, data: str, text_column: str, label_column: str, max_length: int, cache: str):
    if os.path.exists(cache):
        d = np.load(cache)
        return d["logits"], d["gold"]
    cfg = BertConfig.from_pretrained(model)
    t = pq.read_table(data, columns=[text_column, label_column]).to_pylist()
    rows = [r for r in t if isinstance(r[text_column], str) and r[text_column].strip()]
    t0 = time.perf_counter()
    logits = head_logits_for(model, [r[text_column] for r in rows], max_length)
    print(f"full-depth pass over {len(rows)} rows: {time.perf_counter() - t0:.0f} s", flush=True)
    gold = np.array([cfg.label2id.get(str(r[label_column]), -1) for r in rows])
    np.savez(cache, logits=logits, gold=gold)
    return logits, gold


def parse_target(text: str, confidence: float) -> calibration.Target:
    mode, _, value = text.partition(":")
    return calibration.Target(mode, float(value), confidence)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--calib-rows", type=int, default=2000)
    p.add_argument("--splits", type=int, default=500)
    p.add_argument("--confidence", type=float, default=0.9)
    p.add_argument("--targets", default="agreement:0.95,agreement:0.97,accuracy:0.01,accuracy:0.02")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    logits, gold = load_logits(
        args.model, args.data, args.text_column, args.label_column, args.max_length, os.path.join(args.out, "logits.npz")
    )
    cfg = BertConfig.from_pretrained(args.model)
    policy, layers = get_policy(cfg.exit_policy), list(cfg.exit_layers)
    rng = np.random.default_rng(0)
    results = []
    for spec in args.targets.split(","):
        target = parse_target(spec, args.confidence)
        test_risk, naive_risk, speed, naive_speed, test_speed, uncertified = [], [], [], [], [], 0
        t0 = time.perf_counter()
        for _ in range(args.splits):
            idx = rng.permutation(len(gold))
            cal_i, test_i = idx[: args.calib_rows], idx[args.calib_rows :]
            cal = calibration.calibrate(logits[cal_i], layers, policy, target, gold[cal_i])
            uncertified += not cal.certified
            naive = calibration.naive_choice(cal.curve, target)
            ev = calibration.evaluate(logits[test_i], layers, policy, cal.point["threshold"], target, gold[test_i])
            evn = calibration.evaluate(logits[test_i], layers, policy, naive["threshold"], target, gold[test_i])
            test_risk.append(ev["risk"])
            naive_risk.append(evn["risk"])
            speed.append(cal.point["ideal_speedup"])
            test_speed.append(ev["ideal_speedup"])
            naive_speed.append(evn["ideal_speedup"])
        test_risk, naive_risk = np.array(test_risk), np.array(naive_risk)
        rec = {
            "target": spec,
            "describe": target.describe(),
            "confidence": args.confidence,
            "promised_violation_rate": 1 - args.confidence,
            "violation_rate": float((test_risk > target.max_risk).mean()),
            "naive_violation_rate": float((naive_risk > target.max_risk).mean()),
            "uncertified_splits": uncertified,
            "mean_test_risk": float(test_risk.mean()),
            "p90_test_risk": float(np.quantile(test_risk, 0.9)),
            "mean_ideal_speedup_calib": float(np.mean(speed)),
            "mean_ideal_speedup_test": float(np.mean(test_speed)),
            "naive_mean_ideal_speedup_test": float(np.mean(naive_speed)),
            "test_risk": test_risk.tolist(),
            "naive_test_risk": naive_risk.tolist(),
            "seconds": time.perf_counter() - t0,
        }
        results.append(rec)
        print(f"{spec}: violations {rec['violation_rate']:.3f} (promised <= {1 - args.confidence:.2f}), "
              f"naive {rec['naive_violation_rate']:.3f}; speed-up {rec['mean_ideal_speedup_test']:.2f}x "
              f"vs naive {rec['naive_mean_ideal_speedup_test']:.2f}x ({rec['seconds']:.0f} s)", flush=True)
    meta = {"model": args.model, "data": args.data, "rows": int(len(gold)), "calib_rows": args.calib_rows,
            "splits": args.splits, "max_length": args.max_length,
            "full_depth_accuracy": float((logits[:, -1].argmax(-1) == gold).mean())}
    with open(os.path.join(args.out, "calibration_check.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    figure(results, os.path.join(args.out, "calibration_check.png"))
    print("\n| target | violations (test split) | promised | hand-sweeping violations | ideal speed-up (test) | hand-sweeping speed-up | mean test risk |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        scale = 100
        print(f"| {r['describe']} | {r['violation_rate']:.1%} | ≤ {r['promised_violation_rate']:.0%} | "
              f"{r['naive_violation_rate']:.1%} | {r['mean_ideal_speedup_test']:.2f}× | "
              f"{r['naive_mean_ideal_speedup_test']:.2f}× | {scale * r['mean_test_risk']:.2f} |")


def figure(results, path):
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.4))
    for ax, r in zip(np.atleast_1d(axes), results):
        target = float(r["target"].split(":")[1])
        limit = 100 * (1 - target if r["target"].startswith("agreement") else target)
        ax.hist(100 * np.array(r["test_risk"]), bins=30, alpha=0.7, label="calibrated (LTT)")
        ax.hist(100 * np.array(r["naive_test_risk"]), bins=30, alpha=0.5, label="hand-sweeping")
        ax.axvline(limit, color="k", ls="--", lw=1, label="target")
        ax.set_title(r["describe"], fontsize=9)
        ax.set_xlabel("test-split risk (points)" if "accuracy" in r["target"] else "test-split disagreement (%)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
