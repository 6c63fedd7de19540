"""Where token-level exits lose their saving (issue 16): one trained token model, one sample.

    .venv/bin/python benchmarks/token_breakdown.py --model MODEL_DIR --data ../shared/data/debian_pos/test.parquet \
        --rows 3000 --out benchmarks/results/issue16/token_breakdown_6k.json

From one full-depth pass (every head on every word) and real TOKEE passes over the same
sentences, it reports, with word accuracy against the gold tags:
- **heads**: each exit head's word accuracy, and the share of words whose head at layer l
  already gives the full-depth tag;
- **oracle**: if every word left at the first layer from which every later head agrees with
  full depth, the share of word-layers saved at zero change (an upper bound for any exit rule
  on these heads);
- **confidence**: the same with each word leaving at the first layer where its own normalized
  uncertainty is under the threshold (no window: the words' own heads decide), per threshold;
- **window**: real TOKEE passes with each of `--windows` (0, 1 and 2 by default) over the training sweep's thresholds:
  the saving within `--max-drop` of full depth for each window, so the cost of holding a word
  beside an uncertain neighbour is measured, not guessed.
Savings here are counted in word-layers for the oracle and confidence rows and in
token-layers for the real passes (as everywhere else); both are printed.
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
from transformers import AutoTokenizer  # noqa: E402

from offramp.exits.token_pass import tag_pass  # noqa: E402
from offramp.models.checkpoint import ModelInfo, load_model  # noqa: E402
from offramp.quality.calibration import ThresholdPath  # noqa: E402
from offramp.quality.token_scores import score_pass  # noqa: E402
from offramp.quality.word_calibration import per_layer_word_path  # noqa: E402
from offramp.text.words import encode_words  # noqa: E402
from offramp.training.token import (  # noqa: E402
    PER_LAYER_ALPHAS,
    SWEEP,
    candidate_points,
    head_tags,
    load_tagged,
    word_labels,
)


def tagged_sample(path: str, columns: tuple[str, str], rows: int, seed: int, tokenizer, labels: list[str],
                  max_length: int, flag: str = "--data"):
    """A seeded sample of `rows` tagged sentences: (encoded words, gold label ids per word)."""
    words, tags = load_tagged(path, *columns, rows, seed, flag)
    return encode_words(tokenizer, words, max_length), word_labels(tags, {n: i for i, n in enumerate(labels)})


def first_stable(tags: np.ndarray) -> np.ndarray:
    """(W,) the first head index from which every later head gives the final tag."""
    same = tags == tags[-1][None, :]  # (L, W)
    stable = np.flip(np.cumprod(np.flip(same, 0), 0), 0).astype(bool)  # head k.. all agree
    return np.argmax(stable, axis=0)


def analyse(model, encoded, gold, layers: list[int], max_drop: float, windows=(0, 1, 2)) -> dict:
    L = model.num_layers
    t0 = time.perf_counter()
    tags, unc = head_tags(model, encoded)
    words = sum(len(g) for g in gold)
    on = [g >= 0 for g in gold]
    n_gold = sum(int(o.sum()) for o in on)
    right = lambda pick: sum(int((p[o] == g[o]).sum()) for p, g, o in zip(pick, gold, on)) / n_gold  # noqa: E731
    heads = {}
    for k, l in enumerate(layers):
        heads[l] = {"accuracy": right([t[k] for t in tags]),
                    "agrees_with_full": float(np.mean(np.concatenate([t[k] == t[-1] for t in tags])))}
    full_acc = heads[layers[-1]]["accuracy"]
    stable = [first_stable(t) for t in tags]
    layer_of = np.array(layers)
    oracle_layers = np.concatenate([layer_of[s] for s in stable])
    oracle = {"word_layer_saving": 1 - float(oracle_layers.mean()) / L, "accuracy": full_acc}
    confidence = []
    for thr in [t for t in SWEEP if t > 0]:
        pick, used = [], []
        for t, u in zip(tags, unc):
            below = u < thr
            below[-1] = True  # the last head always answers
            k = np.argmax(below, axis=0)
            pick.append(t[k, np.arange(t.shape[1])])
            used.append(layer_of[k])
        confidence.append({"threshold": thr, "word_layer_saving": 1 - float(np.concatenate(used).mean()) / L,
                           "accuracy": right(pick)})
    by_window = {}
    for w in windows:
        curve = []
        for thr in [None, *[t for t in SWEEP if t > 0]]:
            s = score_pass(tag_pass(model, encoded, "token", thr, window=w), gold, [], L)
            curve.append({"threshold": thr, "accuracy": s["accuracy"], "token_layer_saving": s["token_layer_saving"]})
        ok = [p for p in curve[1:] if p["accuracy"] >= curve[0]["accuracy"] - max_drop]
        best = max(ok, key=lambda p: p["token_layer_saving"]) if ok else curve[0]
        by_window[w] = {"curve": curve, "best_within_drop": best}
    conf_ok = [p for p in confidence if p["accuracy"] >= full_acc - max_drop]
    return {
        "sentences": len(encoded), "words": words, "full_depth_accuracy": full_acc, "heads": heads, "oracle": oracle,
        "confidence_no_window": confidence,
        "confidence_best_within_drop": max(conf_ok, key=lambda p: p["word_layer_saving"]) if conf_ok else None,
        "policy": model.config.exit_policy, "windows": by_window, "max_drop": max_drop,
        "seconds": time.perf_counter() - t0,
    }


def per_layer_curve(model, encoded, gold, family: ThresholdPath, full: float, max_drop: float, window: int) -> dict:
    """Real TOKEE passes along the per-layer family: saving and accuracy per alpha, against `full`,
    the full-depth word accuracy `analyse` measured on the same sentences."""
    curve = candidate_points(model, encoded, gold, [], "token", family, window=window)
    ok = [p for p in curve if p["accuracy"] >= full - max_drop]
    return {"window": window, "full_depth_accuracy": full, "curve": curve,
            "best_within_drop": max(ok, key=lambda p: p["token_layer_saving"]) if ok else None}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--words-column", default="tokens")
    p.add_argument("--tags-column", default="pos")
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-drop", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", help="judge words by this per-word policy (entropy, max_prob) instead of the stored one")
    p.add_argument("--windows", type=int, nargs="*", default=[0, 1, 2],
                   help="TOKEE windows to run for real (none: no window sweep)")
    p.add_argument("--stored", action="store_true",
                   help="also score the model's stored (certified) thresholds, in its stored exit mode and window")
    p.add_argument("--per-layer-dev", metavar="DEV.parquet",
                   help="also run per-layer thresholds along one parameter alpha, shaped on this file's sentences "
                        "(a seeded --per-layer-rows sample), with window 0")
    p.add_argument("--per-layer-rows", type=int, default=2000)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    info = ModelInfo.read(args.model)
    model = load_model(args.model).eval()
    if args.policy:  # the heads are the policy's input either way; only the uncertainty read from them changes
        model.config.exit_policy = args.policy
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    encoded, gold = tagged_sample(args.data, (args.words_column, args.tags_column), args.rows, args.seed, tokenizer,
                                  info.labels, args.max_length)
    result = {"model": os.path.abspath(args.model), "data": args.data, "command": " ".join(sys.argv),
              **analyse(model, encoded, gold, info.exit_layers, args.max_drop, args.windows)}
    if args.per_layer_dev:
        dev, _ = tagged_sample(args.per_layer_dev, (args.words_column, args.tags_column), args.per_layer_rows, args.seed,
                               tokenizer, info.labels, args.max_length, flag="--per-layer-dev")
        family = per_layer_word_path(*head_tags(model, dev), PER_LAYER_ALPHAS)
        result["per_layer"] = per_layer_curve(model, encoded, gold, family, result["full_depth_accuracy"],
                                              args.max_drop, 0)
    if args.stored:
        c = model.config
        s = score_pass(tag_pass(model, encoded, c.token_exit_mode, list(c.exit_thresholds), window=c.exit_window),
                       gold, [], model.num_layers)
        result["stored"] = {"thresholds": list(c.exit_thresholds), "certified": bool(getattr(c, "exit_certified", False)),
                            "calibration": info.calibration, "accuracy": s["accuracy"],
                            "token_layer_saving": s["token_layer_saving"], "ideal_speedup": s["ideal_speedup"]}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    r = result
    print(f"policy {r['policy']}; {r['sentences']} sentences, {r['words']} words; "
          f"full depth word accuracy {r['full_depth_accuracy']:.4f}")
    print("heads (accuracy / agrees with full depth):",
          ", ".join(f"L{l} {h['accuracy']:.3f}/{h['agrees_with_full']:.3f}" for l, h in r["heads"].items()))
    print(f"oracle (first layer from which every head agrees with full depth): {100 * r['oracle']['word_layer_saving']:.1f}% "
          "of word-layers saved at no change")
    c = r["confidence_best_within_drop"]
    if c:
        print(f"own confidence, no window, within {100 * args.max_drop:.1f} pt: threshold {c['threshold']}: "
              f"{100 * c['word_layer_saving']:.1f}% word-layers saved, accuracy {c['accuracy']:.4f}")
    for w, d in r["windows"].items():
        b = d["best_within_drop"]
        print(f"TOKEE window {w}: best within {100 * args.max_drop:.1f} pt: threshold {b['threshold']}: "
              f"{100 * b['token_layer_saving']:.1f}% token-layers saved, accuracy {b['accuracy']:.4f}")
    if "stored" in r:
        st = r["stored"]
        print(f"stored thresholds ({'certified' if st['certified'] else 'UNCERTIFIED'}) "
              f"{[round(t, 3) for t in st['thresholds']]}: {100 * st['token_layer_saving']:.1f}% token-layers saved "
              f"(ideal {st['ideal_speedup']:.2f}x), accuracy {st['accuracy']:.4f} "
              f"(drop {100 * (r['full_depth_accuracy'] - st['accuracy']):.2f} pt)")
    b = r.get("per_layer", {}).get("best_within_drop")
    if b:
        print(f"TOKEE window 0, per-layer thresholds: best within {100 * args.max_drop:.1f} pt: alpha {b['alpha']:.4f} "
              f"{[round(t, 3) for t in b['thresholds']]}: {100 * b['token_layer_saving']:.1f}% token-layers saved, "
              f"accuracy {b['accuracy']:.4f}")


if __name__ == "__main__":
    main()
