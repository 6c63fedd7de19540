"""Does the calibration guarantee hold, and what speed does each certification method buy?

    python benchmarks/bench_calibration.py --model DIR --data ../shared/data/debian_sections/test.parquet \
        --dev ../shared/data/debian_sections/dev.parquet --max-length 96

One full-depth pass gives every head's logits for every row (cached in OUT/logits_*.npz).

1. Repeated splits (the guarantee). For each target, method and each of --splits random splits
   of --data into --calib-rows calibration rows and the rest as test rows: certify on the
   calibration rows (offramp.quality.calibration.certify, the code jobs/calibrate.py runs; the
   per-layer path spends its seeded 30% of them on shaping the path), then measure the chosen
   point's risk on the test rows. The guarantee promises a violation (test risk over the target)
   in at most about 1 - confidence of the splits, up to the test split's own sampling noise.
   Methods: global-union (one global threshold, the union bound of the first release),
   global (one threshold, exact tests), per-layer, auto, auto-policy (auto, with the policy
   also chosen on the family rows among every one the model can run, as `jobs/calibrate.py`
   does by default). For contrast, hand-sweeping: the
   fastest global threshold whose observed calibration risk meets the target.
2. Deployment (with --dev): certify on all of --dev, as `jobs/calibrate.py --data dev` does,
   and measure on all of --data: full-depth accuracy, the test drop and the ideal speed-up.

Writes OUT/calibration_check.json and OUT/calibration_check.png; prints Markdown tables.
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

from offramp.exits.simulate import HeadPass  # noqa: E402
from offramp.models.checkpoint import ModelInfo  # noqa: E402
from offramp.policies import candidate_policies, get_policy  # noqa: E402
from offramp.quality import calibration  # noqa: E402
from offramp.quality.stats import binomial_lower, binomial_upper  # noqa: E402
from pipelines.calibrate import head_logits_for  # noqa: E402

METHODS = ("global-union", "global", "per-layer", "auto", "auto-policy")


def load_logits(model: str, data: str, text_column: str, label_column: str, max_length: int, cache: str):
    if os.path.exists(cache):
        d = np.load(cache)
        return HeadPass(d["logits"], d["signal"] if "signal" in d else None, d["skipped"] if "skipped" in d else None), d["gold"]
    cfg = BertConfig.from_pretrained(model)
    t = pq.read_table(data, columns=[text_column, label_column]).to_pylist()
    rows = [r for r in t if isinstance(r[text_column], str) and r[text_column].strip()]
    t0 = time.perf_counter()
    hp = head_logits_for(model, [r[text_column] for r in rows], max_length)
    print(f"full-depth pass over {len(rows)} rows of {data}: {time.perf_counter() - t0:.0f} s", flush=True)
    gold = np.array([cfg.label2id.get(str(r[label_column]), -1) for r in rows])
    extra = {k: v for k, v in (("signal", hp.signal), ("skipped", hp.skipped)) if v is not None}
    np.savez(cache, logits=hp.logits, gold=gold, **extra)
    return hp, gold


def parse_target(text: str, confidence: float) -> calibration.Target:
    mode, _, value = text.partition(":")
    return calibration.Target(mode, float(value), confidence)


def union_bound_choice(cal: calibration.Calibration, target: calibration.Target) -> dict:
    """The first release's certification on the same global curve: Clopper-Pearson upper bound of
    p10 minus lower bound of p01, each at delta / 2, fixed sequence."""
    chosen = cal.curve[0]
    for p in cal.curve[1:]:
        bound = binomial_upper(p["n10"], cal.rows, target.delta / 2) - binomial_lower(p["n01"], cal.rows, target.delta / 2)
        if bound > target.max_risk:
            break
        chosen = p
    return chosen


def certify(method, hp, gold, policy, layers, target, seed, candidates):
    """(chosen point, Calibration, the policy it was certified for)."""
    if method == "global-union":
        cal = calibration.calibrate(hp, layers, policy, target, gold)
        return union_bound_choice(cal, target) if target.mode == "accuracy" else cal.point, cal, policy
    if method == "auto-policy":
        choice = calibration.certify_policies(hp, gold, candidates, layers, target, seed=seed)
        return choice.calibration.point, choice.calibration, candidates[choice.policy]
    cal = calibration.certify(hp, gold, policy, layers, target, method, seed=seed)
    return cal.point, cal, policy


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--dev", help="certify on all of these rows and measure on --data (the deployment figures)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--calib-rows", type=int, default=2000)
    p.add_argument("--splits", type=int, default=300)
    p.add_argument("--confidence", type=float, default=0.9)
    p.add_argument("--targets", default="agreement:0.95,accuracy:0.01,accuracy:0.02")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    hp, gold = load_logits(args.model, args.data, args.text_column, args.label_column, args.max_length,
                           os.path.join(args.out, f"logits_{os.path.basename(args.data)}.npz"))
    cfg = BertConfig.from_pretrained(args.model)
    policy, layers = get_policy(cfg.exit_policy), list(cfg.exit_layers)
    candidates = candidate_policies(cfg.exit_policy, ModelInfo.read(args.model).signal_modules)
    methods = args.methods.split(",")
    meta = {"model": args.model, "data": args.data, "rows": int(len(gold)), "calib_rows": args.calib_rows,
            "splits": args.splits, "max_length": args.max_length, "policy": policy.name,
            "full_depth_accuracy": float((hp.preds[:, -1] == gold).mean())}
    print(f"full-depth accuracy on {args.data}: {meta['full_depth_accuracy']:.4f}", flush=True)

    deployment = []
    if args.dev:
        dev_hp, dev_gold = load_logits(args.model, args.dev, args.text_column, args.label_column, args.max_length,
                                       os.path.join(args.out, f"logits_{os.path.basename(args.dev)}.npz"))
        meta["dev_rows"], meta["dev_full_depth_accuracy"] = int(len(dev_gold)), float((dev_hp.preds[:, -1] == dev_gold).mean())
        for spec in args.targets.split(","):
            target = parse_target(spec, args.confidence)
            for method in methods:
                point, cal, used = certify(method, dev_hp, dev_gold, policy, layers, target, 0, candidates)
                ev = calibration.evaluate(hp, layers, used, point["thresholds"], target, gold)
                deployment.append({
                    "target": spec, "method": method, "path": cal.path, "policy": used.name,
                    "certified": point is not cal.curve[0],
                    "dev_ideal_speedup": point["ideal_speedup"], "test_ideal_speedup": ev["ideal_speedup"],
                    "test_mean_layers": ev["mean_layers"], "test_risk": ev["risk"],
                    "test_accuracy": ev["accuracy"], "test_accuracy_full_depth": ev["accuracy_full_depth"],
                    "test_agreement": ev["agreement"], "thresholds": point["thresholds"],
                })
                d = deployment[-1]
                print(f"deploy {spec} {method} ({used.name}, {cal.path}): test {d['test_ideal_speedup']:.2f}x ideal, "
                      f"accuracy {d['test_accuracy']:.4f} vs {d['test_accuracy_full_depth']:.4f} full depth "
                      f"(drop {100 * (d['test_accuracy_full_depth'] - d['test_accuracy']):.2f} pt), "
                      f"agreement {d['test_agreement']:.4f}", flush=True)

    rng = np.random.default_rng(0)
    results = []
    for spec in args.targets.split(","):
        target = parse_target(spec, args.confidence)
        splits = [rng.permutation(len(gold)) for _ in range(args.splits)]
        for method in methods + ["hand-sweeping"]:
            if method == "global-union" and target.mode != "accuracy":
                continue
            risk, whole, speed, uncertified, t0 = [], [], [], 0, time.perf_counter()
            chosen = {}
            for s, idx in enumerate(splits):
                cal_i, test_i = idx[: args.calib_rows], idx[args.calib_rows :]
                used = policy
                if method == "hand-sweeping":
                    cal = calibration.calibrate(hp[cal_i], layers, policy, target, gold[cal_i])
                    point = calibration.naive_choice(cal.curve, target)
                else:
                    point, cal, used = certify(method, hp[cal_i], gold[cal_i], policy, layers, target, s, candidates)
                    uncertified += point is cal.curve[0]
                chosen[used.name] = chosen.get(used.name, 0) + 1
                ev = calibration.evaluate(hp[test_i], layers, used, point["thresholds"], target, gold[test_i])
                risk.append(ev["risk"])
                speed.append(ev["ideal_speedup"])
                # the same point's risk on every row: the dataset as the population (less noise than the
                # test split alone; its calibration rows lean it a little in the point's favour)
                whole.append(calibration.evaluate(hp, layers, used, point["thresholds"], target, gold)["risk"])
            risk, whole = np.array(risk), np.array(whole)
            rec = {
                "target": spec, "method": method, "describe": target.describe(), "confidence": args.confidence,
                "promised_violation_rate": 1 - args.confidence,
                "violation_rate": float((risk > target.max_risk).mean()),
                "violation_rate_all_rows": float((whole > target.max_risk).mean()),
                "uncertified_splits": uncertified,
                "policies_chosen": chosen,
                "mean_test_risk": float(risk.mean()),
                "mean_ideal_speedup_test": float(np.mean(speed)),
                "test_risk": risk.tolist(),
                "seconds": time.perf_counter() - t0,
            }
            results.append(rec)
            print(f"{spec} {method}: violations {rec['violation_rate']:.3f} (all rows {rec['violation_rate_all_rows']:.3f}; "
                  f"promised <= {1 - args.confidence:.2f}); "
                  f"speed-up {rec['mean_ideal_speedup_test']:.2f}x, mean test risk {100 * rec['mean_test_risk']:.2f} "
                  f"({rec['seconds']:.0f} s)", flush=True)
    with open(os.path.join(args.out, "calibration_check.json"), "w") as f:
        json.dump({"meta": meta, "deployment": deployment, "results": results}, f, indent=1)
    figure(results, os.path.join(args.out, "calibration_check.png"))
    print("\n| target | method | violations (test split) | violations (all rows) | promised | ideal speed-up (test) | mean test risk | uncertified splits |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['describe']} | {r['method']} | {r['violation_rate']:.1%} | {r['violation_rate_all_rows']:.1%} | ≤ {r['promised_violation_rate']:.0%} | "
              f"{r['mean_ideal_speedup_test']:.2f}× | {100 * r['mean_test_risk']:.2f} | {r['uncertified_splits']} |")
    if deployment:
        print("\n| target | method (path) | ideal speed-up on test | test accuracy | full depth | drop (points) | agreement |")
        print("|---|---|---|---|---|---|---|")
        for d in deployment:
            print(f"| {d['target']} | {d['method']} ({d['path']}) | {d['test_ideal_speedup']:.2f}× | {d['test_accuracy']:.4f} | "
                  f"{d['test_accuracy_full_depth']:.4f} | {100 * (d['test_accuracy_full_depth'] - d['test_accuracy']):.2f} | "
                  f"{d['test_agreement']:.4f} |")


def figure(results, path):
    targets = sorted({r["target"] for r in results}, key=lambda t: [r["target"] for r in results].index(t))
    fig, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets), 3.4))
    for ax, spec in zip(np.atleast_1d(axes), targets):
        value = float(spec.split(":")[1])
        limit = 100 * (1 - value if spec.startswith("agreement") else value)
        for r in (r for r in results if r["target"] == spec):
            ax.hist(100 * np.array(r["test_risk"]), bins=30, alpha=0.45, label=r["method"])
        ax.axvline(limit, color="k", ls="--", lw=1, label="target")
        ax.set_title(spec, fontsize=9)
        ax.set_xlabel("test-split risk (points)" if "accuracy" in spec else "test-split disagreement (%)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
