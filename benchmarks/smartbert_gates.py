"""Do SmartBERT's gates choose layers per row? A per-row account of the skipping gates (issue 16).

    python benchmarks/smartbert_gates.py --model base=MODEL_DIR --model smartbert_l1.0=DIR ... \
        --data ../shared/data/debian_sections/test.parquet --rows 1500 --out benchmarks/results/issue16/smartbert_gates.json

Per model, on a seeded sample of rows (the same rows for every model):
1. The gated pass, as inference runs it: each gate's probability and decision, and the final answer.
   A model without gates counts as gates that run every layer.
2. The per-row oracle, one layer at a time: the same pass with only layer l's decision flipped
   (skip where the gate ran the layer, run where it skipped it). A row "can skip l" when skipping l
   leaves its final answer unchanged. That is the room a per-row gate has at l.
3. Whether the gate's input carries that: a logistic probe on the gate's input (layer l's input
   states, mean-pooled) predicting "can skip l", as a 2-fold cross-validated AUC, next to the AUC of
   the trained gate's own probability for the same label (0.5 = no better than chance).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_mechanisms import rows, sample  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from offramp.models.checkpoint import ModelInfo, load_model  # noqa: E402
from offramp.models.heads import masked_mean  # noqa: E402
from offramp.training.loop import _encode  # noqa: E402

BATCH = 64


@torch.inference_mode()
def gated_pass(model, batches, flip: int | None = None, gates: bool = True) -> dict:
    """Full depth as inference runs it, over pre-encoded `batches`: final predictions (N,), gate
    probabilities (N, L), skip decisions (N, L) and each layer's mean-pooled input (N, L, H).

    `flip` (0-based layer) inverts that one layer's decision for every row; `gates=False` runs
    every layer (the model without its gates)."""
    preds, probs, skips, inputs = [], [], [], []
    threshold = float(getattr(model.config, "gate_threshold", 0.5))
    for enc in batches:
        mask = enc["attention_mask"]
        hidden = model.embed(enc["input_ids"])
        ext = model.layer_mask(hidden, mask)
        B, L = hidden.shape[0], model.num_layers
        p_rows, s_rows, in_rows = torch.zeros(B, L), torch.zeros(B, L, dtype=torch.bool), []
        for i, layer in enumerate(model.encoder_layers):
            in_rows.append(masked_mean(hidden, mask))
            if model.gates is not None and gates:
                p_rows[:, i] = model.gates[i](hidden, mask).float()
                s_rows[:, i] = p_rows[:, i] >= threshold
            if flip == i:
                s_rows[:, i] = ~s_rows[:, i]
            hidden = torch.where(s_rows[:, i, None, None], hidden, layer(hidden, ext))
        preds.append(model.head_logits(L, hidden, mask).argmax(-1))
        probs.append(p_rows)
        skips.append(s_rows)
        inputs.append(torch.stack(in_rows, 1).float())
    return {"pred": torch.cat(preds).numpy(), "prob": torch.cat(probs).numpy(), "skip": torch.cat(skips).numpy(),
            "inputs": torch.cat(inputs).numpy()}


def auc(score: np.ndarray, label: np.ndarray) -> float | None:
    """ROC AUC of `score` for `label`; None when one class is absent (nothing to rank)."""
    return float(roc_auc_score(label, score)) if 0 < label.sum() < len(label) else None


def probe_auc(x: np.ndarray, label: np.ndarray, seed: int = 0) -> float | None:
    """2-fold cross-validated AUC of a logistic probe from `x` (N, H) to `label` (N,)."""
    if min(label.sum(), len(label) - label.sum()) < 10:  # too few of one class to fit and score
        return None
    scores = np.zeros(len(label))
    for fit, held in StratifiedKFold(2, shuffle=True, random_state=seed).split(x, label):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        scores[held] = probe.fit(x[fit], label[fit]).predict_proba(x[held])[:, 1]
    return auc(scores, label)


def account(model, batches, order: np.ndarray, gold: np.ndarray) -> dict:
    """The per-row account of one model's gates (see the module docstring)."""
    undo = np.argsort(order)  # batches run in length order; rows go back to sample order
    def run(**kw):
        return {k: v[undo] for k, v in gated_pass(model, batches, **kw).items()}

    base = run()
    L = base["skip"].shape[1]
    out = {"accuracy": float((base["pred"] == gold).mean()), "layers": []}
    if model.gates is not None:
        out["accuracy_gates_off"] = float((run(gates=False)["pred"] == gold).mean())
    patterns, counts = np.unique(base["skip"].astype(np.int8), axis=0, return_counts=True)
    top = np.argsort(-counts)[:5]
    out["skip_patterns"] = {"distinct": int(len(patterns)),
                            "top": [{"skips_layers": [int(i) + 1 for i in np.flatnonzero(patterns[k])],
                                     "share": float(counts[k] / len(gold))} for k in top]}
    out["mean_layers_skipped"] = float(base["skip"].sum(1).mean())
    for i in range(L):
        flipped = run(flip=i)
        skipped = base["skip"][:, i]
        pred_skip = np.where(skipped, base["pred"], flipped["pred"])  # layer i skipped, the rest as the gates say
        pred_run = np.where(skipped, flipped["pred"], base["pred"])
        can_skip = (pred_skip == pred_run).astype(int)
        p = base["prob"][:, i]
        out["layers"].append({
            "layer": i + 1,
            "skip_rate": float(skipped.mean()),
            "gate_prob_mean": float(p.mean()), "gate_prob_std": float(p.std()),
            "gate_prob_q05_q50_q95": [float(q) for q in np.quantile(p, [0.05, 0.5, 0.95])],
            "can_skip_rate": float(can_skip.mean()),
            "accuracy_all_skip": float((pred_skip == gold).mean()),
            "accuracy_all_run": float((pred_run == gold).mean()),
            "gate_auc": auc(p, can_skip) if model.gates is not None else None,
            "probe_auc": probe_auc(base["inputs"][:, i], can_skip),
        })
    return out


def table(results: dict) -> str:
    lines = [("| model | layer | skip rate | gate p mean ± std | can skip (oracle) | acc all skip / all run "
              "| gate AUC | probe AUC |"),
             "|---|---|---|---|---|---|---|---|"]
    f = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    for name, r in results.items():
        for x in r["layers"]:
            lines.append(f"| {name} | {x['layer']} | {x['skip_rate']:.2f} | "
                         f"{x['gate_prob_mean']:.2f} ± {x['gate_prob_std']:.2f} | "
                         f"{x['can_skip_rate']:.2f} | {x['accuracy_all_skip']:.4f} / {x['accuracy_all_run']:.4f} | "
                         f"{f(x['gate_auc'])} | {f(x['probe_auc'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", type=int, default=1500)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    table = sample(rows(args.data), args.rows)  # the seeded sample bench_mechanisms draws
    texts, labels = table["text"].to_pylist(), table["label"].to_pylist()
    results = {}
    for spec in args.model:
        name, _, model_dir = spec.partition("=")
        info = ModelInfo.read(model_dir)
        gold = np.array([info.labels.index(g) if g in info.labels else -1 for g in labels])
        tok = AutoTokenizer.from_pretrained(model_dir)
        lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=args.max_length)["input_ids"]]
        order = np.argsort(lengths, kind="stable")  # length-sorted batches: little padding
        batches = [_encode(tok, [texts[j] for j in order[i : i + BATCH]], args.max_length)
                   for i in range(0, len(order), BATCH)]
        results[name] = {"model": model_dir, "rows": len(texts), **account(load_model(model_dir), batches, order, gold)}
        r = results[name]
        print(f"{name}: accuracy {r['accuracy']:.4f}, mean layers skipped {r['mean_layers_skipped']:.2f}, "
              f"{r['skip_patterns']['distinct']} distinct skip patterns", flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:  # after every model: a long run keeps what it has measured
            json.dump({"data": args.data, "rows": args.rows, "max_length": args.max_length, "models": results}, f,
                      indent=1)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
