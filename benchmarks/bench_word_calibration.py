"""Does a token model's certificate keep its promise on real sentences? Repeated splits (issue 16).

    .venv/bin/python benchmarks/bench_word_calibration.py --model MODEL_DIR \
        --data ../shared/data/debian_pos/test.parquet --dev ../shared/data/debian_pos/dev.parquet \
        --rows 2000 --splits 300 --out benchmarks/results/issue16/word_calibration_check.json

Both paths are fixed before any split is drawn: `global` is the training sweep; `per-layer` is
shaped on --family-rows seeded --dev sentences, never on the pool. One real pass per candidate
over the --rows pool sentences (TOKEE at the model's own window), then for each of --splits random
halves of the pool: certify on one half with `certify_words` (the code training and
jobs/calibrate.py run) and measure the chosen point's risk, the mean per-sentence word-accuracy
drop against full depth, on the whole pool (the population the halves are drawn from) and on
the other half. A violation is a chosen point whose risk exceeds the target; the guarantee
promises one in at most 1 - confidence of the splits. Printed as a Markdown table; all figures
in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
from token_breakdown import tagged_sample  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from offramp.exits.token_pass import tag_pass  # noqa: E402
from offramp.models.checkpoint import ModelInfo, load_model  # noqa: E402
from offramp.quality.token_scores import pass_cost  # noqa: E402
from offramp.quality.word_calibration import (  # noqa: E402
    WordPass,
    WordTarget,
    certify_words,
    global_word_path,
    per_layer_word_path,
    sentence_losses,
)
from offramp.training.token import PER_LAYER_ALPHAS, SWEEP, head_tags  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="the pool the splits are drawn from (tagged sentences)")
    p.add_argument("--dev", required=True, help="sentences that shape the per-layer path (never in the pool)")
    p.add_argument("--words-column", default="tokens")
    p.add_argument("--tags-column", default="pos")
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--family-rows", type=int, default=2000)
    p.add_argument("--splits", type=int, default=300)
    p.add_argument("--max-drop", type=float, default=0.005)
    p.add_argument("--confidence", type=float, default=0.9)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    t0 = time.perf_counter()
    info = ModelInfo.read(args.model)
    model = load_model(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    columns = (args.words_column, args.tags_column)
    pool, gold = tagged_sample(args.data, columns, args.rows, args.seed, tokenizer, info.labels, args.max_length)
    family, _ = tagged_sample(args.dev, columns, args.family_rows, args.seed, tokenizer, info.labels, args.max_length,
                              flag="--dev")
    K, L, window = len(model.exit_layers), model.num_layers, int(model.config.exit_window)
    paths = {"global": global_word_path(SWEEP, K),
             "per-layer": per_layer_word_path(*head_tags(model, family), PER_LAYER_ALPHAS)}
    full = WordPass.of(tag_pass(model, pool, "token", None, window=window))
    passes = {}  # one real pass per distinct candidate, over the whole pool
    for path in paths.values():
        for row in path.thresholds[1:]:
            key = tuple(float(t) for t in row)
            if key not in passes:
                passes[key] = WordPass.of(tag_pass(model, pool, "token", list(key), window=window))
    print(f"{len(passes)} candidate passes over {len(pool)} sentences: {time.perf_counter() - t0:.0f} s", flush=True)

    target = WordTarget("accuracy", args.max_drop, args.confidence)
    counted = np.array([bool((g >= 0).any()) for g in gold])
    losses = {key: sentence_losses(run, full, gold, "accuracy") for key, run in passes.items()}

    def risk(key, idx) -> float:
        on = idx[counted[idx]]
        return float(losses[key][on].mean()) if key in losses and len(on) else 0.0

    everyone = np.arange(len(pool))
    rng = np.random.default_rng(args.seed)
    out = {"args": vars(args), "sentences": len(pool), "candidates": len(passes), "paths": {}}
    for name, path in paths.items():
        keys = [tuple(float(t) for t in row) for row in path.thresholds[1:]]
        # the best the path allows on the pool itself: its fastest candidate within the target there
        within = [pass_cost(passes[k], L)["token_layer_saving"] for k in keys if risk(k, everyone) <= target.value]
        splits = []
        for s in range(args.splits):
            order = rng.permutation(len(pool))
            cal, rest = np.sort(order[: len(pool) // 2]), np.sort(order[len(pool) // 2 :])
            result = certify_words(path, lambda t, cal=cal: passes[tuple(t)].take(cal), full.take(cal),
                                   [gold[i] for i in cal], target, L, seed=s)
            key = tuple(result.thresholds) if result.certified else None
            splits.append({
                "certified": result.certified,
                "pool_risk": risk(key, everyone), "other_half_risk": risk(key, rest),
                "other_half_saving": pass_cost(passes[key].take(rest), L)["token_layer_saving"] if key else 0.0,
            })
        pool_risk = np.array([x["pool_risk"] for x in splits])
        half_risk = np.array([x["other_half_risk"] for x in splits])
        saving = np.array([x["other_half_saving"] for x in splits])
        out["paths"][name] = {
            "violations_pool": float((pool_risk > target.value).mean()),
            "violations_other_half": float((half_risk > target.value).mean()),
            "certified_share": float(np.mean([x["certified"] for x in splits])),
            "saving_mean": float(saving.mean()), "saving_median": float(np.median(saving)),
            "pool_risk_mean": float(pool_risk.mean()),
            "best_on_pool": max(within, default=0.0), "splits": splits,
        }
    out["seconds"] = time.perf_counter() - t0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\n{args.splits} random halves of {len(pool)} sentences; target: word accuracy at most "
          f"{100 * args.max_drop:.1f} points below full depth (mean over sentences), promised in >= "
          f"{args.confidence:.0%} of splits\n")
    print("| path | violations (pool) | violations (other half) | splits certifying a candidate | token-layers saved, "
          "other half: mean (median) | best on the pool within the target | mean pool risk |")
    print("|---|---|---|---|---|---|---|")
    for name, r in out["paths"].items():
        print(f"| {name} | {r['violations_pool']:.3f} | {r['violations_other_half']:.3f} | "
              f"{r['certified_share']:.2f} | {100 * r['saving_mean']:.1f}% ({100 * r['saving_median']:.1f}%) | "
              f"{100 * r['best_on_pool']:.1f}% | {100 * r['pool_risk_mean']:.2f} pt |")


if __name__ == "__main__":
    main()
