"""Which exit policy certifies the most speed on a model, offline from one full-depth pass.

    python benchmarks/policy_choice.py --model DIR --dev ../shared/data/debian_sections/dev.parquet \
        --test ../shared/data/debian_sections/test.parquet --max-length 96 \
        --out benchmarks/results/issue16/policy_choice

Every head's logits on dev and test come from one full-depth pass each (cached in OUT/logits_*.npz,
the cache `bench_calibration.py` uses). Then, per policy that reads logits only (and, for
contrast, entropy over running ensembles of the heads so far):
1. Certified on all of dev (`calibration.certify`, the per-layer/global choice of `jobs/calibrate.py`,
   seed 0), then measured on test: ideal speed-up and accuracy drop.
2. The same for --seeds seeds of the split between path rows and certifying rows.
3. The test oracle along the seed-0 path: the fastest point within 1 point on test.
4. How the policy would be chosen on the seed's path rows: by observed risk (`speed_at_target`) or
   by a trial certification (`certified_speed`, what `certify_policies` uses), against the speed
   each one then certifies on the rest.
Writes OUT/policy_choice.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from bench_calibration import load_logits  # noqa: E402
from offramp.exits.simulate import HeadPass  # noqa: E402
from offramp.policies import get_policy  # noqa: E402
from offramp.quality import calibration  # noqa: E402

POLICIES = ("entropy", "max_prob", "margin")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def ensembles(logits: np.ndarray) -> dict[str, np.ndarray]:
    """Running ensembles of the heads so far as each internal head's logits (the final head kept)."""
    lp = log_softmax(logits.astype(np.float64))
    k = np.arange(1, logits.shape[1] + 1, dtype=np.float64)
    out = {
        "ensemble_mean_logprob": np.cumsum(lp, axis=1) / k[None, :, None],
        "ensemble_mean_prob": np.log(np.cumsum(np.exp(lp), axis=1) / k[None, :, None] + 1e-12),
        "ensemble_layer_weighted": np.cumsum(lp * k[None, :, None], axis=1) / np.cumsum(k)[None, :, None],
    }
    for v in out.values():
        v[:, -1] = logits[:, -1]
    return out


def on_test(cal: calibration.Calibration, hp: HeadPass, gold: np.ndarray, policy, layers) -> tuple[float, float]:
    """(ideal speed-up, accuracy drop in points) of the certified thresholds on the test rows."""
    target = calibration.Target("accuracy", 0.01, 0.9)  # only the counts are read, not the target
    ev = calibration.evaluate(hp, layers, policy, np.asarray(cal.point["thresholds"]), target, gold)
    return ev["ideal_speedup"], 100 * (ev["accuracy_full_depth"] - ev["accuracy"])


def oracle(hp_dev: HeadPass, hp: HeadPass, gold: np.ndarray, policy, layers, max_drop: float) -> float:
    """The fastest point of the seed-0 per-layer path (shaped on dev) within max_drop on test."""
    fam, _ = calibration.family_split(len(hp_dev), seed=0)
    path = calibration.per_layer_path(hp_dev[fam], layers, policy, 200)
    target = calibration.Target("accuracy", max_drop, 0.9)
    pts = calibration._evaluate(hp, layers, policy, path.thresholds, target, gold)
    return max(p["ideal_speedup"] for p in pts if p["accuracy_drop"] <= max_drop)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--max-drop", type=float, default=0.01)
    p.add_argument("--confidence", type=float, default=0.9)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cache = lambda path: os.path.join(args.out, f"logits_{os.path.basename(path)}.npz")  # noqa: E731
    hp_dev, gold_dev = load_logits(args.model, args.dev, "text", "label", args.max_length, cache(args.dev))
    hp_test, gold_test = load_logits(args.model, args.test, "text", "label", args.max_length, cache(args.test))
    layers = list(range(1, hp_dev.logits.shape[1] + 1))
    target = calibration.Target("accuracy", args.max_drop, args.confidence)

    variants = [(name, get_policy(name), hp_dev, hp_test) for name in POLICIES]
    ens_dev, ens_test = ensembles(hp_dev.logits), ensembles(hp_test.logits)
    variants += [(f"{name} (entropy)", get_policy("entropy"), HeadPass(ens_dev[name]), HeadPass(ens_test[name]))
                 for name in ens_dev]
    rows = []
    for name, policy, dev, test in variants:
        cal = calibration.certify(dev, gold_dev, policy, layers, target, seed=0)
        speed, drop = on_test(cal, test, gold_test, policy, layers)
        seeds = [on_test(calibration.certify(dev, gold_dev, policy, layers, target, seed=s), test, gold_test, policy,
                         layers) for s in range(args.seeds)]
        s = np.array(seeds)
        rows.append({"variant": name, "path": cal.path, "dev_certified": cal.point["ideal_speedup"],
                     "test_speedup": speed, "test_drop_points": drop, "seeds_test_speedup": s[:, 0].tolist(),
                     "seeds_test_drop_points": s[:, 1].tolist(),
                     "test_oracle_within": oracle(dev, test, gold_test, policy, layers, args.max_drop)})
        r = rows[-1]
        print(f"{name}: dev {r['dev_certified']:.2f}x; test {speed:.2f}x at {drop:.2f} pt; {args.seeds} seeds "
              f"{s[:, 0].mean():.2f}x ({s[:, 0].min():.2f}-{s[:, 0].max():.2f}) at {s[:, 1].mean():.2f} pt; "
              f"oracle {r['test_oracle_within']:.2f}x", flush=True)

    choice = []  # how each criterion on the path rows would choose, and what the choice then certifies
    for seed in range(min(args.seeds, 6)):
        fam, cert = calibration.family_split(len(hp_dev), seed=seed)
        entry = {"seed": seed}
        for name in POLICIES:
            pol = get_policy(name)
            path = calibration.choose_path(pol, layers, target, "auto", hp_dev[fam], gold_dev[fam],
                                           hp_dev.logits.shape[-1], 200)
            entry[name] = {
                "observed": calibration.speed_at_target(hp_dev[fam], gold_dev[fam], layers, pol, path, target),
                "trial": calibration.certified_speed(hp_dev[fam], gold_dev[fam], layers, pol, path, target),
                "certified": calibration.calibrate(hp_dev[cert], layers, pol, target, gold_dev[cert], 200, "auto",
                                                   hp_dev[fam], gold_dev[fam]).point["ideal_speedup"],
            }
        for crit in ("observed", "trial"):
            entry[f"by_{crit}"] = max(POLICIES, key=lambda n: entry[n][crit])
        entry["best"] = max(POLICIES, key=lambda n: entry[n]["certified"])
        choice.append(entry)
    with open(os.path.join(args.out, "policy_choice.json"), "w") as f:
        json.dump({"model": args.model, "max_drop": args.max_drop, "variants": rows, "choice": choice}, f, indent=1)

    print(f"\n| policy | path | certified on dev (seed 0) | test: ideal ×, drop | {args.seeds} seeds: test ideal × "
          f"(range), drop | test oracle along the path, within {100 * args.max_drop:g} pt |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        s = np.array(r["seeds_test_speedup"])
        print(f"| {r['variant']} | {r['path']} | {r['dev_certified']:.2f}× | {r['test_speedup']:.2f}×, "
              f"{r['test_drop_points']:.2f} pt | {s.mean():.2f}× ({s.min():.2f}–{s.max():.2f}), "
              f"{np.mean(r['seeds_test_drop_points']):.2f} pt | {r['test_oracle_within']:.2f}× |")
    heads = " | ".join(f"{n}: observed / trial / certified" for n in POLICIES)
    print(f"\n| seed | {heads} | by observed | by trial | best |")
    print("|---|" + "---|" * (len(POLICIES) + 3))
    for e in choice:
        cells = " | ".join(f"{e[n]['observed']:.2f} / {e[n]['trial']:.2f} / {e[n]['certified']:.2f}" for n in POLICIES)
        print(f"| {e['seed']} | {cells} | {e['by_observed']} | {e['by_trial']} | {e['best']} |")


if __name__ == "__main__":
    main()
